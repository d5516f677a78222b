"""UPS domain logic: one workitem per analysed study, kept at the worklist's priority.

No networking here.  Every change is a compare-and-set in the index database
(:mod:`triage.outputs.ups_store`); the N-EVENT-REPORTs it causes are written to the
``ups_events`` outbox in the same transaction, so a change and its events commit (or fail)
together.  Once committed, they are also handed as :class:`UpsEvent` values to an injected
``publish`` callable, which only has to wake the sender: the SCP's
:class:`~triage.outputs.ups.EventNotifier` delivers the stored rows in the background.

Failures carry the DIMSE status that PS3.4 Annex CC assigns (:class:`UpsError`); warnings
are returned as status codes.  State changes (Table CC.1.1-2):

=====================  ===========================================================
0xC307                 no such workitem (or the global UID where one is needed)
0xC308                 Receiving AE unknown: not in ``UpsConfig.subscribers``
0xC303                 may only become SCHEDULED through N-CREATE
0xC310                 SCHEDULED → COMPLETED/CANCELED: not yet IN PROGRESS
0xC302                 already IN PROGRESS
0xC301                 IN PROGRESS and the Transaction UID is missing or wrong
0xC300                 COMPLETED/CANCELED: may no longer be updated
0xB304 / 0xB306        warning: already CANCELED / COMPLETED
0xC311 / 0xC312        cancel request: already COMPLETED / no subscriber could tell the
                       performer
=====================  ===========================================================
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.engine import Connection

from triage.db import Database
from triage.errors import TriageError
from triage.outputs import ups_dataset as content
from triage.outputs.report import StudyReport
from triage.outputs.ups_store import (
    FINAL_STATES,
    GLOBAL_SUBSCRIPTION_UID,
    UpsStore,
    WorkitemRow,
)
from triage.outputs.ups_types import (
    EventType,
    ProcedureStepState,
    UpsConfig,
    UpsError,
    UpsEvent,
)

logger = logging.getLogger(__name__)

_CAS_ATTEMPTS = 20

STATUS_SUCCESS = 0x0000


Publish = Callable[[Sequence[UpsEvent]], None]


@dataclass(slots=True)
class _Change:
    """What a request does to one workitem: its answer, new content and events."""

    status: int
    ds: Dataset | None = None
    state: str | None = None
    transaction_uid: str | None = None
    events: list[UpsEvent] = field(default_factory=list)


def _discard(events: Sequence[UpsEvent]) -> None:
    del events


class UpsService:
    """The workitems, their subscriptions and their state machine.

    Parameters
    ----------
    db
        The index database (tables ``ups_workitems`` and ``ups_subscriptions``).
    config
        Our AE title, known subscribers, station name.
    publish
        Receives the events of each committed change (already in the outbox); must not
        block.
    """

    def __init__(self, db: Database, config: UpsConfig, publish: Publish = _discard) -> None:
        self.db = db
        self.config = config
        self.store = UpsStore(db)
        self._publish = publish

    @staticmethod
    def workitem_uid(study_instance_uid: str) -> str:
        """The workitem UID of a study: derived from it, so every process agrees."""
        return str(generate_uid(entropy_srcs=["triage-ups-workitem", study_instance_uid]))

    # --- the worklist side -----------------------------------------------------------------

    def upsert(self, report: StudyReport) -> bool:
        """Create the study's workitem or bring its priority in step with ``report``.

        Returns whether the workitem changed.  A report older than the newest one applied
        (``report.version``) and a workitem already COMPLETED or CANCELED are left alone.
        """
        uid = self.workitem_uid(report.study_instance_uid)
        for _ in range(_CAS_ATTEMPTS):
            with self.db.write() as conn:
                outcome = self._upsert_once(conn, report, uid)
                if outcome is not None:
                    self.store.add_events(conn, outcome[1])
            if outcome is not None:
                changed, events = outcome
                self._publish(events)
                return changed
        raise TriageError(f"UPS workitem {uid}: too many concurrent updates")

    def _upsert_once(
        self, conn: Connection, report: StudyReport, uid: str
    ) -> tuple[bool, list[UpsEvent]] | None:
        now = dt.datetime.now(dt.UTC)
        priority = str(report.priority)
        row = self.store.by_study(conn, report.study_instance_uid)
        if row is None:
            self.store.lock_subscriptions(conn)
            ds = content.build_workitem(
                report,
                workitem_uid=uid,
                now=now,
                station_name=self.config.station_name,
                retrieve_ae_title=self.config.retrieve_ae_title,
            )
            if not self.store.insert(
                conn,
                workitem_uid=uid,
                study_instance_uid=report.study_instance_uid,
                priority=priority,
                report_version=report.version,
                ds=ds,
            ):
                return None  # created concurrently: go again
            events: list[UpsEvent] = []
            for sub in self.store.subscribers(conn, GLOBAL_SUBSCRIPTION_UID):
                self.store.put_subscription(
                    conn, sub.ae_title, uid, deletion_lock=sub.deletion_lock
                )
                events.append(self._state_event(sub.ae_title, ds))
                if ds.ScheduledStationNameCodeSequence:
                    events.append(
                        UpsEvent(sub.ae_title, uid, EventType.ASSIGNED, content.assigned_report(ds))
                    )
            logger.info("UPS workitem %s created for study %s at priority %s",
                        uid, report.study_instance_uid, priority)
            return True, events
        if row.state in FINAL_STATES or report.version < row.report_version:
            return False, []
        ds = row.dataset()
        if row.priority == priority:
            if report.version == row.report_version:
                return False, []
            # Remember the newer version, so that an older report arriving late is ignored.
            ok = self.store.compare_and_set(conn, row, ds=ds, report_version=report.version)
            return (False, []) if ok else None
        ds.ScheduledProcedureStepPriority = priority
        ds.ScheduledProcedureStepModificationDateTime = content.dicom_datetime(now)
        if not self.store.compare_and_set(
            conn, row, ds=ds, priority=priority, report_version=report.version
        ):
            return None
        logger.info("UPS workitem %s: priority %s -> %s", uid, row.priority, priority)
        return True, self._state_events(conn, uid, ds)

    # --- reads -----------------------------------------------------------------------------

    def get(self, workitem_uid: str) -> Dataset:
        """The workitem's attributes (never its transaction UID)."""
        with self.db.read() as conn:
            row = self.store.by_uid(conn, workitem_uid)
        if row is None:
            raise UpsError(0xC307, f"no UPS workitem {workitem_uid}")
        return row.dataset()

    def find(self, query: Dataset) -> list[Dataset]:
        """C-FIND: the response identifier of every matching workitem, oldest first."""

        def single(keyword: str) -> list[str]:
            # Narrow in SQL by one exact value; the full matching happens below.
            value = query.get(keyword)
            if isinstance(value, str) and value and not set(value) & set("*?\\"):
                return [value]
            return []

        uids = query.get("StudyInstanceUID", "")
        study_uids = [str(u) for u in uids] if not isinstance(uids, str) else (
            [uids] if uids else []
        )
        with self.db.read() as conn:
            rows = self.store.select(
                conn,
                states=single("ProcedureStepState"),
                priorities=single("ScheduledProcedureStepPriority"),
                study_instance_uids=study_uids,
            )
        found = []
        for row in rows:
            ds = row.dataset()
            if content.matches(ds, query):
                found.append(content.response_identifier(ds, query))
        return found

    # --- subscriptions (N-ACTION types 3, 4, 5) -------------------------------------------

    def _known(self, ae_title: str) -> str:
        title = ae_title.strip()
        if title not in self.config.subscribers:
            raise UpsError(0xC308, f"Receiving AE {title!r} is unknown to this SCP")
        return title

    def subscribe(self, ae_title: str, workitem_uid: str, *, deletion_lock: bool) -> None:
        """Subscribe ``ae_title`` to one workitem or, with the global UID, to all of them.

        Sends the initial UPS State Reports of PS3.4 CC.2.4.3: for the workitem, or for
        every open workitem on a global subscription with deletion lock.
        """
        title = self._known(ae_title)
        events: list[UpsEvent] = []
        with self.db.write() as conn:
            if workitem_uid == GLOBAL_SUBSCRIPTION_UID:
                self.store.lock_subscriptions(conn)
                self.store.put_subscription(
                    conn, title, GLOBAL_SUBSCRIPTION_UID, deletion_lock=deletion_lock
                )
                open_states = (ProcedureStepState.SCHEDULED, ProcedureStepState.IN_PROGRESS)
                for row in self.store.select(conn, states=open_states):
                    self.store.put_subscription(
                        conn, title, row.workitem_uid, deletion_lock=deletion_lock,
                        keep_lock=True,
                    )
                    if deletion_lock:
                        events.append(self._state_event(title, row.dataset()))
            else:
                row = self._row(conn, workitem_uid)
                self.store.put_subscription(
                    conn, title, workitem_uid, deletion_lock=deletion_lock
                )
                events.append(self._state_event(title, row.dataset()))
            self.store.add_events(conn, events)
        logger.info("UPS subscription of %s to %s (deletion lock %s)",
                    title, workitem_uid, deletion_lock)
        self._publish(events)

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> None:
        """Unsubscribe from one workitem or, with the global UID, from everything."""
        title = self._known(ae_title)
        with self.db.write() as conn:
            if workitem_uid == GLOBAL_SUBSCRIPTION_UID:
                self.store.lock_subscriptions(conn)
                self.store.delete_subscriptions(conn, title)
            else:
                self._row(conn, workitem_uid)
                self.store.delete_subscriptions(conn, title, workitem_uid)
        logger.info("UPS subscription of %s to %s removed", title, workitem_uid)

    def suspend_global(self, ae_title: str) -> None:
        """End the global subscription but keep the existing per-workitem ones."""
        title = self._known(ae_title)
        with self.db.write() as conn:
            self.store.lock_subscriptions(conn)
            self.store.delete_subscriptions(conn, title, GLOBAL_SUBSCRIPTION_UID)
        logger.info("UPS global subscription of %s suspended", title)

    # --- state changes (N-ACTION types 1, 2; N-SET) ----------------------------------------

    def change_state(
        self, workitem_uid: str, requested: str, transaction_uid: str | None
    ) -> int:
        """Change UPS State (N-ACTION type 1); returns 0x0000 or a warning status."""
        try:
            target = ProcedureStepState(requested.strip())
        except ValueError:
            raise UpsError(0x0115, f"invalid Procedure Step State {requested!r}") from None
        tuid = (transaction_uid or "").strip() or None

        def decide(conn: Connection, row: WorkitemRow) -> _Change:
            warning = _check_transition(row, target, tuid)
            if warning is not None:
                return _Change(warning)
            ds = row.dataset()
            now = dt.datetime.now(dt.UTC)
            if target is ProcedureStepState.IN_PROGRESS:
                content.mark_in_progress(ds, now)
            else:
                content.mark_final(ds, target, now)
            events = self._state_events(conn, workitem_uid, ds)
            return _Change(STATUS_SUCCESS, ds, str(target), tuid, events)

        return self._modify(workitem_uid, decide, f"state -> {target}")

    def request_cancel(self, workitem_uid: str, requesting_ae: str, request: Dataset) -> int:
        """Request UPS Cancel (N-ACTION type 2), PS3.4 CC.2.2.3.

        A SCHEDULED workitem is canceled by us (IN PROGRESS, then CANCELED); for an
        IN PROGRESS one the subscribers (among them the performer) are told.
        """
        reason = str(request.get("ReasonForCancellation", "") or "")

        def decide(conn: Connection, row: WorkitemRow) -> _Change:
            if row.state == ProcedureStepState.COMPLETED:
                raise UpsError(0xC311, f"UPS workitem {workitem_uid} is already COMPLETED")
            if row.state == ProcedureStepState.CANCELED:
                return _Change(0xB304)
            if row.state == ProcedureStepState.IN_PROGRESS:
                subscribers = self.store.subscribers(conn, workitem_uid)
                if not subscribers:
                    raise UpsError(0xC312, "the performer cannot be contacted")
                info = content.cancel_requested_report(requesting_ae, request)
                return _Change(STATUS_SUCCESS, events=[
                    UpsEvent(s.ae_title, workitem_uid, EventType.CANCEL_REQUESTED, info)
                    for s in subscribers
                ])
            ds = row.dataset()
            now = dt.datetime.now(dt.UTC)
            content.mark_in_progress(ds, now)
            events = self._state_events(conn, workitem_uid, ds)
            content.mark_final(ds, ProcedureStepState.CANCELED, now, reason)
            events += self._state_events(conn, workitem_uid, ds, reason)
            return _Change(STATUS_SUCCESS, ds, ProcedureStepState.CANCELED,
                           str(generate_uid()), events)

        return self._modify(workitem_uid, decide, f"cancel requested by {requesting_ae}")

    #: Attributes the performer may set with N-SET (everything else is ours).
    SETTABLE = frozenset({
        "TransactionUID", "SpecificCharacterSet",
        "ProcedureStepProgressInformationSequence",
        "UnifiedProcedureStepPerformedProcedureSequence",
    })

    def set_performed(self, workitem_uid: str, modifications: Dataset) -> None:
        """N-SET by the performer of an IN PROGRESS workitem: progress and performed details.

        Changes of the Progress Information Sequence are sent as UPS Progress Reports.
        """
        others = [e.keyword or str(e.tag) for e in modifications if e.keyword not in self.SETTABLE]
        if others:
            raise UpsError(0x0106, f"attributes not settable by N-SET: {', '.join(others)}")
        tuid = str(modifications.get("TransactionUID", "") or "").strip() or None

        def decide(conn: Connection, row: WorkitemRow) -> _Change:
            if row.state in FINAL_STATES:
                raise UpsError(0xC300, f"UPS workitem {workitem_uid} may no longer be updated")
            if row.state != ProcedureStepState.IN_PROGRESS:
                raise UpsError(0xC310, f"UPS workitem {workitem_uid} is not IN PROGRESS")
            if tuid != row.transaction_uid:
                raise UpsError(0xC301, "the correct Transaction UID was not provided")
            ds = row.dataset()
            before = ds.get("ProcedureStepProgressInformationSequence")
            for elem in modifications:
                if elem.keyword not in ("TransactionUID", "SpecificCharacterSet"):
                    ds.add(elem)
            events = []
            if ds.get("ProcedureStepProgressInformationSequence") != before:
                info = content.progress_report(ds)
                events = [
                    UpsEvent(s.ae_title, workitem_uid, EventType.PROGRESS_REPORT, info)
                    for s in self.store.subscribers(conn, workitem_uid)
                ]
            return _Change(STATUS_SUCCESS, ds, events=events)

        self._modify(workitem_uid, decide, "N-SET")

    def _modify(
        self, workitem_uid: str, decide: Callable[[Connection, WorkitemRow], _Change], what: str
    ) -> int:
        """Apply ``decide``'s change with compare-and-set (retried), then publish its events."""
        for _ in range(_CAS_ATTEMPTS):
            with self.db.write() as conn:
                row = self._row(conn, workitem_uid)
                change = decide(conn, row)
                if change.ds is not None and not self.store.compare_and_set(
                    conn, row, ds=change.ds, state=change.state,
                    transaction_uid=change.transaction_uid,
                ):
                    continue
                self.store.add_events(conn, change.events)
            if change.ds is not None:
                logger.info("UPS workitem %s: %s", workitem_uid, what)
            self._publish(change.events)
            return change.status
        raise TriageError(f"UPS workitem {workitem_uid}: too many concurrent updates")

    # --- helpers ---------------------------------------------------------------------------

    def _row(self, conn: Connection, workitem_uid: str) -> WorkitemRow:
        row = self.store.by_uid(conn, workitem_uid)
        if row is None:
            raise UpsError(0xC307, f"no UPS workitem {workitem_uid}")
        return row

    @staticmethod
    def _state_event(ae_title: str, ds: Dataset, reason: str = "") -> UpsEvent:
        return UpsEvent(
            ae_title, str(ds.SOPInstanceUID), EventType.STATE_REPORT,
            content.state_report(ds, reason),
        )

    def _state_events(
        self, conn: Connection, workitem_uid: str, ds: Dataset, reason: str = ""
    ) -> list[UpsEvent]:
        return [
            self._state_event(s.ae_title, ds, reason)
            for s in self.store.subscribers(conn, workitem_uid)
        ]


def _check_transition(
    row: WorkitemRow, target: ProcedureStepState, tuid: str | None
) -> int | None:
    """Raise the failure of an illegal change; a warning status if there is nothing to do."""
    uid = row.workitem_uid
    if row.state in FINAL_STATES:
        if target == row.state:
            return 0xB304 if target is ProcedureStepState.CANCELED else 0xB306
        raise UpsError(0xC300, f"UPS workitem {uid} is {row.state} and may no longer be updated")
    if target is ProcedureStepState.SCHEDULED:
        raise UpsError(0xC303, "a UPS may only become SCHEDULED through N-CREATE")
    if row.state == ProcedureStepState.SCHEDULED:
        if target is not ProcedureStepState.IN_PROGRESS:
            raise UpsError(0xC310, f"UPS workitem {uid} is not yet IN PROGRESS")
        if tuid is None:
            raise UpsError(0xC301, "a Transaction UID is needed to start a UPS")
        return None
    if target is ProcedureStepState.IN_PROGRESS:
        raise UpsError(0xC302, f"UPS workitem {uid} is already IN PROGRESS")
    if tuid is None or tuid != row.transaction_uid:
        raise UpsError(0xC301, "the correct Transaction UID was not provided")
    return None
