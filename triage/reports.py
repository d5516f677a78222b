"""Report versions of a study's AI result and the outbox of their deliveries.

After every analysis (and on a retraction) :func:`refresh` compares the study's current result
with its last report.  When the flags or the priority changed it writes the next version —
FINAL the first time, CORRECTED after, RETRACTED when withdrawn — and one delivery row per
configured destination, in the same transaction.  ``(study, version)`` is the primary key, so
two workers racing to write the same version cannot both succeed (compare-and-set).

:func:`build_report` turns a stored version back into the :class:`StudyReport` every channel
sends; the snapshot of findings is stored with the version, so a retry sends exactly what
was decided, even if the study changed meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from triage.db import Database, deliveries, instances, studies, study_reports
from triage.domain import DeliveryState, Priority, WorkState
from triage.outputs.report import (
    FindingResult,
    Patient,
    ReportStatus,
    SourceImage,
    StudyReport,
)
from triage.worklist import StudyItem, list_studies, priority_of

logger = logging.getLogger(__name__)

_ANALYSED = frozenset({WorkState.FLAGGED, WorkState.NO_FINDINGS})


def _not_applicable(series_item: Any, uids: list[str]) -> list[dict[str, Any]]:
    """Detectors that ran on the series but whose result must not be used (out of distribution):
    the site is told "not applicable", never left to read silence as a negative."""
    out = []
    for s in (series_item.result or {}).get("skipped") or ():
        if s.get("outcome") != "ood" or "probability" not in s:
            continue
        out.append({
            "detector": s["detector"], "finding": s.get("finding") or s["detector"],
            "probability": float(s["probability"]), "threshold": float(s["threshold"]),
            "flagged": False, "model_name": s.get("model_name") or s["detector"],
            "model_version": s.get("model_version") or "",
            "weights_sha256": s.get("weights_sha256") or "",
            "series_instance_uid": series_item.series_instance_uid,
            "revision": series_item.revision, "slice_range": None,
            "key_sop_instance_uid": None, "sop_instance_uids": uids,
            "not_applicable": str(s["reason"]),
        })
    return out


def _snapshot(item: StudyItem) -> list[dict[str, Any]]:
    out = []
    for series_item in item.series:
        uids = ((series_item.result or {}).get("volume") or {}).get("sop_instance_uids") or []
        out.extend(_not_applicable(series_item, uids))
        if series_item.state not in _ANALYSED:
            continue
        for f in series_item.findings:
            out.append({
                "detector": f.detector, "finding": f.finding, "probability": f.probability,
                "threshold": f.threshold, "flagged": f.flagged, "model_name": f.model_name,
                "model_version": f.model_version,
                "weights_sha256": next(
                    (r.get("weights_sha256", "") for r in (series_item.result or {}).get(
                        "findings", []) if r.get("detector") == f.detector), ""),
                "series_instance_uid": f.series_instance_uid,
                "revision": series_item.revision,
                "slice_range": list(f.slice_range) if f.slice_range else None,
                "key_sop_instance_uid": f.key_sop_instance_uid,
                "sop_instance_uids": uids,
            })
    return out


def _signature(priority: Priority, snapshot: list[dict[str, Any]]) -> dict[str, Any]:
    """What a new version is sent for: the priority and which detector flags which series."""
    return {
        "priority": priority.value,
        "flags": sorted(
            f"{f['detector']}@{f['series_instance_uid']}="
            f"{'na' if f.get('not_applicable') else int(f['flagged'])}"
            for f in snapshot),
    }


def latest_version(db: Database, study_uid: str) -> Any:
    with db.read() as conn:
        return conn.execute(
            sa.select(study_reports).where(study_reports.c.study_instance_uid == study_uid)
            .order_by(study_reports.c.version.desc()).limit(1)
        ).first()


def refresh(db: Database, study_uid: str, destinations: Sequence[str], *,
            severity: dict[str, int] | None = None, clock: float | None = None) -> int | None:
    """Write the next report version if the study's AI result changed; its number or None."""
    found = list_studies(db, study_uid=study_uid, severity=severity, honour_retractions=False)
    if not found:
        return None
    item = found[0]
    snapshot = _snapshot(item)
    last = latest_version(db, study_uid)
    if not snapshot and last is None:
        return None  # nothing analysed yet
    signature = _signature(item.priority, snapshot)
    if last is not None:
        # After a retraction the result comes back only when the analysis itself changed.
        standing = last.signature.get("was") if last.status == ReportStatus.RETRACTED else (
            last.signature)
        if standing == signature:
            return None
    status = ReportStatus.FINAL if last is None else ReportStatus.CORRECTED
    return _write(db, study_uid, (last.version if last else 0) + 1, status=status,
                  priority=item.priority, signature=signature, snapshot=snapshot,
                  destinations=destinations, reason=None, clock=clock)


def retract(db: Database, study_uid: str, destinations: Sequence[str], *, reason: str,
            clock: float | None = None) -> int | None:
    """Withdraw the study's AI result on every channel; the new version or None if none stood."""
    last = latest_version(db, study_uid)
    if last is None or last.status == ReportStatus.RETRACTED:
        return None
    # The priority without AI: what the worklist shows once the result is withdrawn.
    found = list_studies(db, study_uid=study_uid, honour_retractions=False)
    priority = priority_of(0, stat=bool(found) and found[0].stat)
    signature = {"priority": priority.value, "flags": [], "was": last.signature}
    # The withdrawn findings travel with the retraction: channels must name what they delete.
    return _write(db, study_uid, last.version + 1, status=ReportStatus.RETRACTED,
                  priority=priority, signature=signature, snapshot=list(last.findings),
                  destinations=destinations, reason=reason, clock=clock)


def _write(db: Database, study_uid: str, version: int, *, status: ReportStatus,
           priority: Priority, signature: dict[str, Any], snapshot: list[dict[str, Any]],
           destinations: Sequence[str], reason: str | None,
           clock: float | None) -> int | None:
    now = time.time() if clock is None else clock
    try:
        with db.write() as conn:
            conn.execute(study_reports.insert().values(
                study_instance_uid=study_uid, version=version, status=status.value,
                priority=priority.value, signature=signature, findings=snapshot,
                reason=reason, created_at=now))
            for name in destinations:
                conn.execute(deliveries.insert().values(
                    study_instance_uid=study_uid, version=version, destination=name,
                    state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now,
                    created_at=now))
    except IntegrityError:
        logger.info("Report version %d of a study was written by another process", version)
        return None
    logger.info("Report version %d (%s, %s) for %d destination(s)", version, status.value,
                priority.value, len(destinations))
    return version


def build_report(db: Database, spool: Path, study_uid: str, version: int) -> StudyReport:
    """The :class:`StudyReport` of a stored version (with patient data: never log it).

    Raises
    ------
    LookupError
        No such version.
    """
    with db.read() as conn:
        row = conn.execute(sa.select(study_reports).where(
            study_reports.c.study_instance_uid == study_uid,
            study_reports.c.version == version)).first()
        study = conn.execute(sa.select(studies).where(
            studies.c.study_instance_uid == study_uid)).first()
        if row is None or study is None:
            raise LookupError(f"no report version {version} for the study")
        series_uids = sorted({f["series_instance_uid"] for f in row.findings})
        stored = {
            r.sop_instance_uid: r for r in conn.execute(
                sa.select(instances.c.sop_instance_uid, instances.c.sop_class_uid,
                          instances.c.series_instance_uid, instances.c.path)
                .where(instances.c.series_instance_uid.in_(series_uids))).all()
        } if series_uids else {}
    images: list[SourceImage] = []
    seen: set[str] = set()
    for f in row.findings:
        if f["series_instance_uid"] in seen:
            continue
        seen.add(f["series_instance_uid"])
        for uid in f.get("sop_instance_uids") or ():
            r = stored.get(uid)
            if r is not None:
                images.append(SourceImage(r.sop_class_uid, uid, r.series_instance_uid,
                                          spool / r.path))
    findings = tuple(
        FindingResult(
            detector=f["detector"], finding=f["finding"], probability=float(f["probability"]),
            threshold=float(f["threshold"]), flagged=bool(f["flagged"]),
            model_name=f["model_name"], model_version=f["model_version"],
            weights_sha256=f.get("weights_sha256", ""),
            series_instance_uid=f["series_instance_uid"],
            slice_range=tuple(f["slice_range"]) if f.get("slice_range") else None,
            key_sop_instance_uid=f.get("key_sop_instance_uid"),
            not_applicable=f.get("not_applicable"),
        )
        for f in row.findings
    )
    return StudyReport(
        study_instance_uid=study_uid,
        accession_number=study.accession_number or "",
        study_date=study.study_date or "",
        study_time=study.study_time or "",
        study_description=study.study_description or "",
        patient=Patient(name=study.patient_name or "", id=study.patient_id or "",
                        birth_date=study.patient_birth_date or "", sex=study.patient_sex or ""),
        version=version,
        status=ReportStatus(row.status),
        priority=Priority(row.priority),
        findings=findings,
        images=tuple(images),
        created_at=dt.datetime.fromtimestamp(row.created_at, dt.UTC),
    )


def history(db: Database, study_uid: str) -> list[dict[str, Any]]:
    """Every report version of a study with the state of each of its deliveries."""
    with db.read() as conn:
        versions = conn.execute(
            sa.select(study_reports.c.version, study_reports.c.status, study_reports.c.priority,
                      study_reports.c.reason, study_reports.c.created_at)
            .where(study_reports.c.study_instance_uid == study_uid)
            .order_by(study_reports.c.version)).all()
        rows = conn.execute(
            sa.select(deliveries.c.version, deliveries.c.destination, deliveries.c.state,
                      deliveries.c.attempts, deliveries.c.last_error, deliveries.c.sent_at)
            .where(deliveries.c.study_instance_uid == study_uid)
            .order_by(deliveries.c.version, deliveries.c.destination)).all()
    by_version: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_version.setdefault(r.version, []).append(
            {"destination": r.destination, "state": r.state, "attempts": r.attempts,
             "last_error": r.last_error, "sent_at": r.sent_at})
    return [{"version": v.version, "status": v.status, "priority": v.priority,
             "reason": v.reason, "created_at": v.created_at,
             "deliveries": by_version.get(v.version, [])} for v in versions]
