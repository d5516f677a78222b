"""Tuning of the pynetdicom associations of the sender (``triage send`` and the outputs).

pynetdicom sets no ``TCP_NODELAY``: a DIMSE message written as several small PDUs then
waits for the peer's delayed ACK (~40 ms per message on Linux).  Its network loop also sleeps
1 ms between polls when idle, which adds up to a millisecond to every message.
"""

from __future__ import annotations

import socket
from typing import Any

#: pynetdicom's own idle poll of the association's network loop, in seconds.
DEFAULT_POLL_INTERVAL_S = 0.001


def tune(assoc: Any, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
    """Disable Nagle's algorithm on the association's socket and set its idle poll."""
    dul = getattr(assoc, "dul", None)
    if dul is None:
        return
    raw = getattr(getattr(dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = poll_interval_s
