"""Prometheus exporter of `triage web`: every metric is read from the index DB and Redis.

One collector serves the whole installation, whichever processes or hosts the listener,
workers and outputs run on: the index DB already holds a durable row for every event that
matters (jobs with their timings, analyses, deliveries, feedback, loaded models), and the
events that leave no row are counted by their process and flushed to the ``counters`` table
(:mod:`triage.counters`).  Counters derived from rows survive restarts and never double count;
histograms over finished jobs are built once from the whole table and then only from new rows
(a high-water mark with a look-back window for late commits and clock skew between hosts).

Names follow the Prometheus conventions: prefix ``triage_``, base units, ``_total`` and
``_seconds`` suffixes, and bounded labels only (model, queue, state, reason, destination,
trigger, verdict, flag, stratum values): never a UID, an AE title or patient data.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection

from triage import counters as event_counters
from triage.config import Settings
from triage.db import Database, analyses, deliveries, feedback, jobs, model_info, series
from triage.db import counters as counters_table
from triage.domain import DeliveryState, JobState, QueueName, ReadyTrigger
from triage.drift import DriftReport, DriftState
from triage.drift import evaluate as evaluate_drift
from triage.performance import live_performance

logger = logging.getLogger(__name__)

PREFIX = "triage_"

LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TASK_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Last instance received → result on the worklist; up to 20 minutes.
#: Report version written → accepted by the destination (retries and backoff included).
OUTPUT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
TIME_TO_FLAG_BUCKETS = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 420.0,
                        600.0, 900.0, 1200.0)

#: Finished rows committed up to this long after a later row (concurrent workers, clock skew
#: between hosts) are still picked up by the incremental scans.
LOOK_BACK_S = 600.0

#: kombu's Redis transport keeps one list per queue and priority step (``queue`` for 0).
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)

_EVENT_FAMILIES: dict[str, tuple[str, str, dict[str, tuple[str, ...]]]] = {
    # name: (help, label, values exported as 0 before the first event)
    event_counters.INSTANCES_RECEIVED: (
        "DICOM instances received, by outcome (stored, or duplicate of a stored one)",
        "outcome", {"outcome": ("stored", "duplicate")}),
    event_counters.STORE_ERRORS: (
        "C-STORE requests refused, by the DIMSE status answered (0xA700: out of resources)",
        "reason", {"reason": ("0xA700", "0xC210", "0xC211", "0xC212", "0xC213")}),
    event_counters.ASSOCIATIONS: (
        "DICOM associations, by event (accepted, released, aborted, rejected)",
        "event", {"event": ("accepted", "released", "aborted", "rejected")}),
    event_counters.SERIES_READY: (
        "Series declared complete, by trigger",
        "trigger", {"trigger": tuple(t.value for t in ReadyTrigger)}),
    event_counters.SERIES_NOT_ANALYSED: (
        "Series declared complete that no routing rule sends to a detector, by trigger",
        "trigger", {"trigger": tuple(t.value for t in ReadyTrigger)}),
}


@dataclass
class _HistogramSeries:
    counts: list[int]
    total: float = 0.0
    n: int = 0


@dataclass
class _Histogram:
    """A histogram accumulated from rows (one observation per row), exported as a family."""

    name: str
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...]
    series: dict[tuple[str, ...], _HistogramSeries] = field(default_factory=dict)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return
        item = self.series.get(labels)
        if item is None:
            item = self.series[labels] = _HistogramSeries([0] * (len(self.buckets) + 1))
        item.counts[bisect.bisect_left(self.buckets, value)] += 1
        item.total += value
        item.n += 1

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(PREFIX + self.name, self.documentation,
                                       labels=list(self.labelnames))
        for labels, item in sorted(self.series.items()):
            cumulative, running = [], 0
            for bound, count in zip(self.buckets, item.counts, strict=False):
                running += count
                cumulative.append((_bound(bound), float(running)))
            cumulative.append(("+Inf", float(item.n)))
            family.add_metric(list(labels), cumulative, item.total)
        return family


def _bound(value: float) -> str:
    return repr(float(value))


class _Incremental:
    """Rows newer than a high-water mark, each taken once (by key) within a look-back window."""

    def __init__(self, look_back_s: float) -> None:
        self.look_back_s = look_back_s
        self.high_water = -math.inf
        self._recent: dict[Any, float] = {}

    def since(self) -> float:
        return self.high_water - self.look_back_s

    def take(self, key: Any, at: float) -> bool:
        """True the first time ``key`` is seen (rows older than the window are never offered)."""
        if key in self._recent:
            return False
        self._recent[key] = at
        self.high_water = max(self.high_water, at)
        return True

    def prune(self) -> None:
        cutoff = self.since()
        self._recent = {k: v for k, v in self._recent.items() if v > cutoff}


#: A source of extra families (drift, live performance), given the settings and the database.
FamilySource = Callable[[Settings, Database], Iterable[Metric]]


class TriageCollector(Collector):
    """The exporter: reads the index DB and Redis on every scrape.

    Parameters
    ----------
    settings
        Service settings (broker URL, drift cache time).
    db
        The index database.
    extra
        Further family sources (e.g. drift and live performance); an error in one of them is
        logged and only its families are missing from the scrape.
    clock
        Seconds since the epoch.
    """

    def __init__(self, settings: Settings, db: Database, *,
                 extra: Sequence[FamilySource] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.extra = tuple(extra)
        self.clock = clock
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._jobs = _Incremental(LOOK_BACK_S)
        self._analyses = _Incremental(LOOK_BACK_S)
        self._jobs_finished: dict[tuple[str, str], int] = {}
        self._analysed: dict[tuple[str, str], int] = {}
        self._findings: dict[tuple[str, str], int] = {}
        self._load = _Histogram("task_load_duration_seconds",
                                "Time to read a series into a volume, per job", ("queue",),
                                LOAD_BUCKETS)
        self._inference = _Histogram("task_inference_duration_seconds",
                                     "Time one detector took on one series", ("model",),
                                     INFERENCE_BUCKETS)
        self._analysis = _Histogram("task_analysis_duration_seconds",
                                    "Load plus every detector of a job (the job's 'total')",
                                    ("queue",), TASK_BUCKETS)
        self._run = _Histogram("task_duration_seconds",
                               "Claim to completion of a job's last attempt (outputs included)",
                               ("queue",), TASK_BUCKETS)
        self._sent = _Incremental(LOOK_BACK_S)
        self._delivery = _Histogram(
            "output_delivery_seconds",
            "Report version written to accepted by the destination (retries included)",
            ("destination",), OUTPUT_BUCKETS)
        self._time_to_flag = _Histogram(
            "time_to_flag_seconds",
            "Last instance of a series received to its result on the worklist (flagged or not)",
            ("queue",), TIME_TO_FLAG_BUCKETS)

    def describe(self) -> Iterable[Metric]:
        # Registration must not query the database (it may be down when the app starts).
        return []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        now = self.clock()
        db_up = GaugeMetricFamily(PREFIX + "database_up",
                                  "1 when the index database answered this scrape")
        try:
            with self.db.read() as conn:
                families = [
                    *self._event_counters(conn),
                    *self._queues(conn, now),
                    *self._finished_jobs(conn),
                    *self._analysis_rows(conn),
                    *self._deliveries(conn),
                    *self._feedback(conn),
                    self._model_info(conn),
                ]
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("Metrics: index database unavailable: %s", exc)
            db_up.add_metric([], 0.0)
            yield db_up
        else:
            db_up.add_metric([], 1.0)
            yield db_up
            yield from families
        yield from self._broker()
        for source in self.extra:
            try:
                yield from list(source(self.settings, self.db))
            except Exception:
                logger.exception("Metrics: %s failed", getattr(source, "__name__", source))

    # --- sections ------------------------------------------------------------------------

    def _event_counters(self, conn: Connection) -> list[Metric]:
        rows = conn.execute(sa.select(counters_table.c.name, counters_table.c.labels,
                                      counters_table.c.value))
        values: dict[str, dict[str, float]] = {name: {} for name in _EVENT_FAMILIES}
        for row in rows:
            if row.name not in _EVENT_FAMILIES:
                continue
            label = _EVENT_FAMILIES[row.name][1]
            labels = event_counters.parse_labels(row.labels)
            if set(labels) != {label}:
                continue
            values[row.name][labels[label]] = float(row.value)
        families: list[Metric] = []
        for name, (documentation, label, initial) in _EVENT_FAMILIES.items():
            family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
            found = values[name]
            for value in initial[label]:
                found.setdefault(value, 0.0)
            for value, total in sorted(found.items()):
                family.add_metric([value], total)
            families.append(family)
        return families

    def _queues(self, conn: Connection, now: float) -> list[Metric]:
        by_state = GaugeMetricFamily(PREFIX + "jobs", "Jobs not yet finished, by queue and state",
                                     labels=["queue", "state"])
        depth = GaugeMetricFamily(PREFIX + "queue_depth",
                                  "Jobs waiting for a worker (PENDING or PUBLISHED), by queue",
                                  labels=["queue"])
        age = GaugeMetricFamily(PREFIX + "queue_oldest_age_seconds",
                                "Age of the oldest job waiting for a worker (0 when none)",
                                labels=["queue"])
        active = (JobState.PENDING.value, JobState.PUBLISHED.value, JobState.RUNNING.value)
        rows = conn.execute(
            sa.select(jobs.c.queue, jobs.c.state, sa.func.count(), sa.func.min(jobs.c.created_at))
            .where(jobs.c.state.in_(active))
            .group_by(jobs.c.queue, jobs.c.state)
        )
        counts = {(q.value, s): 0 for q in QueueName for s in active}
        oldest: dict[str, float] = {}
        for queue, state, count, created in rows:
            counts[(queue, state)] = int(count)
            if state != JobState.RUNNING.value and created is not None:
                oldest[queue] = min(oldest.get(queue, math.inf), float(created))
        waiting: dict[str, int] = {}
        for (queue, state), count in sorted(counts.items()):
            by_state.add_metric([queue, state], float(count))
            if state != JobState.RUNNING.value:
                waiting[queue] = waiting.get(queue, 0) + count
        for queue, count in sorted(waiting.items()):
            depth.add_metric([queue], float(count))
            age.add_metric([queue], max(0.0, now - oldest[queue]) if queue in oldest else 0.0)
        return [by_state, depth, age]

    def _finished_jobs(self, conn: Connection) -> list[Metric]:
        scan = self._jobs
        query = (
            sa.select(jobs.c.job_id, jobs.c.queue, jobs.c.state, jobs.c.detectors,
                      jobs.c.started_at, jobs.c.finished_at,
                      jobs.c.result["timings_s"].label("timings"),
                      series.c.last_received_at)
            .select_from(jobs.outerjoin(series, sa.and_(
                series.c.series_instance_uid == jobs.c.series_instance_uid,
                series.c.revision == jobs.c.revision)))
            .where(jobs.c.state.in_((JobState.DONE.value, JobState.FAILED.value,
                                     JobState.SUPERSEDED.value)),
                   jobs.c.finished_at.is_not(None))
        )
        if math.isfinite(scan.high_water):
            query = query.where(jobs.c.finished_at > scan.since())
        for row in conn.execute(query):
            if not scan.take(row.job_id, row.finished_at):
                continue
            key = (row.queue, row.state)
            self._jobs_finished[key] = self._jobs_finished.get(key, 0) + 1
            if row.state != JobState.DONE.value:
                continue
            queue = (row.queue,)
            if row.started_at is not None:
                self._run.observe(queue, row.finished_at - row.started_at)
            if row.last_received_at is not None:
                self._time_to_flag.observe(queue, row.finished_at - row.last_received_at)
            timings = row.timings if isinstance(row.timings, dict) else {}
            if isinstance(timings.get("load"), int | float):
                self._load.observe(queue, float(timings["load"]))
            if isinstance(timings.get("total"), int | float):
                self._analysis.observe(queue, float(timings["total"]))
            for model in row.detectors or ():
                if isinstance(timings.get(model), int | float):
                    self._inference.observe((str(model),), float(timings[model]))
        scan.prune()
        finished = CounterMetricFamily(
            PREFIX + "jobs_finished", "Jobs finished, by queue and final state "
            "(DONE, FAILED, or SUPERSEDED by a newer revision of the series)",
            labels=["queue", "state"])
        for (queue_name, state), count in sorted(self._jobs_finished.items()):
            finished.add_metric([queue_name, state], float(count))
        return [finished, self._load.family(), self._inference.family(),
                self._analysis.family(), self._run.family(), self._time_to_flag.family()]

    def _analysis_rows(self, conn: Connection) -> list[Metric]:
        scan = self._analyses
        query = sa.select(analyses.c.job_id, analyses.c.detector, analyses.c.outcome,
                          analyses.c.flagged, analyses.c.analysed_at)
        if math.isfinite(scan.high_water):
            query = query.where(analyses.c.analysed_at > scan.since())
        for row in conn.execute(query):
            if not scan.take((row.job_id, row.detector), row.analysed_at):
                continue
            key = (row.detector, row.outcome)
            self._analysed[key] = self._analysed.get(key, 0) + 1
            if row.outcome == "analysed" and row.flagged is not None:
                flag_key = (row.detector, "true" if row.flagged else "false")
                self._findings[flag_key] = self._findings.get(flag_key, 0) + 1
        scan.prune()
        runs = CounterMetricFamily(
            PREFIX + "analyses", "Detector runs, by model and outcome (analysed; ood: out of "
            "distribution, shown as 'AI not applicable'; not_eligible)",
            labels=["model", "outcome"])
        for (model, outcome), count in sorted(self._analysed.items()):
            runs.add_metric([model, outcome], float(count))
        findings = CounterMetricFamily(
            PREFIX + "findings", "Analysed detector runs, by model and flag (true: flagged)",
            labels=["model", "flag"])
        for (model, flag), count in sorted(self._findings.items()):
            findings.add_metric([model, flag], float(count))
        return [runs, findings]

    def _deliveries(self, conn: Connection) -> list[Metric]:
        rows = conn.execute(
            sa.select(deliveries.c.destination, deliveries.c.state, sa.func.count(),
                      sa.func.sum(deliveries.c.attempts))
            .group_by(deliveries.c.destination, deliveries.c.state))
        done = CounterMetricFamily(
            PREFIX + "outputs", "Report versions delivered (sent) or given up (dead), "
            "by destination", labels=["destination", "state"])
        failed = CounterMetricFamily(
            PREFIX + "output_failures", "Failed delivery attempts, by destination",
            labels=["destination"])
        pending = GaugeMetricFamily(
            PREFIX + "outputs_pending", "Deliveries waiting or in flight, by destination",
            labels=["destination"])
        scan = self._sent
        query = (sa.select(deliveries.c.delivery_id, deliveries.c.destination,
                           deliveries.c.created_at, deliveries.c.sent_at)
                 .where(deliveries.c.state == DeliveryState.SENT.value,
                        deliveries.c.sent_at.is_not(None)))
        if math.isfinite(scan.high_water):
            query = query.where(deliveries.c.sent_at > scan.since())
        for row in conn.execute(query):
            if scan.take(row.delivery_id, row.sent_at):
                self._delivery.observe((row.destination,), row.sent_at - row.created_at)
        scan.prune()
        by_destination: dict[str, dict[str, tuple[int, int]]] = {}
        for destination, state, count, attempts in rows:
            by_destination.setdefault(destination, {})[state] = (int(count), int(attempts or 0))
        for destination, states in sorted(by_destination.items()):
            sent = states.get(DeliveryState.SENT, (0, 0))
            dead = states.get(DeliveryState.DEAD, (0, 0))
            waiting = states.get(DeliveryState.PENDING, (0, 0))
            sending = states.get(DeliveryState.SENDING, (0, 0))
            done.add_metric([destination, "sent"], float(sent[0]))
            done.add_metric([destination, "dead"], float(dead[0]))
            # Each SENT row had one good attempt; a SENDING row has one in flight.
            attempts_failed = (sent[1] - sent[0]) + dead[1] + waiting[1] + (sending[1] - sending[0])
            failed.add_metric([destination], float(max(0, attempts_failed)))
            pending.add_metric([destination], float(waiting[0] + sending[0]))
        return [done, failed, pending, self._delivery.family()]

    def _feedback(self, conn: Connection) -> list[Metric]:
        family = CounterMetricFamily(PREFIX + "feedback",
                                     "Radiologists' verdicts on AI findings, by model and verdict",
                                     labels=["model", "verdict"])
        rows = conn.execute(sa.select(feedback.c.detector, feedback.c.verdict, sa.func.count())
                            .group_by(feedback.c.detector, feedback.c.verdict))
        for model, verdict, count in sorted(rows, key=lambda r: (r[0], r[1])):
            family.add_metric([model, verdict], float(count))
        return [family]

    def _model_info(self, conn: Connection) -> Metric:
        family = GaugeMetricFamily(PREFIX + "model_info",
                                   "The detector versions the workers loaded (always 1)",
                                   labels=["model", "version"])
        for name, version in conn.execute(sa.select(model_info.c.name, model_info.c.version)
                                          .order_by(model_info.c.name)):
            family.add_metric([name, version], 1.0)
        return family

    def _broker(self) -> list[Metric]:
        up = GaugeMetricFamily(PREFIX + "broker_up", "1 when Redis (the broker) answered")
        length = GaugeMetricFamily(
            PREFIX + "broker_queue_length",
            "Messages in the broker's queue lists (all priority steps), by queue",
            labels=["queue"])
        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.settings.broker_url, socket_timeout=1.0,
                                                   socket_connect_timeout=1.0)
            pipe = self._redis.pipeline(transaction=False)
            queues = [q.value for q in QueueName]
            for queue in queues:
                pipe.llen(queue)
                for step in _KOMBU_PRIORITY_STEPS:
                    pipe.llen(f"{queue}{_KOMBU_PRIORITY_SEP}{step}")
            replies = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.debug("Metrics: broker unavailable: %s", exc)
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        per_queue = len(_KOMBU_PRIORITY_STEPS) + 1
        for i, queue in enumerate(queues):
            length.add_metric([queue], float(sum(replies[i * per_queue:(i + 1) * per_queue])))
        return [up, length]


# --- drift (triage.drift) -----------------------------------------------------------------


class DriftFamilies:
    """Drift gauges from :func:`triage.drift.evaluate`, re-evaluated at most every
    ``settings.drift_cache_s`` (the bootstrap calibration is cached by the drift module)."""

    __name__ = "drift"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._report: DriftReport | None = None
        self._at = -math.inf

    def report(self, settings: Settings, db: Database) -> DriftReport:
        with self._lock:
            if self._report is None or self.clock() - self._at >= settings.drift_cache_s:
                self._report = evaluate_drift(db, settings)
                self._at = self.clock()
            return self._report

    def __call__(self, settings: Settings, db: Database) -> list[Metric]:
        return drift_families(self.report(settings, db))


def drift_families(report: DriftReport) -> list[Metric]:
    """Gauges of a drift report: each test's statistic, threshold and alarm, the flag rate
    of the reference and of the last completed and current UTC days, and each alarm."""
    test_labels = ["model", "version", "test", "kind"]
    statistic = GaugeMetricFamily(
        PREFIX + "drift_statistic", "Drift statistic of the recent window against the "
        "reference (kind: psi, ks, chi2; test: input:<key>, score:probability, ood:rate, "
        "ood:score)", labels=test_labels)
    threshold = GaugeMetricFamily(
        PREFIX + "drift_threshold", "Alarm threshold of the drift statistic, calibrated by "
        "bootstrap on the reference", labels=test_labels)
    alarm = GaugeMetricFamily(PREFIX + "drift_alarm",
                              "1 when the drift statistic exceeds its threshold",
                              labels=test_labels)
    state = GaugeMetricFamily(
        PREFIX + "drift_state", "Drift monitoring state of a model version (1 for the current "
        "one: collecting_reference, insufficient_window, ok, drift)",
        labels=["model", "version", "state"])
    records = GaugeMetricFamily(PREFIX + "drift_records",
                                "Records in the drift reference and window",
                                labels=["model", "version", "window"])
    rate = GaugeMetricFamily(
        PREFIX + "flag_rate", "Share of analysed studies flagged: the reference, the last "
        "completed UTC day and the current one", labels=["model", "version", "window"])
    rate_low = GaugeMetricFamily(PREFIX + "flag_rate_lower", "Lower Wilson 95 % bound of the "
                                 "flag rate", labels=["model", "version", "window"])
    rate_high = GaugeMetricFamily(PREFIX + "flag_rate_upper", "Upper Wilson 95 % bound of the "
                                  "flag rate", labels=["model", "version", "window"])
    rate_alarm = GaugeMetricFamily(
        PREFIX + "drift_flag_rate_alarm", "1 when the last completed day's flag rate interval "
        "does not overlap the reference's", labels=["model", "version"])
    evaluated = GaugeMetricFamily(PREFIX + "drift_evaluated_timestamp_seconds",
                                  "When the drift report was computed")
    evaluated.add_metric([], report.evaluated_at)
    for item in report.detectors:
        model, version = item.detector, item.model_version
        for each in DriftState:
            state.add_metric([model, version, each.value], float(item.state is each))
        records.add_metric([model, version, "reference"], float(item.reference_size))
        records.add_metric([model, version, "recent"], float(item.window_size))
        for test in item.tests:
            labels = [model, version, test.name, test.kind.value]
            statistic.add_metric(labels, test.statistic)
            threshold.add_metric(labels, test.threshold)
            alarm.add_metric(labels, 1.0 if test.alarm else 0.0)
        flag = item.flag_rate
        if flag is None:
            continue
        rate_alarm.add_metric([model, version], 1.0 if flag.alarm else 0.0)
        windows = [("reference", flag.reference_rate, flag.reference_ci_low,
                    flag.reference_ci_high)]
        windows += [("last_day" if day.complete else "today", day.rate, day.ci_low,
                     day.ci_high) for day in flag.days]
        for window, value, low, high in windows:
            labels = [model, version, window]
            if value is not None:
                rate.add_metric(labels, value)
            if low is not None and high is not None:
                rate_low.add_metric(labels, low)
                rate_high.add_metric(labels, high)
    return [statistic, threshold, alarm, state, records, rate, rate_low, rate_high, rate_alarm,
            evaluated]


# --- live performance (triage.performance) --------------------------------------------------

_PERF_LABELS = ["model", "version", "stratum", "value"]


def performance_families(settings: Settings, db: Database) -> list[Metric]:
    """PPV (radiologists' verdicts) and sensitivity/specificity (follow-up labels) per model
    version, overall and per stratum (age band, sex, vendor, slice-thickness band), with
    Wilson 95 % bounds, and the PPV alert of :func:`triage.performance.live_performance`."""
    def gauge(name: str, documentation: str, labels: list[str] = _PERF_LABELS,
              ) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)

    ppv = gauge("ppv", "Live PPV from radiologists' verdicts on flagged findings")
    ppv_low = gauge("ppv_lower", "Lower Wilson 95 % bound of the live PPV")
    ppv_high = gauge("ppv_upper", "Upper Wilson 95 % bound of the live PPV")
    verdicts = gauge("ppv_verdicts", "Verdicts (agree + disagree) behind the live PPV")
    alert = gauge("ppv_alert", "1 when the PPV lower bound is more than the margin below the "
                  "model card's validation PPV (with enough verdicts)")
    sens = gauge("sensitivity", "Live sensitivity from follow-up labels")
    sens_low = gauge("sensitivity_lower", "Lower Wilson 95 % bound of the live sensitivity")
    sens_high = gauge("sensitivity_upper", "Upper Wilson 95 % bound of the live sensitivity")
    spec = gauge("specificity", "Live specificity from follow-up labels")
    card = gauge("model_card_ppv", "Validation PPV on the model card (synthetic validation "
                 "set prevalence)", ["model", "version"])
    expected = gauge("ppv_expected", "PPV the card's sensitivity and specificity give at the "
                     "prevalence this population's 90-day flag rate implies")
    cards: dict[tuple[str, str], float] = {}
    for row in live_performance(db, settings):
        labels = [row.detector, row.model_version, row.stratum, _bounded(row.value)]
        alert.add_metric(labels, 1.0 if row.alert else 0.0)
        verdicts.add_metric(labels, float(row.n_verdicts))
        if row.ppv is not None and row.ppv_ci is not None:
            ppv.add_metric(labels, row.ppv)
            ppv_low.add_metric(labels, row.ppv_ci[0])
            ppv_high.add_metric(labels, row.ppv_ci[1])
        if row.sensitivity is not None and row.sensitivity_ci is not None:
            sens.add_metric(labels, row.sensitivity)
            sens_low.add_metric(labels, row.sensitivity_ci[0])
            sens_high.add_metric(labels, row.sensitivity_ci[1])
        if row.specificity is not None:
            spec.add_metric(labels, row.specificity)
        if row.expected_ppv is not None:
            expected.add_metric(labels, row.expected_ppv)
        if row.card_ppv is not None:
            cards[(row.detector, row.model_version)] = row.card_ppv
    for (model, version), value in sorted(cards.items()):
        card.add_metric([model, version], value)
    return [ppv, ppv_low, ppv_high, verdicts, alert, sens, sens_low, sens_high, spec, card,
            expected]


def _bounded(value: str) -> str:
    """A stratum value as a label: short, printable (vendor names come from the headers)."""
    clean = "".join(c if c.isprintable() else "_" for c in value.strip())
    return clean[:32] or "unknown"


def build_registry(settings: Settings, db: Database, *,
                   extra: Sequence[FamilySource] | None = None) -> CollectorRegistry:
    """A registry for one web app: the triage collector and this process's own metrics.

    ``extra`` defaults to the drift and live-performance families.
    """
    if extra is None:
        extra = (DriftFamilies(), performance_families)
    registry = CollectorRegistry()
    registry.register(TriageCollector(settings, db, extra=extra))
    ProcessCollector(registry=registry)
    return registry
