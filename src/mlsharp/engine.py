"""The one inference path every front end uses.

    LoadedImage(s) --(Engine.predict / predict_many)--> Gaussians
                     resize to the internal size, network forward, unprojection, D2H copy

``Engine`` owns the model's lifetime: it resolves the device, builds the network on the
``meta`` device, loads the checkpoint into it without a copy (mmap + assign), and is
reused for every image. Nothing else in mlsharp touches the device.

How the forward runs is set by :class:`~mlsharp.runtime.options.RuntimeOptions`
(precision, channels-last decoders, ``torch.compile``, CUDA graphs, internal resolution,
fast post-processing, batch size); the defaults reproduce the reference. Invalid
combinations for the device or preset raise :class:`~mlsharp.errors.ConfigError` when the
engine is built; running out of memory raises :class:`~mlsharp.errors.OutOfMemory` and
leaves the engine usable. docs/runtime.md documents the modes and their tolerances.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from mlsharp.backends.base import ForwardRuntime
from mlsharp.backends.torch_runtime import TorchRuntime
from mlsharp.device import resolve_device
from mlsharp.errors import ConfigError, NonFiniteOutput, OutOfMemory
from mlsharp.gaussians import Gaussians
from mlsharp.imaging import LoadedImage
from mlsharp.model import SharpConfig, SharpModel, build_model
from mlsharp.runtime.memory import MAX_ESTIMATED_BATCH, MemoryGuard, run_guarded
from mlsharp.runtime.options import RuntimeOptions, batch_bucket
from mlsharp.runtime.precision import check_precision
from mlsharp.runtime.transfer import HostTransfer, PinnedStaging
from mlsharp.unproject import gaussians_from_host, unproject_tensors

T = TypeVar("T")


@dataclass
class StageTimes:
    """Seconds spent per stage of one prediction.

    ``postprocess`` is the unprojection on the device; ``transfer`` the wait for the
    device-to-host copy of the results (on CUDA the copies overlap the post-processing,
    so this is only the part not hidden behind it). For an image predicted in a batch,
    each stage holds an equal share of the batch's time and ``extra["batch_size"]`` the
    number of images in that forward.
    """

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    transfer: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on the compute stream so stage timings are honest.

    Only the current stream: a device-wide ``torch.cuda.synchronize`` would also wait for
    :class:`HostTransfer`'s copy stream and so hide the device-to-host copies inside the
    post-processing time.
    """
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def _device_scope(device: torch.device) -> AbstractContextManager[Any]:
    """Make ``device`` the calling thread's current CUDA device inside the block."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def check_resolution(cfg: SharpConfig, resolution: int) -> None:
    """Raise :class:`ConfigError` unless ``resolution`` is valid for the architecture."""
    valid = cfg.valid_resolutions()
    if resolution in valid:
        return
    native = cfg.internal_resolution
    listed = ", ".join(f"{v} (native)" if v == native else str(v) for v in valid)
    raise ConfigError(
        f"internal resolution {resolution} is not valid for this preset: the encoder cuts the "
        f"image into overlapping ViT tiles of {cfg.vit.patch_size}-px patches whose overlaps "
        f"must be whole tokens, so the side must be a multiple of {cfg.resolution_step} (up "
        f"to twice the native {native}); valid: {listed}"
    )


def network_inputs(
    images: Sequence[LoadedImage], size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's inputs: the images resized to ``size``² (B, 3, S, S) and their
    disparity factors (focal length in px / width, (B,)), on ``device``."""
    with torch.inference_mode():
        resized = torch.cat(
            [
                # Bilinear with align_corners=True, as the reference resizes.
                F.interpolate(
                    torch.from_numpy(image.to_float32()).to(device).permute(2, 0, 1)[None],
                    size=(size, size),
                    mode="bilinear",
                    align_corners=True,
                )
                for image in images
            ]
        )
        factors = torch.tensor(
            [image.focal_px / image.width for image in images], dtype=torch.float32
        ).to(device)
    return resized, factors


def engine_device(device: str, options: RuntimeOptions) -> torch.device:
    """The torch device of an engine: ``device`` resolved, except that ``auto`` is the
    CPU for openvino and onnxruntime (they run the forward on their own device, the
    pre- and post-processing around it runs on the CPU)."""
    if options.backend not in ("torch", "auto") and device == "auto":
        device = "cpu"
    return resolve_device(device)


def check_options(options: RuntimeOptions, cfg: SharpConfig, device: torch.device) -> None:
    """Raise :class:`ConfigError` when ``options`` cannot run for ``cfg`` on ``device``.

    For ``auto`` and torch this checks the torch modes; openvino and onnxruntime are
    checked by :func:`mlsharp.backends.select.check_backend_options`.
    """
    from mlsharp.backends.select import check_backend_options

    if options.resolution is not None:
        check_resolution(cfg, options.resolution)
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {options.batch_size}")
    if options.backend not in ("torch", "auto"):
        check_backend_options(options, device)
        return
    check_precision(options.precision, device)
    if options.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"CUDA graphs need a CUDA device; the engine runs on {device}")
    if options.compile:
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            raise ConfigError(
                "torch.compile on CUDA needs Triton, which this torch install lacks; "
                "drop the compile option or install the torch build that bundles it"
            )
        if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            raise ConfigError(
                "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; "
                "install one or drop the compile option"
            )


@dataclass
class PhotoResult:
    """What one photo of a batch came to: its Gaussians, or the error that failed it alone.

    :meth:`Engine.predict_batch` returns one per photo, in input order, so a caller that
    serves several clients (the service's :class:`~mlsharp.runtime.batcher.Batcher`, the
    CLI) hands each its own outcome.
    """

    gaussians: Gaussians | None = None
    error: Exception | None = None

    def unwrap(self) -> Gaussians:
        """The Gaussians, or raise the photo's error."""
        if self.error is not None:
            raise self.error
        assert self.gaussians is not None
        return self.gaussians


StageCallback = Callable[[str], None]


class _AllFailed(Exception):
    """Raised inside a batch once every photo has an error: nothing is left to compute."""


class Engine:
    """A loaded SHARP model on one device; ``predict`` turns a photo into Gaussians.

    The network forward is a :class:`~mlsharp.backends.base.ForwardRuntime` (``torch``
    by default; see :mod:`mlsharp.backends`); everything around it lives here, the same
    for every runtime: one batch at a time under the memory guard, the batch ceiling
    learned from out-of-memory errors, the pinned staging of the results, and the
    photo-by-photo retry of a batch that fails.

    Attributes:
        runtime: what runs the forward.
        device: the torch device of the pre- and post-processing (the runtime's).
        checkpoint: the weights file, when loaded from one.
        memory_guard: releases cached memory (after an out-of-memory error, and, when a
            long-running process configures it, when idle or above a threshold); never
            while another thread's batch uses the device. Assigning a new guard keeps
            the engine's pinned host buffers attached to its releases.
    """

    def __init__(self, runtime: ForwardRuntime, *, checkpoint: Path | None = None):
        self.runtime = runtime
        self.device = runtime.device
        self.checkpoint = checkpoint
        self._options = runtime.options
        self._resolution = runtime.options.resolution or runtime.cfg.internal_resolution
        #: Page-locked host memory for the results' device-to-host copies (CUDA only).
        self._staging = PinnedStaging(self.device) if self.device.type == "cuda" else None
        self.memory_guard = MemoryGuard(self.device)
        #: The largest batch still worth trying: halved after each batch that ran out of
        #: memory, so the estimate learns instead of failing the same way again.
        self._batch_ceiling = self._options.batch_size or MAX_ESTIMATED_BATCH
        self._batch_lock = threading.Lock()

    @property
    def memory_guard(self) -> MemoryGuard:
        """See the class docstring."""
        return self._memory_guard

    @memory_guard.setter
    def memory_guard(self, guard: MemoryGuard) -> None:
        if self._staging is not None:
            guard.release_hooks.append(self._staging.release)
        self._memory_guard = guard

    @classmethod
    def from_model(
        cls,
        model: SharpModel,
        device: torch.device,
        *,
        checkpoint: Path | None = None,
        options: RuntimeOptions | None = None,
    ) -> Engine:
        """An engine running ``model`` (already on ``device``) with the torch runtime.

        Raises :class:`ConfigError` when ``options`` cannot run for the model on ``device``.
        """
        options = options or RuntimeOptions()
        check_options(options, model.cfg, device)
        return cls(TorchRuntime(model, device, options), checkpoint=checkpoint)

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None = None,
        *,
        preset: str = "sharp",
        device: str = "auto",
        download: bool = True,
        progress: bool = True,
        options: RuntimeOptions | None = None,
    ) -> Engine:
        """Find (or download) the checkpoint, build the ``preset`` network, load it strictly.

        Raises :class:`~mlsharp.errors.CheckpointError` for a missing, foreign or
        mismatched checkpoint, :class:`~mlsharp.errors.DeviceError` for a missing device,
        :class:`~mlsharp.errors.ConfigError` for ``options`` the device or preset cannot
        run (checked before the weights are read) and :class:`OutOfMemory` when the
        weights do not fit on the device.
        """
        from mlsharp import weights
        from mlsharp.backends.select import load_runtime, resolve_options
        from mlsharp.model import preset as preset_config

        options = options or RuntimeOptions()
        cfg = preset_config(preset)
        torch_device = engine_device(device, options)
        check_options(options, cfg, torch_device)
        path = weights.resolve_checkpoint(checkpoint, download=download, progress=progress)
        options, _ = resolve_options(options, torch_device, checkpoint=path, preset=preset)
        if options.backend != "torch":
            runtime = load_runtime(path, cfg, preset, options, progress=progress)
            return cls(runtime, checkpoint=path)
        state_dict = weights.load_state_dict(path)
        model = build_model(preset, device="meta")
        weights.load_into(model, state_dict, what=str(path), preset=preset)
        # A GPU without room for the weights: OutOfMemory (one clear line), not a traceback.
        model = run_guarded(
            lambda: model.to(torch_device),
            device=torch_device,
            context=f"moving the {preset} weights onto the device",
            advice="free memory on that GPU, or choose another with --device",
        )
        return cls.from_model(model, torch_device, checkpoint=path, options=options)

    @property
    def model(self) -> SharpModel | None:
        """The PyTorch network when the torch runtime runs it, else ``None``."""
        return getattr(self.runtime, "model", None)

    @property
    def options(self) -> RuntimeOptions:
        """How this engine runs the network (fixed for its lifetime)."""
        return self._options

    @property
    def internal_resolution(self) -> int:
        """Side of the square image the network runs at."""
        return self._resolution

    @property
    def num_gaussians(self) -> int:
        """Gaussians predicted per image at the engine's resolution."""
        return self.runtime.cfg.num_gaussians_at(self._resolution)

    def predict(self, image: LoadedImage, *, on_stage: StageCallback | None = None) -> Gaussians:
        """Predict metric 3D Gaussians for one decoded image.

        ``on_stage`` is called with ``"preprocess"``, ``"inference"`` and ``"postprocess"``
        as each stage starts (the service turns them into job progress); an error it
        raises (a cancelled job) ends the prediction and is raised here. The returned
        ``Gaussians.metadata["timings"]`` holds a :class:`StageTimes`. Raises
        :class:`~mlsharp.errors.OutOfMemory` when the device runs out of memory and
        :class:`~mlsharp.errors.NonFiniteOutput` when the prediction holds NaN or inf.
        """
        return self.predict_batch([image], on_stage=[on_stage])[0].unwrap()

    def predict_many(
        self,
        images: Sequence[LoadedImage],
        *,
        on_stage: StageCallback | None = None,
        batch_size: int | None = None,
    ) -> list[Gaussians]:
        """Predict several images, ``batch_size`` per forward; results in input order.

        Each image keeps its own focal length and size. ``batch_size`` defaults to
        :meth:`suggested_batch_size`; runtimes with fixed shapes (``compile``, CUDA graphs)
        get batches cut into :data:`~mlsharp.runtime.options.BATCH_BUCKETS` sizes.
        ``on_stage`` is called per batch as in :meth:`predict`. The results equal
        one-at-a-time predictions up to float rounding. A batch that fails is retried
        photo by photo (see :meth:`predict_batch`); the first photo that fails on its own
        raises its error.
        """
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        results: list[Gaussians] = []
        start = 0
        while start < len(images):
            size = min(batch_size or self.suggested_batch_size(), len(images) - start)
            if self.runtime.fixed_shapes:
                size = batch_bucket(size)  # one compilation / graph per bucket, not per size
            chunk = images[start : start + size]
            callbacks = [on_stage, *[None] * (len(chunk) - 1)]  # once per batch
            results += [r.unwrap() for r in self.predict_batch(chunk, on_stage=callbacks)]
            start += len(chunk)
        return results

    def predict_batch(
        self,
        images: Sequence[LoadedImage],
        *,
        on_stage: Sequence[StageCallback | None] | None = None,
    ) -> list[PhotoResult]:
        """Predict ``images`` in one forward; one :class:`PhotoResult` per image, in order.

        Failures stay with their photo:

        * ``on_stage`` holds one stage callback per photo (or ``None``); an ``Exception``
          a callback raises (its job was cancelled) becomes that photo's error and the
          others go on. When every photo has failed, the work stops.
        * a photo whose prediction holds NaN or infinite values gets
          :class:`~mlsharp.errors.NonFiniteOutput`; the others keep their Gaussians.
        * when the shared forward fails (out of memory, or a photo that cannot be
          processed), each photo still without an error is predicted again on its own,
          so only a photo that fails alone gets an error.
        """
        callbacks = list(on_stage) if on_stage is not None else [None] * len(images)
        if len(callbacks) != len(images):
            raise ValueError("one stage callback (or None) per image")
        outcomes = [PhotoResult() for _ in images]
        if not images:
            return outcomes

        def report(stage: str) -> None:
            for outcome, callback in zip(outcomes, callbacks, strict=True):
                if outcome.error is None and callback is not None:
                    try:
                        callback(stage)
                    except Exception as error:  # e.g. JobCanceled: this photo only
                        outcome.error = error
            if all(outcome.error is not None for outcome in outcomes):
                raise _AllFailed()

        failure: Exception | None = None
        try:
            results = self._guarded(partial(self._predict_batch, images, report), len(images))
        except _AllFailed:
            return outcomes
        except Exception as error:
            failure = error
        else:
            for outcome, result in zip(outcomes, results, strict=True):
                if outcome.error is not None:
                    continue
                if isinstance(result, Exception):
                    outcome.error = result
                else:
                    outcome.gaussians = result
            return outcomes
        live = [i for i, outcome in enumerate(outcomes) if outcome.error is None]
        if len(live) <= 1:  # nothing to split: the failure is this photo's own
            for i in live:
                outcomes[i].error = failure
            return outcomes
        # Outside the except block, so nothing of the failed forward (its traceback and
        # tensors) is kept alive while the photos run one by one.
        del failure
        for i in live:
            outcomes[i] = self.predict_batch([images[i]], on_stage=[callbacks[i]])[0]
        return outcomes

    def warmup(self, batch_size: int = 1) -> None:
        """Run one forward on a blank input (compiles / captures graphs ahead of time)."""
        size = self._resolution
        image = torch.zeros(batch_size, 3, size, size, device=self.device)
        factor = torch.ones(batch_size, device=self.device)
        self._guarded(partial(self.runtime.run, image, factor), batch_size)

    def suggested_batch_size(self) -> int:
        """Photos per forward: the options' batch size, else the runtime's estimate (torch
        on CUDA: as many as fit in 80 % of the free memory once a forward was measured),
        else 1; never more than half of a batch that ran out of memory, and a size of
        :data:`~mlsharp.runtime.options.BATCH_BUCKETS` for a runtime with fixed shapes."""
        wanted = self._options.batch_size or self.runtime.suggested_batch_size()
        size = max(1, min(wanted, self._batch_ceiling))
        return batch_bucket(size) if self.runtime.fixed_shapes else size

    def _note_out_of_memory(self, batch: int) -> None:
        """Lower the batch ceiling after ``batch`` photos did not fit in one forward."""
        self._batch_ceiling = max(1, min(self._batch_ceiling, batch // 2))

    def _describe(self, batch: int) -> tuple[str, str]:
        """What ran (device aside) and what to lower, for an out-of-memory message."""
        size = self._resolution
        context = (
            f"running {batch} image{'s' if batch > 1 else ''} at {size}x{size} px "
            f"in {self._options.precision}"
        )
        lower = [v for v in self.runtime.cfg.valid_resolutions() if v < size]
        hints = []
        if self._options.precision in ("fp32", "tf32"):
            hints.append("a lower precision (bf16 or fp16)")
        if lower:
            hints.append(f"a smaller resolution ({', '.join(map(str, lower))})")
        if batch > 1:
            hints.append("a batch size of 1")
        return context, f"try {' or '.join(hints)}" if hints else ""

    def _guarded(self, step: Callable[[], T], batch: int) -> T:
        """Run ``step`` on the engine's device, marked as work for the memory guard; out of
        memory becomes :class:`OutOfMemory` after a release (and lowers the batch ceiling).

        The device is made current for the calling thread (worker threads start on
        ``cuda:0``), so streams, events and graph captures belong to the engine's GPU.
        """
        guard = self.memory_guard

        def work() -> T:
            # One batch at a time per engine (CUDA graphs and the pinned staging are
            # shared); the lock is taken outside working() so that an out-of-memory
            # release never waits on a thread that waits for this one.
            with self._batch_lock, guard.working():
                return step()

        try:
            context, advice = self._describe(batch)
            with _device_scope(self.device):
                return run_guarded(
                    work,
                    device=self.device,
                    context=context,
                    advice=advice,
                    release=partial(guard.release, "oom"),
                )
        except _AllFailed:  # every photo was cancelled between stages: nothing half-built
            raise
        except OutOfMemory:
            self._note_out_of_memory(batch)
            self.runtime.reset()
            raise
        except BaseException:
            self.runtime.reset()  # e.g. a CUDA graph capture that failed half-way
            raise

    def _predict_batch(
        self, images: Sequence[LoadedImage], report: Callable[[str], None]
    ) -> list[Gaussians | Exception]:
        """One forward for ``images``: per photo its Gaussians, or the error of its own
        post-processing (:class:`NonFiniteOutput`); a failure of the shared part raises."""
        count = len(images)
        times = StageTimes()
        report("preprocess")
        start = time.perf_counter()
        resized, factors = network_inputs(images, self._resolution, self.device)
        _synchronize(self.device)
        times.preprocess = time.perf_counter() - start

        report("inference")
        start = time.perf_counter()
        composed = self.runtime.run(resized, factors)
        _synchronize(self.device)
        times.inference = time.perf_counter() - start

        report("postprocess")
        start = time.perf_counter()
        transfer = HostTransfer(self.device, staging=self._staging)
        handles: list[int | Exception] = []  # per photo: its transfer, or its own error
        with torch.inference_mode():
            for index, image in enumerate(images):
                try:
                    tensors = unproject_tensors(
                        composed,
                        focal_px=image.focal_px,
                        image_size=(image.width, image.height),
                        index=index,
                        fast=self._options.fast_postprocess,
                    )
                except torch.linalg.LinAlgError:  # NaN/inf covariances
                    handles.append(_non_finite(image))
                    continue
                handles.append(transfer.submit(tensors))
                del tensors
        del composed
        _synchronize(self.device)
        times.postprocess = time.perf_counter() - start
        start = time.perf_counter()
        arrays = transfer.wait()
        times.transfer = time.perf_counter() - start

        share = StageTimes(
            preprocess=times.preprocess / count,
            inference=times.inference / count,
            postprocess=times.postprocess / count,
            transfer=times.transfer / count,
            extra={"batch_size": float(count)},
        )
        results: list[Gaussians | Exception] = []
        for image, handle in zip(images, handles, strict=True):
            if isinstance(handle, Exception):
                results.append(handle)
                continue
            gaussians = gaussians_from_host(
                arrays[handle], focal_px=image.focal_px, image_size=(image.width, image.height)
            )
            try:
                gaussians.check_finite()
            except NonFiniteOutput as error:  # this photo's failure, not the batch's
                results.append(error)
                continue
            gaussians.metadata["timings"] = replace(share, extra=dict(share.extra))
            gaussians.metadata["source"] = image.name
            results.append(gaussians)
        return results


def _non_finite(image: LoadedImage) -> NonFiniteOutput:
    """The error of a photo whose covariances could not be decomposed (NaN/inf)."""
    # Made, not raised: no traceback keeps the failed batch's tensors alive.
    return NonFiniteOutput(
        f"the prediction for {image.name} holds NaN or infinite values (its covariances "
        "cannot be decomposed); nothing was written. Try fp32 precision, or check the weights"
    )
