"""The one inference path every front end uses.

    LoadedImage --(Engine.predict)--> Gaussians
                  resize to the internal size, network forward, unprojection

``Engine`` owns the model's lifetime: it resolves the device, builds the network on the
``meta`` device, loads the checkpoint into it without a copy (mmap + assign), and is
reused for every image. Nothing else in mlsharp touches the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mlsharp.device import resolve_device
from mlsharp.gaussians import Gaussians
from mlsharp.imaging import LoadedImage
from mlsharp.model import SharpModel, build_model
from mlsharp.unproject import unproject


@dataclass
class StageTimes:
    """Seconds spent per stage of one prediction."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so stage timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Engine:
    """A loaded SHARP model on one device; ``predict`` turns a photo into Gaussians."""

    def __init__(self, model: SharpModel, device: torch.device, *, checkpoint: Path | None = None):
        self.model = model.eval()
        self.device = device
        self.checkpoint = checkpoint

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None = None,
        *,
        preset: str = "sharp",
        device: str = "auto",
        download: bool = True,
        progress: bool = True,
    ) -> Engine:
        """Find (or download) the checkpoint, build the ``preset`` network, load it strictly.

        Raises :class:`~mlsharp.errors.CheckpointError` for a missing, foreign or
        mismatched checkpoint and :class:`~mlsharp.errors.DeviceError` for a missing device.
        """
        from mlsharp import weights

        torch_device = resolve_device(device)
        path = weights.resolve_checkpoint(checkpoint, download=download, progress=progress)
        state_dict = weights.load_state_dict(path)
        model = build_model(preset, device="meta")
        weights.load_into(model, state_dict, what=str(path), preset=preset)
        return cls(model.to(torch_device), torch_device, checkpoint=path)

    @property
    def internal_resolution(self) -> int:
        """Side of the square image the network runs at."""
        return self.model.internal_resolution

    @torch.inference_mode()
    def predict(
        self, image: LoadedImage, *, on_stage: Callable[[str], None] | None = None
    ) -> Gaussians:
        """Predict metric 3D Gaussians for one decoded image.

        ``on_stage`` is called with ``"preprocess"``, ``"inference"`` and ``"postprocess"``
        as each stage starts (the service turns them into job progress). The returned
        ``Gaussians.metadata["timings"]`` holds a :class:`StageTimes`.
        """
        report = on_stage or (lambda stage: None)
        times = StageTimes()
        report("preprocess")
        start = time.perf_counter()
        pixels = torch.from_numpy(image.to_float32()).to(self.device).permute(2, 0, 1)
        size = self.internal_resolution
        # Bilinear with align_corners=True, as the reference resizes.
        resized = F.interpolate(
            pixels[None], size=(size, size), mode="bilinear", align_corners=True
        )
        disparity_factor = torch.tensor([image.focal_px / image.width]).float().to(self.device)
        _synchronize(self.device)
        times.preprocess = time.perf_counter() - start

        report("inference")
        start = time.perf_counter()
        composed = self.model(resized, disparity_factor)
        _synchronize(self.device)
        times.inference = time.perf_counter() - start

        report("postprocess")
        start = time.perf_counter()
        gaussians = unproject(
            composed, focal_px=image.focal_px, image_size=(image.width, image.height)
        )
        times.postprocess = time.perf_counter() - start
        gaussians.metadata["timings"] = times
        gaussians.metadata["source"] = image.name
        return gaussians
