"""The outputs process: sends each report version to each destination, in order, with backoff.

Deliveries are rows of the ``deliveries`` table (written with the report version, see
:mod:`triage.reports`).  Each destination has its own thread, so a dead PACS never delays the
HL7 feed.  A delivery is claimed with a compare-and-set (PENDING → SENDING with a lease); a
process that dies mid-send leaves a lease that expires and the row is sent again (channels are
idempotent per version).  Versions of one study go out in order: version 2 waits while version
1 is still pending for that destination.  After ``max_attempts`` a row becomes DEAD, visible in
the API and metrics, and later versions proceed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from triage import reports
from triage.config import Destination
from triage.db import Database, deliveries, jobs
from triage.domain import DeliveryState, JobState
from triage.outputs.channel import Channel, DeliveryError

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 900.0


@dataclass(frozen=True, slots=True)
class Attempt:
    delivery_id: int
    destination: str
    version: int
    outcome: str  # DeliveryState.SENT, DeliveryState.DEAD or "RETRY"


def last_receipt(db: Database, destination: str, study_uid: str,
                 below_version: int) -> dict[str, Any] | None:
    """The receipt of the newest version below ``below_version`` sent to ``destination``."""
    with db.read() as conn:
        receipt = conn.execute(
            sa.select(deliveries.c.receipt)
            .where(deliveries.c.destination == destination,
                   deliveries.c.study_instance_uid == study_uid,
                   deliveries.c.version < below_version,
                   deliveries.c.state == DeliveryState.SENT.value,
                   deliveries.c.receipt.is_not(None))
            .order_by(deliveries.c.version.desc()).limit(1)
        ).scalar()
    return dict(receipt) if isinstance(receipt, dict) else None


class Dispatcher:
    """Delivery loop over the outbox; :meth:`run_once` is the unit the tests drive."""

    def __init__(self, db: Database, spool: Path, destinations: Mapping[str, Destination],
                 channels: Mapping[str, Channel], *, lease_s: float = 300.0,
                 severity: Mapping[str, int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.severity = dict(severity) if severity is not None else None  # as the workers
        self.spool = spool
        self.destinations = dict(destinations)
        self.channels = dict(channels)
        self.lease_s = lease_s
        self.clock = clock

    def run_once(self, name: str, *, limit: int = 20) -> list[Attempt]:
        """Send the due deliveries of destination ``name``; what happened to each."""
        now = self.clock()
        self._recover(name, now)
        earlier = deliveries.alias("earlier")
        blocked = sa.exists().where(
            earlier.c.destination == deliveries.c.destination,
            earlier.c.study_instance_uid == deliveries.c.study_instance_uid,
            earlier.c.version < deliveries.c.version,
            earlier.c.state.in_((DeliveryState.PENDING.value, DeliveryState.SENDING.value)),
        )
        attempts: list[Attempt] = []
        while len(attempts) < limit:
            with self.db.read() as conn:
                due = conn.execute(
                    sa.select(deliveries.c.delivery_id)
                    .where(deliveries.c.destination == name,
                           deliveries.c.state == DeliveryState.PENDING.value,
                           deliveries.c.next_attempt_at <= now, ~blocked)
                    .order_by(deliveries.c.created_at, deliveries.c.version)
                    .limit(limit - len(attempts))
                ).scalars().all()
            batch = [a for delivery_id in due if (a := self._attempt(name, delivery_id))]
            attempts += batch
            # a finished version (sent or given up) may unblock the next one of its study
            if not any(a.outcome in (DeliveryState.SENT, DeliveryState.DEAD) for a in batch):
                break
        return attempts

    def _recover(self, name: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.destination == name,
                       deliveries.c.state == DeliveryState.SENDING.value,
                       deliveries.c.lease_until < now)
                .values(state=DeliveryState.PENDING.value, lease_until=None))

    def _attempt(self, name: str, delivery_id: int) -> Attempt | None:
        now = self.clock()
        with self.db.write() as conn:
            claimed = conn.execute(
                sa.update(deliveries)
                .where(deliveries.c.delivery_id == delivery_id,
                       deliveries.c.state == DeliveryState.PENDING.value)
                .values(state=DeliveryState.SENDING.value, lease_until=now + self.lease_s,
                        attempts=deliveries.c.attempts + 1)
                .returning(deliveries.c.study_instance_uid, deliveries.c.version,
                           deliveries.c.attempts)
            ).first()
        if claimed is None:
            return None  # another dispatcher took it
        study_uid, version, attempts = claimed
        destination = self.destinations[name]
        try:
            report = reports.build_report(self.db, self.spool, study_uid, version)
            receipt = self.channels[name].send(report)
        except DeliveryError as exc:
            return self._failed(delivery_id, name, version, attempts, str(exc),
                                retryable=exc.retryable, destination=destination)
        except Exception as exc:  # a bug or an unreadable file: retried, then DEAD
            logger.exception("Delivery %d to %s raised", delivery_id, name)
            return self._failed(delivery_id, name, version, attempts,
                                f"{type(exc).__name__}: {exc}", retryable=True,
                                destination=destination)
        with self.db.write() as conn:
            conn.execute(sa.update(deliveries).where(deliveries.c.delivery_id == delivery_id)
                         .values(state=DeliveryState.SENT.value, sent_at=self.clock(),
                                 lease_until=None, last_error=None, receipt=receipt))
        logger.info("Delivered report version %d to %s (attempt %d)", version, name, attempts)
        return Attempt(delivery_id, name, version, DeliveryState.SENT)

    def _failed(self, delivery_id: int, name: str, version: int, attempts: int, error: str, *,
                retryable: bool, destination: Destination) -> Attempt:
        dead = not retryable or attempts >= destination.max_attempts
        delay = min(MAX_BACKOFF_S, destination.backoff_s * 2 ** (attempts - 1))
        with self.db.write() as conn:
            conn.execute(
                sa.update(deliveries).where(deliveries.c.delivery_id == delivery_id)
                .values(state=(DeliveryState.DEAD if dead else DeliveryState.PENDING).value,
                        lease_until=None, last_error=error[:1024],
                        next_attempt_at=self.clock() + delay))
        if dead:
            logger.error("Delivery of report version %d to %s given up after %d attempt(s): %s",
                         version, name, attempts, error)
            return Attempt(delivery_id, name, version, DeliveryState.DEAD)
        logger.warning("Delivery of report version %d to %s failed (attempt %d, next in %.0f s):"
                       " %s", version, name, attempts, delay, error)
        return Attempt(delivery_id, name, version, "RETRY")

    def sweep_reports(self, since: float) -> int:
        """Write report versions for studies whose jobs finished since ``since``.

        The worker writes them itself after each job; this sweep covers a worker that died
        between finishing a job and writing its report.
        """
        with self.db.read() as conn:
            studies = conn.execute(
                sa.select(jobs.c.study_instance_uid).distinct()
                .where(jobs.c.state == JobState.DONE.value, jobs.c.finished_at >= since)
            ).scalars().all()
        written = 0
        for study_uid in studies:
            if reports.refresh(self.db, study_uid, list(self.destinations),
                               severity=self.severity) is not None:
                written += 1
        return written

    def serve(self, stop: threading.Event, *, interval_s: float = 1.0) -> None:
        """One thread per destination plus the report sweep, until ``stop`` is set."""

        def loop(name: str) -> None:
            while not stop.is_set():
                try:
                    sent = self.run_once(name)
                except Exception:
                    logger.exception("Dispatcher for %s failed; retrying", name)
                    sent = []
                if not sent:
                    stop.wait(interval_s)

        threads = [threading.Thread(target=loop, args=(n,), name=f"dispatch-{n}", daemon=True)
                   for n in self.destinations]
        for thread in threads:
            thread.start()
        since = self.clock() - 3600
        while not stop.wait(10 * interval_s):
            started = self.clock()
            try:
                self.sweep_reports(since - 60)
                since = started
            except Exception:
                logger.exception("Report sweep failed; retrying")
        for thread in threads:
            thread.join(30)
