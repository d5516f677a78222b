"""The contract between anatomy renderers and the scanner model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.synthetic.grid import Grid
from models.synthetic.spec import CaseSpec


@dataclass
class FindingLabel:
    """Ground truth of one rendered finding, measured on the fine grid."""

    kind: str  # "hemorrhage" | "stroke" | "fracture"
    subtype: str  # e.g. "subdural", "MCA", "compression"
    volume_ml: float  # voxels of the finding × voxel volume (0 for fracture lines is fine)
    side: str | None = None
    level: int | None = None  # vertebral level for fractures
    bbox_mm: tuple[float, float, float, float, float, float] | None = None  # x0,x1,y0,y1,z0,z1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rendered:
    """Noise-free HU on the fine grid, before the scanner model (blur, noise, artifacts).

    ``lesion`` holds, per voxel, 0 for no finding or ``i + 1`` for ``findings[i]``.
    ``body`` is the head or neck (skin and inside).  ``metal`` marks metal voxels if any,
    so the scanner model can add streaks from them.
    """

    hu: np.ndarray  # float32 (Z, H, W)
    lesion: np.ndarray  # uint8 (Z, H, W)
    body: np.ndarray  # bool (Z, H, W)
    findings: list[FindingLabel]
    metal: np.ndarray | None = None  # bool (Z, H, W)
    landmarks: dict[str, Any] = field(default_factory=dict)


def empty(grid: Grid) -> Rendered:
    shape = grid.shape
    return Rendered(
        hu=np.full(shape, -1000.0, dtype=np.float32),
        lesion=np.zeros(shape, dtype=np.uint8),
        body=np.zeros(shape, dtype=bool),
        findings=[],
    )


def describe(spec: CaseSpec) -> str:
    """One line for logs and contact sheets (no patient name or id)."""
    acq = spec.acquisition
    found = ", ".join(
        f"{type(f).__name__.lower()}" for f in spec.findings
    ) or "normal"
    return (f"seed {spec.seed} {spec.region.value} {found}; {acq.manufacturer} {acq.kernel} "
            f"{acq.kvp:g} kVp {acq.slice_thickness_mm:g} mm")
