"""``mlsharp autotune``: error measures, selection, candidates, and real tuning of the tiny
preset on the CPU with its cache (keyed, invalidated, recovered)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from mlsharp.commands.random_checkpoint import write_random_checkpoint
from mlsharp.gaussians import Gaussians
from mlsharp.runtime.accuracy import (
    THRESHOLDS,
    PropertyError,
    compare_gaussians,
    threshold_failures,
)
from mlsharp.runtime.autotune import (
    MIN_SPEEDUP,
    AutotuneResult,
    Measurement,
    acceleration_candidates,
    autotune,
    backend_candidates,
    cache_file,
    cached_or_tuned,
    load_cached,
    postprocess_candidates,
    precision_candidates,
    save_result,
    select_best,
    server_options,
    synthetic_photo,
    tune_key,
)
from mlsharp.runtime.devices import probe_system
from mlsharp.runtime.options import RuntimeOptions

FP32 = RuntimeOptions()
BF16 = RuntimeOptions(precision="bf16")
FP16 = RuntimeOptions(precision="fp16")


# -- error measures -----------------------------------------------------------------------


def _quaternion_about_z(degrees: float) -> np.ndarray:
    half = np.radians(degrees) / 2
    return np.array([np.cos(half), 0.0, 0.0, np.sin(half)], dtype=np.float32)


def scene(n: int = 400, seed: int = 0) -> Gaussians:
    rng = np.random.default_rng(seed)
    positions = rng.normal(0, 1, (n, 3)).astype(np.float32)
    positions[:, 2] = rng.uniform(1, 10, n)
    # Well separated scales (4 : 2 : 1), sorted descending as the engine returns them.
    scales = (np.array([4.0, 2.0, 1.0]) * rng.uniform(0.01, 0.1, (n, 1))).astype(np.float32)
    rotations = np.tile(_quaternion_about_z(20), (n, 1))
    return Gaussians(
        positions=positions,
        scales=scales,
        rotations=rotations,
        colors=rng.uniform(0, 1, (n, 3)).astype(np.float32),
        opacities=rng.uniform(0, 1, n).astype(np.float32),
        focal_px=500.0,
        image_size=(64, 48),
    )


def test_identical_outputs_have_zero_error():
    g = scene()
    errors = compare_gaussians(g, g)
    assert all(e.mean == e.p99 == e.max == 0 for e in errors.values())
    assert threshold_failures(errors) == []


def test_error_measures_have_the_documented_units():
    ref = scene()
    moved = replace(
        ref,
        positions=ref.positions * np.float32(1.02),  # 2 % further from the camera
        scales=ref.scales * np.float32(np.exp(0.05)),
        rotations=np.tile(_quaternion_about_z(30), (len(ref), 1)),  # 10 degrees more
        colors=ref.colors + np.float32(0.004),
        opacities=ref.opacities - np.float32(0.2),
    )
    errors = compare_gaussians(ref, moved)
    assert errors["positions"].mean == pytest.approx(0.02, rel=1e-4)
    assert errors["scales"].max == pytest.approx(0.05, rel=1e-3)
    # About z: the first two axes turn by 10 degrees, the third (z) not at all.
    assert errors["rotations"].max == pytest.approx(10.0, abs=1e-3)
    assert errors["rotations"].count == 3 * len(ref)
    assert errors["colors"].mean == pytest.approx(0.004, abs=1e-6)
    assert errors["opacities"].p99 == pytest.approx(0.2, abs=1e-6)
    failures = threshold_failures(errors)
    assert any(f.startswith("positions mean 0.02 > 0.01") for f in failures)
    assert any(f.startswith("opacities mean") for f in failures)
    assert not any(f.startswith("colors") for f in failures)


def test_quaternion_sign_and_arbitrary_axes_are_not_errors():
    ref = scene()
    flipped = replace(ref, rotations=-ref.rotations)  # q and -q are the same rotation
    assert compare_gaussians(ref, flipped)["rotations"].max == pytest.approx(0, abs=1e-4)
    # A sphere (equal scales) has no defined axes: any rotation is as good as another.
    sphere = replace(ref, scales=np.ones_like(ref.scales))
    spun = replace(sphere, rotations=np.tile(_quaternion_about_z(70), (len(ref), 1)))
    assert compare_gaussians(sphere, spun)["rotations"].count == 0
    # A disc (two equal scales): only its normal is compared.
    disc = replace(ref, scales=np.tile(np.float32([2, 2, 1]), (len(ref), 1)))
    spun_disc = replace(disc, rotations=np.tile(_quaternion_about_z(70), (len(ref), 1)))
    rotations = compare_gaussians(disc, spun_disc)["rotations"]
    assert rotations.count == len(ref) and rotations.max == pytest.approx(0, abs=1e-3)


def test_non_finite_output_fails():
    ref = scene()
    broken = replace(ref, positions=ref.positions.copy())
    broken.positions[3] = np.nan
    errors = compare_gaussians(ref, broken)
    assert errors["positions"].mean == float("inf")
    assert threshold_failures(errors)[0].startswith("positions mean inf")


def test_compare_refuses_different_sizes():
    with pytest.raises(ValueError, match="cannot compare"):
        compare_gaussians(scene(400), scene(300))


# -- selection ------------------------------------------------------------------------------


def measured(options, seconds, *, reference=False, errors=None, error=None) -> Measurement:
    """A measurement as the tuner records it: failures come from the real thresholds."""
    errors = errors or {}
    return Measurement(
        options=options,
        reference=reference,
        error=error,
        times=[] if error else [seconds],
        errors=errors,
        failures=threshold_failures(errors),
    )


def within(**overrides: float) -> dict[str, PropertyError]:
    """Errors at half of every threshold, with some means overridden."""
    errors = {
        name: PropertyError(mean=t.mean / 2, p99=t.p99 / 2, max=t.p99, count=10)
        for name, t in THRESHOLDS.items()
    }
    for name, mean in overrides.items():
        errors[name] = replace(errors[name], mean=mean)
    return errors


def test_the_fastest_candidate_within_thresholds_wins():
    measurements = [
        measured(FP32, 1.0, reference=True),
        measured(BF16, 0.5, errors=within()),
        measured(FP16, 0.4, errors=within()),
    ]
    assert select_best(measurements).options == FP16


def test_a_candidate_over_a_threshold_is_rejected():
    too_far = within(positions=THRESHOLDS["positions"].mean * 3)
    measurements = [
        measured(FP32, 1.0, reference=True),
        measured(FP16, 0.3, errors=too_far),
        measured(BF16, 0.5, errors=within()),
    ]
    assert measurements[1].failures and not measurements[1].qualifies
    assert select_best(measurements).options == BF16
    # With only the inaccurate one, fp32 stays.
    assert select_best(measurements[:2]).reference


def test_failed_candidates_and_noise_level_gains_keep_fp32():
    measurements = [
        measured(FP32, 1.0, reference=True),
        measured(FP16, 0.0, error="out of memory"),
        measured(BF16, 1.0 / (MIN_SPEEDUP * 0.99), errors=within()),  # just under the margin
    ]
    assert select_best(measurements).reference
    # The reference qualifies whatever its own run-to-run noise.
    noisy = measured(FP32, 1.0, reference=True, errors=within(colors=1.0))
    assert noisy.failures and noisy.qualifies and select_best([noisy]) is noisy


def test_selection_needs_a_reference():
    with pytest.raises(ValueError, match="reference"):
        select_best([measured(BF16, 0.5, errors=within())])


# -- candidates -----------------------------------------------------------------------------


def labels(options: list[RuntimeOptions]) -> list[str]:
    return [o.label() for o in options]


def test_candidates_per_device():
    assert labels(precision_candidates("cpu", tf32=False, bf16=True)) == [
        "fp32",
        "fp32+channels_last",
        "bf16",
        "bf16+channels_last",
    ]
    assert labels(precision_candidates("cpu", tf32=False, bf16=False)) == [
        "fp32",
        "fp32+channels_last",
    ]
    ampere = precision_candidates("cuda", tf32=True, bf16=True, resolution=1024)
    assert labels(ampere)[::2] == ["fp32+1024px", "tf32+1024px", "bf16+1024px", "fp16+1024px"]
    assert len(ampere) == 8 and ampere[0] == RuntimeOptions(resolution=1024)
    turing = precision_candidates("cuda", tf32=False, bf16=False)
    assert labels(turing)[::2] == ["fp32", "fp16"]
    assert labels(precision_candidates("mps", tf32=False, bf16=True)) == ["fp32", "fp16", "bf16"]
    assert labels(precision_candidates("mps", tf32=False, bf16=False)) == ["fp32", "fp16"]
    base = RuntimeOptions(precision="bf16", channels_last=True)
    assert labels(acceleration_candidates(base, "cuda", compile=True)) == [
        "bf16+channels_last+compile",
        "bf16+channels_last+cuda_graphs",
        "bf16+channels_last+compile+cuda_graphs",
    ]
    assert acceleration_candidates(base, "cpu", compile=False) == []
    assert labels(postprocess_candidates(base)) == ["bf16+channels_last+fast_postprocess"]
    assert postprocess_candidates(RuntimeOptions(fast_postprocess=True)) == []
    # The other CPU runtimes: float and int8 weights; OpenVINO's bf16 (also with int8
    # weights, the least memory) only where the CPU computes bf16.
    assert labels(backend_candidates(["openvino", "onnxruntime"], bf16=True)) == [
        "openvino+fp32",
        "openvino+fp32+int8_weights",
        "openvino+bf16",
        "openvino+bf16+int8_weights",
        "onnxruntime+fp32",
        "onnxruntime+fp32+int8_weights",
    ]
    assert "bf16" not in " ".join(labels(backend_candidates(["openvino"], bf16=False)))


def test_synthetic_photo_is_deterministic():
    a, b = synthetic_photo(), synthetic_photo()
    assert np.array_equal(a.pixels, b.pixels)
    assert a.pixels.shape == (768, 1024, 3) and a.pixels.std() > 20


# -- real tuning on the CPU (tiny preset) -----------------------------------------------------


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSHARP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLSHARP_CHECKPOINT", raising=False)
    return tmp_path / "cache"


def tune(checkpoint, **kwargs):
    """The quickest real tuning: the fp32 reference alone, one run, no warm-up."""
    options = {
        "preset": "tiny",
        "device": "cpu",
        "runs": 1,
        "warmup": 0,
        "candidates": [],
        "download": False,
    }
    options.update(kwargs)
    return autotune(checkpoint, **options)


def test_autotune_measures_caches_and_reuses(cache, tiny_checkpoint):
    first = tune(tiny_checkpoint, candidates=[RuntimeOptions(channels_last=True)])
    assert not first.from_cache
    assert first.path == cache_file(first.key) and first.path.parent == cache / "autotune"
    reference = first.reference
    assert reference.options == FP32 and reference.qualifies
    assert len(reference.times) == 1 and reference.median_s > 0
    assert reference.peak_memory and reference.peak_memory > 0
    # fp32 against its own first run: the CPU path is deterministic.
    assert reference.errors["positions"].max == 0
    assert [m.options.label() for m in first.measurements] == ["fp32", "fp32+channels_last"]
    assert first.best in (FP32, RuntimeOptions(channels_last=True))
    key = first.key
    assert (key.device, key.preset, key.resolution, key.torch) == (
        "cpu",
        "tiny",
        512,
        torch.__version__,
    )
    stored = json.loads(first.path.read_text())
    assert stored["best"] == first.best.to_dict() and stored["key"]["preset"] == "tiny"

    mtime = first.path.stat().st_mtime_ns
    second = tune(tiny_checkpoint)
    assert second.from_cache and second.best == first.best
    assert first.path.stat().st_mtime_ns == mtime  # nothing measured, nothing written
    assert (
        cached_or_tuned(tiny_checkpoint, preset="tiny", device="cpu", download=False) == first.best
    )

    forced = tune(tiny_checkpoint, candidates=[RuntimeOptions(channels_last=True)], force=True)
    assert not forced.from_cache and first.path.stat().st_mtime_ns != mtime


def test_a_new_checkpoint_or_torch_version_tunes_again(cache, tiny_checkpoint, tmp_path):
    first = tune(tiny_checkpoint)
    other = write_random_checkpoint("tiny", tmp_path / "other.pt", seed=1)
    second = tune(other)
    assert not second.from_cache
    assert second.key.checkpoint_sha256 != first.key.checkpoint_sha256
    assert second.path != first.path and first.path.exists()
    # Another torch version is another key: not found in the cache...
    assert load_cached(replace(first.key, torch="9.9.9")) is None
    assert load_cached(first.key) is not None
    # ...and a file whose stored key no longer matches (e.g. written by another torch) is stale.
    data = json.loads(first.path.read_text())
    data["key"]["torch"] = "9.9.9"
    first.path.write_text(json.dumps(data))
    again = tune(tiny_checkpoint)
    assert not again.from_cache
    assert json.loads(first.path.read_text())["key"]["torch"] == torch.__version__


@pytest.mark.parametrize("content", ["{ not json", '{"format": "mlsharp-autotune-v1"}', "[]"])
def test_a_corrupt_cache_file_is_reported_and_replaced(cache, tiny_checkpoint, caplog, content):
    first = seed_cache(tiny_checkpoint, RuntimeOptions(channels_last=True))
    assert tune(tiny_checkpoint).from_cache  # the seeded file is this machine's
    first.path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="mlsharp.autotune"):
        again = tune(tiny_checkpoint)
    assert not again.from_cache
    assert "ignoring unreadable autotune cache file" in caplog.text
    assert load_cached(first.key) is not None  # rewritten whole
    leftovers = [p for p in first.path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_candidate_that_cannot_run_is_skipped_not_fatal(cache, tiny_checkpoint):
    # TF32 exists only on NVIDIA GPUs: the engine refuses it on the CPU.
    result = tune(tiny_checkpoint, candidates=[RuntimeOptions(precision="tf32")])
    refused = result.measurements[1]
    assert refused.error and "tf32" in refused.error and not refused.qualifies
    assert result.best == FP32


def test_bad_arguments_are_config_errors(cache, tiny_checkpoint):
    from mlsharp.errors import ConfigError

    with pytest.raises(ConfigError, match="runs"):
        tune(tiny_checkpoint, runs=0)


@pytest.mark.slow  # the whole CPU search (5 model loads) in a subprocess: ~1 min on 2 cores
def test_autotune_cli_on_cpu_then_doctor_shows_it(run_cli, tiny_checkpoint, tmp_path):
    args = ["--preset", "tiny", "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    # torch only: the other backends' candidates are tested in tests/test_backends.py.
    result = run_cli(
        "autotune", *args, "--runs", "1", "--warmup", "0", "--json", "--backend", "torch"
    )
    assert result.returncode == 0, result.stderr
    tuned = json.loads(result.stdout)
    assert tuned["from_cache"] is False
    rows = {m["label"]: m for m in tuned["measurements"]}
    assert rows["fp32"]["reference"] and rows["fp32"]["qualifies"]
    bf16 = probe_system(query_driver=False).cpu.bf16_native
    stage1 = ["fp32", "fp32+channels_last", *(["bf16", "bf16+channels_last"] if bf16 else [])]
    # The CPU search: precisions x layouts, then the device post-processing on the best of
    # those; no compile (needs --compile), no CUDA graphs.
    assert list(rows)[: len(stage1)] == stage1 and len(rows) == len(stage1) + 1
    *_, last = rows
    assert last.endswith("+fast_postprocess") and last[: -len("+fast_postprocess")] in stage1
    for m in rows.values():
        assert m["error"] is not None or (m["median_s"] > 0 and m["peak_memory"] > 0)
        assert m["error"] is not None or set(m["errors"]) == {
            "positions",
            "scales",
            "rotations",
            "colors",
            "opacities",
        }
    cache_files = list((tmp_path / "cache" / "autotune").glob("*.json"))
    assert len(cache_files) == 1 and json.loads(cache_files[0].read_text())["best"] == tuned["best"]

    text = run_cli("autotune", *args, "--backend", "torch")
    assert text.returncode == 0, text.stderr
    assert "cached result from" in text.stdout and "chosen: " in text.stdout
    assert text.stdout.splitlines()[1].split()[:3] == ["candidate", "time", "forward"]

    doctor = run_cli("doctor", "--json", "--checkpoint", str(tiny_checkpoint), "--preset", "tiny")
    assert doctor.returncode == 0, doctor.stderr
    entries = json.loads(doctor.stdout)["autotune"]
    assert len(entries) == 1 and entries[0]["matches_checkpoint"]
    assert entries[0]["options"] == tuned["best"]


def test_serve_autotune_flag_and_setting(monkeypatch):
    from mlsharp.cli import build_parser
    from mlsharp.commands.serve import settings_from_args

    monkeypatch.delenv("MLSHARP_AUTOTUNE", raising=False)
    parser = build_parser()
    assert settings_from_args(parser.parse_args(["serve"])).autotune is False
    assert settings_from_args(parser.parse_args(["serve", "--autotune"])).autotune is True
    monkeypatch.setenv("MLSHARP_AUTOTUNE", "1")
    assert settings_from_args(parser.parse_args(["serve"])).autotune is True


def test_cache_lives_under_mlsharp_cache(cache):
    from mlsharp.runtime.autotune import cache_root

    assert cache_root() == cache / "autotune"


def seed_cache(checkpoint, best: RuntimeOptions, batch_size: int = 1) -> AutotuneResult:
    """A cached result for the tiny preset on this CPU, as a tuning run would store it."""
    key = tune_key(
        checkpoint,
        preset="tiny",
        device=torch.device("cpu"),
        resolution=None,
        probe=probe_system(query_driver=False),
        batch_size=batch_size,
    )
    result = AutotuneResult(
        key=key,
        best=best,
        measurements=[
            Measurement(FP32, reference=True, times=[2.0]),
            Measurement(best, times=[1.0]),
        ],
        created_at="2026-11-22T10:00:00+00:00",
        runs=1,
        warmup=0,
        image="synthetic 1024x768",
    )
    save_result(result)
    return result


def test_server_options_follow_the_autotune_setting(cache, tiny_checkpoint):
    from mlsharp.config import Settings

    # The server runs batches of 3: the choice timed at batch 3 is the one it takes.
    seed_cache(tiny_checkpoint, RuntimeOptions(channels_last=True), batch_size=1)
    best = RuntimeOptions(precision="bf16", channels_last=True)
    seeded = seed_cache(tiny_checkpoint, best, batch_size=3)
    common = {"preset": "tiny", "checkpoint": str(tiny_checkpoint), "device": "cpu"}
    plain = Settings(**common, precision="fp16", batch_size=3)
    assert server_options(plain) == plain.runtime_options()  # no autotune: the settings
    tuned = server_options(Settings(**common, autotune=True, batch_size=3))
    assert tuned == RuntimeOptions(precision="bf16", channels_last=True, batch_size=3)
    assert load_cached(seeded.key).best == seeded.best


def test_serving_batch_size_is_what_the_server_batches():
    from mlsharp.config import Settings
    from mlsharp.runtime.autotune import serving_batch_size

    assert serving_batch_size(Settings(workers=1)) == 1
    assert serving_batch_size(Settings(workers=4)) == 4  # four threads share forwards
    assert serving_batch_size(Settings(workers=4, batch_size=8)) == 8
    assert serving_batch_size(Settings(workers=64)) == 16  # the estimate's cap


def test_autotune_times_the_batch_size_asked_for(cache, tiny_checkpoint):
    single = tune(tiny_checkpoint)
    batched = tune(tiny_checkpoint, batch_size=2)
    assert (single.key.batch_size, batched.key.batch_size) == (1, 2)
    assert batched.path != single.path and not batched.from_cache
    assert batched.reference.ran and batched.reference.times[0] > 0  # seconds per photo
    assert tune(tiny_checkpoint, batch_size=2).from_cache


def test_serve_with_autotune_runs_the_cached_choice(cache, tiny_checkpoint, tmp_path):
    from tests.service.conftest import run_live_server

    seeded = seed_cache(tiny_checkpoint, RuntimeOptions(channels_last=True))
    mtime = seeded.path.stat().st_mtime_ns
    with run_live_server(tmp_path, tiny_checkpoint, autotune=True) as live:
        engine = live.state.model.engine
        assert engine is not None, live.state.model.error
        assert engine.options == RuntimeOptions(channels_last=True)
        assert live.state.model.model_id.endswith(":fp32+channels_last")
        assert live.client.get("/v1/ready").status_code == 200
    assert seeded.path.stat().st_mtime_ns == mtime  # read, not re-measured
