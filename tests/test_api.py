"""HTTP API: probes and the worklist."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicom_factory import write_series
from tests.test_outputs_ups import make_report
from triage import reports
from triage.api import create_app
from triage.assembly import Assembler
from triage.config import DEFAULT_RULES_FILE, Settings, load_settings
from triage.db import Database
from triage.domain import Priority
from triage.jobs import Claim, JobLedger
from triage.outputs.ups import UpsConfig, UpsService
from triage.rules import load_rules
from triage.store import Store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0)


def pipeline(spool: Path, db: Database) -> tuple[Store, JobLedger, Assembler]:
    """Ingest, job ledger and assembly over one index, with the default routing rules."""
    ledger = JobLedger(db)
    return Store(spool, db), ledger, Assembler(db, load_rules(DEFAULT_RULES_FILE), ledger)


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
    store, ledger, assembler = pipeline(settings.spool, db)
    stage(store, tmp_path / "head", 20)  # routed, then analysed
    stage(store, tmp_path / "chest", 20, body_part="CHEST")  # not analysed
    stage(store, tmp_path / "stat", 20, priority="STAT")  # queued on stat
    ready = assembler.sweep(now=time.time() + 60)
    stage(store, tmp_path / "late", 3)  # still receiving
    head_job = next(r.job_id for r in ready if r.job_id and r.instance_count == 20)
    claim = ledger.claim(head_job, owner="w:1")
    assert isinstance(claim, Claim)
    ledger.complete(claim, {"summary": "hemorrhage 0.10", "findings": []})

    body = TestClient(create_app(settings, db)).get("/api/worklist").json()
    assert "not for diagnosis" in body["ai_notice"]
    studies = body["studies"]
    assert len(studies) == 4
    assert studies[0]["stat"] is True and studies[0]["state"] == "QUEUED"
    states = sorted(s["state"] for s in studies)
    assert states == ["NOT_ANALYSED", "NO_FINDINGS", "QUEUED", "RECEIVING"]
    not_analysed = next(s for s in studies if s["state"] == "NOT_ANALYSED")
    assert "CHEST" in not_analysed["series"][0]["reason"]
    done = next(s for s in studies if s["state"] == "NO_FINDINGS")
    assert done["series"][0]["result"]["summary"] == "hemorrhage 0.10"
    assert [s["priority"] for s in studies[:1]] == ["MEDIUM"]  # STAT, nothing flagged
    text = str(body)
    for phi in ("Phantom", "PHANTOM-1", "19700101", "ACC1"):
        assert phi not in text


def test_openapi_is_served(settings: Settings, sqlite_db: Database) -> None:
    client = TestClient(create_app(settings, sqlite_db))
    assert "/api/worklist" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def _result(probability: float, flagged: bool, preview: str | None = None) -> dict[str, object]:
    return {
        "summary": f"hemorrhage {probability}",
        "findings": [{
            "detector": "hemorrhage", "finding": "intracranial hemorrhage",
            "probability": probability, "threshold": 0.5, "flagged": flagged,
            "model_name": "hemorrhage", "model_version": "0.1.0",
            "slice_range": [10, 14] if flagged else None, "key_slice": 12, "slices": 20,
            "key_sop_instance_uid": None, "preview": preview,
        }],
    }


def analyse_staged(assembler: Assembler, ledger: JobLedger, tmp_path: Path,
                   results: dict[str, dict[str, object]]) -> dict[str, str]:
    """Complete the job of each folder staged under ``tmp_path`` with its result, as a worker
    would (and write its report version); folder name → Study Instance UID."""
    folder_of = {str(dcmread(next((tmp_path / name).glob("*.dcm"))).StudyInstanceUID): name
                 for name in results}
    uids = {}
    for ready in (r for r in assembler.sweep(now=time.time() + 60) if r.job_id):
        claim = ledger.claim(str(ready.job_id), owner="w:1")
        assert isinstance(claim, Claim)
        name = folder_of[claim.study_instance_uid]
        ledger.complete(claim, results[name])
        reports.refresh(assembler.db, claim.study_instance_uid, [])
        uids[name] = claim.study_instance_uid
    return uids


def test_flagged_study_sorts_first_and_feedback_round_trips(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    store, ledger, assembler = pipeline(settings.spool, db)
    stage(store, tmp_path / "stat", 20, priority="STAT")  # ordered STAT, nothing found
    stage(store, tmp_path / "old", 20)  # waiting longest, nothing found
    stage(store, tmp_path / "bleed", 20)  # the newest, flagged
    jobs = sorted((r for r in assembler.sweep(now=time.time() + 60) if r.job_id),
                  key=lambda r: r.series_instance_uid)
    by_series = {r.series_instance_uid: r.job_id for r in jobs}
    results = {}
    for folder, probability, flagged in (("stat", 0.2, False), ("old", 0.1, False),
                                         ("bleed", 0.97, True)):
        uid = str(dcmread(next((tmp_path / folder).glob("*.dcm"))).SeriesInstanceUID)
        claim = ledger.claim(str(by_series[uid]), owner="w:1")
        assert isinstance(claim, Claim)
        preview = "hemorrhage.png" if flagged else None
        if preview:
            png = settings.data_dir / "previews" / claim.job_id / preview
            png.parent.mkdir(parents=True)
            png.write_bytes(b"\x89PNG\r\n\x1a\n fake")
        ledger.complete(claim, _result(probability, flagged, preview))
        results[folder] = claim.study_instance_uid

    client = TestClient(create_app(settings, db))
    studies = client.get("/api/worklist").json()["studies"]
    order = [s["study_instance_uid"] for s in studies]
    assert order == [results["bleed"], results["stat"], results["old"]]
    top = studies[0]
    assert (top["state"], top["priority"], top["severity"]) == ("FLAGGED", "HIGH", 3)
    assert top["findings"][0]["slice_range"] == [10, 14]
    assert [s["priority"] for s in studies] == ["HIGH", "MEDIUM", "LOW"]
    # filters
    only = client.get("/api/worklist", params={"finding": "hemorrhage"}).json()["studies"]
    assert [s["study_instance_uid"] for s in only] == [results["bleed"]]
    assert len(client.get("/api/worklist", params=[("state", "NO_FINDINGS")]).json()[
        "studies"]) == 2
    # preview served, other paths refused
    png = client.get(top["findings"][0]["preview"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.get(f"/api/studies/{results['bleed']}/previews/x/../../index.sqlite3"
                      ).status_code == 404
    # feedback round trip
    uid = results["bleed"]
    posted = client.post(f"/api/studies/{uid}/feedback",
                         json={"detector": "hemorrhage", "verdict": "agree",
                               "comment": "subdural, left"})
    assert posted.status_code == 201, posted.text
    assert posted.json()["ai_flagged"] is True and posted.json()["model_version"] == "0.1.0"
    detail = client.get(f"/api/studies/{uid}").json()
    assert [(f["verdict"], f["comment"]) for f in detail["feedback"]] == [
        ("agree", "subdural, left")]
    assert "not for diagnosis" in detail["ai_notice"]
    assert client.post(f"/api/studies/{uid}/feedback",
                       json={"detector": "stroke", "verdict": "agree"}).status_code == 409
    assert client.post("/api/studies/1.2.3/feedback",
                       json={"detector": "hemorrhage", "verdict": "agree"}).status_code == 404
    assert client.post(f"/api/studies/{uid}/feedback",
                       json={"detector": "hemorrhage", "verdict": "maybe"}).status_code == 422
    assert client.get("/api/studies/1.2.3").status_code == 404


def test_a_retraction_withdraws_the_flag_on_the_worklist_as_on_every_channel(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    store, ledger, assembler = pipeline(settings.spool, db)
    stage(store, tmp_path / "old", 20)  # waiting longest, nothing found
    stage(store, tmp_path / "bleed", 20, priority="STAT")  # ordered STAT, flagged
    uids = analyse_staged(assembler, ledger, tmp_path,
                          {"old": _result(0.1, False), "bleed": _result(0.97, True)})
    uid = uids["bleed"]
    client = TestClient(create_app(settings, db))

    def listed() -> list[dict[str, Any]]:
        studies: list[dict[str, Any]] = client.get("/api/worklist").json()["studies"]
        return studies

    assert [(s["study_instance_uid"], s["priority"]) for s in listed()] == [
        (uid, "HIGH"), (uids["old"], "LOW")]

    # an admin withdraws the AI result (loopback: no login, full rights)
    assert client.post(f"/api/studies/{uid}/retract",
                       json={"reason": "motion, wrong series"}).json() == {"version": 2}
    top = listed()[0]
    # still listed and still first, now for its STAT order: what PACS/RIS/UPS were sent
    assert (top["study_instance_uid"], top["priority"], top["severity"]) == (uid, "MEDIUM", 0)
    assert top["state"] == "NOT_ANALYSED"
    assert top["series"][0]["reason"] == "AI result withdrawn by an admin: motion, wrong series"
    (finding,) = top["findings"]
    assert (finding["flagged"], finding["withdrawn"], finding["probability"]) == (
        False, True, 0.97)
    detail = client.get(f"/api/studies/{uid}").json()
    assert [(r["status"], r["priority"]) for r in detail["reports"]] == [
        ("FINAL", "HIGH"), ("RETRACTED", "MEDIUM")]
    assert client.get("/api/worklist", params={"finding": "hemorrhage"}).json()[
        "studies"] == []
    # feedback still judges what the model said
    posted = client.post(f"/api/studies/{uid}/feedback",
                         json={"detector": "hemorrhage", "verdict": "disagree"})
    assert posted.status_code == 201 and posted.json()["ai_flagged"] is True
    assert reports.refresh(db, uid, []) is None  # the same analysis: the retraction stands

    # a new revision whose analysis differs is a new result: it stands again, everywhere
    late = write_series(tmp_path / "late", 1, study_uid=uid,
                        series_uid=top["series"][0]["series_instance_uid"])
    copy = store.incoming_dir / "late.in"
    copy.write_bytes(late[0].read_bytes())
    store.ingest(copy)
    (ready,) = [r for r in assembler.sweep(now=time.time() + 120) if r.job_id]
    claim = ledger.claim(str(ready.job_id), owner="w:1")
    assert isinstance(claim, Claim)
    ledger.complete(claim, _result(0.2, False))
    assert reports.refresh(db, uid, []) == 3
    top = listed()[0]
    assert (top["state"], top["priority"]) == ("NO_FINDINGS", "MEDIUM")
    assert [(f["flagged"], f["withdrawn"]) for f in top["findings"]] == [(False, False)]


def test_reported_studies_sort_below_open_ones_from_the_page_or_a_ups_performer(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    store, ledger, assembler = pipeline(settings.spool, db)
    for folder in ("old", "stat", "bleed"):
        stage(store, tmp_path / folder, 20, **({"priority": "STAT"} if folder == "stat" else {}))
    uids = analyse_staged(assembler, ledger, tmp_path, {
        "old": _result(0.1, False), "stat": _result(0.1, False), "bleed": _result(0.97, True)})
    client = TestClient(create_app(settings, db))

    def order(**params: str) -> list[tuple[str, str]]:
        got = client.get("/api/worklist", params=params).json()["studies"]
        names = {uid: name for name, uid in uids.items()}
        return [(names[s["study_instance_uid"]], s["reading"]) for s in got]

    assert order() == [("bleed", "OPEN"), ("stat", "OPEN"), ("old", "OPEN")]
    # the radiologist has reported the flagged study: it no longer waits, and stays listed
    marked = client.post(f"/api/studies/{uids['bleed']}/reported", json={"reported": True})
    assert marked.status_code == 200, marked.text
    assert (marked.json()["reading"], marked.json()["reported_by"]) == ("REPORTED", "local")
    assert marked.json()["priority"] == "HIGH"  # the AI result is untouched
    assert order() == [("stat", "OPEN"), ("old", "OPEN"), ("bleed", "REPORTED")]
    assert order(reading="OPEN") == [("stat", "OPEN"), ("old", "OPEN")]
    # marking twice keeps the first mark; a limit never hides an open study behind it
    first_at = marked.json()["reported_at"]
    again = client.post(f"/api/studies/{uids['bleed']}/reported", json={})
    assert again.json()["reported_at"] == first_at
    assert order(limit="2") == [("stat", "OPEN"), ("old", "OPEN")]
    # reopened: back on top
    client.post(f"/api/studies/{uids['bleed']}/reported", json={"reported": False})
    assert order()[0] == ("bleed", "OPEN")
    assert client.post("/api/studies/1.2.3/reported", json={}).status_code == 404

    # a reading workstation claims the STAT study's UPS workitem, then completes it
    service = UpsService(db, UpsConfig())
    service.upsert(make_report(Priority.MEDIUM, study_uid=uids["stat"]))
    workitem, transaction = service.workitem_uid(uids["stat"]), str(generate_uid())
    assert service.change_state(workitem, "IN PROGRESS", transaction) == 0x0000
    assert order() == [("bleed", "OPEN"), ("stat", "IN_PROGRESS"), ("old", "OPEN")]
    assert service.change_state(workitem, "COMPLETED", transaction) == 0x0000
    assert order() == [("bleed", "OPEN"), ("old", "OPEN"), ("stat", "REPORTED")]
    detail = client.get(f"/api/studies/{uids['stat']}").json()["study"]
    assert (detail["reading"], detail["reported_by"]) == ("REPORTED", "UPS performer")
    refused = client.post(f"/api/studies/{uids['stat']}/reported", json={"reported": False})
    assert refused.status_code == 409 and "reading workstation" in refused.json()["detail"]


def test_worklist_page_is_served(settings: Settings, sqlite_db: Database) -> None:
    page = TestClient(create_app(settings, sqlite_db)).get("/")
    assert page.status_code == 200
    assert "not for diagnosis" in page.text and "/api/worklist" in page.text
