"""Intracranial hemorrhage detector for non-contrast head CT (2.5-D MONAI ResNet)."""

from __future__ import annotations

from models.definition import Definition
from models.detector import Eligibility, ModelCard
from models.preprocess import Preprocessing
from models.slicenet import SliceDetector
from models.synthetic.spec import Region

DEFINITION = Definition(
    name="hemorrhage",
    task="Intracranial hemorrhage on non-contrast head CT: study probability and slice range",
    description=(
        "Flags acute intracranial hemorrhage of any subtype (intraparenchymal, subdural, "
        "epidural, subarachnoid, intraventricular). Each axial slice resampled to 2.5 mm, "
        "with its two neighbours in brain (40/80), subdural (75/215) and bone (600/2800) "
        "windows, is scored by a 2-D MONAI ResNet; the study score is the highest "
        "(neighbour-smoothed) slice score."
    ),
    finding="hemorrhage",
    region=Region.HEAD,
    preprocessing=Preprocessing(
        target_spacing_mm=(2.5, 1.25, 1.25),
        crop=(184, 184),
        windows=((40.0, 80.0), (75.0, 215.0), (600.0, 2800.0)),
        context_slices=1,
        center_on="body",
    ),
    eligibility=Eligibility(
        modalities=("CT",), body_parts=("HEAD", "BRAIN", "SKULL"), min_slices=16,
        max_slice_thickness_mm=5.0, min_coverage_mm=80.0, contrast="absent",
    ),
    target_specificity=0.95,
    # small bleeds lie on one or two slices: each positive study gets the same share of
    # positive slices in training (0.2.0; validation AUC 0.981 -> 0.996)
    positive_balance="study",
)


def build(card: ModelCard, *, device: str = "cpu") -> SliceDetector:
    """The detector for ``card`` (weights verified against its sha256)."""
    return SliceDetector(card, device=device)
