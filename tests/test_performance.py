"""Live performance: Wilson intervals, PPV from feedback, sensitivity from labels, alerts,
label import over HTTP, and the /performance page in a real browser."""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.conftest import Proc, free_port, triage_argv, wait_for
from tests.dicom_factory import write_series
from tests.test_api import _result
from triage import analyses
from triage.analyses import AnalysisRecord, Outcome
from triage.api import create_app
from triage.assembly import Assembler
from triage.auth import UserDirectory, hash_password
from triage.config import DEFAULT_RULES_FILE, Settings, load_settings
from triage.db import Database, feedback, labels
from triage.db import analyses as analyses_table
from triage.feedback import Verdict, record_feedback
from triage.jobs import Claim, JobLedger
from triage.performance import (
    PerformanceRow,
    expected_ppv,
    import_labels,
    live_performance,
    read_labels_csv,
    wilson_interval,
)
from triage.rules import load_rules
from triage.store import Store

CARD = {"threshold": 0.5, "validation": {"auc": 0.97, "sensitivity": 0.9, "specificity": 0.95,
                                         "ppv": 0.9, "n": 400, "positives": 100}}


def inputs(vendor: str = "GE", age: str = "40-64", sex: str = "F",
           thickness: str = "2.5 mm") -> dict[str, Any]:
    """An analysis ``inputs`` dict with the keys of models.inputs.describe_inputs."""
    return {"manufacturer": vendor, "kernel": "STANDARD", "kvp": 120.0,
            "slice_thickness_mm": 2.5, "hu_histogram": [0.05] * 20, "age_band": age,
            "sex": sex, "thickness_band": thickness}


@dataclass
class Site:
    """Studies made the real way: DICOM into the store, assembly, a finished job."""

    db: Database
    settings: Settings
    tmp: Path

    def __post_init__(self) -> None:
        self.store = Store(self.settings.spool, self.db)
        self.ledger = JobLedger(self.db)
        self.assembler = Assembler(self.db, load_rules(DEFAULT_RULES_FILE), self.ledger)

    def stage(self, count: int) -> Path:
        folder = self.tmp / uuid.uuid4().hex
        for path in write_series(folder, count):
            copy = self.store.incoming_dir / (path.name + ".in")
            shutil.copyfile(path, copy)
            self.store.ingest(copy)
        return folder

    def indexed_study(self) -> str:
        """A study in the index (one instance, never analysed)."""
        from pydicom import dcmread

        folder = self.stage(1)
        return str(dcmread(next(folder.glob("*.dcm"))).StudyInstanceUID)

    def analysed_study(self, *, flagged: bool, record: Outcome | None = Outcome.ANALYSED,
                       **strata: str) -> Claim:
        """A head CT whose hemorrhage job finished (flagged or not), with its analysis row."""
        self.stage(16)
        (ready,) = [r for r in self.assembler.sweep(now=time.time() + 60) if r.job_id]
        claim = self.ledger.claim(str(ready.job_id), owner="w:1")
        assert isinstance(claim, Claim)
        self.ledger.complete(claim, _result(0.9 if flagged else 0.1, flagged))
        if record is not None:
            self.record(claim, outcome=record, flagged=flagged, strata=strata)
        return claim

    def record(self, claim: Claim, *, outcome: Outcome = Outcome.ANALYSED,
               flagged: bool | None = None, revision: int | None = None,
               analysed_at: float | None = None, version: str = "0.1.0",
               strata: dict[str, str] | None = None, **more: str) -> None:
        strata = {**(strata or {}), **more}
        analysed = outcome is Outcome.ANALYSED
        analyses.record(self.db, [AnalysisRecord(
            job_id=str(uuid.uuid4()) if revision else claim.job_id, detector="hemorrhage",
            model_version=version, study_instance_uid=claim.study_instance_uid,
            series_instance_uid=claim.series_instance_uid,
            revision=claim.revision if revision is None else revision,
            analysed_at=time.time() if analysed_at is None else analysed_at, outcome=outcome,
            inputs=inputs(**strata), probability=0.9 if flagged else 0.1 if analysed else None,
            threshold=0.5, flagged=flagged if analysed else None, ood_score=0.3)])

    def verdict(self, claim: Claim, verdict: Verdict) -> None:
        record_feedback(self.db, claim.study_instance_uid, detector="hemorrhage",
                        verdict=verdict, user="rad")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0)


@pytest.fixture
def site(db: Database, settings: Settings, tmp_path: Path) -> Site:
    return Site(db, settings, tmp_path)


def rows_of(rows: list[PerformanceRow], stratum: str = "overall") -> dict[str, PerformanceRow]:
    return {r.value: r for r in rows if r.stratum == stratum}


# --- Wilson ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # Newcombe, Statist. Med. 1998;17:857-872, Table I, method 3 (Wilson score, no correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_matches_published_values(k: int, n: int, low: float,
                                                  high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_refuses_impossible_counts() -> None:
    for k, n in ((0, 0), (3, 2), (-1, 5)):
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)


# --- PPV from feedback -----------------------------------------------------------------------

def test_ppv_counts_the_newest_verdict_on_flagged_findings_and_leaves_out_unsure(
    site: Site, settings: Settings
) -> None:
    changed = site.analysed_study(flagged=True, vendor="GE", age="<40")
    agreed = site.analysed_study(flagged=True, vendor="GE", age=">=65")
    rejected = site.analysed_study(flagged=True, vendor="SIEMENS", age=">=65")
    unsure = site.analysed_study(flagged=True, vendor="SIEMENS")
    negative = site.analysed_study(flagged=False)
    no_record = site.analysed_study(flagged=True, record=None)  # worker stored no analysis
    site.verdict(changed, Verdict.DISAGREE)
    site.verdict(changed, Verdict.AGREE)  # changed her mind: only this one counts
    site.verdict(agreed, Verdict.AGREE)
    site.verdict(agreed, Verdict.AGREE)  # clicked twice: counts once
    site.verdict(rejected, Verdict.DISAGREE)
    site.verdict(unsure, Verdict.UNSURE)
    site.verdict(negative, Verdict.DISAGREE)  # not a flagged finding: not in the PPV
    site.verdict(no_record, Verdict.AGREE)
    analyses.publish_model(site.db, "hemorrhage", "0.1.0", CARD, time.time())

    rows = live_performance(site.db, settings)
    overall = rows_of(rows)["all"]
    assert (overall.detector, overall.model_version) == ("hemorrhage", "0.1.0")
    assert (overall.n_verdicts, overall.n_agree, overall.n_unsure) == (4, 3, 1)
    assert overall.ppv == pytest.approx(3 / 4)
    assert overall.ppv_ci == pytest.approx(wilson_interval(3, 4))
    assert overall.card_ppv == 0.9
    assert not overall.alert and "4 of 10 verdicts needed" in overall.note
    assert overall.sensitivity is None and overall.sensitivity_ci is None
    vendor = rows_of(rows, "vendor")
    assert {v: (r.n_agree, r.n_verdicts) for v, r in vendor.items()} == {
        "GE": (2, 2), "SIEMENS": (0, 1), "unknown": (1, 1)}
    assert vendor["SIEMENS"].n_unsure == 1 and vendor["SIEMENS"].ppv == 0.0
    age = rows_of(rows, "age_band")
    assert {v: r.n_verdicts for v, r in age.items()} == {
        "<40": 1, ">=65": 2, "40-64": 0, "unknown": 1}
    assert rows[0].stratum == "overall"
    assert [r.stratum for r in rows[1:5]] == ["age_band"] * 4


# --- sensitivity and specificity from labels -------------------------------------------------

def test_sensitivity_and_specificity_use_the_labels_in_force_and_count_ood_apart(
    site: Site, settings: Settings
) -> None:
    found = site.analysed_study(flagged=True, sex="M")
    missed = site.analysed_study(flagged=True, sex="F")  # revision 1 flagged ...
    site.record(missed, flagged=False, revision=2, analysed_at=time.time() + 10,
                sex="F")  # ... the re-analysed revision 2 is not: a miss
    relabelled = site.analysed_study(flagged=True, sex="M")  # label changed to negative
    cleared = site.analysed_study(flagged=False, sex="F")
    ood = site.analysed_study(flagged=False, record=Outcome.OOD)
    ineligible = site.analysed_study(flagged=False, record=Outcome.NOT_ELIGIBLE)
    site.analysed_study(flagged=True)  # flagged but never labelled: not counted
    never_analysed = site.indexed_study()
    first = import_labels(site.db, [
        {"study_instance_uid": c.study_instance_uid, "detector": "hemorrhage",
         "positive": positive}
        for c, positive in ((found, True), (missed, "yes"), (relabelled, 1),
                            (cleared, "no"), (ood, True), (ineligible, "false"))
    ] + [{"study_instance_uid": never_analysed, "detector": "hemorrhage", "positive": True}],
        user="admin", source="report")
    assert (first.imported, first.errors) == (7, ())
    second = import_labels(site.db, [{"study_instance_uid": relabelled.study_instance_uid,
                                      "detector": "hemorrhage", "positive": "0"}],
                           user="admin", source="addendum")
    assert second.imported == 1

    rows = live_performance(site.db, settings)
    overall = rows_of(rows)["all"]
    assert (overall.n_labelled_positives, overall.n_detected) == (2, 1)
    assert overall.sensitivity == pytest.approx(0.5)
    assert overall.sensitivity_ci == pytest.approx(wilson_interval(1, 2))
    assert (overall.n_labelled_negatives, overall.n_true_negatives) == (2, 1)
    assert overall.specificity == pytest.approx(0.5)
    assert (overall.n_labelled_ood, overall.n_labelled_not_eligible) == (1, 1)
    assert overall.n_verdicts == 0 and overall.ppv is None
    assert "no model card PPV known" in overall.note and not overall.alert
    sex = rows_of(rows, "sex")
    assert (sex["M"].n_labelled_positives, sex["M"].n_labelled_negatives) == (1, 1)
    assert (sex["F"].n_labelled_positives, sex["F"].n_detected) == (1, 0)


# --- the alert -------------------------------------------------------------------------------

def test_alert_fires_only_below_card_minus_margin_with_enough_verdicts(
    site: Site, settings: Settings
) -> None:
    client = TestClient(create_app(settings, site.db))
    verdicts = [("GE", "agree")] * 6 + [("GE", "disagree")] * 4 + [("SIEMENS", "disagree")] * 3
    for vendor, verdict in verdicts:
        claim = site.analysed_study(flagged=True, vendor=vendor)
        posted = client.post(f"/api/studies/{claim.study_instance_uid}/feedback",
                             json={"detector": "hemorrhage", "verdict": verdict})
        assert posted.status_code == 201, posted.text

    def alerts(**overrides: Any) -> dict[tuple[str, str], bool]:
        custom = settings.model_copy(update=overrides)
        return {(r.stratum, r.value): r.alert for r in live_performance(site.db, custom)
                if r.stratum in ("overall", "vendor")}

    # no card published yet: no alert, and the rows say why
    assert not any(alerts().values())
    assert all("no model card PPV known" in r.note for r in live_performance(site.db, settings))
    analyses.publish_model(site.db, "hemorrhage", "0.2.0", CARD, time.time())
    assert not any(alerts().values())  # the card is of another version
    analyses.publish_model(site.db, "hemorrhage", "0.1.0", CARD, time.time())
    # card 0.90, margin 0.10: overall 6/13 (lower 0.232) and GE 6/10 (lower 0.313) alert;
    # SIEMENS 0/3 is far below too but has fewer than 10 verdicts
    assert alerts() == {("overall", "all"): True, ("vendor", "GE"): True,
                        ("vendor", "SIEMENS"): False}
    # card - margin = 0.28 lies between the two lower bounds: only overall alerts
    assert alerts(ppv_alert_margin=0.62) == {("overall", "all"): True,
                                             ("vendor", "GE"): False,
                                             ("vendor", "SIEMENS"): False}
    assert not any(alerts(ppv_min_feedback=14).values())
    body = client.get("/api/performance").json()
    assert "not a diagnosis" in body["notice"] and body["ppv_min_feedback"] == 10
    overall = next(r for r in body["rows"] if r["stratum"] == "overall")
    assert overall["alert"] is True and overall["card_ppv"] == 0.9
    assert overall["ppv_ci"][0] == pytest.approx(wilson_interval(6, 13)[0])
    assert "more than 10 points below" in overall["note"]


def test_expected_ppv_follows_the_prevalence_a_flag_rate_implies() -> None:
    # sens 0.9, spec 0.95, prevalence 10 %: flags 0.09 + 0.045 = 0.135 of studies, PPV 2/3
    assert expected_ppv(0.135, 0.9, 0.95) == pytest.approx(2 / 3)
    assert expected_ppv(0.05, 0.9, 0.95) == 0.0  # no more flags than false positives alone
    assert expected_ppv(0.0, 0.9, 0.95) is None
    assert expected_ppv(0.2, 0.04, 0.95) is None  # an operating point that cannot tell
    assert expected_ppv(0.95, 0.9, 0.95) == pytest.approx(0.9 / 0.95)  # prevalence clipped


def test_alert_can_compare_with_the_ppv_expected_at_the_site_prevalence(
    site: Site, settings: Settings
) -> None:
    """A low-prevalence site: PPV 5/10 is far below the card's 0.90 (synthetic prevalence), but
    what the card's operating point predicts at this site's flag rate."""
    for verdict in [Verdict.AGREE] * 5 + [Verdict.DISAGREE] * 5:
        site.verdict(site.analysed_study(flagged=True), verdict)
    now = time.time()
    analyses.record(site.db, [AnalysisRecord(
        job_id=str(uuid.uuid4()), detector="hemorrhage", model_version="0.1.0",
        study_instance_uid=f"2.25.{i}", series_instance_uid=f"2.25.{i}.1", revision=1,
        analysed_at=now, outcome=Outcome.ANALYSED, inputs=inputs(), probability=0.1,
        threshold=0.5, flagged=False) for i in range(140)])
    analyses.publish_model(site.db, "hemorrhage", "0.1.0", CARD, now)

    overall = rows_of(live_performance(site.db, settings))["all"]
    assert (overall.n_analysed, overall.flag_rate) == (150, pytest.approx(10 / 150))
    # prevalence (1/15 - 0.05) / 0.85 = 0.0196; PPV 0.9 * 0.0196 / (1/15) = 0.265
    assert overall.expected_ppv == pytest.approx(0.2647, abs=1e-3)
    assert overall.alert  # default: against the card's 0.90
    site_rows = live_performance(site.db, settings.model_copy(
        update={"ppv_alert_reference": "site_prevalence"}))
    overall = rows_of(site_rows)["all"]
    assert not overall.alert, overall.note
    assert "expected at this population's flag rate 26.5%" in overall.note
    # old analyses do not count towards the flag rate
    old = time.time() - 91 * 86400
    analyses.record(site.db, [AnalysisRecord(
        job_id=str(uuid.uuid4()), detector="hemorrhage", model_version="0.1.0",
        study_instance_uid=f"2.25.9{i}", series_instance_uid=f"2.25.9{i}.1", revision=1,
        analysed_at=old, outcome=Outcome.ANALYSED, inputs=inputs(), probability=0.9,
        threshold=0.5, flagged=True) for i in range(50)])
    assert rows_of(live_performance(site.db, settings))["all"].n_analysed == 150


# --- label import ----------------------------------------------------------------------------

def test_read_labels_csv_keeps_line_numbers_and_accepts_excel_exports() -> None:
    text = ("\ufeffStudy_Instance_UID;detector;positive;comment\r\n1.2.3;hemorrhage;yes;x\r\n"
            "\r\n1.2.4;stroke;0\r\n")
    assert read_labels_csv(text) == [
        (2, {"study_instance_uid": "1.2.3", "detector": "hemorrhage", "positive": "yes",
             "comment": "x"}),
        (4, {"study_instance_uid": "1.2.4", "detector": "stroke", "positive": "0",
             "comment": ""}),
    ]


def _basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_label_csv_import_over_http_keeps_good_lines_reports_bad_ones_and_is_idempotent(
    site: Site, settings: Settings
) -> None:
    secured = settings.model_copy(update={"web_auth": "required"})
    users = UserDirectory({"ada": ("admin", hash_password("admin-password")),
                           "rad": ("radiologist", hash_password("radiologist-pw"))})
    client = TestClient(create_app(secured, site.db, users=users))
    admin, radiologist = _basic("ada", "admin-password"), _basic("rad", "radiologist-pw")
    positive = site.analysed_study(flagged=True)
    negative = site.analysed_study(flagged=True)
    csv_text = "\n".join([
        "study_instance_uid,detector,positive",
        f"{positive.study_instance_uid},hemorrhage,yes",
        f"{negative.study_instance_uid},hemorrhage,0",
        "1.2.826.0.1.999,hemorrhage,true",  # line 4: not in the index
        f"{positive.study_instance_uid},spleen,1",  # line 5: unknown detector
        f"{negative.study_instance_uid},hemorrhage,maybe",  # line 6: not a boolean
        ",hemorrhage,1",  # line 7: no study
        "",
    ])
    files = {"file": ("labels.csv", csv_text.encode(), "text/csv")}

    got = client.post("/api/labels/csv", files=files, headers=admin)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["imported"], body["unchanged"]) == (2, 0)
    assert [(e["line"], e["message"]) for e in body["errors"]] == [
        (4, "study not in the index"), (5, "unknown detector 'spleen'"),
        (6, "positive must be true/false, 1/0 or yes/no"),
        (7, "study_instance_uid missing or longer than 64")]
    again = client.post("/api/labels/csv", files=files, headers=admin).json()
    assert (again["imported"], again["unchanged"]) == (0, 2)
    raw = client.post("/api/labels/csv", params={"source": "csv:labels.csv"},
                      content=csv_text.encode(), headers={**admin, "Content-Type": "text/csv"})
    assert (raw.json()["imported"], raw.json()["unchanged"]) == (0, 2)
    with site.db.read() as conn:
        stored = conn.execute(sa.select(labels.c.positive, labels.c.source, labels.c.user)
                              .order_by(labels.c.label_id)).all()
    assert [tuple(r) for r in stored] == [(True, "csv:labels.csv", "ada"),
                                          (False, "csv:labels.csv", "ada")]

    # the JSON variant, and the labels show up as sensitivity / specificity
    listed = client.post("/api/labels", headers=admin, json=[
        {"study_instance_uid": positive.study_instance_uid, "detector": "hemorrhage",
         "positive": True},
        {"study_instance_uid": negative.study_instance_uid, "detector": "hemorrhage",
         "positive": 2}])
    assert listed.status_code == 200
    assert listed.json()["imported"] == 1  # new source "api": a new row, same value
    assert [e["line"] for e in listed.json()["errors"]] == [2]
    perf = client.get("/api/performance", headers=radiologist).json()
    overall = next(r for r in perf["rows"] if r["stratum"] == "overall")
    assert (overall["n_labelled_positives"], overall["n_detected"]) == (1, 1)
    assert (overall["n_labelled_negatives"], overall["n_true_negatives"]) == (1, 0)

    # whole-request errors
    assert client.post("/api/labels/csv", files=files, headers=radiologist).status_code == 403
    assert client.post("/api/labels", json=[], headers=radiologist).status_code == 403
    assert client.post("/api/labels/csv", files=files).status_code == 401
    bad_header = client.post("/api/labels/csv", content=b"uid,label\n1.2,1\n",
                             headers={**admin, "Content-Type": "text/csv"})
    assert bad_header.status_code == 400 and "missing: study_instance_uid" in bad_header.text
    latin1 = client.post("/api/labels/csv", content="study_instance_uid,detector,positive\n"
                         "1.2,h\xe9,1\n".encode("latin-1"),
                         headers={**admin, "Content-Type": "text/csv"})
    assert latin1.status_code == 400 and "UTF-8" in latin1.text
    wrong_field = client.post("/api/labels/csv", files={"upload": ("l.csv", b"x", "text/csv")},
                              headers=admin)
    assert wrong_field.status_code == 400
    assert client.post("/api/labels", json={"not": "a list"}, headers=admin).status_code == 422
    paths = client.get("/openapi.json", headers=admin).json()["paths"]
    assert {"/api/performance", "/api/labels", "/api/labels/csv"} <= set(paths)
    assert "multipart/form-data" in paths["/api/labels/csv"]["post"]["requestBody"]["content"]
    login = client.get("/performance", follow_redirects=False)
    assert (login.status_code, login.headers["location"]) == (303, "/login")


# --- speed -----------------------------------------------------------------------------------

def test_live_performance_of_ten_thousand_verdicts_is_fast(
    db: Database, settings: Settings
) -> None:
    """10,000 verdicts (bulk-inserted) must take well under a second; a query plan that
    scans a table once per verdict took ~40 s here."""
    rows_a, rows_f = [], []
    for i in range(10_000):
        vendor = ("GE", "SIEMENS", "PHILIPS")[i % 3]
        rows_a.append(AnalysisRecord(
            job_id=f"{i:036d}", detector="hemorrhage", model_version="0.1.0",
            study_instance_uid=f"1.2.{i}", series_instance_uid=f"1.3.{i}", revision=1,
            analysed_at=float(i), outcome=Outcome.ANALYSED, inputs=inputs(vendor=vendor),
            probability=0.9, threshold=0.5, flagged=True).row())
        rows_f.append({"study_instance_uid": f"1.2.{i}", "series_instance_uid": f"1.3.{i}",
                       "detector": "hemorrhage", "model_version": "0.1.0", "revision": 1,
                       "ai_flagged": True, "ai_probability": 0.9,
                       "verdict": ("agree", "agree", "disagree", "unsure")[i % 4],
                       "comment": None, "user": "rad", "created_at": float(i)})
    with db.write() as conn:
        conn.execute(analyses_table.insert(), rows_a)
        conn.execute(feedback.insert(), rows_f)
    live_performance(db, settings)  # warm the connection pool
    started = time.perf_counter()
    rows = live_performance(db, settings)
    elapsed = time.perf_counter() - started
    overall = rows_of(rows)["all"]
    assert (overall.n_verdicts, overall.n_agree, overall.n_unsure) == (7500, 5000, 2500)
    assert rows_of(rows, "vendor")["GE"].n_verdicts + rows_of(rows, "vendor")[
        "SIEMENS"].n_verdicts + rows_of(rows, "vendor")["PHILIPS"].n_verdicts == 7500
    assert elapsed < 1.0, f"live_performance took {elapsed:.3f} s for 10,000 verdicts"


# --- the page --------------------------------------------------------------------------------

def test_performance_page_shows_ppv_and_is_linked_from_the_worklist(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    from tests.test_web_ui import CHROMEDRIVER, CHROMIUM

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian packages chromium and chromium-driver are needed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = free_port()
    settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0, web_port=port)
    db = Database(settings.db_url)
    db.create_schema()
    site = Site(db, settings, tmp_path)
    for verdict in (Verdict.AGREE, Verdict.AGREE, Verdict.DISAGREE):
        site.verdict(site.analysed_study(flagged=True, vendor="GE"), verdict)
    analyses.publish_model(db, "hemorrhage", "0.1.0", CARD, time.time())
    env = {**settings.to_env(), "TRIAGE_BROKER_URL": "redis://127.0.0.1:1/0"}
    web = spawn("web", triage_argv("web"), env)
    web.wait_output("Uvicorn running", 30)

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "nav-performance").click()
        wait_for(lambda: driver.find_elements(
            By.CSS_SELECTOR, "section[data-detector=hemorrhage] .metric.ppv"), 20,
            what="the PPV of hemorrhage")
        ppv = driver.find_element(By.CSS_SELECTOR, "section[data-detector=hemorrhage] .ppv")
        assert "PPV 66.7%" in ppv.text and "3 verdicts" in ppv.text
        assert "not a diagnosis" in driver.find_element(By.ID, "notice").text
        vendor = driver.find_element(By.CSS_SELECTOR, "tr[data-stratum=vendor][data-value=GE]")
        assert "66.7%" in vendor.text and "verdicts needed" in vendor.text

        # new verdicts arrive: the page updates by itself (live), here to an alert
        for _ in range(7):
            site.verdict(site.analysed_study(flagged=True, vendor="GE"), Verdict.DISAGREE)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "tr.alert[data-stratum=vendor]"),
                 20, what="the vendor stratum alert")
        assert "ALERT" in driver.find_element(By.CSS_SELECTOR, ".banner").text
    finally:
        driver.quit()
        db.dispose()
