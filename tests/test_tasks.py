"""Celery against the real Redis with real worker processes (no eager mode)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom import dcmread

import models
from tests.conftest import Proc, wait_for, worker_argv
from tests.dicom_factory import write_series
from tests.synthetic_studies import write_head_study
from triage import analyses
from triage.assembly import Assembler
from triage.config import DEFAULT_RULES_FILE, Settings, load_settings
from triage.db import Database, jobs
from triage.domain import JobMessage, JobState, QueueName, WorkState
from triage.jobs import JobLedger, JobView
from triage.rules import RoutingRules, load_rules
from triage.store import Store
from triage.worklist import list_studies
from workers.app import ANALYZE_SERIES, create_app

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    settings: Settings
    env: dict[str, str]
    db: Database
    store: Store
    ledger: JobLedger
    publish: Callable[[JobMessage], None]
    tmp: Path

    def stage(self, count: int = 20, *, rules: RoutingRules | None = None,
              **series_kwargs: Any) -> str:
        """Store a series, complete it and return its job id (not yet published)."""
        paths = write_series(self.tmp / f"src-{time.monotonic_ns()}", count, **series_kwargs)
        return self.stage_paths(paths, rules=rules)

    def stage_paths(self, paths: list[Path], *, rules: RoutingRules | None = None) -> str:
        for path in paths:
            copy = self.store.incoming_dir / (path.name + ".in")
            shutil.copyfile(path, copy)
            self.store.ingest(copy)
        assembler = Assembler(self.db, rules or load_rules(DEFAULT_RULES_FILE), self.ledger)
        (ready,) = assembler.sweep(now=time.time() + 3600)
        assert ready.job_id is not None
        return ready.job_id

    def job(self, job_id: str) -> JobView:
        return self.ledger.get(job_id)

    def wait_state(self, job_id: str, state: JobState, timeout: float = 60) -> JobView:
        return wait_for(lambda: (v := self.job(job_id)).state is state and v, timeout,
                        what=f"job {job_id} {state.value}")


@pytest.fixture
def rig(tmp_path: Path, broker_url: str, database_url: str) -> Iterator[Rig]:
    values = {
        "data_dir": str(tmp_path / "data"),
        "broker_url": broker_url,
        "database_url": database_url,
        "job_lease_s": "3",
        "task_soft_time_limit_s": "20",
        "task_time_limit_s": "30",
        "broker_visibility_timeout_s": "40",
        "job_retry_backoff_s": "0",
    }
    settings = load_settings(**values)
    env = settings.to_env()
    db = Database(settings.db_url)
    db.create_schema()
    store = Store(settings.spool, db)
    ledger = JobLedger.from_settings(db, settings)
    app = create_app(settings)

    def publish(message: JobMessage) -> None:
        app.send_task(ANALYZE_SERIES, args=[message.job_id], queue=message.queue.value)

    yield Rig(settings, env, db, store, ledger, publish, tmp_path)
    db.dispose()


def start_worker(spawn: Callable[..., Proc], rig: Rig, **extra_env: str) -> Proc:
    proc = spawn("worker", worker_argv(), {**rig.env, **extra_env})
    proc.wait_output("ready.", 60)
    return proc


def test_job_runs_the_detectors_in_a_real_worker(spawn: Callable[..., Proc], rig: Rig) -> None:
    paths = write_head_study(rig.tmp / "bleed", hemorrhage=True)
    job_id = rig.stage_paths(paths)
    start_worker(spawn, rig)
    rig.ledger.publish_pending(rig.publish)
    view = rig.wait_state(job_id, JobState.DONE, 120)
    assert view.attempts == 1
    assert view.result is not None
    findings = {f["detector"]: f for f in view.result["findings"]}
    assert set(findings) == {"hemorrhage", "stroke"}  # what the default rules route
    bleed = findings["hemorrhage"]
    assert bleed["flagged"] and bleed["probability"] >= bleed["threshold"]
    bundled = models.card("hemorrhage")
    assert bleed["model_version"] == bundled.version and len(bleed["weights_sha256"]) == 64
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    assert bleed["key_sop_instance_uid"] in uids
    assert "features" not in bleed  # kept in the monitoring record, not in the result
    preview = rig.settings.data_dir / "previews" / job_id / bleed["preview"]
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert view.result["volume"]["slices"] == len(paths)
    assert "monitoring" not in view.result
    # the monitoring record: one row per detector, scores, OOD score, inputs, features
    records = {r.detector: r for r in monitoring_records(rig, ("hemorrhage", "stroke"),
                                                         with_features=True)}
    assert set(records) == {"hemorrhage", "stroke"}
    rec = records["hemorrhage"]
    assert rec.job_id == job_id and rec.outcome is analyses.Outcome.ANALYSED
    assert rec.flagged and rec.probability == pytest.approx(bleed["probability"], abs=1e-3)
    assert rec.ood_score is not None and rec.ood_score <= 1.0
    assert rec.features is not None and len(rec.features) == 256
    assert rec.inputs["manufacturer"] and rec.inputs["slice_thickness_mm"] > 0
    assert rec.inputs["age_band"] in {"<40", "40-64", ">=65"}
    assert "PatientName" not in str(rec.inputs)
    cards = analyses.models_loaded(rig.db)
    assert {"hemorrhage", "stroke"} <= set(cards)
    assert cards["hemorrhage"].version == bundled.version
    assert 0.5 < (cards["hemorrhage"].validation_ppv or 0) <= 1.0
    # a duplicate delivery is a no-op
    rig.publish(JobMessage(job_id, QueueName.ROUTINE))
    time.sleep(2)
    assert rig.job(job_id).attempts == 1
    assert len(analyses.recent(rig.db, "hemorrhage", limit=5)) == 1


def monitoring_records(rig: Rig, detectors: tuple[str, ...], **options: Any
                       ) -> list[analyses.AnalysisRecord]:
    """The monitoring rows of ``detectors``, once each has one: the worker writes them just
    after it marks the job done (a failure there costs monitoring data, not the result)."""
    def rows() -> list[analyses.AnalysisRecord]:
        found = [r for name in detectors
                 for r in analyses.recent(rig.db, name, limit=5, **options)]
        return found if {r.detector for r in found} == set(detectors) else []

    return list(wait_for(rows, 30, what=f"monitoring rows of {', '.join(detectors)}"))


def test_out_of_distribution_study_says_ai_not_applicable(spawn: Callable[..., Proc],
                                                          rig: Rig) -> None:
    """A scanner whose HU calibration is off by +150 HU: no silent negative."""
    paths = write_head_study(rig.tmp / "bright", hemorrhage=False)
    for path in paths:
        ds = dcmread(path)
        ds.RescaleIntercept = float(ds.RescaleIntercept) + 150
        ds.save_as(path)
    job_id = rig.stage_paths(paths)
    start_worker(spawn, rig)
    rig.ledger.publish_pending(rig.publish)
    view = rig.wait_state(job_id, JobState.DONE, 120)
    assert view.result is not None and view.result["findings"] == []
    assert "hemorrhage: AI not applicable: out of distribution" in view.result["not_analysed"]
    assert "stroke: AI not applicable: out of distribution" in view.result["not_analysed"]
    (study,) = list_studies(rig.db)
    assert study.state is WorkState.NOT_ANALYSED
    assert "out of distribution" in (study.series[0].reason or "")
    (rec,) = monitoring_records(rig, ("hemorrhage",), outcomes=list(analyses.Outcome))
    assert rec.outcome is analyses.Outcome.OOD and (rec.ood_score or 0) > 1.0
    assert rec.inputs["hu_median"] > 100  # the shift is visible in the inputs too


def test_ineligible_series_is_not_analysed_with_the_reason(spawn: Callable[..., Proc],
                                                           rig: Rig) -> None:
    job_id = rig.stage(20)  # 20 slices of 32x32: too little head coverage for the detectors
    start_worker(spawn, rig)
    rig.ledger.publish_pending(rig.publish)
    view = rig.wait_state(job_id, JobState.DONE, 120)
    assert view.result is not None and view.result["findings"] == []
    assert "hemorrhage:" in view.result["not_analysed"]
    assert "stroke:" in view.result["not_analysed"]


def _owner_pid(view: JobView, rig: Rig) -> int:
    with rig.db.read() as conn:
        owner = conn.execute(sa.select(jobs.c.owner).where(jobs.c.job_id == view.job_id)).scalar()
    assert owner is not None
    return int(owner.rsplit(":", 1)[1])


def test_job_survives_kill_9_of_the_pool_process(spawn: Callable[..., Proc], rig: Rig) -> None:
    job_id = rig.stage(20)
    worker = start_worker(spawn, rig, TRIAGE_ANALYSIS_DELAY_S="4")
    rig.ledger.publish_pending(rig.publish)
    running = rig.wait_state(job_id, JobState.RUNNING)
    child = _owner_pid(running, rig)
    assert child != worker.popen.pid
    os.kill(child, signal.SIGKILL)
    done = rig.wait_state(job_id, JobState.DONE, 90)
    assert done.attempts == 2
    assert done.result is not None and done.result["attempt"] == 2
    time.sleep(3)
    final = rig.job(job_id)
    assert (final.state, final.attempts) == (JobState.DONE, 2)


def test_job_survives_kill_9_of_the_whole_worker(spawn: Callable[..., Proc], rig: Rig) -> None:
    job_id = rig.stage(20)
    worker = start_worker(spawn, rig, TRIAGE_ANALYSIS_DELAY_S="4")
    rig.ledger.publish_pending(rig.publish)
    rig.wait_state(job_id, JobState.RUNNING)
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait(10)
    # The message is stuck unacknowledged in Redis; the ledger's lease expires and the
    # reconciler (the listener's sweeper in production) republishes the job.
    start_worker(spawn, rig)

    def reconciled() -> bool:
        rig.ledger.reconcile()
        rig.ledger.publish_pending(rig.publish)
        return rig.job(job_id).state is JobState.DONE

    wait_for(reconciled, 60, interval=0.5, what="job done after reconcile")
    assert rig.job(job_id).attempts == 2


def test_stat_queue_is_drained_before_routine(spawn: Callable[..., Proc], rig: Rig) -> None:
    routine = [rig.stage(16) for _ in range(3)]
    stat = rig.stage(16, priority="STAT")
    rig.ledger.publish_pending(rig.publish)  # publishes STAT first; order in Redis must not matter
    # Push the routine ones again so they sit in the queue ahead in time of nothing else.
    start_worker(spawn, rig)
    for job_id in [*routine, stat]:
        rig.wait_state(job_id, JobState.DONE)
    with rig.db.read() as conn:
        started = dict(conn.execute(sa.select(jobs.c.job_id, jobs.c.started_at)).all())
    assert started[stat] < min(started[j] for j in routine)


def test_stat_job_published_last_still_runs_first(spawn: Callable[..., Proc], rig: Rig) -> None:
    routine = [rig.stage(16) for _ in range(3)]
    for job_id in routine:
        rig.publish(JobMessage(job_id, QueueName.ROUTINE))
    stat = rig.stage(16, priority="STAT")
    rig.publish(JobMessage(stat, QueueName.STAT))
    start_worker(spawn, rig)
    for job_id in [*routine, stat]:
        rig.wait_state(job_id, JobState.DONE)
    with rig.db.read() as conn:
        started = dict(conn.execute(sa.select(jobs.c.job_id, jobs.c.started_at)).all())
    # prefetch 1: at most the first routine message was reserved before STAT was seen
    assert sorted(started, key=started.__getitem__).index(stat) <= 1


def test_unknown_job_is_rejected_and_the_worker_carries_on(
    spawn: Callable[..., Proc], rig: Rig
) -> None:
    worker = start_worker(spawn, rig)
    rig.publish(JobMessage("does-not-exist", QueueName.ROUTINE))
    job_id = rig.stage(16)
    rig.ledger.publish_pending(rig.publish)
    rig.wait_state(job_id, JobState.DONE)
    assert "does-not-exist" in worker.output()


def test_unreadable_series_fails_with_a_reason(spawn: Callable[..., Proc], rig: Rig) -> None:
    job_id = rig.stage(16)
    for path in rig.store.instance_paths(rig.job(job_id).series_instance_uid)[:3]:
        path.write_bytes(path.read_bytes()[:400])  # damaged on disk after it was stored
    start_worker(spawn, rig)
    rig.ledger.publish_pending(rig.publish)
    failed = rig.wait_state(job_id, JobState.FAILED)
    assert failed.error is not None and "unreadable" in failed.error
    assert failed.attempts == 1
