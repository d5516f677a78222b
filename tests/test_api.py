"""HTTP API: probes and the worklist."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.dicom_factory import write_series
from triage.api import create_app
from triage.assembly import Assembler
from triage.config import DEFAULT_RULES_FILE, Settings, load_settings
from triage.db import Database
from triage.jobs import Claim, JobLedger
from triage.rules import load_rules
from triage.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0)


def stage(store: Store, folder: Path, count: int, **kwargs: object) -> None:
    for path in write_series(folder, count, **kwargs):  # type: ignore[arg-type]
        copy = store.incoming_dir / (path.name + ".in")
        shutil.copyfile(path, copy)
        store.ingest(copy)


def test_health_and_readiness(settings: Settings, sqlite_db: Database) -> None:
    client = TestClient(create_app(settings, sqlite_db))
    assert client.get("/healthz").json()["status"] == "ok"
    settings.spool.mkdir(parents=True, exist_ok=True)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "spool": "ok"}


def test_readiness_fails_when_the_broker_is_down(settings: Settings,
                                                 sqlite_db: Database) -> None:
    def broker() -> None:
        raise ConnectionError("redis does not answer")

    settings.spool.mkdir(parents=True, exist_ok=True)
    client = TestClient(create_app(settings, sqlite_db, checks={"broker": broker}))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("failed: ConnectionError")


def test_readiness_fails_when_the_database_is_down(settings: Settings) -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    settings.spool.mkdir(parents=True, exist_ok=True)
    response = TestClient(create_app(settings, db)).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failed")
    db.dispose()


def test_worklist_shows_every_state_and_no_patient_data(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    store = Store(settings.spool, db)
    ledger = JobLedger(db)
    assembler = Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)
    stage(store, tmp_path / "head", 20)  # routed, then analysed
    stage(store, tmp_path / "chest", 20, body_part="CHEST")  # not analysed
    stage(store, tmp_path / "stat", 20, priority="STAT")  # queued on stat
    ready = assembler.sweep(now=time.time() + 60)
    stage(store, tmp_path / "late", 3)  # still receiving
    head_job = next(r.job_id for r in ready if r.job_id and r.instance_count == 20)
    claim = ledger.claim(head_job, owner="w:1")
    assert isinstance(claim, Claim)
    ledger.complete(claim, {"summary": "received 20 slices"})

    body = TestClient(create_app(settings, db)).get("/api/worklist").json()
    assert "not for diagnosis" in body["ai_notice"]
    studies = body["studies"]
    assert len(studies) == 4
    assert studies[0]["stat"] is True and studies[0]["state"] == "QUEUED"
    states = sorted(s["state"] for s in studies)
    assert states == ["DONE", "NOT_ANALYSED", "QUEUED", "RECEIVING"]
    not_analysed = next(s for s in studies if s["state"] == "NOT_ANALYSED")
    assert "CHEST" in not_analysed["series"][0]["reason"]
    done = next(s for s in studies if s["state"] == "DONE")
    assert done["series"][0]["result"] == {"summary": "received 20 slices"}
    text = str(body)
    for phi in ("Phantom", "PHANTOM-1", "19700101", "ACC1"):
        assert phi not in text


def test_openapi_is_served(settings: Settings, sqlite_db: Database) -> None:
    client = TestClient(create_app(settings, sqlite_db))
    assert "/api/worklist" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
