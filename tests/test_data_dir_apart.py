"""The service's data directory and the weights cache never share files, on any OS.

On Windows the weights cache is ``%LOCALAPPDATA%\\mlsharp\\Cache``; the data directory
used to be ``%LOCALAPPDATA%\\mlsharp``, whose result cache ``cache`` is the same folder on
a case-insensitive disk, and the cache's sweep deleted the checkpoint as an unknown
file. Each platform's defaults are computed here with ``sys.platform`` and its
environment simulated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlsharp.config import Settings, check_data_dir_apart, default_data_dir
from mlsharp.errors import ConfigError
from mlsharp.weights import cache_dir

HOME = Path("/home/zoë")
LOCAL = HOME / "AppData" / "Local"


def simulate(monkeypatch: pytest.MonkeyPatch, platform: str) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("HOME", str(HOME))
    for name in ("MLSHARP_CACHE", "XDG_CACHE_HOME", "XDG_DATA_HOME", "MLSHARP_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    if platform == "win32":
        monkeypatch.setenv("LOCALAPPDATA", str(LOCAL))


@pytest.mark.parametrize(
    ("platform", "data", "weights"),
    [
        ("linux", HOME / ".local/share/mlsharp", HOME / ".cache/mlsharp"),
        ("darwin", HOME / "Library/Application Support/mlsharp", HOME / "Library/Caches/mlsharp"),
        ("win32", LOCAL / "mlsharp" / "Data", LOCAL / "mlsharp" / "Cache"),
    ],
)
def test_defaults_are_apart_on_every_os(monkeypatch, platform, data, weights):
    simulate(monkeypatch, platform)
    assert (default_data_dir(), cache_dir()) == (data, weights)
    check_data_dir_apart(default_data_dir(), cache_dir())  # does not raise


def test_the_old_windows_layout_is_refused_whatever_the_case(monkeypatch):
    simulate(monkeypatch, "win32")
    with pytest.raises(ConfigError, match="would delete the weights"):
        check_data_dir_apart(LOCAL / "mlsharp", LOCAL / "mlsharp" / "Cache")
    simulate(monkeypatch, "darwin")  # case-insensitive too (APFS default)
    with pytest.raises(ConfigError):
        check_data_dir_apart(HOME / "d", HOME / "d" / "CACHE" / "weights")


@pytest.mark.parametrize("inside", ["", "cache", "jobs", "s3-staging/cache"])
def test_weights_in_a_folder_the_service_cleans_are_refused(tmp_path, inside):
    with pytest.raises(ConfigError, match="choose another --data-dir"):
        check_data_dir_apart(tmp_path / "data", tmp_path / "data" / inside)


def test_weights_beside_or_above_the_data_are_fine(tmp_path):
    check_data_dir_apart(tmp_path / "data", tmp_path / "weights")
    check_data_dir_apart(tmp_path / "data", tmp_path / "data" / "weights")
    check_data_dir_apart(tmp_path / "weights" / "data", tmp_path / "weights")
    check_data_dir_apart(tmp_path / "data", tmp_path / "data" / "Cache")  # Linux: case counts


def test_the_service_refuses_to_start_on_the_weights(tmp_path, monkeypatch, tiny_checkpoint):
    from mlsharp.service.backends import build_state

    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "data" / "cache"))
    settings = Settings(
        preset="tiny", checkpoint=str(tiny_checkpoint), device="cpu", data_dir=tmp_path / "data"
    )
    with pytest.raises(ConfigError, match="holds the weights folder"):
        build_state(settings)
    assert not (tmp_path / "data").exists()  # refused before anything was created
