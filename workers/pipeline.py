"""Plain analysis pipeline: claim a job, load its series, analyse, record the result.

Testable without Celery.  The analysis of this release is a placeholder that loads the
series into a volume and records its geometry; the detectors replace it in a later release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from triage.config import Settings
from triage.db import Database
from triage.jobs import Claim, JobLedger, Refusal
from triage.store import Store

logger = logging.getLogger(__name__)


@dataclass
class PipelineContext:
    """What a worker process needs, built once per process (after fork)."""

    settings: Settings
    db: Database
    store: Store
    ledger: JobLedger

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineContext:
        db = Database(settings.db_url)
        return cls(
            settings=settings,
            db=db,
            store=Store(settings.spool, db),
            ledger=JobLedger.from_settings(db, settings),
        )


class AnalysisError(Exception):
    """The series cannot be analysed (poison input): the job fails without retry."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What :func:`run_job` did with a delivery."""

    job_id: str
    ran: bool
    detail: str


Volume = np.ndarray[Any, np.dtype[np.float32]]


def load_volume(paths: Sequence[Path]) -> tuple[Volume, dict[str, Any]]:
    """Read a series into a HU volume ``(slices, rows, columns)`` plus its geometry.

    Raises
    ------
    AnalysisError
        No instances, or instances with no pixel data / inconsistent matrix sizes.
    """
    if not paths:
        raise AnalysisError("series has no instances")
    slices: list[tuple[float, np.ndarray[Any, Any]]] = []
    syntaxes: set[str] = set()
    spacing: list[float] | None = None
    for index, path in enumerate(paths):
        ds = dcmread(path)
        if "PixelData" not in ds:
            raise AnalysisError(f"instance {ds.SOPInstanceUID} has no pixel data")
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        pixels = ds.pixel_array.astype(np.float32)
        pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(
            ds.get("RescaleIntercept", 0) or 0
        )
        position = ds.get("ImagePositionPatient")
        key = float(position[2]) if position is not None and len(position) == 3 else float(index)
        if spacing is None and "PixelSpacing" in ds:
            spacing = [float(v) for v in ds.PixelSpacing]
        slices.append((key, pixels))
    shapes = {p.shape for _, p in slices}
    if len(shapes) != 1:
        raise AnalysisError(f"instances have different matrix sizes: {sorted(shapes)}")
    slices.sort(key=lambda item: item[0])
    volume = np.stack([p for _, p in slices])
    positions = [k for k, _ in slices]
    gaps = np.diff(positions) if len(positions) > 1 else np.array([])
    info = {
        "slices": len(slices),
        "shape": list(volume.shape),
        "pixel_spacing_mm": spacing,
        "slice_spacing_mm": float(np.median(np.abs(gaps))) if gaps.size else None,
        "transfer_syntaxes": sorted(syntaxes),
        "hu_min": float(volume.min()),
        "hu_max": float(volume.max()),
    }
    return volume, info


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
    """Placeholder analysis: load the series and record what was received."""
    started = time.perf_counter()
    if ctx.settings.analysis_delay_s:
        time.sleep(ctx.settings.analysis_delay_s)
    paths = ctx.store.instance_paths(claim.series_instance_uid)
    try:
        _, info = load_volume(paths)
    except AnalysisError:
        raise
    except Exception as exc:  # pixel data the codecs cannot decode, truncated files, …
        raise AnalysisError(f"cannot load the series: {type(exc).__name__}: {exc}") from exc
    load_s = time.perf_counter() - started
    return {
        "analysis": "placeholder",
        "summary": f"received {info['slices']} slices, volume shape {tuple(info['shape'])}",
        "detectors_requested": list(claim.detectors),
        "volume": info,
        "timings_s": {"load": round(load_s, 4)},
        "attempt": claim.attempt,
    }


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
    if ctx.ledger.complete(claim, result):
        logger.info("Job %s done: %s", job_id, result["summary"])
        return JobOutcome(job_id, ran=True, detail="done")
    logger.warning("Job %s attempt %d finished after losing its claim; result dropped",
                   job_id, claim.attempt)
    return JobOutcome(job_id, ran=True, detail="claim lost")
