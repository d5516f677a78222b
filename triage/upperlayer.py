"""A small DICOM upper layer for the listener: associations, C-ECHO and C-STORE as an SCP.

Why not pynetdicom here: its association loop decodes every P-DATA PDU into objects, copies
each fragment several times, polls its socket on a timer and runs the state machine of
PS3.8 for every primitive; at 512 KB CT slices that cost more than making the instance
durable.  This module does only what an image receiver needs, straight from the socket to a
spool file:

* A-ASSOCIATE-RQ → A-ASSOCIATE-AC / -RJ (PS3.8 §9.3.2–9.3.4): application context, one
  transfer syntax chosen per presentation context in the acceptor's order of preference,
  maximum length, implementation class UID and version name.  SCP/SCU role selection,
  asynchronous operations window, user identity and extended negotiation items are read and
  not answered, which means the defaults (PS3.7 §D.3.3): synchronous, SCU requests, SCP answers.
* P-DATA-TF: command fragments are collected in memory (they are small); data set fragments
  are written to a Part 10 file (preamble + File Meta Information built from the command and
  the presentation context) as they arrive, in 16 KB writes, never held whole in memory.
* C-ECHO-RQ → C-ECHO-RSP; C-STORE-RQ → the handler's status in C-STORE-RSP; any other
  request → 0x0211 (unrecognised operation); C-CANCEL is ignored.
* A-RELEASE-RQ → A-RELEASE-RP; A-ABORT, a closed connection, a timeout or a malformed PDU
  end the association (the last two with an A-ABORT from us).

pynetdicom stays the SCU of the project (sender, outputs) and the UPS SCP; tests drive this
module with pynetdicom and dcmtk peers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from triage import __version__

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
#: Our implementation class UID (an OID under the UUID-derived root 2.25, fixed forever).
IMPLEMENTATION_CLASS_UID = "2.25.153241718312468097381927520936460197453"
IMPLEMENTATION_VERSION = f"TRIAGE_{__version__}"[:16]

# PDU types (PS3.8 §9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# DIMSE command fields (PS3.7 §E.1)
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101
STATUS_UNRECOGNISED_OPERATION = 0x0211
STATUS_PROCESSING_FAILURE = 0x0110

# Presentation context results (PS3.8 §9.3.3.2)
PC_ACCEPTANCE, PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4

# A-ASSOCIATE-RJ result / source / reason (PS3.8 §9.3.4)
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_ACSE, RJ_SOURCE_PRESENTATION = 1, 2, 3
RJ_NO_REASON, RJ_APPLICATION_CONTEXT_NOT_SUPPORTED = 1, 2
RJ_CALLING_AE_NOT_RECOGNISED, RJ_CALLED_AE_NOT_RECOGNISED = 3, 7
RJ_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # source ACSE
RJ_LOCAL_LIMIT_EXCEEDED = 2  # source presentation

# A-ABORT source / reason (PS3.8 §9.3.8)
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_UNRECOGNISED_PDU, ABORT_REASON_UNEXPECTED_PDU = 1, 2
ABORT_REASON_INVALID_PARAMETER = 6

_WRITE_SLICE = 16384  # page-cache writes above ~32 KB are several times slower on ext4 here
_RECV_BUFFER = 262144
_MAX_COMMAND = 65536  # a DIMSE command set is a few hundred bytes
_MAX_NON_DATA_PDU = 1 << 20  # association / release / abort PDUs are small


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerGone(Exception):
    """The connection closed or timed out."""


@dataclass(frozen=True, slots=True)
class PresentationContext:
    """One proposed presentation context and what we answered."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    result: int = PC_ACCEPTANCE
    transfer_syntax: str | None = None


@dataclass(slots=True)
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ a receiver decides on."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[PresentationContext]
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    implementation_version: str = ""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int


@dataclass(slots=True)
class Association:
    """One accepted association, as the handler sees it."""

    id: str
    calling_ae: str
    called_ae: str
    peer: str
    max_pdu_length: int
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    refused: int = 0


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A received C-STORE: its command and the Part 10 file holding its data set.

    ``path`` is None and ``write_error`` says why when the data set could not be written
    to the incoming directory (disk full, I/O error); the file is deleted after the handler
    returns unless the handler moved it.
    """

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path | None
    write_error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the handler answers to a C-STORE (``comment`` goes to Error Comment, no PHI)."""

    status: int
    comment: str | None = None


class Handler(Protocol):
    """What the server calls; every method runs on the association's own thread."""

    def check(self, request: AssociateRequest, peer: str) -> Rejection | None:
        """None to accept the association, or the rejection to send."""

    def accepted(self, assoc: Association) -> None: ...

    def rejected(self, request: AssociateRequest, peer: str, rejection: Rejection) -> None: ...

    def store(self, assoc: Association, request: StoreRequest) -> Outcome: ...

    def released(self, assoc: Association) -> None: ...

    def aborted(self, assoc: Association, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Network parameters of the server."""

    ae_title: str
    supported: dict[str, tuple[str, ...]]  # abstract syntax → transfer syntaxes, preferred first
    incoming_dir: Path  # where data sets are written while they arrive (the spool's file system)
    max_pdu_length: int = 1_048_576  # what we accept; 0 = unlimited
    max_associations: int = 10
    acse_timeout_s: float = 30.0  # connect → A-ASSOCIATE-RQ, A-RELEASE-RQ → close
    network_timeout_s: float = 60.0  # silence on an open association


# --- encoding helpers ------------------------------------------------------------


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def _ae_field(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_command(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """An Implicit VR Little Endian command set with its group length (PS3.7 §6.3.1)."""
    body = b"".join(struct.pack("<HHL", 0x0000, elem, len(value)) + value
                    for elem, value in elements)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def decode_command(raw: bytes) -> dict[int, bytes]:
    """Element number → value of a group-0000 command set (Implicit VR Little Endian)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(raw):
        group, elem, length = struct.unpack_from("<HHL", raw, pos)
        pos += 8
        if group != 0x0000 or pos + length > len(raw):
            raise ProtocolError("malformed DIMSE command set")
        out[elem] = raw[pos:pos + length]
        pos += length
    if pos != len(raw):
        raise ProtocolError("malformed DIMSE command set")
    return out


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
              source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1), Explicit VR LE."""

    def element(elem: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHL", 0x0002, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value

    ae = source_ae.encode("ascii", "replace")[:16]
    body = b"".join((
        element(0x0001, b"OB", b"\x00\x01"),
        element(0x0002, b"UI", _uid_bytes(sop_class_uid)),
        element(0x0003, b"UI", _uid_bytes(sop_instance_uid)),
        element(0x0010, b"UI", _uid_bytes(transfer_syntax_uid)),
        element(0x0012, b"UI", _uid_bytes(IMPLEMENTATION_CLASS_UID)),
        element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii").ljust(
            len(IMPLEMENTATION_VERSION) + len(IMPLEMENTATION_VERSION) % 2, b" ")),
        *([element(0x0016, b"AE", ae + b" " * (len(ae) % 2))] if ae else []),
    ))
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


# --- A-ASSOCIATE ------------------------------------------------------------


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the body of an A-ASSOCIATE-RQ (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ too short")
    version = struct.unpack_from(">H", body, 0)[0]
    request = AssociateRequest(
        protocol_version=version,
        called_ae=_text(body[4:20]),
        calling_ae=_text(body[20:36]),
        application_context="",
        contexts=[],
    )
    for item_type, value in _items(body, 68):
        if item_type == 0x10:
            request.application_context = _text(value)
        elif item_type == 0x20:
            request.contexts.append(_parse_rq_context(value))
        elif item_type == 0x50:
            for sub_type, sub in _items(value, 0):
                if sub_type == 0x51 and len(sub) == 4:
                    request.max_pdu_length = struct.unpack(">L", sub)[0]
                elif sub_type == 0x52:
                    request.implementation_class_uid = _text(sub)
                elif sub_type == 0x55:
                    request.implementation_version = _text(sub)
    return request


def _items(data: bytes, pos: int) -> Iterable[tuple[int, bytes]]:
    while pos < len(data):
        if pos + 4 > len(data):
            raise ProtocolError("truncated item in A-ASSOCIATE-RQ")
        item_type, _, length = struct.unpack_from(">BBH", data, pos)
        pos += 4
        if pos + length > len(data):
            raise ProtocolError("truncated item in A-ASSOCIATE-RQ")
        yield item_type, data[pos:pos + length]
        pos += length


def _parse_rq_context(value: bytes) -> PresentationContext:
    if len(value) < 4:
        raise ProtocolError("truncated presentation context item")
    abstract = ""
    syntaxes: list[str] = []
    for sub_type, sub in _items(value, 4):
        if sub_type == 0x30:
            abstract = _text(sub)
        elif sub_type == 0x40:
            syntaxes.append(_text(sub))
    return PresentationContext(value[0], abstract, tuple(syntaxes))


def negotiate(request: AssociateRequest,
              supported: dict[str, tuple[str, ...]]) -> list[PresentationContext]:
    """Our answer to each proposed context: accepted with one transfer syntax, or why not."""
    answered = []
    for cx in request.contexts:
        ours = supported.get(cx.abstract_syntax)
        if ours is None:
            answered.append(PresentationContext(cx.context_id, cx.abstract_syntax,
                                                cx.transfer_syntaxes,
                                                PC_ABSTRACT_SYNTAX_NOT_SUPPORTED))
            continue
        chosen = next((ts for ts in ours if ts in cx.transfer_syntaxes), None)
        answered.append(PresentationContext(
            cx.context_id, cx.abstract_syntax, cx.transfer_syntaxes,
            PC_ACCEPTANCE if chosen else PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, chosen,
        ))
    return answered


def encode_associate_ac(request: AssociateRequest, contexts: Sequence[PresentationContext],
                        max_pdu_length: int) -> bytes:
    """The A-ASSOCIATE-AC for ``request`` with the negotiated ``contexts``."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode("ascii"))]
    for cx in contexts:
        # The transfer syntax sub-item is not significant when the context is refused but
        # must be there (PS3.8 §9.3.3.2); Implicit VR Little Endian is the usual filler.
        ts = cx.transfer_syntax or "1.2.840.10008.1.2"
        items.append(_item(0x21, struct.pack(">BBBB", cx.context_id, 0, cx.result, 0)
                           + _item(0x40, ts.encode("ascii"))))
    user = (_item(0x51, struct.pack(">L", max_pdu_length))
            + _item(0x52, IMPLEMENTATION_CLASS_UID.encode("ascii"))
            + _item(0x55, IMPLEMENTATION_VERSION.encode("ascii")))
    items.append(_item(0x50, user))
    head = (struct.pack(">HH", 1, 0) + _ae_field(request.called_ae)
            + _ae_field(request.calling_ae) + b"\x00" * 32)
    return _pdu(ASSOCIATE_AC, head + b"".join(items))


def encode_associate_rj(rejection: Rejection) -> bytes:
    return _pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, rejection.result, rejection.source,
                                          rejection.reason))


def encode_abort(reason: int = 0, source: int = ABORT_SOURCE_PROVIDER) -> bytes:
    return _pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))


# --- the connection ------------------------------------------------------------


class _Connection:
    """Blocking reads and writes of one socket, with a reusable receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            got = self.sock.recv_into(self._view, min(n, _RECV_BUFFER))
            if got == 0:
                raise PeerGone("connection closed by the peer")
            chunks.append(bytes(self._view[:got]))
            n -= got
        return b"".join(chunks)

    def copy_to(self, fd: int, n: int) -> OSError | None:
        """Write the next ``n`` bytes of the stream to ``fd`` in small page-cache writes.

        All ``n`` bytes are consumed from the socket even when a write fails (the
        association stays in step); the first write error is returned.
        """
        view = self._view
        error: OSError | None = None
        while n > 0:
            got = self.sock.recv_into(view, min(n, _RECV_BUFFER))
            if got == 0:
                raise PeerGone("connection closed by the peer")
            n -= got
            if error is not None:
                continue
            try:
                for start in range(0, got, _WRITE_SLICE):
                    _write_all(fd, view[start:min(got, start + _WRITE_SLICE)])
            except OSError as exc:
                error = exc
        return error

    def skip(self, n: int) -> None:
        while n > 0:
            got = self.sock.recv_into(self._view, min(n, _RECV_BUFFER))
            if got == 0:
                raise PeerGone("connection closed by the peer")
            n -= got

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


@dataclass(slots=True)
class _Message:
    """A DIMSE message being received on one presentation context."""

    context: PresentationContext
    command: dict[int, bytes]
    fd: int | None = None
    path: Path | None = None
    error: OSError | None = None  # writing the data set failed; answered as out of resources


class _AssociationRunner:
    """Serves one TCP connection from A-ASSOCIATE-RQ to its end."""

    def __init__(self, server: Server, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.config = server.config
        self.handler = server.handler
        self.sock = sock
        self.peer = peer
        self.conn = _Connection(sock)
        self.assoc: Association | None = None
        self._command = bytearray()
        self._message: _Message | None = None
        self._admitted = False

    # One association, start to end -----------------------------------------------------------

    def run(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(self.config.acse_timeout_s)
            if not self._associate():
                return
            self.sock.settimeout(self.config.network_timeout_s)
            self._serve()
        except PeerGone as exc:
            self._ended(f"connection lost ({exc})")
        except TimeoutError:
            self._abort(0)
            self._ended("timed out")
        except ProtocolError as exc:
            logger.warning("Aborting association from %s: %s", self.peer, exc)
            self._abort(exc.reason)
            self._ended(f"protocol error ({exc})")
        except OSError as exc:
            self._ended(f"connection error ({exc.strerror or exc})")
        finally:
            self._discard_message()
            if self._admitted:
                self.server.leave()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _associate(self) -> bool:
        pdu_type, body = self._read_pdu()
        if pdu_type != ASSOCIATE_RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                                ABORT_REASON_UNEXPECTED_PDU)
        assert body is not None
        request = parse_associate_rq(body)
        rejection = self._rejection(request)
        if rejection is not None:
            self.conn.send(encode_associate_rj(rejection))
            self.handler.rejected(request, self.peer, rejection)
            self._drain()
            return False
        contexts = negotiate(request, self.config.supported)
        self.assoc = Association(
            id=uuid.uuid4().hex,
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            peer=self.peer,
            max_pdu_length=request.max_pdu_length,
            contexts={cx.context_id: cx for cx in contexts if cx.result == PC_ACCEPTANCE},
        )
        self.conn.send(encode_associate_ac(request, contexts, self.config.max_pdu_length))
        self.handler.accepted(self.assoc)
        return True

    def _rejection(self, request: AssociateRequest) -> Rejection | None:
        if not request.protocol_version & 0x0001:
            return Rejection(RJ_PERMANENT, RJ_SOURCE_ACSE, RJ_PROTOCOL_VERSION_NOT_SUPPORTED)
        if request.application_context != APPLICATION_CONTEXT:
            return Rejection(RJ_PERMANENT, RJ_SOURCE_USER, RJ_APPLICATION_CONTEXT_NOT_SUPPORTED)
        rejection = self.handler.check(request, self.peer)
        if rejection is not None:
            return rejection
        self._admitted = self.server.admit()
        if not self._admitted:
            return Rejection(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_LOCAL_LIMIT_EXCEEDED)
        return None

    def _drain(self) -> None:
        """Give the peer a moment to read our last PDU and close first.

        Closing with unread bytes in our receive queue would send a TCP reset, which can
        make the peer discard the A-ASSOCIATE-RJ / A-ABORT before reading it.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(1.0)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass

    def _serve(self) -> None:
        while True:
            pdu_type, _ = self._read_pdu(stream_data=True)
            if pdu_type == P_DATA_TF:
                continue
            if pdu_type == RELEASE_RQ:
                self.conn.send(_pdu(RELEASE_RP, b"\x00" * 4))
                assoc, self.assoc = self.assoc, None
                if assoc is not None:
                    self.handler.released(assoc)
                return
            if pdu_type == ABORT:
                self._ended("aborted by the peer")
                return
            raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}",
                                ABORT_REASON_UNEXPECTED_PDU)

    def _ended(self, reason: str) -> None:
        if self.assoc is not None:
            assoc, self.assoc = self.assoc, None
            self.handler.aborted(assoc, reason)

    def _abort(self, reason: int) -> None:
        try:
            self.conn.send(encode_abort(reason))
        except OSError:
            return
        self._drain()

    # PDUs ------------------------------------------------------------

    def _read_pdu(self, *, stream_data: bool = False) -> tuple[int, bytes | None]:
        header = self.conn.read(6)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type == P_DATA_TF and stream_data:
            self._read_p_data(length)
            return pdu_type, None
        if not ASSOCIATE_RQ <= pdu_type <= ABORT:
            raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}",
                                ABORT_REASON_UNRECOGNISED_PDU)
        if length > _MAX_NON_DATA_PDU:
            raise ProtocolError(f"PDU of {length} bytes is too long")
        return pdu_type, self.conn.read(length)

    def _read_p_data(self, length: int) -> None:
        while length > 0:
            if length < 6:
                raise ProtocolError("truncated PDV item")
            item_length, context_id, control = struct.unpack(">LBB", self.conn.read(6))
            if item_length < 2 or item_length + 4 > length:
                raise ProtocolError("PDV item length exceeds its PDU")
            self._fragment(context_id, control, item_length - 2)
            length -= 4 + item_length

    def _fragment(self, context_id: int, control: int, size: int) -> None:
        assert self.assoc is not None
        context = self.assoc.contexts.get(context_id)
        if context is None:
            raise ProtocolError(f"P-DATA on presentation context {context_id}, not accepted")
        last = bool(control & 0x02)
        if control & 0x01:  # command fragment
            if self._message is not None:
                raise ProtocolError("command fragment while a data set is still expected",
                                    ABORT_REASON_UNEXPECTED_PDU)
            if len(self._command) + size > _MAX_COMMAND:
                raise ProtocolError("DIMSE command set too long")
            self._command += self.conn.read(size)
            if last:
                command = decode_command(bytes(self._command))
                self._command.clear()
                self._on_command(context, command)
            return
        message = self._message
        if message is None or message.context.context_id != context_id:
            raise ProtocolError("data set fragment without its command",
                                ABORT_REASON_UNEXPECTED_PDU)
        if message.fd is not None and message.error is None:
            message.error = self.conn.copy_to(message.fd, size)
        else:
            self.conn.skip(size)
        if last:
            self._message = None
            self._on_data_set(message)

    # DIMSE ------------------------------------------------------------

    def _on_command(self, context: PresentationContext, command: dict[int, bytes]) -> None:
        field_raw = command.get(0x0100)
        message_id_raw = command.get(0x0110)
        if field_raw is None or len(field_raw) != 2:
            raise ProtocolError("DIMSE command without a Command Field")
        command_field = struct.unpack("<H", field_raw)[0]
        message_id = struct.unpack("<H", message_id_raw)[0] if message_id_raw else 0
        has_data = struct.unpack("<H", command.get(0x0800, _us(NO_DATA_SET))[:2])[0] \
            != NO_DATA_SET
        if command_field == C_STORE_RQ and has_data:
            self._message = self._open_message(context, command)
            return
        if command_field == C_CANCEL_RQ:
            return
        if has_data:  # some other request with a data set: skip it, then refuse
            self._message = _Message(context, command)
            return
        self._answer_request(context, command, command_field, message_id)

    def _open_message(self, context: PresentationContext,
                      command: dict[int, bytes]) -> _Message:
        assert self.assoc is not None
        message = _Message(context, command)
        name = f"{uuid.uuid4().hex}.part"
        path = self.config.incoming_dir / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            message.error = exc
            return message
        message.fd, message.path = fd, path
        try:
            _write_all(fd, memoryview(file_meta(
                _text(command.get(0x0002, b"")), _text(command.get(0x1000, b"")),
                context.transfer_syntax or "", self.assoc.calling_ae,
            )))
        except OSError as exc:
            message.error = exc
        return message

    def _on_data_set(self, message: _Message) -> None:
        assert self.assoc is not None
        command = message.command
        field_raw = command.get(0x0100, _us(0))
        command_field = struct.unpack("<H", field_raw[:2])[0]
        message_id_raw = command.get(0x0110)
        message_id = struct.unpack("<H", message_id_raw)[0] if message_id_raw else 0
        if command_field != C_STORE_RQ:
            self._answer_request(message.context, command, command_field, message_id)
            return
        sop_class = _text(command.get(0x0002, b""))
        sop_instance = _text(command.get(0x1000, b""))
        try:
            if message.fd is not None:
                fd, message.fd = message.fd, None
                os.close(fd)
        except OSError as exc:  # delayed write errors (e.g. quota) surface at close
            message.error = message.error or exc
        try:
            error = message.error
            outcome = self._store(StoreRequest(
                message_id, sop_class, sop_instance, message.context.transfer_syntax or "",
                message.path if error is None else None,
                None if error is None else (error.strerror or str(error)),
            ))
        finally:
            _discard(message)
        self._respond(message.context, C_STORE_RSP, message_id, outcome.status,
                      sop_class=sop_class, sop_instance=sop_instance, comment=outcome.comment)

    def _store(self, request: StoreRequest) -> Outcome:
        assert self.assoc is not None
        try:
            return self.handler.store(self.assoc, request)
        except Exception:
            logger.exception("Unexpected error storing instance %s", request.sop_instance_uid)
            return Outcome(0xC211, "unexpected error in the receiver")

    def _answer_request(self, context: PresentationContext, command: dict[int, bytes],
                        command_field: int, message_id: int) -> None:
        if command_field & 0x8000:
            raise ProtocolError("unexpected DIMSE response from the requestor",
                                ABORT_REASON_UNEXPECTED_PDU)
        sop_class = _text(command.get(0x0002, b""))
        if command_field == C_ECHO_RQ:
            self._respond(context, C_ECHO_RSP, message_id, 0x0000, sop_class=sop_class)
            return
        self._respond(context, command_field | 0x8000, message_id,
                      STATUS_UNRECOGNISED_OPERATION, sop_class=sop_class or None)

    def _respond(self, context: PresentationContext, command_field: int, message_id: int,
                 status: int, *, sop_class: str | None, sop_instance: str | None = None,
                 comment: str | None = None) -> None:
        assert self.assoc is not None
        elements: list[tuple[int, bytes]] = []
        if sop_class:
            elements.append((0x0002, _uid_bytes(sop_class)))
        elements += [(0x0100, _us(command_field)), (0x0120, _us(message_id)),
                     (0x0800, _us(NO_DATA_SET)), (0x0900, _us(status))]
        if sop_instance:
            elements.append((0x1000, _uid_bytes(sop_instance)))
        if comment and status != 0x0000:
            text = comment.encode("ascii", "replace")[:64]
            elements.append((0x0902, text + b" " * (len(text) % 2)))
        elements.sort()
        command = encode_command(elements)
        limit = self.assoc.max_pdu_length - 6 if self.assoc.max_pdu_length else len(command)
        limit = max(limit, 1)
        pdus = []
        for start in range(0, len(command), limit):
            fragment = command[start:start + limit]
            control = 0x01 | (0x02 if start + limit >= len(command) else 0)
            pdus.append(_pdu(P_DATA_TF, struct.pack(">LBB", len(fragment) + 2,
                                                    context.context_id, control) + fragment))
        self.conn.send(b"".join(pdus))

    def _discard_message(self) -> None:
        message, self._message = self._message, None
        if message is not None:
            _discard(message)


def _discard(message: _Message) -> None:
    """Close and delete what is left of a message's file (the handler moved it, or not)."""
    if message.fd is not None:
        fd, message.fd = message.fd, None
        with contextlib.suppress(OSError):
            os.close(fd)
    if message.path is not None:
        with contextlib.suppress(OSError):
            message.path.unlink(missing_ok=True)


class Server:
    """A threaded DICOM SCP: one thread accepts, one thread per association.

    Parameters
    ----------
    config
        Network parameters and supported presentation contexts.
    handler
        Decides on associations and stores instances.
    """

    def __init__(self, config: ServerConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self._listen: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active = 0
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve in background threads; returns the bound address."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        self._listen = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept",
                                        daemon=True)
        self._thread.start()
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting and abort open associations."""
        self._stopping.set()
        if self._listen is not None:
            with contextlib.suppress(OSError):
                self._listen.shutdown(socket.SHUT_RDWR)
            self._listen.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            try:
                sock.sendall(encode_abort(0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sockets:
                    break
            time.sleep(0.01)

    @property
    def active_associations(self) -> int:
        with self._lock:
            return self._active

    def connections(self) -> list[socket.socket]:
        """The sockets of the connections being served now."""
        with self._lock:
            return list(self._sockets)

    def admit(self) -> bool:
        """Take an association slot; False when ``max_associations`` are open."""
        with self._lock:
            if self.config.max_associations and self._active >= self.config.max_associations:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _accept_loop(self) -> None:
        assert self._listen is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listen.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)
                continue
            peer = f"{address[0]}:{address[1]}"
            with self._lock:
                self._sockets.add(sock)
            threading.Thread(target=self._run, args=(sock, peer),
                             name=f"dicom-{peer}", daemon=True).start()

    def _run(self, sock: socket.socket, peer: str) -> None:
        try:
            _AssociationRunner(self, sock, peer).run()
        except Exception:
            logger.exception("Association from %s ended by an unexpected error", peer)
        finally:
            with self._lock:
                self._sockets.discard(sock)
