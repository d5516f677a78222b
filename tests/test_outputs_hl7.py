"""HL7 ORU^R01 builder (checked by hl7apy's strict parser) and MLLP over real loopback sockets."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from triage.outputs.hl7 import DISCLAIMER, build_oru, escape, unescape
from triage.outputs.mllp import (
    Ack,
    AckCode,
    HL7DeliveryError,
    MllpReceiver,
    MllpSender,
    frame,
    parse_ack,
)
from triage.outputs.report import (
    FindingResult,
    Patient,
    Priority,
    ReportStatus,
    StudyReport,
)

CREATED = dt.datetime(2024, 3, 5, 8, 9, 10, tzinfo=dt.UTC)
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
HEMORRHAGE = FindingResult(
    detector="hemorrhage", finding="intracranial hemorrhage", probability=0.9345,
    threshold=0.5, flagged=True, model_name="ich_ct", model_version="1.2.0",
    weights_sha256="ab" * 32, series_instance_uid=f"{STUDY_UID}.2",
)
CSPINE = FindingResult(
    detector="cspine_fracture", finding="cervical spine fracture", probability=0.12,
    threshold=0.4, flagged=False, model_name="cspine_ct", model_version="0.3.1",
    weights_sha256="cd" * 32, series_instance_uid=f"{STUDY_UID}.3",
)
STROKE_NA = FindingResult(
    detector="stroke", finding="ischemic stroke", probability=0.7, threshold=0.5,
    flagged=True, model_name="stroke_ct", model_version="0.9.0", weights_sha256="ef" * 32,
    series_instance_uid=f"{STUDY_UID}.2", not_applicable="out of distribution (contrast)",
)
# hl7apy's copy of table 0396 lacks the "HL7nnnn" coding-system names that HL7 defines for
# its own tables; TQ1-9 names table 0485 that way. Nothing else may warn.
KNOWN_WARNINGS = {"Warning: Value HL70485 not in table HL70396 in element TQ1_9.CWE_3"}


def make_report(**changes: object) -> StudyReport:
    report = StudyReport(
        study_instance_uid=STUDY_UID, accession_number="ACC123", study_date="20240305",
        study_time="074501.123456", study_description="CT HEAD",
        patient=Patient(name="Doe^Jane^Q^Dr^III", id="MRN-42", birth_date="19600102", sex="F"),
        version=1, status=ReportStatus.FINAL, priority=Priority.HIGH,
        findings=(HEMORRHAGE, CSPINE, STROKE_NA), images=(), created_at=CREATED,
    )
    return dataclasses.replace(report, **changes)


def oru(report: StudyReport | None = None, control_id: str = "CTL0001") -> str:
    return build_oru(report or make_report(), sending_application="CT_TRIAGE",
                     sending_facility="RADIOLOGY", receiving_application="RIS",
                     receiving_facility="HOSPITAL", control_id=control_id)


def segments(er7: str, name: str) -> list[list[str]]:
    """Every ``name`` segment split into fields, indexed so that fields[n] is NAME-n."""
    return [s.split("|") for s in er7.split("\r") if s.startswith(name + "|")]


def field(er7: str, name: str, n: int) -> str:
    (seg,) = segments(er7, name)
    if name == "MSH":  # MSH-1 is the separator itself
        return seg[n - 1]
    return seg[n] if n < len(seg) else ""


def obx(er7: str, identifier: str, sub_id: str = "") -> list[str]:
    """The OBX whose OBX-3 code is ``identifier`` (and OBX-4 ``sub_id``), padded to OBX-19."""
    found = [s + [""] * (20 - len(s)) for s in segments(er7, "OBX")
             if s[3].split("^")[0] == identifier and s[4] == sub_id]
    assert len(found) == 1, f"{identifier}/{sub_id}: {len(found)} OBX"
    return found[0]


# ---------------------------------------------------------------------------- the message


def test_oru_parses_and_validates_strictly_as_hl7_251(tmp_path: Path) -> None:
    report_file = tmp_path / "validation.txt"
    msg = parse_message(oru(), validation_level=VALIDATION_LEVEL.STRICT,
                        force_validation=True, report_file=str(report_file))
    assert set(report_file.read_text().splitlines()) <= KNOWN_WARNINGS
    assert msg.name == "ORU_R01"
    result = msg.oru_r01_patient_result
    assert result.oru_r01_patient.pid.pid_3.to_er7() == "MRN-42"
    order = result.oru_r01_order_observation
    # ORU_R01 2.5.1: ORC, OBR, NTE*, TIMING_QTY(TQ1) *after* OBR, then the OBSERVATION groups
    names = [c.name for c in order.children]
    assert names[:4] == ["ORC", "OBR", "NTE", "ORU_R01_TIMING_QTY"]
    assert set(names[4:]) == {"ORU_R01_OBSERVATION"}
    assert order.oru_r01_timing_qty.tq1.tq1_9.to_er7() == "S^Stat^HL70485"
    assert len(names) - 4 == len(segments(oru(), "OBX")) == 2 + 3 + 3 + 2


def test_msh_identifies_an_oru_r01_of_version_251() -> None:
    er7 = oru(control_id="CTL-42.a_b")
    assert er7.startswith("MSH|^~\\&|CT_TRIAGE|RADIOLOGY|RIS|HOSPITAL|")
    assert field(er7, "MSH", 7) == "20240305080910+0000"
    assert field(er7, "MSH", 9) == "ORU^R01^ORU_R01"
    assert field(er7, "MSH", 10) == "CTL-42.a_b"
    assert field(er7, "MSH", 11) == "P"
    assert field(er7, "MSH", 12) == "2.5.1"
    assert field(er7, "MSH", 18) == "UNICODE UTF-8"
    assert er7.endswith("\r") and "\n" not in er7


def test_pid_carries_the_patient_with_dicom_name_order_mapped_to_xpn() -> None:
    er7 = oru()
    assert field(er7, "PID", 3) == "MRN-42"
    # DICOM PN family^given^middle^prefix^suffix → XPN family^given^middle^suffix^prefix
    assert field(er7, "PID", 5) == "Doe^Jane^Q^III^Dr"
    assert field(er7, "PID", 7) == "19600102"
    assert field(er7, "PID", 8) == "F"


def test_orders_are_numbered_from_accession_and_study_uid() -> None:
    er7 = oru()
    assert field(er7, "ORC", 1) == "RE"
    assert field(er7, "OBR", 2) == field(er7, "ORC", 2) == "ACC123"
    assert field(er7, "OBR", 3) == field(er7, "ORC", 3) == f"{STUDY_UID}^CT_TRIAGE"
    assert field(er7, "OBR", 4) == "CT-AI-TRIAGE^AI triage of CT^L"
    assert field(er7, "OBR", 7) == "20240305074501.1234"  # DICOM TM fraction cut to 4 digits
    assert field(er7, "OBR", 22) == "20240305080910+0000"
    assert field(er7, "OBR", 24) == "CT"
    assert obx(er7, "110180")[2:6] == ["ST", "110180^Study Instance UID^DCM", "", STUDY_UID]


def test_order_without_accession_or_study_date_leaves_those_fields_empty() -> None:
    er7 = oru(make_report(accession_number="", study_date="", study_time=""))
    assert field(er7, "OBR", 2) == field(er7, "ORC", 2) == ""
    assert field(er7, "OBR", 7) == ""
    assert field(er7, "OBR", 3) == f"{STUDY_UID}^CT_TRIAGE"


@pytest.mark.parametrize(("study_date", "study_time", "expected"), [
    ("20240305", "0745", "202403050745"),
    ("20240305", "07:45:01", "20240305074501"),
    ("20240305", "256199", "20240305"),  # not a time: the date alone
    ("20241399", "0745", ""),  # not a date: no OBR-7
    (" 20240305 ", "07", "2024030507"),
])
def test_study_date_and_time_become_obr_7_when_they_are_real(study_date: str, study_time: str,
                                                              expected: str) -> None:
    er7 = oru(make_report(study_date=study_date, study_time=study_time))
    assert field(er7, "OBR", 7) == expected


def test_a_birth_date_that_is_no_date_is_left_out() -> None:
    er7 = oru(make_report(patient=Patient(name="Doe^Jane", id="MRN-42", birth_date="19601399")))
    assert field(er7, "PID", 7) == ""


@pytest.mark.parametrize(("priority", "code", "text"), [
    (Priority.HIGH, "S", "Stat"), (Priority.MEDIUM, "A", "ASAP"), (Priority.LOW, "R", "Routine"),
])
def test_priority_goes_to_obr_27_and_tq1_9(priority: Priority, code: str, text: str) -> None:
    er7 = oru(make_report(priority=priority))
    assert field(er7, "OBR", 27) == f"^^^^^{code}"  # TQ-6
    assert field(er7, "TQ1", 9) == f"{code}^{text}^HL70485"


def test_each_finding_is_a_coded_result_with_model_provenance_and_probability() -> None:
    er7 = oru()
    coded = obx(er7, "AI-HEMORRHAGE", "hemorrhage.1")
    assert coded[2] == "CE"
    assert coded[3] == "AI-HEMORRHAGE^intracranial hemorrhage^L"
    assert coded[5] == "260373001^DETECTED^SCT"
    assert coded[8] == "A"
    assert coded[11] == "F"
    assert coded[14] == "20240305074501.1234"
    assert coded[17] == "ich_ct^ich_ct 1.2.0^L~123110^Artificial Intelligence^DCM"
    assert coded[18] == f"{'ab' * 32}^WEIGHTS-SHA256"
    assert coded[19] == "20240305080910+0000"
    series = obx(er7, "112002", "hemorrhage.1")
    assert series[2] == "ST" and series[5] == HEMORRHAGE.series_instance_uid
    probability = obx(er7, "AI-HEMORRHAGE-P", "hemorrhage.1")
    assert probability[2:9] == ["NM", "AI-HEMORRHAGE-P^intracranial hemorrhage AI probability^L",
                                "hemorrhage.1", "0.9345", "", "<0.5", "H"]
    negative = obx(er7, "AI-CSPINE_FRACTURE", "cspine_fracture.1")
    assert negative[5] == "260415000^NOT DETECTED^SCT" and negative[8] == "N"
    assert obx(er7, "AI-CSPINE_FRACTURE-P", "cspine_fracture.1")[5:9] == ["0.12", "", "<0.4", "N"]


def test_not_applicable_finding_gives_its_reason_and_no_probability() -> None:
    er7 = oru()
    coded = obx(er7, "AI-STROKE", "stroke.1")
    assert coded[5] == "385432009^NOT APPLICABLE: out of distribution (contrast)^SCT"
    assert coded[8] == ""
    assert not [s for s in segments(er7, "OBX") if s[3].startswith("AI-STROKE-P")]


def test_every_message_says_it_is_ai_generated_and_not_for_diagnosis() -> None:
    er7 = oru()
    assert field(er7, "NTE", 3) == DISCLAIMER
    assert "not for diagnosis" in DISCLAIMER and "synthetic" in DISCLAIMER
    assert obx(er7, "AI-NOTE")[1:6] == ["1", "TX", "AI-NOTE^AI triage notice^L", "", DISCLAIMER]


def test_final_report_has_status_f_everywhere() -> None:
    er7 = oru()
    assert field(er7, "OBR", 25) == "F"
    assert {s[11] for s in segments(er7, "OBX")} == {"F"}


def test_corrected_report_has_status_c_and_deletes_a_probability_that_no_longer_applies() -> None:
    er7 = oru(make_report(status=ReportStatus.CORRECTED, version=2))
    assert field(er7, "OBR", 25) == "C"
    assert obx(er7, "AI-STROKE-P", "stroke.1")[5] == ""
    statuses = {(s[3].split("^")[0], s[4]): s[11] for s in segments(er7, "OBX")}
    assert statuses.pop(("AI-STROKE-P", "stroke.1")) == "D"
    assert set(statuses.values()) == {"C"}


def test_retraction_deletes_every_finding_observation_and_says_so() -> None:
    er7 = oru(make_report(status=ReportStatus.RETRACTED, version=3))
    assert field(er7, "OBR", 25) == "C"
    note = obx(er7, "AI-NOTE")
    assert note[11] == "C" and note[5].startswith("RETRACTED:") and DISCLAIMER in note[5]
    assert obx(er7, "110180")[11] == "C"
    findings = [s for s in segments(er7, "OBX") if s[4]]
    assert len(findings) == 8  # the rows a FINAL would carry, plus stroke's probability
    assert {s[11] for s in findings} == {"D"}
    assert {s[5] for s in findings} == {""}


def test_observations_keep_their_identity_across_versions() -> None:
    def keys(report: StudyReport) -> set[tuple[str, str]]:
        return {(s[3].split("^")[0], s[4]) for s in segments(oru(report), "OBX") if s[4]}

    first = keys(make_report(findings=(HEMORRHAGE,)))
    later = keys(make_report(findings=(CSPINE, HEMORRHAGE), status=ReportStatus.CORRECTED))
    assert first <= later


def test_special_characters_in_patient_data_are_escaped() -> None:
    nasty = Patient(name="O'Neil & Sons|X~Y\\Z^Mary-Ann", id="ID|1&2", birth_date="19600102",
                    sex="M")
    er7 = oru(make_report(patient=nasty, accession_number="A^1"))
    assert field(er7, "PID", 5) == "O'Neil \\T\\ Sons\\F\\X\\R\\Y\\E\\Z^Mary-Ann"
    assert field(er7, "PID", 3) == "ID\\F\\1\\T\\2"
    assert field(er7, "OBR", 2) == "A\\S\\1"
    assert field(er7, "PID", 8) == "M"  # the fields after the name are where they belong
    family = field(er7, "PID", 5).split("^")[0]
    assert unescape(family) == "O'Neil & Sons|X~Y\\Z"
    msg = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, force_validation=True)
    xpn = msg.oru_r01_patient_result.oru_r01_patient.pid.pid_5
    assert xpn.xpn_1.to_er7() == "O'Neil \\T\\ Sons\\F\\X\\R\\Y\\E\\Z"
    assert xpn.xpn_2.to_er7() == "Mary-Ann"


def test_control_characters_in_a_reason_cannot_split_segments_or_frames() -> None:
    finding = dataclasses.replace(STROKE_NA, not_applicable="slices\r\nmissing\x0b\x1c \\F\\")
    er7 = oru(make_report(findings=(finding,)))
    value = obx(er7, "AI-STROKE", "stroke.1")[5]
    assert value == "385432009^NOT APPLICABLE: slices  missing   \\E\\F\\E\\^SCT"
    assert unescape(value.split("^")[1]) == "NOT APPLICABLE: slices  missing   \\F\\"
    assert len(er7.split("\r")) == len(oru(make_report(findings=(STROKE_NA,))).split("\r"))
    assert frame(er7)  # no MLLP block character left


@pytest.mark.parametrize("text", [
    "plain", "a|b^c~d&e\\f", "\\F\\ literally", "trailing\\", "", "ünïcødé ✓",
])
def test_escape_and_unescape_round_trip(text: str) -> None:
    escaped = escape(text)
    assert not set("|^~&\r\n") & set(escaped)
    assert unescape(escaped) == text


def test_unescape_reads_hex_and_line_break_sequences() -> None:
    assert unescape("a\\X0D0A\\b\\.br\\c") == "a\r\nb\nc"


def test_unescape_is_tolerant_of_unknown_and_unterminated_sequences() -> None:
    assert unescape("a\\Zxx\\b") == "a\\Zxx\\b"
    assert unescape("a\\H\\bold\\N\\b") == "aboldb"
    assert unescape("end\\") == "end\\"
    assert unescape("a#S#b", escape_char="#") == "a^b"


def test_empty_patient_name_is_sent_as_unspecified() -> None:
    er7 = oru(make_report(patient=Patient(id="MRN-1")))
    assert field(er7, "PID", 5) == "^^^^^^U"
    assert field(er7, "PID", 7) == field(er7, "PID", 8) == ""


def test_same_report_and_control_id_give_the_same_bytes() -> None:
    assert oru() == oru()


@pytest.mark.parametrize(("changes", "control_id", "match"), [
    ({}, "", "control_id"),
    ({}, "x" * 21, "control_id"),
    ({}, "has space", "control_id"),
    ({"patient": Patient(name="Doe^J")}, "C1", "patient id"),
    ({"findings": (dataclasses.replace(HEMORRHAGE, probability=1.5),)}, "C1", "probability"),
    ({"findings": (dataclasses.replace(HEMORRHAGE, threshold=float("nan")),)}, "C1",
     "threshold"),
])
def test_build_rejects_what_it_cannot_encode(changes: dict[str, object], control_id: str,
                                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        oru(make_report(**changes), control_id=control_id)


# ---------------------------------------------------------------------------- MLLP


@pytest.fixture
def receiver() -> Iterator[MllpReceiver]:
    with MllpReceiver() as rx:
        yield rx


def sender_for(rx: MllpReceiver, timeout_s: float = 5.0,
               tls: ssl.SSLContext | None = None) -> MllpSender:
    host, port = rx.address
    return MllpSender(host, port, timeout_s=timeout_s, tls=tls)


def ack_message(code: str, control_id: str, *extra: str) -> str:
    return "\r".join(["MSH|^~\\&|RIS|HOSPITAL|CT_TRIAGE|RADIOLOGY|20240305||ACK^R01^ACK|A1|P|2.5.1",
                      f"MSA|{code}|{control_id}", *extra]) + "\r"


def test_accepted_message_arrives_intact(receiver: MllpReceiver) -> None:
    message = oru(make_report(patient=Patient(name="Ünal^Zoë", id="MRN-42")))
    ack = sender_for(receiver).send(message)
    assert ack == Ack(code=AckCode.AA, control_id="CTL0001", text="")
    assert receiver.messages == [message]


def test_commit_accept_is_accepted(receiver: MllpReceiver) -> None:
    receiver.ack_code = AckCode.CA
    assert sender_for(receiver).send(oru()).code is AckCode.CA


@pytest.mark.parametrize(("code", "retryable"), [
    ("AE", False), ("CE", False), ("AR", True), ("CR", True),
])
def test_refusals_raise_with_retryability_by_ack_code(receiver: MllpReceiver, code: str,
                                                      retryable: bool) -> None:
    receiver.ack_code = AckCode(code)
    receiver.ack_text = "PID-3 unknown|try later"
    with pytest.raises(HL7DeliveryError, match=f"answered {code}") as info:
        sender_for(receiver).send(oru())
    assert info.value.retryable is retryable
    assert info.value.ack == Ack(code=AckCode(code), control_id="CTL0001",
                                 text="PID-3 unknown|try later")
    assert len(receiver.messages) == 1


def test_error_text_is_taken_from_err_when_msa_3_is_empty(receiver: MllpReceiver) -> None:
    receiver.reply = lambda m: ack_message(
        "AE", "CTL0001", "ERR||PID^1^3|101^Required field missing^HL70357|E")
    with pytest.raises(HL7DeliveryError, match="Required field missing") as info:
        sender_for(receiver).send(oru())
    assert info.value.retryable is False


def test_receiver_closing_without_ack_is_retryable(receiver: MllpReceiver) -> None:
    receiver.reply = lambda m: None
    with pytest.raises(HL7DeliveryError, match="closed the connection with no ACK") as info:
        sender_for(receiver).send(oru())
    assert info.value.retryable is True


def test_ack_for_another_control_id_is_an_error(receiver: MllpReceiver) -> None:
    receiver.reply = lambda m: ack_message("AA", "SOMEONE-ELSE")
    with pytest.raises(HL7DeliveryError, match="'SOMEONE-ELSE', not 'CTL0001'") as info:
        sender_for(receiver).send(oru())
    assert info.value.retryable is True
    assert info.value.ack is not None and info.value.ack.code is AckCode.AA


def test_silent_receiver_times_out_within_the_bound(receiver: MllpReceiver) -> None:
    release = threading.Event()

    def never_answer(message: str) -> None:
        release.wait(10)

    receiver.reply = never_answer
    started = time.monotonic()
    try:
        with pytest.raises(HL7DeliveryError, match=r"no ACK .* within 0.3 s") as info:
            sender_for(receiver, timeout_s=0.3).send(oru())
    finally:
        release.set()
    assert 0.25 <= time.monotonic() - started < 2.0
    assert info.value.retryable is True


@pytest.mark.parametrize(("answer", "match"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not MLLP-framed"),
    ("hello, world", "not an HL7 message"),
    ("MSH|^~\\&|RIS|H|||20240305||ACK|1|P|2.5.1\r", "no MSA segment"),
    ("MSH|^~\\&|RIS|H|||20240305||ACK|1|P|2.5.1\rMSA|OK|CTL0001\r", "not an acknowledgment"),
    (b"\x0bMSH|^~\\&|RIS", "incomplete ACK"),
])
def test_garbage_answers_are_retryable_errors(receiver: MllpReceiver, answer: str | bytes,
                                              match: str) -> None:
    receiver.reply = lambda m: answer
    with pytest.raises(HL7DeliveryError, match=match) as info:
        sender_for(receiver).send(oru())
    assert info.value.retryable is True


def test_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HL7DeliveryError, match=r"connection to 127\.0\.0\.1:\d+ failed") as info:
        MllpSender("127.0.0.1", port, timeout_s=2).send(oru())
    assert info.value.retryable is True


def test_sender_refuses_a_message_without_control_id_or_with_block_characters() -> None:
    sender = MllpSender("127.0.0.1", 9, timeout_s=1)
    with pytest.raises(ValueError, match="MSH-10"):
        sender.send("PID|1||X\r")
    with pytest.raises(ValueError, match="0x0B or 0x1C"):
        frame("MSH|^~\\&|\x1c")


def test_parse_ack_reads_other_delimiters_and_line_endings() -> None:
    ack = parse_ack("MSH#!~$%#RIS#H####ACK#1#P#2.3\nMSA#AE#C1#bad $F$ value\n")
    assert ack == Ack(code=AckCode.AE, control_id="C1", text="bad # value")


def test_several_messages_each_get_their_ack(receiver: MllpReceiver) -> None:
    sender = sender_for(receiver)
    acks = [sender.send(oru(control_id=f"C{i}")) for i in range(3)]
    assert [a.control_id for a in acks] == ["C0", "C1", "C2"]
    assert len(receiver.messages) == 3


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def tls_receiver(certificate: tuple[Path, Path]) -> MllpReceiver:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*certificate)
    return MllpReceiver(tls=server)


def test_tls_delivers_to_a_trusted_receiver(certificate: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with tls_receiver(certificate) as rx:
        assert sender_for(rx, tls=client).send(oru()).code is AckCode.AA
        assert len(rx.messages) == 1


def test_tls_refuses_an_untrusted_receiver_without_retry(certificate: tuple[Path, Path]) -> None:
    client = ssl.create_default_context()  # the system trust store does not know our cert
    with tls_receiver(certificate) as rx, pytest.raises(HL7DeliveryError,
                                                         match="TLS certificate") as info:
        sender_for(rx, tls=client).send(oru())
    assert info.value.retryable is False
    assert rx.messages == []


def test_logs_name_the_control_id_but_no_patient_data(receiver: MllpReceiver,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="triage.outputs")
    sender_for(receiver).send(oru())
    receiver.ack_code = AckCode.AE
    with pytest.raises(HL7DeliveryError):
        sender_for(receiver).send(oru(control_id="CTL0002"))
    text = caplog.text
    assert "CTL0001" in text and "CTL0002" in text
    for phi in ("Doe", "Jane", "MRN-42", "ACC123", "19600102"):
        assert phi not in text

