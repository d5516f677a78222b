"""Radiologists' feedback on AI findings (agree / disagree / unsure, optional comment).

Each verdict is stored with a snapshot of the AI result it judged (model version, series
revision, flag, probability), so live PPV can be computed per model version later even after
a study is re-analysed.  Feedback is append-only: a new verdict supersedes, never overwrites.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass

import sqlalchemy as sa

from triage.db import Database, feedback
from triage.worklist import FindingItem, StudyItem, list_studies


class Verdict(enum.StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"
    UNSURE = "unsure"


class FeedbackError(ValueError):
    """The feedback does not refer to an existing AI finding (HTTP 404/409)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    feedback_id: int
    study_instance_uid: str
    series_instance_uid: str
    detector: str
    model_version: str
    revision: int
    ai_flagged: bool
    ai_probability: float
    verdict: Verdict
    comment: str | None
    user: str
    created_at: float


def _finding(study: StudyItem, detector: str, series_uid: str | None) -> tuple[FindingItem, int]:
    for item in study.series:
        if series_uid is not None and item.series_instance_uid != series_uid:
            continue
        for f in item.findings:
            if f.detector == detector:
                return f, item.revision
    raise FeedbackError(f"study has no {detector} result to give feedback on", status=409)


def record_feedback(db: Database, study_uid: str, *, detector: str, verdict: Verdict,
                    user: str, comment: str | None = None,
                    series_uid: str | None = None, clock: float | None = None) -> FeedbackItem:
    """Store one verdict on the current result of ``detector`` for the study.

    Raises
    ------
    FeedbackError
        Unknown study (status 404) or no such finding on the study (409).
    """
    # The verdict judges what the model said, also when an admin has since withdrawn it.
    found = list_studies(db, study_uid=study_uid, honour_retractions=False)
    if not found:
        raise FeedbackError("unknown study", status=404)
    finding, revision = _finding(found[0], detector, series_uid)
    item = FeedbackItem(
        feedback_id=0,
        study_instance_uid=study_uid,
        series_instance_uid=finding.series_instance_uid,
        detector=detector,
        model_version=finding.model_version,
        revision=revision,
        ai_flagged=finding.flagged,
        ai_probability=finding.probability,
        verdict=verdict,
        comment=(comment or "").strip()[:2000] or None,
        user=user[:64],
        created_at=time.time() if clock is None else clock,
    )
    row = {k: getattr(item, k) for k in item.__slots__ if k != "feedback_id"}
    row["verdict"] = verdict.value
    with db.write() as conn:
        new_id = conn.execute(
            feedback.insert().values(**row).returning(feedback.c.feedback_id)
        ).scalar_one()
    return dataclasses.replace(item, feedback_id=int(new_id))


def list_feedback(db: Database, study_uid: str) -> list[FeedbackItem]:
    """Every verdict given on the study, oldest first."""
    with db.read() as conn:
        rows = conn.execute(
            sa.select(feedback).where(feedback.c.study_instance_uid == study_uid)
            .order_by(feedback.c.feedback_id)
        ).all()
    return [
        FeedbackItem(
            feedback_id=r.feedback_id, study_instance_uid=r.study_instance_uid,
            series_instance_uid=r.series_instance_uid, detector=r.detector,
            model_version=r.model_version, revision=r.revision, ai_flagged=r.ai_flagged,
            ai_probability=r.ai_probability, verdict=Verdict(r.verdict), comment=r.comment,
            user=r.user, created_at=r.created_at,
        )
        for r in rows
    ]
