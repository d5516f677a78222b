"""Composition root of `triage outputs`: the UPS SCP (if configured) and the dispatcher."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from triage.config import Settings
from triage.db import Database
from triage.dispatch import Dispatcher, last_receipt
from triage.errors import ConfigError
from triage.outputs.channels import build_channels
from triage.outputs.ups import EventNotifier, UpsServer, UpsService
from triage.outputs.ups_types import UpsConfig

logger = logging.getLogger(__name__)


def ups_config(settings: Settings) -> UpsConfig:
    """The UPS SCP's settings: our AE title and bind address, ``ups_port``, subscribers."""
    subscribers: dict[str, tuple[str, int]] = {}
    for title, address in settings.ups_subscribers.items():
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"ups_subscribers[{title}]: expected host:port, got {address!r}")
        subscribers[title] = (host, int(port))
    return UpsConfig(ae_title=settings.ae_title, host=settings.dicom_host,
                     port=settings.ups_port, subscribers=subscribers)


@dataclass
class OutputsProcess:
    """What `triage outputs` runs; :meth:`stop` ends it."""

    settings: Settings
    db: Database
    stop_event: threading.Event = field(default_factory=threading.Event)
    ups_server: UpsServer | None = None
    notifier: EventNotifier | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        settings = self.settings
        ups = None
        if any(d.kind == "ups" for d in settings.destinations):
            config = ups_config(settings)
            self.notifier = EventNotifier(self.db, config)
            self.notifier.start()  # also sends what an earlier process left undelivered
            ups = UpsService(self.db, config, self.notifier.publish)
            self.ups_server = UpsServer(ups, config)
            host, port = self.ups_server.start()
            logger.info("UPS SCP (Push/Pull/Watch/Event) %s@%s:%d", config.ae_title, host, port)

        def receipts(destination: str, study_uid: str, below: int) -> dict[str, Any] | None:
            return last_receipt(self.db, destination, study_uid, below)

        channels = build_channels(settings, receipts=receipts, ups=ups)
        dispatcher = Dispatcher(self.db, settings.spool,
                                {d.name: d for d in settings.destinations}, channels,
                                severity=settings.finding_severity)
        self.thread = threading.Thread(target=dispatcher.serve, args=(self.stop_event,),
                                       name="dispatcher", daemon=True)
        self.thread.start()
        logger.info("Sending results to %s",
                    ", ".join(f"{d.name} ({d.kind})" for d in settings.destinations) or
                    "no destination (configure [[destinations]])")

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(60)
        if self.ups_server is not None:
            self.ups_server.stop()
        if self.notifier is not None:
            self.notifier.stop()
