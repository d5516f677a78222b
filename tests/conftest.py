"""Shared fixtures: real Redis, real PostgreSQL, real listeners on ephemeral ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.config
import pytest
import redis
import sqlalchemy as sa
from pynetdicom import AE

from triage.association import connection_handlers
from triage.config import Settings, load_settings
from triage.db import Database
from triage.listener import Listener
from triage.store import Store

POSTGRES_URL = os.environ.get(
    "TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> None:
    # Everything the tests write must be valid DICOM (highdicom's convention).
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TRIAGE_") and key != "TRIAGE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- Redis -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the test session (the machine's own one is left alone)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is required for the tests (make test installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(data), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(up, 10, what="redis-server")
    yield url
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def broker_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    yield redis_server
    client.flushall()
    client.close()


# --- index database ----------------------------------------------------------------------------

def _postgres_schema_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A private schema in the PostgreSQL that runs on this machine, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield _postgres_schema_url(schema)
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index database, once on SQLite (WAL) and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (mounting needs root, as on CI and `make test`)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


# --- settings, store, listener -----------------------------------------------------------------

@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "dicom_port": 0,
            "spool_min_free_mb": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def store(db: Database, tmp_path: Path) -> Store:
    return Store(tmp_path / "spool", db)


@dataclass
class RunningListener:
    host: str
    port: int
    settings: Settings
    store: Store
    db: Database
    listener: Listener


@pytest.fixture
def start_listener(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., RunningListener]]:
    """Start real listeners on 127.0.0.1 with ephemeral ports; all stopped at teardown."""
    running: list[RunningListener] = []

    def start(db: Database, *, spool_dir: Path | None = None, min_free_bytes: int = 0,
              **overrides: Any) -> RunningListener:
        settings = make_settings(**overrides)
        store = Store(spool_dir or settings.spool, db, min_free_bytes=min_free_bytes)
        listener = Listener(settings, store)
        host, port = listener.start()
        item = RunningListener(host, port, settings, store, db, listener)
        running.append(item)
        return item

    yield start
    for item in running:
        item.listener.stop()


# --- subprocesses ------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}):\n"
                                     f"{self.output()[-4000:]}")
            return False

        wait_for(seen, timeout, what=f"{text!r} from {self.name}")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a child process with its output in a log file; killed at teardown."""
    procs: list[Proc] = []

    def start(name: str, argv: list[str], env: dict[str, str], *,
              new_session: bool = True) -> Proc:
        log = tmp_path / f"{name}-{len(procs)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        with log.open("wb") as fh:
            popen = subprocess.Popen(argv, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=REPO, start_new_session=new_session)
        proc = Proc(name, popen, log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, 9)
            proc.popen.kill()
        proc.popen.wait(10)


def triage_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "triage", *args]


def worker_argv(name: str = "test") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "stat,routine",
        "-c", "1", "--pool", "prefork", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
    ]


def orthanc_namespace_problem() -> str | None:
    """Why Orthanc cannot run in a private network namespace here, or None."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package orthanc)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is missing"
    if os.geteuid() != 0:
        return "a private network namespace for Orthanc needs root (unshare -n)"
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if done.returncode != 0:
        return f"unshare -n is not permitted here: {done.stderr.decode().strip()}"
    return None


class TestAE(AE):
    """A pynetdicom AE for test clients: every association gets triage's connection handlers.

    Bare pynetdicom requestors can lose a fast response under load (the reactor takes it off
    the queue and drops it, the request then waits out the DIMSE timeout) and leave a reset
    socket to the garbage collector; see ``triage/association.py``.  Tests that show
    pynetdicom's own behaviour (``tests/test_association.py``) use :class:`pynetdicom.AE`.
    """

    __test__ = False  # not a test class for pytest

    def associate(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["evt_handlers"] = [*connection_handlers(), *(kwargs.get("evt_handlers") or [])]
        return super().associate(*args, **kwargs)
