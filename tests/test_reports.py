"""Report versions: FINAL, CORRECTED on a downgrade, RETRACTED; one delivery per destination."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from tests.dicom_factory import series_uids, write_series
from tests.test_api import _result, pipeline, stage
from triage import reports
from triage.assembly import Assembler
from triage.db import Database, deliveries
from triage.domain import Priority
from triage.jobs import Claim, JobLedger
from triage.outputs.dicom_header import DeviceIdentity
from triage.outputs.hl7 import build_oru
from triage.outputs.report import ReportStatus
from triage.outputs.sr import build_sr
from triage.store import Store

DESTINATIONS = ["pacs", "ris"]


@dataclass
class _Staged:
    """A 20-slice head series indexed, assembled and ready to be analysed."""

    store: Store
    ledger: JobLedger
    assembler: Assembler
    paths: list[Path]
    study_uid: str
    series_uid: str


def _staged(db: Database, tmp_path: Path) -> _Staged:
    store, ledger, assembler = pipeline(tmp_path / "spool", db)
    stage(store, tmp_path / "s", 20)
    paths = sorted((tmp_path / "s").glob("*.dcm"))
    study_uid, series_uid = series_uids(paths)
    return _Staged(store, ledger, assembler, paths, study_uid, series_uid)


def _analyse(assembler: Assembler, ledger: JobLedger, result: dict[str, object],
             now: float) -> None:
    (ready,) = [r for r in assembler.sweep(now=now) if r.job_id]
    claim = ledger.claim(str(ready.job_id), owner="w:1")
    assert isinstance(claim, Claim)
    assert ledger.complete(claim, result)


def _with_uids(result: dict[str, object], paths: list[Path]) -> dict[str, object]:
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    findings = result["findings"]
    assert isinstance(findings, list)
    findings[0]["key_sop_instance_uid"] = uids[12]
    return {**result, "volume": {"sop_instance_uids": uids}}


def test_versions_follow_the_result(db: Database, tmp_path: Path) -> None:
    rig = _staged(db, tmp_path)
    store, ledger, assembler, paths = rig.store, rig.ledger, rig.assembler, rig.paths
    study_uid, series_uid = rig.study_uid, rig.series_uid
    assert reports.refresh(db, study_uid, DESTINATIONS) is None  # nothing analysed yet

    _analyse(assembler, ledger, _with_uids(_result(0.97, True), paths), time.time() + 60)
    assert reports.refresh(db, study_uid, DESTINATIONS) == 1
    assert reports.refresh(db, study_uid, DESTINATIONS) is None  # unchanged: no new version
    report = reports.build_report(db, store.spool_dir, study_uid, 1)
    assert (report.status, report.priority) == (ReportStatus.FINAL, Priority.HIGH)
    assert (report.patient.name, report.patient.id, report.accession_number) == (
        "Test^Phantom", "PHANTOM-1", "ACC1")
    assert [f.detector for f in report.flagged] == ["hemorrhage"]
    assert len(report.images) == 20 and report.images[0].path.is_file()
    assert report.key_images()[0].sop_instance_uid == report.findings[0].key_sop_instance_uid

    # a late instance re-opens the series; the new revision finds nothing: a correction
    late = write_series(tmp_path / "late", 1, study_uid=study_uid, series_uid=series_uid)
    copy = store.incoming_dir / "late.in"
    copy.write_bytes(late[0].read_bytes())
    store.ingest(copy)
    _analyse(assembler, ledger, _result(0.12, False), time.time() + 120)
    assert reports.refresh(db, study_uid, DESTINATIONS) == 2
    second = reports.build_report(db, store.spool_dir, study_uid, 2)
    assert (second.status, second.priority, second.flagged) == (
        ReportStatus.CORRECTED, Priority.LOW, ())

    assert reports.retract(db, study_uid, DESTINATIONS, reason="wrong patient") == 3
    assert reports.retract(db, study_uid, DESTINATIONS, reason="again") is None
    assert reports.refresh(db, study_uid, DESTINATIONS) is None  # retraction sticks
    third = reports.build_report(db, store.spool_dir, study_uid, 3)
    assert third.status is ReportStatus.RETRACTED and third.priority is Priority.LOW
    assert third.findings == second.findings  # what is withdrawn, for the channels to name

    with db.read() as conn:
        rows = conn.execute(sa.select(deliveries.c.version, deliveries.c.destination,
                                      deliveries.c.state)
                            .order_by(deliveries.c.version, deliveries.c.destination)).all()
    assert [tuple(r) for r in rows] == [
        (v, d, "PENDING") for v in (1, 2, 3) for d in DESTINATIONS]


def test_racing_writers_write_a_version_once(db: Database, tmp_path: Path) -> None:
    rig = _staged(db, tmp_path)
    ledger, assembler, study_uid = rig.ledger, rig.assembler, rig.study_uid
    _analyse(assembler, ledger, _result(0.9, True), time.time() + 60)
    # two workers computed the same change; the primary key lets one of them write it
    first = reports._write(db, study_uid, 1, status=ReportStatus.FINAL, priority=Priority.HIGH,
                           signature={}, snapshot=[], destinations=["pacs"], reason=None,
                           clock=None)
    second = reports._write(db, study_uid, 1, status=ReportStatus.FINAL,
                            priority=Priority.HIGH, signature={}, snapshot=[],
                            destinations=["pacs"], reason=None, clock=None)
    assert (first, second) == (1, None)


def _ood_skip(detector: str, finding: str) -> dict[str, object]:
    """A detector that ran but whose input was out of distribution (as workers.analysis says)."""
    return {"detector": detector, "outcome": "ood", "finding": finding,
            "reason": "AI not applicable: out of distribution (OOD score 3.10 > 1.00)",
            "probability": 0.07, "threshold": 0.69, "model_name": detector,
            "model_version": "0.1.0", "weights_sha256": "ab" * 32, "ood_score": 3.1}


def test_out_of_distribution_is_reported_as_not_applicable_to_the_site(
        db: Database, tmp_path: Path) -> None:
    rig = _staged(db, tmp_path)
    store, ledger, assembler, paths = rig.store, rig.ledger, rig.assembler, rig.paths
    study_uid = rig.study_uid
    # hemorrhage analysed (negative), stroke out of distribution
    result = _with_uids(_result(0.12, False), paths)
    result["skipped"] = [_ood_skip("stroke", "ischemic stroke")]
    _analyse(assembler, ledger, result, time.time() + 60)
    assert reports.refresh(db, study_uid, DESTINATIONS) == 1
    report = reports.build_report(db, store.spool_dir, study_uid, 1)
    by_detector = {f.detector: f for f in report.findings}
    assert by_detector["hemorrhage"].not_applicable is None
    stroke = by_detector["stroke"]
    assert stroke.not_applicable is not None and "out of distribution" in stroke.not_applicable
    assert not stroke.flagged and report.flagged == ()
    oru = build_oru(report, sending_application="CT_TRIAGE", sending_facility="RAD",
                    receiving_application="RIS", receiving_facility="HOSP", control_id="C1")
    assert "NOT APPLICABLE: AI not applicable: out of distribution" in oru
    sr = build_sr(report, device=DeviceIdentity(), predecessor=None)
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence
             if "TextValue" in item]
    assert any("ischemic stroke: not applicable" in t for t in texts), texts
    assert reports.refresh(db, study_uid, DESTINATIONS) is None  # unchanged


def test_wholly_out_of_distribution_study_still_tells_the_site(
        db: Database, tmp_path: Path) -> None:
    rig = _staged(db, tmp_path)
    store, ledger, assembler, paths = rig.store, rig.ledger, rig.assembler, rig.paths
    study_uid = rig.study_uid
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    skips = [_ood_skip("hemorrhage", "intracranial hemorrhage"),
             _ood_skip("stroke", "ischemic stroke")]
    _analyse(assembler, ledger, {
        "summary": "not analysed", "findings": [], "skipped": skips,
        "not_analysed": "; ".join(f"{s['detector']}: {s['reason']}" for s in skips),
        "volume": {"sop_instance_uids": uids}}, time.time() + 60)
    assert reports.refresh(db, study_uid, DESTINATIONS) == 1
    report = reports.build_report(db, store.spool_dir, study_uid, 1)
    assert {f.detector for f in report.findings} == {"hemorrhage", "stroke"}
    assert all(f.not_applicable for f in report.findings)
    assert report.priority is Priority.LOW and len(report.images) == 20
