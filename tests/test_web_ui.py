"""The worklist page in a real headless Chromium against a real `triage web` process."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import Proc, free_port, triage_argv, wait_for
from tests.test_api import _result, analyse_staged, pipeline, stage
from triage import reports
from triage.auth import add_user
from triage.config import Settings, load_settings
from triage.db import Database
from triage.jobs import Claim

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian packages chromium and chromium-driver are needed (make test installs them)",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def start_web(spawn: Callable[..., Proc], settings: Settings) -> None:
    """`triage web` on ``settings.web_port``, serving; the page needs no broker."""
    env = {**settings.to_env(), "TRIAGE_BROKER_URL": "redis://127.0.0.1:1/0"}
    spawn("web", triage_argv("web"), env).wait_output("Uvicorn running", 30)


def test_flagged_study_rises_to_the_top_and_feedback_round_trips(
    spawn: Callable[..., Proc], browser: Any, tmp_path: Path
) -> None:

    driver = browser
    port = free_port()
    settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0, web_port=port)
    db = Database(settings.db_url)
    db.create_schema()
    store, ledger, assembler = pipeline(settings.spool, db)
    stage(store, tmp_path / "stat", 20, priority="STAT")
    stage(store, tmp_path / "old", 20)
    assembler.sweep(now=time.time() + 60)
    start_web(spawn, settings)

    driver.get(f"http://127.0.0.1:{port}/")

    def rows() -> list[Any]:
        return list(driver.find_elements(By.CSS_SELECTOR, "#rows tr"))

    def top_row() -> dict[str, str] | None:
        found: dict[str, str] | None = driver.execute_script(
            "const r = document.querySelector('#rows tr');"
            "return r && {study: r.dataset.study, state: r.dataset.state, text: r.innerText};")
        return found

    wait_for(lambda: len(rows()) == 2, 20, what="two rows")
    assert "not for diagnosis" in driver.find_element(By.ID, "notice").text

    # a hemorrhage is found on a new study: the page re-sorts it to the top by itself
    stage(store, tmp_path / "bleed", 20)
    (ready,) = [r for r in assembler.sweep(now=time.time() + 120) if r.job_id]
    claim = ledger.claim(str(ready.job_id), owner="w:1")
    assert isinstance(claim, Claim)
    ledger.complete(claim, _result(0.97, True))
    bleed_uid = str(dcmread(next((tmp_path / "bleed").glob("*.dcm"))).StudyInstanceUID)
    # read in one script: the page may re-render the rows between two WebDriver calls
    seen = wait_for(lambda: (t := top_row()) and t["study"] == bleed_uid and t, 20,
                    what="flagged study on top")
    assert seen["state"] == "FLAGGED"
    assert "HIGH" in seen["text"] and "intracranial hemorrhage 97%" in seen["text"]

    # feedback: comment + "disagree", stored through the API.  The page rebuilds the rows
    # when the list changes (not while an input has the focus): find the input afresh until
    # typing sticks.
    def type_comment() -> bool:
        try:
            rows()[0].find_element(By.CSS_SELECTOR, ".fb input").send_keys(
                "calcification, not blood")
        except StaleElementReferenceException:
            return False
        return True

    def comment_shown() -> str:
        value: str = driver.execute_script(
            "const i = document.querySelector('#rows tr .fb input'); return i && i.value;")
        return value

    wait_for(type_comment, 10, what="comment typed")
    # the radiologist leaves the field without sending; the list is then rebuilt (a filter
    # changed and changed back): the draft comment is still there, not lost
    driver.find_element(By.TAG_NAME, "h1").click()
    state = Select(driver.find_element(By.ID, "f-state"))
    state.select_by_visible_text("NO_FINDINGS")
    wait_for(lambda: len(rows()) == 0, 20, what="no NO_FINDINGS rows")
    state.select_by_index(0)  # "all"
    wait_for(lambda: len(rows()) == 3, 20, what="three rows again")
    assert comment_shown() == "calcification, not blood"
    # while nothing changes, the 2 s refreshes leave the rows in place (an element found
    # before two refreshes is still attached; a rebuilt table would make it stale)
    top = rows()[0]
    time.sleep(4.5)
    assert top.get_attribute("data-study") == bleed_uid
    driver.find_element(By.CSS_SELECTOR, "#rows tr button[data-verdict=disagree]").click()
    wait_for(lambda: "feedback recorded" in driver.find_element(By.ID, "note").text,
             10, what="feedback acknowledged")
    driver.get(f"http://127.0.0.1:{port}/api/studies/{bleed_uid}")
    body = driver.find_element(By.TAG_NAME, "body").text
    assert '"verdict":"disagree"' in body.replace(" ", "")
    assert "calcification, not blood" in body

    # the filter narrows the list to the flagged study
    driver.get(f"http://127.0.0.1:{port}/")
    wait_for(lambda: len(rows()) == 3, 20, what="three rows")
    Select(driver.find_element(By.ID, "f-finding")).select_by_value("hemorrhage")
    wait_for(lambda: len(rows()) == 1, 20, what="filtered to one row")

    # the live-performance page counts that verdict; both pages get the shared style
    driver.get(f"http://127.0.0.1:{port}/performance")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "section[data-detector=hemorrhage]"),
             20, what="hemorrhage section")
    assert "1 verdicts" in driver.find_element(By.CSS_SELECTOR, "section").text
    background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 20, 24)"

    db.dispose()


def test_sign_in_roles_and_an_admin_withdrawing_an_ai_result(
    spawn: Callable[..., Proc], browser: Any, tmp_path: Path
) -> None:
    driver = browser
    port = free_port()
    # login as off loopback, while the server itself stays on 127.0.0.1
    settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0, web_port=port,
                             web_auth="required")
    assert settings.users_file is not None
    add_user(settings.users_file, "dr.r", "radiologist", "radiologist passphrase")
    add_user(settings.users_file, "ada", "admin", "administrator passphrase")
    db = Database(settings.db_url)
    db.create_schema()
    store, ledger, assembler = pipeline(settings.spool, db)
    stage(store, tmp_path / "stat", 20, priority="STAT")
    stage(store, tmp_path / "bleed", 20)
    bleed_uid = analyse_staged(assembler, ledger, tmp_path, {
        "stat": _result(0.1, False), "bleed": _result(0.97, True)})["bleed"]
    start_web(spawn, settings)

    def sign_in(name: str, password: str) -> None:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: driver.find_elements(By.NAME, "username"), 20, what="login form")
        driver.find_element(By.NAME, "username").send_keys(name)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # read in one script: the login page may still be the one shown for a moment
        wait_for(lambda: name in driver.execute_script(
            "return document.getElementById('who')?.innerText || '';"), 20,
            what=f"{name} signed in")

    def rows() -> list[list[str]]:
        found: list[list[str]] = driver.execute_script(
            "return [...document.querySelectorAll('#rows tr')].map(r => [r.dataset.study,"
            " r.dataset.state, r.innerText]);")
        return found

    # a radiologist reads and gives feedback, but is offered no admin action
    sign_in("dr.r", "radiologist passphrase")
    assert "dr.r (radiologist)" in driver.find_element(By.ID, "who").text
    wait_for(lambda: len(rows()) == 2 and rows()[0][0] == bleed_uid, 20, what="flag on top")
    assert not driver.find_elements(By.CSS_SELECTOR, "button.withdraw")
    # ... and marks the flagged study reported: it no longer waits, so it goes below the
    # open STAT study (still listed, dimmed, with who reported it); reopened, it is back
    driver.find_element(By.CSS_SELECTOR, f"tr[data-study='{bleed_uid}'] button.read").click()
    wait_for(lambda: [r[0] for r in rows()][-1:] == [bleed_uid], 20, what="reported below")
    assert "reported by dr.r" in rows()[1][2]
    assert driver.find_element(By.CSS_SELECTOR, f"tr[data-study='{bleed_uid}']"
                               ).get_attribute("class") == "reported"
    driver.find_element(By.CSS_SELECTOR, f"tr[data-study='{bleed_uid}'] button.read").click()
    wait_for(lambda: rows()[0][0] == bleed_uid, 20, what="reopened on top")
    driver.find_element(By.ID, "sign-out").click()
    wait_for(lambda: driver.find_elements(By.NAME, "username"), 20, what="signed out")
    driver.get(f"http://127.0.0.1:{port}/")  # the session is gone
    wait_for(lambda: driver.find_elements(By.NAME, "username"), 20, what="login again")
    # a session that ends while the page is open (expiry, a restart with a new secret)
    # takes the page to the login form at its next poll
    sign_in("dr.r", "radiologist passphrase")
    driver.delete_all_cookies()
    wait_for(lambda: driver.find_elements(By.NAME, "username"), 20, what="back to login")

    # an admin withdraws the AI result from the page: the study stays listed, below the
    # STAT study now (LOW, as its UPS workitem), its finding struck through, not a flag
    sign_in("ada", "administrator passphrase")
    wait_for(lambda: len(rows()) == 2 and rows()[0][0] == bleed_uid, 20, what="flag on top")
    assert len(driver.find_elements(By.CSS_SELECTOR, "button.withdraw")) == 2  # both results

    def withdraw(reason: str) -> None:
        driver.find_element(By.CSS_SELECTOR,
                            f"tr[data-study='{bleed_uid}'] button.withdraw").click()
        prompt = WebDriverWait(driver, 10).until(expected_conditions.alert_is_present())
        prompt.send_keys(reason)
        prompt.accept()

    withdraw("x")  # too short: refused, and the page says why
    wait_for(lambda: "not withdrawn (422): String should have at least 3 characters"
             in driver.find_element(By.ID, "note").text, 20, what="refusal shown")
    withdraw("motion artefact")
    wait_for(lambda: "AI result withdrawn (report version 2)" in driver.find_element(
        By.ID, "note").text, 20, what="withdrawal acknowledged")
    wait_for(lambda: [r[0] for r in rows()][-1:] == [bleed_uid], 20, what="re-sorted")
    _, state, text = rows()[1]
    assert state == "NOT_ANALYSED" and "LOW" in text and "HIGH" not in text
    assert "intracranial hemorrhage 97% · withdrawn" in text and "⚑" not in text
    assert "AI result withdrawn by an admin: motion artefact" in text
    assert not driver.find_elements(  # nothing left to withdraw
        By.CSS_SELECTOR, f"tr[data-study='{bleed_uid}'] button.withdraw")
    history = reports.history(db, bleed_uid)
    assert [(r["status"], r["priority"]) for r in history] == [
        ("FINAL", "HIGH"), ("RETRACTED", "LOW")]
    db.dispose()
