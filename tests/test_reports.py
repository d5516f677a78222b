"""Report versions: FINAL, CORRECTED on a downgrade, RETRACTED; one delivery per destination."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from tests.dicom_factory import series_uids, write_series
from tests.test_api import _result, stage
from triage import reports
from triage.assembly import Assembler
from triage.config import DEFAULT_RULES_FILE
from triage.db import Database, deliveries
from triage.domain import Priority
from triage.jobs import Claim, JobLedger
from triage.outputs.report import ReportStatus
from triage.rules import load_rules
from triage.store import Store

DESTINATIONS = ["pacs", "ris"]


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
    store = Store(tmp_path / "spool", db)
    ledger = JobLedger(db)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)
    stage(store, tmp_path / "s", 20)
    paths = sorted((tmp_path / "s").glob("*.dcm"))
    study_uid, series_uid = series_uids(paths)
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
    store = Store(tmp_path / "spool", db)
    ledger = JobLedger(db)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)
    stage(store, tmp_path / "s", 20)
    study_uid, _ = series_uids(sorted((tmp_path / "s").glob("*.dcm")))
    _analyse(assembler, ledger, _result(0.9, True), time.time() + 60)
    # two workers computed the same change; the primary key lets one of them write it
    first = reports._write(db, study_uid, 1, status=ReportStatus.FINAL, priority=Priority.HIGH,
                           signature={}, snapshot=[], destinations=["pacs"], reason=None,
                           clock=None)
    second = reports._write(db, study_uid, 1, status=ReportStatus.FINAL,
                            priority=Priority.HIGH, signature={}, snapshot=[],
                            destinations=["pacs"], reason=None, clock=None)
    assert (first, second) == (1, None)
