"""``Engine.predict_many``: several photos per forward equal one-at-a-time predictions.

Batched matmuls and convolutions may sum in another order, so results agree to float32
rounding (the ``FP32_ROUNDING`` tolerances of tests/test_precision.py), not bit for bit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mlsharp.engine import Engine, StageTimes
from mlsharp.errors import ConfigError, NonFiniteOutput
from mlsharp.imaging import load_image
from mlsharp.runtime.memory import estimate_batch_size
from mlsharp.runtime.options import RuntimeOptions
from tests.test_precision import FP32_ROUNDING, assert_close, structured_photo


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return Engine.load(tiny_checkpoint, preset="tiny", device="cpu", download=False)


@pytest.fixture(scope="module")
def photos():
    # Different sizes, aspect ratios and focal lengths: each keeps its own unprojection.
    return [
        load_image(structured_photo(160, 120, seed=1), focal_mm=24, name="a.png"),
        load_image(structured_photo(90, 150, seed=2), focal_mm=50, name="b.png"),
        load_image(structured_photo(128, 128, seed=3), focal_mm=35, name="c.png"),
    ]


@pytest.fixture(scope="module")
def singles(engine, photos):
    return [engine.predict(photo) for photo in photos]


@pytest.mark.parametrize("batch_size", [3, 2])
def test_batched_predictions_equal_single_ones(engine, photos, singles, batch_size):
    stages: list[str] = []
    batched = engine.predict_many(photos, batch_size=batch_size, on_stage=stages.append)
    assert len(batched) == len(photos)
    for photo, single, many in zip(photos, singles, batched, strict=True):
        assert many.image_size == (photo.width, photo.height)
        assert many.focal_px == single.focal_px
        assert many.metadata["source"] == photo.name
        assert_close(many, single, FP32_ROUNDING)
        assert many.depth is not None and many.depth.shape == (photo.height, photo.width)
    chunks = -(-len(photos) // batch_size)
    assert stages == ["preprocess", "inference", "postprocess"] * chunks
    sizes = [g.metadata["timings"].extra["batch_size"] for g in batched]
    assert sizes == [min(batch_size, len(photos) - i // batch_size * batch_size) for i in range(3)]


def test_results_do_not_keep_the_batch_alive(engine, photos):
    batched = engine.predict_many(photos, batch_size=3)
    for g in batched:
        for array in (g.positions, g.colors, g.opacities):
            # Each array owns (or views only its own) memory, not a slice of the batch.
            assert array.base is None or array.base.nbytes == array.nbytes


def test_stage_times_split_transfer_from_postprocess(engine, photos):
    times = engine.predict(photos[0]).metadata["timings"]
    assert isinstance(times, StageTimes)
    assert times.preprocess > 0 and times.inference > 0 and times.postprocess > 0
    assert times.transfer >= 0 and times.extra == {"batch_size": 1.0}


def test_batch_size_comes_from_the_options(tiny_checkpoint, photos):
    engine = Engine.load(
        tiny_checkpoint,
        preset="tiny",
        device="cpu",
        download=False,
        options=RuntimeOptions(batch_size=2),
    )
    results = engine.predict_many(photos)
    assert [g.metadata["timings"].extra["batch_size"] for g in results] == [2.0, 2.0, 1.0]


def test_invalid_batch_sizes_are_config_errors(engine, photos, tiny_checkpoint):
    with pytest.raises(ConfigError, match="at least 1"):
        engine.predict_many(photos, batch_size=0)
    with pytest.raises(ConfigError, match="at least 1"):
        Engine.load(
            tiny_checkpoint,
            preset="tiny",
            device="cpu",
            download=False,
            options=RuntimeOptions(batch_size=0),
        )


def test_a_batch_gives_each_photo_its_own_outcome(engine, photos, singles):
    """A photo that breaks the shared forward fails alone; the others are retried one by
    one and get their Gaussians (``Engine.predict_batch``)."""
    bad = dataclasses.replace(photos[0], pixels=photos[0].pixels[:, :, :2].copy(), name="bad")
    outcomes = engine.predict_batch([photos[1], bad, photos[2]])
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].gaussians is None
    with pytest.raises(type(outcomes[1].error)):
        outcomes[1].unwrap()
    for outcome, single in zip((outcomes[0], outcomes[2]), singles[1:], strict=True):
        assert_close(outcome.unwrap(), single, FP32_ROUNDING)
        assert outcome.unwrap().metadata["timings"].extra["batch_size"] == 1.0


def test_a_photo_whose_covariances_are_not_finite_fails_alone(engine, photos, singles):
    # A focal length of 1e-300 px (a corrupt EXIF value) makes that photo's covariances
    # non-finite: it fails with NonFiniteOutput naming it; its batch mates keep their
    # results from the shared forward (not retried: batch size 3).
    absurd = dataclasses.replace(photos[1], focal_px=1e-300, name="absurd.png")
    outcomes = engine.predict_batch([photos[0], absurd, photos[2]])
    assert isinstance(outcomes[1].error, NonFiniteOutput), outcomes[1].error
    assert "absurd.png" in str(outcomes[1].error) and outcomes[1].gaussians is None
    for index in (0, 2):
        gaussians = outcomes[index].unwrap()
        assert_close(gaussians, singles[index], FP32_ROUNDING)
        assert gaussians.metadata["timings"].extra["batch_size"] == 3.0


class _NaNForPhoto:
    """The engine's runtime, with NaN colours in one photo's network output (what
    broken weights or an overflowing precision give)."""

    def __init__(self, runtime, index: int) -> None:
        self.runtime, self.index = runtime, index

    def __getattr__(self, name: str):
        return getattr(self.runtime, name)

    def run(self, images, factors):
        composed = self.runtime.run(images, factors)
        with torch.inference_mode():  # the output is an inference tensor
            composed.colors[self.index, :5] = float("nan")
        return composed


def test_a_photo_with_nan_output_fails_alone(engine, photos, singles):
    poisoned = Engine(_NaNForPhoto(engine.runtime, 1))
    outcomes = poisoned.predict_batch(photos)
    assert isinstance(outcomes[1].error, NonFiniteOutput)
    assert "5 of" in str(outcomes[1].error) and "colors" in str(outcomes[1].error)
    for index in (0, 2):
        gaussians = outcomes[index].unwrap()
        assert_close(gaussians, singles[index], FP32_ROUNDING)
        assert gaussians.metadata["timings"].extra["batch_size"] == 3.0
    with pytest.raises(NonFiniteOutput):  # alone, the same photo fails the same way
        Engine(_NaNForPhoto(engine.runtime, 0)).predict(photos[1])


def test_a_stage_callback_error_fails_only_its_photo(engine, photos, singles):
    class Canceled(Exception):
        pass

    def cancel(stage: str) -> None:
        if stage == "inference":
            raise Canceled()

    seen: list[str] = []
    outcomes = engine.predict_batch(photos, on_stage=[seen.append, cancel, None])
    assert isinstance(outcomes[1].error, Canceled) and outcomes[1].gaussians is None
    assert seen == ["preprocess", "inference", "postprocess"]
    for index in (0, 2):
        assert_close(outcomes[index].unwrap(), singles[index], FP32_ROUNDING)
        assert outcomes[index].unwrap().metadata["timings"].extra["batch_size"] == 3.0


def test_when_every_photo_is_canceled_the_forward_does_not_run(engine, photos):
    class Canceled(Exception):
        pass

    def cancel(stage: str) -> None:
        raise Canceled(stage)

    outcomes = engine.predict_batch(photos[:2], on_stage=[cancel, cancel])
    assert [str(o.error) for o in outcomes] == ["preprocess", "preprocess"]
    with pytest.raises(Canceled, match="preprocess"):
        engine.predict(photos[0], on_stage=cancel)


def test_empty_input_gives_no_results(engine):
    assert engine.predict_many([]) == []


def test_batch_estimate_is_one_off_cuda():
    assert estimate_batch_size(torch.device("cpu"), 10**6) == 1
    assert estimate_batch_size(torch.device("cpu"), None) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batch_estimate_uses_measured_memory(tiny_checkpoint, photos):
    engine = Engine.load(tiny_checkpoint, preset="tiny", device="cuda", download=False)
    engine.predict(photos[0])
    measured = engine.runtime.bytes_per_image
    assert measured and measured > 0
    assert estimate_batch_size(engine.device, measured) >= 1
    results = engine.predict_many(photos)  # default: estimated from free memory
    singles = [engine.predict(p) for p in photos]
    for many, single in zip(results, singles, strict=True):
        assert_close(many, single, FP32_ROUNDING)


def test_cli_predicts_in_batches(run_cli, tiny_checkpoint, tmp_path):
    from mlsharp.splat import read_ply

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        (folder / f"p{index}.png").write_bytes(structured_photo(64 + 16 * index, 48, seed=index))
    (folder / "broken.png").write_bytes(b"not an image")
    common = ["--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--device", "cpu", "-q"]
    one = run_cli("predict", str(folder), "-o", str(tmp_path / "one"), *common)
    many = run_cli(
        "predict", str(folder), "-o", str(tmp_path / "many"), "--batch-size", "2", *common
    )
    # The broken photo fails alone in both runs; the others are written.
    assert one.returncode == many.returncode == 1
    assert "failed" in many.stderr and "broken.png" in many.stderr
    for index in range(3):
        a = read_ply(tmp_path / "one" / f"p{index}.ply")
        b = read_ply(tmp_path / "many" / f"p{index}.ply")
        assert_close(b, a, FP32_ROUNDING)


def test_fixed_shape_forwards_run_in_bucket_sizes(tiny_checkpoint, photos):
    # compile / CUDA graphs pay a compilation or capture per input shape: batches are cut
    # into bucket sizes (3 photos: 2 + 1; 7: 4 + 2 + 1), not run at every size.
    engine = Engine.load(
        tiny_checkpoint,
        preset="tiny",
        device="cpu",
        download=False,
        options=RuntimeOptions(compile=True, batch_size=6),
    )
    assert engine.suggested_batch_size() == 4
    engine.runtime._forward = engine.model  # the eager network: this test is about the shapes
    shapes: list[int] = []
    engine.model.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape[0]))
    results = engine.predict_many(photos, batch_size=3)
    assert shapes == [2, 1] and len(results) == 3
