"""One association, from A-ASSOCIATE-RQ to its end, on its own thread."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from triage.upperlayer.handler import Association, Outcome, StoreRequest
from triage.upperlayer.pdu import (
    ABORT,
    ABORT_REASON_UNEXPECTED_PDU,
    ABORT_REASON_UNRECOGNISED_PDU,
    APPLICATION_CONTEXT,
    ASSOCIATE_RQ,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATA_SET,
    P_DATA_TF,
    PC_ACCEPTANCE,
    RELEASE_RP,
    RELEASE_RQ,
    RJ_APPLICATION_CONTEXT_NOT_SUPPORTED,
    RJ_LOCAL_LIMIT_EXCEEDED,
    RJ_PERMANENT,
    RJ_PROTOCOL_VERSION_NOT_SUPPORTED,
    RJ_SOURCE_ACSE,
    RJ_SOURCE_PRESENTATION,
    RJ_SOURCE_USER,
    RJ_TRANSIENT,
    STATUS_UNRECOGNISED_OPERATION,
    AssociateRequest,
    PresentationContext,
    ProtocolError,
    Rejection,
    decode_command,
    decode_text,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_command,
    encode_pdu,
    file_meta,
    negotiate,
    parse_associate_rq,
    uid_value,
    us_value,
)

if TYPE_CHECKING:
    from triage.upperlayer.server import Server

logger = logging.getLogger(__name__)

_RECV_BUFFER = 262144
_MAX_COMMAND = 65536  # a DIMSE command set is a few hundred bytes
_MAX_NON_DATA_PDU = 1 << 20  # association / release / abort PDUs are small


class PeerGone(Exception):
    """The connection closed or timed out."""


# --- the connection ------------------------------------------------------------


class _Connection:
    """Blocking reads and writes of one socket, with a reusable receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)

    def _recv(self, n: int) -> int:
        """Receive up to ``n`` bytes into the buffer; how many arrived."""
        got = self.sock.recv_into(self._view, min(n, _RECV_BUFFER))
        if got == 0:
            raise PeerGone("connection closed by the peer")
        return got

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            got = self._recv(n)
            chunks.append(bytes(self._view[:got]))
            n -= got
        return b"".join(chunks)

    def copy_to(self, fd: int, n: int) -> OSError | None:
        """Write the next ``n`` bytes of the stream to ``fd``, each receive in one write.

        All ``n`` bytes are consumed from the socket even when a write fails (the
        association stays in step); the first write error is returned.
        """
        view = self._view
        error: OSError | None = None
        while n > 0:
            got = self._recv(n)
            n -= got
            if error is not None:
                continue
            try:
                _write_all(fd, view[:got])
            except OSError as exc:
                error = exc
        return error

    def skip(self, n: int) -> None:
        while n > 0:
            n -= self._recv(n)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


@dataclass(frozen=True, slots=True)
class _Command:
    """The elements of a received DIMSE command set that we act on (PS3.7 §9.3, §9.1.5)."""

    field: int  # Command Field
    message_id: int
    has_data: bool  # Command Data Set Type other than 0x0101
    sop_class: str  # Affected SOP Class UID
    sop_instance: str  # Affected SOP Instance UID

    @classmethod
    def parse(cls, raw: bytes) -> _Command:
        elements = decode_command(raw)
        field_raw = elements.get(0x0100)
        if field_raw is None or len(field_raw) != 2:
            raise ProtocolError("DIMSE command without a Command Field")
        message_id = elements.get(0x0110)
        data_set_type = elements.get(0x0800, us_value(NO_DATA_SET))
        return cls(
            field=struct.unpack("<H", field_raw)[0],
            message_id=struct.unpack("<H", message_id[:2])[0] if message_id else 0,
            has_data=struct.unpack("<H", data_set_type[:2])[0] != NO_DATA_SET,
            sop_class=decode_text(elements.get(0x0002, b"")),
            sop_instance=decode_text(elements.get(0x1000, b"")),
        )


@dataclass(slots=True)
class _Message:
    """A DIMSE message being received on one presentation context."""

    context: PresentationContext
    command: _Command
    fd: int | None = None
    path: Path | None = None
    error: OSError | None = None  # writing the data set failed; answered as out of resources


class AssociationRunner:
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
        self._spare: tuple[int, Path] | None = None  # the next instance's file, made early
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
            self._drop_spare()
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
                self.conn.send(encode_pdu(RELEASE_RP, b"\x00" * 4))
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
                command = _Command.parse(bytes(self._command))
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

    def _on_command(self, context: PresentationContext, command: _Command) -> None:
        if command.field == C_STORE_RQ and command.has_data:
            self._message = self._open_message(context, command)
            return
        if command.field == C_CANCEL_RQ:
            return
        if command.has_data:  # some other request with a data set: skip it, then refuse
            self._message = _Message(context, command)
            return
        self._answer_request(context, command)

    def _open_message(self, context: PresentationContext, command: _Command) -> _Message:
        assert self.assoc is not None
        message = _Message(context, command)
        spare, self._spare = self._spare, None
        try:
            fd, path = spare if spare is not None else self._create_incoming()
        except OSError as exc:
            message.error = exc
            return message
        message.fd, message.path = fd, path
        try:
            _write_all(fd, memoryview(file_meta(
                command.sop_class, command.sop_instance, context.transfer_syntax or "",
                self.assoc.calling_ae,
            )))
        except OSError as exc:
            message.error = exc
        return message

    def _create_incoming(self) -> tuple[int, Path]:
        path = self.config.incoming_dir / f"{uuid.uuid4().hex}.part"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), path

    def _prepare_spare(self) -> None:
        """Create the next instance's file now, while the peer prepares its next request.

        Creating a file in the spool took a median ~0.65 ms in the kernel here (``strace
        -T``, ext4 without journal); made now, that time overlaps the peer's turn.
        """
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = self._create_incoming()

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            _remove(*spare)

    def _on_data_set(self, message: _Message) -> None:
        assert self.assoc is not None
        command = message.command
        if command.field != C_STORE_RQ:
            self._answer_request(message.context, command)
            return
        try:
            if message.fd is not None:
                fd, message.fd = message.fd, None
                os.close(fd)
        except OSError as exc:  # delayed write errors (e.g. quota) surface at close
            message.error = message.error or exc
        try:
            error = message.error
            outcome = self._store(StoreRequest(
                command.message_id, command.sop_class, command.sop_instance,
                message.context.transfer_syntax or "",
                message.path if error is None else None,
                None if error is None else (error.strerror or str(error)),
            ))
        finally:
            _discard(message)
        self._respond(message.context, C_STORE_RSP, command.message_id, outcome.status,
                      sop_class=command.sop_class, sop_instance=command.sop_instance,
                      comment=outcome.comment)
        self._prepare_spare()

    def _store(self, request: StoreRequest) -> Outcome:
        assert self.assoc is not None
        try:
            return self.handler.store(self.assoc, request)
        except Exception:
            logger.exception("Unexpected error storing instance %s", request.sop_instance_uid)
            return Outcome(0xC211, "unexpected error in the receiver")

    def _answer_request(self, context: PresentationContext, command: _Command) -> None:
        if command.field & 0x8000:
            raise ProtocolError("unexpected DIMSE response from the requestor",
                                ABORT_REASON_UNEXPECTED_PDU)
        if command.field == C_ECHO_RQ:
            self._respond(context, C_ECHO_RSP, command.message_id, 0x0000,
                          sop_class=command.sop_class)
            return
        self._respond(context, command.field | 0x8000, command.message_id,
                      STATUS_UNRECOGNISED_OPERATION, sop_class=command.sop_class or None)

    def _respond(self, context: PresentationContext, command_field: int, message_id: int,
                 status: int, *, sop_class: str | None, sop_instance: str | None = None,
                 comment: str | None = None) -> None:
        assert self.assoc is not None
        elements: list[tuple[int, bytes]] = []
        if sop_class:
            elements.append((0x0002, uid_value(sop_class)))
        elements += [(0x0100, us_value(command_field)), (0x0120, us_value(message_id)),
                     (0x0800, us_value(NO_DATA_SET)), (0x0900, us_value(status))]
        if sop_instance:
            elements.append((0x1000, uid_value(sop_instance)))
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
            pdus.append(encode_pdu(P_DATA_TF, struct.pack(">LBB", len(fragment) + 2,
                                                    context.context_id, control) + fragment))
        self.conn.send(b"".join(pdus))

    def _discard_message(self) -> None:
        message, self._message = self._message, None
        if message is not None:
            _discard(message)


def _discard(message: _Message) -> None:
    """Close and delete what is left of a message's file (the handler moved it, or not)."""
    fd, message.fd = message.fd, None
    _remove(fd, message.path)


def _remove(fd: int | None, path: Path | None) -> None:
    """Close ``fd`` and delete ``path`` where given, ignoring errors (clean-up only)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
