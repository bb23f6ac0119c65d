"""``Batcher``: concurrent callers share forwards, and each gets its own result or error.

The tests hold the first forward open from inside its stage callback until the other
threads have queued their photos, so which photos share a forward is deterministic.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from mlsharp.engine import Engine
from mlsharp.errors import NonFiniteOutput
from mlsharp.imaging import load_image
from mlsharp.runtime.batcher import Batcher
from tests.test_precision import FP32_ROUNDING, assert_close, structured_photo


class Canceled(Exception):
    """What a job's stage callback raises when the job was cancelled meanwhile."""


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return Engine.load(tiny_checkpoint, preset="tiny", device="cpu", download=False)


@pytest.fixture(scope="module")
def photos():
    return [
        load_image(structured_photo(96 + 16 * i, 72, seed=i), focal_mm=20 + 5 * i, name=f"{i}.png")
        for i in range(5)
    ]


@pytest.fixture(scope="module")
def singles(engine, photos):
    return [engine.predict(photo) for photo in photos]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def run_concurrently(batcher: Batcher, photos, callbacks=None) -> tuple[list, list]:
    """Predict photos[0] first, holding its forward until photos[1:] are queued; then
    let everything run. Returns (results, errors) per photo."""
    results: list = [None] * len(photos)
    errors: list = [None] * len(photos)
    release = threading.Event()
    callbacks = callbacks or [None] * len(photos)

    def hold(stage: str) -> None:
        if stage == "preprocess":
            release.wait(30)

    def call(index: int) -> None:
        on_stage = hold if index == 0 else callbacks[index]
        try:
            results[index] = batcher.predict(photos[index], on_stage=on_stage)
        except Exception as error:
            errors[index] = error

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    wait_until(lambda: batcher.batch_sizes == [1])  # the first forward runs, alone
    for index in range(1, len(photos)):
        threads.append(threading.Thread(target=call, args=(index,)))
        threads[-1].start()
    wait_until(lambda: len(batcher._pending) == len(photos) - 1)
    release.set()
    for thread in threads:
        thread.join(60)
    return results, errors


def test_photos_queued_during_a_forward_share_the_next(engine, photos, singles):
    seen: list[int] = []
    batcher = Batcher(engine, 8, on_batch=seen.append)
    results, errors = run_concurrently(batcher, photos)
    assert errors == [None] * len(photos)
    assert batcher.batch_sizes == [1, 4] == seen
    for result, single, photo in zip(results, singles, photos, strict=True):
        assert result.metadata["source"] == photo.name  # each caller gets its own photo
        assert_close(result, single, FP32_ROUNDING)
    assert [r.metadata["timings"].extra["batch_size"] for r in results] == [1, 4, 4, 4, 4]


def test_the_batch_size_bounds_each_forward(engine, photos):
    asked: list[int] = []

    def size() -> int:
        asked.append(1)
        return 3

    batcher = Batcher(engine, size)
    results, errors = run_concurrently(batcher, photos)
    assert errors == [None] * len(photos) and all(r is not None for r in results)
    assert batcher.batch_sizes == [1, 3, 1]  # first in, first out
    assert len(asked) == 3  # asked again before every forward


def test_a_failing_stage_callback_fails_only_its_caller(engine, photos, singles):
    def cancel(stage: str) -> None:
        if stage == "inference":
            raise Canceled()

    callbacks = [None, None, cancel, None, None]
    batcher = Batcher(engine, 8)
    results, errors = run_concurrently(batcher, photos, callbacks)
    assert isinstance(errors[2], Canceled) and results[2] is None
    for index in (0, 1, 3, 4):
        assert errors[index] is None
        assert_close(results[index], singles[index], FP32_ROUNDING)
    assert batcher.batch_sizes == [1, 4]


def test_a_photo_that_breaks_the_shared_forward_fails_alone(engine, photos, singles):
    photo = load_image(structured_photo(64, 48, seed=9), focal_mm=30, name="bad.png")
    # Two colour channels: the batch cannot even be stacked, so the shared forward fails;
    # the engine retries each photo alone and only the bad one fails.
    bad = dataclasses.replace(photo, pixels=photo.pixels[:, :, :2].copy())
    batcher = Batcher(engine, 8)
    results, errors = run_concurrently(batcher, [photos[0], bad, photos[1]])
    assert errors[1] is not None and results[1] is None
    assert errors[0] is None and errors[2] is None
    assert_close(results[2], singles[1], FP32_ROUNDING)
    assert results[2].metadata["timings"].extra["batch_size"] == 1  # predicted on its own
    assert batcher.batch_sizes == [1, 2]
    # The batcher is not stuck: the next call runs.
    assert batcher.predict(photos[2]).metadata["source"] == photos[2].name


def test_a_photo_whose_output_is_not_finite_fails_alone(engine, photos, singles):
    """A focal length of 1e-300 px (possible before focal lengths were validated) makes
    the covariances non-finite: that photo fails with NonFiniteOutput, its batch mates
    succeed."""
    absurd = dataclasses.replace(photos[1], focal_px=1e-300, name="absurd.png")
    batcher = Batcher(engine, 8)
    results, errors = run_concurrently(batcher, [photos[0], absurd, photos[2]])
    assert isinstance(errors[1], NonFiniteOutput), errors[1]
    assert "absurd.png" in str(errors[1])
    assert errors[0] is None and errors[2] is None
    assert_close(results[2], singles[2], FP32_ROUNDING)


def test_one_caller_runs_straight_through(engine, photos, singles):
    batcher = Batcher(engine, 4)
    stages: list[str] = []
    result = batcher.predict(photos[0], on_stage=stages.append)
    assert stages == ["preprocess", "inference", "postprocess"]
    assert batcher.batch_sizes == [1]
    assert_close(result, singles[0], FP32_ROUNDING)


def test_predict_many_queues_its_photos_together(engine, photos, singles):
    """A panorama's views go in as one group: they share forwards (up to the batch size)
    with each other and with a photo queued meanwhile, and come back in order."""
    batcher = Batcher(engine, 3)
    assert batcher.suggested_batch_size() == 3
    release = threading.Event()
    first: list = []

    def hold(stage: str) -> None:
        if stage == "preprocess":
            release.wait(30)

    holder = threading.Thread(
        target=lambda: first.append(batcher.predict(photos[0], on_stage=hold))
    )
    holder.start()
    wait_until(lambda: batcher.batch_sizes == [1])
    many: list = []
    group = threading.Thread(target=lambda: many.extend(batcher.predict_many(photos[1:])))
    group.start()
    wait_until(lambda: len(batcher._pending) == 4)
    release.set()
    holder.join(60)
    group.join(60)
    assert batcher.batch_sizes == [1, 3, 1]
    assert [r.metadata["source"] for r in many] == [p.name for p in photos[1:]]
    for result, single in zip(many, singles[1:], strict=True):
        assert_close(result, single, FP32_ROUNDING)
