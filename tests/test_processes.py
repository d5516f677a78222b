"""Whole processes as a user runs them: `triage up`, `triage listen` restarts, send/echo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests.conftest import Proc, RunningListener, TestAE, free_port, triage_argv, wait_for
from tests.dicom_factory import series_uids, write_series
from tests.synthetic_studies import write_head_study
from triage.db import Database, jobs, series

pytestmark = pytest.mark.integration

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def http_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_triage_up_runs_the_whole_service_with_a_private_redis(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    dicom_port, web_port, redis_port = free_port(), free_port(), free_port()
    env = {
        "TRIAGE_DATA_DIR": str(tmp_path / "var"),
        "TRIAGE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",  # nothing answers there
        "TRIAGE_STABLE_AGE_S": "3",
        "TRIAGE_SPOOL_MIN_FREE_MB": "0",
    }
    up = spawn("up", triage_argv("up", "--port", str(dicom_port), "--web-port", str(web_port)),
               env)
    base = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: (r := http_json(f"{base}/readyz")) and r["ready"], 60,
             what="readyz")  # the private Redis answers
    up.wait_output("ready.", 60)  # the worker
    assert (tmp_path / "var" / "redis").is_dir()
    paths = write_head_study(tmp_path / "head", hemorrhage=True)
    sent = subprocess.run(["storescu", "-aec", "TRIAGE", "+sd", "+sp", "*.dcm", "127.0.0.1",
                           str(dicom_port), str(tmp_path / "head")], env=DCMTK_ENV,
                          capture_output=True, timeout=60)
    assert sent.returncode == 0, sent.stderr

    def flagged() -> Any:
        body = http_json(f"{base}/api/worklist")
        return body and body["studies"] and body["studies"][0]["state"] == "FLAGGED" and body

    body = wait_for(flagged, 120, interval=0.5, what="study flagged")
    (study,) = body["studies"]
    assert study["study_instance_uid"] == series_uids(paths)[0]
    assert study["priority"] == "HIGH"
    (item,) = study["series"]
    assert item["ready_trigger"] == "release"
    top = study["findings"][0]
    assert top["detector"] == "hemorrhage" and top["flagged"]
    with urllib.request.urlopen(base + top["preview"], timeout=10) as response:
        assert response.headers["content-type"] == "image/png"
    # The supervisor stops everything on SIGTERM and exits cleanly.
    up.popen.send_signal(signal.SIGTERM)
    assert up.popen.wait(60) == 0
    assert http_json(f"{base}/healthz") is None
    log = up.output()
    assert "Stopping listener" in log and "Stopping redis" in log


def test_listener_restart_in_the_middle_of_a_series_loses_nothing(
    spawn: Callable[..., Proc], tmp_path: Path, broker_url: str
) -> None:
    port = free_port()
    env = {
        "TRIAGE_DATA_DIR": str(tmp_path / "var"),
        "TRIAGE_BROKER_URL": broker_url,
        "TRIAGE_DICOM_PORT": str(port),
        "TRIAGE_STABLE_AGE_S": "6",
        "TRIAGE_RELEASE_GRACE_S": "1",
        "TRIAGE_SPOOL_MIN_FREE_MB": "0",
    }
    paths = write_series(tmp_path / "src", 20)
    ae = TestAE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])

    first = spawn("listen", triage_argv("listen"), env)
    first.wait_output("DICOM listener")
    # The connection is reset by the crash: TestAE's handlers close the client's socket then
    # (pynetdicom alone leaves it to the garbage collector, see tests/test_association.py).
    assoc = ae.associate("127.0.0.1", port)
    assert [assoc.send_c_store(dcmread(p)).Status for p in paths[:10]] == [0] * 10
    os.killpg(first.popen.pid, signal.SIGKILL)  # crash mid-series, association still open
    first.popen.wait(10)
    assoc.abort()

    second = spawn("listen", triage_argv("listen"), env)
    second.wait_output("DICOM listener")
    assoc = ae.associate("127.0.0.1", port)
    assert [assoc.send_c_store(dcmread(p)).Status for p in paths[10:]] == [0] * 10
    assoc.release()

    db = Database(f"sqlite:///{tmp_path / 'var' / 'index.sqlite3'}")
    uid = series_uids(paths)[1]

    def published() -> Any:
        with db.read() as conn:
            return conn.execute(sa.select(jobs).where(jobs.c.state == "PUBLISHED")).all()

    (job,) = wait_for(published, 30, what="job published")
    time.sleep(8)  # past the quiet timer: nothing fires twice
    with db.read() as conn:
        row = conn.execute(sa.select(series).where(series.c.series_instance_uid == uid)).one()
        all_jobs = conn.execute(sa.select(jobs)).all()
    assert (row.instance_count, row.revision, row.state) == (20, 1, "READY")
    assert row.ready_trigger == "release"
    assert len(all_jobs) == 1 and job.revision == 1
    spool = tmp_path / "var" / "spool" / series_uids(paths)[0] / uid
    assert len(list(spool.glob("*.dcm"))) == 20
    db.dispose()


def test_send_and_echo_commands(start_listener: Callable[..., RunningListener],
                                sqlite_db: Database, tmp_path: Path) -> None:
    running = start_listener(sqlite_db)
    write_series(tmp_path / "in" / "a", 5)
    write_series(tmp_path / "in" / "b", 3)
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    port = str(running.port)
    sent = subprocess.run([*triage_argv("send", "--port", port, str(tmp_path / "in"))],
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "8 sent, 0 failed, 1 skipped" in sent.stdout
    assert "notes.txt: not a DICOM Part 10 file" in sent.stderr
    echo = subprocess.run(triage_argv("echo", "--port", port), capture_output=True, text=True,
                          timeout=30)
    assert echo.returncode == 0 and "0x0000" in echo.stdout
    closed = subprocess.run(triage_argv("echo", "--port", str(free_port())), capture_output=True,
                            text=True, timeout=60)
    assert closed.returncode == 1 and "not accepted" in closed.stderr


def test_send_reports_instances_the_receiver_cannot_store(
    start_listener: Callable[..., RunningListener], sqlite_db: Database, tmp_path: Path
) -> None:
    running = start_listener(sqlite_db, min_free_bytes=2**62)
    write_series(tmp_path / "in", 2)
    sent = subprocess.run(
        [*triage_argv("send", "--port", str(running.port), "--retries", "1", str(tmp_path / "in"))],
        capture_output=True, text=True, timeout=60,
    )
    assert sent.returncode == 1
    assert "0 sent, 2 failed" in sent.stdout
    assert "0xA700" in sent.stderr


def test_bad_configuration_exits_2_with_the_key(tmp_path: Path) -> None:
    result = subprocess.run(triage_argv("listen"), capture_output=True, text=True, timeout=30,
                            env={**os.environ, "TRIAGE_DICOM_PORT": "-5"})
    assert result.returncode == 2
    assert "TRIAGE_DICOM_PORT" in result.stderr


def test_rules_check_command(tmp_path: Path) -> None:
    ok = subprocess.run(triage_argv("rules", "check"), capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "head-ct-noncontrast" in ok.stdout
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [{name: a, match: {slices: {min: x}}, detectors: [d]}]")
    result = subprocess.run(triage_argv("rules", "check", str(bad)), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "slices" in result.stderr


def test_python_dash_m_matches_the_console_script() -> None:
    out = subprocess.run([sys.executable, "-m", "triage", "--version"], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.startswith("triage ")
