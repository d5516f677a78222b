"""MLLP transport for HL7 v2: a sender that waits for the ACK, and a small receiver to try it.

Framing (HL7 v2 MLLP release 1): ``0x0B`` message ``0x1C 0x0D``. The sender opens one connection
per message (connect, send, read the ACK, close): results are rare, a fresh connection never
inherits a half-read stream from a previous failure, and receivers that drop idle connections
need no keep-alive handling.

Errors::

    TriageError
     └── HL7DeliveryError(retryable)   the message may not have been accepted

``retryable`` tells the caller whether sending the same message again (same MSH-10, so the
receiver can discard a duplicate) can succeed:

- AA/CA: accepted, no error.
- AE/CE (application/commit *error*): the receiver read the message and found its content
  wrong; the same bytes will fail the same way, so retrying only delays the dead letter.
  Not retryable.
- AR/CR (application/commit *reject*): HL7 uses these for failures unrelated to the content
  (receiver down, out of resources, a queue full). Retryable. (AR also answers an unsupported
  MSH-9/11/12, which a retry will not cure; the caller's attempt cap bounds that case.)
- connection refused/reset, a receiver that closes without an ACK, a timeout, an ACK that is
  not MLLP/HL7, or one whose MSA-2 is not our control id: we cannot tell whether the message
  was accepted, so retryable; receivers deduplicate on MSH-10.
- a TLS certificate the receiver's name or our trust store rejects: configuration, not
  retryable.

Logs carry the control id, host and ACK code, never the message or the ACK text (a receiver
may quote patient data in it). The ACK text is in the exception (its message and ``ack.text``,
cut to 500 characters), because the operator needs it to fix a refused message.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from triage.errors import TriageError
from triage.outputs.hl7 import escape, unescape

__all__ = ["Ack", "AckCode", "HL7DeliveryError", "MllpReceiver", "MllpSender", "frame"]

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a larger "ACK" is a broken peer, not an ACK
_WHITESPACE = b" \t\r\n"


class AckCode(enum.StrEnum):
    """MSA-1 (HL7 table 0008)."""

    AA = "AA"  # application accept
    AE = "AE"  # application error
    AR = "AR"  # application reject
    CA = "CA"  # commit accept (enhanced mode)
    CE = "CE"  # commit error
    CR = "CR"  # commit reject

    @property
    def accepted(self) -> bool:
        return self in (AckCode.AA, AckCode.CA)

    @property
    def retryable(self) -> bool:
        return self in (AckCode.AR, AckCode.CR)


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's answer: MSA-1, MSA-2 and the error text (MSA-3, else from ERR)."""

    code: AckCode
    control_id: str
    text: str = ""


class HL7DeliveryError(TriageError):
    """An HL7 message was not (or not provably) accepted by the receiver.

    Parameters
    ----------
    message
        What went wrong, without message contents.
    retryable
        Whether sending the same message again may succeed (see the module docstring).
    ack
        The receiver's ACK, when there was a readable one.
    """

    def __init__(self, message: str, *, retryable: bool, ack: Ack | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.ack = ack


def frame(message: str) -> bytes:
    """Encode ``message`` as UTF-8 in one MLLP block."""
    data = message.encode("utf-8")
    if b"\x0b" in data or b"\x1c" in data:
        raise ValueError("an HL7 message cannot contain the MLLP block characters 0x0B or 0x1C")
    return START_BLOCK + data + END_BLOCK


class MllpSender:
    """Send one HL7 message per connection and check the ACK.

    Parameters
    ----------
    host, port
        The receiver (an interface engine, a RIS).
    timeout_s
        Bound on the whole exchange: connect, TLS handshake, send and the ACK.
    tls
        A client context for MLLP over TLS; None for plain TCP.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float,
                 tls: ssl.SSLContext | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.tls = tls

    def send(self, message: str) -> Ack:
        """Deliver ``message`` and return the receiver's accepting ACK (AA or CA).

        Raises
        ------
        HL7DeliveryError
            On a rejecting ACK, a mismatched MSA-2, a malformed answer, a connection failure or
            when ``timeout_s`` passes first.
        ValueError
            When ``message`` has no MSH-10 control id.
        """
        control_id = _header_field(message, 10)
        if not control_id:
            raise ValueError("the message has no MSH-10 control id")
        payload = frame(message)
        deadline = time.monotonic() + self.timeout_s
        where = f"{self.host}:{self.port}"
        try:
            with self._connect(deadline) as sock:
                sock.settimeout(_remaining(deadline))
                sock.sendall(payload)
                raw = _read_frame(sock, deadline)
        except TimeoutError:
            raise HL7DeliveryError(
                f"no ACK from {where} within {self.timeout_s:g} s", retryable=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise HL7DeliveryError(
                f"TLS certificate of {where} rejected: {exc.verify_message}",
                retryable=False) from exc
        except OSError as exc:
            raise HL7DeliveryError(
                f"connection to {where} failed: {exc.strerror or exc}", retryable=True) from exc
        ack = parse_ack(raw)
        if ack.control_id != control_id:
            raise HL7DeliveryError(
                f"ACK from {where} acknowledges control id {ack.control_id!r}, "
                f"not {control_id!r}", retryable=True, ack=ack)
        if not ack.code.accepted:
            logger.warning("HL7 message %s refused by %s: %s", control_id, where, ack.code)
            raise HL7DeliveryError(
                f"{where} answered {ack.code}: {ack.text or '(no text)'}",
                retryable=ack.code.retryable, ack=ack)
        logger.info("HL7 message %s accepted by %s (%s)", control_id, where, ack.code)
        return ack

    def _connect(self, deadline: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock.settimeout(_remaining(deadline))
                return self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock


def parse_ack(text: str) -> Ack:
    """Read MSA (and ERR) from an ACK; tolerant of version, delimiters and line endings.

    Raises
    ------
    HL7DeliveryError
        (retryable) when ``text`` is not an HL7 message with an MSA segment.
    """
    segments = [s for s in re.split(r"\r\n|\r|\n", text.strip()) if s]
    msh = segments[0] if segments else ""
    if not msh.startswith("MSH") or len(msh) < 8:
        raise HL7DeliveryError("the answer is not an HL7 message", retryable=True)
    sep, comp, rep, esc, sub = msh[3], msh[4], msh[5], msh[6], msh[7]

    def field(fields: list[str], n: int) -> str:
        raw = fields[n] if n < len(fields) else ""
        return unescape(raw, field=sep, component=comp, repetition=rep, escape_char=esc,
                        subcomponent=sub)

    msa = next((s.split(sep) for s in segments if s.startswith(f"MSA{sep}")), None)
    if msa is None:
        raise HL7DeliveryError("the answer has no MSA segment", retryable=True)
    try:
        code = AckCode(field(msa, 1).strip())
    except ValueError:
        raise HL7DeliveryError("MSA-1 is not an acknowledgment code", retryable=True) from None
    text_ = field(msa, 3)  # MSA-3 is deprecated since 2.4 in favour of ERR, but still common
    for err in (s.split(sep) for s in segments if s.startswith(f"ERR{sep}")):
        if text_:
            break
        code_text = (err[3] if len(err) > 3 else "").split(comp)  # ERR-3 CWE: code^text^...
        text_ = field(err, 8) or field(err, 7) or field(code_text, 1)  # user msg, diagnostics
    return Ack(code=code, control_id=field(msa, 2), text=text_[:500])


def _header_field(message: str, n: int) -> str:
    """MSH-``n`` of an ER7 message (MSH-1 is the field separator itself)."""
    msh = message.lstrip().split("\r", 1)[0].split("\n", 1)[0]
    if not msh.startswith("MSH") or len(msh) < 4:
        return ""
    fields = msh.split(msh[3])
    return fields[n - 1] if n - 1 < len(fields) else ""


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_frame(sock: socket.socket, deadline: float) -> str:
    """Read one MLLP block and return its content; ``HL7DeliveryError`` if it is not one."""
    buf = bytearray()
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(65536)
        if not chunk:
            what = "an incomplete ACK" if buf.strip(_WHITESPACE) else "no ACK"
            raise HL7DeliveryError(
                f"the receiver closed the connection with {what}", retryable=True)
        buf += chunk
        body = buf.lstrip(_WHITESPACE)
        if body and not body.startswith(START_BLOCK):
            raise HL7DeliveryError("the answer is not MLLP-framed", retryable=True)
        end = body.find(END_BLOCK)
        if end != -1:
            return body[1:end].decode("utf-8", errors="replace")
        if len(buf) > MAX_FRAME_BYTES:
            raise HL7DeliveryError("the answer exceeds the MLLP frame limit", retryable=True)


Reply = Callable[[str], str | bytes | None]


class MllpReceiver:
    """A small MLLP listener for tests and for trying the channel: stores and acknowledges.

    Binds ``host`` (loopback by default) on ``port`` (0: an ephemeral port, see ``address``)
    and serves each connection in a daemon thread. Every message is kept in ``messages`` and
    answered with an ACK carrying ``ack_code`` (which may be changed between messages) and
    ``ack_text``. ``reply`` overrides that: it gets the message and returns an ER7 answer to
    frame, raw bytes to send as they are and hang up (to play a broken peer), or None to hang
    up without answering.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 ack_code: AckCode | str = AckCode.AA, ack_text: str = "",
                 reply: Reply | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.ack_code = AckCode(ack_code)
        self.ack_text = ack_text
        self.reply = reply
        self._tls = tls
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._messages: list[str] = []
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._server = threading.Thread(target=self._serve, name="mllp-receiver", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def messages(self) -> list[str]:
        with self._lock:
            return list(self._messages)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        """Stop accepting, end open connections and wait (a few seconds at most) for them."""
        self._stop.set()
        if self._server.is_alive():
            self._server.join(timeout=5)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> MllpReceiver:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def ack_for(self, message: str) -> str:
        """The ACK this receiver answers ``message`` with (original acknowledgment mode)."""
        trigger = _header_field(message, 9).split("^")[1:2] or [""]
        msh = "|".join([
            "MSH", "^~\\&", _header_field(message, 5), _header_field(message, 6),
            _header_field(message, 3), _header_field(message, 4),
            time.strftime("%Y%m%d%H%M%S"), "", f"ACK^{trigger[0]}^ACK", uuid.uuid4().hex[:20],
            "P", "2.5.1",
        ])
        msa = "|".join(["MSA", self.ack_code.value, _header_field(message, 10),
                        escape(self.ack_text)]).rstrip("|")
        return f"{msh}\r{msa}\r"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True,
                                      name="mllp-receiver-conn")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                conn.settimeout(10)  # a peer that never completes the handshake
                conn = self._tls.wrap_socket(conn, server_side=True)
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            if self._stop.is_set():  # stop() may have missed this connection
                return
            buf = bytearray()
            while not self._stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while (start := buf.find(START_BLOCK)) != -1 and \
                        (end := buf.find(END_BLOCK, start)) != -1:
                    message = buf[start + 1:end].decode("utf-8", errors="replace")
                    del buf[:end + len(END_BLOCK)]
                    with self._lock:
                        self._messages.append(message)
                    answer = self.reply(message) if self.reply else self.ack_for(message)
                    if isinstance(answer, str):
                        conn.sendall(frame(answer))
                        continue
                    if answer is not None:
                        conn.sendall(answer)
                    return
        except OSError:
            logger.debug("MLLP receiver connection ended with an error", exc_info=True)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
