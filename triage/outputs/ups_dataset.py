"""The DICOM content of our UPS workitems and event reports, and C-FIND matching on it.

Pure functions on pydicom datasets (no I/O).  What we write is valid by construction: every
value is cut to its VR's length and dates that do not parse are left empty.  Patient data
lives in these datasets; never log them.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from triage.outputs.report import StudyReport

#: All UPS instances are instances of the UPS Push SOP Class (PS3.4 CC.3.1).
UPS_PUSH_SOP_CLASS_UID = "1.2.840.10008.5.1.4.34.6.1"

PROCEDURE_STEP_LABEL = "AI triage read"
WORKLIST_LABEL = "CT triage"
COMMENTS = "Priority set by AI triage software (AI-generated, not for diagnosis)."
# DICOM CID 9231 "Workitem Definition": the radiologist's read.
WORKITEM_CODE = ("110005", "DCM", "Interpretation")
STATION_CODING_SCHEME = "99CTTRIAGE"  # private coding scheme of our station names

_TRANSACTION_UID = Tag(0x0008, 0x1195)
_CHARSET = Tag(0x0008, 0x0005)
_NOT_MATCHED = frozenset({_TRANSACTION_UID, _CHARSET})


def dicom_datetime(when: dt.datetime) -> str:
    """A DT value in UTC: ``YYYYMMDDHHMMSS.FFFFFF+0000``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value[:16]
    item.CodingSchemeDesignator = scheme[:16]
    item.CodeMeaning = meaning[:64]
    return item


def _date(value: str) -> str:
    return value if re.fullmatch(r"\d{8}", value) else ""


def build_workitem(
    report: StudyReport,
    *,
    workitem_uid: str,
    now: dt.datetime,
    station_name: str = "",
    retrieve_ae_title: str = "",
) -> Dataset:
    """The SCHEDULED workitem of one study: "AI triage read" at the report's priority.

    ``station_name`` fills the Scheduled Station Name Code Sequence (empty: unassigned);
    ``retrieve_ae_title``, where the images can be retrieved, fills the DICOM Retrieval
    Sequence of each Input Information item (empty: left out).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = UPS_PUSH_SOP_CLASS_UID
    ds.SOPInstanceUID = workitem_uid
    # Unified Procedure Step Scheduled Procedure Information
    ds.ScheduledProcedureStepPriority = str(report.priority)
    ds.ScheduledProcedureStepModificationDateTime = dicom_datetime(now)
    ds.ProcedureStepLabel = PROCEDURE_STEP_LABEL
    ds.WorklistLabel = WORKLIST_LABEL
    ds.ScheduledStationNameCodeSequence = (
        [_code(station_name, STATION_CODING_SCHEME, station_name)] if station_name else []
    )
    ds.ScheduledStationClassCodeSequence = []
    ds.ScheduledStationGeographicLocationCodeSequence = []
    ds.ScheduledHumanPerformersSequence = []
    ds.ScheduledProcedureStepStartDateTime = dicom_datetime(report.created_at)
    ds.ScheduledWorkitemCodeSequence = [_code(*WORKITEM_CODE)]
    ds.CommentsOnTheScheduledProcedureStep = COMMENTS
    ds.InputReadinessState = "READY"
    ds.InputInformationSequence = _input_information(report, retrieve_ae_title)
    ds.StudyInstanceUID = report.study_instance_uid
    # Unified Procedure Step Relationship
    ds.PatientName = report.patient.name[:320]
    ds.PatientID = report.patient.id[:64]
    ds.IssuerOfPatientID = ""
    ds.OtherPatientIDsSequence = []
    ds.PatientBirthDate = _date(report.patient.birth_date)
    ds.PatientSex = report.patient.sex if report.patient.sex in ("M", "F", "O") else ""
    ds.AdmissionID = ""
    ds.IssuerOfAdmissionIDSequence = []
    ds.AdmittingDiagnosesDescription = ""
    ds.AdmittingDiagnosesCodeSequence = []
    request = Dataset()
    request.StudyInstanceUID = report.study_instance_uid
    request.AccessionNumber = report.accession_number[:16]
    request.IssuerOfAccessionNumberSequence = []
    request.RequestedProcedureID = ""
    request.RequestedProcedureDescription = report.study_description[:64]
    request.RequestedProcedureCodeSequence = []
    ds.ReferencedRequestSequence = [request]
    # Unified Procedure Step Progress Information / Performed Procedure Information
    ds.ProcedureStepState = "SCHEDULED"
    ds.ProcedureStepProgressInformationSequence = []
    ds.UnifiedProcedureStepPerformedProcedureSequence = []
    return ds


def _input_information(report: StudyReport, retrieve_ae_title: str) -> list[Dataset]:
    """One item per analysed series, referencing its instances."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for image in report.images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.sop_class_uid
        ref.ReferencedSOPInstanceUID = image.sop_instance_uid
        by_series[image.series_instance_uid].append(ref)
    items = []
    for series_uid, refs in by_series.items():
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID = report.study_instance_uid
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = refs
        if retrieve_ae_title:
            where = Dataset()
            where.RetrieveAETitle = retrieve_ae_title
            item.DICOMRetrievalSequence = [where]
        items.append(item)
    return items


# --- state changes --------------------------------------------------------------------------

def _performed_item(ds: Dataset) -> Dataset:
    if not ds.get("UnifiedProcedureStepPerformedProcedureSequence"):
        ds.UnifiedProcedureStepPerformedProcedureSequence = [Dataset()]
    item: Dataset = ds.UnifiedProcedureStepPerformedProcedureSequence[0]
    return item


def mark_in_progress(ds: Dataset, now: dt.datetime) -> None:
    """SCHEDULED → IN PROGRESS: record when performance started."""
    ds.ProcedureStepState = "IN PROGRESS"
    item = _performed_item(ds)
    if not item.get("PerformedProcedureStepStartDateTime"):
        item.PerformedProcedureStepStartDateTime = dicom_datetime(now)


def mark_final(ds: Dataset, state: str, now: dt.datetime, reason: str = "") -> None:
    """IN PROGRESS → COMPLETED or CANCELED, completing the final-state attributes.

    The performer cannot N-SET the scheduled-to-performed copy for us, so the SCP fills
    what it can derive and the performer has not set: start and end time, the performed
    workitem code (= the scheduled one), empty performer/station/output sequences, and on
    cancellation the cancellation time and reason.
    """
    ds.ProcedureStepState = state
    item = _performed_item(ds)
    defaults: dict[str, object] = {
        "ActualHumanPerformersSequence": [],
        "PerformedStationNameCodeSequence": [],
        "PerformedProcedureStepStartDateTime": dicom_datetime(now),
        "PerformedWorkitemCodeSequence": copy.deepcopy(
            list(ds.get("ScheduledWorkitemCodeSequence", []))
        ),
        "PerformedProcedureStepEndDateTime": dicom_datetime(now),
        "OutputInformationSequence": [],
    }
    for keyword, value in defaults.items():
        if keyword not in item:
            setattr(item, keyword, value)
    if state == "CANCELED":
        if not ds.get("ProcedureStepProgressInformationSequence"):
            ds.ProcedureStepProgressInformationSequence = [Dataset()]
        progress = ds.ProcedureStepProgressInformationSequence[0]
        progress.ProcedureStepCancellationDateTime = dicom_datetime(now)
        if reason:
            progress.ReasonForCancellation = reason[:10240]


# --- event information (PS3.4 Table CC.2.4-1) ---------------------------------------------

def state_report(ds: Dataset, reason: str = "") -> Dataset:
    """UPS State Report (event type 1): current state and input readiness.

    Always carries the current Scheduled Procedure Step Priority too: the standard has no
    event for a priority change, and SCUs must accept additional attributes (CC.2.4.2).
    """
    info = Dataset()
    info.ProcedureStepState = ds.ProcedureStepState
    info.InputReadinessState = ds.InputReadinessState
    info.ScheduledProcedureStepPriority = ds.ScheduledProcedureStepPriority
    if reason:
        info.ReasonForCancellation = reason[:10240]
    return info


def assigned_report(ds: Dataset) -> Dataset:
    """UPS Assigned (event type 5): the scheduled station and performers."""
    info = Dataset()
    info.ScheduledStationNameCodeSequence = copy.deepcopy(
        list(ds.get("ScheduledStationNameCodeSequence", []))
    )
    performers = list(ds.get("ScheduledHumanPerformersSequence", []))
    if performers:
        info.ScheduledHumanPerformersSequence = copy.deepcopy(performers)
    info.InputReadinessState = ds.InputReadinessState
    return info


def cancel_requested_report(requesting_ae: str, request: Dataset) -> Dataset:
    """UPS Cancel Requested (event type 2), with what the requester provided."""
    info = Dataset()
    info.RequestingAE = requesting_ae[:16]
    for keyword in (
        "ReasonForCancellation",
        "ProcedureStepDiscontinuationReasonCodeSequence",
        "ContactURI",
        "ContactDisplayName",
    ):
        if keyword in request:
            info.add(copy.deepcopy(request[keyword]))
    return info


def progress_report(ds: Dataset) -> Dataset:
    """UPS Progress Report (event type 3)."""
    info = Dataset()
    info.ProcedureStepProgressInformationSequence = copy.deepcopy(
        list(ds.get("ProcedureStepProgressInformationSequence", []))
    )
    return info


# --- matching (C-FIND) and attribute selection (N-GET) --------------------------------------

def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
        re.DOTALL,
    )


def _match_element(query: DataElement, stored: DataElement) -> bool:
    wanted = _values(query)
    have = _values(stored)
    if query.VR == "UI":  # list of UID matching
        return bool(set(wanted) & set(have))
    for pattern in wanted:
        if query.VR in ("DA", "DT", "TM") and "-" in pattern:  # range matching
            low, _, high = pattern.partition("-")
            if any(
                (not low or v[: len(low)] >= low) and (not high or v[: len(high)] <= high)
                for v in have
            ):
                return True
        elif any(_wildcard(pattern).fullmatch(v) for v in have):
            return True
    return False


def is_universal(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return not elem.value or all(is_universal(e) for e in elem.value[0])
    return bool(elem.is_empty) or all(v in ("", "*") for v in _values(elem))


def matches(ds: Dataset, query: Dataset) -> bool:
    """Whether ``ds`` matches every key of ``query`` (single value, list of UID, wildcard,
    range and sequence matching; empty keys match anything)."""
    for elem in query:
        if elem.tag in _NOT_MATCHED or is_universal(elem):
            continue
        stored = ds.get(elem.tag)
        if stored is None or stored.is_empty:
            return False
        if elem.VR == "SQ":
            if stored.VR != "SQ" or not any(matches(i, elem.value[0]) for i in stored.value):
                return False
        elif not _match_element(elem, stored):
            return False
    return True


def _empty_like(tag: BaseTag, vr: str) -> DataElement:
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def select(ds: Dataset, tags: Iterable[BaseTag]) -> Dataset:
    """The requested attributes of ``ds``; absent ones (and the transaction UID) empty.

    Tags outside the DICOM dictionary are left out.
    """
    out = Dataset()
    out.SpecificCharacterSet = ds.get("SpecificCharacterSet", "ISO_IR 192")
    for requested in tags:
        tag = Tag(requested)
        if tag == _CHARSET:
            continue
        stored = ds.get(tag)
        if stored is not None and tag != _TRANSACTION_UID:
            out.add(copy.deepcopy(stored))
        elif dictionary_has_tag(tag):
            out.add(_empty_like(tag, dictionary_VR(tag)))
    return out


def response_identifier(ds: Dataset, query: Dataset) -> Dataset:
    """The C-FIND response for one match: every key of ``query`` with our value."""
    out = Dataset()
    out.SpecificCharacterSet = ds.get("SpecificCharacterSet", "ISO_IR 192")
    for elem in query:
        if elem.tag == _CHARSET:
            continue
        stored = ds.get(elem.tag)
        if stored is not None and elem.tag != _TRANSACTION_UID:
            out.add(copy.deepcopy(stored))
        else:
            out.add(_empty_like(elem.tag, elem.VR))
    return out
