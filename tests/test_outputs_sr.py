"""SR (TID 1500) and KOS built from a StudyReport, and their C-STORE to a PACS.

Source images are real Part 10 files from the test factory; what we write is read back with
pydicom in strict mode, re-parsed by highdicom and checked by DCMTK's ``dsrdump`` where it is
installed.  The PACS is a pynetdicom SCP in the test process and, when root may create a network
namespace, a real Orthanc.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom.config
import pytest
from dicom_factory import series_uids, write_series
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
)
from pynetdicom import AE, evt

from tests.conftest import orthanc_namespace_problem
from triage.outputs.report import (
    FindingResult,
    Patient,
    Priority,
    ReportStatus,
    SourceImage,
    StudyReport,
)
from triage.outputs.sr import (
    DISCLAIMER,
    DeviceIdentity,
    DocumentReference,
    build_kos,
    build_rejection_note,
    build_sr,
    finding_code,
)
from triage.outputs.store_scu import DicomDestination, PacsStoreError, send_to_pacs

REPO = Path(__file__).resolve().parent.parent
SHA = "0123456789abcdef" * 4
DEVICE = DeviceIdentity()
CREATED = dt.datetime(2026, 11, 25, 10, 20, 30, 123456, tzinfo=dt.UTC)


# --- fixtures ---------------------------------------------------------------------------------

def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_series(tmp_path_factory.mktemp("ct") / "head", 12)


@pytest.fixture
def report(series_dir: list[Path]) -> StudyReport:
    """A head CT: hemorrhage flagged, stroke absent, C-spine not applicable."""
    study, series = series_uids(series_dir)
    headers = [dcmread(p, stop_before_pixels=True) for p in series_dir]
    images = tuple(SourceImage(str(h.SOPClassUID), str(h.SOPInstanceUID), series, path)
                   for h, path in zip(headers, series_dir, strict=True))
    common: dict[str, Any] = {"model_version": "1.2.0", "weights_sha256": SHA,
                              "series_instance_uid": series}
    findings = (
        FindingResult("hemorrhage", "intracranial hemorrhage", 0.934, 0.5, True,
                      model_name="ich_ct", slice_range=(3, 7),
                      key_sop_instance_uid=images[5].sop_instance_uid, **common),
        FindingResult("stroke", "ischemic stroke", 0.08, 0.4, False, model_name="stroke_ct",
                      **common),
        FindingResult("cspine_fracture", "cervical spine fracture", 0.61, 0.5, True,
                      model_name="cspine_ct", not_applicable="input out of distribution",
                      **common),
    )
    return StudyReport(
        study_instance_uid=study, accession_number="ACC1", study_date="20261125",
        study_time="101010", study_description="CT HEAD",
        patient=Patient("Müller^Jürgen", "PAT-7", "19700101", "M"), version=1,
        status=ReportStatus.FINAL, priority=Priority.HIGH, findings=findings, images=images,
        created_at=CREATED,
    )


@pytest.fixture
def strict_read() -> Iterator[None]:
    before = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.reading_validation_mode = before


def write_read(ds: Dataset, path: Path) -> Dataset:
    """Write as Part 10 (strict), read back and touch every element (strict parse)."""
    dcmwrite(path, ds, enforce_file_format=True)
    back = dcmread(path)
    back.walk(lambda _ds, elem: elem.value)
    return back


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def read_sr(path: Path) -> Any:
    """highdicom's parse of an SR file (typed loosely: its accessors are not all typed)."""
    return hd.sr.srread(path)


def texts(sr: Any) -> list[str]:
    items = hd.sr.utils.find_content_items(sr, value_type=hd.sr.ValueTypeValues.TEXT,
                                           recursive=True)
    return [str(item.TextValue) for item in items]


def concept_texts(group: Any) -> dict[str, list[str]]:
    """TEXT items of a measurement group by concept code (algorithm name, version, ...)."""
    found: dict[str, list[str]] = {}
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT":
            code = str(item.ConceptNameCodeSequence[0].CodeValue)
            found.setdefault(code, []).append(str(item.TextValue))
    return found


def groups(sr: Any) -> dict[str, Any]:
    found = sr.content.get_image_measurement_groups()
    return {str(g.tracking_identifier).split(":")[0]: g for g in found}


# --- SR ---------------------------------------------------------------------------------------

def test_sr_round_trips_strictly_and_reparses(report: StudyReport, tmp_path: Path,
                                              strict_read: None) -> None:
    sr = build_sr(report, device=DEVICE, predecessor=None)
    back = write_read(sr, tmp_path / "sr.dcm")
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    parsed = read_sr(tmp_path / "sr.dcm")
    assert isinstance(parsed, hd.sr.Comprehensive3DSR)
    assert isinstance(parsed.content, hd.sr.MeasurementReport)
    # header: the study of the images, a series of our own, the report's patient
    assert back.SOPClassUID == Comprehensive3DSRStorage
    assert back.StudyInstanceUID == report.study_instance_uid
    assert back.SeriesInstanceUID != report.images[0].series_instance_uid
    assert (back.PatientName, back.PatientID, back.PatientBirthDate, back.PatientSex) == (
        "Müller^Jürgen", "PAT-7", "19700101", "M")
    assert (back.AccessionNumber, back.StudyDate, back.StudyDescription) == (
        "ACC1", "20261125", "CT HEAD")
    assert (back.VerificationFlag, back.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    assert back.Modality == "SR"
    assert back.ContentDate == "20261125"
    assert back.ContentTime.startswith("102030")
    assert back.ContentQualification == "RESEARCH"
    assert back.InstanceNumber == 1
    assert "PredecessorDocumentsSequence" not in back
    equipment = {str(e.ManufacturerModelName): e for e in back.ContributingEquipmentSequence}
    for name in ("ich_ct", "stroke_ct", "cspine_ct"):
        assert equipment[name].SoftwareVersions == "1.2.0"
        assert equipment[name].Manufacturer == "CT triage project"
        assert equipment[name].DeviceUID
    assert len({equipment[n].DeviceUID for n in ("ich_ct", "stroke_ct", "cspine_ct")}) == 3
    # every analysed image is evidence
    evidence = {uid for _, _, uid, _ in parsed.get_evidence()}
    assert evidence == {i.sop_instance_uid for i in report.images}
    # observer: this software as a device
    (observer,) = parsed.content.get_observer_contexts()
    attributes: Any = observer.observer_identifying_attributes
    assert attributes.uid == DEVICE.device_uid
    # the statement a reader must see
    statements = texts(parsed)
    assert DISCLAIMER in statements
    assert any("not for diagnosis" in t.lower() and "synthetic" in t for t in statements)
    assert any("not applicable (input out of distribution)" in t for t in statements)


def test_sr_findings_codes_and_measurements(report: StudyReport, tmp_path: Path) -> None:
    write_read(build_sr(report, device=DEVICE, predecessor=None), tmp_path / "sr.dcm")
    found = groups(read_sr(tmp_path / "sr.dcm"))
    assert set(found) == {"hemorrhage", "stroke", "cspine_fracture"}
    # (finding, finding site): the C-spine finding is "Fracture of bone", the site says where
    expected = {
        "hemorrhage": (("1386000", "12738006"), "52101004", 93.4, 50.0, "ich_ct"),  # Present
        "stroke": (("422504002", "12738006"), "272519000", 8.0, 40.0, "stroke_ct"),  # Absent
        "cspine_fracture": (("125605004", "122494005"), "373068000", 61.0, 50.0, "cspine_ct"),
    }
    for name, ((code, site), presence, certainty, threshold, model) in expected.items():
        group = found[name]
        assert (group.finding_type.value, group.finding_type.scheme_designator) == (code, "SCT")
        assert finding_code(name).value == code
        (evaluation,) = group.get_qualitative_evaluations(name=group.finding_type)
        assert evaluation.value.value == presence
        assert evaluation.name == group.finding_type
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values == {"111012": (pytest.approx(certainty), "%"),
                          "122411": (pytest.approx(threshold), "%")}
        algorithm = concept_texts(group)
        assert (algorithm["111001"], algorithm["111003"]) == ([model], ["1.2.0"])
        assert f"weights_sha256={SHA}" in algorithm["111002"]
        assert [(f.value.value, f.value.scheme_designator) for f in group.finding_sites] == [
            (site, "SCT")]


def test_sr_references_key_image_and_slice_range(report: StudyReport, tmp_path: Path) -> None:
    write_read(build_sr(report, device=DEVICE, predecessor=None), tmp_path / "sr.dcm")
    parsed = read_sr(tmp_path / "sr.dcm")
    hemorrhage = groups(parsed)["hemorrhage"]
    in_range = [i.sop_instance_uid for i in report.images[3:8]]
    assert [s.referenced_sop_instance_uid for s in hemorrhage.source_images] == in_range
    certainty = hemorrhage.get_measurements(name=hd.sr.CodedConcept("111012", "DCM",
                                                                     "Certainty of Finding"))[0]
    (key,) = certainty.referenced_images
    assert key.referenced_sop_instance_uid == report.images[5].sop_instance_uid
    # the image library describes exactly the referenced images
    library = hd.sr.utils.find_content_items(
        parsed, name=hd.sr.CodedConcept("111028", "DCM", "Image Library"), recursive=True)
    referenced = hd.sr.utils.find_content_items(
        library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)
    assert {r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in referenced} == set(
        in_range)


def test_sr_tolerates_odd_demographics_and_incomplete_geometry(
        report: StudyReport, tmp_path: Path) -> None:
    """A one-part name raises no warning (highdicom's would carry the name), empty birth
    date and sex are written as empty, and an image without position stays referenced but
    out of the image library."""
    key = report.images[5]
    header = dcmread(key.path)
    del header.ImagePositionPatient
    broken = tmp_path / "key.dcm"
    header.save_as(broken, enforce_file_format=True)
    odd = dataclasses.replace(
        report, patient=Patient("Bono", "PAT-8", "", ""),
        images=tuple(dataclasses.replace(i, path=broken) if i is key else i
                     for i in report.images))
    back = write_read(build_sr(odd, device=DEVICE, predecessor=None), tmp_path / "sr.dcm")
    assert (back.PatientName, back.PatientBirthDate, back.PatientSex) == ("Bono", "", "")
    parsed = read_sr(tmp_path / "sr.dcm")
    hemorrhage = groups(parsed)["hemorrhage"]
    assert key.sop_instance_uid in {s.referenced_sop_instance_uid
                                    for s in hemorrhage.source_images}
    library = hd.sr.utils.find_content_items(
        parsed, name=hd.sr.CodedConcept("111028", "DCM", "Image Library"), recursive=True)
    described = {r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                 for r in hd.sr.utils.find_content_items(
                     library[0], value_type=hd.sr.ValueTypeValues.IMAGE, recursive=True)}
    assert key.sop_instance_uid not in described
    assert len(described) == 4


def test_sr_uids_are_derived_from_study_version_and_models(report: StudyReport) -> None:
    first = build_sr(report, device=DEVICE, predecessor=None)
    assert encode(build_sr(report, device=DEVICE, predecessor=None)) == encode(first)
    corrected = dataclasses.replace(report, version=2, status=ReportStatus.CORRECTED)
    second = build_sr(corrected, device=DEVICE, predecessor=DocumentReference.of(first))
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.InstanceNumber == 2
    new_model = dataclasses.replace(
        report, findings=tuple(dataclasses.replace(f, model_version="1.3.0")
                               for f in report.findings))
    upgraded = build_sr(new_model, device=DEVICE, predecessor=None)
    assert upgraded.SeriesInstanceUID != first.SeriesInstanceUID
    assert ({e.DeviceUID for e in upgraded.ContributingEquipmentSequence if "DeviceUID" in e}
            .isdisjoint(e.DeviceUID for e in first.ContributingEquipmentSequence
                        if "DeviceUID" in e))
    rooted = build_sr(report, device=DeviceIdentity(uid_root="1.2.826.0.1.3680043.10.999."),
                      predecessor=None)
    assert rooted.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
    assert UID(rooted.SOPInstanceUID).is_valid


def test_corrected_sr_names_its_predecessor(report: StudyReport, tmp_path: Path) -> None:
    first = build_sr(report, device=DEVICE, predecessor=None)
    downgraded = dataclasses.replace(
        report, version=2, status=ReportStatus.CORRECTED,
        findings=(dataclasses.replace(report.findings[0], flagged=False, probability=0.3),
                  *report.findings[1:]))
    sr = build_sr(downgraded, device=DEVICE, predecessor=DocumentReference.of(first))
    back = write_read(sr, tmp_path / "sr2.dcm")
    (study,) = back.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == report.study_instance_uid
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == Comprehensive3DSRStorage
    parsed = read_sr(tmp_path / "sr2.dcm")
    hemorrhage = groups(parsed)["hemorrhage"]
    (presence,) = hemorrhage.get_qualitative_evaluations(name=hemorrhage.finding_type)
    assert presence.value.value == "272519000"
    assert any("replaces the earlier AI result" in t for t in texts(parsed))


def test_retracted_sr_withdraws_the_earlier_result(report: StudyReport, tmp_path: Path,
                                                   strict_read: None) -> None:
    first = build_sr(report, device=DEVICE, predecessor=None)
    for images in (report.images, ()):
        retracted = dataclasses.replace(report, version=3, status=ReportStatus.RETRACTED,
                                        images=images)
        back = write_read(build_sr(retracted, device=DEVICE,
                                   predecessor=DocumentReference.of(first)),
                          tmp_path / "sr3.dcm")
        parsed = read_sr(tmp_path / "sr3.dcm")
        assert isinstance(parsed.content, hd.sr.MeasurementReport)
        assert parsed.content.get_image_measurement_groups() == []
        statements = texts(parsed)
        assert any("earlier AI result for this study is withdrawn" in t for t in statements)
        assert DISCLAIMER in statements
        ref = back.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert build_kos(retracted, device=DEVICE) is None


def test_predecessor_must_fit_the_status(report: StudyReport) -> None:
    first = build_sr(report, device=DEVICE, predecessor=None)
    ref = DocumentReference.of(first)
    with pytest.raises(ValueError, match="FINAL"):
        build_sr(report, device=DEVICE, predecessor=ref)
    corrected = dataclasses.replace(report, version=2, status=ReportStatus.CORRECTED)
    with pytest.raises(ValueError, match="must name"):
        build_sr(corrected, device=DEVICE, predecessor=None)
    with pytest.raises(ValueError, match="another study"):
        build_sr(corrected, device=DEVICE,
                 predecessor=dataclasses.replace(ref, study_instance_uid="1.2.3"))
    with pytest.raises(ValueError, match="without findings"):
        build_sr(dataclasses.replace(report, findings=()), device=DEVICE, predecessor=None)


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK dsrdump is not installed")
def test_dcmtk_reads_every_kind_of_document(report: StudyReport, tmp_path: Path) -> None:
    """FINAL, one without any image reference (empty image library), RETRACTED, and the KOS."""
    first = build_sr(report, device=DEVICE, predecessor=None)
    bare = dataclasses.replace(report, findings=tuple(
        dataclasses.replace(f, slice_range=None, key_sop_instance_uid=None)
        for f in report.findings))
    retracted = dataclasses.replace(report, version=2, status=ReportStatus.RETRACTED)
    kos = build_kos(report, device=DEVICE)
    assert kos is not None
    documents = {
        "final.dcm": first,
        "bare.dcm": build_sr(bare, device=DEVICE, predecessor=None),
        "retracted.dcm": build_sr(retracted, device=DEVICE,
                                  predecessor=DocumentReference.of(first)),
        "ko.dcm": kos,
        "ko-rejection.dcm": build_rejection_note(retracted, DocumentReference.of(kos),
                                                 device=DEVICE),
    }
    for name, ds in documents.items():
        dcmwrite(tmp_path / name, ds, enforce_file_format=True)
        done = subprocess.run(["dsrdump", str(tmp_path / name)], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        problems = [line for line in done.stderr.splitlines() if line.startswith(("E:", "F:"))
                    or (line.startswith("W:") and "Character Set" not in line
                        and "template constraints" not in line)]
        assert problems == [], name
        if not name.startswith("ko"):
            assert '"Image Library"' in done.stdout, name
            assert read_sr(tmp_path / name).content is not None


# --- KOS --------------------------------------------------------------------------------------

def test_kos_selects_key_images_of_flagged_findings(report: StudyReport, tmp_path: Path,
                                                    strict_read: None) -> None:
    kos = build_kos(report, device=DEVICE)
    assert kos is not None
    back = write_read(kos, tmp_path / "ko.dcm")
    assert back.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert back.Modality == "KO"
    assert back.StudyInstanceUID == report.study_instance_uid
    assert back.PatientName == "Müller^Jürgen"
    title = back.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    parsed = hd.ko.KeyObjectSelectionDocument.from_dataset(back)
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for i in parsed.content[0].ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [report.images[5].sop_instance_uid]  # C-spine is flagged but not applicable
    description = [i.TextValue for i in parsed.content[0].ContentSequence
                   if i.ValueType == "TEXT"]
    assert any("AI-flagged" in d and "Not for diagnosis" in d for d in description)
    assert encode(build_kos(report, device=DEVICE) or Dataset()) == encode(kos)
    nothing = dataclasses.replace(report, findings=tuple(
        dataclasses.replace(f, flagged=False) for f in report.findings))
    assert build_kos(nothing, device=DEVICE) is None


# --- C-STORE ----------------------------------------------------------------------------------

class Scp:
    """A pynetdicom PACS in this process that answers every C-STORE with ``status``."""

    def __init__(self, status: int = 0x0000) -> None:
        self.status = status
        self.received: dict[str, Dataset] = {}
        ae = AE(ae_title="PACS")
        ae.require_called_aet = True
        for sop_class in (Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage):
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self.handle)])
        assert server is not None
        self.server = server
        self.port = int(self.server.server_address[1])

    def handle(self, event: evt.Event) -> int:
        ds = event.dataset
        self.received[str(ds.SOPInstanceUID)] = ds
        return self.status


@pytest.fixture
def scp() -> Iterator[Scp]:
    peer = Scp()
    yield peer
    peer.server.shutdown()


def built(report: StudyReport) -> list[Dataset]:
    kos = build_kos(report, device=DEVICE)
    assert kos is not None
    return [build_sr(report, device=DEVICE, predecessor=None), kos]


def test_send_stores_sr_and_kos(report: StudyReport, scp: Scp) -> None:
    datasets = built(report)
    stored = send_to_pacs(datasets, DicomDestination("127.0.0.1", scp.port))
    assert [s.sop_instance_uid for s in stored] == [ds.SOPInstanceUID for ds in datasets]
    assert {s.status for s in stored} == {0}
    assert set(scp.received) == {ds.SOPInstanceUID for ds in datasets}
    assert scp.received[datasets[0].SOPInstanceUID].VerificationFlag == "UNVERIFIED"
    assert send_to_pacs([], DicomDestination("127.0.0.1", scp.port)) == ()


def test_wrong_called_ae_is_rejected_quickly(report: StudyReport, scp: Scp) -> None:
    datasets = built(report)
    started = time.monotonic()
    with pytest.raises(PacsStoreError) as caught:
        send_to_pacs(datasets, DicomDestination("127.0.0.1", scp.port, called_ae="OTHER"))
    elapsed = time.monotonic() - started
    assert "rejected the association" in str(caught.value), str(caught.value)
    assert caught.value.retryable is False  # permanent: a configuration error
    assert elapsed < 5, f"{elapsed:.1f} s"
    assert scp.received == {}


# pynetdicom 3.0.4 calls shutdown() before close() on a socket that never connected
# (transport.AssociationSocket._shutdown_socket): shutdown raises, close is skipped, and the
# socket is closed only when collected, which pytest reports as an unraisable ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_closed_port_fails_quickly(report: StudyReport) -> None:
    datasets = built(report)
    started = time.monotonic()
    with pytest.raises(PacsStoreError) as caught:
        send_to_pacs(datasets, DicomDestination("127.0.0.1", free_port(), connect_timeout_s=2))
    assert time.monotonic() - started < 5
    assert caught.value.retryable is True
    assert caught.value.status is None


@pytest.mark.parametrize(("status", "retryable"), [(0xA700, True), (0xC000, False)])
def test_failure_status_raises(report: StudyReport, status: int, retryable: bool) -> None:
    peer = Scp(status)
    try:
        with pytest.raises(PacsStoreError, match=f"0x{status:04X}") as caught:
            send_to_pacs(built(report), DicomDestination("127.0.0.1", peer.port))
    finally:
        peer.server.shutdown()
    assert (caught.value.status, caught.value.retryable) == (status, retryable)


def test_destination_is_validated() -> None:
    with pytest.raises(ValueError, match="called_ae"):
        DicomDestination("127.0.0.1", 104, called_ae="A" * 17)
    with pytest.raises(ValueError, match="port"):
        DicomDestination("127.0.0.1", 0)
    with pytest.raises(ValueError, match="dimse_timeout_s"):
        DicomDestination("127.0.0.1", 104, dimse_timeout_s=0)
    with pytest.raises(ValueError, match="Explicit VR Little Endian"):
        send_to_pacs([_bare()], DicomDestination("127.0.0.1", 104))


def _bare() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = "1.2.3"
    return ds


# --- a real PACS ------------------------------------------------------------------------------

@pytest.mark.integration
def test_orthanc_stores_sr_and_kos_once(report: StudyReport, tmp_path: Path) -> None:
    problem = orthanc_namespace_problem()
    if problem:
        pytest.skip(problem)
    files = []
    for name, ds in zip(("sr.dcm", "ko.dcm"), built(report), strict=True):
        dcmwrite(tmp_path / name, ds, enforce_file_format=True)
        files.append(str(tmp_path / name))
    script = f"ip link set lo up && exec {sys.executable} tests/orthanc_peer.py \"$@\""
    done = subprocess.run(["unshare", "-n", "sh", "-c", script, "sh", str(tmp_path), *files],
                          cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    log = (tmp_path / "orthanc.log").read_text(errors="replace")[-3000:] \
        if (tmp_path / "orthanc.log").exists() else ""
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{log}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    sent = {uid for uid, status in summary["sent"] if status == 0}
    expected = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert sent == expected
    stored = {row["SOPInstanceUID"]: row for row in summary["after_first"]}
    assert set(stored) == expected
    assert {row["Modality"] for row in stored.values()} == {"SR", "KO"}
    assert {row["StudyInstanceUID"] for row in stored.values()} == {report.study_instance_uid}
    assert {row["SOPClassUID"] for row in stored.values()} == {
        Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage}
    # a resend is accepted and stores nothing new
    assert {uid for uid, _ in summary["resent"]} == expected
    assert summary["after_second"] == summary["after_first"]
    # A wrong called AE title fails fast.  Orthanc (DCMTK) drops the connection right after
    # its A-ASSOCIATE-RJ, and now and then pynetdicom sees the close before the rejection:
    # then the error reads "aborted" and is retryable, which only costs a later retry.
    rejected = summary["wrong_called_ae"]
    assert rejected["raised"] is True, rejected
    assert rejected["seconds"] < 10, rejected
    assert (("rejected the association" in rejected["message"] and not rejected["retryable"])
            or ("aborted" in rejected["message"] and rejected["retryable"])), rejected


def test_sr_channel_chains_corrections_to_what_the_pacs_holds(report: StudyReport,
                                                              scp: Scp) -> None:
    from triage.outputs.channels import SrChannel

    receipts: dict[int, dict[str, Any]] = {}

    def earlier(_study: str, below: int) -> dict[str, Any] | None:
        return next((receipts[v] for v in sorted(receipts, reverse=True) if v < below), None)

    channel = SrChannel(DicomDestination("127.0.0.1", scp.port), DEVICE, earlier)
    # a retraction of something this PACS never received: nothing to send
    retracted = dataclasses.replace(report, version=1, status=ReportStatus.RETRACTED)
    assert channel.send(retracted) == {"skipped": "no earlier SR in this PACS to withdraw"}
    assert scp.received == {}
    # a correction without an earlier SR in this PACS goes out as its first SR
    first = channel.send(dataclasses.replace(report, version=2, status=ReportStatus.CORRECTED))
    assert first is not None
    assert "PredecessorDocumentsSequence" not in scp.received[first["sop_instance_uid"]]
    receipts[2] = first
    second = channel.send(dataclasses.replace(report, version=3,
                                              status=ReportStatus.RETRACTED))
    assert second is not None
    stored = scp.received[second["sop_instance_uid"]]
    (study,) = stored.PredecessorDocumentsSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
        == first["sop_instance_uid"]
    # the key images sent with version 2 no longer stand: an IOCM rejection note names its KOS
    assert first["kos"]["sop_instance_uid"] in scp.received
    assert "kos" not in second  # a retraction selects no key images
    assert second["rejected_kos"] == first["kos"]["sop_instance_uid"]
    (note,) = [ds for ds in scp.received.values()
               if ds.SOPClassUID == KeyObjectSelectionDocumentStorage
               and ds.ConceptNameCodeSequence[0].CodeValue == "113001"]
    assert note.ConceptNameCodeSequence[0].CodeMeaning == "Rejected for Quality Reasons"
    (ref_study,) = note.CurrentRequestedProcedureEvidenceSequence
    (ref_series,) = ref_study.ReferencedSeriesSequence
    assert ref_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        first["kos"]["sop_instance_uid"]
    assert note.StudyInstanceUID == report.study_instance_uid
