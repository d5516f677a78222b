"""The AI result of one study as DICOM for the PACS: an SR (TID 1500) and a Key Object Selection.

A PACS shows both next to the study without any plug-in, so the radiologist meets the AI
result and its key images where they read.  Both are built with highdicom, which checks the
structure while building (strict on what we write).

UIDs are derived (:mod:`triage.outputs.dicom_header`): the same study, report version and
model versions always give the same SOP Instance UID, so a resend is stored once.

The SR content tree::

    Imaging Measurement Report (TID 1500)
     ├ language, observation context (device observer: this software), procedure reported
     ├ Image Library: the key image and the slice range of every finding
     ├ Imaging Measurements: one Measurement Group (TID 1501) per finding, holding
     │   tracking id, finding (SNOMED CT), finding site, algorithm identification (model name,
     │   version, weights sha256, threshold), Certainty of Finding (the probability in %,
     │   referencing the key image), Threshold Value (%), presence (Present / Absent /
     │   Undetermined when the result must not be used), source images (the slice range)
     └ Qualitative Evaluations: plain-text statements (AI-generated, not for diagnosis,
       trained on synthetic data; why a result is not applicable; correction or withdrawal)

A RETRACTED report carries no measurement groups: it names its predecessor and says that the
earlier AI result is withdrawn.  The SR is UNVERIFIED and PRELIMINARY (no physician signed it).
"""

from __future__ import annotations

import logging

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageLibraryEntryDescriptors,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from triage.outputs.dicom_header import (
    DeviceIdentity,
    DocumentReference,
    apply_report_header,
    contributing_equipment,
    evidence_item,
    header_kwargs,
    reference_item,
    series_uid,
)
from triage.outputs.report import ReportStatus, SourceImage, StudyReport

__all__ = [
    "DISCLAIMER", "DeviceIdentity", "DocumentReference", "build_kos", "build_rejection_note",
    "build_sr", "finding_code",
]

logger = logging.getLogger(__name__)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


# Findings by detector name: (finding, finding site).  SNOMED CT concepts; an unknown detector
# falls back to "Clinical finding" and keeps its own name in the tracking identifier.  The
# C-spine finding is post-coordinated, "Fracture of bone" at the finding site "Cervical spine":
# both concepts are in published sources (the root concept of SNOMED International's fracture
# template; PS3.16), while no pre-coordinated "fracture of cervical spine" code could be checked.
_BRAIN = _sct("12738006", "Brain")
_FINDINGS: dict[str, tuple[Code, Code | None]] = {
    "hemorrhage": (_sct("1386000", "Intracranial hemorrhage"), _BRAIN),
    "stroke": (_sct("422504002", "Ischemic stroke"), _BRAIN),
    "cspine_fracture": (_sct("125605004", "Fracture of bone"), _sct("122494005", "Cervical spine")),
}
_CLINICAL_FINDING = _sct("404684003", "Clinical finding")
_PRESENT = _sct("52101004", "Present")  # CID 240
_ABSENT = _sct("272519000", "Absent")
_UNDETERMINED = _sct("373068000", "Undetermined")
_IMAGING_PROCEDURE = _sct("363679005", "Imaging procedure")  # CID 100
_CERTAINTY = _dcm("111012", "Certainty of Finding")  # likelihood of the finding, in %
_THRESHOLD = _dcm("122411", "Threshold Value")
_PERCENT = Code("%", "UCUM", "Percent")
_COMMENT = _dcm("121106", "Comment")
_AI = _dcm("123110", "Artificial Intelligence")
_OF_INTEREST = _dcm("113000", "Of Interest")  # CID 7010 Key Object Selection titles
# IHE IOCM rejection note: tells an IOCM-aware archive to hide the referenced instances.
_REJECTED = _dcm("113001", "Rejected for Quality Reasons")
_DEVICE = CodedConcept("121007", "DCM", "Device")
_QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

DISCLAIMER = (
    "AI-generated result for triage (worklist prioritisation) only. Not for diagnosis and not "
    "verified by a physician. The models were trained only on synthetic CT phantoms."
)


def finding_code(detector: str) -> Code:
    """The coded finding a detector reports (SNOMED CT), "Clinical finding" when unknown."""
    return _FINDINGS.get(detector, (_CLINICAL_FINDING, None))[0]


def build_sr(report: StudyReport, *, device: DeviceIdentity,
             predecessor: DocumentReference | None) -> Comprehensive3DSR:
    """The Comprehensive 3D SR (TID 1500) of ``report``.

    ``predecessor`` is the SR sent for the previous version of this study: required for a
    CORRECTED or RETRACTED report, refused for a FINAL one (it would contradict itself).

    Raises
    ------
    ValueError
        A non-retracted report without findings, a predecessor that does not fit the status
        or belongs to another study, or a finding whose images are not in ``report.images``.
    OSError
        A referenced image file cannot be read (its header fills the Image Library).
    """
    _check_predecessor(report, predecessor)
    retracted = report.status is ReportStatus.RETRACTED
    if not report.findings and not retracted:
        raise ValueError("a report without findings has nothing to send as SR")
    series = series_uid(report, device, "SR")
    sop_uid = device.uid("sr", series, str(report.version))
    observer = ObservationContext(observer_device_context=_observer(device))
    root: Dataset
    if retracted:  # TID 1500 needs measurements *or* qualitative evaluations (rows 6, 12)
        root = ContainerContentItem(name=_dcm("126000", "Imaging Measurement Report"),
                                    template_id="1500")
        root.ContentSequence = ContentSequence([
            *LanguageOfContentItemAndDescendants(
                CodedConcept("en-US", "RFC5646", "English (United States)")),
            *observer,
            _code_item(_dcm("121058", "Procedure reported"), _IMAGING_PROCEDURE),
            _empty_library(),
        ])
    else:
        groups, shown = _measurement_groups(report, device)
        library = _library(shown)
        root = MeasurementReport(observer, _IMAGING_PROCEDURE, groups,
                                 referenced_images=library)[0]
        if library is None:  # highdicom leaves out row 5; it is mandatory, so keep it, empty
            procedure = next(i for i, item in enumerate(root.ContentSequence)
                             if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0]
                             .CodeValue == "121058")
            root.ContentSequence.insert(procedure + 1, _empty_library())
    root.ContentSequence.append(_statements(report))
    sr = Comprehensive3DSR(
        evidence=_evidence(report, predecessor), content=root, series_instance_uid=series,
        series_number=device.sr_series_number, sop_instance_uid=sop_uid,
        instance_number=report.version, manufacturer=device.manufacturer, is_complete=True,
        is_final=False, is_verified=False, institution_name=device.institution_name,
        previous_versions=[reference_item(predecessor)] if predecessor else None,
        contributing_equipment=contributing_equipment(report, device),
        **header_kwargs(report, device, "AI triage result (not for diagnosis)"),
    )
    apply_report_header(sr, report, device)
    logger.info("built SR version %d (%s) with %d finding(s), SOP %s", report.version,
                report.status, len(report.findings), sop_uid)
    return sr


def build_kos(report: StudyReport, *, device: DeviceIdentity) -> KeyObjectSelectionDocument | None:
    """A Key Object Selection of the key images of the flagged findings, None without any.

    A RETRACTED report selects nothing: no AI result stands.
    """
    keys = report.key_images()
    if report.status is ReportStatus.RETRACTED or not keys:
        return None
    series = series_uid(report, device, "KO")
    sop_uid = device.uid("ko", series, str(report.version))
    names = ", ".join(dict.fromkeys(f.finding for f in report.flagged))
    return _key_object_document(
        report, device, title=_OF_INTEREST,
        references=[_image_dataset(report, image) for image in keys],
        description=f"Key images of AI-flagged findings: {names}. {DISCLAIMER}",
        series=series, sop_uid=sop_uid,
        series_description="AI key images (not for diagnosis)",
    )


def build_rejection_note(report: StudyReport, rejected: DocumentReference, *,
                         device: DeviceIdentity) -> KeyObjectSelectionDocument:
    """A Key Object Selection titled *Rejected for Quality Reasons* (IHE IOCM) that withdraws
    the key-image selection sent with an earlier version (``rejected``), because ``report``
    corrects or retracts that version.  An IOCM-aware archive hides the rejected object;
    any other keeps it, but the rejection note and the corrected SR say it no longer stands.
    """
    series = series_uid(report, device, "KO")
    sop_uid = device.uid("ko-rejection", series, str(report.version), rejected.sop_instance_uid)
    reference = evidence_item(report, rejected.sop_class_uid, rejected.sop_instance_uid,
                              rejected.series_instance_uid)
    why = ("the AI result is withdrawn" if report.status is ReportStatus.RETRACTED
           else f"superseded by AI result version {report.version}")
    return _key_object_document(
        report, device, title=_REJECTED, references=[reference],
        description=f"Earlier AI key-image selection rejected: {why}. {DISCLAIMER}",
        series=series, sop_uid=sop_uid, series_description="AI key images withdrawn",
    )


def _key_object_document(report: StudyReport, device: DeviceIdentity, *, title: Code,
                         references: list[Dataset], description: str, series: str,
                         sop_uid: str, series_description: str) -> KeyObjectSelectionDocument:
    """A Key Object Selection Document in the KOS series of ``device`` for ``report``."""
    content = KeyObjectSelection(
        document_title=title, referenced_objects=references,
        observer_device_context=_observer(device), description=description[:1024],
    )
    document = KeyObjectSelectionDocument(
        evidence=references, content=content, series_instance_uid=series,
        series_number=device.kos_series_number, sop_instance_uid=sop_uid,
        instance_number=report.version, manufacturer=device.manufacturer,
        institution_name=device.institution_name,
        contributing_equipment=contributing_equipment(report, device),
        **header_kwargs(report, device, series_description),
    )
    apply_report_header(document, report, device)
    return document


# --- content ------------------------------------------------------------------------------------

def _measurement_groups(
    report: StudyReport, device: DeviceIdentity,
) -> tuple[list[MeasurementsAndQualitativeEvaluations], list[SourceImage]]:
    """One TID 1501 group per finding, and the images they reference (for the library)."""
    by_uid = {image.sop_instance_uid: image for image in report.images}
    groups: list[MeasurementsAndQualitativeEvaluations] = []
    shown: dict[str, SourceImage] = {}
    for finding in report.findings:
        code, site = _FINDINGS.get(finding.detector, (_CLINICAL_FINDING, None))
        series = [i for i in report.images if i.series_instance_uid == finding.series_instance_uid]
        in_range: list[SourceImage] = []
        if finding.slice_range is not None:
            first, last = finding.slice_range
            if not 0 <= first <= last < len(series):
                raise ValueError(f"slice range of {finding.detector} is outside its series")
            in_range = series[first:last + 1]
        key = by_uid.get(finding.key_sop_instance_uid or "")
        if finding.key_sop_instance_uid is not None and key is None:
            raise ValueError(f"key image of {finding.detector} is not among the report's images")
        for image in ([key] if key else []) + in_range:
            shown[image.sop_instance_uid] = image
        if finding.not_applicable is not None:
            presence = _UNDETERMINED
        else:
            presence = _PRESENT if finding.flagged else _ABSENT
        certainty = Measurement(
            name=_CERTAINTY, value=round(100.0 * finding.probability, 3), unit=_PERCENT,
            referenced_images=[SourceImageForMeasurement(key.sop_class_uid,
                                                         key.sop_instance_uid)] if key else None)
        threshold = Measurement(name=_THRESHOLD, value=round(100.0 * finding.threshold, 3),
                                unit=_PERCENT)
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=device.uid("track", report.study_instance_uid,
                               finding.series_instance_uid, finding.detector),
                identifier=f"{finding.detector}: {finding.finding}"[:64]),
            finding_type=code,
            finding_sites=[FindingSite(site)] if site else None,
            algorithm_id=AlgorithmIdentification(
                name=finding.model_name, version=finding.model_version, family=_AI,
                manufacturer=device.manufacturer,
                parameters=[f"weights_sha256={finding.weights_sha256}",
                            f"threshold={finding.threshold:g}"]),
            measurements=[certainty, threshold],
            qualitative_evaluations=[QualitativeEvaluation(code, presence)],
            source_images=[SourceImageForMeasurementGroup(i.sop_class_uid, i.sop_instance_uid)
                           for i in in_range] or None,
        ))
    return groups, list(shown.values())


def _statements(report: StudyReport) -> ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": what a reader must know, as plain text."""
    lines = [DISCLAIMER]
    if report.status is ReportStatus.CORRECTED:
        lines.append(f"This AI result (version {report.version}) replaces the earlier AI "
                     "result for this study.")
    elif report.status is ReportStatus.RETRACTED:
        lines.append("The earlier AI result for this study is withdrawn. No AI result stands.")
    for finding in report.findings:
        if finding.not_applicable is not None and report.status is not ReportStatus.RETRACTED:
            lines.append(f"{finding.finding}: not applicable ({finding.not_applicable}); the "
                         "AI result must not be used.")
    container = ContainerContentItem(name=_QUALITATIVE_EVALUATIONS,
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = ContentSequence([
        TextContentItem(name=_COMMENT, value=line,
                        relationship_type=RelationshipTypeValues.CONTAINS)
        for line in lines
    ])
    return container


def _observer(device: DeviceIdentity) -> ObserverContext:
    """TID 1002 device observer: this software, not a person, made the observations."""
    return ObserverContext(
        observer_type=_DEVICE,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device.device_uid, name=device.model_name,
            manufacturer_name=device.manufacturer, model_name=device.model_name),
    )


def _empty_library() -> ContainerContentItem:
    """TID 1600 Image Library with no entries (nothing referenced, or nothing describable)."""
    return ContainerContentItem(name=_dcm("111028", "Image Library"),
                                relationship_type=RelationshipTypeValues.CONTAINS)


def _code_item(name: Code, value: Code) -> CodeContentItem:
    return CodeContentItem(name=name, value=value,
                           relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD)


# --- references -----------------------------------------------------------------------------------

def _check_predecessor(report: StudyReport, predecessor: DocumentReference | None) -> None:
    if report.status is ReportStatus.FINAL and predecessor is not None:
        raise ValueError("a FINAL report has no predecessor; send CORRECTED to replace one")
    if report.status is not ReportStatus.FINAL and predecessor is None:
        raise ValueError(f"a {report.status} report must name the SR it replaces")
    if predecessor is not None and predecessor.study_instance_uid != report.study_instance_uid:
        raise ValueError("the predecessor SR belongs to another study")


def _evidence(report: StudyReport, predecessor: DocumentReference | None) -> list[Dataset]:
    """Every analysed image (or, for a retraction without images, the withdrawn SR)."""
    items = [evidence_item(report, i.sop_class_uid, i.sop_instance_uid, i.series_instance_uid)
             for i in report.images]
    if not items and predecessor is not None:
        items = [evidence_item(report, predecessor.sop_class_uid, predecessor.sop_instance_uid,
                                predecessor.series_instance_uid)]
    if not items:
        raise ValueError("the report references no images")
    return items


def _library(images: list[SourceImage]) -> list[Dataset] | None:
    """Headers for the Image Library; one highdicom cannot describe is left out, not fatal.

    The library describes geometry (spacing, position, orientation); an image lacking some of
    it is still referenced by its measurement group.
    """
    headers: list[Dataset] = []
    for image in images:
        header = dcmread(image.path, stop_before_pixels=True)
        try:
            ImageLibraryEntryDescriptors(header)
        except (AttributeError, TypeError, ValueError) as exc:
            logger.warning("image %s left out of the SR image library (%s)",
                           image.sop_instance_uid, type(exc).__name__)
            continue
        headers.append(header)
    return headers or None


def _image_dataset(report: StudyReport, image: SourceImage) -> Dataset:
    """Reference data of an image for a KOS (rows/columns mark it as an image)."""
    ds = evidence_item(report, image.sop_class_uid, image.sop_instance_uid,
                        image.series_instance_uid)
    header = dcmread(image.path, stop_before_pixels=True,
                     specific_tags=["Rows", "Columns"])
    ds.Rows, ds.Columns = header.Rows, header.Columns
    return ds
