"""Synthetic head CT studies the committed detectors classify with a wide margin.

The seeds are held out from training (training used 100000+, validation 200000+); they were
picked once among the fixed test seeds for large, unambiguous findings, so pipeline tests
check the plumbing, not the detector's borderline behaviour (tests/test_models.py does that).
"""

from __future__ import annotations

from pathlib import Path

from models.synthetic.generate import generate, write_case
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region

HEMORRHAGE_SEED = 990_003
NORMAL_SEED = 990_004


def write_head_study(folder: Path, *, hemorrhage: bool, slices: int = 40) -> list[Path]:
    """One synthetic non-contrast head CT series (DICOM files) in ``folder``."""
    seed = HEMORRHAGE_SEED if hemorrhage else NORMAL_SEED
    case = generate(sample_case(seed, Region.HEAD, finding="hemorrhage" if hemorrhage else "none",
                                max_slices=slices))
    return write_case(case, folder)
