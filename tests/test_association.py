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
        raw: Any = event.assoc.dul.socket.socket  # type: ignore[union-attr]
        opened.append((raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                       event.assoc.dul._run_loop_delay))

    handlers = [*connection_handlers(0.0005), (evt.EVT_CONN_OPEN, check)]
    _associate_with_a_resetting_peer(handlers)
    assert opened and opened[0][0] != 0
    assert opened[0][1] == pytest.approx(0.0005)


def _echo_scp() -> tuple[Any, int]:
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    server: Any = scp.start_server(("127.0.0.1", 0), block=False)
    return server, server.server_address[1]


def _response_taken_by_the_reactor(handlers: list[Any], *, waiting: bool = True) -> Any:
    """What the reactor does with a response it took while a request waits for it.

    Recreates the moment of the race: ``send_*`` has cleared the reactor checkpoint and
    waits on the DIMSE queue, and the reactor, not yet paused, has just taken the response
    off that queue and passes it to ``_serve_request``.  Returns what the waiting request
    would then get from the queue.
    """
    from pynetdicom.dimse_primitives import C_ECHO

    server, port = _echo_scp()
    ae = AE(ae_title="TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, evt_handlers=handlers)
    try:
        assert assoc.is_established
        response = C_ECHO()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0x0000
        if waiting:
            assoc._reactor_checkpoint.clear()  # as send_c_echo does while it waits
        try:
            assoc._serve_request(response, 1)
            _, got = assoc.dimse.get_msg(block=False)
        finally:
            assoc._reactor_checkpoint.set()
        assert got is None or got is response
        return got
    finally:
        assoc.release()
        server.shutdown()


def test_a_response_taken_by_the_reactor_reaches_the_waiting_request() -> None:
    assert _response_taken_by_the_reactor(connection_handlers()) is not None


def test_a_response_nobody_waits_for_is_left_to_pynetdicom() -> None:
    assert _response_taken_by_the_reactor(connection_handlers(), waiting=False) is None


def test_pynetdicom_alone_drops_that_response() -> None:
    """Why the handlers hand it back: pynetdicom logs it as unexpected and drops it, and the
    request then waits out the DIMSE timeout.  If this starts failing, pynetdicom handles
    the race itself and ``hand_back_responses`` can go."""
    assert _response_taken_by_the_reactor([]) is None
