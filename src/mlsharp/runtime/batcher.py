"""Batches concurrent predictions from several threads into shared forwards.

A long-running process (the service's worker threads) calls :meth:`Batcher.predict` from
one thread per job. The calls queue up; whichever thread finds the engine free runs every
queued photo (up to the batch size) in one :meth:`Engine.predict_many` and hands each
caller its own result. No timer holds a photo back: a photo that arrives while the engine
is idle runs at once, alone, and the photos that arrive while a forward runs share the
next one. That is the "continuous batching" of inference servers, which keeps latency
low when traffic is light and fills the GPU when it is heavy.

Failures stay per photo, as :meth:`Engine.predict_batch` returns them: a stage callback
that raises (a job cancelled meanwhile) fails only its own caller, and a shared forward
that fails (out of memory, one bad photo) is retried by the engine one photo at a time,
so a burst of jobs never fails because it was batched. The batcher only hands each
caller its own outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlsharp.engine import Engine
    from mlsharp.gaussians import Gaussians
    from mlsharp.imaging import LoadedImage

StageCallback = Callable[[str], None]


@dataclass(eq=False)
class _Request:
    image: LoadedImage
    on_stage: StageCallback | None
    result: Gaussians | None = None
    error: BaseException | None = None
    done: bool = False


class Batcher:
    """Thread-safe front of an :class:`Engine` that runs concurrent calls in batches.

    Args:
        engine: the loaded engine.
        batch_size: the largest batch, or a callable asked before each batch (the
            engine's memory-based estimate grows once the first forward was measured).
        on_batch: called with the number of photos of each forward (e.g. for metrics).
    """

    def __init__(
        self,
        engine: Engine,
        batch_size: int | Callable[[], int],
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._batch_size = batch_size
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False
        #: Sizes of the batches run so far (for tests and metrics).
        self.batch_sizes: list[int] = []

    @property
    def batch_size(self) -> int:
        """The largest number of photos the next forward may take."""
        size = self._batch_size() if callable(self._batch_size) else self._batch_size
        return max(1, int(size))

    def suggested_batch_size(self) -> int:
        """The largest number of photos the next forward may take (as the engine's)."""
        return self.batch_size

    def predict(self, image: LoadedImage, *, on_stage: StageCallback | None = None) -> Gaussians:
        """Predict ``image``, sharing a forward with concurrent callers when possible.

        ``on_stage`` is called as in :meth:`Engine.predict` (once per stage of the batch
        the photo runs in). Raises what the prediction of this photo raised.
        """
        return self.predict_many([image], on_stage=on_stage)[0]

    def predict_many(
        self,
        images: Sequence[LoadedImage],
        *,
        on_stage: StageCallback | None = None,
        batch_size: int | None = None,
    ) -> list[Gaussians]:
        """Predict ``images`` (e.g. the views of a panorama), queued together so they share
        forwards with each other and with concurrent callers; results in input order.

        ``batch_size`` is accepted for the engine's signature; the batcher's own size
        applies. Raises the first error of any of the images.
        """
        requests = [_Request(image, on_stage) for image in images]
        with self._cond:
            self._pending.extend(requests)
        while True:
            with self._cond:
                while self._busy and not all(request.done for request in requests):
                    self._cond.wait()
                if all(request.done for request in requests):
                    break
                self._busy = True
                batch = self._pending[: self.batch_size]
                del self._pending[: len(batch)]
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        for request in requests:
            if request.error is not None:
                raise request.error
        return [request.result for request in requests]  # type: ignore[misc]

    def _run(self, batch: list[_Request]) -> None:
        """Predict ``batch`` and settle every request in it (result or error)."""
        self.batch_sizes.append(len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            outcomes = self.engine.predict_batch(
                [request.image for request in batch],
                on_stage=[request.on_stage for request in batch],
            )
        except Exception as error:  # not a photo's own failure: each caller raises it
            self._settle(batch, error)
            return
        except BaseException as error:  # KeyboardInterrupt, SystemExit: settle, then go
            self._settle(batch, error)
            raise
        for request, outcome in zip(batch, outcomes, strict=True):
            request.result, request.error = outcome.gaussians, outcome.error
        self._settle(batch, None)

    @staticmethod
    def _settle(batch: list[_Request], error: BaseException | None) -> None:
        """Mark ``batch`` done; ``error`` (if any) for those without an error of their own."""
        for request in batch:
            if request.error is None and error is not None:
                request.error = error
            request.done = True
