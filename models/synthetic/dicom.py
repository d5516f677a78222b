"""Writes a scanned phantom as a DICOM CT series: one CT Image Storage file per axial slice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from models.synthetic.grid import Grid, slice_centres
from models.synthetic.spec import CaseSpec, Region
from models.synthetic.vendors import BODY_PARTS, STUDY_DESCRIPTIONS, vendor_named

IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.77001")


def case_uids(spec: CaseSpec) -> tuple[str, str, str]:
    """Deterministic (study, series, frame of reference) UIDs of a case."""
    key = f"triage-synthetic-{spec.region.value}-{spec.seed}"
    return (
        generate_uid(entropy_srcs=[key, "study"]),
        generate_uid(entropy_srcs=[key, "series"]),
        generate_uid(entropy_srcs=[key, "frame"]),
    )


def _pick(seed: int, options: Sequence[str]) -> str:
    return options[seed % len(options)]


def header(spec: CaseSpec) -> Dataset:
    """The attributes shared by every slice of the series."""
    acq = spec.acquisition
    vendor = vendor_named(acq.manufacturer)
    study_uid, series_uid, frame_uid = case_uids(spec)
    study_day = dt.date(2024, 1, 1) + dt.timedelta(days=spec.seed % 900)
    birth = study_day.replace(year=study_day.year - spec.patient.age_years)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_day.strftime("%Y%m%d")
    time_of_day = f"{8 + spec.seed % 12:02d}{spec.seed % 60:02d}00"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time_of_day
    ds.AccessionNumber = f"SYNA{spec.seed:08d}"[:16]
    ds.Modality = "CT"
    ds.Manufacturer = acq.manufacturer
    ds.InstitutionName = "Synthetic Phantom Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = _pick(spec.seed, STUDY_DESCRIPTIONS[spec.region])
    ds.SeriesDescription = f"AXIAL {acq.slice_thickness_mm:g}mm {acq.kernel}"
    ds.ManufacturerModelName = acq.model
    ds.PatientName = spec.patient.name
    ds.PatientID = spec.patient.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = spec.patient.sex
    ds.PatientAge = f"{spec.patient.age_years:03d}Y"
    ds.PatientIdentityRemoved = "NO"
    ds.ContrastBolusAgent = None
    # Some sites do not fill Body Part Examined; the routing rules must cope.
    if spec.seed % 11 != 0:
        ds.BodyPartExamined = _pick(spec.seed // 11, BODY_PARTS[spec.region])
    ds.SliceThickness = f"{acq.slice_thickness_mm:g}"
    ds.KVP = f"{acq.kvp:g}"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{acq.fov_mm:g}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = int(acq.mas)
    ds.Exposure = int(acq.mas)
    ds.ConvolutionKernel = acq.kernel
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(spec.seed % 100000)
    ds.SeriesNumber = 2 if spec.region is Region.HEAD else 3
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = acq.matrix
    pixel = acq.fov_mm / acq.matrix
    ds.PixelSpacing = [f"{pixel:.6g}", f"{pixel:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = vendor.bits_stored
    ds.HighBit = vendor.bits_stored - 1
    ds.PixelRepresentation = 1 if vendor.signed_pixels else 0
    ds.RescaleIntercept = f"{vendor.rescale_intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    if spec.region is Region.HEAD:
        ds.WindowCenter, ds.WindowWidth = "40", "80"
    else:
        ds.WindowCenter, ds.WindowWidth = "500", "2000"
    ds.ImageComments = "SYNTHETIC PHANTOM - NOT A PATIENT - NOT FOR CLINICAL USE"
    return ds


def stored_values(hu: np.ndarray, spec: CaseSpec) -> np.ndarray:
    """HU → stored pixel values for the vendor's representation (with its FOV padding)."""
    vendor = vendor_named(spec.acquisition.manufacturer)
    values = np.rint(hu - vendor.rescale_intercept)
    if vendor.padding_hu is not None:
        size = hu.shape[-1]
        yy, xx = np.mgrid[0:size, 0:size]
        outside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 > (size / 2) ** 2
        values[..., outside] = vendor.padding_hu - vendor.rescale_intercept
    high = 2**vendor.bits_stored - 1 if not vendor.signed_pixels else 2 ** 15 - 1
    low = 0 if not vendor.signed_pixels else -(2**15)
    np.clip(values, low, high, out=values)
    return values.astype(np.int16 if vendor.signed_pixels else np.uint16)


def pose_origin(spec: CaseSpec, grid: Grid) -> tuple[float, float]:
    """Patient x, y of the first pixel centre."""
    return float(grid.x[0]), float(grid.y[0])


def write_series(spec: CaseSpec, hu: np.ndarray, grid: Grid, folder: Path) -> list[Path]:
    """Write the slices of ``hu`` (S, H, W) under ``folder``; returns the file paths.

    Slice z positions are the slice centres in patient coordinates, inferior to superior;
    files are named by instance number.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = header(spec)
    pixels = stored_values(hu, spec)
    x0, y0 = pose_origin(spec, grid)
    z = slice_centres(spec.acquisition)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "TRIAGE_SYNTH_1"
    study_key = f"triage-synthetic-{spec.region.value}-{spec.seed}"
    paths = []
    for index in range(pixels.shape[0]):
        sop_uid = generate_uid(entropy_srcs=[study_key, "sop", str(index)])
        meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [f"{x0:.4f}", f"{y0:.4f}", f"{float(z[index]):.4f}"]
        ds.SliceLocation = f"{float(z[index]):.4f}"
        ds.PixelData = pixels[index].tobytes()
        path = folder / f"CT{index + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
