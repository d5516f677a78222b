"""The vocabulary shared by the UPS modules: settings, states, event types, errors, events."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydicom import Dataset

from triage.errors import TriageError

_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable, no backslash


class ProcedureStepState(enum.StrEnum):
    """Procedure Step State (0074,1000)."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"


class EventType(enum.IntEnum):
    """N-EVENT-REPORT Event Type IDs of the UPS Event SOP Class (PS3.4 Table CC.2.4-1)."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


class UpsError(TriageError):
    """A UPS request was refused; ``status`` is the DIMSE failure status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _check_ae_title(value: str, what: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError(f"{what} must be 1-16 printable characters without '\\', got {value!r}")
    return value.strip()


@dataclass(frozen=True, slots=True)
class UpsConfig:
    """Settings of the UPS SCP and of its event delivery.

    Parameters
    ----------
    ae_title, host, port
        Our AE title and where the SCP listens (loopback unless told otherwise).
    subscribers
        AE title → (host, port) of every AE that may subscribe; N-EVENT-REPORTs are sent
        there.  A subscription for any other AE title is refused with 0xC308.
    station_name
        Value of the Scheduled Station Name Code Sequence (and a UPS Assigned event on
        creation); empty leaves the workitems unassigned.
    retrieve_ae_title
        Where consumers can retrieve the referenced images (DICOM Retrieval Sequence of each
        Input Information item); empty leaves it out.
    allowed_calling_aes
        Calling-AE allowlist of the SCP; empty accepts any.
    """

    ae_title: str = "TRIAGE"
    host: str = "127.0.0.1"
    port: int = 11113
    subscribers: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    station_name: str = ""
    retrieve_ae_title: str = ""
    allowed_calling_aes: tuple[str, ...] = ()
    network_timeout_s: float = 10.0
    event_max_attempts: int = 8
    event_backoff_s: float = 1.0
    event_backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        _check_ae_title(self.ae_title, "ae_title")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        subscribers: dict[str, tuple[str, int]] = {}
        for title, (host, port) in self.subscribers.items():
            if not host or not 1 <= int(port) <= 65535:
                raise ValueError(f"subscriber {title!r} needs a host and a port 1-65535")
            subscribers[_check_ae_title(title, "subscriber AE title")] = (host, int(port))
        object.__setattr__(self, "subscribers", MappingProxyType(subscribers))
        for title in self.allowed_calling_aes:
            _check_ae_title(title, "allowed calling AE title")
        if self.station_name and len(self.station_name) > 16:
            raise ValueError("station_name is a code value: at most 16 characters")
        if self.retrieve_ae_title:
            _check_ae_title(self.retrieve_ae_title, "retrieve_ae_title")
        if self.event_max_attempts < 1 or self.event_backoff_s <= 0 or self.network_timeout_s <= 0:
            raise ValueError("event_max_attempts, event_backoff_s and timeouts must be positive")


@dataclass(frozen=True, slots=True)
class UpsEvent:
    """One N-EVENT-REPORT to send: to ``ae_title``, about ``workitem_uid``."""

    ae_title: str
    workitem_uid: str
    event_type: EventType
    info: Dataset = field(compare=False)
