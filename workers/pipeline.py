"""Plain analysis pipeline: claim a job, load its series, run its detectors, record the result.

Testable without Celery: :func:`run_job` is what the task calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import models
from models.detector import Detector
from triage import analyses, reports
from triage.config import Settings
from triage.db import Database
from triage.jobs import Claim, JobLedger, Refusal
from triage.store import Store
from workers.analysis import (
    DetectorPool,
    SeriesUnreadable,
    analyse_series,
    card_summary,
    resolve_device,
)

logger = logging.getLogger(__name__)


@dataclass
class PipelineContext:
    """What a worker process needs, built once per process (after fork)."""

    settings: Settings
    db: Database
    store: Store
    ledger: JobLedger
    detectors: DetectorPool

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineContext:
        db = Database(settings.db_url)

        def publish(detector: Detector) -> None:
            summary = card_summary(detector)
            analyses.publish_model(db, detector.card.name, detector.card.version, summary,
                                   time.time())

        return cls(
            settings=settings,
            db=db,
            store=Store(settings.spool, db),
            ledger=JobLedger.from_settings(db, settings),
            detectors=DetectorPool(device=resolve_device(settings.worker_device),
                                   on_load=publish),
        )


class AnalysisError(Exception):
    """The series cannot be analysed (poison input): the job fails without retry."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What :func:`run_job` did with a delivery."""

    job_id: str
    ran: bool
    detail: str


@contextmanager
def _lease_keeper(ledger: JobLedger, claim: Claim, every_s: float) -> Iterator[None]:
    """Renew the claim's lease in the background while the body runs."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every_s):
            try:
                if not ledger.renew(claim):
                    logger.warning("Job %s attempt %d lost its lease", claim.job_id, claim.attempt)
                    return
            except Exception:
                logger.exception("Could not renew the lease of job %s", claim.job_id)

    thread = threading.Thread(target=renew, name=f"lease-{claim.job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def analyse(ctx: PipelineContext, claim: Claim) -> dict[str, Any]:
    """Run the job's detectors on its series; the job result (JSON)."""
    if ctx.settings.analysis_delay_s:
        time.sleep(ctx.settings.analysis_delay_s)
    paths = ctx.store.instance_paths(claim.series_instance_uid)
    if not paths:
        raise AnalysisError("series has no stored instances")
    previews = ctx.settings.data_dir / "previews" / claim.job_id
    try:
        result = analyse_series(ctx.detectors, paths, claim.detectors, preview_dir=previews)
    except SeriesUnreadable as exc:
        raise AnalysisError(str(exc)) from exc
    except models.ModelNotFoundError as exc:  # a routing rule names a detector we lack
        raise AnalysisError(str(exc)) from exc
    result["attempt"] = claim.attempt
    result["device"] = ctx.detectors.device
    return result


def _records(claim: Claim, monitoring: list[dict[str, Any]], inputs: dict[str, Any],
             now: float) -> list[analyses.AnalysisRecord]:
    return [
        analyses.AnalysisRecord(
            job_id=claim.job_id,
            detector=m["detector"],
            model_version=m["model_version"],
            study_instance_uid=claim.study_instance_uid,
            series_instance_uid=claim.series_instance_uid,
            revision=claim.revision,
            analysed_at=now,
            outcome=analyses.Outcome(m["outcome"]),
            inputs=inputs,
            probability=m.get("probability"),
            threshold=m.get("threshold"),
            flagged=m.get("flagged"),
            ood_score=m.get("ood_score"),
            features=m.get("features"),
            timings=m.get("timings") or {},
        )
        for m in monitoring
    ]


def _record_monitoring(ctx: PipelineContext, records: list[analyses.AnalysisRecord]) -> None:
    """Store the monitoring rows of a finished job; a failure costs monitoring data only."""
    if not records:
        return
    try:
        analyses.record(ctx.db, records)
    except Exception:
        logger.exception("Could not store the monitoring record of job %s", records[0].job_id)


def _refresh_report(ctx: PipelineContext, study_uid: str) -> None:
    """Write the study's next report version (and its deliveries) if its result changed.

    A failure here loses nothing: the outputs process sweeps recently finished jobs too.
    """
    try:
        reports.refresh(ctx.db, study_uid, [d.name for d in ctx.settings.destinations],
                        severity=ctx.settings.finding_severity)
    except Exception:
        logger.exception("Could not write the report of a finished study; the outputs sweep "
                         "will retry")


def run_job(ctx: PipelineContext, job_id: str, *, owner: str | None = None) -> JobOutcome:
    """Run one delivery of ``job_id``; a no-op when the job is finished or held elsewhere.

    Raises
    ------
    triage.errors.JobNotFoundError
        The job does not exist (poison message).
    """
    claim = ctx.ledger.claim(job_id, owner=owner)
    if isinstance(claim, Refusal):
        logger.info("Job %s not run: %s", job_id, claim.reason)
        return JobOutcome(job_id, ran=False, detail=claim.reason)
    logger.info(
        "Job %s attempt %d: series %s revision %d (%s)",
        job_id, claim.attempt, claim.series_instance_uid, claim.revision,
        ", ".join(claim.detectors),
    )
    try:
        with _lease_keeper(ctx.ledger, claim, every_s=max(0.5, ctx.settings.job_lease_s / 3)):
            result = analyse(ctx, claim)
    except AnalysisError as exc:
        ctx.ledger.fail_attempt(claim, str(exc), retry=False)
        logger.warning("Job %s failed: %s", job_id, exc)
        return JobOutcome(job_id, ran=True, detail=f"failed: {exc}")
    except Exception as exc:
        state = ctx.ledger.fail_attempt(claim, f"{type(exc).__name__}: {exc}")
        logger.exception("Job %s attempt %d raised; job is now %s", job_id, claim.attempt,
                         state.value)
        return JobOutcome(job_id, ran=True, detail=f"attempt failed, job {state.value}")
    monitoring = result.pop("monitoring", [])
    records = _records(claim, monitoring, result.get("inputs") or {}, time.time())
    if ctx.ledger.complete(claim, result):
        logger.info("Job %s done: %s", job_id, result["summary"])
        _record_monitoring(ctx, records)
        _refresh_report(ctx, claim.study_instance_uid)
        return JobOutcome(job_id, ran=True, detail="done")
    logger.warning("Job %s attempt %d finished after losing its claim; result dropped",
                   job_id, claim.attempt)
    return JobOutcome(job_id, ran=True, detail="claim lost")
