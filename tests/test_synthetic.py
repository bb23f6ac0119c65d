"""Synthetic SHARP weights: rules, stream, probes and digest (tests/data/parity/WEIGHTS.md)."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mlsharp.errors import CheckpointError
from mlsharp.synthetic import (
    OVERRIDES,
    cached_synthetic_checkpoint,
    default_cache_dir,
    manifest_entries,
    synthetic_state_dict,
    synthetic_tensor,
    tensors_sha256,
    weight_rule,
    weights_cache_key,
    write_synthetic_checkpoint,
)

DATA = Path(__file__).resolve().parent / "data" / "parity"
MANIFEST = DATA / "sharp_checkpoint_manifest.json"
DIGEST = json.loads((DATA / "weights_digest.json").read_text())
ENTRIES = manifest_entries(MANIFEST)
BY_KEY = {key: (shape, module_type) for key, shape, module_type in ENTRIES}
MASK = (1 << 64) - 1


def reference_value(key: str, i: int, mean: float, std: float) -> np.float32:
    """WEIGHTS.md for one element, with Python integers (no vectorisation, no wrap tricks)."""
    z = (((zlib.crc32(key.encode()) << 32) | i) + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    z ^= z >> 31
    u = (z >> 11) * 2.0**-53
    return np.float32(mean + std * (math.sqrt(3.0) * (2.0 * u - 1.0)))


def make_manifest(tmp_path: Path, rows: list[tuple[str, list[int], str]]) -> Path:
    path = tmp_path / "manifest.json"
    state = [
        {"key": k, "shape": s, "dtype": "float32", "numel": math.prod(s), "module_type": t}
        for k, s, t in rows
    ]
    path.write_text(json.dumps({"state_dict": state}))
    return path


@pytest.mark.parametrize("key", sorted(DIGEST["probes"]))
def test_probe_tensors_match_the_digest(key: str) -> None:
    probe = DIGEST["probes"][key]
    shape, module_type = BY_KEY[key]
    assert list(weight_rule(key, shape, module_type)) == probe["rule_mean_std"]
    flat = synthetic_tensor(key, shape, module_type).reshape(-1)
    assert flat.dtype == np.float32
    assert [float(v) for v in flat[: len(probe["first"])]] == probe["first"]
    assert math.isclose(float(flat.astype(np.float64).sum()), probe["sum"], rel_tol=1e-12)


def test_manifest_is_covered_by_the_rules() -> None:
    manifest = json.loads(MANIFEST.read_text())
    assert len(ENTRIES) == manifest["num_keys"] == 1038
    assert sum(math.prod(s) for _, s, _ in ENTRIES) == manifest["total_numel"]
    types = Counter(t for _, _, t in ENTRIES)
    assert set(types) == {
        "Linear", "Conv2d", "ConvTranspose2d", "LayerNorm", "GroupNorm", "LayerScale", "TimmViT"
    }  # fmt: skip
    for key, shape, module_type in ENTRIES:
        mean, std = weight_rule(key, shape, module_type)
        assert std > 0 and math.isfinite(mean), key
    assert weights_cache_key(ENTRIES) == DIGEST["cache_key"]


def test_generic_rules() -> None:
    assert weight_rule("a.weight", (8, 16), "Linear") == (0.0, 0.25)
    assert weight_rule("a.weight", (4, 3, 3, 3), "Conv2d") == (0.0, 1 / math.sqrt(27))
    assert weight_rule("a.weight", (16, 8, 2, 2), "ConvTranspose2d") == (0.0, 0.25)
    assert weight_rule("a.bias", (4,), "Conv2d") == (0.0, 0.05)
    assert weight_rule("n.weight", (4,), "GroupNorm") == (1.0, 0.1)
    assert weight_rule("n.bias", (4,), "LayerNorm") == (0.0, 0.05)
    assert weight_rule("b.ls1.gamma", (4,), "LayerScale") == (0.1, 0.02)
    assert weight_rule("vit.cls_token", (1, 1, 4), "TimmViT") == (0.0, 0.2)


@pytest.mark.parametrize(
    ("key", "shape", "module_type"),
    [
        ("bn.weight", (4,), "BatchNorm2d"),
        ("n.running_mean", (4,), "LayerNorm"),
        ("vit.dist_token", (1, 1, 4), "TimmViT"),
        ("a.weight", (4, 3), "Conv2d"),
    ],
)
def test_unknown_entries_raise(key: str, shape: tuple[int, ...], module_type: str) -> None:
    with pytest.raises(ValueError, match=r"no synthetic-weight rule|dims"):
        synthetic_tensor(key, shape, module_type)


def test_overrides() -> None:
    shapes = {
        "monodepth_model.monodepth_predictor.head.4.weight": (2, 32, 1, 1),
        "monodepth_model.monodepth_predictor.head.4.bias": (2,),
        "prediction_head.geometry_prediction_head.weight": (6, 32, 1, 1),
        "prediction_head.texture_prediction_head.weight": (22, 32, 1, 1),
    }
    assert set(OVERRIDES) == set(shapes)
    for key, shape in shapes.items():
        assert BY_KEY[key] == (shape, "Conv2d")
        assert weight_rule(key, shape, "Conv2d") == OVERRIDES[key]
    assert OVERRIDES["monodepth_model.monodepth_predictor.head.4.bias"] == (1.5, 0.05)
    bias = synthetic_tensor("monodepth_model.monodepth_predictor.head.4.bias", (2,), "Conv2d")
    assert np.all(np.abs(bias - 1.5) <= 0.05 * math.sqrt(3))


def test_stream_matches_a_scalar_implementation() -> None:
    key = "norm.weight"  # crc32 >= 2**31, so the uint64 arithmetic wraps
    assert zlib.crc32(key.encode()) >= 1 << 31
    n = (1 << 20) + 5
    values = synthetic_tensor(key, (n,), "LayerNorm", chunk=1 << 19)
    for i in [0, 1, 2, 3, (1 << 19) - 1, 1 << 19, 1 << 20, n - 1]:
        assert values[i] == reference_value(key, i, 1.0, 0.1), i


def test_deterministic_and_chunk_independent() -> None:
    key, shape, module_type = "a.blocks.0.mlp.fc1.weight", (37, 19), "Linear"
    a = synthetic_tensor(key, shape, module_type)
    assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, synthetic_tensor(key, shape, module_type))
    np.testing.assert_array_equal(a, synthetic_tensor(key, shape, module_type, chunk=7))
    assert not np.array_equal(a, synthetic_tensor("a.blocks.1.mlp.fc1.weight", shape, "Linear"))
    bound = math.sqrt(3) / math.sqrt(19)
    assert np.all(np.abs(a) <= bound)
    assert synthetic_tensor("s.bias", (), "Linear").shape == ()


def test_tensors_sha256_inputs() -> None:
    torch = pytest.importorskip("torch")
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    expected = hashlib.sha256(b"".join(a.astype("<f4").tobytes() for a in arrays)).hexdigest()
    assert tensors_sha256(arrays) == expected
    assert tensors_sha256(iter(arrays)) == expected
    assert tensors_sha256({"a": torch.from_numpy(arrays[0]), "b": torch.ones(4)}) == expected
    assert tensors_sha256([arrays[0].T.copy().T, arrays[1].astype(">f4")]) == expected


def test_state_dict_write_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    rows = [
        ("enc.blocks.0.attn.qkv.weight", [12, 4], "Linear"),
        ("enc.blocks.0.ls1.gamma", [4], "LayerScale"),
        ("enc.pos_embed", [1, 3, 4], "TimmViT"),
    ]
    manifest = make_manifest(tmp_path, rows)
    entries = manifest_entries(manifest)
    assert entries == [(k, tuple(s), t) for k, s, t in rows]
    state = synthetic_state_dict(entries)
    assert list(state) == [k for k, _, _ in rows]
    assert all(v.dtype == torch.float32 for v in state.values())
    sha = tensors_sha256(state)

    digest = tmp_path / "digest.json"
    digest.write_text(
        json.dumps({"cache_key": weights_cache_key(entries), "sha256_all_tensors": sha})
    )
    path = cached_synthetic_checkpoint(manifest, digest, tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and weights_cache_key(entries) in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(state) and tensors_sha256(loaded) == sha
    mtime = path.stat().st_mtime_ns
    assert cached_synthetic_checkpoint(manifest, digest, tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == mtime

    digest.write_text(
        json.dumps({"cache_key": weights_cache_key(entries), "sha256_all_tensors": "0"})
    )
    with pytest.raises(CheckpointError, match="differ"):
        cached_synthetic_checkpoint(manifest, digest, tmp_path / "other")
    assert not list((tmp_path / "other").glob("*"))
    digest.write_text(json.dumps({"cache_key": "0" * 16, "sha256_all_tensors": sha}))
    with pytest.raises(CheckpointError, match="do not match"):
        cached_synthetic_checkpoint(manifest, digest, tmp_path / "other")

    out = write_synthetic_checkpoint(entries, tmp_path / "plain" / "w.pt")
    assert tensors_sha256(torch.load(out, weights_only=True)) == sha

    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "mc"))
    assert default_cache_dir() == tmp_path / "mc" / "synthetic"
    monkeypatch.delenv("MLSHARP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mlsharp" / "synthetic"


@pytest.mark.slow
def test_full_synthetic_weights_match_the_digest() -> None:
    """All 702M values, streamed one tensor at a time (~10-30 s, no checkpoint written)."""
    tensors = (synthetic_tensor(k, s, t) for k, s, t in ENTRIES)
    assert tensors_sha256(tensors) == DIGEST["sha256_all_tensors"]
