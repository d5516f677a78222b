"""Composition root and command line: builds Settings and collaborators, wires them, runs them.

Commands: ``up`` (everything for one machine), ``listen``, ``web``, ``worker``, ``send``,
``echo``, ``demo``, ``rules check``; ``models …`` and ``analyze …`` run ``python -m models``
in a child process so that the service never imports torch.  Run ``triage COMMAND --help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from triage import __version__
from triage.config import Settings, load_settings
from triage.errors import ConfigError, TriageError

logger = logging.getLogger("triage")


def _quiet_pydicom() -> None:
    """Read tolerantly and never let pydicom log element values.

    pydicom's default reading validation warns with the offending value, which may be a
    patient name; the service only needs a handful of keys and checks those itself.
    """
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every PDU at INFO/DEBUG; keep it to warnings unless debugging.
    if settings.log_level != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        logger.info("Received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.is_set():
        stop.wait(1.0)


def _clean_incoming(incoming: Path, *, older_than_s: float = 3600.0) -> None:
    """Remove partial transfers left by a crash (the senders got no success for them)."""
    cutoff = time.time() - older_than_s
    for entry in incoming.iterdir():
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
        except OSError:
            continue


def _publisher(settings: Settings) -> Callable[[Any], None]:
    from workers.app import ANALYZE_SERIES, create_app

    celery_app = create_app(settings)
    policy = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

    def publish(message: Any) -> None:
        celery_app.send_task(
            ANALYZE_SERIES,
            args=[message.job_id],
            queue=message.queue.value,
            retry=True,
            retry_policy=policy,
        )

    return publish


def cmd_listen(settings: Settings) -> int:
    """DICOM listener plus the assembly sweeper (publishes the job outbox)."""
    from triage.assembly import Assembler, Sweeper
    from triage.counters import EventCounters
    from triage.db import Database
    from triage.jobs import JobLedger
    from triage.listener import Listener
    from triage.rules import load_rules
    from triage.store import Store

    rules = load_rules(settings.rules_file)
    _quiet_pydicom()
    db = Database(settings.db_url)
    db.create_schema()
    store = Store(settings.spool, db, min_free_bytes=settings.spool_min_free_mb * 2**20)
    _clean_incoming(store.incoming_dir)
    ledger = JobLedger.from_settings(db, settings)
    assembler = Assembler(
        db,
        rules,
        ledger,
        stable_age_s=settings.stable_age_s,
        release_grace_s=settings.release_grace_s,
        max_series_wait_s=settings.max_series_wait_s,
    )
    counters = EventCounters()  # flushed to the index DB by the listener, exported by `web`
    sweeper = Sweeper(assembler, ledger, _publisher(settings), interval_s=settings.sweep_interval_s,
                      counters=counters)
    listener = Listener(settings, store, on_stored=sweeper.wake, on_released=sweeper.wake,
                        counters=counters)
    try:
        listener.start()
    except OSError as exc:
        db.dispose()
        raise TriageError(
            f"cannot listen on {settings.dicom_host}:{settings.dicom_port}: {exc.strerror}"
        ) from exc
    sweeper.start()
    logger.info("Routing rules: %s (%d rules)", settings.rules_file, len(rules.rules))
    try:
        _wait_for_signal()
    finally:
        listener.stop()
        sweeper.stop()
        listener.flusher.flush_now(last=True)  # what the sweeper counted after the last flush
        db.dispose()
    return 0


def cmd_outputs(settings: Settings) -> int:
    """Flags back to the site: SR/KOS to PACS, HL7 ORU, the UPS SCP; retried, in order."""
    from triage.db import Database
    from triage.outputs.process import OutputsProcess

    db = Database(settings.db_url)
    db.create_schema()
    process = OutputsProcess(settings, db)
    try:
        process.start()
    except OSError as exc:
        db.dispose()
        raise TriageError(f"cannot start the UPS SCP on port {settings.ups_port}: "
                          f"{exc.strerror}") from exc
    try:
        _wait_for_signal()
    finally:
        process.stop()
        db.dispose()
    return 0


def cmd_web(settings: Settings) -> int:
    """The web process: worklist API, health and readiness."""
    import uvicorn

    from triage.api import create_app
    from triage.db import Database
    from triage.supervisor import broker_reachable

    db = Database(settings.db_url)
    db.create_schema()

    def check_broker() -> None:
        if not broker_reachable(settings.broker_url):
            raise ConnectionError("broker does not answer")

    app = create_app(settings, db, checks={"broker": check_broker})
    logger.info("Web UI and API on http://%s:%d", settings.web_host, settings.web_port)
    uvicorn.run(app, host=settings.web_host, port=settings.web_port,
                log_level=settings.log_level.lower(), access_log=False)
    return 0


def cmd_users_add(settings: Settings, args: argparse.Namespace) -> int:
    """Create or update a web user in the users file (scrypt hash, file mode 0600)."""
    import getpass

    from triage.auth import add_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the passwords differ")
    path = settings.users_file
    assert path is not None  # derived by Settings
    add_user(path, args.name, args.role, password)
    print(f"{args.name} ({args.role}) saved in {path}; restart `triage web`/`triage up`")
    return 0


def cmd_worker(settings: Settings, queues: str, concurrency: int | None) -> int:
    """Replace this process with a Celery worker configured from the settings."""
    env = {**os.environ, **settings.to_env()}
    argv = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues,
        "-c", str(concurrency or settings.worker_concurrency), "--pool", "prefork",
        "-l", settings.log_level, "--without-gossip", "--without-mingle",
    ]
    os.execve(sys.executable, argv, env)  # noqa: S606 - replaces this process on purpose


def cmd_up(settings: Settings) -> int:
    """Everything for one machine: Redis (if needed), listener, worker, web."""
    from triage.db import Database
    from triage.rules import load_rules
    from triage.supervisor import Supervisor, private_redis, service_children

    load_rules(settings.rules_file)  # fail now, not in a child, on a bad rules file
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.create_schema()
    db.dispose()
    children = service_children(settings)
    redis_child = private_redis(settings)
    if redis_child is not None:
        logger.info("No Redis answers at %s; starting a private one in %s",
                    settings.broker_url, settings.data_dir / "redis")
        children.insert(0, redis_child)
    logger.info(
        "CT triage %s: DICOM %s@%s:%d, web http://%s:%d, data in %s",
        __version__, settings.ae_title, settings.dicom_host, settings.dicom_port,
        settings.web_host, settings.web_port, settings.data_dir,
    )
    return Supervisor(children).run()


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    from triage.sender import send

    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 1.0:
            last[0] = now
            print(f"\rsent {done}/{total}", end="", file=sys.stderr, flush=True)

    report = send(
        [Path(p) for p in args.paths],
        host=args.host,
        port=args.port or settings.dicom_port,
        called_ae=args.called_ae or settings.ae_title,
        calling_ae=args.calling_ae,
        retries=args.retries,
        progress=progress,
    )
    print(file=sys.stderr)
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    for line in report.failures:
        print(f"failed {line}", file=sys.stderr)
    rate = report.sent / report.elapsed_s if report.elapsed_s else 0.0
    print(f"{report.sent} sent, {report.failed} failed, {len(report.skipped)} skipped "
          f"in {report.elapsed_s:.1f} s ({rate:.0f} instances/s)")
    return 0 if report.ok else 1


def cmd_echo(settings: Settings, args: argparse.Namespace) -> int:
    from triage.sender import echo

    status = echo(host=args.host, port=args.port or settings.dicom_port,
                  called_ae=args.called_ae or settings.ae_title, calling_ae=args.calling_ae)
    print(f"C-ECHO status 0x{status:04X}")
    return 0 if status == 0 else 1


def _run_models(arguments: Sequence[str]) -> int:
    """Run ``python -m models …``: the ML stack stays out of the service processes."""
    return subprocess.call([sys.executable, "-m", "models", *arguments])


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Generate synthetic head and C-spine studies and send them to the listener."""
    from triage.sender import send

    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000 * 10
    with tempfile.TemporaryDirectory(prefix="triage-demo-") as tmp:
        folders = []
        for region, count in (("head", args.head), ("cspine", args.cspine)):
            if count <= 0:
                continue
            folder = Path(tmp) / region
            code = _run_models(["synthetic", "generate", "--region", region, "--n", str(count),
                                "--seed", str(seed), "--out", str(folder)])
            if code != 0:
                return code
            folders.append(folder)
        report = send(folders, host=args.host, port=args.port or settings.dicom_port,
                      called_ae=settings.ae_title, calling_ae="TRIAGE_DEMO")
    print(f"demo: {report.sent} synthetic instances sent ({report.failed} failed) to "
          f"{settings.ae_title}@{args.host}:{args.port or settings.dicom_port}; watch "
          f"http://{settings.web_host}:{settings.web_port}/api/worklist")
    return 0 if report.ok else 1


def cmd_rules_check(settings: Settings, path: str | None) -> int:
    from triage.rules import load_rules

    rules_path = Path(path) if path else settings.rules_file
    rules = load_rules(rules_path)
    print(f"{rules_path}: valid, {len(rules.rules)} rules; STAT priorities: "
          f"{', '.join(rules.stat_priorities) or '(none)'}")
    for rule in rules.rules:
        print(f"  {rule.name}: {', '.join(rule.detectors)} on {rule.queue.value}")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", dest="config_file", help="TOML settings file")
    common.add_argument("--data-dir", help="spool, index and private Redis data (default ./var)")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    dicom = argparse.ArgumentParser(add_help=False)
    dicom.add_argument("--host", dest="dicom_host", help="DICOM bind address")
    dicom.add_argument("--port", dest="dicom_port", type=int, help="DICOM port (default 11112)")
    dicom.add_argument("--ae-title", help="our AE title (default TRIAGE)")
    web = argparse.ArgumentParser(add_help=False)
    web.add_argument("--web-host", help="HTTP bind address (default 127.0.0.1)")
    web.add_argument("--web-port", type=int, help="HTTP port (default 8080)")
    infra = argparse.ArgumentParser(add_help=False)
    infra.add_argument("--broker-url", help="Redis URL (default redis://127.0.0.1:6379/0)")
    infra.add_argument("--database-url", help="index database (default SQLite in data dir)")
    infra.add_argument("--rules-file", help="routing rules file")

    parser = argparse.ArgumentParser(
        prog="triage", description="Always-on CT triage daemon (not for diagnosis)."
    )
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[common, dicom, web, infra],
                   help="run listener, worker and web (and Redis if needed)")
    sub.add_parser("listen", parents=[common, dicom, infra],
                   help="DICOM listener with study assembly")
    sub.add_parser("web", parents=[common, web, infra], help="worklist web UI and API")
    sub.add_parser("outputs", parents=[common, infra],
                   help="send results to PACS (SR/KOS), RIS (HL7) and UPS subscribers")
    worker = sub.add_parser("worker", parents=[common, infra], help="Celery analysis worker")
    worker.add_argument("-Q", "--queues", default="stat,routine")
    worker.add_argument("-c", "--concurrency", type=int)
    for name, text in (("send", "C-STORE DICOM files/folders"), ("echo", "C-ECHO a DICOM peer")):
        cmd = sub.add_parser(name, parents=[common], help=text)
        if name == "send":
            cmd.add_argument("paths", nargs="+", help="files or folders (recursive)")
            cmd.add_argument("--retries", type=int, default=3,
                             help="retries of instances answered 'out of resources'")
        cmd.add_argument("--host", default="127.0.0.1", help="peer address")
        cmd.add_argument("--port", type=int, help="peer port (default: our DICOM port)")
        cmd.add_argument("--called-ae", help="peer AE title (default: our AE title)")
        cmd.add_argument("--calling-ae", default="TRIAGE_SEND", help="our AE title as sender")
    demo = sub.add_parser("demo", parents=[common],
                          help="send synthetic head and C-spine studies to the listener")
    demo.add_argument("--head", type=int, default=4, help="number of head CT studies")
    demo.add_argument("--cspine", type=int, default=2, help="number of C-spine CT studies")
    demo.add_argument("--seed", type=int, help="first seed (default: from the clock)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, help="listener port (default: our DICOM port)")
    sub.add_parser("models", add_help=False,
                   help="detectors: list | train | eval | calibrate-ood | synthetic … "
                        "(see `triage models -h`)")
    sub.add_parser("analyze", add_help=False,
                   help="run the detectors on DICOM folders (see `triage analyze -h`)")
    users = sub.add_parser("users", help="web UI users (login is required off loopback)")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = users_sub.add_parser("add", parents=[common],
                               help="create a user or set a new password (asks for it)")
    add.add_argument("name")
    add.add_argument("--role", choices=["radiologist", "admin"], default="radiologist")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (for scripts)")
    rules = sub.add_parser("rules", help="routing rules tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", parents=[common], help="validate a rules file")
    check.add_argument("file", nargs="?", help="default: the configured rules file")
    return parser


_SETTING_ARGS = (
    "config_file", "data_dir", "log_level", "dicom_host", "dicom_port", "ae_title", "web_host",
    "web_port", "broker_url", "database_url", "rules_file",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``triage`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "models":
        return _run_models(arguments[1:])
    if arguments and arguments[0] == "analyze":
        return _run_models(arguments)
    args = _parser().parse_args(arguments)
    overrides = {name: getattr(args, name, None) for name in _SETTING_ARGS}
    try:
        settings = load_settings(**overrides)
        _configure_logging(settings)
        match args.command:
            case "up":
                return cmd_up(settings)
            case "listen":
                return cmd_listen(settings)
            case "web":
                return cmd_web(settings)
            case "outputs":
                return cmd_outputs(settings)
            case "worker":
                return cmd_worker(settings, args.queues, args.concurrency)
            case "send":
                return cmd_send(settings, args)
            case "echo":
                return cmd_echo(settings, args)
            case "demo":
                return cmd_demo(settings, args)
            case "users":
                return cmd_users_add(settings, args)
            case "rules":
                return cmd_rules_check(settings, args.file)
    except ConfigError as exc:
        print(f"triage: configuration error: {exc}", file=sys.stderr)
        return 2
    except (TriageError, ConnectionError) as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
