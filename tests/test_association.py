"""The pynetdicom association handlers: TCP_NODELAY, and a socket closed after a reset."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.association import connection_handlers


def _associate_with_a_resetting_peer(handlers: list[Any]) -> tuple[Any, socket.socket]:
    """Associate with a peer that answers the A-ASSOCIATE-RQ with a TCP reset (a PACS that
    crashes or a firewall); returns the association and the client's socket."""
    with socket.create_server(("127.0.0.1", 0)) as server:

        def reset() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # linger 0: RST instead of FIN

        peer = threading.Thread(target=reset)
        peer.start()
        seen: list[socket.socket] = []
        ae = AE(ae_title="TEST")
        ae.acse_timeout = 10
        ae.add_requested_context(Verification)
        grab = (evt.EVT_CONN_OPEN, lambda event: seen.append(event.assoc.dul.socket.socket))
        assoc = ae.associate("127.0.0.1", server.getsockname()[1],
                             evt_handlers=[*handlers, grab])
        peer.join(10)
    (raw,) = seen
    return assoc, raw


def test_the_socket_is_closed_when_the_peer_resets_the_connection() -> None:
    assoc, raw = _associate_with_a_resetting_peer(connection_handlers())
    assert not assoc.is_established
    assert raw.fileno() == -1  # closed now, not whenever the garbage collector runs


def test_pynetdicom_alone_leaves_that_socket_open() -> None:
    """Why the handlers close it: if pynetdicom starts closing it itself, this fails and
    the workaround in triage.association can go."""
    assoc, raw = _associate_with_a_resetting_peer([])
    try:
        assert not assoc.is_established
        assert raw.fileno() != -1
    finally:
        raw.close()


def test_the_handlers_disable_nagle_and_set_the_poll() -> None:
    opened: list[tuple[int, float]] = []

    def check(event: evt.Event) -> None:
        raw = event.assoc.dul.socket.socket
        opened.append((raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                       event.assoc.dul._run_loop_delay))

    handlers = [*connection_handlers(0.0005), (evt.EVT_CONN_OPEN, check)]
    _associate_with_a_resetting_peer(handlers)
    assert opened and opened[0][0] != 0
    assert opened[0][1] == pytest.approx(0.0005)
