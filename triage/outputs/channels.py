"""Adapters from the configured destinations to the channel modules (SR/KOS, HL7, UPS)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from triage.config import Destination, Settings
from triage.errors import TriageError
from triage.outputs.channel import Channel, DeliveryError, Receipt
from triage.outputs.dicom_header import DeviceIdentity, DocumentReference
from triage.outputs.hl7 import build_oru
from triage.outputs.mllp import HL7DeliveryError, MllpSender
from triage.outputs.report import ReportStatus, StudyReport
from triage.outputs.sr import build_kos, build_rejection_note, build_sr
from triage.outputs.store_scu import DicomDestination, PacsStoreError, send_to_pacs
from triage.outputs.ups_service import UpsService
from triage.outputs.ups_types import UpsError

#: The receipt of the newest earlier version of a study this destination accepted, or None.
EarlierReceipt = Callable[[str, int], dict[str, Any] | None]


_REFERENCE_KEYS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid",
                   "sop_class_uid")


class SrChannel:
    """Comprehensive 3D SR (TID 1500) + Key Object Selection, C-STORE to a PACS.

    A correction names the SR the PACS actually holds (from the receipt of the newest earlier
    version it accepted) as its predecessor, and when that version carried a KOS of key images,
    an IHE IOCM rejection note (KOS titled *Rejected for Quality Reasons*) withdraws it.  When
    the PACS never got an earlier version, a correction goes out as the first SR of the study
    and a retraction has nothing to withdraw.
    """

    def __init__(self, destination: DicomDestination, device: DeviceIdentity,
                 earlier: EarlierReceipt) -> None:
        self.destination = destination
        self.device = device
        self.earlier = earlier

    def send(self, report: StudyReport) -> Receipt:
        predecessor = None
        earlier_kos = None
        if report.status is not ReportStatus.FINAL:
            receipt = self.earlier(report.study_instance_uid, report.version)
            if receipt is not None:
                predecessor = DocumentReference(**{k: receipt[k] for k in _REFERENCE_KEYS})
                if receipt.get("kos"):
                    earlier_kos = DocumentReference(**receipt["kos"])
            elif report.status is ReportStatus.RETRACTED:
                return {"skipped": "no earlier SR in this PACS to withdraw"}
            else:
                report = dataclasses.replace(report, status=ReportStatus.FINAL)
        try:
            sr = build_sr(report, device=self.device, predecessor=predecessor)
            kos = build_kos(report, device=self.device)
            # The key images of the earlier version no longer stand: reject its KOS (IOCM).
            rejection = (build_rejection_note(report, earlier_kos, device=self.device)
                         if earlier_kos is not None else None)
        except (ValueError, OSError) as exc:
            raise DeliveryError(f"cannot build the SR: {exc}", retryable=False) from exc
        objects = [ds for ds in (sr, kos, rejection) if ds is not None]
        try:
            send_to_pacs(objects, self.destination)
        except PacsStoreError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from exc
        ref = DocumentReference.of(sr)
        receipt_out: dict[str, Any] = {
            "study_instance_uid": ref.study_instance_uid,
            "series_instance_uid": ref.series_instance_uid,
            "sop_instance_uid": ref.sop_instance_uid, "sop_class_uid": ref.sop_class_uid}
        if kos is not None:
            kos_ref = DocumentReference.of(kos)
            receipt_out["kos"] = dataclasses.asdict(kos_ref)
        if rejection is not None:
            receipt_out["rejected_kos"] = earlier_kos.sop_instance_uid if earlier_kos else None
        return receipt_out


class Hl7Channel:
    """ORU^R01 over MLLP; the control id is fixed per (study, version), so resends dedupe."""

    def __init__(self, destination: Destination, sender: MllpSender, *,
                 sending_application: str, sending_facility: str) -> None:
        self.destination = destination
        self.sender = sender
        self.sending_application = sending_application
        self.sending_facility = sending_facility

    def send(self, report: StudyReport) -> Receipt:
        digest = hashlib.sha256(report.study_instance_uid.encode()).hexdigest()[:14]
        control_id = f"{digest}.{report.version}"[:20]
        try:
            message = build_oru(report, sending_application=self.sending_application,
                                sending_facility=self.sending_facility,
                                receiving_application=self.destination.receiving_application,
                                receiving_facility=self.destination.receiving_facility,
                                control_id=control_id)
        except ValueError as exc:
            raise DeliveryError(f"cannot build the ORU message: {exc}", retryable=False) from exc
        try:
            ack = self.sender.send(message)
        except HL7DeliveryError as exc:
            raise DeliveryError(str(exc), retryable=exc.retryable) from exc
        return {"control_id": control_id, "ack": ack.code.value}


class UpsChannel:
    """Keeps our UPS workitem of the study in step (subscribers get N-EVENT-REPORTs)."""

    def __init__(self, service: UpsService) -> None:
        self.service = service

    def send(self, report: StudyReport) -> Receipt:
        try:
            changed = self.service.upsert(report)
        except UpsError as exc:
            raise DeliveryError(str(exc), retryable=True) from exc
        return {"workitem_uid": self.service.workitem_uid(report.study_instance_uid),
                "changed": changed}


def build_channels(settings: Settings, *,
                   receipts: Callable[[str, str, int], dict[str, Any] | None],
                   ups: UpsService | None) -> Mapping[str, Channel]:
    """One channel per configured destination.

    ``receipts(destination, study_uid, below_version)`` looks up what was sent before.

    Raises
    ------
    TriageError
        A ``ups`` destination without a UPS service.
    """
    device = DeviceIdentity()
    channels: dict[str, Channel] = {}
    for d in settings.destinations:
        if d.kind == "dicom-sr":
            target = DicomDestination(host=d.host, port=d.port, called_ae=d.ae_title,
                                      calling_ae=settings.ae_title,
                                      dimse_timeout_s=d.timeout_s,
                                      network_timeout_s=max(d.timeout_s, 60.0))
            channels[d.name] = SrChannel(target, device,
                                         functools.partial(receipts, d.name))
        elif d.kind == "hl7":
            channels[d.name] = Hl7Channel(d, MllpSender(d.host, d.port, timeout_s=d.timeout_s),
                                          sending_application="CT-TRIAGE",
                                          sending_facility=settings.ae_title)
        else:
            if ups is None:
                raise TriageError(f"destination {d.name}: the UPS service is not running")
            channels[d.name] = UpsChannel(ups)
    return channels
