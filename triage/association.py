"""The pynetdicom associations of the sender (``triage send``), the outputs and the UPS SCP.

Three things pynetdicom does not do for us:

- It sets no ``TCP_NODELAY``: a DIMSE message written as several small PDUs then waits for
  the peer's delayed ACK (~40 ms per message on Linux).  Its network loop also sleeps 1 ms
  between polls when idle, which adds up to a millisecond to every message.
- pynetdicom 3.0.4 shuts a socket down and closes it in one ``try``: when the shutdown fails,
  as it does once the peer has reset the connection (``ENOTCONN``), the close is skipped and
  the socket stays open until the garbage collector happens to find it.  A PACS that aborts
  or restarts would leak a descriptor per association until then.
- Its requestor can lose a response.  ``send_c_store`` and the other ``send_*`` methods pause
  the association's reactor thread, but the check that it is paused can read a flag the
  reactor has not yet reset after the previous request; when the next response comes back
  fast, the reactor takes it off the queue as an "unexpected" message and the request waits
  out the DIMSE timeout, then aborts (seen under CPU load: "Received unexpected C-STORE
  service message", then 30 s).  The handlers give such a response back to the queue the
  request is waiting on.

:func:`connection_handlers` gives the event handlers that see to all three for one AE or
server.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

#: pynetdicom's own idle poll of the association's network loop, in seconds.
DEFAULT_POLL_INTERVAL_S = 0.001


def tune(assoc: Any, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
    """Disable Nagle's algorithm on the association's socket and set its idle poll."""
    dul = getattr(assoc, "dul", None)
    if dul is None:
        return
    raw = _raw_socket(assoc)
    if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = poll_interval_s


def _raw_socket(assoc: Any) -> socket.socket | None:
    raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return raw if isinstance(raw, socket.socket) else None


def hand_back_responses(assoc: Any) -> None:
    """Let a response the reactor took while a request waits reach that request.

    pynetdicom clears ``_reactor_checkpoint`` for as long as a ``send_*`` method sends and
    waits, and its reactor passes what it takes off the queue to ``_serve_request``.  A
    response (not a request) arriving there while the checkpoint is clear belongs to the
    waiting ``send_*``: it goes back on the queue.  Anything else is pynetdicom's to handle.
    """
    serve = getattr(assoc, "_serve_request", None)
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    queue = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve is None or checkpoint is None or queue is None:
        return  # another pynetdicom: leave it alone

    def serve_or_hand_back(msg: Any, context_id: int) -> None:
        if not getattr(msg, "is_valid_request", True) and not checkpoint.is_set():
            queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_hand_back


class _Connections:
    """Tunes each association when its connection opens (and, as requestor, lets it keep its
    responses); remembers its socket then and closes it when the connection is closed."""

    def __init__(self, poll_interval_s: float) -> None:
        self.poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._open: dict[int, socket.socket] = {}  # id(association) → its socket

    def opened(self, event: evt.Event) -> None:
        tune(event.assoc, self.poll_interval_s)
        if getattr(event.assoc, "is_requestor", False):
            hand_back_responses(event.assoc)
        raw = _raw_socket(event.assoc)
        if raw is not None:
            with self._lock:
                self._open[id(event.assoc)] = raw

    def closed(self, event: evt.Event) -> None:
        with self._lock:
            raw = self._open.pop(id(event.assoc), None)
        if raw is not None:
            raw.close()  # a no-op when pynetdicom managed to close it itself


def connection_handlers(poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
                        ) -> list[EventHandlerType]:
    """``evt_handlers`` for ``AE.associate`` or ``AE.start_server``: TCP_NODELAY, the idle
    poll and (requestor) :func:`hand_back_responses` when a connection opens, a sure close
    of its socket when it ends.

    Make one list per AE (client) or server: it keeps the sockets of its open associations.
    """
    connections = _Connections(poll_interval_s)
    return [(evt.EVT_CONN_OPEN, connections.opened),
            (evt.EVT_CONN_CLOSE, connections.closed)]
