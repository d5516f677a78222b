"""Volume → network input: spacing, crop around the anatomy, HU windows, 2.5-D slice context.

Uses MONAI transforms (Spacing, SpatialPad/SpatialCrop, ScaleIntensityRange) on a
channel-first MetaTensor whose affine carries the voxel spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms.croppad.array import SpatialCrop, SpatialPad
from monai.transforms.intensity.array import ScaleIntensityRange
from monai.transforms.spatial.array import Spacing

from models.volume import HU_MIN, Volume


@dataclass(frozen=True)
class Preprocessing:
    """How a detector sees a volume (stored in its metadata.json)."""

    target_spacing_mm: tuple[float, float, float]  # z, y, x
    crop: tuple[int, int]  # rows, columns after resampling
    windows: tuple[tuple[float, float], ...]  # (centre, width) per channel
    context_slices: int = 1  # neighbours on each side stacked as channels
    center_on: str = "body"  # "body" (HU > -500) or "bone" (spine, HU > 250 near the centre)
    mirror: bool = False  # also the left-right mirror of every channel (bilateral comparison)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            target_spacing_mm=(float(data["target_spacing_mm"][0]),
                               float(data["target_spacing_mm"][1]),
                               float(data["target_spacing_mm"][2])),
            crop=(int(data["crop"][0]), int(data["crop"][1])),
            windows=tuple((float(c), float(w)) for c, w in data["windows"]),
            context_slices=int(data.get("context_slices", 1)),
            center_on=str(data.get("center_on", "body")),
            mirror=bool(data.get("mirror", False)),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target_spacing_mm": list(self.target_spacing_mm),
            "crop": list(self.crop),
            "windows": [list(w) for w in self.windows],
            "context_slices": self.context_slices,
            "center_on": self.center_on,
        }
        if self.mirror:  # absent means False, as in every card written before it existed
            data["mirror"] = True
        return data

    def sampling_json(self) -> dict[str, Any]:
        """What decides the prepared HU (spacing, crop, centring), not how it is windowed."""
        return {"target_spacing_mm": list(self.target_spacing_mm), "crop": list(self.crop),
                "center_on": self.center_on}

    @property
    def channels(self) -> int:
        return len(self.windows) * (2 * self.context_slices + 1) * (2 if self.mirror else 1)


@dataclass(frozen=True)
class Prepared:
    """Network input for every resampled slice plus where each came from."""

    slices: torch.Tensor  # float32 (S, C, H, W), values in [0, 1]
    z_mm: np.ndarray  # patient z of each resampled slice
    source_index: np.ndarray  # nearest slice of the original volume
    hu: torch.Tensor  # float32 (S, H, W) cropped HU at the target spacing (for previews)
    crop_origin_mm: tuple[float, float] = (0.0, 0.0)  # patient y, x of the crop's first pixel


def _smooth_z(hu: torch.Tensor, sigma_slices: float) -> torch.Tensor:
    """Gaussian smoothing along z (anti-aliasing before downsampling thin slices)."""
    if sigma_slices < 0.3:
        return hu
    radius = max(1, round(3 * sigma_slices))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma_slices) ** 2)
    kernel /= kernel.sum()
    z, y, x = hu.shape
    flat = hu.permute(1, 2, 0).reshape(1, y * x, z)
    padded = torch.nn.functional.pad(flat, (radius, radius), mode="replicate")
    weight = kernel.view(1, 1, -1).expand(y * x, 1, -1)
    out = torch.nn.functional.conv1d(padded, weight, groups=y * x)
    return out.reshape(y, x, z).permute(2, 0, 1).contiguous()


def _centre(hu: torch.Tensor, mode: str, pixel_mm: float) -> tuple[int, int]:
    """In-plane centre of the anatomy, from the middle half of the slices."""
    z = hu.shape[0]
    middle = hu[z // 4 : max(z // 4 + 1, 3 * z // 4)]
    body = (middle > -500).float().mean(dim=0)
    rows, cols = torch.nonzero(body > 0.5, as_tuple=True)
    if rows.numel() == 0:
        return hu.shape[1] // 2, hu.shape[2] // 2
    centre = (float(rows.float().mean()), float(cols.float().mean()))
    if mode == "bone":
        bone = (middle > 250).float().mean(dim=0)
        yy, xx = torch.meshgrid(torch.arange(hu.shape[1]), torch.arange(hu.shape[2]),
                                indexing="ij")
        near = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= (45.0 / pixel_mm) ** 2
        weights = bone * near
        if float(weights.sum()) > 0:
            centre = (float((weights * yy).sum() / weights.sum()),
                      float((weights * xx).sum() / weights.sum()))
    return round(centre[0]), round(centre[1])


def window_channels(hu: torch.Tensor, windows: tuple[tuple[float, float], ...],
                    context: int, *, mirror: bool = False) -> torch.Tensor:
    """(S, H, W) HU → (S, windows × (2·context+1), H, W) in [0, 1], neighbour-major; with
    ``mirror``, the same channels flipped left-right follow (twice the channels), so the
    network can compare each side with the other about the crop's centre column."""
    scaled = [
        ScaleIntensityRange(a_min=c - w / 2, a_max=c + w / 2, b_min=0.0, b_max=1.0, clip=True)(hu)
        for c, w in windows
    ]
    stack = torch.stack([torch.as_tensor(s) for s in scaled], dim=1)  # (S, W, H, W)
    if context > 0:
        count = stack.shape[0]
        neighbours = []
        for offset in range(-context, context + 1):
            index = torch.clamp(torch.arange(count) + offset, 0, count - 1)
            neighbours.append(stack[index])
        stack = torch.cat(neighbours, dim=1)
    if mirror:
        stack = torch.cat([stack, stack.flip(-1)], dim=1)
    return stack


def prepare(volume: Volume, cfg: Preprocessing) -> Prepared:
    """Resample, crop and window ``volume`` for a slice network."""
    sz, sy, sx = volume.spacing_mm
    tz = max(cfg.target_spacing_mm[0], sz)  # never invent slices thinner than acquired
    ty, tx = cfg.target_spacing_mm[1], cfg.target_spacing_mm[2]
    hu = torch.from_numpy(np.ascontiguousarray(volume.hu, dtype=np.float32))
    if tz > sz * 1.05:
        hu = _smooth_z(hu, np.sqrt(tz**2 - sz**2) / 2.355 / sz)
    affine = torch.diag(torch.tensor([sz, sy, sx, 1.0], dtype=torch.float64))
    image = MetaTensor(hu[None], affine=affine)
    resampled = Spacing(pixdim=(tz, ty, tx), mode="bilinear", padding_mode="border",
                        dtype=np.float32)(image)
    out = torch.as_tensor(resampled)[0]
    cy, cx = _centre(out, cfg.center_on, ty)
    padded = SpatialPad(spatial_size=(-1, out.shape[1] + cfg.crop[0],
                                      out.shape[2] + cfg.crop[1]),
                        mode="constant", value=HU_MIN)(out[None])
    pad_y = (padded.shape[2] - out.shape[1]) // 2
    pad_x = (padded.shape[3] - out.shape[2]) // 2
    cropped = SpatialCrop(roi_center=(out.shape[0] // 2, cy + pad_y, cx + pad_x),
                          roi_size=(out.shape[0], cfg.crop[0], cfg.crop[1]))(padded)
    crop_hu = torch.as_tensor(cropped)[0].float()
    z_mm = volume.origin_mm[2] + np.arange(crop_hu.shape[0]) * tz
    # the crop starts roi_center - size // 2 into the padded image, which SpatialPad padded
    # by pad_y / pad_x: (cy - crop // 2) pixels into the resampled slice, whose first pixel
    # is the volume's (Spacing keeps the origin)
    crop_origin = (volume.origin_mm[1] + (cy - cfg.crop[0] // 2) * ty,
                   volume.origin_mm[0] + (cx - cfg.crop[1] // 2) * tx)
    source = np.clip(np.rint((z_mm - volume.origin_mm[2]) / sz), 0, volume.shape[0] - 1)
    return Prepared(
        slices=window_channels(crop_hu, cfg.windows, cfg.context_slices, mirror=cfg.mirror),
        z_mm=z_mm.astype(np.float32),
        source_index=source.astype(np.int64),
        hu=crop_hu,
        crop_origin_mm=(float(crop_origin[0]), float(crop_origin[1])),
    )
