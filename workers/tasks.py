"""Thin Celery task: deserialise, call :func:`workers.pipeline.run_job`, reject poison messages.

``triage.analyze_series``
    Queue: ``stat`` or ``routine`` (chosen by the routing rules).
    Payload: ``[job_id]`` (a row of the ``jobs`` table; the row carries everything else).
    Idempotency: the job's compare-and-set claim; a redelivery of a finished, superseded or
    running job is acknowledged without work.
"""

from __future__ import annotations

from typing import Any

import pydicom.config
from celery import Task
from celery.exceptions import Reject

from triage.config import load_settings
from triage.errors import JobNotFoundError
from workers.app import ANALYZE_SERIES, app
from workers.pipeline import PipelineContext, run_job


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
