"""Process supervisor behind `triage up`: runs the service processes and restarts crashed ones."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from urllib.parse import urlsplit

import redis

from triage.config import Settings
from triage.errors import ConfigError

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PR_SET_PDEATHSIG = 1


@dataclass
class ChildSpec:
    """A process to run: its command, environment and optional readiness probe."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 30.0


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    starts: deque[float] = field(default_factory=lambda: deque(maxlen=5))


def broker_reachable(url: str, *, timeout_s: float = 1.0) -> bool:
    """True when a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def private_redis(settings: Settings) -> ChildSpec | None:
    """A redis-server child for ``broker_url`` when nothing answers there, else ``None``.

    Raises
    ------
    ConfigError
        The broker is unreachable and a private one cannot be started (not a loopback
        URL, autostart disabled, or no redis-server binary).
    """
    url = settings.broker_url
    if broker_reachable(url):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    binary = shutil.which("redis-server")
    if not settings.redis_autostart or host not in _LOOPBACK or binary is None:
        why = (
            "autostart is off" if not settings.redis_autostart
            else "it is not on this host" if host not in _LOOPBACK
            else "redis-server is not installed (apt-get install redis-server)"
        )
        raise ConfigError(f"no Redis answers at {url} and a private one cannot start: {why}")
    data = settings.data_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--maxmemory-policy", "noeviction", "--protected-mode", "yes", "--daemonize", "no",
    ]
    return ChildSpec("redis", argv, dict(os.environ), ready=lambda: broker_reachable(url),
                     ready_timeout_s=15.0)


def service_children(settings: Settings) -> list[ChildSpec]:
    """The listener (with the sweeper), one Celery worker, the web process and, when
    destinations are configured, the outputs process."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("TRIAGE_CONFIG_FILE", None)  # everything is already resolved into env
    python = sys.executable
    worker = [
        python, "-m", "celery", "-A", "workers.app", "worker",
        "-Q", "stat,routine", "-c", str(settings.worker_concurrency), "--pool", "prefork",
        "-n", f"triage-{uuid.uuid4().hex[:8]}@%h", "-l", settings.log_level,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    children = [
        ChildSpec("listener", [python, "-m", "triage", "listen"], env),
        ChildSpec("worker", worker, env),
        ChildSpec("web", [python, "-m", "triage", "web"], env),
    ]
    if settings.destinations:
        children.append(ChildSpec("outputs", [python, "-m", "triage", "outputs"], env))
    return children


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Supervisor:
    """Starts children in order, restarts crashed ones, stops them in reverse order.

    A child that crashes more than 5 times within a minute stops the whole service
    (exit status 1), so that systemd or the operator sees the failure.
    """

    def __init__(self, specs: Sequence[ChildSpec], *, stop_timeout_s: float = 20.0) -> None:
        self.specs = list(specs)
        self.stop_timeout_s = stop_timeout_s
        self._children: list[_Child] = []
        self._stopping = False

    def _spawn(self, spec: ChildSpec) -> subprocess.Popen[bytes]:
        logger.info("Starting %s", spec.name)
        # preexec_fn is safe here: the supervisor runs no other threads.
        return subprocess.Popen(
            spec.argv, env=spec.env, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("Received %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def run(self) -> int:
        """Run until a signal arrives or a child keeps crashing; returns the exit status."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            for spec in self.specs:
                child = _Child(spec, self._spawn(spec))
                child.starts.append(time.monotonic())
                self._children.append(child)
                if spec.ready is not None and not self._wait_ready(child):
                    logger.error("%s did not become ready", spec.name)
                    return 1
            return self._watch()
        finally:
            self._stop_all()

    def _wait_ready(self, child: _Child) -> bool:
        deadline = time.monotonic() + child.spec.ready_timeout_s
        while time.monotonic() < deadline and not self._stopping:
            if child.proc.poll() is not None:
                return False
            if child.spec.ready is not None and child.spec.ready():
                return True
            time.sleep(0.1)
        return False

    def _watch(self) -> int:
        while not self._stopping:
            time.sleep(0.5)
            for child in self._children:
                code = child.proc.poll()
                if code is None or self._stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in child.starts if now - t < 60]
                if len(recent) >= 5:
                    logger.error("%s exited with status %s and keeps crashing; stopping",
                                 child.spec.name, code)
                    return 1
                delay = 2 ** (len(recent) - 1)
                logger.error("%s exited with status %s; restarting in %d s", child.spec.name,
                             code, delay)
                time.sleep(delay)
                child.proc = self._spawn(child.spec)
                child.starts.append(time.monotonic())
        return 0

    def _stop_all(self) -> None:
        for child in reversed(self._children):
            if child.proc.poll() is None:
                logger.info("Stopping %s", child.spec.name)
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in time; killing it", child.spec.name)
                    child.proc.kill()
                    child.proc.wait()
