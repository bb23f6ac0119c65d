"""Deterministic synthetic SHARP weights (``sharp-parity-weights-v1``).

The parity fixtures (``tests/data/parity``) were produced by Apple's ml-sharp with a checkpoint
whose tensors are *generated* from the checkpoint manifest, not trained. This module regenerates
that checkpoint bit for bit. Every tensor depends only on its state_dict key, its shape and the
type of the module that owns it (rules: ``tests/data/parity/WEIGHTS.md``):

* a per-key splitmix64 stream ``u_i = splitmix64((crc32(key) << 32) | i) >> 11 * 2**-53``;
* ``value_i = float32(mean + std * sqrt(3) * (2 u_i - 1))`` with (mean, std) from
  :func:`weight_rule`.

NumPy is imported at module import; torch only inside the functions that build tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsharp._atomic import atomic_path
from mlsharp.errors import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "OVERRIDES",
    "WEIGHTS_VERSION",
    "ManifestEntry",
    "cached_synthetic_checkpoint",
    "default_cache_dir",
    "iter_synthetic_tensors",
    "manifest_entries",
    "synthetic_state_dict",
    "synthetic_tensor",
    "tensors_sha256",
    "weight_rule",
    "weights_cache_key",
    "write_synthetic_checkpoint",
]

WEIGHTS_VERSION = "sharp-parity-weights-v1"

ManifestEntry = tuple[str, tuple[int, ...], str]
"""One manifest row: (state_dict key, shape, owning module type)."""

OVERRIDES: dict[str, tuple[float, float]] = {
    "monodepth_model.monodepth_predictor.head.4.weight": (0.0, 0.1 / math.sqrt(32)),
    "monodepth_model.monodepth_predictor.head.4.bias": (1.5, 0.05),
    "prediction_head.geometry_prediction_head.weight": (0.0, 5.0 / math.sqrt(32)),
    "prediction_head.texture_prediction_head.weight": (0.0, 0.15 / math.sqrt(32)),
}
"""Per-key (mean, std) that take precedence over the module-type rules."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_SQRT3 = math.sqrt(3.0)
_CHUNK = 1 << 20  # elements per generation step: ~16 MB of scratch memory


def weight_rule(key: str, shape: Sequence[int], module_type: str) -> tuple[float, float]:
    """Return the (mean, std) of the synthetic tensor ``key``; first matching rule wins.

    Raises:
        ValueError: no rule covers this key / module type / shape.
    """
    if key in OVERRIDES:
        return OVERRIDES[key]
    leaf = key.rsplit(".", 1)[-1]
    shape = tuple(int(d) for d in shape)
    if module_type in ("Linear", "Conv2d", "ConvTranspose2d"):
        if leaf == "bias":
            return 0.0, 0.05
        if leaf == "weight":
            dims = {"Linear": 2, "Conv2d": 4, "ConvTranspose2d": 4}[module_type]
            if len(shape) != dims:
                raise ValueError(f"{key}: {module_type} weight must have {dims} dims, got {shape}")
            if module_type == "Linear":
                fan_in = shape[1]
            elif module_type == "Conv2d":
                fan_in = shape[1] * shape[2] * shape[3]
            else:  # ConvTranspose2d [in, out, k, k] with stride == k: one tap per input channel
                fan_in = shape[0]
            return 0.0, 1.0 / math.sqrt(fan_in)
    elif module_type in ("LayerNorm", "GroupNorm"):
        if leaf == "weight":
            return 1.0, 0.1
        if leaf == "bias":
            return 0.0, 0.05
    elif module_type == "LayerScale":
        if leaf == "gamma":
            return 0.1, 0.02
    elif module_type == "TimmViT" and leaf in ("cls_token", "pos_embed"):
        return 0.0, 0.2
    raise ValueError(f"no synthetic-weight rule for {key!r} ({module_type}, shape {shape})")


def _fill(out: np.ndarray, key: str, mean: float, std: float, chunk: int) -> None:
    """Write the stream of ``key`` into the flat float32 array ``out``, ``chunk`` at a time."""
    base = np.uint64(zlib.crc32(key.encode("utf-8"))) << np.uint64(32)
    with np.errstate(over="ignore"):
        for start in range(0, out.size, chunk):
            stop = min(out.size, start + chunk)
            z = np.arange(start, stop, dtype=np.uint64)
            z |= base
            z += _GOLDEN  # all uint64 arithmetic wraps modulo 2**64
            z ^= z >> np.uint64(30)
            z *= _MUL1
            z ^= z >> np.uint64(27)
            z *= _MUL2
            z ^= z >> np.uint64(31)
            z >>= np.uint64(11)
            v = z.astype(np.float64)
            del z
            v *= 2.0**-53  # u in [0, 1), exact
            v *= 2.0
            v -= 1.0
            v *= _SQRT3  # v = sqrt(3) * (2u - 1)
            v *= std
            v += mean
            out[start:stop] = v  # float64 -> float32, round to nearest


def synthetic_tensor(
    key: str, shape: Sequence[int], module_type: str, *, chunk: int = _CHUNK
) -> np.ndarray:
    """Generate the synthetic float32 tensor of one state_dict entry (C order, given shape).

    Args:
        key: the state_dict key (seeds the stream).
        shape: the tensor shape.
        module_type: the type of the module owning the tensor (``Linear``, ``Conv2d``, ...).
        chunk: elements generated per step (bounds scratch memory; does not change the result).

    Raises:
        ValueError: no rule covers this entry.
    """
    mean, std = weight_rule(key, shape, module_type)
    shape = tuple(int(d) for d in shape)
    out = np.empty(math.prod(shape), dtype=np.float32)
    _fill(out, key, mean, std, max(1, int(chunk)))
    return out.reshape(shape)


def manifest_entries(path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read ``(key, shape, module_type)`` for every tensor of a checkpoint manifest, in order.

    Raises:
        ValueError: the manifest lists a tensor that is not float32.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries: list[ManifestEntry] = []
    for row in data["state_dict"]:
        if row.get("dtype", "float32") != "float32":
            raise ValueError(f"{row['key']}: only float32 is supported, got {row['dtype']}")
        entries.append((row["key"], tuple(int(d) for d in row["shape"]), row["module_type"]))
    return entries


def iter_synthetic_tensors(entries: Iterable[ManifestEntry]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(key, array)`` for each entry, one tensor at a time (manifest order)."""
    for key, shape, module_type in entries:
        yield key, synthetic_tensor(key, shape, module_type)


def _as_le_float32(tensor: Any) -> np.ndarray:
    if not isinstance(tensor, np.ndarray):  # a torch tensor
        tensor = tensor.detach().cpu().numpy()
    return np.ascontiguousarray(tensor, dtype="<f4")


def tensors_sha256(tensors: Mapping[str, Any] | Iterable[Any]) -> str:
    """sha256 over the concatenated little-endian float32 bytes of ``tensors``, in order.

    Accepts a state dict (its values, in insertion order) or any iterable of NumPy arrays /
    torch tensors; a generator is consumed one tensor at a time.
    """
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    digest = hashlib.sha256()
    for tensor in values:
        digest.update(_as_le_float32(tensor).data.cast("B"))
    return digest.hexdigest()


def _generate(entries: Iterable[ManifestEntry], digest: Any = None) -> dict[str, torch.Tensor]:
    """Build the state dict; update ``digest`` (a hashlib object) with each tensor's bytes."""
    import torch

    state: dict[str, torch.Tensor] = {}
    for key, array in iter_synthetic_tensors(entries):
        if digest is not None:
            digest.update(_as_le_float32(array).data.cast("B"))
        state[key] = torch.from_numpy(array)  # shares memory: no second copy
    return state


def synthetic_state_dict(entries: Iterable[ManifestEntry]) -> dict[str, torch.Tensor]:
    """The full synthetic state dict ``{key: float32 tensor}`` in manifest order."""
    return _generate(entries)


def _atomic_torch_save(obj: Any, dest: Path) -> Path:
    import torch

    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
    return dest


def write_synthetic_checkpoint(
    entries: Iterable[ManifestEntry],
    dest: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
) -> Path:
    """Generate the synthetic state dict and ``torch.save`` it atomically to ``dest``.

    Args:
        entries: manifest rows (see :func:`manifest_entries`).
        dest: output ``.pt`` path; written via a temporary file in the same directory and
            ``os.replace``, so readers never see a partial file.
        expected_sha256: if given, the tensors' sha256 (see :func:`tensors_sha256`), computed
            while generating, must equal it; nothing is written otherwise.

    Raises:
        CheckpointError: the generated tensors do not match ``expected_sha256``.
    """
    dest = Path(dest)
    digest = hashlib.sha256() if expected_sha256 is not None else None
    state = _generate(entries, digest)
    if digest is not None and digest.hexdigest() != expected_sha256:
        raise CheckpointError(
            f"synthetic weights differ from the reference digest ({digest.hexdigest()} != "
            f"{expected_sha256}); the generator no longer follows WEIGHTS.md"
        )
    return _atomic_torch_save(state, dest)


def weights_cache_key(entries: Iterable[ManifestEntry]) -> str:
    """16 hex digits identifying the rules version and every (key, shape, mean, std).

    Equals ``cache_key`` of ``weights_digest.json`` when manifest and rules are the ones the
    digest was made from.
    """
    digest = hashlib.sha256(WEIGHTS_VERSION.encode())
    for key, shape, module_type in entries:
        mean, std = weight_rule(key, shape, module_type)
        digest.update(f"{key}|{list(shape)}|float32|{mean!r}|{std!r}\n".encode())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$MLSHARP_CACHE/synthetic`` if set, else ``~/.cache/mlsharp/synthetic``."""
    root = os.environ.get("MLSHARP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "mlsharp"
    return base / "synthetic"


def cached_synthetic_checkpoint(
    manifest_path: str | os.PathLike[str],
    digest_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Path of the synthetic checkpoint, generated and verified on first use.

    The file is ``<cache_dir>/sharp_synthetic_<cache_key>.pt`` (``cache_key`` from
    ``weights_digest.json``; ``cache_dir`` defaults to :func:`default_cache_dir`). When absent it
    is generated (~2.8 GB), its sha256 checked against ``sha256_all_tensors`` while generating,
    and written atomically.

    Raises:
        CheckpointError: manifest and digest do not belong together, or the generated tensors
            do not match the digest.
    """
    expected = json.loads(Path(digest_path).read_text(encoding="utf-8"))
    if expected.get("weights_version", WEIGHTS_VERSION) != WEIGHTS_VERSION:
        raise CheckpointError(f"unsupported weights version {expected['weights_version']!r}")
    entries = manifest_entries(manifest_path)
    cache_key = expected["cache_key"]
    if weights_cache_key(entries) != cache_key:
        raise CheckpointError(
            f"manifest {manifest_path} and digest {digest_path} do not match "
            f"(cache key {weights_cache_key(entries)} != {cache_key})"
        )
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"sharp_synthetic_{cache_key}.pt"
    if path.is_file():
        return path
    return write_synthetic_checkpoint(entries, path, expected_sha256=expected["sha256_all_tensors"])
