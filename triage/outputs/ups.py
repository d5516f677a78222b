"""DICOM UPS SCP for worklist consumers: one workitem per analysed study (PS3.4 Annex CC).

Reading-room software subscribes (UPS Watch) and is told by N-EVENT-REPORT (UPS Event,
we are the SCU) whenever a workitem appears or its state or priority changes; it can also
query (C-FIND), read (N-GET), claim and complete workitems (UPS Pull) and ask to cancel
them.  The domain rules are in :mod:`triage.outputs.ups_service`; this module is the
network edge: thin pynetdicom handlers, the server, and :class:`EventNotifier`.

What the SCP supports, per SOP Class:

===================  ===================================================================
UPS Push  (…34.6.1)  N-GET; N-ACTION Request Cancel.  N-CREATE is refused with 0x0124
                     (Refused: not authorised): workitems are created only by this
                     service, from its analysis results (PS3.4 CC.2.5.3 allows the SCP to
                     create them on its own).
UPS Pull  (…34.6.3)  C-FIND, N-GET, N-ACTION Change State, N-SET (performer's progress
                     and performed-procedure details only; other attributes 0x0106).
UPS Watch (…34.6.2)  N-ACTION Subscribe (3), Unsubscribe (4), Suspend Global
                     Subscription (5); N-GET; C-FIND; N-ACTION Request Cancel.
                     Filtered global subscriptions are refused with 0xC307, as the
                     standard prescribes for an SCP that does not support them.
UPS Query (…34.6.5)  C-FIND.
UPS Event (…34.6.4)  we are the SCU: N-EVENT-REPORT on a new association to the
                     subscriber's configured host and port.
===================  ===================================================================

Every N-ACTION type is accepted on any UPS presentation context: the Requested SOP Class
is always UPS Push (CC.3.1), and pynetdicom's SCU, like others, picks whichever UPS context
was accepted.  Database outages answer 0xA700 (out of resources).

Priority changes: PS3.4 has no event for them (Table CC.2.4-1: State Report, Cancel
Requested, Progress Report, SCP Status Change, Assigned).  We send a UPS State Report
(event type 1) with the unchanged state, the Input Readiness State and, as an additional
attribute, the new Scheduled Procedure Step Priority (0074,1200); SCUs must accept extra
attributes (CC.2.4.2), and one that ignores them can N-GET the workitem.

Events are kept in the index database (table ``ups_events``), written in the same
transaction as the workitem or subscription change that causes them, so a restart loses
none: :meth:`EventNotifier.start` picks up whatever an earlier process left undelivered.
They are delivered on one background thread per subscriber AE, so a dead subscriber never
delays the others nor the caller: each thread sends its AE's rows in the order they were
written, over one association, and marks each row delivered as soon as the subscriber has
answered it (a crash in between sends that event again: delivery is at least once).  Failed
attempts back off exponentially; after ``UpsConfig.event_max_attempts`` consecutive failures
the pending rows of that AE are marked given up (``gave_up_at``, with the last error) and
logged without patient data, as are rows for an AE title that has no configured address.
Subscribers that missed events catch up by C-FIND or by subscribing again (which sends the
current state).  Delivered and given-up rows are deleted after 7 days.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy.exc
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    UnifiedProcedureStepQuery,
    UnifiedProcedureStepWatch,
    Verification,
)

from triage.association import connection_handlers
from triage.db import Database
from triage.outputs import ups_dataset as content
from triage.outputs.ups_service import STATUS_SUCCESS, UpsService
from triage.outputs.ups_store import GLOBAL_SUBSCRIPTION_UID, StoredEvent, UpsStore
from triage.outputs.ups_types import (
    EventType,
    ProcedureStepState,
    UpsConfig,
    UpsError,
    UpsEvent,
)

__all__ = [
    "GLOBAL_SUBSCRIPTION_UID",
    "EventNotifier",
    "EventType",
    "ProcedureStepState",
    "UpsConfig",
    "UpsError",
    "UpsEvent",
    "UpsServer",
    "UpsService",
]

logger = logging.getLogger(__name__)

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_AUTHORISED = 0x0124
STATUS_NO_SUCH_ACTION = 0x0123
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_SCP_SOP_CLASSES = [
    UnifiedProcedureStepPush,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepWatch,
    UnifiedProcedureStepQuery,
]
# Action Information keys of a subscription; anything else would be a filter.
_SUBSCRIPTION_KEYS = frozenset({"ReceivingAE", "DeletionLock", "SpecificCharacterSet"})


def _calling_ae(event: evt.Event) -> str:
    title = event.assoc.requestor.ae_title
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def _requested_uid(event: evt.Event) -> str:
    return str(getattr(event.request, "RequestedSOPInstanceUID", None) or "")


def _refusal(exc: Exception, what: str, uid: str) -> int:
    """The one place where exceptions become DIMSE statuses."""
    if isinstance(exc, UpsError):
        logger.info("UPS %s on %s refused with 0x%04X: %s", what, uid, exc.status, exc)
        return exc.status
    logger.error("UPS %s on %s: index database unavailable, answered 0xA700: %s",
                 what, uid, type(exc).__name__)
    return STATUS_OUT_OF_RESOURCES


_HANDLED = (UpsError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def handle_n_create(event: evt.Event) -> tuple[int, Dataset | None]:
    """N-CREATE: refused; workitems come only from our own analysis results."""
    logger.info("UPS N-CREATE from %s refused with 0x0124: workitems are created by the "
                "triage service only", _calling_ae(event))
    return STATUS_NOT_AUTHORISED, None


def handle_n_get(event: evt.Event, service: UpsService) -> tuple[int, Dataset | None]:
    """N-GET: the requested attributes (all when none are named), never the transaction UID."""
    uid = _requested_uid(event)
    try:
        ds = service.get(uid)
    except _HANDLED as exc:
        return _refusal(exc, "N-GET", uid), None
    tags = list(event.attribute_identifiers)
    return STATUS_SUCCESS, content.select(ds, tags) if tags else ds


def handle_n_set(event: evt.Event, service: UpsService) -> tuple[int, Dataset | None]:
    """N-SET by the performer (UPS Pull)."""
    uid = _requested_uid(event)
    try:
        service.set_performed(uid, event.modification_list)
    except _HANDLED as exc:
        return _refusal(exc, "N-SET", uid), None
    return STATUS_SUCCESS, None


def handle_n_action(event: evt.Event, service: UpsService) -> tuple[int, Dataset | None]:
    """N-ACTION: change state (1), request cancel (2), subscribe (3), unsubscribe (4),
    suspend global subscription (5)."""
    uid = _requested_uid(event)
    action = event.action_type
    info: Dataset = event.action_information
    try:
        if action == 1:
            status = service.change_state(
                uid, str(info.get("ProcedureStepState", "") or ""),
                str(info.get("TransactionUID", "") or "") or None,
            )
        elif action == 2:
            status = service.request_cancel(uid, _calling_ae(event), info)
        elif action in (3, 4, 5):
            receiving_ae = str(info.get("ReceivingAE", "") or "")
            if action == 3:
                filters = [e for e in info
                           if e.keyword not in _SUBSCRIPTION_KEYS and not content.is_universal(e)]
                if uid == GLOBAL_SUBSCRIPTION_UID and filters:
                    raise UpsError(0xC307, "filtered global subscriptions are not supported")
                lock = str(info.get("DeletionLock", "") or "").strip().upper() == "TRUE"
                service.subscribe(receiving_ae, uid, deletion_lock=lock)
            elif action == 4:
                service.unsubscribe(receiving_ae, uid)
            else:
                if uid != GLOBAL_SUBSCRIPTION_UID:
                    raise UpsError(0xC314, "suspend applies to the global subscription only")
                service.suspend_global(receiving_ae)
            status = STATUS_SUCCESS
        else:
            logger.info("UPS N-ACTION type %s from %s: no such action", action,
                        _calling_ae(event))
            return STATUS_NO_SUCH_ACTION, None
    except _HANDLED as exc:
        return _refusal(exc, f"N-ACTION {action}", uid), None
    return status, None


def handle_c_find(
    event: evt.Event, service: UpsService
) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND over the workitems (UPS Pull, Watch, Query)."""
    try:
        query = event.identifier
    except Exception:  # an undecodable identifier is the SCU's problem, not ours
        yield 0xA900, None
        return
    try:
        found = service.find(query)
    except _HANDLED as exc:
        yield _refusal(exc, "C-FIND", "-"), None
        return
    for identifier in found:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, identifier


def build_ae(config: UpsConfig) -> AE:
    """The SCP's AE: Verification and the UPS SOP classes."""
    ae = AE(ae_title=config.ae_title)
    ae.network_timeout = config.network_timeout_s
    ae.acse_timeout = config.network_timeout_s
    ae.dimse_timeout = config.network_timeout_s
    ae.require_calling_aet = list(config.allowed_calling_aes)
    ae.add_supported_context(Verification)
    for sop_class in _SCP_SOP_CLASSES:
        ae.add_supported_context(sop_class, _TRANSFER_SYNTAXES)
    return ae


class UpsServer:
    """The running UPS SCP (a pynetdicom server on background threads)."""

    def __init__(self, service: UpsService, config: UpsConfig) -> None:
        self.service = service
        self.config = config
        self.ae = build_ae(config)
        self._server: Any = None

    def handlers(self) -> list[Any]:
        return [
            *connection_handlers(),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_N_CREATE, handle_n_create),
            (evt.EVT_N_GET, handle_n_get, [self.service]),
            (evt.EVT_N_SET, handle_n_set, [self.service]),
            (evt.EVT_N_ACTION, handle_n_action, [self.service]),
            (evt.EVT_C_FIND, handle_c_find, [self.service]),
        ]

    def start(self) -> tuple[str, int]:
        """Start serving; returns the bound (host, port)."""
        # Identifiers hold patient data: pynetdicom must not log them.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        self._server = self.ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=self.handlers()
        )
        host, port = self._server.server_address[:2]
        logger.info("UPS SCP %s on %s:%d", self.config.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()


#: Outbox rows read (and sent over one association) at a time.
_BATCH = 100
#: Delivered and given-up rows are deleted after this long.
EVENT_RETENTION_S = 7 * 24 * 3600.0
_PRUNE_INTERVAL_S = 3600.0


class _Destination:
    """The delivery thread of one subscriber AE: sends its outbox rows in ``id`` order."""

    def __init__(self, notifier: EventNotifier, ae_title: str, address: tuple[str, int]) -> None:
        self.notifier = notifier
        self.ae_title = ae_title
        self.address = address
        self.config = notifier.config
        self.db = notifier.db
        self.store = notifier.store
        self.stopping = notifier.stopping
        self.woken = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(
            target=self._run, name=f"ups-events-{ae_title}", daemon=True
        )

    def wake(self) -> None:
        with self.cond:
            self.woken = True
            self.cond.notify()

    def _run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            with self.cond:
                self.woken = False
            try:
                self.notifier.prune_if_due()
                with self.db.read() as conn:
                    batch = self.store.pending_events(conn, self.ae_title, _BATCH)
                if not batch:
                    with self.cond:  # new rows: woken by publish(), or seen on the next poll
                        self.cond.wait_for(lambda: self.woken or self.stopping.is_set(),
                                           timeout=self.notifier.poll_interval_s)
                    continue
                done, error = self._deliver(batch)
                if done == len(batch):
                    failures = 0
                    continue
                failures += 1
                with self.db.write() as conn:
                    self.store.events_failed(conn, self.ae_title, batch[-1].id, error)
                if failures >= self.config.event_max_attempts:
                    with self.db.write() as conn:
                        dropped = self.store.give_up_events(conn, self.ae_title)
                    logger.error("UPS events for %s: gave up after %d attempts (%s), %d marked "
                                 "as given up", self.ae_title, failures, error, dropped)
                    failures = 0
                    continue
                delay = min(self.config.event_backoff_max_s,
                            self.config.event_backoff_s * 2 ** (failures - 1))
                self.stopping.wait(delay)
            except Exception as exc:  # the database is away (or a bug): keep the thread alive
                logger.error("UPS events for %s: %s, retrying in %.0f s", self.ae_title,
                             type(exc).__name__, self.notifier.poll_interval_s,
                             exc_info=not isinstance(exc, sqlalchemy.exc.SQLAlchemyError))
                self.stopping.wait(self.notifier.poll_interval_s)
        try:
            with self.db.read() as conn:
                left = self.store.count_pending_events(conn, self.ae_title)
        except Exception:
            return
        if left:
            logger.info("UPS events for %s: %d not yet delivered, kept for the next start",
                        self.ae_title, left)

    def _deliver(self, batch: Sequence[StoredEvent]) -> tuple[int, str]:
        """Send ``batch`` over one association, marking each answered row delivered.

        Returns how many were answered and, when not all of them, why (no patient data).
        Database errors while marking propagate (the row is sent again later).
        """
        host, port = self.address
        ae = AE(ae_title=self.config.ae_title)
        ae.network_timeout = self.config.network_timeout_s
        ae.acse_timeout = self.config.network_timeout_s
        ae.dimse_timeout = self.config.network_timeout_s
        ae.add_requested_context(UnifiedProcedureStepEvent, _TRANSFER_SYNTAXES)
        done = 0
        error = ""
        try:
            assoc = ae.associate(host, port, ae_title=self.ae_title,
                                 evt_handlers=connection_handlers())
            if not assoc.is_established:
                logger.warning("UPS events for %s: association with %s:%d failed",
                               self.ae_title, host, port)
                return 0, f"association with {host}:{port} failed"
            try:
                for stored in batch:
                    event = stored.event
                    status, _ = assoc.send_n_event_report(
                        event.info, int(event.event_type), UnifiedProcedureStepPush,
                        event.workitem_uid, msg_id=done % 65535 + 1,
                    )
                    code = getattr(status, "Status", None)
                    if code is None:  # no answer: the association is gone
                        error = "no answer to N-EVENT-REPORT"
                        break
                    note = None
                    if code != STATUS_SUCCESS:
                        note = f"refused with 0x{code:04X}"
                        logger.warning("UPS event %s about %s refused by %s with 0x%04X",
                                       event.event_type.name, event.workitem_uid,
                                       self.ae_title, code)
                    with self.db.write() as conn:
                        self.store.event_delivered(conn, stored.id, note=note)
                    done += 1
            finally:
                if assoc.is_established:
                    assoc.release()
        except sqlalchemy.exc.SQLAlchemyError:
            raise
        except Exception as exc:
            logger.exception("UPS events for %s: delivery failed", self.ae_title)
            error = f"delivery failed: {type(exc).__name__}"
        finally:
            ae.shutdown()
        return done, error


class EventNotifier:
    """Delivers the UPS N-EVENT-REPORTs of the ``ups_events`` outbox in the background.

    :meth:`start` begins delivery to every configured subscriber, including what an earlier
    process left undelivered; :meth:`publish` only wakes the threads (the events are already
    stored by :class:`UpsService`) and never blocks on the network.  Without a wake-up, each
    thread looks for new rows every ``poll_interval_s`` (rows written by other processes).
    """

    def __init__(self, db: Database, config: UpsConfig, *, poll_interval_s: float = 5.0) -> None:
        self.db = db
        self.config = config
        self.store = UpsStore(db)
        self.poll_interval_s = poll_interval_s
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._destinations: dict[str, _Destination] = {}
        self._next_prune = 0.0

    def start(self) -> None:
        """Start the delivery threads; rows for AE titles without an address are given up."""
        with self.db.read() as conn:
            waiting = self.store.pending_event_aes(conn)
        for ae_title in waiting:
            if ae_title not in self.config.subscribers:
                self._give_up_unaddressed(ae_title)
        self.prune_if_due()
        for ae_title in self.config.subscribers:
            self._destination(ae_title)

    def publish(self, events: Sequence[UpsEvent]) -> None:
        """Wake the delivery threads of the subscribers of ``events`` (stored already)."""
        for ae_title in dict.fromkeys(event.ae_title for event in events):
            destination = self._destination(ae_title)
            if destination is not None:
                destination.wake()
            elif ae_title not in self.config.subscribers:
                self._give_up_unaddressed(ae_title)

    def _give_up_unaddressed(self, ae_title: str) -> None:
        try:
            with self.db.write() as conn:
                dropped = self.store.give_up_events(conn, ae_title, "no address configured")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            logger.error("UPS events for %s (no address configured): not marked, %s",
                         ae_title, type(exc).__name__)
            return
        if dropped:
            logger.warning("UPS events for %s: no address configured, %d marked as given up",
                           ae_title, dropped)

    def _destination(self, ae_title: str) -> _Destination | None:
        address = self.config.subscribers.get(ae_title)
        if address is None or self.stopping.is_set():
            return None
        with self._lock:
            destination = self._destinations.get(ae_title)
            if destination is None:
                destination = _Destination(self, ae_title, address)
                self._destinations[ae_title] = destination
                destination.thread.start()
        return destination

    def prune_if_due(self) -> None:
        """Delete rows delivered or given up over 7 days ago, at most once an hour."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_prune:
                return
            self._next_prune = now + _PRUNE_INTERVAL_S
        with self.db.write() as conn:
            deleted = self.store.prune_events(conn, time.time() - EVENT_RETENTION_S)
        if deleted:
            logger.info("UPS events: %d rows older than 7 days deleted", deleted)

    def pending(self) -> int:
        """Events not yet delivered (nor given up), of every AE."""
        with self.db.read() as conn:
            return self.store.count_pending_events(conn)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the delivery threads; undelivered events stay stored for the next start."""
        self.stopping.set()
        with self._lock:
            destinations = list(self._destinations.values())
        for destination in destinations:
            with destination.cond:
                destination.cond.notify_all()
        for destination in destinations:
            destination.thread.join(timeout_s)
