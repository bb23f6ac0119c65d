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

from mlsharp.device import resolve_device
from mlsharp.errors import ConfigError, OutOfMemory
from mlsharp.gaussians import Gaussians
from mlsharp.imaging import LoadedImage
from mlsharp.model import SharpConfig, SharpModel, build_model
from mlsharp.model.composer import ComposedGaussians
from mlsharp.runtime.memory import (
    MAX_ESTIMATED_BATCH,
    MemoryGuard,
    estimate_batch_size,
    run_guarded,
)
from mlsharp.runtime.options import RuntimeOptions, batch_bucket
from mlsharp.runtime.precision import check_precision, precision_context
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


def check_options(options: RuntimeOptions, cfg: SharpConfig, device: torch.device) -> None:
    """Raise :class:`ConfigError` when ``options`` cannot run for ``cfg`` on ``device``."""
    check_precision(options.precision, device)
    if options.resolution is not None:
        check_resolution(cfg, options.resolution)
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {options.batch_size}")
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


class Engine:
    """A loaded SHARP model on one device; ``predict`` turns a photo into Gaussians.

    Attributes:
        model: the network (eval mode, on ``device``).
        device: where the network runs.
        checkpoint: the weights file, when loaded from one.
        memory_guard: releases cached memory (after an out-of-memory error, and, when a
            long-running process configures it, when idle or above a threshold); never
            while another thread's batch uses the device. Assigning a new guard keeps
            the engine's pinned host buffers attached to its releases.
    """

    def __init__(
        self,
        model: SharpModel,
        device: torch.device,
        *,
        checkpoint: Path | None = None,
        options: RuntimeOptions | None = None,
    ):
        options = options or RuntimeOptions()
        check_options(options, model.cfg, device)
        self.model = model.eval()
        self.device = device
        self.checkpoint = checkpoint
        self._options = options
        self._resolution = options.resolution or model.internal_resolution
        #: Page-locked host memory for the results' device-to-host copies (CUDA only).
        self._staging = PinnedStaging(device) if device.type == "cuda" else None
        self.memory_guard = MemoryGuard(device)
        if options.channels_last:
            model.set_memory_format(torch.channels_last)
        forward: Callable[..., ComposedGaussians] = model
        if options.compile:
            forward = torch.compile(model, dynamic=False)
        self._graphs = None
        if options.cuda_graphs:
            from mlsharp.runtime.cuda_graphs import CudaGraphForward

            self._graphs = CudaGraphForward(forward, device)
            forward = self._graphs
        self._forward = forward
        #: Peak bytes of one image's forward, measured on CUDA (for the batch estimate).
        self._bytes_per_image: int | None = None
        #: The largest batch still worth trying: halved after each batch that ran out of
        #: memory, so the estimate learns instead of failing the same way again.
        self._batch_ceiling = options.batch_size or MAX_ESTIMATED_BATCH
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
        mismatched checkpoint, :class:`~mlsharp.errors.DeviceError` for a missing device
        and :class:`~mlsharp.errors.ConfigError` for ``options`` the device or preset
        cannot run (checked before the weights are read).
        """
        from mlsharp import weights
        from mlsharp.model import preset as preset_config

        torch_device = resolve_device(device)
        check_options(options or RuntimeOptions(), preset_config(preset), torch_device)
        path = weights.resolve_checkpoint(checkpoint, download=download, progress=progress)
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
        return cls(model, torch_device, checkpoint=path, options=options)

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
        return self.model.cfg.num_gaussians_at(self._resolution)

    def predict(
        self, image: LoadedImage, *, on_stage: Callable[[str], None] | None = None
    ) -> Gaussians:
        """Predict metric 3D Gaussians for one decoded image.

        ``on_stage`` is called with ``"preprocess"``, ``"inference"`` and ``"postprocess"``
        as each stage starts (the service turns them into job progress). The returned
        ``Gaussians.metadata["timings"]`` holds a :class:`StageTimes`. Raises
        :class:`~mlsharp.errors.OutOfMemory` when the device runs out of memory.
        """
        return self.predict_many([image], on_stage=on_stage, batch_size=1)[0]

    def predict_many(
        self,
        images: Sequence[LoadedImage],
        *,
        on_stage: Callable[[str], None] | None = None,
        batch_size: int | None = None,
    ) -> list[Gaussians]:
        """Predict several images, ``batch_size`` per forward; results in input order.

        Each image keeps its own focal length and size. ``batch_size`` defaults to the
        options' batch size, else to what fits in free CUDA memory (measured on the
        first image), else 1. ``on_stage`` is called per batch as in :meth:`predict`.
        The results equal one-at-a-time predictions up to float rounding.
        """
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        report = on_stage or (lambda stage: None)
        results: list[Gaussians] = []
        start = 0
        while start < len(images):
            size = min(batch_size or self.suggested_batch_size(), len(images) - start)
            if self._options.fixed_shapes:
                size = batch_bucket(size)  # one compilation / graph per bucket, not per size
            chunk = images[start : start + size]
            results += self._guarded(partial(self._predict_batch, chunk, report), len(chunk))
            start += len(chunk)
        return results

    def warmup(self, batch_size: int = 1) -> None:
        """Run one forward on a blank input (compiles / captures graphs ahead of time)."""
        size = self._resolution
        image = torch.zeros(batch_size, 3, size, size, device=self.device)
        factor = torch.ones(batch_size, device=self.device)
        self._guarded(lambda: self._run_forward(image, factor), batch_size)

    def suggested_batch_size(self) -> int:
        """Photos per forward: the options' batch size, else as many as fit in 80 % of the
        free CUDA memory (known once a forward was measured), else 1 (CPU, MPS); never more
        than half of a batch that ran out of memory, and with ``compile``/``cuda_graphs``
        a size of :data:`~mlsharp.runtime.options.BATCH_BUCKETS`."""
        wanted = self._options.batch_size or estimate_batch_size(
            self.device, self._bytes_per_image, limit=self._batch_ceiling
        )
        size = max(1, min(wanted, self._batch_ceiling))
        return batch_bucket(size) if self._options.fixed_shapes else size

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
        lower = [v for v in self.model.cfg.valid_resolutions() if v < size]
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
        except OutOfMemory:
            self._note_out_of_memory(batch)
            if self._graphs is not None:
                self._graphs.reset()
            raise
        except BaseException:
            if self._graphs is not None:
                self._graphs.reset()  # a capture may have failed half-way
            raise

    def _run_forward(self, image: torch.Tensor, factor: torch.Tensor) -> ComposedGaussians:
        """The network forward under the engine's precision policy."""
        # Autocast's weight cache cannot live across CUDA graph captures.
        with (
            torch.inference_mode(),
            precision_context(
                self._options.precision, self.device, autocast_cache=self._graphs is None
            ),
        ):
            return self._forward(image, factor)

    def _predict_batch(
        self, images: Sequence[LoadedImage], report: Callable[[str], None]
    ) -> list[Gaussians]:
        count = len(images)
        times = StageTimes()
        report("preprocess")
        start = time.perf_counter()
        size = self._resolution
        with torch.inference_mode():
            resized = torch.cat(
                [
                    # Bilinear with align_corners=True, as the reference resizes.
                    F.interpolate(
                        torch.from_numpy(image.to_float32()).to(self.device).permute(2, 0, 1)[None],
                        size=(size, size),
                        mode="bilinear",
                        align_corners=True,
                    )
                    for image in images
                ]
            )
            factors = torch.tensor(
                [image.focal_px / image.width for image in images], dtype=torch.float32
            ).to(self.device)
        _synchronize(self.device)
        times.preprocess = time.perf_counter() - start

        report("inference")
        start = time.perf_counter()
        measure = self.device.type == "cuda"
        if measure:
            baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        composed = self._run_forward(resized, factors)
        _synchronize(self.device)
        times.inference = time.perf_counter() - start
        if measure:
            peak = torch.cuda.max_memory_allocated(self.device) - baseline
            self._bytes_per_image = max(self._bytes_per_image or 0, peak // count)

        report("postprocess")
        start = time.perf_counter()
        transfer = HostTransfer(self.device, staging=self._staging)
        with torch.inference_mode():
            for index, image in enumerate(images):
                tensors = unproject_tensors(
                    composed,
                    focal_px=image.focal_px,
                    image_size=(image.width, image.height),
                    index=index,
                    fast=self._options.fast_postprocess,
                )
                transfer.submit(tensors)
        del composed, tensors
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
        results = []
        for image, host in zip(images, arrays, strict=True):
            gaussians = gaussians_from_host(
                host, focal_px=image.focal_px, image_size=(image.width, image.height)
            )
            gaussians.metadata["timings"] = replace(share, extra=dict(share.extra))
            gaussians.metadata["source"] = image.name
            results.append(gaussians)
        return results
