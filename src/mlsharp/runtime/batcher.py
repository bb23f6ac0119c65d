"""Batches concurrent predictions from several threads into shared forwards.

A long-running process (the service's worker threads) calls :meth:`Batcher.predict` from
one thread per job. The calls queue up; whichever thread finds the engine free runs every
queued photo (up to the batch size) in one :meth:`Engine.predict_many` and hands each
caller its own result. No timer holds a photo back: a photo that arrives while the engine
is idle runs at once, alone, and the photos that arrive while a forward runs share the
next one. That is the "continuous batching" of inference servers, which keeps latency
low when traffic is light and fills the GPU when it is heavy.

Failures stay per photo. A stage callback that raises (a job cancelled meanwhile) fails
only its own caller; the batch goes on. A batch that runs out of memory is retried one
photo at a time, so a burst of jobs never fails because it was batched; a photo that does
not fit on its own fails with :class:`~mlsharp.errors.OutOfMemory` as it would unbatched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlsharp.errors import OutOfMemory

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

    def report(self, stage: str) -> None:
        """Forward ``stage`` to the caller's callback; its error fails this request only."""
        if self.error is not None or self.on_stage is None:
            return
        try:
            self.on_stage(stage)
        except Exception as error:  # e.g. JobCanceled: this caller gets it, not the batch
            self.error = error


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
        live = [request for request in batch if request.error is None]
        self._settle([request for request in batch if request.error is not None], None)
        if not live:
            return
        self.batch_sizes.append(len(live))
        if self._on_batch is not None:
            self._on_batch(len(live))
        failure: BaseException | None = None
        try:
            self._predict(live)
        except Exception as error:  # each caller raises it in its own thread
            failure = error
        except BaseException as error:  # KeyboardInterrupt, SystemExit: settle, then go
            self._settle(live, error)
            raise
        if isinstance(failure, OutOfMemory) and len(live) > 1:
            # The batch did not fit: each photo on its own. Outside the except block, so
            # nothing of the failed forward is kept alive while they run.
            failure = None
            for request in live:
                self._run([request])
            return
        self._settle(live, failure)

    def _predict(self, batch: list[_Request]) -> None:
        def report(stage: str) -> None:
            for request in batch:
                request.report(stage)

        results = self.engine.predict_many(
            [request.image for request in batch], on_stage=report, batch_size=len(batch)
        )
        for request, result in zip(batch, results, strict=True):
            if request.error is None:
                request.result = result

    @staticmethod
    def _settle(batch: list[_Request], error: BaseException | None) -> None:
        """Mark ``batch`` done; ``error`` (if any) for those without an error of their own."""
        for request in batch:
            if request.error is None and error is not None:
                request.error = error
            request.done = True
