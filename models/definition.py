"""What a detector is before it is trained: task, data, preprocessing, eligibility, network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.detector import Eligibility
from models.preprocess import Preprocessing
from models.slicenet import DEFAULT_NETWORK
from models.synthetic.spec import Region


@dataclass(frozen=True)
class Definition:
    name: str
    task: str
    description: str
    finding: str  # the synthetic finding kind that is positive: hemorrhage | stroke | fracture
    region: Region
    preprocessing: Preprocessing
    eligibility: Eligibility
    target_specificity: float = 0.95
    network: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NETWORK))
    # how training draws positive slices: "slice" or "study" (see models.training)
    positive_balance: str = "slice"
    # strata reported by evaluation, beyond vendor, age band, sex and slice thickness
    strata: tuple[str, ...] = ("subtype", "size_band")


def eligibility_json(e: Eligibility) -> dict[str, Any]:
    return {
        "modalities": list(e.modalities),
        "body_parts": list(e.body_parts),
        "min_slices": e.min_slices,
        "max_slice_thickness_mm": e.max_slice_thickness_mm,
        "min_coverage_mm": e.min_coverage_mm,
        "contrast": e.contrast,
    }
