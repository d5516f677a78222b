"""Job ledger: compare-and-set claims, leases, attempt cap, outbox order (SQLite and PostgreSQL)."""

from __future__ import annotations

import socket
import subprocess

import pytest
import sqlalchemy as sa

from triage.db import Database, jobs, series
from triage.domain import JobMessage, JobState, QueueName, SeriesState
from triage.errors import JobNotFoundError
from triage.jobs import Claim, JobLedger, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(db: Database, clock: Clock) -> JobLedger:
    return JobLedger(db, max_attempts=3, lease_s=30, republish_after_s=300, retry_backoff_s=10,
                     clock=clock)


def make_job(db: Database, ledger: JobLedger, *, uid: str = "1.2.3", revision: int = 1,
             queue: QueueName = QueueName.ROUTINE) -> str:
    with db.write() as conn:
        conn.execute(sa.insert(series).values(
            series_instance_uid=uid, study_instance_uid="1.2", instance_count=1,
            revision=revision, state=SeriesState.READY.value, first_received_at=0,
            last_received_at=0,
        ))
        job_id = ledger.create(conn, series_instance_uid=uid, study_instance_uid="1.2",
                               revision=revision, detectors=["placeholder"], rules=["r"],
                               queue=queue)
    assert job_id is not None
    return job_id


def test_same_revision_gets_one_job(db: Database, ledger: JobLedger) -> None:
    make_job(db, ledger)
    with db.write() as conn:
        again = ledger.create(conn, series_instance_uid="1.2.3", study_instance_uid="1.2",
                              revision=1, detectors=["x"], rules=[], queue=QueueName.ROUTINE)
    assert again is None


def test_claim_then_complete_exactly_once(db: Database, ledger: JobLedger) -> None:
    job_id = make_job(db, ledger)
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim) and claim.attempt == 1
    redelivery = ledger.claim(job_id, owner="w:2")
    assert isinstance(redelivery, Refusal) and redelivery.state is JobState.RUNNING
    assert ledger.complete(claim, {"ok": True})
    assert not ledger.complete(claim, {"ok": "again"})
    late = ledger.claim(job_id, owner="w:3")
    assert isinstance(late, Refusal) and late.state is JobState.DONE
    view = ledger.get(job_id)
    assert (view.state, view.attempts, view.result) == (JobState.DONE, 1, {"ok": True})


def test_expired_lease_is_retaken_and_the_zombie_cannot_complete(
    db: Database, ledger: JobLedger, clock: Clock
) -> None:
    job_id = make_job(db, ledger)
    zombie = ledger.claim(job_id, owner="elsewhere:1")
    assert isinstance(zombie, Claim)
    clock.now += 31
    assert ledger.reconcile() == 1
    assert ledger.get(job_id).state is JobState.PENDING
    fresh = ledger.claim(job_id, owner="w:2")
    assert isinstance(fresh, Claim) and fresh.attempt == 2
    assert not ledger.complete(zombie, {"from": "zombie"})
    assert ledger.complete(fresh, {"from": "fresh"})
    assert ledger.get(job_id).result == {"from": "fresh"}


def test_renewed_lease_is_not_reconciled(db: Database, ledger: JobLedger, clock: Clock) -> None:
    job_id = make_job(db, ledger)
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim)
    clock.now += 20
    assert ledger.renew(claim)
    clock.now += 20
    assert ledger.reconcile() == 0
    assert ledger.get(job_id).state is JobState.RUNNING


def test_dead_local_owner_is_taken_over_at_once(db: Database, ledger: JobLedger) -> None:
    job_id = make_job(db, ledger)
    dead = subprocess.Popen(["true"])
    dead.wait()
    first = ledger.claim(job_id, owner=f"{socket.gethostname()}:{dead.pid}")
    assert isinstance(first, Claim)
    second = ledger.claim(job_id, owner="w:2")
    assert isinstance(second, Claim) and second.attempt == 2


def test_attempt_cap_fails_the_job(db: Database, ledger: JobLedger, clock: Clock) -> None:
    job_id = make_job(db, ledger)
    for attempt in (1, 2, 3):
        claim = ledger.claim(job_id, owner=f"w:{attempt}")
        assert isinstance(claim, Claim) and claim.attempt == attempt
        clock.now += 31  # the worker died holding it
        ledger.reconcile()
    view = ledger.get(job_id)
    assert view.state is JobState.FAILED
    assert view.error is not None and "attempt cap" in view.error
    refused = ledger.claim(job_id, owner="w:9")
    assert isinstance(refused, Refusal) and refused.state is JobState.FAILED


def test_failed_attempt_backs_off_then_fails_for_good(
    db: Database, ledger: JobLedger, clock: Clock
) -> None:
    job_id = make_job(db, ledger)
    published: list[str] = []
    for attempt in (1, 2, 3):
        claim = ledger.claim(job_id, owner="w:1")
        assert isinstance(claim, Claim)
        state = ledger.fail_attempt(claim, f"boom {attempt}")
        assert state is (JobState.FAILED if attempt == 3 else JobState.PENDING)
        assert ledger.publish_pending(lambda m: published.append(m.job_id)) == 0  # backoff
        clock.now += 10
        ledger.publish_pending(lambda m: published.append(m.job_id))
    assert ledger.get(job_id).error == "boom 3"
    assert len(published) == 2


def test_poison_input_fails_without_retry(db: Database, ledger: JobLedger) -> None:
    job_id = make_job(db, ledger)
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim)
    assert ledger.fail_attempt(claim, "no pixel data", retry=False) is JobState.FAILED


def test_unknown_job_is_not_found(ledger: JobLedger) -> None:
    with pytest.raises(JobNotFoundError):
        ledger.claim("no-such-job")


def test_outbox_publishes_stat_first_and_republishes_stale(
    db: Database, ledger: JobLedger, clock: Clock
) -> None:
    routine = make_job(db, ledger, uid="1.1")
    clock.now += 1
    stat = make_job(db, ledger, uid="1.2", queue=QueueName.STAT)
    sent: list[JobMessage] = []
    assert ledger.publish_pending(sent.append) == 2
    assert [m.job_id for m in sent] == [stat, routine]
    assert sent[0].queue is QueueName.STAT
    assert ledger.publish_pending(sent.append) == 0
    clock.now += 301  # nobody claimed it: the message may have been lost
    assert ledger.reconcile() == 2
    assert ledger.publish_pending(sent.append) == 2
    assert ledger.get(stat).publish_count == 2


def test_publish_failure_leaves_the_job_pending(db: Database, ledger: JobLedger) -> None:
    job_id = make_job(db, ledger)

    def down(message: JobMessage) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        ledger.publish_pending(down)
    assert ledger.get(job_id).state is JobState.PENDING


def test_job_rows_keep_the_attempt_count(db: Database, ledger: JobLedger) -> None:
    job_id = make_job(db, ledger)
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim)
    with db.read() as conn:
        attempts = conn.execute(sa.select(jobs.c.attempts).where(jobs.c.job_id == job_id))
        assert attempts.scalar() == 1


def test_claim_wins_even_if_the_publisher_marks_published_meanwhile(
    db: Database, ledger: JobLedger
) -> None:
    job_id = make_job(db, ledger)
    # The worker got the message before the publisher recorded PUBLISHED ...
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim)
    # ... and the publisher's compare-and-set then does nothing.
    with db.write() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id,
                                           jobs.c.state == JobState.PENDING.value)
                     .values(state=JobState.PUBLISHED.value))
    assert ledger.get(job_id).state is JobState.RUNNING
    # A job already marked PUBLISHED is claimable just the same.
    other = make_job(db, ledger, uid="9.9")
    with db.write() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.job_id == other)
                     .values(state=JobState.PUBLISHED.value))
    assert isinstance(ledger.claim(other, owner="w:2"), Claim)
