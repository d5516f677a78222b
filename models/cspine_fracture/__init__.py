"""Cervical-spine fracture detector for C-spine CT (2.5-D MONAI ResNet)."""

from __future__ import annotations

from models.definition import Definition
from models.detector import Eligibility, ModelCard
from models.preprocess import Preprocessing
from models.slicenet import SliceDetector
from models.synthetic.spec import Region

DEFINITION = Definition(
    name="cspine_fracture",
    task="Cervical-spine fracture (C1-C7) on C-spine CT: study probability and slice range",
    description=(
        "Flags fractures of the vertebral body, the posterior elements and compression "
        "fractures from C1 to C7. Each axial slice resampled to 2 mm and 0.8 mm pixels, "
        "cropped around the spine, with its neighbours in two bone windows (500/2000, "
        "1000/4000) and a soft-tissue window (50/350), is scored by a 2-D MONAI ResNet."
    ),
    finding="fracture",
    region=Region.CSPINE,
    preprocessing=Preprocessing(
        target_spacing_mm=(2.0, 0.8, 0.8),
        crop=(128, 128),
        windows=((500.0, 2000.0), (1000.0, 4000.0), (50.0, 350.0)),
        context_slices=1,
        center_on="bone",
    ),
    eligibility=Eligibility(
        modalities=("CT",), body_parts=("CSPINE", "NECK", "C-SPINE", "SPINE"), min_slices=20,
        max_slice_thickness_mm=3.0, min_coverage_mm=60.0, contrast="any",
    ),
    target_specificity=0.90,
    strata=("subtype", "level"),
)


def build(card: ModelCard, *, device: str = "cpu") -> SliceDetector:
    """The detector for ``card`` (weights verified against its sha256)."""
    return SliceDetector(card, device=device)
