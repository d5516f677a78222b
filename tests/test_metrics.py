"""Prometheus metrics: listener event counters, the exporter in `triage web`, the dashboard."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import REPO, Proc, RunningListener, TestAE, free_port, triage_argv, wait_for
from tests.dicom_factory import write_series
from triage import analyses as analyses_mod
from triage.analyses import AnalysisRecord, Outcome
from triage.api import create_app
from triage.assembly import Assembler
from triage.auth import UserDirectory, hash_password
from triage.config import DEFAULT_RULES_FILE, Settings, load_settings
from triage.counters import (
    ASSOCIATIONS,
    INSTANCES_RECEIVED,
    STORE_ERRORS,
    EventCounters,
    read_counters,
)
from triage.db import Database, deliveries, series
from triage.feedback import Verdict, record_feedback
from triage.jobs import Claim, JobLedger
from triage.rules import load_rules
from triage.store import Store

Start = Callable[..., RunningListener]
Families = dict[str, Any]

UID_LIKE = re.compile(r"\d+(\.\d+){3,}")
PATIENT_NAME = "Doe^Jane"


def scu(ae_title: str = "TESTSCU") -> AE:
    ae = TestAE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    return ae


def counter_values(db: Database) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(c.name, tuple(sorted(c.labels.items()))): c.value for c in read_counters(db)}


def parse(text: str) -> Families:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: Families, family: str, name: str | None = None, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name or family}{labels} in {families[family].samples}")


def scrape(client: TestClient) -> Families:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.fixture
def settings(tmp_path: Path, broker_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0,
                         broker_url=broker_url)


def stage(store: Store, folder: Path, count: int, **kwargs: object) -> list[Path]:
    paths = write_series(folder, count, **kwargs)  # type: ignore[arg-type]
    for path in paths:
        copy = store.incoming_dir / (path.name + ".in")
        copy.write_bytes(path.read_bytes())
        store.ingest(copy)
    return paths


# --- event counters ----------------------------------------------------------------------------

def test_listener_counts_associations_and_instances_over_real_sockets(
    start_listener: Start, db: Database, tmp_path: Path
) -> None:
    running = start_listener(db, allowed_calling_aes=["CT1"])
    paths = write_series(tmp_path / "src", 3)
    assoc = scu("CT1").associate(running.host, running.port)
    assert [assoc.send_c_store(dcmread(p)).Status for p in paths] == [0, 0, 0]
    assert assoc.send_c_store(dcmread(paths[0])).Status == 0  # a duplicate
    assoc.release()
    aborted = scu("CT1").associate(running.host, running.port)
    aborted.abort()
    assert scu("INTRUDER").associate(running.host, running.port).is_rejected

    expected = {
        (INSTANCES_RECEIVED, (("outcome", "stored"),)): 3.0,
        (INSTANCES_RECEIVED, (("outcome", "duplicate"),)): 1.0,
        (ASSOCIATIONS, (("event", "accepted"),)): 2.0,
        (ASSOCIATIONS, (("event", "released"),)): 1.0,
        (ASSOCIATIONS, (("event", "aborted"),)): 1.0,
        (ASSOCIATIONS, (("event", "rejected"),)): 1.0,
    }

    def flushed() -> bool:
        running.listener.flusher.flush_now()
        return counter_values(db) == expected

    wait_for(flushed, 10, what=f"counters {expected}, have {counter_values(db)}")
    # flushes add deltas: nothing is counted twice
    running.listener.flusher.flush_now()
    assert counter_values(db) == expected


def test_refused_instances_are_counted_by_status(
    start_listener: Start, sqlite_db: Database, tmp_path: Path
) -> None:
    running = start_listener(sqlite_db, min_free_bytes=2**62)  # spool below its watermark
    (path,) = write_series(tmp_path / "src", 1)
    assoc = scu().associate(running.host, running.port)
    assert assoc.send_c_store(dcmread(path)).Status == 0xA700
    assert assoc.send_c_store(dcmread(path)).Status == 0xA700
    assoc.release()
    running.listener.stop()  # flushes a last time
    values = counter_values(sqlite_db)
    assert values[(STORE_ERRORS, (("reason", "0xA700"),))] == 2.0
    assert (INSTANCES_RECEIVED, (("outcome", "stored"),)) not in values


def test_refusal_during_a_database_outage_is_counted_once_the_database_is_back(
    start_listener: Start, sqlite_db: Database, tmp_path: Path
) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    running = start_listener(down, spool_dir=tmp_path / "spool")
    (path,) = write_series(tmp_path / "src", 1)
    assoc = scu().associate(running.host, running.port)
    assert assoc.send_c_store(dcmread(path)).Status == 0xA700  # the index is down
    assoc.release()
    wait_for(lambda: running.listener.counters.pending().get(
        (ASSOCIATIONS, (("event", "released"),))), 10, what="release counted")
    assert not running.listener.flusher.flush_now()  # kept in memory
    running.listener.counters.inc(STORE_ERRORS, reason="0xA700")  # counted meanwhile
    running.listener.counters.flush(sqlite_db)  # the database is back
    values = counter_values(sqlite_db)
    assert values[(STORE_ERRORS, (("reason", "0xA700"),))] == 2.0
    assert values[(ASSOCIATIONS, (("event", "accepted"),))] == 1.0
    assert running.listener.counters.pending() == {}
    down.dispose()


def test_sweeper_counts_ready_series_by_trigger(sqlite_db: Database, tmp_path: Path) -> None:
    from triage.assembly import Sweeper

    store = Store(tmp_path / "spool", sqlite_db)
    ledger = JobLedger(sqlite_db)
    counters = EventCounters()
    assembler = Assembler(sqlite_db, load_rules(DEFAULT_RULES_FILE), ledger, stable_age_s=0.0)
    stage(store, tmp_path / "head", 20)
    stage(store, tmp_path / "chest", 20, body_part="CHEST")  # not routed to a detector
    sweeper = Sweeper(assembler, ledger, lambda _m: None, counters=counters)
    assert sweeper.run_once().ready == 2
    counters.flush(sqlite_db)
    values = counter_values(sqlite_db)
    assert values[("series_ready", (("trigger", "timer"),))] == 2.0
    assert values[("series_not_analysed", (("trigger", "timer"),))] == 1.0


# --- the exporter ------------------------------------------------------------------------------

def finish_job(db: Database, ledger: JobLedger, job_id: str, *, timings: dict[str, float],
               received_at: float, started_at: float, finished_at: float) -> None:
    claim = ledger.claim(job_id, owner="w:1")
    assert isinstance(claim, Claim)
    ledger.complete(claim, {"summary": "", "findings": [], "timings_s": timings})
    from triage.db import jobs

    with db.write() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id)
                     .values(started_at=started_at, finished_at=finished_at))
        conn.execute(sa.update(series).where(series.c.series_instance_uid
                                             == claim.series_instance_uid)
                     .values(last_received_at=received_at))


def test_task_and_time_to_flag_histograms_come_from_job_rows(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    store = Store(settings.spool, db)
    ledger = JobLedger(db)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)
    for name in ("a", "b"):
        stage(store, tmp_path / name, 20)
    job_a, job_b = sorted(str(r.job_id) for r in assembler.sweep(now=time.time() + 60)
                          if r.job_id)
    model = ledger.get(job_a).detectors[0]
    now = time.time()
    finish_job(db, ledger, job_a, timings={"load": 0.3, model: 0.7, "total": 1.1},
               received_at=now - 40, started_at=now - 5, finished_at=now)
    client = TestClient(create_app(settings, db))
    first = scrape(client)
    assert sample(first, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_bucket",
                  queue="routine", le="30.0") == 0
    assert sample(first, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_bucket",
                  queue="routine", le="45.0") == 1
    assert sample(first, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_sum",
                  queue="routine") == pytest.approx(40.0)
    assert sample(first, "triage_task_inference_duration_seconds",
                  "triage_task_inference_duration_seconds_bucket", model=model, le="1.0") == 1
    assert sample(first, "triage_task_load_duration_seconds",
                  "triage_task_load_duration_seconds_count", queue="routine") == 1
    assert sample(first, "triage_task_duration_seconds", "triage_task_duration_seconds_sum",
                  queue="routine") == pytest.approx(5.0)
    assert sample(first, "triage_jobs_finished", "triage_jobs_finished_total",
                  queue="routine", state="DONE") == 1

    # an unchanged table adds nothing; a newly finished job is added once
    assert scrape(client)["triage_time_to_flag_seconds"].samples == \
        first["triage_time_to_flag_seconds"].samples
    finish_job(db, ledger, job_b, timings={"load": 0.2, model: 0.4, "total": 0.7},
               received_at=now - 1500, started_at=now - 3, finished_at=now + 1)
    second = scrape(client)
    count = "triage_time_to_flag_seconds_count"
    assert sample(second, "triage_time_to_flag_seconds", count, queue="routine") == 2
    assert sample(second, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_bucket",
                  queue="routine", le="1200.0") == 1  # 1500 s: only in +Inf
    assert sample(second, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_bucket",
                  queue="routine", le="+Inf") == 2
    # a restarted web process rebuilds the same totals from the rows
    again = scrape(TestClient(create_app(settings, db)))
    assert again["triage_time_to_flag_seconds"].samples == \
        second["triage_time_to_flag_seconds"].samples


def test_queue_depth_from_jobs_and_redis_and_broker_down(
    settings: Settings, sqlite_db: Database, tmp_path: Path, broker_url: str
) -> None:
    store = Store(settings.spool, sqlite_db)
    ledger = JobLedger(sqlite_db)
    assembler = Assembler(sqlite_db, load_rules(DEFAULT_RULES_FILE), ledger)
    stage(store, tmp_path / "stat", 20, priority="STAT")
    stage(store, tmp_path / "routine", 20)
    assembler.sweep(now=time.time() + 60)
    client = redis.Redis.from_url(broker_url)
    client.lpush("stat", b"m1", b"m2")
    client.lpush("stat\x06\x163", b"m3")  # kombu's list for priority step 3
    client.close()
    families = scrape(TestClient(create_app(settings, sqlite_db)))
    assert sample(families, "triage_broker_up") == 1
    assert sample(families, "triage_broker_queue_length", queue="stat") == 3
    assert sample(families, "triage_broker_queue_length", queue="routine") == 0
    assert sample(families, "triage_queue_depth", queue="stat") == 1
    assert sample(families, "triage_queue_depth", queue="routine") == 1
    assert sample(families, "triage_jobs", queue="stat", state="PENDING") == 1
    assert 0 < sample(families, "triage_queue_oldest_age_seconds", queue="stat") < 600

    dead = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    started = time.monotonic()
    families = scrape(TestClient(create_app(dead, sqlite_db)))
    assert time.monotonic() - started < 5
    assert sample(families, "triage_broker_up") == 0
    assert "triage_broker_queue_length" not in families
    assert sample(families, "triage_database_up") == 1
    assert sample(families, "triage_queue_depth", queue="stat") == 1


def test_metrics_need_no_login_where_the_worklist_does(
    settings: Settings, sqlite_db: Database
) -> None:
    exposed = settings.model_copy(update={"web_auth": "required"})
    users = UserDirectory({"dr": ("radiologist", hash_password("a long passphrase"))})
    client = TestClient(create_app(exposed, sqlite_db, users=users))
    assert client.get("/api/worklist").status_code == 401
    assert sample(scrape(client), "triage_database_up") == 1


def test_database_down_still_answers_the_scrape(settings: Settings) -> None:
    down = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    families = scrape(TestClient(create_app(settings, down)))
    assert sample(families, "triage_database_up") == 0
    assert sample(families, "triage_broker_up") == 1
    down.dispose()


# --- over real HTTP, with every kind of row ----------------------------------------------------

def populate(settings: Settings, db: Database, tmp_path: Path,
             start_listener: Start) -> str:
    """Every source of metrics, from patient studies named PATIENT_NAME; the model name."""
    running = start_listener(db, data_dir=settings.data_dir, spool_dir=settings.spool)
    paths = write_series(tmp_path / "src", 20)
    assoc = scu().associate(running.host, running.port)
    for path in paths:
        ds = dcmread(path)
        ds.PatientName = PATIENT_NAME
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    wait_for(lambda: running.listener.counters.pending().get(
        (ASSOCIATIONS, (("event", "released"),))), 10, what="release counted")
    running.listener.stop()
    ledger = JobLedger(db)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)
    (ready,) = assembler.sweep(now=time.time() + 60)
    job_id = str(ready.job_id)
    model = ledger.get(job_id).detectors[0]
    now = time.time()
    finish_job(db, ledger, job_id, timings={"load": 0.1, model: 0.2, "total": 0.3},
               received_at=now - 20, started_at=now - 1, finished_at=now)
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    analyses_mod.record(db, [AnalysisRecord(
        job_id=job_id, detector=model, model_version="0.1.0", study_instance_uid=study_uid,
        series_instance_uid=ready.series_instance_uid, revision=1, analysed_at=now,
        outcome=Outcome.ANALYSED, inputs={"manufacturer": "ACME"}, probability=0.9,
        threshold=0.5, flagged=True)])
    analyses_mod.publish_model(db, model, "0.1.0", {"threshold": 0.5}, now)
    with db.write() as conn:
        conn.execute(deliveries.insert().values(
            study_instance_uid=study_uid, version=1, destination="pacs", state="SENT",
            attempts=3, next_attempt_at=now, sent_at=now, created_at=now - 40))
    return model


def test_metrics_over_http_from_triage_web_carry_no_identifiers(
    spawn: Callable[..., Proc], start_listener: Start, tmp_path: Path, broker_url: str
) -> None:
    port = free_port()
    settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0, web_port=port,
                             broker_url=broker_url)
    db = Database(settings.db_url)
    db.create_schema()
    model = populate(settings, db, tmp_path, start_listener)
    web = spawn("web", triage_argv("web"), settings.to_env())
    web.wait_output("Uvicorn running", 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200  # no login: the page carries no PHI
        text = response.read().decode()
    families = parse(text)

    assert sample(families, "triage_instances_received", "triage_instances_received_total",
                  outcome="stored") == 20
    assert sample(families, "triage_associations", "triage_associations_total",
                  event="released") == 1
    assert sample(families, "triage_store_errors", "triage_store_errors_total",
                  reason="0xA700") == 0
    assert sample(families, "triage_findings", "triage_findings_total", model=model,
                  flag="true") == 1
    assert sample(families, "triage_analyses", "triage_analyses_total", model=model,
                  outcome="analysed") == 1
    assert sample(families, "triage_model_info", model=model, version="0.1.0") == 1
    assert sample(families, "triage_outputs", "triage_outputs_total", destination="pacs",
                  state="sent") == 1
    assert sample(families, "triage_output_failures", "triage_output_failures_total",
                  destination="pacs") == 2
    assert sample(families, "triage_time_to_flag_seconds", "triage_time_to_flag_seconds_count",
                  queue="routine") == 1
    # written 40 s before the PACS accepted it: above the 30 s bucket, inside the 60 s one
    assert sample(families, "triage_output_delivery_seconds",
                  "triage_output_delivery_seconds_bucket", destination="pacs", le="30.0") == 0
    assert sample(families, "triage_output_delivery_seconds",
                  "triage_output_delivery_seconds_bucket", destination="pacs", le="60.0") == 1

    for family in families.values():
        assert family.name.startswith(("triage_", "process_", "python_")), family.name
        for s in family.samples:
            for key, value in s.labels.items():
                assert not UID_LIKE.search(value), f"{s.name}{{{key}={value!r}}}"
                assert "Doe" not in value and "Jane" not in value, s
    assert "Doe" not in text and "Jane" not in text
    db.dispose()


def test_feedback_is_counted_by_model_and_verdict(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    store = Store(settings.spool, sqlite_db)
    ledger = JobLedger(sqlite_db)
    assembler = Assembler(sqlite_db, load_rules(DEFAULT_RULES_FILE), ledger)
    paths = stage(store, tmp_path / "a", 20)
    (ready,) = assembler.sweep(now=time.time() + 60)
    claim = ledger.claim(str(ready.job_id), owner="w:1")
    assert isinstance(claim, Claim)
    from tests.test_api import _result

    ledger.complete(claim, _result(0.9, True))
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    analyses_mod.record(sqlite_db, [AnalysisRecord(
        job_id=claim.job_id, detector="hemorrhage", model_version="0.1.0",
        study_instance_uid=study_uid, series_instance_uid=claim.series_instance_uid,
        revision=claim.revision, analysed_at=time.time(), outcome=Outcome.ANALYSED,
        inputs={"manufacturer": "ACME", "sex": "F", "age_band": "40-64",
                "thickness_band": "2.5 mm"}, probability=0.9, threshold=0.5, flagged=True)])
    for verdict in (Verdict.AGREE, Verdict.AGREE, Verdict.DISAGREE):
        record_feedback(sqlite_db, study_uid, detector="hemorrhage", verdict=verdict,
                        comment=None, series_uid=None, user="dr")
    families = scrape(TestClient(create_app(settings, sqlite_db)))
    assert sample(families, "triage_feedback", "triage_feedback_total", model="hemorrhage",
                  verdict="agree") == 2
    assert sample(families, "triage_feedback", "triage_feedback_total", model="hemorrhage",
                  verdict="disagree") == 1
    # live PPV counts the newest verdict per finding only: 0 of 1, Wilson bounds 0 to 0.79
    for stratum, value in (("overall", "all"), ("vendor", "ACME"), ("sex", "F")):
        cell = {"model": "hemorrhage", "version": "0.1.0", "stratum": stratum, "value": value}
        assert sample(families, "triage_ppv", **cell) == 0
        assert sample(families, "triage_ppv_verdicts", **cell) == 1
        assert sample(families, "triage_ppv_lower", **cell) == 0
        assert sample(families, "triage_ppv_upper", **cell) == pytest.approx(0.793, abs=1e-3)
        assert sample(families, "triage_ppv_alert", **cell) == 0  # too few verdicts


# --- Grafana dashboard -------------------------------------------------------------------------

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "triage.json"


def exported_names(families: Families) -> set[str]:
    """The series names Prometheus stores, also for families without samples yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    names: set[str] = set()
    for family in families.values():
        names.update(s.name for s in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def panel_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_dashboard_queries_only_metrics_the_exporter_emits(
    settings: Settings, sqlite_db: Database
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(panel_exprs(dashboard))
    assert len(exprs) >= 12
    provisioned = yaml.safe_load((DASHBOARD.parent.parent / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    names = exported_names(scrape(TestClient(create_app(settings, sqlite_db))))
    for title, expr in exprs:
        used = set(re.findall(r"\btriage_[a-z_]+", expr))
        assert used, f"panel {title!r} queries no triage metric: {expr}"
        missing = used - names
        assert not missing, f"panel {title!r} uses {missing}, not exported"


# --- drift -------------------------------------------------------------------------------------

def analysis_rows(db: Database, n: int, *, start: float, kvp: float, vendor: str,
                  flag_every: int = 5) -> None:
    rows = []
    for i in range(n):
        rows.append(AnalysisRecord(
            job_id=f"{start:.0f}-{i:04d}", detector="hemorrhage", model_version="0.1.0",
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.{start:.0f}.{i}",
            series_instance_uid=f"1.2.826.0.1.3680043.8.498.{start:.0f}.{i}.1", revision=1,
            analysed_at=start + i, outcome=Outcome.ANALYSED,
            inputs={"kvp": kvp + (i % 7), "manufacturer": vendor, "noise_hu": 5.0 + i % 3},
            probability=(i % 10) / 10, threshold=0.5, flagged=i % flag_every == 0))
    analyses_mod.record(db, rows)


def test_drift_statistics_thresholds_and_alarms_are_exported(
    make_settings: Callable[..., Settings], sqlite_db: Database, broker_url: str
) -> None:
    settings = make_settings(broker_url=broker_url, drift_reference_size=50,
                             drift_window_size=20, drift_bootstrap_samples=100)
    now = time.time()
    analysis_rows(sqlite_db, 50, start=now - 7200, kvp=120.0, vendor="ACME")
    analysis_rows(sqlite_db, 20, start=now - 600, kvp=140.0, vendor="OTHERCO")  # shifted
    families = scrape(TestClient(create_app(settings, sqlite_db)))
    kvp = {"model": "hemorrhage", "version": "0.1.0", "test": "input:kvp"}
    assert sample(families, "triage_drift_alarm", kind="ks", **kvp) == 1
    assert sample(families, "triage_drift_statistic", kind="ks", **kvp) > \
        sample(families, "triage_drift_threshold", kind="ks", **kvp) > 0
    assert sample(families, "triage_drift_alarm", kind="chi2", model="hemorrhage",
                  test="input:manufacturer") == 1
    assert sample(families, "triage_drift_state", model="hemorrhage", version="0.1.0",
                  state="drift") == 1
    assert sample(families, "triage_flag_rate", model="hemorrhage", version="0.1.0",
                  window="reference") == pytest.approx(10 / 50)
    assert sample(families, "triage_drift_flag_rate_alarm", model="hemorrhage",
                  version="0.1.0") == 0  # no completed day yet with enough studies
    for family in families.values():
        for s in family.samples:
            assert not any(UID_LIKE.search(v) for v in s.labels.values()), s
