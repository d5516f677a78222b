"""Worklist queries: studies with the analysis state, findings and priority of each.

The order is the product: flagged critical findings first (by configured severity, then
score), then studies ordered STAT, then the longest-waiting.  Nothing is ever left out, but
reported studies (marked on the page, or their UPS workitem COMPLETED by a reading
workstation) sort below every open one: they no longer wait.

An admin's retraction (the study's latest report version is RETRACTED, see
:mod:`triage.reports`) withdraws the AI result here too, as on every channel: the findings
stay visible but marked withdrawn and no longer flag, the analysed series read
NOT_ANALYSED with the retraction's reason, and the priority is what it would be without AI,
the one the site's PACS, RIS and UPS were sent.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from triage.db import Database, jobs, series, studies, study_reads, study_reports, ups_workitems
from triage.domain import JobState, Priority, QueueName, Reading, SeriesState, WorkState
from triage.errors import TriageError
from triage.outputs.report import ReportStatus
from triage.outputs.ups_types import ProcedureStepState

# A study shows the first of its series' states in this order: a flag wins (the study must
# rise to the top while other series are still running), then work still in progress.
_STUDY_ORDER = (
    WorkState.FLAGGED,
    WorkState.RECEIVING,
    WorkState.ANALYZING,
    WorkState.QUEUED,
    WorkState.FAILED,
    WorkState.NO_FINDINGS,
    WorkState.NOT_ANALYSED,
)

#: Default severity of each detector's finding when flagged (higher sorts first).
DEFAULT_SEVERITY = {"hemorrhage": 3, "stroke": 3, "cspine_fracture": 2}

_JOB_TO_WORK = {
    JobState.PENDING: WorkState.QUEUED,
    JobState.PUBLISHED: WorkState.QUEUED,
    JobState.RUNNING: WorkState.ANALYZING,
    JobState.DONE: WorkState.NO_FINDINGS,  # refined from the job's result
    JobState.FAILED: WorkState.FAILED,
    JobState.SUPERSEDED: WorkState.QUEUED,
}


@dataclass(frozen=True, slots=True)
class FindingItem:
    """One detector's result on one series (AI output, not for diagnosis)."""

    detector: str
    finding: str
    probability: float
    threshold: float
    flagged: bool
    severity: int  # configured severity when flagged, 0 otherwise
    model_name: str
    model_version: str
    series_instance_uid: str
    slice_range: tuple[int, int] | None  # 0-based, inferior → superior
    key_slice: int | None
    slices: int | None
    key_sop_instance_uid: str | None
    preview: str | None  # URL path of the key-slice PNG
    withdrawn: bool = False  # an admin retracted the study's AI result: it does not flag


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
    job_id: str | None = None
    findings: tuple[FindingItem, ...] = ()


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
    findings: tuple[FindingItem, ...] = ()  # flagged first, then by probability
    priority: Priority = Priority.LOW
    severity: int = 0  # highest severity among flagged findings
    reading: Reading = Reading.OPEN
    reported_by: str | None = None  # a user name, or "UPS performer"
    reported_at: float | None = None


def _series_state(row: Any, findings: tuple[FindingItem, ...]) -> tuple[WorkState, str | None]:
    state = SeriesState(row.state)
    if state is SeriesState.RECEIVING:
        return WorkState.RECEIVING, None
    if state is SeriesState.NOT_ANALYSED:
        return WorkState.NOT_ANALYSED, row.not_analysed_reason
    if row.job_state is None:
        return WorkState.QUEUED, None
    work = _JOB_TO_WORK[JobState(row.job_state)]
    if work is WorkState.NO_FINDINGS:
        result = row.job_result or {}
        if result.get("not_analysed"):
            return WorkState.NOT_ANALYSED, str(result["not_analysed"])
        # Detectors that did not run beside those that did (e.g. "AI not applicable: out
        # of distribution") are named, so their silence is never read as a negative.
        partial = "; ".join(f"{s['detector']}: {s['reason']}"
                            for s in result.get("skipped") or () if s.get("reason")) or None
        if any(f.flagged for f in findings):
            return WorkState.FLAGGED, partial
        return WorkState.NO_FINDINGS, partial
    return work, row.job_error if work is WorkState.FAILED else None


def _findings(row: Any, study_uid: str, severity: dict[str, int]) -> tuple[FindingItem, ...]:
    if row.job_state != JobState.DONE.value or not isinstance(row.job_result, dict):
        return ()
    items = []
    for f in row.job_result.get("findings") or ():
        flagged = bool(f.get("flagged"))
        sr = f.get("slice_range")
        preview = (f"/api/studies/{study_uid}/previews/{row.job_id}/{f['preview']}"
                   if f.get("preview") else None)
        items.append(FindingItem(
            detector=str(f["detector"]),
            finding=str(f.get("finding") or f["detector"]),
            probability=float(f["probability"]),
            threshold=float(f["threshold"]),
            flagged=flagged,
            severity=severity.get(str(f["detector"]), 1) if flagged else 0,
            model_name=str(f.get("model_name") or f["detector"]),
            model_version=str(f.get("model_version") or ""),
            series_instance_uid=row.series_instance_uid,
            slice_range=(int(sr[0]), int(sr[1])) if sr else None,
            key_slice=f.get("key_slice"),
            slices=f.get("slices"),
            key_sop_instance_uid=f.get("key_sop_instance_uid"),
            preview=preview,
        ))
    return tuple(items)


def _withdrawn(member: SeriesItem, reason: str) -> SeriesItem:
    """``member`` with its AI result withdrawn (only analysed series carry one)."""
    if member.state not in (WorkState.FLAGGED, WorkState.NO_FINDINGS):
        return member
    return replace(member, state=WorkState.NOT_ANALYSED,
                   reason=f"AI result withdrawn by an admin: {reason}",
                   findings=tuple(replace(f, flagged=False, severity=0, withdrawn=True)
                                  for f in member.findings))


def _retractions(conn: Any, uids: list[str]) -> dict[str, str]:
    """Study UID → reason, for the studies whose latest report version is a retraction."""
    if not uids:
        return {}
    latest = (sa.select(study_reports.c.study_instance_uid,
                        sa.func.max(study_reports.c.version).label("version"))
              .where(study_reports.c.study_instance_uid.in_(uids))
              .group_by(study_reports.c.study_instance_uid).subquery())
    rows = conn.execute(
        sa.select(study_reports.c.study_instance_uid, study_reports.c.reason)
        .join(latest, sa.and_(study_reports.c.study_instance_uid == latest.c.study_instance_uid,
                              study_reports.c.version == latest.c.version))
        .where(study_reports.c.status == ReportStatus.RETRACTED.value)).all()
    return {r.study_instance_uid: r.reason or "no reason given" for r in rows}


def _reading(row: Any) -> dict[str, Any]:
    """The reading state of a study row joined with its page mark and UPS workitem."""
    if row.reported_at is not None:
        return {"reading": Reading.REPORTED, "reported_by": row.reported_by,
                "reported_at": row.reported_at}
    if row.ups_state == ProcedureStepState.COMPLETED:
        return {"reading": Reading.REPORTED, "reported_by": "UPS performer",
                "reported_at": row.ups_updated_at}
    if row.ups_state == ProcedureStepState.IN_PROGRESS:
        return {"reading": Reading.IN_PROGRESS}
    return {}


def priority_of(severity: int, stat: bool) -> Priority:
    """UPS-style priority of a study: a flag → HIGH, an ordered STAT → MEDIUM, else LOW."""
    if severity > 0:
        return Priority.HIGH
    return Priority.MEDIUM if stat else Priority.LOW


def sort_key(item: StudyItem) -> tuple[bool, int, float, bool, float]:
    """Open before reported; then flagged by severity and score, then STAT, then the longest
    waiting first."""
    top = max((f.probability for f in item.findings if f.flagged), default=0.0)
    return (item.reading is Reading.REPORTED, -item.severity, -top, not item.stat,
            item.received_at)


class ReadingError(TriageError):
    """A reading mark that cannot be changed here (``status`` is the HTTP status)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def mark_reported(db: Database, study_uid: str, *, user: str, reported: bool,
                  clock: float | None = None) -> None:
    """Mark the study reported by ``user`` (kept if already marked), or reopen it.

    Raises
    ------
    ReadingError
        Unknown study (404), or reopening a study whose UPS workitem a reading workstation
        COMPLETED (409: the workstation's record stands).
    """
    with db.write() as conn:
        if conn.execute(sa.select(studies.c.study_instance_uid)
                        .where(studies.c.study_instance_uid == study_uid)).first() is None:
            raise ReadingError("unknown study", status=404)
        if reported:
            conn.execute(db.insert_ignore(study_reads).values(
                study_instance_uid=study_uid, reported_by=user[:64],
                reported_at=time.time() if clock is None else clock))
            return
        ups_state = conn.execute(sa.select(ups_workitems.c.state).where(
            ups_workitems.c.study_instance_uid == study_uid)).scalar()
        if ups_state == ProcedureStepState.COMPLETED:
            raise ReadingError("a reading workstation completed this study's UPS workitem; "
                               "it cannot be reopened here", status=409)
        conn.execute(study_reads.delete().where(study_reads.c.study_instance_uid == study_uid))


def list_studies(db: Database, *, limit: int = 500,
                 severity: dict[str, int] | None = None,
                 study_uid: str | None = None,
                 honour_retractions: bool = True) -> list[StudyItem]:
    """Studies in worklist order (:func:`sort_key`); nothing is ever left out by state.

    ``limit`` bounds the studies considered: the open ones first, each group newest first;
    ``study_uid`` selects one study.
    ``honour_retractions=False`` gives the analysis as it stands, retracted or not (what
    :mod:`triage.reports` compares with the versions it sent).
    """
    severity = DEFAULT_SEVERITY if severity is None else severity
    current_job = sa.and_(
        jobs.c.series_instance_uid == series.c.series_instance_uid,
        jobs.c.revision == series.c.revision,
    )
    reported = sa.or_(study_reads.c.reported_at.is_not(None),
                      ups_workitems.c.state == ProcedureStepState.COMPLETED.value)
    with db.read() as conn:
        # Open studies first, so the limit never hides one behind newer reported ones.
        query = (
            sa.select(studies, study_reads.c.reported_by, study_reads.c.reported_at,
                      ups_workitems.c.state.label("ups_state"),
                      ups_workitems.c.updated_at.label("ups_updated_at"))
            .select_from(studies.outerjoin(
                study_reads, study_reads.c.study_instance_uid == studies.c.study_instance_uid)
                .outerjoin(ups_workitems,
                           ups_workitems.c.study_instance_uid == studies.c.study_instance_uid))
            .order_by(sa.case((reported, 1), else_=0), studies.c.first_received_at.desc())
            .limit(limit)
        )
        if study_uid is not None:
            query = query.where(studies.c.study_instance_uid == study_uid)
        study_rows = conn.execute(query).all()
        uids = [r.study_instance_uid for r in study_rows]
        series_rows = (
            conn.execute(
                sa.select(
                    series,
                    jobs.c.job_id.label("job_id"),
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
        retracted = _retractions(conn, uids) if honour_retractions else {}
    by_study: dict[str, list[SeriesItem]] = defaultdict(list)
    for row in series_rows:
        found = _findings(row, row.study_instance_uid, severity)
        state, reason = _series_state(row, found)
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
                job_id=row.job_id,
                findings=found,
            )
        )
    items: list[StudyItem] = []
    for row in study_rows:
        members = tuple(by_study.get(row.study_instance_uid, ()))
        if row.study_instance_uid in retracted:
            members = tuple(_withdrawn(m, retracted[row.study_instance_uid]) for m in members)
        states = {m.state for m in members}
        state = next((s for s in _STUDY_ORDER if s in states), WorkState.RECEIVING)
        stat = any(m.queue is QueueName.STAT for m in members) or (
            (row.request_priority or "").upper() == "STAT")
        study_findings = sorted((f for m in members for f in m.findings),
                                key=lambda f: (not f.flagged, -f.severity, -f.probability))
        top = max((f.severity for f in study_findings), default=0)
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
                findings=tuple(study_findings),
                priority=priority_of(top, stat),
                severity=top,
                **_reading(row),
            )
        )
    items.sort(key=sort_key)
    return items
