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

from triage.upperlayer.handler import (
    Association,
    Handler,
    Outcome,
    ServerConfig,
    StoreRequest,
)
from triage.upperlayer.pdu import (
    APPLICATION_CONTEXT,
    IMPLEMENTATION_CLASS_UID,
    RJ_CALLED_AE_NOT_RECOGNISED,
    RJ_CALLING_AE_NOT_RECOGNISED,
    RJ_PERMANENT,
    RJ_SOURCE_USER,
    VERIFICATION,
    AssociateRequest,
    PresentationContext,
    ProtocolError,
    Rejection,
)
from triage.upperlayer.server import Server

__all__ = [
    "APPLICATION_CONTEXT",
    "IMPLEMENTATION_CLASS_UID",
    "RJ_CALLED_AE_NOT_RECOGNISED",
    "RJ_CALLING_AE_NOT_RECOGNISED",
    "RJ_PERMANENT",
    "RJ_SOURCE_USER",
    "VERIFICATION",
    "AssociateRequest",
    "Association",
    "Handler",
    "Outcome",
    "PresentationContext",
    "ProtocolError",
    "Rejection",
    "Server",
    "ServerConfig",
    "StoreRequest",
]
