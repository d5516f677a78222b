"""Login off loopback: users file, password hashes, session cookies, HTTP Basic."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from triage.api import create_app
from triage.auth import (
    SessionSigner,
    User,
    UserDirectory,
    add_user,
    hash_password,
    verify_password,
)
from triage.config import Settings, load_settings
from triage.db import Database
from triage.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def exposed(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0, web_host="0.0.0.0")


def test_password_hashes_verify_and_reject() -> None:
    users = UserDirectory({"a": ("admin", hash_password("correct horse"))})
    assert users.authenticate("a", "correct horse") == User("a", "admin")
    assert users.authenticate("a", "wrong horse!") is None
    assert users.authenticate("nobody", "correct horse") is None
    assert not verify_password("x", "not-a-hash")


def test_session_tokens_are_signed_and_expire() -> None:
    signer = SessionSigner(b"k" * 32, max_age_s=60)
    token = signer.issue(User("dr.a", "radiologist"), now=1000)
    assert signer.verify(token, now=1030) == User("dr.a", "radiologist")
    assert signer.verify(token, now=1061) is None
    forged = token.replace("radiologist", "admin")
    assert signer.verify(forged, now=1030) is None
    assert SessionSigner(b"o" * 32).verify(token, now=1030) is None


def test_web_refuses_to_start_off_loopback_without_users(exposed: Settings,
                                                         sqlite_db: Database) -> None:
    with pytest.raises(ConfigError, match="triage users add"):
        create_app(exposed, sqlite_db)


def test_users_add_command_writes_a_private_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = subprocess.run([sys.executable, "-m", "triage", "users", "add", "dr.a", "--role",
                          "radiologist", "--password-stdin", "--data-dir", str(data)],
                         input="a long passphrase\n", capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    path = data / "users.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "a long passphrase" not in path.read_text()
    assert UserDirectory.load(path).authenticate("dr.a", "a long passphrase") == User(
        "dr.a", "radiologist")
    short = subprocess.run([sys.executable, "-m", "triage", "users", "add", "x",
                            "--password-stdin", "--data-dir", str(data)], input="short\n",
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert short.returncode == 2 and "10 characters" in short.stderr


def test_login_is_required_off_loopback(exposed: Settings, sqlite_db: Database) -> None:
    assert exposed.users_file is not None
    add_user(exposed.users_file, "dr.a", "radiologist", "a long passphrase")
    client = TestClient(create_app(exposed, sqlite_db))
    assert client.get("/healthz").status_code == 200  # probes stay open
    refused = client.get("/api/worklist")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Basic realm="triage"'
    # the page's own polls get a challenge no browser answers with its password dialog
    polled = client.get("/api/worklist", headers={"Sec-Fetch-Mode": "cors"})
    assert polled.headers["www-authenticate"] == 'Session realm="triage"'
    page = client.get("/", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/login")
    assert client.post("/login", data={"username": "dr.a", "password": "nope"}
                       ).status_code == 401
    login = client.post("/login", data={"username": "dr.a", "password": "a long passphrase"},
                        follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/worklist").status_code == 200
    assert client.get("/api/session").json() == {"user": "dr.a", "role": "radiologist",
                                                 "login_required": True}
    assert client.get("/").status_code == 200
    # API clients: HTTP Basic
    other = TestClient(create_app(exposed, sqlite_db))
    assert other.get("/api/worklist", auth=("dr.a", "a long passphrase")).status_code == 200
    assert other.get("/api/worklist", auth=("dr.a", "wrong")).status_code == 401
    other.cookies.set("triage_session", "dr.a|admin|99999999999|forged")
    assert other.get("/api/worklist").status_code == 401


def test_loopback_needs_no_login(tmp_path: Path, sqlite_db: Database) -> None:
    settings = load_settings(data_dir=tmp_path / "data", spool_min_free_mb=0)
    client = TestClient(create_app(settings, sqlite_db))
    assert client.get("/api/worklist").status_code == 200
    assert client.get("/api/session").json() == {"user": "local", "role": "admin",
                                                 "login_required": False}
