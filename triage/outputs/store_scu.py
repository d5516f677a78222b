"""C-STORE of built DICOM objects (SR, KOS) to a PACS, failing loudly so the caller can retry.

Why a second sender next to :mod:`triage.sender`: that one streams files from disk byte for
byte for ``triage send``; this one sends data sets built in memory, proposes exactly their SOP
classes in Explicit VR Little Endian, and turns every way a store can fail into one exception,
:class:`PacsStoreError`, which says whether a retry can help.  The caller owns retries and
backoff (per destination, so one dead PACS does not starve the others; DESIGN.md).

A resend is harmless: the objects carry derived SOP Instance UIDs, so a PACS that already
stored an instance keeps one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from triage.association import connection_handlers
from triage.errors import TriageError

__all__ = ["DicomDestination", "PacsStoreError", "StoredInstance", "send_to_pacs"]

logger = logging.getLogger(__name__)

_RETRYABLE_STATUSES = range(0xA700, 0xA800)  # out of resources: the PACS asks us to come back
_WARNING = 0xB000


def _check_ae_title(name: str, value: str) -> None:
    if not 1 <= len(value) <= 16 or not value.strip() or "\\" in value \
            or any(ord(ch) < 0x20 or ord(ch) > 0x7E for ch in value):
        raise ValueError(f"{name} must be 1 to 16 printable ASCII characters without '\\'")


@dataclass(frozen=True, slots=True)
class DicomDestination:
    """A PACS to store to, with bounded waits at every step of the exchange."""

    host: str
    port: int
    called_ae: str = "PACS"
    calling_ae: str = "TRIAGE"
    connect_timeout_s: float = 5.0  # TCP connect
    acse_timeout_s: float = 10.0  # association request → accept/reject
    dimse_timeout_s: float = 30.0  # C-STORE request → response
    network_timeout_s: float = 60.0  # silence on an open association

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("DicomDestination.host must not be empty")
        if not 1 <= self.port <= 65535:
            raise ValueError("DicomDestination.port must be in 1..65535")
        _check_ae_title("DicomDestination.called_ae", self.called_ae)
        _check_ae_title("DicomDestination.calling_ae", self.calling_ae)
        for name in ("connect_timeout_s", "acse_timeout_s", "dimse_timeout_s",
                     "network_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DicomDestination.{name} must be positive")

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


class PacsStoreError(TriageError):
    """The PACS did not store every instance; nothing says which ones it kept.

    Parameters
    ----------
    message
        What failed, without patient data.
    status
        The DIMSE status of the failed C-STORE, None when the failure came before or
        instead of a response (refused connection, rejection, abort, timeout).
    retryable
        Whether sending again later can succeed: False for a permanent association
        rejection, a refused presentation context or a "cannot understand" status, which
        need a configuration change, not a retry.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One instance the PACS accepted: status 0x0000, or a 0xBxxx warning (coerced, ...)."""

    sop_instance_uid: str
    status: int


def send_to_pacs(datasets: Sequence[Dataset],
                 destination: DicomDestination) -> tuple[StoredInstance, ...]:
    """C-STORE ``datasets`` over one association; all stored, or :class:`PacsStoreError`.

    Each data set must carry its SOP Class and SOP Instance UIDs and be encoded (file meta)
    in Explicit VR Little Endian, which is what highdicom builds.

    Raises
    ------
    PacsStoreError
        The connection failed, the association was rejected or aborted, a presentation
        context was refused, a request timed out, or an instance got a failure status.
    ValueError
        A data set lacks its UIDs or is not Explicit VR Little Endian (a programming error).
    """
    for ds in datasets:
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise ValueError("every data set needs a SOP Class UID and a SOP Instance UID")
        meta = getattr(ds, "file_meta", None)
        if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
            raise ValueError("every data set must be Explicit VR Little Endian (file meta)")
    if not datasets:
        return ()
    ae = AE(ae_title=destination.calling_ae)
    ae.connection_timeout = destination.connect_timeout_s
    ae.acse_timeout = destination.acse_timeout_s
    ae.dimse_timeout = destination.dimse_timeout_s
    ae.network_timeout = destination.network_timeout_s
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.called_ae,
                         evt_handlers=connection_handlers())
    if not assoc.is_established:
        raise _association_error(assoc, destination)
    stored: list[StoredInstance] = []
    try:
        for ds in datasets:
            stored.append(_store_one(assoc, ds, destination))
    finally:
        if assoc.is_established:
            assoc.release()
        elif not assoc.is_aborted:
            assoc.abort()
    logger.info("stored %d instance(s) at %s", len(stored), destination)
    return tuple(stored)


def _store_one(assoc: Any, ds: Dataset, destination: DicomDestination) -> StoredInstance:
    uid = str(ds.SOPInstanceUID)
    if not assoc.is_established:
        raise PacsStoreError(f"association with {destination} was lost before {uid}")
    try:
        rsp = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this SOP class
        raise PacsStoreError(f"{destination} refused to receive {ds.SOPClassUID}: {exc}",
                             retryable=False) from exc
    status = getattr(rsp, "Status", None)
    if status is None:
        raise PacsStoreError(f"no C-STORE response from {destination} for {uid} "
                             "(timeout or abort)")
    status = int(status)
    if status == 0x0000 or status & 0xF000 == _WARNING:
        if status:
            logger.warning("%s stored %s with warning status 0x%04X", destination, uid, status)
        return StoredInstance(uid, status)
    retryable = status in _RETRYABLE_STATUSES
    raise PacsStoreError(f"{destination} answered 0x{status:04X} for {uid}", status=status,
                         retryable=retryable)


def _association_error(assoc: Any, destination: DicomDestination) -> PacsStoreError:
    """Why no association: rejected (and whether permanently), aborted, or unreachable."""
    if assoc.is_rejected:
        primitive = getattr(assoc.acceptor, "primitive", None)
        result = getattr(primitive, "result", None)
        why = ", ".join(str(getattr(primitive, name, "?"))
                        for name in ("result_str", "source_str", "reason_str"))
        return PacsStoreError(f"{destination} rejected the association ({why})",
                              retryable=result == 0x02)
    if getattr(assoc, "rejected_contexts", None) and not assoc.accepted_contexts:
        return PacsStoreError(f"{destination} accepts none of the SOP classes to send",
                              retryable=False)
    if assoc.is_aborted:
        return PacsStoreError(f"association with {destination} was aborted, refused or "
                              "timed out")
    return PacsStoreError(f"no association with {destination}")
