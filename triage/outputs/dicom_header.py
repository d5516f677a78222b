"""Who writes our DICOM objects and the header they share: device identity, derived UIDs,
Contributing Equipment, patient and study attributes from the report.

Split from :mod:`triage.outputs.sr` (the content) because every object written back to the
site (SR, KOS, later SEG or UPS) must agree on these: the same device UID, the same rules
for UIDs, the same patient and study attributes.

UIDs are derived, never random: the same inputs give the same UID on every host, so a
resend is stored once.  A new model version gives a new series and a new device UID in the
Contributing Equipment Sequence, so a site can tell apart the results of two model versions
(DESIGN.md).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, Comprehensive3DSRStorage, generate_uid

from triage import __version__
from triage.outputs.report import FindingResult, StudyReport

__all__ = [
    "DeviceIdentity", "DocumentReference", "apply_report_header", "contributing_equipment",
    "evidence_item", "header_kwargs", "reference_item", "series_uid",
]

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ct-triage:dicom-uid")
_PROCESSING = Code("109102", "DCM", "Processing Equipment")
_CHARSET = "ISO_IR 192"  # UTF-8: patient names come from anywhere


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """This software as a DICOM device: who wrote the SR and KOS.

    ``uid_root`` is the site's or vendor's registered UID root (ending in a dot); without one,
    UIDs are ``2.25.`` UUID-derived UIDs, which need no registration.
    """

    manufacturer: str = "CT triage project"
    model_name: str = "ct-triage"
    software_version: str = __version__
    uid_root: str | None = None
    institution_name: str | None = None
    sr_series_number: int = 9901
    kos_series_number: int = 9902

    def __post_init__(self) -> None:
        for name in ("manufacturer", "model_name", "software_version"):
            value = getattr(self, name)
            if not value or len(value) > 64:
                raise ValueError(f"DeviceIdentity.{name} must be 1 to 64 characters")
        root = self.uid_root
        if root is not None and (not root.endswith(".") or len(root) > 40
                                 or not UID(root[:-1]).is_valid):
            raise ValueError("DeviceIdentity.uid_root must be a valid UID root of at most "
                             "40 characters ending in '.'")

    def uid(self, *parts: str) -> str:
        """A UID derived from ``parts``: the same parts give the same UID on every host.

        Without a root it is a name-based (SHA-1) UUID under ``2.25.`` (PS3.5 B.2).  Not
        ``generate_uid(prefix=None, entropy_srcs=...)``: pydicom ignores the entropy then and
        returns a random UUID.
        """
        name = "\x1f".join((self.manufacturer, *parts))
        if self.uid_root is None:
            return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
        return str(generate_uid(prefix=self.uid_root, entropy_srcs=[name]))

    @property
    def device_uid(self) -> str:
        """Device UID of this software version (Device Observer UID, General Equipment)."""
        return self.uid("device", self.model_name, self.software_version)

    def model_uid(self, finding: FindingResult) -> str:
        """Device UID of one model version: changes whenever the model or its weights do."""
        return self.uid("model", finding.model_name, finding.model_version,
                        finding.weights_sha256)


@dataclass(frozen=True, slots=True)
class DocumentReference:
    """Where an SR sent earlier lives, so a correction or retraction can name it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = str(Comprehensive3DSRStorage)

    @classmethod
    def of(cls, dataset: Dataset) -> DocumentReference:
        """The reference to a built (or received) SR data set."""
        return cls(str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID),
                   str(dataset.SOPInstanceUID), str(dataset.SOPClassUID))


def series_uid(report: StudyReport, device: DeviceIdentity, modality: str) -> str:
    """One series per study, modality, software version and set of model versions."""
    models = sorted({(f.model_name, f.model_version, f.weights_sha256) for f in report.findings})
    return device.uid("series", modality, report.study_instance_uid, device.model_name,
                      device.software_version, *("/".join(m) for m in models))


def contributing_equipment(report: StudyReport,
                           device: DeviceIdentity) -> list[hd.ContributingEquipment]:
    """One Contributing Equipment item per model version, with its own Device UID."""
    items: dict[str, hd.ContributingEquipment] = {}
    for finding in report.findings:
        uid = device.model_uid(finding)
        if uid in items:
            continue
        item = hd.ContributingEquipment(
            manufacturer=device.manufacturer, purpose_of_reference=_PROCESSING,
            manufacturer_model_name=finding.model_name[:64],
            software_versions=finding.model_version[:64],
            contribution_description=f"AI detector {finding.detector} (weights sha256 "
                                     f"{finding.weights_sha256[:16]}...)",
        )
        item.DeviceUID = uid
        items[uid] = item
    return list(items.values())


def header_kwargs(report: StudyReport, device: DeviceIdentity,
                  description: str) -> dict[str, Any]:
    """highdicom constructor arguments shared by SR and KOS.

    Times come from the report, not the clock, so a rebuild is byte-identical.  Content
    qualification is RESEARCH: the software is not a medical device.
    """
    created = report.created_at.astimezone(dt.UTC)
    return {
        "series_description": description,
        "manufacturer_model_name": device.model_name,
        "software_versions": device.software_version,
        "content_qualification": hd.ContentQualificationValues.RESEARCH,
        "content_date": created.date(), "content_time": created.time().replace(tzinfo=None),
        "series_date": created.date(), "series_time": created.time().replace(tzinfo=None),
        "specific_character_set": _CHARSET,
    }


def apply_report_header(ds: Dataset, report: StudyReport, device: DeviceIdentity) -> None:
    """Patient and study attributes as the report has them, and reproducible creation times."""
    created = report.created_at.astimezone(dt.UTC)
    ds.PatientName = report.patient.name
    ds.PatientID = report.patient.id
    ds.PatientBirthDate = report.patient.birth_date
    ds.PatientSex = report.patient.sex
    ds.AccessionNumber = report.accession_number
    ds.StudyDate = report.study_date
    ds.StudyTime = report.study_time
    if report.study_description:
        ds.StudyDescription = report.study_description[:64]
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S.%f")
    ds.TimezoneOffsetFromUTC = "+0000"
    ds.DeviceUID = device.device_uid
    for item in ds.ContributingEquipmentSequence:  # highdicom stamps its own item with "now"
        item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S.%f")


def evidence_item(report: StudyReport, sop_class_uid: str, sop_instance_uid: str,
                  series_instance_uid: str) -> Dataset:
    """An evidence item for highdicom, which also reads patient and study from the first one.

    Patient attributes stay empty here and are set afterwards (:func:`apply_report_header`):
    highdicom warns with the patient's name in the message when the name looks unusual.
    """
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = report.study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, "")
    return ds


def reference_item(ref: DocumentReference) -> Dataset:
    """The data set highdicom wants for a predecessor (its four UIDs)."""
    ds = Dataset()
    ds.StudyInstanceUID = ref.study_instance_uid
    ds.SeriesInstanceUID = ref.series_instance_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    ds.SOPClassUID = ref.sop_class_uid
    return ds
