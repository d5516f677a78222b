"""HL7 v2.5.1 ORU^R01 messages carrying one study's AI triage result (pure builder, no I/O).

The transport is :mod:`triage.outputs.mllp`. The message, segment by segment (the order is the
2.5.1 ``ORU_R01`` structure: in the ORDER_OBSERVATION group TQ1 comes *after* OBR and its NTEs,
inside the TIMING_QTY group, not between ORC and OBR)::

    MSH  ORU^R01^ORU_R01, MSH-10 control id, MSH-11 P, MSH-12 2.5.1, MSH-18 UNICODE UTF-8
    PID  PID-3 patient id, PID-5 name (DICOM PN → XPN), PID-7 birth date, PID-8 sex
    ORC  RE (observations to follow), ORC-2/3 = OBR-2/3
    OBR  OBR-2 placer = accession number, OBR-3 filler = Study Instance UID (stable across
         versions, so corrections find the result they replace), OBR-4 CT-AI-TRIAGE,
         OBR-7 study date/time, OBR-22 report time, OBR-24 CT, OBR-25 result status,
         OBR-27 TQ-6 priority (kept for receivers older than 2.5)
    NTE  "AI-generated, not for diagnosis; trained on synthetic data."
    TQ1  TQ1-9 priority (HL7 table 0485): S for HIGH, A for MEDIUM, R for LOW
    OBX  TX  AI-NOTE        the same notice (or the retraction notice) as an observation,
                            for receivers that drop NTEs
    OBX  ST  110180^Study Instance UID^DCM (DICOM PS3.16 code, as in highdicom/pydicom)
    per finding (sorted by detector, then series), OBX-4 sub-id "<detector>.<n>" (n-th series
    of that detector) groups its OBXs; OBX-3 + OBX-4 name the same observation in every
    version of the report, which is what a receiver matches corrections and deletions on:
    OBX  CE  AI-<DETECTOR>^<finding>^L, value 260373001^DETECTED^SCT,
             260415000^NOT DETECTED^SCT or 385432009^NOT APPLICABLE: <reason>^SCT;
             OBX-8 A/N, OBX-14 study time, OBX-17 model^model version^L ~ 123110^Artificial
             Intelligence^DCM, OBX-18 weights sha256, OBX-19 report time
    OBX  ST  112002^Series Instance UID^DCM
    OBX  NM  AI-<DETECTOR>-P^<finding> AI probability^L, OBX-7 "<threshold",
             OBX-8 H/N; left out when the finding is NOT APPLICABLE (a probability that must
             not be used is not sent)

Result status. FINAL: OBR-25 F, every OBX F. CORRECTED: OBR-25 C, every OBX C; a finding that
became NOT APPLICABLE gets its probability OBX with status D, so no stale probability stands.
RETRACTED: OBR-25 C with every finding OBX (CE, series, probability) as D, "deletes the OBX
record" (table 0085), and the AI-NOTE OBX corrected to a retraction notice. OBR-25 X was not
chosen: table 0123 defines it as "order cancelled", which is not what happened (the CT was done;
only the AI result is withdrawn), and it deletes none of the observations already filed. The
report builder must therefore carry the withdrawn findings in a RETRACTED report.

Values are escaped here (``escape``), not by hl7apy: hl7apy leaves a backslash alone when it
looks like part of an escape sequence, so a literal ``\\F\\`` would not survive. hl7apy builds
the segment tree and checks it against the 2.5.1 structure before the message is returned.
Patient demographics go into the message and nowhere else: this module logs nothing.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException

from triage.outputs.report import FindingResult, Priority, ReportStatus, StudyReport

__all__ = [
    "DISCLAIMER", "HL7_VERSION", "PRIORITY_CODES", "RESULT_STATUS", "SERVICE", "build_oru",
    "escape", "unescape",
]

HL7_VERSION = "2.5.1"
SERVICE = ("CT-AI-TRIAGE", "AI triage of CT", "L")  # OBR-4, a local code
DISCLAIMER = "AI-generated, not for diagnosis; trained on synthetic data."
RETRACTION = (
    "RETRACTED: the AI triage result sent earlier for this study is withdrawn; "
    "no AI result stands."
)
# HL7 table 0485 (TQ1-9) and the TQ-6 priority component of OBR-27
PRIORITY_CODES: dict[Priority, tuple[str, str]] = {
    Priority.HIGH: ("S", "Stat"),
    Priority.MEDIUM: ("A", "ASAP"),
    Priority.LOW: ("R", "Routine"),
}
RESULT_STATUS: dict[ReportStatus, str] = {  # OBR-25, table 0123
    ReportStatus.FINAL: "F",
    ReportStatus.CORRECTED: "C",
    ReportStatus.RETRACTED: "C",
}

# SNOMED CT qualifier values, as used for qualitative results in HL7 v2 lab reporting
DETECTED = ("260373001", "DETECTED", "SCT")
NOT_DETECTED = ("260415000", "NOT DETECTED", "SCT")
NOT_APPLICABLE = ("385432009", "NOT APPLICABLE", "SCT")
# DICOM PS3.16 codes (pydicom.sr.codedict: codes.DCM.StudyInstanceUID, ...)
STUDY_UID = ("110180", "Study Instance UID", "DCM")
SERIES_UID = ("112002", "Series Instance UID", "DCM")
AI_FAMILY = ("123110", "Artificial Intelligence", "DCM")
NOTE = ("AI-NOTE", "AI triage notice", "L")

_CONTROL_ID = re.compile(r"[A-Za-z0-9._-]{1,20}")  # MSH-10 is ST(20); kept plain so MSA-2 matches
_DELIMITERS = {"|": "F", "^": "S", "&": "T", "~": "R"}


def escape(text: str) -> str:
    """Escape ``text`` for an ER7 leaf value with the default delimiters ``|^~\\&``.

    Control characters (CR ends a segment, 0x0B/0x1C frame MLLP) become spaces: the leaves we
    write (ST, TX) carry no line structure, and hl7apy would re-escape a ``\\Xhh\\`` sequence.
    """
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\E\\")
        elif ch in _DELIMITERS:
            out.append(f"\\{_DELIMITERS[ch]}\\")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str, *, field: str = "|", component: str = "^", repetition: str = "~",
             escape_char: str = "\\", subcomponent: str = "&") -> str:
    """Undo ER7 escaping (tolerant: an unknown or unterminated sequence is kept as it is).

    ``\\H\\``/``\\N\\`` (highlighting) are dropped and ``\\.br\\`` becomes a newline.
    """
    known = {"F": field, "S": component, "R": repetition, "E": escape_char, "T": subcomponent,
             "H": "", "N": "", ".br": "\n"}
    parts = text.split(escape_char)
    out = [parts[0]]
    i = 1
    while i < len(parts):
        if i + 1 >= len(parts):  # unterminated: keep verbatim
            out.append(escape_char + parts[i])
            break
        seq = parts[i]
        if seq in known:
            out.append(known[seq])
        elif seq[:1] == "X" and len(seq) % 2 == 1 and re.fullmatch(r"[0-9A-Fa-f]*", seq[1:]):
            out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        else:
            out.append(escape_char + seq + escape_char)
        out.append(parts[i + 1])
        i += 2
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Obs:
    """One OBX, before it is put into hl7apy's tree (components are unescaped)."""

    value_type: str
    identifier: tuple[str, ...]
    value: tuple[str, ...]
    status: str
    sub_id: str = ""
    reference_range: str = ""
    abnormal_flag: str = ""
    observed_at: str = ""
    methods: tuple[tuple[str, ...], ...] = ()
    equipment: tuple[str, ...] = ()
    analysed_at: str = ""

    def deleted(self) -> _Obs:
        return replace(self, value=(), status="D", reference_range="", abnormal_flag="")


def build_oru(report: StudyReport, *, sending_application: str, sending_facility: str,
              receiving_application: str, receiving_facility: str, control_id: str,
              message_time: dt.datetime | None = None) -> str:
    """Build the ORU^R01 (HL7 v2.5.1, ER7, segments ended by CR) for ``report``.

    Parameters
    ----------
    report
        The study's AI result; its ``status`` picks F, C or the retraction convention above.
    sending_application, sending_facility, receiving_application, receiving_facility
        MSH-3 to MSH-6 (HD namespace ids), as agreed with the receiving interface engine.
    control_id
        MSH-10; the receiver echoes it in MSA-2. Reuse it when re-sending the same message so
        the receiver can discard duplicates. 1-20 characters of ``A-Z a-z 0-9 . _ -``.
    message_time
        MSH-7; defaults to ``report.created_at``, so the same report and control id always give
        the same bytes.

    Returns
    -------
    The message; the last segment is ended by CR too.

    Raises
    ------
    ValueError
        For a malformed control id, a report without patient id, or a probability or threshold
        outside 0..1.
    """
    if not _CONTROL_ID.fullmatch(control_id):
        raise ValueError("control_id must be 1-20 characters of A-Z a-z 0-9 . _ -")
    if not report.patient.id.strip():
        raise ValueError("an ORU needs a patient id (PID-3); the report has none")
    findings = sorted(report.findings, key=lambda f: (f.detector, f.series_instance_uid))
    for f in findings:
        for what, x in (("probability", f.probability), ("threshold", f.threshold)):
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                raise ValueError(f"{f.detector}: {what} {x!r} is outside 0..1")
    header = (sending_application, sending_facility, receiving_application, receiving_facility)
    try:
        return _message(report, findings, header, control_id,
                        _ts(message_time or report.created_at))
    except HL7apyException as exc:  # a bug here, never bad input: inputs are checked above
        raise ValueError(f"ORU^R01 does not conform to HL7 {HL7_VERSION}: {exc}") from exc


def _message(report: StudyReport, findings: list[FindingResult],
             header: tuple[str, str, str, str], control_id: str, message_time: str) -> str:
    """The hl7apy part: build the tree, check it against 2.5.1, render ER7."""
    msg = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    for n, value in enumerate(header, 3):  # MSH-3 to MSH-6
        _put(msh, f"msh_{n}", value)
    _put(msh, "msh_7", message_time)
    _put(msh, "msh_9", "ORU", "R01", "ORU_R01")
    _put(msh, "msh_10", control_id)
    _put(msh, "msh_11", "P")
    _put(msh, "msh_12", HL7_VERSION)
    _put(msh, "msh_18", "UNICODE UTF-8")

    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
    _put(pid, "pid_1", "1")
    _put(pid, "pid_3", report.patient.id)
    _put(pid, "pid_5", *_xpn(report.patient.name))
    _put(pid, "pid_7", _dicom_date(report.patient.birth_date))
    if report.patient.sex in ("M", "F", "O"):
        _put(pid, "pid_8", report.patient.sex)

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    placer = (report.accession_number,) if report.accession_number else ()
    filler = (report.study_instance_uid, header[0])  # namespace: our sending application
    created = _ts(report.created_at)
    study_time = _study_ts(report.study_date, report.study_time)
    code, text = PRIORITY_CODES[report.priority]

    orc = order.add_segment("ORC")
    _put(orc, "orc_1", "RE")
    _put(orc, "orc_2", *placer)
    _put(orc, "orc_3", *filler)
    _put(orc, "orc_9", created)

    obr = order.add_segment("OBR")
    _put(obr, "obr_1", "1")
    _put(obr, "obr_2", *placer)
    _put(obr, "obr_3", *filler)
    _put(obr, "obr_4", *SERVICE)
    _put(obr, "obr_7", study_time)
    _put(obr, "obr_22", created)
    _put(obr, "obr_24", "CT")
    _put(obr, "obr_25", RESULT_STATUS[report.status])
    _put(obr, "obr_27", "", "", "", "", "", code)  # TQ-6 priority

    nte = order.add_segment("NTE")
    _put(nte, "nte_1", "1")
    _put(nte, "nte_2", "L")  # table 0105: the filler (us) is the source of the comment
    _put(nte, "nte_3", DISCLAIMER)

    tq1 = order.add_group("ORU_R01_TIMING_QTY").add_segment("TQ1")
    _put(tq1, "tq1_1", "1")
    _put(tq1, "tq1_9", code, text, "HL70485")

    for set_id, obs in enumerate(_observations(report, findings, study_time, created), 1):
        _add_obx(order.add_group("ORU_R01_OBSERVATION").add_segment("OBX"), set_id, obs)

    msg.validate()  # raises on any structural error
    return str(msg.to_er7()) + "\r"


def _observations(report: StudyReport, findings: list[FindingResult], study_time: str,
                  created: str) -> list[_Obs]:
    status = RESULT_STATUS[report.status]  # F and C mean the same in OBX-11 (table 0085)
    retracted = report.status is ReportStatus.RETRACTED
    note = f"{RETRACTION} {DISCLAIMER}" if retracted else DISCLAIMER
    rows = [
        _Obs("TX", NOTE, (note,), status),
        _Obs("ST", STUDY_UID, (report.study_instance_uid,), status),
    ]
    per_detector: dict[str, int] = {}
    for f in findings:
        per_detector[f.detector] = k = per_detector.get(f.detector, 0) + 1
        sub_id = f"{f.detector}.{k}"
        found = _finding_rows(f, sub_id, status, study_time, created)
        if retracted:
            found = [o.deleted() for o in found]
        elif report.status is ReportStatus.CORRECTED and f.not_applicable is not None:
            found.append(_probability_row(f, sub_id, status, study_time, created).deleted())
        rows.extend(found)
    return rows


def _finding_rows(f: FindingResult, sub_id: str, status: str, study_time: str,
                  created: str) -> list[_Obs]:
    if f.not_applicable is not None:
        value, flag = (NOT_APPLICABLE[0], f"NOT APPLICABLE: {f.not_applicable}",
                       NOT_APPLICABLE[2]), ""
    elif f.flagged:
        value, flag = DETECTED, "A"
    else:
        value, flag = NOT_DETECTED, "N"
    rows = [
        _Obs("CE", (f"AI-{f.detector.upper()}", f.finding, "L"), value, status, sub_id,
             abnormal_flag=flag, observed_at=study_time,
             methods=((f.model_name, f"{f.model_name} {f.model_version}", "L"), AI_FAMILY),
             equipment=(f.weights_sha256, "WEIGHTS-SHA256") if f.weights_sha256 else (),
             analysed_at=created),
        _Obs("ST", SERIES_UID, (f.series_instance_uid,), status, sub_id),
    ]
    if f.not_applicable is None:
        rows.append(_probability_row(f, sub_id, status, study_time, created))
    return rows


def _probability_row(f: FindingResult, sub_id: str, status: str, study_time: str,
                     created: str) -> _Obs:
    return _Obs("NM", (f"AI-{f.detector.upper()}-P", f"{f.finding} AI probability", "L"),
                (_decimal(f.probability),), status, sub_id,
                reference_range=f"<{_decimal(f.threshold)}",
                abnormal_flag="H" if f.flagged else "N", observed_at=study_time,
                analysed_at=created)


def _add_obx(obx: Any, set_id: int, o: _Obs) -> None:
    _put(obx, "obx_1", str(set_id))
    _put(obx, "obx_2", o.value_type)
    _put(obx, "obx_3", *o.identifier)
    _put(obx, "obx_4", o.sub_id)
    _put(obx, "obx_5", *o.value)
    _put(obx, "obx_7", o.reference_range)
    _put(obx, "obx_8", o.abnormal_flag)
    _put(obx, "obx_11", o.status)
    _put(obx, "obx_14", o.observed_at)
    for method in o.methods:  # OBX-17 repeats
        obx.add_field("OBX_17").value = _components(method)
    _put(obx, "obx_18", *o.equipment)
    _put(obx, "obx_19", o.analysed_at)


def _put(segment: Any, field: str, *components: str) -> None:
    """Set one field from unescaped components; an all-empty field is left out."""
    er7 = _components(components)
    if er7:
        setattr(segment, field, er7)


def _components(components: tuple[str, ...]) -> str:
    return "^".join(escape(c) for c in components).rstrip("^")


def _xpn(pn: str) -> tuple[str, ...]:
    """DICOM PN (family^given^middle^prefix^suffix, alphabetic group) → XPN components 1-7."""
    alphabetic = pn.split("=", maxsplit=1)[0]
    family, given, middle, prefix, suffix = [*alphabetic.split("^", 4), "", "", "", ""][:5]
    names = tuple(s.strip() for s in (family, given, middle, suffix, prefix))
    # XPN-4 is the suffix and XPN-5 the prefix; the order differs from DICOM's
    return names if any(names) else ("", "", "", "", "", "", "U")  # table 0200: unspecified


def _ts(when: dt.datetime) -> str:
    """HL7 DTM in UTC; a naive datetime is taken as UTC (how the index stores times)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _dicom_date(da: str) -> str:
    """A DICOM DA as HL7 DT, or "" when it is not a real date (what we read may be sloppy)."""
    da = da.strip()
    try:
        dt.datetime.strptime(da, "%Y%m%d")
    except ValueError:
        return ""
    return da


def _study_ts(da: str, tm: str) -> str:
    """DICOM DA + TM (local time, no offset known) → HL7 DTM; the date alone if TM is unusable."""
    date = _dicom_date(da)
    m = re.fullmatch(r"(\d{2}(?:\d{2}(?:\d{2})?)?)(?:\.(\d{1,6}))?", tm.strip().replace(":", ""))
    if not date or m is None:
        return date
    digits, fraction = m.groups()
    try:
        dt.datetime.strptime(digits, "%H%M%S"[: len(digits)])
    except ValueError:
        return date
    if fraction and len(digits) == 6:
        return f"{date}{digits}.{fraction[:4]}"  # DTM allows 4 fractional digits
    return f"{date}{digits}"


def _decimal(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") or "0"
