"""HTTP API: health and readiness probes and the worklist (JSON, OpenAPI at /docs)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from triage import __version__
from triage.config import Settings
from triage.db import Database
from triage.domain import QueueName, WorkState
from triage.worklist import list_studies

logger = logging.getLogger(__name__)

ReadinessCheck = Callable[[], None]


class SeriesOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    instance_count: int
    revision: int
    state: WorkState
    reason: str | None = Field(description="why a series is NOT_ANALYSED or FAILED")
    ready_trigger: str | None
    queue: QueueName | None
    detectors: list[str]
    attempts: int
    result: dict[str, Any] | None
    received_at: AwareDatetime = Field(description="first instance received (UTC)")
    last_received_at: AwareDatetime


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    study_instance_uid: str
    state: WorkState
    stat: bool
    modality: str | None
    study_description: str | None
    instance_count: int
    received_at: AwareDatetime = Field(description="first instance received (UTC)")
    last_received_at: AwareDatetime
    series: list[SeriesOut]


class WorklistOut(BaseModel):
    ai_notice: str = Field(
        default="AI triage output: not for diagnosis; every study stays on the list.",
    )
    studies: list[StudyOut]


class HealthOut(BaseModel):
    status: str
    version: str


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, str]


def spool_check(settings: Settings) -> ReadinessCheck:
    """Readiness of the spool: writable and above its free-space watermark."""

    def check() -> None:
        spool = settings.spool
        if not os.access(spool, os.W_OK):
            raise RuntimeError(f"spool {spool} is not writable")
        st = os.statvfs(spool)
        free = st.f_bavail * st.f_frsize
        if free < settings.spool_min_free_mb * 2**20:
            raise RuntimeError(f"spool free space {free // 2**20} MiB below the watermark")

    return check


def create_app(
    settings: Settings,
    db: Database,
    *,
    checks: Mapping[str, ReadinessCheck] | None = None,
) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings
        Service settings.
    db
        The index database.
    checks
        Extra readiness checks by name (e.g. the broker); each raises when not ready.
    """
    app = FastAPI(
        title="CT triage daemon",
        version=__version__,
        description="Prioritized CT worklist. AI output is not for diagnosis.",
    )
    all_checks: dict[str, ReadinessCheck] = {"database": db.ping, "spool": spool_check(settings)}
    all_checks.update(checks or {})

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    def healthz() -> HealthOut:
        """Liveness: the web process answers."""
        return HealthOut(status="ok", version=__version__)

    @app.get("/readyz", response_model=ReadyOut, tags=["ops"],
             responses={503: {"model": ReadyOut}})
    def readyz() -> Any:
        """Readiness: database, broker and spool are usable (503 otherwise)."""
        results: dict[str, str] = {}
        for name, check in all_checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
        ready = all(v == "ok" for v in results.values())
        body = ReadyOut(ready=ready, checks=results)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/api/worklist", response_model=WorklistOut, tags=["worklist"])
    def worklist(limit: int = Query(default=500, ge=1, le=5000)) -> WorklistOut:
        """Studies with the state of each series, STAT first, then most recent."""
        studies = list_studies(db, limit=limit)
        return WorklistOut(studies=[StudyOut.model_validate(s) for s in studies])

    return app
