"""Event counters of events that leave no row, counted in memory and flushed to the index DB.

The listener counts associations (accepted, released, aborted, rejected), instances received
(stored or duplicate) and C-STORE refusals by status; the assembly sweeper counts series
declared ready.  Counting is a lock and a dict increment, so it costs the C-STORE hot path
nothing measurable.  A :class:`CounterFlusher` thread adds the deltas to the ``counters``
table every few seconds (``value = value + delta``); when the database is down the deltas are
kept and added to the next flush, so an ``0xA700`` answered because of a database outage is
still counted once the database is back.  ``triage web`` exports the table (:mod:`triage.metrics`).

Label values must be bounded (an outcome, a status, a trigger): never a UID, an AE title or
patient data.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from triage.db import Database, counters

logger = logging.getLogger(__name__)

#: Counter names (the ``triage_`` prefix and ``_total`` suffix are added on export).
INSTANCES_RECEIVED = "instances_received"  # outcome: stored / duplicate
STORE_ERRORS = "store_errors"  # reason: the DIMSE status answered, e.g. 0xA700
ASSOCIATIONS = "associations"  # event: accepted / released / aborted / rejected
SERIES_READY = "series_ready"  # trigger: count / release / timer / max_wait
SERIES_NOT_ANALYSED = "series_not_analysed"  # trigger

_Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class CounterValue:
    """One flushed counter: its name, labels and total."""

    name: str
    labels: dict[str, str]
    value: float


class EventCounters:
    """Thread-safe in-memory deltas, taken and written by :meth:`flush`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[_Key, float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with ``labels`` (bounded values only)."""
        key = (name, tuple(sorted(labels.items())) if labels else ())
        with self._lock:
            self._pending[key] = self._pending.get(key, 0.0) + amount

    def pending(self) -> dict[_Key, float]:
        """A copy of the deltas not yet flushed."""
        with self._lock:
            return dict(self._pending)

    def flush(self, db: Database, *, now: float | None = None, last: bool = False) -> int:
        """Add the pending deltas to the ``counters`` table in one transaction.

        Returns the number of counters written.  On error the deltas are put back (merged with
        those counted meanwhile) and the exception propagates.  ``last``: the connection is
        closed instead of returned to the pool (a flush at shutdown, maybe after
        ``db.dispose()``, leaves no open connection behind).
        """
        with self._lock:
            deltas, self._pending = self._pending, {}
        if not deltas:
            return 0
        try:
            add_deltas(db, deltas, now=time.time() if now is None else now, last=last)
        except Exception:
            with self._lock:
                for key, value in deltas.items():
                    self._pending[key] = self._pending.get(key, 0.0) + value
            raise
        return len(deltas)


def add_deltas(db: Database, deltas: Mapping[_Key, float], *, now: float,
               last: bool = False) -> None:
    """``INSERT … ON CONFLICT (name, labels) DO UPDATE SET value = value + delta``."""
    insert = sqlite_insert if db.is_sqlite else pg_insert
    with db.write() as conn:
        if last:
            conn.connection.detach()  # closed when released (also on error), not pooled
        for (name, labels), delta in sorted(deltas.items()):
            stmt = insert(counters).values(name=name, labels=_canonical(labels), value=delta,
                                           updated_at=now)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[counters.c.name, counters.c.labels],
                set_={"value": counters.c.value + stmt.excluded.value,
                      "updated_at": stmt.excluded.updated_at},
            ))


def read_counters(db: Database) -> list[CounterValue]:
    """Every flushed counter."""
    with db.read() as conn:
        rows = list(conn.execute(sa.select(counters.c.name, counters.c.labels,
                                           counters.c.value)))
    return [CounterValue(r.name, parse_labels(r.labels), float(r.value)) for r in rows]


def parse_labels(text: str) -> dict[str, str]:
    """The label set stored in a ``counters`` row."""
    value = json.loads(text)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _canonical(labels: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


class CounterFlusher:
    """Background thread flushing :class:`EventCounters` every ``interval_s``.

    Parameters
    ----------
    counters
        What to flush.
    db
        The index database.
    interval_s
        Time between flushes; :meth:`stop` flushes once more.
    """

    def __init__(self, counters: EventCounters, db: Database, *,
                 interval_s: float = 5.0) -> None:
        self.counters = counters
        self.db = db
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="counter-flusher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after a last flush (kept in memory if the database is down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush_now(self, *, last: bool = False) -> bool:
        """Flush once; False (deltas kept) when the database refused."""
        try:
            self.counters.flush(self.db, last=last)
        except Exception as exc:
            if not self._failing:
                logger.warning("Cannot flush event counters (kept for the next try): %s", exc)
            self._failing = True
            return False
        if self._failing:
            logger.info("Event counters flushed again")
        self._failing = False
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush_now()
        self.flush_now(last=True)
