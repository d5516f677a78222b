"""Input description of an analysed volume, for drift and out-of-distribution monitoring.

:func:`describe_inputs` turns a :class:`~models.volume.Volume` into a small JSON-friendly
dict: acquisition attributes from the header (vendor, kernel, kVp, slice thickness, pixel
spacing), intensity statistics inside the body mask, a noise estimate, a coarse HU histogram
and the strata that live performance is broken down by (age band, sex).  No identifiers: the
dict is stored beside the scores and may be exported in aggregate.

The statistics use a subsample of slices, so the whole description costs a few tens of
milliseconds on a 64-slice study.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from models.volume import Volume

#: Bin edges (HU) of the coarse histogram kept per study; the last bin collects the rest.
HISTOGRAM_EDGES_HU: tuple[float, ...] = tuple(float(v) for v in range(-200, 1801, 100))

#: Voxels above this are "inside the body" (skin, fat, soft tissue, bone).
BODY_THRESHOLD_HU = -300.0

#: Intensity band of soft tissue / brain where the noise is estimated.
SOFT_TISSUE_HU = (-50.0, 100.0)

#: Numeric inputs, in the order drift reports list them.
NUMERIC_INPUTS: tuple[str, ...] = (
    "kvp",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "n_slices",
    "hu_p05",
    "hu_median",
    "hu_p95",
    "soft_tissue_hu",
    "bone_fraction",
    "noise_hu",
)

#: Categorical inputs (compared by chi-square).
CATEGORICAL_INPUTS: tuple[str, ...] = ("manufacturer", "kernel")

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
#: Units of a DICOM Age String per year.
AGE_UNITS_PER_YEAR = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}


def age_years(value: str) -> float | None:
    """DICOM Age String (``045Y``, ``006M``, ...) in years; ``None`` when absent or malformed."""
    match = _AGE.match(value.strip().upper()) if value else None
    if match is None:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return number / AGE_UNITS_PER_YEAR[unit]


def years_band(years: float | None) -> str | None:
    """``<40``, ``40-64`` or ``>=65`` (the age bands of the model cards); ``None`` if unknown."""
    if years is None:
        return None
    return "<40" if years < 40 else "40-64" if years < 65 else ">=65"


def age_band(value: str) -> str:
    """The age band of a DICOM Age String, ``unknown`` when absent or malformed."""
    return years_band(age_years(value)) or "unknown"


def thickness_band(thickness_mm: float | None) -> str:
    """Slice thickness rounded for stratification (``1.25 mm``, ``5 mm``; ``unknown``)."""
    if thickness_mm is None or not np.isfinite(thickness_mm):
        return "unknown"
    return f"{float(thickness_mm):g} mm"


def _sample_slices(volume: Volume, limit: int = 16) -> np.ndarray:
    z = volume.hu.shape[0]
    step = max(1, z // limit)
    return np.asarray(volume.hu[::step], dtype=np.float32)


def noise_estimate(slices: np.ndarray) -> float:
    """Robust noise SD (HU) from horizontal neighbour differences in soft tissue.

    Neighbouring pixels of homogeneous tissue differ by noise alone (SD·√2), edges are rare:
    the median absolute deviation of their difference rejects them.
    """
    left, right = slices[:, :, :-1], slices[:, :, 1:]
    low, high = SOFT_TISSUE_HU
    both = (left > low) & (left < high) & (right > low) & (right < high)
    diff = (left - right)[both]
    if diff.size < 100:
        return float("nan")
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return 1.4826 * mad / float(np.sqrt(2.0))


def hu_histogram(values: np.ndarray) -> list[float]:
    """Fractions of ``values`` per bin of :data:`HISTOGRAM_EDGES_HU` (sums to 1)."""
    edges = np.asarray(HISTOGRAM_EDGES_HU)
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    total = max(int(counts.sum()), 1)
    return [round(float(c) / total, 6) for c in counts]


def _body_voxels(slices: np.ndarray) -> np.ndarray:
    body = slices[slices > BODY_THRESHOLD_HU]
    return body if body.size else slices.reshape(-1)


def intensity_histogram(volume: Volume) -> np.ndarray:
    """HU histogram (fractions) of the body voxels of a subsample of slices."""
    return np.asarray(hu_histogram(_body_voxels(_sample_slices(volume))), dtype=np.float64)


def describe_inputs(volume: Volume) -> dict[str, Any]:
    """Acquisition, intensity and strata description of ``volume`` (JSON-friendly, no PHI)."""
    meta = volume.meta
    slices = _sample_slices(volume)
    body = _body_voxels(slices)
    p05, median, p95 = (float(v) for v in np.percentile(body, [5, 50, 95]))
    low, high = SOFT_TISSUE_HU
    soft = body[(body > low) & (body < high)]
    spacing = meta.get("pixel_spacing_mm") or [volume.spacing_mm[1], volume.spacing_mm[2]]
    thickness = meta.get("slice_thickness_mm")
    if thickness is None:
        thickness = volume.spacing_mm[0]

    def rounded(value: float | None, digits: int = 3) -> float | None:
        return None if value is None or not np.isfinite(value) else round(float(value), digits)

    return {
        "manufacturer": str(meta.get("manufacturer") or "unknown").strip() or "unknown",
        "kernel": str(meta.get("kernel") or "unknown").strip() or "unknown",
        "kvp": rounded(meta.get("kvp")),
        "slice_thickness_mm": rounded(float(thickness)),
        "pixel_spacing_mm": rounded(float(np.mean([float(v) for v in spacing]))),
        "n_slices": int(volume.hu.shape[0]),
        "hu_p05": rounded(p05, 1),
        "hu_median": rounded(median, 1),
        "hu_p95": rounded(p95, 1),
        "soft_tissue_hu": rounded(float(np.median(soft)) if soft.size else None, 1),
        "bone_fraction": rounded(float(np.mean(body > 300.0)), 4),
        "noise_hu": rounded(noise_estimate(slices), 2),
        "hu_histogram": hu_histogram(body),
        "age_band": age_band(str(meta.get("patient_age") or "")),
        "sex": (str(meta.get("patient_sex") or "").strip().upper() or "unknown"),
        "thickness_band": thickness_band(thickness),
    }
