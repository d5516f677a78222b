"""Job outbox and ledger: analysis jobs are rows first, broker messages second.

Every state change is a compare-and-set ``UPDATE … WHERE state = … AND attempts = …``, so
any number of listeners (publishers/reconcilers) and workers may run at once.  The broker is
only a transport: a message that is lost (kombu#305) or duplicated is repaired or ignored
here.  Life of a job::

    PENDING ──publish──► PUBLISHED ──claim──► RUNNING ──complete──► DONE
       ▲                     │ stale             │ attempt failed / lease expired
       └─────────────────────┴───────────────────┘   (or FAILED once attempts are used up)

A claim also marks the job SUPERSEDED when a late instance has reopened its series.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from triage.config import Settings
from triage.db import Database, jobs, series
from triage.domain import JobMessage, JobState, QueueName
from triage.errors import JobNotFoundError

logger = logging.getLogger(__name__)

Publish = Callable[[JobMessage], None]


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's right to run one attempt of a job."""

    job_id: str
    attempt: int
    owner: str
    series_instance_uid: str
    study_instance_uid: str
    revision: int
    detectors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a claim was refused (the message is then acknowledged and dropped)."""

    job_id: str
    state: JobState
    reason: str


@dataclass(frozen=True, slots=True)
class JobView:
    """A read-only snapshot of a job row."""

    job_id: str
    series_instance_uid: str
    revision: int
    state: JobState
    queue: QueueName
    attempts: int
    max_attempts: int
    publish_count: int
    detectors: tuple[str, ...]
    error: str | None
    result: dict[str, Any] | None


def default_owner() -> str:
    """``host:pid`` of this process, the identity recorded on a claimed job."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` is a process on this host that no longer exists."""
    if not owner or ":" not in owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobLedger:
    """Creates, publishes, claims and finishes jobs.

    Parameters
    ----------
    db
        The index database holding the ``jobs`` table.
    max_attempts
        Attempts (claims) allowed before a job is FAILED.
    lease_s
        How long a claim is valid without renewal.
    republish_after_s
        A PUBLISHED job that no worker has claimed after this is published again.
    retry_backoff_s
        Delay before a failed attempt is published again.
    clock
        Seconds since the epoch.
    """

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> JobLedger:
        """A ledger with the job settings of ``settings``."""
        return cls(
            db,
            max_attempts=settings.job_max_attempts,
            lease_s=settings.job_lease_s,
            republish_after_s=settings.job_republish_after_s,
            retry_backoff_s=settings.job_retry_backoff_s,
        )

    def __init__(
        self,
        db: Database,
        *,
        max_attempts: int = 3,
        lease_s: float = 60.0,
        republish_after_s: float = 300.0,
        retry_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self.lease_s = lease_s
        self.republish_after_s = republish_after_s
        self.retry_backoff_s = retry_backoff_s
        self.clock = clock

    # --- producer side (assembly, sweeper) ----------------------------------------------------

    def create(
        self,
        conn: sa.Connection,
        *,
        series_instance_uid: str,
        study_instance_uid: str,
        revision: int,
        detectors: Sequence[str],
        rules: Sequence[str],
        queue: QueueName,
    ) -> str | None:
        """Insert the job for one series revision inside the caller's transaction.

        Returns the new job id, or ``None`` if that revision already has a job (the job key
        ``<series UID>:<revision>`` is unique, which makes a repeated call a no-op).
        """
        job_id = str(uuid.uuid4())
        now = self.clock()
        inserted = conn.execute(
            self.db.insert_ignore(jobs).values(
                job_id=job_id,
                job_key=f"{series_instance_uid}:{revision}",
                series_instance_uid=series_instance_uid,
                study_instance_uid=study_instance_uid,
                revision=revision,
                detectors=list(detectors),
                rules=list(rules),
                queue=queue.value,
                state=JobState.PENDING.value,
                attempts=0,
                max_attempts=self.max_attempts,
                publish_count=0,
                created_at=now,
                not_before=now,
            )
        ).first()
        return job_id if inserted is not None else None

    def publish_pending(self, publish: Publish, *, limit: int = 200) -> int:
        """Hand due PENDING jobs to the broker, STAT first; returns how many were published.

        A job is marked PUBLISHED only after ``publish`` returned; if the process dies in
        between, the job is published again (a duplicate message is harmless).
        """
        now = self.clock()
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.job_id, jobs.c.queue, jobs.c.publish_count)
                .where(jobs.c.state == JobState.PENDING.value, jobs.c.not_before <= now)
                .order_by(
                    sa.case((jobs.c.queue == QueueName.STAT.value, 0), else_=1),
                    jobs.c.created_at,
                )
                .limit(limit)
            ).all()
        published = 0
        for row in rows:
            publish(JobMessage(job_id=row.job_id, queue=QueueName(row.queue)))
            with self.db.write() as conn:
                published += conn.execute(
                    sa.update(jobs)
                    .where(
                        jobs.c.job_id == row.job_id,
                        jobs.c.state == JobState.PENDING.value,
                        jobs.c.publish_count == row.publish_count,
                    )
                    .values(
                        state=JobState.PUBLISHED.value,
                        published_at=self.clock(),
                        publish_count=row.publish_count + 1,
                    )
                ).rowcount
        return published

    def reconcile(self) -> int:
        """Return stale work to PENDING: unclaimed publications and expired leases.

        Returns the number of jobs changed.  Jobs whose attempts are used up become FAILED.
        """
        now = self.clock()
        changed = 0
        with self.db.write() as conn:
            changed += conn.execute(
                sa.update(jobs)
                .where(
                    jobs.c.state == JobState.PUBLISHED.value,
                    jobs.c.published_at < now - self.republish_after_s,
                )
                .values(state=JobState.PENDING.value, not_before=now)
            ).rowcount
            expired = sa.and_(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_until < now)
            changed += conn.execute(
                sa.update(jobs)
                .where(expired, jobs.c.attempts >= jobs.c.max_attempts)
                .values(
                    state=JobState.FAILED.value,
                    finished_at=now,
                    error=sa.func.coalesce(jobs.c.error, "worker lost")
                    + " (attempt cap reached)",
                    owner=None,
                    lease_until=None,
                )
            ).rowcount
            changed += conn.execute(
                sa.update(jobs)
                .where(expired)
                .values(
                    state=JobState.PENDING.value,
                    not_before=now,
                    error="worker lost (lease expired)",
                    owner=None,
                    lease_until=None,
                )
            ).rowcount
        if changed:
            logger.warning("Reconciler returned %d stale job(s) to the queue", changed)
        return changed

    # --- worker side ------------------------------------------------------------------------

    def claim(self, job_id: str, *, owner: str | None = None) -> Claim | Refusal:
        """Start an attempt of ``job_id`` for ``owner`` (default: this process).

        Raises
        ------
        JobNotFoundError
            No such job (a poison message).
        """
        owner = owner or default_owner()
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
            if row is None:
                raise JobNotFoundError(f"no job {job_id}")
            state = JobState(row.state)
            if state in (JobState.DONE, JobState.FAILED, JobState.SUPERSEDED):
                return Refusal(job_id, state, f"job is already {state.value}")
            current = conn.execute(
                sa.select(series.c.revision).where(
                    series.c.series_instance_uid == row.series_instance_uid
                )
            ).scalar()
            if current is not None and current != row.revision:
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.job_id == job_id, jobs.c.state == row.state)
                    .values(state=JobState.SUPERSEDED.value, finished_at=now, owner=None,
                            lease_until=None)
                )
                return Refusal(job_id, JobState.SUPERSEDED,
                               f"series reopened as revision {current}")
            if (
                state is JobState.RUNNING
                and (row.lease_until or 0) >= now
                and not _owner_is_dead(row.owner)
            ):
                return Refusal(job_id, state, f"running elsewhere ({row.owner})")
            if row.attempts >= row.max_attempts:
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.job_id == job_id, jobs.c.attempts == row.attempts)
                    .values(
                        state=JobState.FAILED.value,
                        finished_at=now,
                        owner=None,
                        lease_until=None,
                        error=_clip(f"{row.error or 'worker lost'} (attempt cap reached: "
                                    f"{row.attempts} attempts)"),
                    )
                )
                return Refusal(job_id, JobState.FAILED, "attempt cap reached")
            # PENDING and PUBLISHED are equivalent here: a worker can receive the message
            # before the publisher has recorded PUBLISHED.
            waiting = (JobState.PENDING.value, JobState.PUBLISHED.value)
            same_state = (
                jobs.c.state.in_(waiting) if row.state in waiting else jobs.c.state == row.state
            )
            updated = conn.execute(
                sa.update(jobs)
                .where(jobs.c.job_id == job_id, same_state, jobs.c.attempts == row.attempts)
                .values(
                    state=JobState.RUNNING.value,
                    attempts=row.attempts + 1,
                    owner=owner,
                    started_at=now,
                    lease_until=now + self.lease_s,
                )
            ).rowcount
            if not updated:
                return Refusal(job_id, state, "lost a race with another claim")
        return Claim(
            job_id=job_id,
            attempt=row.attempts + 1,
            owner=owner,
            series_instance_uid=row.series_instance_uid,
            study_instance_uid=row.study_instance_uid,
            revision=row.revision,
            detectors=tuple(row.detectors),
        )

    def renew(self, claim: Claim) -> bool:
        """Extend the lease of a running attempt; False if the attempt lost its claim."""
        with self.db.write() as conn:
            return bool(
                conn.execute(
                    sa.update(jobs)
                    .where(*self._held(claim))
                    .values(lease_until=self.clock() + self.lease_s)
                ).rowcount
            )

    def complete(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Record the result of an attempt: True exactly once per job."""
        with self.db.write() as conn:
            return bool(
                conn.execute(
                    sa.update(jobs)
                    .where(*self._held(claim))
                    .values(
                        state=JobState.DONE.value,
                        result=result,
                        error=None,
                        finished_at=self.clock(),
                        owner=None,
                        lease_until=None,
                    )
                ).rowcount
            )

    def fail_attempt(self, claim: Claim, error: str, *, retry: bool = True) -> JobState:
        """End an attempt with an error: back to PENDING after a backoff, or FAILED.

        ``retry=False`` (poison input) fails the job at once.
        """
        now = self.clock()
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(jobs.c.attempts, jobs.c.max_attempts).where(*self._held(claim))
            ).first()
            if row is None:
                return JobState.RUNNING  # someone else holds it now; nothing to record
            final = not retry or row.attempts >= row.max_attempts
            state = JobState.FAILED if final else JobState.PENDING
            conn.execute(
                sa.update(jobs)
                .where(*self._held(claim))
                .values(
                    state=state.value,
                    error=_clip(error),
                    not_before=now + self.retry_backoff_s,
                    finished_at=now if final else None,
                    owner=None,
                    lease_until=None,
                )
            )
        return state

    def get(self, job_id: str) -> JobView:
        """The current row of ``job_id``.

        Raises
        ------
        JobNotFoundError
            No such job.
        """
        with self.db.read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return JobView(
            job_id=row.job_id,
            series_instance_uid=row.series_instance_uid,
            revision=row.revision,
            state=JobState(row.state),
            queue=QueueName(row.queue),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            publish_count=row.publish_count,
            detectors=tuple(row.detectors),
            error=row.error,
            result=row.result,
        )

    @staticmethod
    def _held(claim: Claim) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            jobs.c.job_id == claim.job_id,
            jobs.c.state == JobState.RUNNING.value,
            jobs.c.attempts == claim.attempt,
            jobs.c.owner == claim.owner,
        )


def _clip(text: str, length: int = 1024) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"
