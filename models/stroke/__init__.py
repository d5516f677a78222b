"""Early ischemic stroke detector for non-contrast head CT (2.5-D MONAI ResNet)."""

from __future__ import annotations

from models.definition import Definition
from models.detector import Eligibility, ModelCard
from models.preprocess import Preprocessing
from models.slicenet import SliceDetector
from models.synthetic.spec import Region

DEFINITION = Definition(
    name="stroke",
    task="Early ischemic stroke (vascular-territory hypodensity) on non-contrast head CT",
    description=(
        "Flags early ischemic change in the MCA, ACA or PCA territory: subtle hypodensity "
        "and loss of gray-white differentiation, with or without a hyperdense vessel. Each "
        "axial slice resampled to 5 mm, with its neighbours in a narrow stroke window "
        "(32/24), brain (40/80) and bone (600/2800) windows, is scored by a 2-D MONAI ResNet."
    ),
    finding="stroke",
    region=Region.HEAD,
    preprocessing=Preprocessing(
        target_spacing_mm=(5.0, 1.5, 1.5),
        crop=(160, 160),
        windows=((32.0, 24.0), (40.0, 80.0), (600.0, 2800.0)),
        context_slices=1,
        center_on="body",
    ),
    eligibility=Eligibility(
        modalities=("CT",), body_parts=("HEAD", "BRAIN", "SKULL"), min_slices=16,
        max_slice_thickness_mm=5.0, min_coverage_mm=80.0, contrast="absent",
    ),
    target_specificity=0.90,
    strata=("subtype",),
)


def build(card: ModelCard, *, device: str = "cpu") -> SliceDetector:
    """The detector for ``card`` (weights verified against its sha256)."""
    return SliceDetector(card, device=device)
