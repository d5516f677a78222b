"""UPS SCP over real sockets: a pynetdicom SCU subscribes, queries, claims; events arrive at
its own N-EVENT-REPORT SCP; workitems live in the real index database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom import Dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    UnifiedProcedureStepQuery,
    UnifiedProcedureStepWatch,
)

from tests.conftest import TestAE
from triage.db import Database, ups_events
from triage.outputs.report import Patient, Priority, ReportStatus, SourceImage, StudyReport
from triage.outputs.ups import (
    GLOBAL_SUBSCRIPTION_UID,
    EventNotifier,
    EventType,
    UpsConfig,
    UpsError,
    UpsEvent,
    UpsServer,
    UpsService,
)

PATIENT_NAME = "Testperson^Ada"
PATIENT_ID = "PID-UPS-4711"
WATCHER = "READINGROOM"


# (Not imported from tests.conftest, so that plain `pytest` runs this file too.)
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def make_report(priority: Priority = Priority.MEDIUM, *, version: int = 1,
                study_uid: str | None = None) -> StudyReport:
    study = study_uid or str(generate_uid())
    series_uid = str(generate_uid())
    images = tuple(
        SourceImage(CTImageStorage, str(generate_uid()), series_uid, Path(f"/spool/{i}.dcm"))
        for i in range(3)
    )
    return StudyReport(
        study_instance_uid=study,
        accession_number="ACC123",
        study_date="20240102",
        study_time="101500",
        study_description="CT head without contrast",
        patient=Patient(name=PATIENT_NAME, id=PATIENT_ID, birth_date="19600101", sex="F"),
        version=version,
        status=ReportStatus.FINAL if version == 1 else ReportStatus.CORRECTED,
        priority=priority,
        findings=(),
        images=images,
    )


class Recorder:
    """A ``publish`` that keeps the events (service tests without a network)."""

    def __init__(self) -> None:
        self.events: list[UpsEvent] = []

    def __call__(self, events: Any) -> None:
        self.events.extend(events)


# --- the domain service on both databases -------------------------------------------------

def test_upsert_creates_a_scheduled_workitem_from_the_report(db: Database) -> None:
    service = UpsService(db, UpsConfig(station_name="TRIAGE_RR", retrieve_ae_title="PACS"))
    report = make_report(Priority.HIGH)

    assert service.upsert(report) is True

    ds = service.get(service.workitem_uid(report.study_instance_uid))
    assert ds.SOPClassUID == UnifiedProcedureStepPush
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.ScheduledProcedureStepPriority == "HIGH"
    assert ds.ProcedureStepLabel == "AI triage read"
    assert ds.WorklistLabel == "CT triage"
    assert ds.InputReadinessState == "READY"
    assert ds.ScheduledWorkitemCodeSequence[0].CodeValue == "110005"
    assert ds.ScheduledStationNameCodeSequence[0].CodeValue == "TRIAGE_RR"
    assert ds.PatientName == PATIENT_NAME
    assert ds.PatientID == PATIENT_ID
    assert ds.StudyInstanceUID == report.study_instance_uid
    [item] = ds.InputInformationSequence
    assert item.StudyInstanceUID == report.study_instance_uid
    assert item.SeriesInstanceUID == report.images[0].series_instance_uid
    assert [r.ReferencedSOPInstanceUID for r in item.ReferencedSOPSequence] == [
        i.sop_instance_uid for i in report.images
    ]
    assert item.DICOMRetrievalSequence[0].RetrieveAETitle == "PACS"
    assert ds.ReferencedRequestSequence[0].AccessionNumber == "ACC123"
    dt.datetime.strptime(ds.ScheduledProcedureStepStartDateTime[:14], "%Y%m%d%H%M%S")
    assert "TransactionUID" not in ds


def test_upsert_with_the_same_priority_changes_nothing_and_sends_no_event(db: Database) -> None:
    recorder = Recorder()
    service = UpsService(db, UpsConfig(subscribers={WATCHER: ("127.0.0.1", 1)}), recorder)
    report = make_report(Priority.LOW)
    service.upsert(report)
    service.subscribe(WATCHER, service.workitem_uid(report.study_instance_uid),
                      deletion_lock=False)
    recorder.events.clear()

    assert service.upsert(report) is False
    assert service.upsert(replace(report, version=2)) is False
    assert recorder.events == []


def test_upsert_ignores_a_report_older_than_the_one_applied(db: Database) -> None:
    service = UpsService(db, UpsConfig())
    v1 = make_report(Priority.HIGH)
    uid = service.workitem_uid(v1.study_instance_uid)
    service.upsert(v1)
    service.upsert(replace(v1, version=3))  # same priority, newer version
    assert service.upsert(replace(v1, version=2, priority=Priority.LOW)) is False
    assert service.get(uid).ScheduledProcedureStepPriority == "HIGH"


def test_concurrent_upserts_keep_the_newest_version(db: Database) -> None:
    service = UpsService(db, UpsConfig())
    base = make_report(Priority.LOW)
    priorities = [Priority.LOW, Priority.MEDIUM, Priority.HIGH]
    reports = [replace(base, version=v, priority=priorities[v % 3]) for v in range(1, 13)]
    errors: list[BaseException] = []

    def run(report: StudyReport) -> None:
        try:
            service.upsert(report)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in reversed(reports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    ds = service.get(service.workitem_uid(base.study_instance_uid))
    assert ds.ScheduledProcedureStepPriority == str(reports[-1].priority)


def test_change_state_follows_the_ups_state_table(db: Database) -> None:
    service = UpsService(db, UpsConfig())
    report = make_report()
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    tuid = str(generate_uid())

    def status_of(state: str, transaction_uid: str | None) -> int:
        try:
            return service.change_state(uid, state, transaction_uid)
        except UpsError as exc:
            return exc.status

    assert status_of("COMPLETED", tuid) == 0xC310  # not yet IN PROGRESS
    assert status_of("SCHEDULED", tuid) == 0xC303
    assert status_of("IN PROGRESS", None) == 0xC301
    assert status_of("IN PROGRESS", tuid) == 0x0000
    assert status_of("IN PROGRESS", tuid) == 0xC302
    assert status_of("COMPLETED", str(generate_uid())) == 0xC301
    assert status_of("COMPLETED", tuid) == 0x0000
    assert status_of("COMPLETED", tuid) == 0xB306
    assert status_of("CANCELED", tuid) == 0xC300
    assert status_of("NONSENSE", tuid) == 0x0115
    ds = service.get(uid)
    performed = ds.UnifiedProcedureStepPerformedProcedureSequence[0]
    assert performed.PerformedProcedureStepEndDateTime
    assert performed.PerformedWorkitemCodeSequence[0].CodeValue == "110005"
    # a COMPLETED workitem no longer follows the worklist
    assert service.upsert(replace(report, version=2, priority=Priority.HIGH)) is False
    with pytest.raises(UpsError) as missing:
        service.change_state(str(generate_uid()), "IN PROGRESS", tuid)
    assert missing.value.status == 0xC307


def test_a_new_workitem_is_reported_and_assigned_to_global_subscribers(db: Database) -> None:
    recorder = Recorder()
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", 1)}, station_name="RR1")
    service = UpsService(db, config, recorder)
    service.subscribe(WATCHER, GLOBAL_SUBSCRIPTION_UID, deletion_lock=True)
    report = make_report(Priority.HIGH)

    service.upsert(report)

    uid = service.workitem_uid(report.study_instance_uid)
    assert [(e.ae_title, e.workitem_uid, e.event_type) for e in recorder.events] == [
        (WATCHER, uid, EventType.STATE_REPORT), (WATCHER, uid, EventType.ASSIGNED)]
    state, assigned = (e.info for e in recorder.events)
    assert (state.ProcedureStepState, state.InputReadinessState) == ("SCHEDULED", "READY")
    assert assigned.ScheduledStationNameCodeSequence[0].CodeValue == "RR1"


def test_n_set_is_for_the_performer_of_an_in_progress_workitem(db: Database) -> None:
    recorder = Recorder()
    service = UpsService(db, UpsConfig(subscribers={WATCHER: ("127.0.0.1", 1)}), recorder)
    report = make_report()
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    tuid = str(generate_uid())
    progress = Dataset()
    progress.ProcedureStepProgress = "50"
    mods = Dataset()
    mods.TransactionUID = tuid
    mods.ProcedureStepProgressInformationSequence = [progress]

    def status_of(modifications: Dataset) -> int:
        try:
            service.set_performed(uid, modifications)
        except UpsError as exc:
            return exc.status
        return 0x0000

    assert status_of(mods) == 0xC310  # nobody performs it yet
    service.change_state(uid, "IN PROGRESS", tuid)
    service.subscribe(WATCHER, uid, deletion_lock=False)
    recorder.events.clear()
    wrong = Dataset()
    wrong.TransactionUID = str(generate_uid())
    assert status_of(wrong) == 0xC301
    ours = Dataset()
    ours.TransactionUID = tuid
    ours.ScheduledProcedureStepPriority = "LOW"
    assert status_of(ours) == 0x0106  # the priority is the worklist's
    assert status_of(mods) == 0x0000
    [event] = recorder.events
    assert event.event_type is EventType.PROGRESS_REPORT
    assert event.info.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50
    assert service.get(uid).ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50


# --- over the network -----------------------------------------------------------------------

@dataclass
class Received:
    event_type: int
    workitem_uid: str
    info: Dataset


@dataclass
class UpsPeer:
    """Our SCP plus a subscriber with its own event-report SCP."""

    service: UpsService
    notifier: EventNotifier
    host: str
    port: int
    events: queue.Queue[Received]

    def associate(self, ae_title: str = WATCHER) -> Any:
        ae = TestAE(ae_title=ae_title)
        for sop_class in (UnifiedProcedureStepPush, UnifiedProcedureStepWatch,
                          UnifiedProcedureStepPull, UnifiedProcedureStepQuery):
            ae.add_requested_context(sop_class)
        assoc = ae.associate(self.host, self.port, ae_title="TRIAGE")
        assert assoc.is_established
        return assoc

    def next_event(self, timeout: float = 15.0) -> Received:
        return self.events.get(timeout=timeout)

    def no_event(self, within: float = 1.0) -> bool:
        try:
            self.events.get(timeout=within)
        except queue.Empty:
            return True
        return False


def start_event_scp(port: int, events: queue.Queue[Received]) -> Any:
    def handle(event: evt.Event) -> tuple[int, None]:
        events.put(Received(int(event.event_type or 0),
                            str(event.request.AffectedSOPInstanceUID),  # type: ignore[union-attr]
                            event.event_information))
        return 0x0000, None

    ae = AE(ae_title=WATCHER)
    ae.add_supported_context(UnifiedProcedureStepEvent)
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle)])


@pytest.fixture
def ups_peer(sqlite_db: Database) -> Iterator[UpsPeer]:
    events: queue.Queue[Received] = queue.Queue()
    subscriber_port = free_port()
    event_scp = start_event_scp(subscriber_port, events)
    config = UpsConfig(port=0, subscribers={WATCHER: ("127.0.0.1", subscriber_port)},
                       event_backoff_s=0.05, network_timeout_s=5)
    notifier = EventNotifier(sqlite_db, config)
    notifier.start()
    service = UpsService(sqlite_db, config, notifier.publish)
    server = UpsServer(service, config)
    host, port = server.start()
    yield UpsPeer(service, notifier, host, port, events)
    server.stop()
    notifier.stop()
    event_scp.shutdown()


def subscribe(assoc: Any, uid: str, *, lock: bool, receiving_ae: str = WATCHER) -> int:
    info = Dataset()
    info.ReceivingAE = receiving_ae
    info.DeletionLock = "TRUE" if lock else "FALSE"
    status, _ = assoc.send_n_action(info, 3, UnifiedProcedureStepPush, uid)
    return int(status.Status)


def test_subscriber_gets_initial_state_then_a_report_for_each_priority_change(
    ups_peer: UpsPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    report = make_report(Priority.MEDIUM)
    service = ups_peer.service
    uid = service.workitem_uid(report.study_instance_uid)
    assert service.upsert(report) is True  # nobody subscribed yet: no event

    assoc = ups_peer.associate()
    try:
        assert subscribe(assoc, GLOBAL_SUBSCRIPTION_UID, lock=True) == 0x0000
        initial = ups_peer.next_event()
        assert (initial.event_type, initial.workitem_uid) == (EventType.STATE_REPORT, uid)
        assert initial.info.ProcedureStepState == "SCHEDULED"
        assert initial.info.InputReadinessState == "READY"

        started = time.monotonic()
        assert service.upsert(replace(report, version=2, priority=Priority.HIGH)) is True
        assert time.monotonic() - started < 1.0  # delivery is not the caller's business
        change = ups_peer.next_event()
        assert (change.event_type, change.workitem_uid) == (EventType.STATE_REPORT, uid)
        assert change.info.ProcedureStepState == "SCHEDULED"
        assert change.info.ScheduledProcedureStepPriority == "HIGH"

        status, ds = assoc.send_n_get(
            [Tag("ScheduledProcedureStepPriority"), Tag("ProcedureStepState"),
             Tag("TransactionUID")], UnifiedProcedureStepPush, uid)
        assert status.Status == 0x0000
        assert ds.ScheduledProcedureStepPriority == "HIGH"
        assert ds.ProcedureStepState == "SCHEDULED"
        assert not ds.get("TransactionUID")

        # the same priority again: nothing changes, nothing is sent
        assert service.upsert(replace(report, version=3, priority=Priority.HIGH)) is False
        assert ups_peer.no_event(within=1.0)

        # a study analysed after the subscription reaches the global subscriber as well
        later = make_report(Priority.LOW)
        service.upsert(later)
        created = ups_peer.next_event()
        assert created.workitem_uid == service.workitem_uid(later.study_instance_uid)
        assert created.info.ProcedureStepState == "SCHEDULED"
    finally:
        assoc.release()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PATIENT_NAME.split("^", maxsplit=1)[0] not in logged
    assert PATIENT_ID not in logged


def test_c_find_by_priority_returns_the_matching_workitems(
    ups_peer: UpsPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = ups_peer.service
    high, low = make_report(Priority.HIGH), make_report(Priority.LOW)
    service.upsert(high)
    service.upsert(low)
    query = Dataset()
    query.ScheduledProcedureStepPriority = "HIGH"
    query.ProcedureStepState = ""
    query.SOPInstanceUID = ""
    query.PatientID = ""
    query.StudyInstanceUID = ""
    query.TransactionUID = ""

    assoc = ups_peer.associate()
    try:
        found = [ds for status, ds in assoc.send_c_find(query, UnifiedProcedureStepPull)
                 if status.Status == 0xFF00]
        by_patient = Dataset()
        by_patient.PatientID = "PID-UPS-*"
        by_patient.StudyInstanceUID = low.study_instance_uid
        by_patient.SOPInstanceUID = ""
        found_by_id = [ds for status, ds in assoc.send_c_find(by_patient, UnifiedProcedureStepQuery)
                       if status.Status == 0xFF00]
    finally:
        assoc.release()
    assert [ds.SOPInstanceUID for ds in found] == [service.workitem_uid(high.study_instance_uid)]
    assert found[0].ScheduledProcedureStepPriority == "HIGH"
    assert found[0].ProcedureStepState == "SCHEDULED"
    assert found[0].PatientID == PATIENT_ID
    assert not found[0].TransactionUID
    assert [ds.SOPInstanceUID for ds in found_by_id] == [
        service.workitem_uid(low.study_instance_uid)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert PATIENT_ID not in logged
    assert "PID-UPS" not in logged


def test_change_state_with_a_wrong_transaction_uid_is_refused(ups_peer: UpsPeer) -> None:
    service = ups_peer.service
    report = make_report(Priority.HIGH)
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    mine, theirs = str(generate_uid()), str(generate_uid())

    def change(assoc: Any, state: str, tuid: str) -> int:
        info = Dataset()
        info.ProcedureStepState = state
        info.TransactionUID = tuid
        status, _ = assoc.send_n_action(info, 1, UnifiedProcedureStepPush, uid)
        return int(status.Status)

    assoc = ups_peer.associate()
    try:
        assert subscribe(assoc, uid, lock=False) == 0x0000
        assert ups_peer.next_event().info.ProcedureStepState == "SCHEDULED"
        assert change(assoc, "IN PROGRESS", mine) == 0x0000
        assert ups_peer.next_event().info.ProcedureStepState == "IN PROGRESS"
        assert change(assoc, "IN PROGRESS", theirs) == 0xC302  # already claimed
        assert change(assoc, "COMPLETED", theirs) == 0xC301  # not the owner
        assert change(assoc, "CANCELED", theirs) == 0xC301
        foreign = Dataset()
        foreign.TransactionUID = theirs
        foreign.ProcedureStepProgressInformationSequence = []
        status, _ = assoc.send_n_set(foreign, UnifiedProcedureStepPush, uid)
        assert status.Status == 0xC301
        assert service.get(uid).ProcedureStepState == "IN PROGRESS"
        assert change(assoc, "COMPLETED", mine) == 0x0000
        assert ups_peer.next_event().info.ProcedureStepState == "COMPLETED"
    finally:
        assoc.release()


def test_scp_refuses_n_create_unknown_subscribers_and_filtered_global_subscriptions(
    ups_peer: UpsPeer,
) -> None:
    report = make_report()
    ups_peer.service.upsert(report)
    assoc = ups_peer.associate()
    try:
        ups = Dataset()
        ups.ProcedureStepState = "SCHEDULED"
        status, _ = assoc.send_n_create(ups, UnifiedProcedureStepPush, str(generate_uid()))
        assert status.Status == 0x0124
        assert subscribe(assoc, GLOBAL_SUBSCRIPTION_UID, lock=True,
                         receiving_ae="STRANGER") == 0xC308
        assert subscribe(assoc, str(generate_uid()), lock=False) == 0xC307
        filtered = Dataset()
        filtered.ReceivingAE = WATCHER
        filtered.DeletionLock = "FALSE"
        filtered.ScheduledProcedureStepPriority = "HIGH"
        status, _ = assoc.send_n_action(filtered, 3, UnifiedProcedureStepPush,
                                        GLOBAL_SUBSCRIPTION_UID)
        assert status.Status == 0xC307
        status, _ = assoc.send_n_get([], UnifiedProcedureStepPush, str(generate_uid()))
        assert status.Status == 0xC307
    finally:
        assoc.release()
    assert ups_peer.no_event(within=0.5)


def test_unsubscribed_and_suspended_aes_get_no_more_events(ups_peer: UpsPeer) -> None:
    service = ups_peer.service
    first = make_report(Priority.LOW)
    service.upsert(first)
    assoc = ups_peer.associate()
    try:
        assert subscribe(assoc, GLOBAL_SUBSCRIPTION_UID, lock=False) == 0x0000
        assert ups_peer.no_event(within=0.5)  # no initial reports without deletion lock
        info = Dataset()
        info.ReceivingAE = WATCHER
        status, _ = assoc.send_n_action(info, 5, UnifiedProcedureStepPush,
                                        GLOBAL_SUBSCRIPTION_UID)
        assert status.Status == 0x0000
        service.upsert(make_report())  # created after the suspension: not subscribed
        # still subscribed to the workitem that existed before the suspension
        service.upsert(replace(first, version=2, priority=Priority.HIGH))
        event = ups_peer.next_event()
        assert event.workitem_uid == service.workitem_uid(first.study_instance_uid)
        status, _ = assoc.send_n_action(info, 4, UnifiedProcedureStepPush,
                                        GLOBAL_SUBSCRIPTION_UID)
        assert status.Status == 0x0000
        service.upsert(replace(first, version=3, priority=Priority.LOW))
        assert ups_peer.no_event(within=0.5)
    finally:
        assoc.release()


def test_request_cancel_of_a_scheduled_workitem_cancels_it(ups_peer: UpsPeer) -> None:
    service = ups_peer.service
    report = make_report()
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    assoc = ups_peer.associate()
    try:
        assert subscribe(assoc, uid, lock=True) == 0x0000
        ups_peer.next_event()
        request = Dataset()
        request.ReasonForCancellation = "duplicate order"
        status, _ = assoc.send_n_action(request, 2, UnifiedProcedureStepPush, uid)
        assert status.Status == 0x0000
        states = [ups_peer.next_event().info.ProcedureStepState for _ in range(2)]
        status, _ = assoc.send_n_action(request, 2, UnifiedProcedureStepPush, uid)
        assert status.Status == 0xB304
    finally:
        assoc.release()
    assert states == ["IN PROGRESS", "CANCELED"]
    progress = service.get(uid).ProcedureStepProgressInformationSequence[0]
    assert progress.ReasonForCancellation == "duplicate order"


# pynetdicom 3.0.4 leaves the socket of a refused connection to the garbage collector
# (transport.AssociationSocket.connect: shutdown fails, close is skipped), which pytest
# reports as an unraisable ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_events_are_retried_until_the_subscriber_listens(sqlite_db: Database) -> None:
    events: queue.Queue[Received] = queue.Queue()
    port = free_port()
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", port)}, event_backoff_s=0.1,
                       event_backoff_max_s=0.2, event_max_attempts=100, network_timeout_s=2)
    notifier = EventNotifier(sqlite_db, config)
    notifier.start()
    service = UpsService(sqlite_db, config, notifier.publish)
    report = make_report()
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    started = time.monotonic()
    service.subscribe(WATCHER, uid, deletion_lock=False)  # the subscriber is down
    assert time.monotonic() - started < 1.0
    time.sleep(0.5)  # some attempts fail
    assert notifier.pending() == 1
    scp = start_event_scp(port, events)
    try:
        received = events.get(timeout=15)
        assert received.workitem_uid == uid
        wait_for(lambda: notifier.pending() == 0, 5, what="queue drained")
    finally:
        notifier.stop()
        scp.shutdown()


def test_config_rejects_bad_ae_titles_and_addresses() -> None:
    with pytest.raises(ValueError, match="ae_title"):
        UpsConfig(ae_title="A" * 17)
    with pytest.raises(ValueError, match="port"):
        UpsConfig(subscribers={WATCHER: ("127.0.0.1", 0)})
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", 104)})
    with pytest.raises(TypeError):
        config.subscribers[WATCHER] = ("x", 1)  # type: ignore[index]



# --- the event outbox (ups_events) ---------------------------------------------------------

def event_rows(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(sa.select(ups_events).order_by(ups_events.c.id)))


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_events_pending_at_a_restart_are_delivered_by_the_next_process(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    events: queue.Queue[Received] = queue.Queue()
    port = free_port()  # the subscriber is down until the restart
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", port)}, event_backoff_s=0.05,
                       event_backoff_max_s=0.2, event_max_attempts=1000, network_timeout_s=2)
    first = EventNotifier(db, config)
    first.start()
    service = UpsService(db, config, first.publish)
    report = make_report(Priority.LOW)
    service.upsert(report)
    uid = service.workitem_uid(report.study_instance_uid)
    tuid = str(generate_uid())
    service.subscribe(WATCHER, uid, deletion_lock=True)
    service.upsert(replace(report, version=2, priority=Priority.HIGH))
    service.change_state(uid, "IN PROGRESS", tuid)
    service.change_state(uid, "COMPLETED", tuid)
    wait_for(lambda: all(r.attempts > 0 for r in event_rows(db)), 10, what="failed attempts")
    first.stop()
    assert first.pending() == 4
    rows = event_rows(db)
    assert [(r.ae_title, r.workitem_uid, r.event_type) for r in rows] == [
        (WATCHER, uid, EventType.STATE_REPORT)] * 4
    assert all(r.delivered_at is None and r.gave_up_at is None for r in rows)
    assert rows[0].last_error == f"association with 127.0.0.1:{port} failed"

    # a new process: a new notifier on the same database; then the subscriber comes up
    second = EventNotifier(db, config)
    second.start()
    scp = start_event_scp(port, events)
    try:
        received = [events.get(timeout=15) for _ in range(4)]
        wait_for(lambda: second.pending() == 0, 5, what="outbox drained")
        assert no_more(events, within=0.5)
    finally:
        second.stop()
        scp.shutdown()
    assert [(r.event_type, r.workitem_uid) for r in received] == [
        (EventType.STATE_REPORT, uid)] * 4
    assert [(r.info.ProcedureStepState, r.info.ScheduledProcedureStepPriority)
            for r in received] == [("SCHEDULED", "LOW"), ("SCHEDULED", "HIGH"),
                                   ("IN PROGRESS", "HIGH"), ("COMPLETED", "HIGH")]
    assert all(r.delivered_at is not None and r.gave_up_at is None for r in event_rows(db))
    logged = logged_text(caplog)
    assert PATIENT_ID not in logged
    assert PATIENT_NAME.split("^", maxsplit=1)[0] not in logged


def no_more(events: queue.Queue[Received], within: float) -> bool:
    try:
        events.get(timeout=within)
    except queue.Empty:
        return True
    return False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_each_ae_gets_its_events_in_order_and_a_dead_one_delays_no_one(db: Database) -> None:
    events: queue.Queue[Received] = queue.Queue()
    port, dead_port = free_port(), free_port()
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", port),
                                    "DEADWS": ("127.0.0.1", dead_port)},
                       event_backoff_s=0.05, event_backoff_max_s=0.2,
                       event_max_attempts=1000, network_timeout_s=2)
    scp = start_event_scp(port, events)
    notifier = EventNotifier(db, config)
    notifier.start()
    service = UpsService(db, config, notifier.publish)
    try:
        for title in (WATCHER, "DEADWS"):
            service.subscribe(title, GLOBAL_SUBSCRIPTION_UID, deletion_lock=True)
        reports = [make_report(Priority.MEDIUM) for _ in range(10)]
        for report in reports:
            service.upsert(report)
        for report in reports[:4]:
            service.upsert(replace(report, version=2, priority=Priority.HIGH))
        expected = [(service.workitem_uid(r.study_instance_uid), "MEDIUM") for r in reports]
        expected += [(service.workitem_uid(r.study_instance_uid), "HIGH") for r in reports[:4]]

        received = [events.get(timeout=15) for _ in expected]
        assert [(e.workitem_uid, str(e.info.ScheduledProcedureStepPriority))
                for e in received] == expected
        wait_for(lambda: notifier.pending() == len(expected), 5, what="WATCHER drained")
        # the dead AE's events wait, in the database, in the order they were written
        with db.read() as conn:
            dead = list(conn.execute(
                sa.select(ups_events.c.workitem_uid, ups_events.c.delivered_at)
                .where(ups_events.c.ae_title == "DEADWS").order_by(ups_events.c.id)))
        assert [r.workitem_uid for r in dead] == [uid for uid, _ in expected]
        assert all(r.delivered_at is None for r in dead)
    finally:
        notifier.stop()
        scp.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_events_are_given_up_after_max_attempts_and_later_ones_still_go_out(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    events: queue.Queue[Received] = queue.Queue()
    port = free_port()
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", port)}, event_backoff_s=0.01,
                       event_backoff_max_s=0.02, event_max_attempts=3, network_timeout_s=2)
    notifier = EventNotifier(db, config)
    notifier.start()
    service = UpsService(db, config, notifier.publish)
    reports = [make_report(Priority.LOW) for _ in range(2)]
    for report in reports:
        service.upsert(report)
    scp = None
    try:
        # one transaction, two events: an initial State Report per open workitem
        service.subscribe(WATCHER, GLOBAL_SUBSCRIPTION_UID, deletion_lock=True)
        wait_for(lambda: "gave up after 3 attempts" in logged_text(caplog), 10, what="given up")
        assert notifier.pending() == 0
        rows = event_rows(db)
        assert len(rows) == 2
        assert all(r.gave_up_at is not None and r.delivered_at is None for r in rows)
        assert [r.attempts for r in rows] == [3, 3]

        scp = start_event_scp(port, events)
        service.upsert(replace(reports[0], version=2, priority=Priority.HIGH))
        received = events.get(timeout=15)
        assert received.workitem_uid == service.workitem_uid(reports[0].study_instance_uid)
        assert received.info.ScheduledProcedureStepPriority == "HIGH"
        assert no_more(events, within=0.5)  # the given-up ones stay given up
    finally:
        notifier.stop()
        if scp is not None:
            scp.shutdown()


def test_events_for_an_ae_without_address_are_given_up_on_start(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    old = UpsConfig(subscribers={"GONE": ("127.0.0.1", 1)})
    service = UpsService(db, old, Recorder())  # a process that wrote events and stopped
    report = make_report()
    service.upsert(report)
    service.subscribe("GONE", service.workitem_uid(report.study_instance_uid),
                      deletion_lock=False)
    notifier = EventNotifier(db, UpsConfig())  # restarted without that subscriber
    assert notifier.pending() == 1
    notifier.start()
    try:
        assert notifier.pending() == 0
        [row] = event_rows(db)
        assert row.gave_up_at is not None and row.delivered_at is None
        assert row.last_error == "no address configured"
        assert "GONE: no address configured, 1 marked as given up" in logged_text(caplog)
    finally:
        notifier.stop()


def test_rows_delivered_or_given_up_over_a_week_ago_are_pruned(db: Database) -> None:
    config = UpsConfig(subscribers={WATCHER: ("127.0.0.1", 1)})
    service = UpsService(db, config, Recorder())
    reports = [make_report() for _ in range(4)]
    for report in reports:
        service.upsert(report)
        service.subscribe(WATCHER, service.workitem_uid(report.study_instance_uid),
                          deletion_lock=False)
    day = 24 * 3600.0
    now = time.time()
    ids = [r.id for r in event_rows(db)]
    with db.write() as conn:
        for event_id, values in zip(ids, [
            {"delivered_at": now - 8 * day}, {"gave_up_at": now - 8 * day},
            {"delivered_at": now - 6 * day}, {"created_at": now - 30 * day},  # still pending
        ], strict=True):
            conn.execute(ups_events.update().where(ups_events.c.id == event_id).values(**values))
    notifier = EventNotifier(db, UpsConfig())  # no subscriber: nothing is sent
    notifier.prune_if_due()
    assert [r.id for r in event_rows(db)] == ids[2:]


def test_an_existing_database_gains_the_event_table(db: Database) -> None:
    ups_events.drop(db.engine)  # as written by the release before the outbox
    assert not sa.inspect(db.engine).has_table("ups_events")
    db.create_schema()
    inspector = sa.inspect(db.engine)
    assert inspector.has_table("ups_events")
    assert "ix_ups_events_pending" in {ix["name"] for ix in inspector.get_indexes("ups_events")}
