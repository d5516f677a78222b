"""Worklist queries: studies with the analysis state of each of their series."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from triage.db import Database, jobs, series, studies
from triage.domain import JobState, QueueName, SeriesState, WorkState

# Study state is the "least finished" state of its series, in this order.
_STUDY_ORDER = (
    WorkState.RECEIVING,
    WorkState.ANALYZING,
    WorkState.QUEUED,
    WorkState.FAILED,
    WorkState.DONE,
    WorkState.NOT_ANALYSED,
)

_JOB_TO_WORK = {
    JobState.PENDING: WorkState.QUEUED,
    JobState.PUBLISHED: WorkState.QUEUED,
    JobState.RUNNING: WorkState.ANALYZING,
    JobState.DONE: WorkState.DONE,
    JobState.FAILED: WorkState.FAILED,
    JobState.SUPERSEDED: WorkState.QUEUED,
}


@dataclass(frozen=True, slots=True)
class SeriesItem:
    """One series on the worklist (no patient data)."""

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    instance_count: int
    revision: int
    state: WorkState
    reason: str | None
    ready_trigger: str | None
    queue: QueueName | None
    detectors: tuple[str, ...]
    attempts: int
    result: dict[str, Any] | None
    received_at: float
    last_received_at: float


@dataclass(frozen=True, slots=True)
class StudyItem:
    """One study on the worklist (no patient data)."""

    study_instance_uid: str
    state: WorkState
    stat: bool
    modality: str | None
    study_description: str | None
    instance_count: int
    received_at: float
    last_received_at: float
    series: tuple[SeriesItem, ...]


def _series_state(row: Any) -> tuple[WorkState, str | None]:
    state = SeriesState(row.state)
    if state is SeriesState.RECEIVING:
        return WorkState.RECEIVING, None
    if state is SeriesState.NOT_ANALYSED:
        return WorkState.NOT_ANALYSED, row.not_analysed_reason
    if row.job_state is None:
        return WorkState.QUEUED, None
    work = _JOB_TO_WORK[JobState(row.job_state)]
    return work, row.job_error if work is WorkState.FAILED else None


def list_studies(db: Database, *, limit: int = 500) -> list[StudyItem]:
    """Studies, STAT first, then most recently received; nothing is ever left out by state."""
    current_job = sa.and_(
        jobs.c.series_instance_uid == series.c.series_instance_uid,
        jobs.c.revision == series.c.revision,
    )
    with db.read() as conn:
        study_rows = conn.execute(
            sa.select(studies).order_by(studies.c.first_received_at.desc()).limit(limit)
        ).all()
        uids = [r.study_instance_uid for r in study_rows]
        series_rows = (
            conn.execute(
                sa.select(
                    series,
                    jobs.c.state.label("job_state"),
                    jobs.c.queue.label("job_queue"),
                    jobs.c.detectors.label("job_detectors"),
                    jobs.c.attempts.label("job_attempts"),
                    jobs.c.result.label("job_result"),
                    jobs.c.error.label("job_error"),
                )
                .select_from(series.outerjoin(jobs, current_job))
                .where(series.c.study_instance_uid.in_(uids))
                .order_by(series.c.series_number, series.c.first_received_at)
            ).all()
            if uids
            else []
        )
    by_study: dict[str, list[SeriesItem]] = defaultdict(list)
    for row in series_rows:
        state, reason = _series_state(row)
        by_study[row.study_instance_uid].append(
            SeriesItem(
                series_instance_uid=row.series_instance_uid,
                series_number=row.series_number,
                modality=row.modality,
                series_description=row.series_description,
                instance_count=row.instance_count,
                revision=row.revision,
                state=state,
                reason=reason,
                ready_trigger=row.ready_trigger,
                queue=QueueName(row.job_queue) if row.job_queue else None,
                detectors=tuple(row.job_detectors or ()),
                attempts=row.job_attempts or 0,
                result=row.job_result,
                received_at=row.first_received_at,
                last_received_at=row.last_received_at,
            )
        )
    items: list[StudyItem] = []
    for row in study_rows:
        members = tuple(by_study.get(row.study_instance_uid, ()))
        states = {m.state for m in members}
        state = next((s for s in _STUDY_ORDER if s in states), WorkState.RECEIVING)
        stat = any(m.queue is QueueName.STAT for m in members)
        items.append(
            StudyItem(
                study_instance_uid=row.study_instance_uid,
                state=state,
                stat=stat,
                modality=next((m.modality for m in members if m.modality), None),
                study_description=row.study_description,
                instance_count=sum(m.instance_count for m in members),
                received_at=row.first_received_at,
                last_received_at=max((m.last_received_at for m in members),
                                     default=row.first_received_at),
                series=members,
            )
        )
    items.sort(key=lambda s: (not s.stat, -s.last_received_at))
    return items
