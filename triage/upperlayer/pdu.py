"""Wire format of the DICOM upper layer (PS3.8 §9.3) and of DIMSE command sets (PS3.7 §6.3).

Encoders and decoders only: PDUs and their items, presentation-context negotiation, command
sets in Implicit VR Little Endian, and the Part 10 File Meta Information written before a
received data set.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from triage import __version__

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


class ProtocolError(Exception):
    """The peer broke PS3.8; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


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


# --- encoding helpers ------------------------------------------------------------


def uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def decode_text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def encode_pdu(pdu_type: int, body: bytes) -> bytes:
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


def us_value(value: int) -> bytes:
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
        element(0x0002, b"UI", uid_value(sop_class_uid)),
        element(0x0003, b"UI", uid_value(sop_instance_uid)),
        element(0x0010, b"UI", uid_value(transfer_syntax_uid)),
        element(0x0012, b"UI", uid_value(IMPLEMENTATION_CLASS_UID)),
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
        called_ae=decode_text(body[4:20]),
        calling_ae=decode_text(body[20:36]),
        application_context="",
        contexts=[],
    )
    for item_type, value in _items(body, 68):
        if item_type == 0x10:
            request.application_context = decode_text(value)
        elif item_type == 0x20:
            request.contexts.append(_parse_rq_context(value))
        elif item_type == 0x50:
            for sub_type, sub in _items(value, 0):
                if sub_type == 0x51 and len(sub) == 4:
                    request.max_pdu_length = struct.unpack(">L", sub)[0]
                elif sub_type == 0x52:
                    request.implementation_class_uid = decode_text(sub)
                elif sub_type == 0x55:
                    request.implementation_version = decode_text(sub)
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
            abstract = decode_text(sub)
        elif sub_type == 0x40:
            syntaxes.append(decode_text(sub))
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
    return encode_pdu(ASSOCIATE_AC, head + b"".join(items))


def encode_associate_rj(rejection: Rejection) -> bytes:
    return encode_pdu(ASSOCIATE_RJ, struct.pack(">BBBB", 0, rejection.result, rejection.source,
                                          rejection.reason))


def encode_abort(reason: int = 0, source: int = ABORT_SOURCE_PROVIDER) -> bytes:
    return encode_pdu(ABORT, struct.pack(">BBBB", 0, 0, source, reason))
