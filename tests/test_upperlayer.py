"""The listener's DICOM upper layer at the byte level: negotiation, rejections, aborts, limits.

PDUs are written by hand here from PS3.8 §9.3 (not with the module's own encoders), so that a
mistake in those encoders cannot hide itself; the everyday peers (pynetdicom, dcmtk) are
exercised in ``test_listener.py``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import RunningListener, TestAE, wait_for
from triage.db import Database, instances

Start = Callable[..., RunningListener]

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
FIND_MODEL = b"1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND: not served by the listener


def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(*, contexts: list[tuple[int, bytes, list[bytes]]], max_length: int = 16384,
                 app_context: bytes = APP_CONTEXT, calling: bytes = b"RAWSCU",
                 called: bytes = b"TRIAGE") -> bytes:
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + b"\0" * 32
    body += item(0x10, app_context)
    for cid, abstract, syntaxes in contexts:
        sub = item(0x30, abstract) + b"".join(item(0x40, ts) for ts in syntaxes)
        body += item(0x20, bytes([cid, 0, 0, 0]) + sub)
    body += item(0x50, item(0x51, struct.pack(">L", max_length)) + item(0x52, b"1.2.3.4"))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = recv_exact(sock, 6)
    kind, _, length = struct.unpack(">BBL", head)
    return kind, recv_exact(sock, length)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def command(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HHL", 0, e, len(v)) + v for e, v in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def p_data(cid: int, control: int, fragment: bytes) -> bytes:
    pdv = struct.pack(">LBB", len(fragment) + 2, cid, control) + fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def parse_command(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos < len(raw):
        _, elem, length = struct.unpack_from("<HHL", raw, pos)
        out[elem] = raw[pos + 8: pos + 8 + length]
        pos += 8 + length
    return out


def read_command(sock: socket.socket) -> tuple[dict[int, bytes], list[int]]:
    """Reassemble one command set from P-DATA PDUs; also returns each PDU's length."""
    fragments, lengths = b"", []
    while True:
        kind, body = read_pdu(sock)
        assert kind == 0x04, f"expected P-DATA-TF, got 0x{kind:02X}"
        lengths.append(len(body))
        pos = 0
        while pos < len(body):
            length, _, control = struct.unpack_from(">LBB", body, pos)
            fragments += body[pos + 6: pos + 4 + length]
            pos += 4 + length
            if control & 0x02:
                return parse_command(fragments), lengths


def connect(running: RunningListener) -> socket.socket:
    sock = socket.create_connection((running.host, running.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def accepted_contexts(ac_body: bytes) -> dict[int, int]:
    """Context id → result of an A-ASSOCIATE-AC."""
    results, pos = {}, 68
    while pos < len(ac_body):
        kind, _, length = struct.unpack_from(">BBH", ac_body, pos)
        if kind == 0x21:
            results[ac_body[pos + 4]] = ac_body[pos + 6]
        pos += 4 + length
    return results


def test_contexts_are_answered_one_by_one(start_listener: Start, sqlite_db: Database) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[
            (1, VERIFICATION, [IMPLICIT_LE]),
            (3, FIND_MODEL, [IMPLICIT_LE]),
            (5, CTImageStorage.encode(), [b"1.2.3.999"]),
            (7, CTImageStorage.encode(), [b"1.2.3.999", ExplicitVRLittleEndian.encode()]),
        ]))
        kind, body = read_pdu(sock)
        assert kind == 0x02
        # accepted, abstract syntax not supported, transfer syntaxes not supported, accepted
        assert accepted_contexts(body) == {1: 0, 3: 3, 5: 4, 7: 0}
        assert body[4:20] == b"TRIAGE".ljust(16) and body[20:36] == b"RAWSCU".ljust(16)
        sock.sendall(struct.pack(">BBL", 0x05, 0, 4) + b"\0" * 4)
        assert read_pdu(sock)[0] == 0x06


def test_wrong_application_context_is_rejected(start_listener: Start,
                                               sqlite_db: Database) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])],
                                  app_context=b"1.2.3.4.5"))
        kind, body = read_pdu(sock)
    assert kind == 0x03
    assert tuple(body[1:4]) == (1, 1, 2)  # permanent, service user, app context not supported


def test_association_limit_rejects_transiently(start_listener: Start,
                                               sqlite_db: Database) -> None:
    running = start_listener(sqlite_db, max_associations=1)
    ae = TestAE(ae_title="FIRST")
    ae.add_requested_context(Verification)
    first = ae.associate(running.host, running.port)
    assert first.is_established
    try:
        with connect(running) as sock:
            sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])]))
            kind, body = read_pdu(sock)
        assert kind == 0x03
        assert tuple(body[1:4]) == (2, 3, 2)  # transient, presentation, local limit exceeded
    finally:
        first.release()
    second = ae.associate(running.host, running.port)  # the slot is free again
    assert second.is_established
    second.release()


def test_called_ae_title_is_checked_when_required(start_listener: Start,
                                                  sqlite_db: Database) -> None:
    running = start_listener(sqlite_db, require_called_ae_title=True)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])],
                                  called=b"SOMEONE"))
        kind, body = read_pdu(sock)
    assert kind == 0x03 and tuple(body[1:4]) == (1, 1, 7)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])]))
        assert read_pdu(sock)[0] == 0x02


def test_echo_response_is_split_to_the_peers_maximum_length(start_listener: Start,
                                                            sqlite_db: Database) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])], max_length=40))
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(p_data(1, 0x03, command([
            (0x0002, VERIFICATION + b"\0"), (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", 7)), (0x0800, struct.pack("<H", 0x0101)),
        ])))
        response, lengths = read_command(sock)
    assert len(lengths) > 1 and max(lengths) <= 40
    assert struct.unpack("<H", response[0x0100])[0] == 0x8030
    assert struct.unpack("<H", response[0x0120])[0] == 7
    assert struct.unpack("<H", response[0x0900])[0] == 0x0000


def test_unsupported_operation_is_answered_not_aborted(start_listener: Start,
                                                       sqlite_db: Database) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])]))
        assert read_pdu(sock)[0] == 0x02
        # An N-GET-RQ (0x0110) on the Verification context, without a data set.
        sock.sendall(p_data(1, 0x03, command([
            (0x0003, VERIFICATION + b"\0"), (0x0100, struct.pack("<H", 0x0110)),
            (0x0110, struct.pack("<H", 3)), (0x0800, struct.pack("<H", 0x0101)),
        ])))
        response, _ = read_command(sock)
        assert struct.unpack("<H", response[0x0100])[0] == 0x8110
        assert struct.unpack("<H", response[0x0900])[0] == 0x0211
        # the association goes on
        sock.sendall(p_data(1, 0x03, command([
            (0x0002, VERIFICATION + b"\0"), (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", 4)), (0x0800, struct.pack("<H", 0x0101)),
        ])))
        assert struct.unpack("<H", read_command(sock)[0][0x0900])[0] == 0x0000


def test_abort_in_the_middle_of_a_data_set_leaves_nothing(
    start_listener: Start, sqlite_db: Database
) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, CTImageStorage.encode(),
                                             [ExplicitVRLittleEndian.encode()])]))
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(p_data(1, 0x03, command([
            (0x0002, CTImageStorage.encode()), (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", 1)), (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)), (0x1000, b"1.2.3.4.5.6"),
        ])))
        sock.sendall(p_data(1, 0x00, b"\x08\x00\x16\x00UI\x1a\x00" + b"1" * 26))
        wait_for(lambda: any(running.store.incoming_dir.iterdir()), 5,
                 what="partial data set on disk")
        sock.sendall(struct.pack(">BBL", 0x07, 0, 4) + bytes([0, 0, 0, 0]))
    wait_for(lambda: not any(running.store.incoming_dir.iterdir()), 5,
             what="partial data set removed")
    with sqlite_db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(instances)).scalar() == 0
    ae = TestAE(ae_title="AFTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(running.host, running.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_unknown_pdu_type_is_aborted(start_listener: Start, sqlite_db: Database) -> None:
    running = start_listener(sqlite_db)
    with connect(running) as sock:
        sock.sendall(associate_rq(contexts=[(1, VERIFICATION, [IMPLICIT_LE])]))
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(struct.pack(">BBL", 0x09, 0, 2) + b"\0\0")
        kind, body = read_pdu(sock)
        assert kind == 0x07 and body[2] == 2 and body[3] == 1  # provider, unrecognised PDU
        assert sock.recv(16) == b""


def test_a_silent_connection_is_closed_after_the_acse_timeout(
    start_listener: Start, sqlite_db: Database, tmp_path: Path
) -> None:
    running = start_listener(sqlite_db, acse_timeout_s=0.5)
    with connect(running) as sock:
        started = time.monotonic()
        kind, _ = read_pdu(sock)  # an A-ABORT, then the close
        assert kind == 0x07
        assert sock.recv(16) == b""
        assert time.monotonic() - started < 5
