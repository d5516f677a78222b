"""Thin Celery task: deserialise, call :func:`workers.pipeline.run_job`, reject poison messages.

``triage.analyze_series``
    Queue: ``stat`` or ``routine`` (chosen by the routing rules).
    Payload: ``[job_id]`` (a row of the ``jobs`` table; the row carries everything else).
    Idempotency: the job's compare-and-set claim; a redelivery of a finished, superseded or
    running job is acknowledged without work.
"""

from __future__ import annotations

import logging
from typing import Any

import pydicom.config
from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init

import models
from triage.config import load_settings
from triage.errors import JobNotFoundError
from workers.app import ANALYZE_SERIES, app
from workers.pipeline import PipelineContext, run_job

logger = logging.getLogger(__name__)


class AnalysisTask(Task):  # type: ignore[misc]
    """Holds the per-process pipeline context (Celery instantiates a task once per process)."""

    _context: PipelineContext | None = None

    @property
    def context(self) -> PipelineContext:
        if self._context is None:
            # Tolerant reading; pydicom's validation warnings would log element values (PHI).
            pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
            self._context = PipelineContext.from_settings(load_settings())
        return self._context


@app.task(name=ANALYZE_SERIES, base=AnalysisTask, bind=True)  # type: ignore[untyped-decorator]
def analyze_series(self: AnalysisTask, job_id: str) -> dict[str, Any]:
    """Analyse the series of ``job_id``."""
    try:
        outcome = run_job(self.context, job_id)
    except JobNotFoundError as exc:
        raise Reject(str(exc), requeue=False) from exc
    return {"job_id": outcome.job_id, "ran": outcome.ran, "detail": outcome.detail}


@worker_process_init.connect  # type: ignore[untyped-decorator]
def warm_up(**_: Any) -> None:
    """Load every bundled detector in the fresh pool process, so the first study is not slow.

    A detector that cannot load (missing or mismatched weights) is logged here and fails its
    jobs with the same message; the worker keeps serving the others.
    """
    context = analyze_series.context
    for card in models.available():
        try:
            context.detectors.get(card.name)
        except models.ModelError as exc:
            logger.error("Detector %s cannot be loaded: %s", card.name, exc)
