"""DICOM listener: a pynetdicom AE whose handlers only store instances and map errors to statuses.

Statuses answered to C-STORE (the only place where they are chosen):

=========  ==============================================================================
0x0000     stored durably and indexed, or a duplicate of an instance already stored
0xA700     out of resources: spool below its watermark, write/fsync failed, index down;
           the sender should retry later
0xC210     the data set cannot be parsed
0xC212     the data set lacks Study/Series/SOP Instance UID or SOP Class UID
0xC213     the data set's UIDs differ from those in the C-STORE request
0xC211     unexpected error in the handler (pynetdicom's own status); logged with a traceback
=========  ==============================================================================
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.association import tune
from triage.config import Settings
from triage.counters import (
    ASSOCIATIONS,
    INSTANCES_RECEIVED,
    STORE_ERRORS,
    CounterFlusher,
    EventCounters,
)
from triage.domain import StoreOutcome
from triage.errors import InvalidInstanceError, OutOfResourcesError
from triage.store import Store

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700

#: Transfer syntaxes accepted for every storage SOP class, in our order of preference.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]


@dataclass
class _AssocInfo:
    association_id: str
    calling_ae: str
    peer: str
    stored: int = 0
    duplicates: int = 0
    refused: int = 0


@dataclass
class AssociationTracker:
    """Gives each association an id and counts what it delivered (for the release log line)."""

    _by_assoc: dict[int, _AssocInfo] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, assoc: Any) -> _AssocInfo:
        info = _AssocInfo(
            association_id=uuid.uuid4().hex,
            calling_ae=_calling_ae(assoc),
            peer=f"{assoc.requestor.address}:{assoc.requestor.port}",
        )
        with self._lock:
            self._by_assoc[id(assoc)] = info
        return info

    def get(self, assoc: Any) -> _AssocInfo:
        with self._lock:
            info = self._by_assoc.get(id(assoc))
        return info if info is not None else self.open(assoc)

    def close(self, assoc: Any) -> _AssocInfo | None:
        with self._lock:
            return self._by_assoc.pop(id(assoc), None)


def _calling_ae(assoc: Any) -> str:
    title = assoc.requestor.ae_title
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def handle_conn_open(event: evt.Event, poll_interval_s: float) -> None:
    """TCP_NODELAY and a shorter idle poll for each accepted connection."""
    tune(event.assoc, poll_interval_s)


def handle_accepted(event: evt.Event, tracker: AssociationTracker,
                    counters: EventCounters | None = None) -> None:
    if counters is not None:
        counters.inc(ASSOCIATIONS, event="accepted")
    info = tracker.open(event.assoc)
    logger.info("Association accepted from %s (%s)", info.calling_ae, info.peer)


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: we are alive."""
    return STATUS_SUCCESS


def handle_rejected(event: evt.Event, counters: EventCounters) -> None:
    """A-ASSOCIATE-RJ sent (e.g. a calling AE title not on the allowlist)."""
    counters.inc(ASSOCIATIONS, event="rejected")


def handle_store(
    event: evt.Event,
    store: Store,
    tracker: AssociationTracker,
    on_stored: Callable[[], None] | None = None,
    counters: EventCounters | None = None,
) -> int:
    """C-STORE: make the instance durable and indexed, then answer.

    pynetdicom streams the data set to a temporary Part 10 file (``event.dataset_path``),
    which it deletes once this handler returns; :meth:`Store.ingest` moves it first.
    Each outcome is counted in ``counters`` (flushed to the index DB by the listener).
    """
    info = tracker.get(event.assoc)
    request = cast(C_STORE, event.request)
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    try:
        result = store.ingest(
            event.dataset_path,
            calling_ae=info.calling_ae,
            association_id=info.association_id,
            expected_sop_instance_uid=sop_uid or None,
            expected_sop_class_uid=str(request.AffectedSOPClassUID or "") or None,
        )
    except InvalidInstanceError as exc:
        if counters is not None:
            counters.inc(STORE_ERRORS, reason=f"0x{exc.status:04X}")
        info.refused += 1
        logger.warning(
            "Refused instance %s from %s with 0x%04X: %s",
            sop_uid, info.calling_ae, exc.status, exc,
        )
        return exc.status
    except OutOfResourcesError as exc:
        if counters is not None:
            counters.inc(STORE_ERRORS, reason="0xA700")
        info.refused += 1
        logger.error(
            "Cannot store instance %s from %s, answered 0xA700 (sender will retry): %s",
            sop_uid, info.calling_ae, exc,
        )
        return STATUS_OUT_OF_RESOURCES
    except Exception:
        if counters is not None:  # pynetdicom answers 0xC211 and logs the traceback
            counters.inc(STORE_ERRORS, reason="0xC211")
        raise
    if counters is not None:
        counters.inc(INSTANCES_RECEIVED, outcome=result.outcome.value)
    if result.outcome is StoreOutcome.DUPLICATE:
        info.duplicates += 1
        logger.debug("Duplicate instance %s from %s", sop_uid, info.calling_ae)
    else:
        info.stored += 1
        logger.debug("Stored instance %s from %s", sop_uid, info.calling_ae)
    if on_stored is not None:
        on_stored()
    return STATUS_SUCCESS


def handle_released(
    event: evt.Event,
    store: Store,
    tracker: AssociationTracker,
    on_released: Callable[[], None] | None = None,
    counters: EventCounters | None = None,
) -> None:
    """A-RELEASE: the sender says it is done; start the release grace of its series."""
    if counters is not None:
        counters.inc(ASSOCIATIONS, event="released")
    info = tracker.close(event.assoc)
    if info is None:
        return
    logger.info(
        "Association from %s (%s) released: %d stored, %d duplicate, %d refused",
        info.calling_ae, info.peer, info.stored, info.duplicates, info.refused,
    )
    try:
        store.mark_association_released(info.association_id)
    except Exception:
        # The quiet timer still completes these series.
        logger.exception("Could not record the release of association %s", info.association_id)
    if on_released is not None:
        on_released()


def handle_aborted(event: evt.Event, tracker: AssociationTracker,
                   counters: EventCounters | None = None) -> None:
    """A-ABORT: the transfer may be incomplete, so only the quiet timer completes its series."""
    if counters is not None:
        counters.inc(ASSOCIATIONS, event="aborted")
    info = tracker.close(event.assoc)
    if info is not None:
        logger.warning(
            "Association from %s (%s) aborted: %d stored, %d duplicate, %d refused",
            info.calling_ae, info.peer, info.stored, info.duplicates, info.refused,
        )


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and every storage SOP class in common transfer syntaxes."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.require_calling_aet = list(settings.allowed_calling_aes)
    ae.require_called_aet = settings.require_called_ae_title
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


class Listener:
    """The running DICOM server.

    Parameters
    ----------
    settings
        Listener settings (AE title, address, allowlist, timeouts).
    store
        Where instances go.
    on_stored, on_released
        Called after each stored instance / released association (e.g. to wake the sweeper).
    counters
        Event counters (associations, instances, refusals) of this process; default: new ones.
        :meth:`start` starts a thread that flushes them to ``store.db`` every
        ``counter_flush_interval_s``; :meth:`stop` flushes them a last time.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        on_stored: Callable[[], None] | None = None,
        on_released: Callable[[], None] | None = None,
        counters: EventCounters | None = None,
        counter_flush_interval_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tracker = AssociationTracker()
        self.ae = build_ae(settings)
        self._on_stored = on_stored
        self._on_released = on_released
        self.counters = counters if counters is not None else EventCounters()
        self.flusher = CounterFlusher(self.counters, store.db,
                                      interval_s=counter_flush_interval_s)
        self._server: Any = None

    def start(self) -> tuple[str, int]:
        """Start serving in background threads; returns the bound (host, port)."""
        # Stream received data sets to a file instead of holding them in memory.
        _config.STORE_RECV_CHUNKED_DATASET = True
        # Never log identifiers (they may hold patient data) if we ever act as an SCU.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        if not self.settings.allowed_calling_aes:
            logger.warning(
                "Calling-AE allowlist is empty: accepting associations from any AE title "
                "(set TRIAGE_ALLOWED_CALLING_AES to restrict)"
            )
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, handle_conn_open, [self.settings.dicom_poll_interval_s]),
            (evt.EVT_ACCEPTED, handle_accepted, [self.tracker, self.counters]),
            (evt.EVT_REJECTED, handle_rejected, [self.counters]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store,
             [self.store, self.tracker, self._on_stored, self.counters]),
            (evt.EVT_RELEASED, handle_released,
             [self.store, self.tracker, self._on_released, self.counters]),
            (evt.EVT_ABORTED, handle_aborted, [self.tracker, self.counters]),
        ]
        self._server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=handlers,
        )
        host, port = self._server.server_address[:2]
        self.flusher.start()
        logger.info("DICOM listener %s on %s:%d", self.settings.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting and close the server (in-flight associations are aborted)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
        self.flusher.stop()
