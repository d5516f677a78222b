"""Persistence of UPS workitems and subscriptions in the index database.

Sole writer of the ``ups_workitems``, ``ups_subscriptions`` and ``ups_events`` tables
(:mod:`triage.db`).
Every change of a workitem is a compare-and-set on its ``revision``, so concurrent writers
(the SCP's threads, workers in other processes) never lose an update; callers retry on a
lost race.  The workitem's DICOM attributes are kept as pydicom's JSON model
(``Dataset.to_json_dict()``); state, priority and the transaction UID are also columns, for
matching in SQL and because the transaction UID must never leave the SCP.

Global subscriptions are materialised: subscribing globally adds a row per open workitem,
and creating a workitem adds a row per global subscriber.  Both happen under one lock
(``pg_advisory_xact_lock`` on PostgreSQL; SQLite serialises writers anyway), so a workitem
created while an AE subscribes globally is never missed.

``ups_events`` is the outbox of N-EVENT-REPORTs: :class:`~triage.outputs.ups_service.UpsService`
adds the events of a change in the change's own transaction, and the notifier of
:mod:`triage.outputs.ups` delivers them per AE in ``id`` order, marking each row delivered
(or given up).  The Event Information is kept as pydicom's JSON text (``Dataset.to_json()``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydicom import Dataset
from sqlalchemy.engine import Connection

from triage.db import Database, ups_events, ups_subscriptions, ups_workitems
from triage.outputs.ups_types import EventType, UpsEvent

#: Well-known SOP Instance UID that addresses every UPS of the SCP (PS3.4 CC.2.3.2).
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"

#: Procedure Step States (0074,1000) after which a workitem may no longer change.
FINAL_STATES = frozenset({"COMPLETED", "CANCELED"})

# Arbitrary constant key of the PostgreSQL advisory lock that orders global subscriptions
# against workitem creation.
_SUBSCRIPTION_LOCK_KEY = 0x55505331  # "UPS1"


@dataclass(frozen=True, slots=True)
class WorkitemRow:
    """One stored workitem."""

    workitem_uid: str
    study_instance_uid: str
    state: str
    priority: str
    transaction_uid: str | None
    report_version: int
    revision: int
    dataset_json: dict[str, Any]
    created_at: float
    updated_at: float

    def dataset(self) -> Dataset:
        """A fresh copy of the workitem's attributes (without the transaction UID)."""
        return Dataset.from_json(self.dataset_json)


@dataclass(frozen=True, slots=True)
class Subscription:
    ae_title: str
    workitem_uid: str
    deletion_lock: bool


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One pending row of the event outbox."""

    id: int
    event: UpsEvent


def _pending_events() -> sa.ColumnElement[bool]:
    return sa.and_(ups_events.c.delivered_at.is_(None), ups_events.c.gave_up_at.is_(None))


def _row(r: Any) -> WorkitemRow:
    return WorkitemRow(
        workitem_uid=r.workitem_uid,
        study_instance_uid=r.study_instance_uid,
        state=r.state,
        priority=r.priority,
        transaction_uid=r.transaction_uid,
        report_version=r.report_version,
        revision=r.revision,
        dataset_json=dict(r.dataset),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


class UpsStore:
    """Table access for UPS; every method runs inside a transaction the caller opened."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- workitems -------------------------------------------------------------------------

    def by_uid(self, conn: Connection, workitem_uid: str) -> WorkitemRow | None:
        r = conn.execute(
            sa.select(ups_workitems).where(ups_workitems.c.workitem_uid == workitem_uid)
        ).first()
        return None if r is None else _row(r)

    def by_study(self, conn: Connection, study_instance_uid: str) -> WorkitemRow | None:
        r = conn.execute(
            sa.select(ups_workitems).where(
                ups_workitems.c.study_instance_uid == study_instance_uid
            )
        ).first()
        return None if r is None else _row(r)

    def insert(
        self,
        conn: Connection,
        *,
        workitem_uid: str,
        study_instance_uid: str,
        priority: str,
        report_version: int,
        ds: Dataset,
    ) -> bool:
        """Insert a SCHEDULED workitem; ``False`` if one exists already (UID or study)."""
        now = time.time()
        inserted = conn.execute(
            self.db.insert_ignore(ups_workitems).values(
                workitem_uid=workitem_uid,
                study_instance_uid=study_instance_uid,
                state="SCHEDULED",
                priority=priority,
                transaction_uid=None,
                report_version=report_version,
                revision=1,
                dataset=ds.to_json_dict(),
                created_at=now,
                updated_at=now,
            )
        ).first()
        return inserted is not None

    def compare_and_set(
        self,
        conn: Connection,
        row: WorkitemRow,
        *,
        ds: Dataset,
        state: str | None = None,
        priority: str | None = None,
        transaction_uid: str | None = None,
        report_version: int | None = None,
    ) -> bool:
        """Write ``ds`` (and the given columns) if the row is still at ``row.revision``."""
        values: dict[str, Any] = {
            "dataset": ds.to_json_dict(),
            "revision": row.revision + 1,
            "updated_at": time.time(),
        }
        if state is not None:
            values["state"] = state
        if priority is not None:
            values["priority"] = priority
        if transaction_uid is not None:
            values["transaction_uid"] = transaction_uid
        if report_version is not None:
            values["report_version"] = report_version
        updated = conn.execute(
            ups_workitems.update()
            .where(
                ups_workitems.c.workitem_uid == row.workitem_uid,
                ups_workitems.c.revision == row.revision,
            )
            .values(**values)
            .returning(ups_workitems.c.workitem_uid)
        ).first()
        return updated is not None

    def select(
        self,
        conn: Connection,
        *,
        states: Iterable[str] = (),
        priorities: Iterable[str] = (),
        study_instance_uids: Iterable[str] = (),
        workitem_uids: Iterable[str] = (),
    ) -> list[WorkitemRow]:
        """Workitems whose columns match every non-empty filter, oldest first."""
        query = sa.select(ups_workitems)
        for column, wanted in (
            (ups_workitems.c.state, list(states)),
            (ups_workitems.c.priority, list(priorities)),
            (ups_workitems.c.study_instance_uid, list(study_instance_uids)),
            (ups_workitems.c.workitem_uid, list(workitem_uids)),
        ):
            if wanted:
                query = query.where(column.in_(wanted))
        query = query.order_by(ups_workitems.c.created_at, ups_workitems.c.workitem_uid)
        return [_row(r) for r in conn.execute(query)]

    # --- subscriptions ---------------------------------------------------------------------

    def lock_subscriptions(self, conn: Connection) -> None:
        """Serialise global subscription changes against workitem creation."""
        if not self.db.is_sqlite:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SUBSCRIPTION_LOCK_KEY)))

    def subscription(
        self, conn: Connection, ae_title: str, workitem_uid: str
    ) -> Subscription | None:
        r = conn.execute(
            sa.select(ups_subscriptions).where(
                ups_subscriptions.c.ae_title == ae_title,
                ups_subscriptions.c.workitem_uid == workitem_uid,
            )
        ).first()
        return None if r is None else Subscription(r.ae_title, r.workitem_uid, r.deletion_lock)

    def put_subscription(
        self,
        conn: Connection,
        ae_title: str,
        workitem_uid: str,
        *,
        deletion_lock: bool,
        keep_lock: bool = False,
    ) -> bool:
        """Create the subscription or set its deletion lock; ``True`` if it is new.

        With ``keep_lock``, an existing subscription's lock is only ever raised, never
        dropped (a global subscription without lock leaves instance locks alone).
        """
        inserted = conn.execute(
            self.db.insert_ignore(ups_subscriptions).values(
                ae_title=ae_title,
                workitem_uid=workitem_uid,
                deletion_lock=deletion_lock,
                created_at=time.time(),
            )
        ).first()
        if inserted is not None:
            return True
        if deletion_lock or not keep_lock:
            conn.execute(
                ups_subscriptions.update()
                .where(
                    ups_subscriptions.c.ae_title == ae_title,
                    ups_subscriptions.c.workitem_uid == workitem_uid,
                )
                .values(deletion_lock=deletion_lock)
            )
        return False

    def delete_subscriptions(
        self, conn: Connection, ae_title: str, workitem_uid: str | None = None
    ) -> int:
        """Remove one subscription of ``ae_title``, or all of them when no UID is given."""
        stmt = ups_subscriptions.delete().where(ups_subscriptions.c.ae_title == ae_title)
        if workitem_uid is not None:
            stmt = stmt.where(ups_subscriptions.c.workitem_uid == workitem_uid)
        return int(conn.execute(stmt).rowcount or 0)

    def subscribers(self, conn: Connection, workitem_uid: str) -> list[Subscription]:
        """The subscriptions to one workitem, or the global ones for the well-known UID."""
        rows = conn.execute(
            sa.select(ups_subscriptions)
            .where(ups_subscriptions.c.workitem_uid == workitem_uid)
            .order_by(ups_subscriptions.c.ae_title)
        )
        return [Subscription(r.ae_title, r.workitem_uid, r.deletion_lock) for r in rows]

    # --- the event outbox ------------------------------------------------------------------

    def add_events(self, conn: Connection, events: Iterable[UpsEvent]) -> None:
        """Queue ``events`` for delivery (in the caller's transaction, in this order)."""
        now = time.time()
        rows = [
            {
                "ae_title": e.ae_title,
                "workitem_uid": e.workitem_uid,
                "event_type": int(e.event_type),
                "info": e.info.to_json(),
                "created_at": now,
                "attempts": 0,
            }
            for e in events
        ]
        if rows:
            conn.execute(ups_events.insert(), rows)

    def pending_events(self, conn: Connection, ae_title: str, limit: int) -> list[StoredEvent]:
        """The oldest ``limit`` undelivered events for ``ae_title``, in the order queued."""
        rows = conn.execute(
            sa.select(ups_events.c.id, ups_events.c.workitem_uid, ups_events.c.event_type,
                      ups_events.c.info)
            .where(ups_events.c.ae_title == ae_title, _pending_events())
            .order_by(ups_events.c.id)
            .limit(limit)
        )
        return [
            StoredEvent(r.id, UpsEvent(ae_title, r.workitem_uid, EventType(r.event_type),
                                       Dataset.from_json(r.info)))
            for r in rows
        ]

    def count_pending_events(self, conn: Connection, ae_title: str | None = None) -> int:
        """Undelivered events (not given up), of one AE or of all."""
        query = sa.select(sa.func.count()).select_from(ups_events).where(_pending_events())
        if ae_title is not None:
            query = query.where(ups_events.c.ae_title == ae_title)
        return int(conn.execute(query).scalar() or 0)

    def pending_event_aes(self, conn: Connection) -> list[str]:
        """The AE titles that have undelivered events."""
        rows = conn.execute(
            sa.select(ups_events.c.ae_title).where(_pending_events()).distinct()
        )
        return sorted(r.ae_title for r in rows)

    def event_delivered(self, conn: Connection, event_id: int, *, note: str | None = None) -> None:
        """Mark one event as answered by its subscriber (``note``: e.g. a refusal status)."""
        values: dict[str, Any] = {"delivered_at": time.time()}
        if note is not None:
            values["last_error"] = note[:256]
        conn.execute(ups_events.update().where(ups_events.c.id == event_id).values(**values))

    def events_failed(self, conn: Connection, ae_title: str, up_to_id: int, error: str) -> None:
        """Count a failed attempt on the pending events of ``ae_title`` up to ``up_to_id``."""
        conn.execute(
            ups_events.update()
            .where(ups_events.c.ae_title == ae_title, ups_events.c.id <= up_to_id,
                   _pending_events())
            .values(attempts=ups_events.c.attempts + 1, last_error=error[:256])
        )

    def give_up_events(self, conn: Connection, ae_title: str, reason: str | None = None) -> int:
        """Mark every pending event of ``ae_title`` as given up; returns how many."""
        values: dict[str, Any] = {"gave_up_at": time.time()}
        if reason is not None:
            values["last_error"] = reason[:256]
        return int(conn.execute(
            ups_events.update()
            .where(ups_events.c.ae_title == ae_title, _pending_events())
            .values(**values)
        ).rowcount or 0)

    def prune_events(self, conn: Connection, older_than: float) -> int:
        """Delete events delivered or given up before ``older_than`` (epoch seconds)."""
        return int(conn.execute(
            ups_events.delete().where(sa.or_(ups_events.c.delivered_at < older_than,
                                             ups_events.c.gave_up_at < older_than))
        ).rowcount or 0)
