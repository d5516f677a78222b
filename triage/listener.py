"""DICOM listener: our upper layer (:mod:`triage.upperlayer`) with a handler that only stores
instances and maps errors to statuses.

Statuses answered to C-STORE (the only place where they are chosen):

=========  ==============================================================================
0x0000     stored durably and indexed, or a duplicate of an instance already stored
0xA700     out of resources: spool below its watermark, write/fsync failed, index down;
           the sender should retry later
0xC210     the data set cannot be parsed
0xC212     the data set lacks Study/Series/SOP Instance UID or SOP Class UID
0xC213     the data set's UIDs differ from those in the C-STORE request
0xC211     unexpected error in the handler; logged with a traceback
=========  ==============================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts

from triage.config import Settings
from triage.counters import (
    ASSOCIATIONS,
    INSTANCES_RECEIVED,
    STORE_ERRORS,
    CounterFlusher,
    EventCounters,
)
from triage.domain import StoreOutcome
from triage.errors import InvalidInstanceError, OutOfResourcesError
from triage.store import Store
from triage.upperlayer import (
    RJ_CALLED_AE_NOT_RECOGNISED,
    RJ_CALLING_AE_NOT_RECOGNISED,
    RJ_PERMANENT,
    RJ_SOURCE_USER,
    VERIFICATION,
    AssociateRequest,
    Association,
    Outcome,
    Rejection,
    Server,
    ServerConfig,
    StoreRequest,
)

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNEXPECTED = 0xC211

#: Transfer syntaxes accepted for every storage SOP class, in our order of preference.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]


def supported_contexts() -> dict[str, tuple[str, ...]]:
    """Verification plus every storage SOP class, each in :data:`TRANSFER_SYNTAXES`."""
    syntaxes = tuple(str(ts) for ts in TRANSFER_SYNTAXES)
    supported: dict[str, tuple[str, ...]] = {
        VERIFICATION: (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
    }
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            supported[str(cx.abstract_syntax)] = syntaxes
    return supported


class StoreHandler:
    """Association decisions and C-STORE handling of the listener (see the module docstring).

    Each outcome is counted in ``counters`` (flushed to the index DB by the listener).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        counters: EventCounters,
        *,
        on_stored: Callable[[], None] | None = None,
        on_released: Callable[[], None] | None = None,
    ) -> None:
        self.ae_title = settings.ae_title.strip()
        self.allowed = {ae.strip() for ae in settings.allowed_calling_aes}
        self.require_called = settings.require_called_ae_title
        self.spool = store
        self.counters = counters
        self._on_stored = on_stored
        self._on_released = on_released

    def check(self, request: AssociateRequest, peer: str) -> Rejection | None:
        if self.allowed and request.calling_ae not in self.allowed:
            return Rejection(RJ_PERMANENT, RJ_SOURCE_USER, RJ_CALLING_AE_NOT_RECOGNISED)
        if self.require_called and request.called_ae != self.ae_title:
            return Rejection(RJ_PERMANENT, RJ_SOURCE_USER, RJ_CALLED_AE_NOT_RECOGNISED)
        return None

    def accepted(self, assoc: Association) -> None:
        self.counters.inc(ASSOCIATIONS, event="accepted")
        logger.info("Association accepted from %s (%s)", assoc.calling_ae, assoc.peer)

    def rejected(self, request: AssociateRequest, peer: str, rejection: Rejection) -> None:
        """A-ASSOCIATE-RJ sent (e.g. a calling AE title not on the allowlist)."""
        self.counters.inc(ASSOCIATIONS, event="rejected")
        logger.warning("Association from %s (%s) rejected: result %d, source %d, reason %d",
                       request.calling_ae, peer, rejection.result, rejection.source,
                       rejection.reason)

    def store(self, assoc: Association, request: StoreRequest) -> Outcome:
        """C-STORE: make the instance durable and indexed, then answer."""
        try:
            if request.path is None:
                raise OutOfResourcesError(
                    f"cannot write to the spool: {request.write_error or 'unknown error'}")
            result = self.spool.ingest(
                request.path,
                calling_ae=assoc.calling_ae,
                association_id=assoc.id,
                expected_sop_instance_uid=request.sop_instance_uid or None,
                expected_sop_class_uid=request.sop_class_uid or None,
            )
        except InvalidInstanceError as exc:
            self.counters.inc(STORE_ERRORS, reason=f"0x{exc.status:04X}")
            assoc.refused += 1
            logger.warning(
                "Refused instance %s from %s with 0x%04X: %s",
                request.sop_instance_uid, assoc.calling_ae, exc.status, exc,
            )
            return Outcome(exc.status, str(exc))
        except OutOfResourcesError as exc:
            self.counters.inc(STORE_ERRORS, reason="0xA700")
            assoc.refused += 1
            logger.error(
                "Cannot store instance %s from %s, answered 0xA700 (sender will retry): %s",
                request.sop_instance_uid, assoc.calling_ae, exc,
            )
            return Outcome(STATUS_OUT_OF_RESOURCES, "out of resources, retry later")
        except Exception:
            self.counters.inc(STORE_ERRORS, reason="0xC211")
            assoc.refused += 1
            logger.exception("Unexpected error storing instance %s from %s",
                             request.sop_instance_uid, assoc.calling_ae)
            return Outcome(STATUS_UNEXPECTED, "unexpected error in the receiver")
        self.counters.inc(INSTANCES_RECEIVED, outcome=result.outcome.value)
        if result.outcome is StoreOutcome.DUPLICATE:
            assoc.duplicates += 1
            logger.debug("Duplicate instance %s from %s", request.sop_instance_uid,
                         assoc.calling_ae)
        else:
            assoc.stored += 1
            logger.debug("Stored instance %s from %s", request.sop_instance_uid,
                         assoc.calling_ae)
        if self._on_stored is not None:
            self._on_stored()
        return Outcome(STATUS_SUCCESS)

    def released(self, assoc: Association) -> None:
        """A-RELEASE: the sender says it is done; start the release grace of its series."""
        self.counters.inc(ASSOCIATIONS, event="released")
        logger.info(
            "Association from %s (%s) released: %d stored, %d duplicate, %d refused",
            assoc.calling_ae, assoc.peer, assoc.stored, assoc.duplicates, assoc.refused,
        )
        try:
            self.spool.mark_association_released(assoc.id)
        except Exception:
            # The quiet timer still completes these series.
            logger.exception("Could not record the release of association %s", assoc.id)
        if self._on_released is not None:
            self._on_released()

    def aborted(self, assoc: Association, reason: str) -> None:
        """Abort or lost connection: the transfer may be incomplete, so only the quiet timer
        completes its series."""
        self.counters.inc(ASSOCIATIONS, event="aborted")
        logger.warning(
            "Association from %s (%s) ended without release (%s): %d stored, %d duplicate, "
            "%d refused", assoc.calling_ae, assoc.peer, reason, assoc.stored, assoc.duplicates,
            assoc.refused,
        )


class Listener:
    """The running DICOM server.

    Parameters
    ----------
    settings
        Listener settings (AE title, address, allowlist, timeouts).
    store
        Where instances go.
    on_stored, on_released
        Called after each stored instance / released association (e.g. to wake the sweeper).
    counters
        Event counters (associations, instances, refusals) of this process; default: new ones.
        :meth:`start` starts a thread that flushes them to ``store.db`` every
        ``counter_flush_interval_s``; :meth:`stop` flushes them a last time.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        on_stored: Callable[[], None] | None = None,
        on_released: Callable[[], None] | None = None,
        counters: EventCounters | None = None,
        counter_flush_interval_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.counters = counters if counters is not None else EventCounters()
        self.handler = StoreHandler(settings, store, self.counters, on_stored=on_stored,
                                    on_released=on_released)
        self.server = Server(
            ServerConfig(
                ae_title=settings.ae_title,
                supported=supported_contexts(),
                incoming_dir=store.incoming_dir,
                max_pdu_length=settings.max_pdu_size,
                max_associations=settings.max_associations,
                acse_timeout_s=settings.acse_timeout_s,
                network_timeout_s=settings.network_timeout_s,
            ),
            self.handler,
        )
        self.flusher = CounterFlusher(self.counters, store.db,
                                      interval_s=counter_flush_interval_s)

    def start(self) -> tuple[str, int]:
        """Start serving in background threads; returns the bound (host, port)."""
        if not self.settings.allowed_calling_aes:
            logger.warning(
                "Calling-AE allowlist is empty: accepting associations from any AE title "
                "(set TRIAGE_ALLOWED_CALLING_AES to restrict)"
            )
        host, port = self.server.start(self.settings.dicom_host, self.settings.dicom_port)
        self.flusher.start()
        logger.info("DICOM listener %s on %s:%d", self.settings.ae_title, host, port)
        return host, port

    def stop(self) -> None:
        """Stop accepting and close the server (in-flight associations are aborted)."""
        self.server.stop()
        self.flusher.stop()
