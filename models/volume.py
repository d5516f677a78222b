"""Loads a DICOM CT series into a Hounsfield-unit volume with its geometry (via highdicom).

Tolerant of what scanners and archives send: unsorted files, duplicate instances, several
series in one folder (grouped), compressed transfer syntaxes.  Refuses what would give a
wrong volume: gantry tilt or non-axial stacking, missing slices (irregular spacing), images
of different sizes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom

logger = logging.getLogger(__name__)

HU_MIN, HU_MAX = -1024.0, 3071.0
_TILT_TOLERANCE_DEG = 0.5
_NON_IMAGE = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCREEN SAVE", "SECONDARY", "DOSE INFO"}


class VolumeError(ValueError):
    """The series cannot be turned into a trustworthy volume; the message says why."""


@dataclass(frozen=True)
class Volume:
    """A CT volume in HU, axes (z, y, x) = (inferior→superior, anterior→posterior, right→left)."""

    hu: np.ndarray  # float32 (Z, Y, X)
    spacing_mm: tuple[float, float, float]  # z, y, x
    origin_mm: tuple[float, float, float]  # patient x, y, z of voxel [0, 0, 0]
    study_instance_uid: str
    series_instance_uid: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    def slice_z_mm(self, index: int) -> float:
        """Patient z of slice ``index``."""
        return self.origin_mm[2] + index * self.spacing_mm[0]


def _first(ds: Dataset, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword, default)
    return default if value in (None, "") else value


def header_meta(ds: Dataset) -> dict[str, Any]:
    """The acquisition attributes that eligibility, drift monitoring and reports use."""

    def number(keyword: str) -> float | None:
        try:
            value = _first(ds, keyword)
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    spacing = _first(ds, "PixelSpacing")
    return {
        "modality": str(_first(ds, "Modality", "")),
        "manufacturer": str(_first(ds, "Manufacturer", "")),
        "model": str(_first(ds, "ManufacturerModelName", "")),
        "kernel": str(_first(ds, "ConvolutionKernel", "")),
        "kvp": number("KVP"),
        "slice_thickness_mm": number("SliceThickness"),
        "pixel_spacing_mm": [float(v) for v in spacing] if spacing else None,
        "body_part_examined": str(_first(ds, "BodyPartExamined", "")),
        "contrast_agent": str(_first(ds, "ContrastBolusAgent", "")),
        "gantry_tilt_deg": number("GantryDetectorTilt"),
        "patient_age": str(_first(ds, "PatientAge", "")),
        "patient_sex": str(_first(ds, "PatientSex", "")),
        "study_description": str(_first(ds, "StudyDescription", "")),
        "series_description": str(_first(ds, "SeriesDescription", "")),
    }


def _is_axial_image(ds: Dataset) -> bool:
    image_type = {str(v).upper() for v in (ds.get("ImageType") or ())}
    return "PixelData" in ds and not (image_type & _NON_IMAGE)


def find_series(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Group the DICOM files under ``paths`` (files or folders, recursive) by series UID."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if not is_dicom(file):
                continue
            try:
                ds = dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except Exception:  # not readable as DICOM: skipped, like non-DICOM files
                logger.debug("Skipping unreadable file %s", file)
                continue
            uid = str(ds.get("SeriesInstanceUID", ""))
            if uid:
                groups[uid].append(file)
    return dict(groups)


def _check_tilt(datasets: Sequence[Dataset]) -> None:
    ds = datasets[0]
    try:
        tilt = float(ds.get("GantryDetectorTilt") or 0.0)
    except (TypeError, ValueError):
        tilt = 0.0
    if abs(tilt) > _TILT_TOLERANCE_DEG:
        raise VolumeError(f"gantry tilt of {tilt:g}° is not supported; "
                          "send a reconstruction without tilt")
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[2]) < np.cos(np.deg2rad(10)):
        raise VolumeError("not an axial series (slice normal is not head-foot)")
    if len(datasets) > 1:
        positions = np.asarray([[float(v) for v in d.ImagePositionPatient] for d in datasets])
        order = np.argsort(positions @ normal)
        step = positions[order[-1]] - positions[order[0]]
        if np.linalg.norm(step) > 0:
            cosine = abs(float(step @ normal)) / float(np.linalg.norm(step))
            if np.degrees(np.arccos(min(1.0, cosine))) > _TILT_TOLERANCE_DEG:
                raise VolumeError("slices are stacked obliquely (gantry tilt); not supported")


def _dedupe(datasets: list[Dataset]) -> list[Dataset]:
    """Drop repeated SOP instances and second images at an identical position."""
    seen_uids: set[str] = set()
    seen_positions: set[tuple[float, ...]] = set()
    kept = []
    for ds in sorted(datasets, key=lambda d: int(_first(d, "InstanceNumber", 0) or 0)):
        uid = str(ds.SOPInstanceUID)
        position = tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
        if uid in seen_uids or position in seen_positions:
            continue
        seen_uids.add(uid)
        seen_positions.add(position)
        kept.append(ds)
    if len(kept) != len(datasets):
        logger.info("Dropped %d duplicate instance(s)", len(datasets) - len(kept))
    return kept


def _uids_by_slice(images: Sequence[Dataset], z0: float, dz: float, n: int) -> list[str]:
    """SOP Instance UID of each slice of the volume (index 0 = most inferior), "" if none."""
    uids = [""] * n
    for ds in images:
        index = round((float(ds.ImagePositionPatient[2]) - z0) / dz) if dz else 0
        if 0 <= index < n:
            uids[index] = str(ds.SOPInstanceUID)
    return uids


def load_series(paths: Sequence[Path]) -> Volume:
    """Read one series into a :class:`Volume`.

    Raises
    ------
    VolumeError
        Several series, no images, tilt or oblique stacking, missing slices, mixed matrix
        sizes, or undecodable pixel data.
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except Exception as exc:
            raise VolumeError(f"unreadable file {Path(path).name}: {type(exc).__name__}") from exc
    return volume_from_datasets(datasets)


def volume_from_datasets(datasets: Sequence[Dataset]) -> Volume:
    """Like :func:`load_series`, from datasets already in memory."""
    images = [ds for ds in datasets if _is_axial_image(ds)]
    if not images:
        raise VolumeError("no image instances in the series")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in images}
    if len(series) > 1:
        raise VolumeError(f"{len(series)} series mixed together; load them one at a time")
    images = _dedupe(images)
    if len(images) < 2:
        raise VolumeError("a volume needs at least two slices")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in images}) > 1:
        raise VolumeError("slices have different matrix sizes")
    _check_tilt(images)
    try:
        volume = hd.get_volume_from_series(images, dtype=np.float32)
    except Exception as exc:  # irregular spacing, undecodable pixels, …
        raise VolumeError(f"cannot build a regular volume: {exc}") from exc
    volume = volume.to_patient_orientation("SPL")  # axes: superior, posterior, left
    hu = np.clip(np.asarray(volume.array, dtype=np.float32), HU_MIN, HU_MAX)
    spacing = tuple(float(v) for v in volume.spacing)
    position = tuple(float(v) for v in volume.position)
    first = images[0]
    meta = header_meta(first)
    meta["n_slices"] = int(hu.shape[0])
    meta["sop_instance_uids"] = _uids_by_slice(images, position[2], spacing[0], hu.shape[0])
    return Volume(
        hu=hu,
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        origin_mm=(position[0], position[1], position[2]),
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        meta=meta,
    )
