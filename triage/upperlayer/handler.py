"""What the server and its handler exchange: associations, C-STORE requests and outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from triage.upperlayer.pdu import AssociateRequest, PresentationContext, Rejection


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
