"""Study assembly: decides when a series is complete, routes it, and keeps the job outbox moving.

A series in RECEIVING becomes ready on the first of these triggers:

* ``count``: its expected instance count (from the headers) is reached;
* ``release``: the association that delivered its last instance was released and nothing
  arrived for ``release_grace_s``;
* ``timer``: nothing arrived for ``stable_age_s``;
* ``max_wait``: it has been receiving for ``max_series_wait_s`` (a forced upper bound).

Ready series are routed by the rules file: those with detectors get a job row (same
transaction), the others an explicit "not analysed" reason.  All state lives in the
database, so a restart loses nothing, and every transition is a compare-and-set, so several
sweepers may run at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Row

from triage.counters import SERIES_NOT_ANALYSED, SERIES_READY, EventCounters
from triage.db import Database, series
from triage.domain import ReadyTrigger, SeriesState
from triage.jobs import JobLedger, Publish
from triage.rules import RoutingRules, SeriesFacts

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadySeries:
    """A series that a sweep declared complete."""

    series_instance_uid: str
    revision: int
    trigger: ReadyTrigger
    instance_count: int
    job_id: str | None
    not_analysed_reason: str | None


class Assembler:
    """Declares series ready and routes them.

    Parameters
    ----------
    db
        The index database.
    rules
        Validated routing rules.
    ledger
        Creates the job rows of routed series.
    stable_age_s, release_grace_s, max_series_wait_s
        The trigger thresholds (see the module docstring).
    clock
        Seconds since the epoch.
    """

    def __init__(
        self,
        db: Database,
        rules: RoutingRules,
        ledger: JobLedger,
        *,
        stable_age_s: float = 10.0,
        release_grace_s: float = 2.0,
        max_series_wait_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.rules = rules
        self.ledger = ledger
        self.stable_age_s = stable_age_s
        self.release_grace_s = release_grace_s
        self.max_series_wait_s = max_series_wait_s
        self.clock = clock

    def sweep(self, now: float | None = None) -> list[ReadySeries]:
        """Complete every series whose trigger has fired; returns what was completed."""
        now = self.clock() if now is None else now
        s = series.c
        by_count = sa.and_(s.expected_count.is_not(None), s.instance_count >= s.expected_count)
        by_release = sa.and_(
            s.association_released_at.is_not(None),
            s.association_released_at <= now - self.release_grace_s,
            s.last_received_at <= s.association_released_at,
        )
        by_timer = s.last_received_at <= now - self.stable_age_s
        by_max_wait = s.first_received_at <= now - self.max_series_wait_s
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    series,
                    by_count.label("t_count"),
                    by_release.label("t_release"),
                    by_timer.label("t_timer"),
                )
                .where(s.state == SeriesState.RECEIVING.value)
                .where(sa.or_(by_count, by_release, by_timer, by_max_wait))
                .order_by(s.first_received_at)
            ).all()
        done: list[ReadySeries] = []
        for row in rows:
            if row.t_count:
                trigger = ReadyTrigger.COUNT
            elif row.t_release:
                trigger = ReadyTrigger.RELEASE
            elif row.t_timer:
                trigger = ReadyTrigger.TIMER
            else:
                trigger = ReadyTrigger.MAX_WAIT
            ready = self._complete(row, trigger, now)
            if ready is not None:
                done.append(ready)
        return done

    def _complete(self, row: Row[tuple[object, ...]], trigger: ReadyTrigger,
                  now: float) -> ReadySeries | None:
        facts = SeriesFacts(
            modality=row.modality,
            body_part_examined=row.body_part_examined,
            study_description=row.study_description,
            series_description=row.series_description,
            image_type=tuple(v for v in (row.image_type or "").split("\\") if v),
            slice_thickness=row.slice_thickness,
            contrast_agent=row.contrast_agent,
            sop_class_uid=row.sop_class_uid,
            slices=row.instance_count,
            request_priority=row.request_priority,
        )
        route = self.rules.route(facts)
        state = SeriesState.READY if route.detectors else SeriesState.NOT_ANALYSED
        job_id: str | None = None
        with self.db.write() as conn:
            updated = conn.execute(
                sa.update(series)
                .where(
                    series.c.series_instance_uid == row.series_instance_uid,
                    series.c.state == SeriesState.RECEIVING.value,
                    series.c.revision == row.revision,
                    series.c.instance_count == row.instance_count,
                )
                .values(
                    state=state.value,
                    ready_at=now,
                    ready_trigger=trigger.value,
                    not_analysed_reason=route.reason,
                )
            ).rowcount
            if not updated:
                return None  # another sweeper won, or an instance arrived meanwhile
            if route.queue is not None:
                job_id = self.ledger.create(
                    conn,
                    series_instance_uid=row.series_instance_uid,
                    study_instance_uid=row.study_instance_uid,
                    revision=row.revision,
                    detectors=route.detectors,
                    rules=route.rules,
                    queue=route.queue,
                )
        if route.queue is not None:
            logger.info(
                "Series %s revision %d complete (%s, %d instances): %s on queue %s",
                row.series_instance_uid, row.revision, trigger.value, row.instance_count,
                ", ".join(route.detectors), route.queue.value,
            )
        else:
            logger.info(
                "Series %s revision %d complete (%s, %d instances): not analysed: %s",
                row.series_instance_uid, row.revision, trigger.value, row.instance_count,
                route.reason,
            )
        return ReadySeries(
            series_instance_uid=row.series_instance_uid,
            revision=row.revision,
            trigger=trigger,
            instance_count=row.instance_count,
            job_id=job_id,
            not_analysed_reason=route.reason,
        )


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one pass of the sweeper did."""

    ready: int
    published: int
    reconciled: int


class Sweeper:
    """Background thread: assemble, publish the outbox, reconcile stale jobs.

    Parameters
    ----------
    assembler
        Declares series ready.
    ledger
        The job outbox.
    publish
        Hands a job to the broker; may raise when the broker is down (the job then stays
        PENDING and is retried on the next pass).
    interval_s
        Time between passes when nothing wakes the thread.
    reconcile_interval_s
        Time between reconciliation passes.
    counters
        Where ready series are counted by trigger (flushed by the listener's counter flusher).
    """

    def __init__(
        self,
        assembler: Assembler,
        ledger: JobLedger,
        publish: Publish,
        *,
        interval_s: float = 0.5,
        reconcile_interval_s: float = 5.0,
        counters: EventCounters | None = None,
    ) -> None:
        self.assembler = assembler
        self.counters = counters
        self.ledger = ledger
        self.publish = publish
        self.interval_s = interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reconcile = 0.0
        self._broker_down = False

    def run_once(self) -> SweepReport:
        """One pass; exceptions from the database propagate, broker errors do not."""
        ready = self.assembler.sweep()
        if self.counters is not None:
            for item in ready:
                self.counters.inc(SERIES_READY, trigger=item.trigger.value)
                if item.job_id is None:
                    self.counters.inc(SERIES_NOT_ANALYSED, trigger=item.trigger.value)
        reconciled = 0
        if time.monotonic() - self._last_reconcile >= self.reconcile_interval_s:
            reconciled = self.ledger.reconcile()
            self._last_reconcile = time.monotonic()
        published = 0
        try:
            published = self.ledger.publish_pending(self.publish)
        except Exception as exc:
            if not self._broker_down:
                logger.error("Broker unavailable, jobs stay queued in the database: %s", exc)
            self._broker_down = True
        else:
            if self._broker_down:
                logger.info("Broker reachable again, publishing queued jobs")
            self._broker_down = False
        return SweepReport(ready=len(ready), published=published, reconciled=reconciled)

    def wake(self) -> None:
        """Run a pass soon (called after each stored instance and released association)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="assembly-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    logger.exception("Sweep failed (%d in a row); retrying", failures)
            delay = self.interval_s if failures == 0 else min(30.0, self.interval_s * 2**failures)
            self._wake.wait(delay)
            self._wake.clear()
            # Coalesce bursts of wake-ups (one per stored instance) into a pass every 100 ms.
            self._stop.wait(0.1)
