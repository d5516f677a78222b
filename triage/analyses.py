"""Monitoring records: one row per detector run on a series revision (table ``analyses``).

Written once per finished job by :mod:`workers.pipeline` (idempotent: a job's rows are
inserted with ``ON CONFLICT DO NOTHING``); read by drift, live performance and metrics.
Rows hold scores, the out-of-distribution score, input descriptions and feature vectors, never
patient identifiers (the study UID is the join key to feedback and labels and is never
exported).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from triage.db import Database, analyses, model_info


class Outcome(enum.StrEnum):
    """What a detector did with a series."""

    ANALYSED = "analysed"
    OOD = "ood"  # out of distribution: "AI not applicable", never a silent negative
    NOT_ELIGIBLE = "not_eligible"


@dataclass(frozen=True, slots=True)
class AnalysisRecord:
    """One detector's monitoring record for one job."""

    job_id: str
    detector: str
    model_version: str
    study_instance_uid: str
    series_instance_uid: str
    revision: int
    analysed_at: float
    outcome: Outcome
    inputs: dict[str, Any]
    probability: float | None = None
    threshold: float | None = None
    flagged: bool | None = None
    ood_score: float | None = None
    features: list[float] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "detector": self.detector,
            "model_version": self.model_version,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "revision": self.revision,
            "analysed_at": self.analysed_at,
            "outcome": self.outcome.value,
            "probability": self.probability,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "ood_score": self.ood_score,
            "inputs": self.inputs,
            "features": self.features,
            "timings": self.timings,
        }

    @classmethod
    def from_row(cls, row: Any) -> AnalysisRecord:
        return cls(
            job_id=row.job_id,
            detector=row.detector,
            model_version=row.model_version,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            revision=row.revision,
            analysed_at=row.analysed_at,
            outcome=Outcome(row.outcome),
            inputs=dict(row.inputs or {}),
            probability=row.probability,
            threshold=row.threshold,
            flagged=row.flagged,
            ood_score=row.ood_score,
            features=list(row.features) if row.features is not None else None,
            timings=dict(row.timings or {}),
        )


def record(db: Database, records: Iterable[AnalysisRecord]) -> int:
    """Insert ``records`` (a redelivered job's rows are ignored); the number inserted."""
    inserted = 0
    with db.write() as conn:
        for rec in records:
            got = conn.execute(db.insert_ignore(analyses).values(**rec.row())).first()
            inserted += got is not None
    return inserted


def recent(db: Database, detector: str, *, limit: int,
           outcomes: Sequence[Outcome] = (Outcome.ANALYSED,),
           model_version: str | None = None,
           with_features: bool = False) -> list[AnalysisRecord]:
    """The newest ``limit`` records of ``detector`` (of one model version if given),
    oldest first."""
    return _select(db, detector, outcomes, model_version, with_features, newest=True,
                   limit=limit)


def earliest(db: Database, detector: str, *, limit: int,
             outcomes: Sequence[Outcome] = (Outcome.ANALYSED,),
             model_version: str | None = None,
             with_features: bool = False) -> list[AnalysisRecord]:
    """The first ``limit`` records of ``detector`` (of one model version if given; e.g. a
    drift reference), oldest first."""
    return _select(db, detector, outcomes, model_version, with_features, newest=False,
                   limit=limit)


def latest_version(db: Database, detector: str,
                   outcomes: Sequence[Outcome] = (Outcome.ANALYSED,)) -> str | None:
    """The model version of ``detector``'s newest record with one of ``outcomes``."""
    query = (sa.select(analyses.c.model_version)
             .where(analyses.c.detector == detector,
                    analyses.c.outcome.in_([o.value for o in outcomes]))
             .order_by(analyses.c.analysed_at.desc(), analyses.c.job_id.desc()).limit(1))
    with db.read() as conn:
        version = conn.execute(query).scalar()
    return None if version is None else str(version)


def detectors(db: Database) -> list[str]:
    """Detectors that have at least one record."""
    with db.read() as conn:
        return sorted(conn.execute(sa.select(analyses.c.detector).distinct()).scalars())


def _select(db: Database, detector: str, outcomes: Sequence[Outcome],
            model_version: str | None, with_features: bool, *, newest: bool,
            limit: int) -> list[AnalysisRecord]:
    columns = [c for c in analyses.c if with_features or c.name != "features"]
    order = ((analyses.c.analysed_at.desc(), analyses.c.job_id.desc()) if newest
             else (analyses.c.analysed_at.asc(), analyses.c.job_id.asc()))
    query = (
        sa.select(*columns)
        .where(analyses.c.detector == detector,
               analyses.c.outcome.in_([o.value for o in outcomes]))
        .order_by(*order)
        .limit(limit)
    )
    if model_version is not None:
        query = query.where(analyses.c.model_version == model_version)
    with db.read() as conn:
        rows = list(conn.execute(query))
    if newest:
        rows.reverse()
    out = []
    for row in rows:
        mapping = dict(row._mapping)
        mapping.setdefault("features", None)
        out.append(AnalysisRecord.from_row(_Row(mapping)))
    return out


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A detector as its model card describes it (what the workers loaded)."""

    name: str
    version: str
    info: dict[str, Any]
    updated_at: float

    @property
    def validation_ppv(self) -> float | None:
        """PPV on the card's held-out validation set (at that set's prevalence)."""
        value = (self.info.get("validation") or {}).get("ppv")
        return None if value is None else float(value)


def publish_model(db: Database, name: str, version: str, info: dict[str, Any],
                  now: float) -> None:
    """Upsert the loaded detector's card summary."""
    with db.write() as conn:
        updated = conn.execute(
            model_info.update().where(model_info.c.name == name)
            .values(version=version, info=info, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(db.insert_ignore(model_info).values(
                name=name, version=version, info=info, updated_at=now))


def models_loaded(db: Database) -> dict[str, ModelInfo]:
    """Every detector a worker has published, by name."""
    with db.read() as conn:
        rows = list(conn.execute(sa.select(model_info)))
    return {r.name: ModelInfo(r.name, r.version, dict(r.info), r.updated_at) for r in rows}


class _Row:
    def __init__(self, mapping: dict[str, Any]) -> None:
        self.__dict__.update(mapping)
