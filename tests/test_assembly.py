"""Assembly: completion triggers, routing, late instances (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.dicom_factory import series_uids, write_series
from triage.assembly import Assembler, Sweeper
from triage.config import DEFAULT_RULES_FILE
from triage.db import Database, jobs, series
from triage.domain import JobMessage, JobState, QueueName, ReadyTrigger, SeriesState
from triage.jobs import JobLedger
from triage.rules import load_rules
from triage.store import Store


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parts(db: Database, tmp_path: Path, clock: Clock) -> tuple[Store, Assembler, JobLedger]:
    store = Store(tmp_path / "spool", db, clock=clock)
    ledger = JobLedger(db, clock=clock)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger, stable_age_s=10,
                          release_grace_s=2, max_series_wait_s=300, clock=clock)
    return store, assembler, ledger


def put(store: Store, paths: list[Path], association_id: str = "a1") -> None:
    for path in paths:
        copy = store.incoming_dir / (path.name + ".in")
        shutil.copyfile(path, copy)
        store.ingest(copy, association_id=association_id)


def row(db: Database, uid: str) -> sa.Row[tuple[object, ...]]:
    with db.read() as conn:
        return conn.execute(sa.select(series).where(series.c.series_instance_uid == uid)).one()


def job_rows(db: Database) -> list[sa.Row[tuple[object, ...]]]:
    with db.read() as conn:
        return list(conn.execute(sa.select(jobs).order_by(jobs.c.revision)).all())


def test_quiet_timer_completes_a_series(parts: tuple[Store, Assembler, JobLedger], db: Database,
                                        clock: Clock, tmp_path: Path) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 20)
    put(store, paths)
    clock.advance(9.9)
    assert assembler.sweep() == []
    clock.advance(0.2)
    (ready,) = assembler.sweep()
    assert ready.trigger is ReadyTrigger.TIMER
    assert ready.instance_count == 20
    uid = series_uids(paths)[1]
    assert row(db, uid).state == SeriesState.READY
    (job,) = job_rows(db)
    assert job.detectors == ["hemorrhage", "stroke"]
    assert job.queue == QueueName.ROUTINE
    assert job.state == JobState.PENDING
    assert assembler.sweep() == []  # once


def test_expected_count_completes_without_waiting(
    parts: tuple[Store, Assembler, JobLedger], clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 20, expected_count=20)
    put(store, paths[:19])
    assert assembler.sweep() == []
    put(store, paths[19:])
    (ready,) = assembler.sweep()
    assert ready.trigger is ReadyTrigger.COUNT


def test_release_plus_grace_completes(
    parts: tuple[Store, Assembler, JobLedger], clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 20)
    put(store, paths, association_id="assoc-1")
    clock.advance(1)
    assert store.mark_association_released("assoc-1") == 1
    clock.advance(1.9)
    assert assembler.sweep() == []
    clock.advance(0.2)
    (ready,) = assembler.sweep()
    assert ready.trigger is ReadyTrigger.RELEASE


def test_new_instance_after_release_cancels_the_release_trigger(
    parts: tuple[Store, Assembler, JobLedger], clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 20)
    put(store, paths[:10], association_id="assoc-1")
    store.mark_association_released("assoc-1")
    clock.advance(1)
    put(store, paths[10:], association_id="assoc-2")  # the sender came back
    clock.advance(5)
    assert assembler.sweep() == []
    clock.advance(5)
    (ready,) = assembler.sweep()
    assert ready.trigger is ReadyTrigger.TIMER
    assert ready.instance_count == 20


def test_trickling_series_is_forced_after_max_wait(
    parts: tuple[Store, Assembler, JobLedger], clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 40)
    for path in paths:
        put(store, [path])
        clock.advance(8)  # always inside the quiet time
        ready = assembler.sweep()
        if ready:
            break
    assert ready[0].trigger is ReadyTrigger.MAX_WAIT


def test_late_instance_reopens_as_a_new_revision_and_old_job_is_superseded(
    parts: tuple[Store, Assembler, JobLedger], db: Database, clock: Clock, tmp_path: Path
) -> None:
    store, assembler, ledger = parts
    paths = write_series(tmp_path / "src", 21)
    put(store, paths[:20])
    clock.advance(11)
    (first,) = assembler.sweep()
    put(store, paths[20:])
    uid = series_uids(paths)[1]
    assert row(db, uid).state == SeriesState.RECEIVING
    assert row(db, uid).revision == 2
    clock.advance(11)
    (second,) = assembler.sweep()
    assert (first.revision, second.revision) == (1, 2)
    assert second.instance_count == 21
    old, new = job_rows(db)
    assert (old.revision, new.revision) == (1, 2)
    refusal = ledger.claim(old.job_id, owner="h:1")
    assert getattr(refusal, "state", None) is JobState.SUPERSEDED
    claim = ledger.claim(new.job_id, owner="h:1")
    assert getattr(claim, "revision", None) == 2


def test_unroutable_series_is_not_analysed_with_reason(
    parts: tuple[Store, Assembler, JobLedger], db: Database, clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    paths = write_series(tmp_path / "src", 20, body_part="CHEST", slice_thickness=1.0)
    put(store, paths)
    clock.advance(11)
    (ready,) = assembler.sweep()
    assert ready.job_id is None
    state = row(db, series_uids(paths)[1])
    assert state.state == SeriesState.NOT_ANALYSED
    assert "body part 'CHEST'" in state.not_analysed_reason
    assert job_rows(db) == []


def test_stat_priority_goes_to_the_stat_queue(
    parts: tuple[Store, Assembler, JobLedger], db: Database, clock: Clock, tmp_path: Path
) -> None:
    store, assembler, _ = parts
    put(store, write_series(tmp_path / "src", 20, priority="STAT"))
    clock.advance(11)
    assembler.sweep()
    (job,) = job_rows(db)
    assert job.queue == QueueName.STAT


def test_two_sweepers_complete_a_series_once(
    parts: tuple[Store, Assembler, JobLedger], db: Database, clock: Clock, tmp_path: Path
) -> None:
    store, first, ledger = parts
    second = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger, clock=clock)
    put(store, write_series(tmp_path / "src", 20))
    clock.advance(11)
    assert len(first.sweep()) + len(second.sweep()) == 1
    assert len(job_rows(db)) == 1


def test_sweeper_publishes_and_keeps_jobs_when_the_broker_is_down(
    parts: tuple[Store, Assembler, JobLedger], db: Database, clock: Clock, tmp_path: Path
) -> None:
    store, assembler, ledger = parts
    put(store, write_series(tmp_path / "src", 20))
    clock.advance(11)
    published: list[JobMessage] = []
    broker_up = False

    def publish(message: JobMessage) -> None:
        if not broker_up:
            raise ConnectionError("redis down")
        published.append(message)

    sweeper = Sweeper(assembler, ledger, publish, reconcile_interval_s=3600)
    report = sweeper.run_once()
    assert (report.ready, report.published) == (1, 0)
    (job,) = job_rows(db)
    assert job.state == JobState.PENDING
    broker_up = True
    assert sweeper.run_once().published == 1
    assert [m.job_id for m in published] == [job.job_id]
    assert job_rows(db)[0].state == JobState.PUBLISHED
