"""The format table is the one place a format is described: everything else follows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlsharp import formats, splat
from mlsharp.cli import build_parser
from mlsharp.errors import ConfigError
from tests.conftest import REPO


def test_every_spec_names_functions_that_exist() -> None:
    for spec in formats.FORMATS.values():
        assert callable(formats.resolve(spec.writer)), spec.name
        for reference in (spec.reader, spec.counter):
            if reference is not None:
                assert callable(formats.resolve(reference)), (spec.name, reference)
        assert spec.scene == (spec.counter is not None) == (spec.frame is not None)
        assert not (spec.takes_frame and "frame" not in spec.options)
    assert len({spec.suffix for spec in formats.FORMATS.values()}) == len(formats.FORMATS)


def test_docs_table_is_the_registry() -> None:
    docs = (REPO / "docs" / "formats.md").read_text()
    assert formats.markdown_table() in docs, "regenerate with mlsharp.formats.markdown_table()"


def test_command_line_follows_the_registry() -> None:
    parser = build_parser()
    text = (
        parser.format_help()
        + parser._subparsers._group_actions[0]
        .choices[  # type: ignore[union-attr]
            "predict"
        ]
        .format_help()
    )
    compact = " ".join(text.split())
    for spec in formats.FORMATS.values():
        assert f"{spec.name}:" in compact, spec.name
    convert = parser._subparsers._group_actions[0].choices["convert"].format_help()  # type: ignore[union-attr]
    for spec in formats.FORMATS.values():
        if spec.scene:
            assert spec.suffix in " ".join(convert.split()), spec.suffix


def test_parse_formats_and_suffixes() -> None:
    assert formats.parse_formats(" SOG,glb ,sog") == ("sog", "glb")
    assert formats.parse_formats("", ["ply"]) == ("ply",)
    assert formats.parse_formats("depth", expand=True) == ("depth", "depth-npy", "depth-preview")
    with pytest.raises(ConfigError, match="unknown output format 'obj'"):
        formats.parse_formats("obj")
    assert formats.format_for_path(Path("a/b.standard.ply")) == "ply-standard"
    assert formats.format_for_path("x.GLB") == "glb"
    assert splat.SUFFIXES["sog"] == ".sog" and splat.MEDIA_TYPES["glb"] == "model/gltf-binary"


def test_the_table_and_the_writers_know_the_same_frames() -> None:
    # formats.FRAMES is NumPy-free for --help; splat.FRAMES comes from the Frame type.
    assert formats.FRAMES == splat.FRAMES
    for spec in formats.FORMATS.values():
        assert spec.frame is None or spec.frame in formats.FRAMES


def test_writer_option_values_are_listed_once() -> None:
    # --spz-version and --glb-compression offer exactly what the writers accept.
    from mlsharp.splat import gltf, spz
    from tests.test_formats import random_scene

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("predict", "convert"):
        options = {a.dest: a.choices for a in commands[command]._actions}
        assert options["spz_version"] is formats.SPZ_VERSIONS
        assert options["glb_compression"] is formats.GLB_COMPRESSIONS
    assert spz.SPZ_VERSIONS is formats.SPZ_VERSIONS
    scene = random_scene(10)
    for version in formats.SPZ_VERSIONS:
        assert spz.spz_bytes(scene, version=version)
    for compression in formats.GLB_COMPRESSIONS:
        assert gltf.glb_bytes(scene, compression=compression)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="choose from: none, spz"):
        gltf.glb_bytes(scene, compression="zip")  # type: ignore[arg-type]
