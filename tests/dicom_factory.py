"""Builds small, valid CT series for tests (real Part 10 files, strict pydicom write)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    index: int,
    rows: int = 32,
    columns: int = 32,
    body_part: str | None = "HEAD",
    slice_thickness: float = 2.5,
    series_description: str = "Axial head",
    expected_count: int | None = None,
    priority: str | None = None,
    contrast: str | None = None,
    seed: int = 0,
    signed: bool = True,
) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "for"])
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20261125"
    ds.StudyTime = "101010"
    ds.StudyDescription = "CT HEAD"
    ds.Modality = "CT"
    ds.SeriesNumber = 2
    ds.SeriesDescription = series_description
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if body_part:
        ds.BodyPartExamined = body_part
    ds.SliceThickness = slice_thickness
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * slice_thickness]
    if expected_count is not None:
        ds.ImagesInAcquisition = expected_count
    if priority is not None:
        ds.RequestedProcedurePriority = priority
    if contrast is not None:
        ds.ContrastBolusAgent = contrast
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    rng = np.random.default_rng(seed + index)
    dtype = np.int16 if signed else np.uint16
    ds.PixelData = rng.integers(0, 2000, (rows, columns), dtype=dtype).tobytes()
    return ds


def write_series(
    directory: Path,
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **kwargs: object,
) -> list[Path]:
    """Write ``count`` slices of one series into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for index in range(count):
        ds = ct_slice(study_uid=study_uid, series_uid=series_uid, index=index, **kwargs)  # type: ignore[arg-type]
        path = directory / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_uids(paths: Sequence[Path]) -> tuple[str, str]:
    """(study UID, series UID) of a written series."""
    from pydicom import dcmread

    ds = dcmread(paths[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
