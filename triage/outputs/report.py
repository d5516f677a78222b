"""What every output channel sends: the AI result of one study at one report version.

A report is rebuilt from the database whenever a study's result changes (a new revision of a
series, a downgrade, a retraction); ``version`` grows by one each time, so channels can send
corrections (HL7 result status ``C``, an SR that names its predecessor, a UPS priority change).
Patient demographics are carried because the receivers need them; never log them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from pathlib import Path

from triage.domain import Priority

__all__ = [
    "FindingResult", "Patient", "Priority", "ReportStatus", "SourceImage", "StudyReport",
]


class ReportStatus(enum.StrEnum):
    """Whether this report is the first one, replaces an earlier one, or withdraws it."""

    FINAL = "FINAL"  # first result for the study
    CORRECTED = "CORRECTED"  # replaces the previous version (e.g. a downgrade or upgrade)
    RETRACTED = "RETRACTED"  # the previous result is withdrawn; no AI result stands


@dataclass(frozen=True, slots=True)
class FindingResult:
    """One detector's result on one series."""

    detector: str  # "hemorrhage", "stroke", "cspine_fracture"
    finding: str  # human-readable: "intracranial hemorrhage"
    probability: float  # 0..1
    threshold: float
    flagged: bool
    model_name: str
    model_version: str
    weights_sha256: str
    series_instance_uid: str
    # first/last slice, 0-based indices into ``StudyReport.images`` of this series (sorted
    # inferior → superior, as the detectors index them), and the key image
    slice_range: tuple[int, int] | None = None
    key_sop_instance_uid: str | None = None
    # set when the detector ran but its result must not be used (out of distribution, ...)
    not_applicable: str | None = None


@dataclass(frozen=True, slots=True)
class SourceImage:
    """An image the result refers to (for SR/KOS references)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    path: Path  # the stored file in the spool (read-only; never modified)


@dataclass(frozen=True, slots=True)
class Patient:
    name: str = ""
    id: str = ""
    birth_date: str = ""  # DICOM DA, YYYYMMDD
    sex: str = ""  # M, F, O or ""


@dataclass(frozen=True, slots=True)
class StudyReport:
    """The AI result of one study, version ``version``."""

    study_instance_uid: str
    accession_number: str
    study_date: str  # DA
    study_time: str  # TM
    study_description: str
    patient: Patient
    version: int  # 1, 2, 3, ... (a new version on every change)
    status: ReportStatus
    priority: Priority
    findings: tuple[FindingResult, ...]
    images: tuple[SourceImage, ...]  # the analysed instances, each series inferior → superior
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def flagged(self) -> tuple[FindingResult, ...]:
        """Findings that stand as flags (none in a retraction: its findings are withdrawn)."""
        if self.status is ReportStatus.RETRACTED:
            return ()
        return tuple(f for f in self.findings if f.flagged and f.not_applicable is None)

    def key_images(self) -> tuple[SourceImage, ...]:
        """The key image of every flagged finding (deduplicated, in finding order)."""
        by_uid = {i.sop_instance_uid: i for i in self.images}
        seen: dict[str, SourceImage] = {}
        for f in self.flagged:
            if f.key_sop_instance_uid in by_uid and f.key_sop_instance_uid not in seen:
                seen[f.key_sop_instance_uid] = by_uid[f.key_sop_instance_uid]
        return tuple(seen.values())
