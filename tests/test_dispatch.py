"""The outbox of flags back to the site: order, backoff, dead letters, crash recovery."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from tests.dicom_factory import series_uids
from tests.test_api import _result, pipeline, stage
from tests.test_reports import _analyse
from triage import reports
from triage.config import Destination
from triage.db import Database, deliveries
from triage.dispatch import Dispatcher
from triage.outputs.channel import DeliveryError
from triage.outputs.report import ReportStatus, StudyReport


class Recorder:
    """A channel of our own interface that records what it was given (and can refuse)."""

    def __init__(self, failures: list[DeliveryError] | None = None) -> None:
        self.failures = list(failures or [])
        self.sent: list[tuple[int, ReportStatus]] = []

    def send(self, report: StudyReport) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((report.version, report.status))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _study_with_versions(db: Database, tmp_path: Path, names: list[str]) -> str:
    store, ledger, assembler = pipeline(tmp_path / "spool", db)
    stage(store, tmp_path / "s", 20)
    study_uid, _ = series_uids(sorted((tmp_path / "s").glob("*.dcm")))
    _analyse(assembler, ledger, _result(0.97, True), time.time() + 60)
    assert reports.refresh(db, study_uid, names) == 1
    assert reports.retract(db, study_uid, names, reason="test") == 2
    return study_uid


def _dest(name: str, **kw: object) -> Destination:
    return Destination(name=name, kind="hl7", port=1, backoff_s=10, **kw)  # type: ignore[arg-type]


def test_versions_go_out_in_order_with_backoff(db: Database, tmp_path: Path) -> None:
    _study_with_versions(db, tmp_path, ["ris", "pacs"])
    clock = Clock()
    flaky = Recorder([DeliveryError("connection refused", retryable=True)] * 2)
    healthy = Recorder()
    dispatcher = Dispatcher(db, tmp_path / "spool", {"ris": _dest("ris"), "pacs": _dest("pacs")},
                            {"ris": flaky, "pacs": healthy}, clock=clock)
    # a failing destination does not hold up the other one
    assert [a.outcome for a in dispatcher.run_once("ris")] == ["RETRY"]
    assert [a.outcome for a in dispatcher.run_once("pacs")] == ["SENT", "SENT"]
    assert healthy.sent == [(1, ReportStatus.FINAL), (2, ReportStatus.RETRACTED)]
    # version 2 waits for version 1; version 1 waits for its backoff (10 s, then 20 s)
    assert dispatcher.run_once("ris") == []
    clock.now += 10
    assert [a.outcome for a in dispatcher.run_once("ris")] == ["RETRY"]
    clock.now += 10
    assert dispatcher.run_once("ris") == []
    clock.now += 10
    assert [(a.version, a.outcome) for a in dispatcher.run_once("ris")] == [
        (1, "SENT"), (2, "SENT")]
    assert flaky.sent == [(1, ReportStatus.FINAL), (2, ReportStatus.RETRACTED)]


def test_refused_content_is_a_dead_letter_and_later_versions_proceed(
    db: Database, tmp_path: Path
) -> None:
    _study_with_versions(db, tmp_path, ["ris"])
    channel = Recorder([DeliveryError("AE: unknown patient", retryable=False)])
    dispatcher = Dispatcher(db, tmp_path / "spool", {"ris": _dest("ris")}, {"ris": channel})
    assert [(a.version, a.outcome) for a in dispatcher.run_once("ris")] == [
        (1, "DEAD"), (2, "SENT")]
    assert channel.sent == [(2, ReportStatus.RETRACTED)]
    with db.read() as conn:
        dead = conn.execute(sa.select(deliveries).where(deliveries.c.state == "DEAD")).one()
    assert dead.last_error == "AE: unknown patient" and dead.attempts == 1


def test_attempt_cap_and_crash_recovery(db: Database, tmp_path: Path) -> None:
    _study_with_versions(db, tmp_path, ["ris"])
    clock = Clock()
    channel = Recorder([DeliveryError("timeout", retryable=True)] * 3)
    dispatcher = Dispatcher(db, tmp_path / "spool", {"ris": _dest("ris", max_attempts=2)},
                            {"ris": channel}, clock=clock, lease_s=60)
    assert [(a.version, a.outcome) for a in dispatcher.run_once("ris")] == [(1, "RETRY")]
    clock.now += 60
    assert [(a.version, a.outcome) for a in dispatcher.run_once("ris")] == [
        (1, "DEAD"), (2, "RETRY")]
    # a dispatcher that died mid-send leaves SENDING; its lease expires and the row is resent
    with db.write() as conn:
        conn.execute(sa.update(deliveries).where(deliveries.c.version == 2)
                     .values(state="SENDING", lease_until=clock.now + 60))
    channel.failures.clear()
    assert dispatcher.run_once("ris") == []
    clock.now += 61
    assert [(a.version, a.outcome) for a in dispatcher.run_once("ris")] == [(2, "SENT")]


def test_sweep_writes_reports_a_dead_worker_missed(db: Database, tmp_path: Path) -> None:
    store, ledger, assembler = pipeline(tmp_path / "spool", db)
    stage(store, tmp_path / "s", 20)
    study_uid, _ = series_uids(sorted((tmp_path / "s").glob("*.dcm")))
    started = time.time()
    _analyse(assembler, ledger, _result(0.97, True), time.time() + 60)  # no refresh: "crash"
    dispatcher = Dispatcher(db, tmp_path / "spool", {"ris": _dest("ris")}, {"ris": Recorder()})
    assert dispatcher.sweep_reports(started - 1) == 1
    assert dispatcher.sweep_reports(started - 1) == 0
    assert reports.latest_version(db, study_uid).version == 1
