"""Spool and instance index: durable write of received instances, sole owner of the files.

An instance is placed at ``<spool>/<study>/<series>/<sop>.dcm`` (UIDs sanitised) with the
sequence *fsync file → rename → fsync directory → commit index row*; only then does the caller
answer the sender with Success.  The received bytes are never decoded beyond the header.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from triage.db import Database, instances, series, studies
from triage.domain import InstanceHeader, SeriesState, StoreOutcome
from triage.errors import InvalidInstanceError, OutOfResourcesError

logger = logging.getLogger(__name__)

# DIMSE "cannot understand" statuses chosen by the store (0xC211 is pynetdicom's own
# "exception in handler" status, so it stays free for genuinely unexpected errors).
STATUS_UNREADABLE = 0xC210
STATUS_MISSING_UID = 0xC212
STATUS_UID_MISMATCH = 0xC213

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_MAX_EXPECTED = 100_000


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one received instance."""

    outcome: StoreOutcome
    header: InstanceHeader
    path: Path


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID: the UID itself if well-formed, else a digest.

    Conformant UIDs are digits and dots; anything else (vendors do send it) is mapped to a
    stable hash so that it can neither escape the spool nor collide.
    """
    if _UID_RE.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def read_header(path: Path) -> InstanceHeader:
    """Parse the header of a Part 10 file (pixel data is not read).

    Raises
    ------
    InvalidInstanceError
        When the file is not readable DICOM or lacks one of the four UIDs.
    """
    try:
        with path.open("rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
            values = {kw: _ascii(ds, kw) for kw in _REQUIRED}
            truncated = transfer_syntax != DeflatedExplicitVRLittleEndian and _is_truncated(
                fp, implicit=bool(ds.original_encoding[0]),
                little=bool(ds.original_encoding[1]),
            )
    except Exception as exc:  # whatever pydicom raises on garbage, the data set is unreadable
        raise InvalidInstanceError(
            f"unreadable data set ({type(exc).__name__})", status=STATUS_UNREADABLE
        ) from exc
    if truncated:
        raise InvalidInstanceError("data set is truncated inside its pixel data",
                                   status=STATUS_UNREADABLE)
    missing = [kw for kw, value in values.items() if not value]
    if missing:
        raise InvalidInstanceError(
            f"data set lacks {', '.join(missing)}", status=STATUS_MISSING_UID
        )
    try:
        return InstanceHeader(
            study_instance_uid=values["StudyInstanceUID"] or "",
            series_instance_uid=values["SeriesInstanceUID"] or "",
            sop_instance_uid=values["SOPInstanceUID"] or "",
            sop_class_uid=values["SOPClassUID"] or "",
            transfer_syntax_uid=transfer_syntax,
            modality=_ascii(ds, "Modality"),
            instance_number=_int(ds, "InstanceNumber"),
            series_number=_int(ds, "SeriesNumber"),
            body_part_examined=_ascii(ds, "BodyPartExamined"),
            study_description=_text(ds, "StudyDescription"),
            series_description=_text(ds, "SeriesDescription"),
            image_type=_multi(ds, "ImageType"),
            slice_thickness=_float(ds, "SliceThickness"),
            contrast_agent=_text(ds, "ContrastBolusAgent"),
            request_priority=_priority(ds),
            expected_count=_expected_count(ds),
            patient_name=_text(ds, "PatientName"),
            patient_id=_text(ds, "PatientID"),
            patient_birth_date=_ascii(ds, "PatientBirthDate"),
            patient_sex=_ascii(ds, "PatientSex"),
            accession_number=_text(ds, "AccessionNumber"),
            study_date=_ascii(ds, "StudyDate"),
            study_time=_ascii(ds, "StudyTime"),
        )
    except Exception as exc:  # deferred parsing of a corrupt element surfaces here
        raise InvalidInstanceError(
            f"unreadable data set ({type(exc).__name__})", status=STATUS_UNREADABLE
        ) from exc


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _is_truncated(fp: BinaryIO, *, implicit: bool, little: bool) -> bool:
    """True when the pixel data element at ``fp``'s position ends beyond the end of file.

    ``fp`` is where pydicom stopped before the pixel data; nothing is decoded.
    """
    start = fp.tell()
    size = fp.seek(0, os.SEEK_END)
    if start >= size:
        return False  # no pixel data
    fp.seek(start)
    head = fp.read(12)
    order = "<" if little else ">"
    if implicit:
        if len(head) < 8:
            return True
        (length,) = struct.unpack(order + "L", head[4:8])
        header = 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return True
        (length,) = struct.unpack(order + "L", head[8:12])
        header = 12
    else:
        if len(head) < 8:
            return True
        (length,) = struct.unpack(order + "H", head[6:8])
        header = 8
    if length == 0xFFFFFFFF:  # encapsulated: must end with a sequence delimiter
        fp.seek(max(start, size - 256))
        return _SEQUENCE_DELIMITER not in fp.read()
    return bool(start + header + int(length) > size)


def _text(ds: Dataset, keyword: str) -> str | None:
    """A text value decoded by pydicom (its character set applies: names, descriptions)."""
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def _ascii(ds: Dataset, keyword: str) -> str | None:
    """The value of an element whose VR allows only ASCII (UI, CS, IS, DS, DA, TM), as text.

    Read from the undecoded element, which costs a fraction of pydicom's conversion; the
    header parse is on the path of every acknowledgement.
    """
    elem = ds.get_item(tag_for_keyword(keyword) or 0)
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def _multi(ds: Dataset, keyword: str) -> tuple[str, ...]:
    text = _ascii(ds, keyword)
    if text is None:
        return ()
    return tuple(v.strip() for v in text.split("\\") if v.strip())


def _float(ds: Dataset, keyword: str) -> float | None:
    text = _ascii(ds, keyword)
    try:
        return None if text is None else float(text.split("\\")[0])
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _ascii(ds, keyword)
    try:
        return None if text is None else int(float(text.split("\\")[0]))
    except (ValueError, OverflowError):
        return None


def _priority(ds: Dataset) -> str | None:
    for keyword in ("RequestedProcedurePriority", "ScheduledProcedureStepPriority",
                    "StudyPriorityID"):
        text = _ascii(ds, keyword)
        if text:
            return text.upper()[:16]
    for item in ds.get("RequestAttributesSequence") or ():
        text = _ascii(item, "RequestedProcedurePriority")
        if text:
            return text.upper()[:16]
    return None


def _expected_count(ds: Dataset) -> int | None:
    for keyword in ("NumberOfSeriesRelatedInstances", "ImagesInAcquisition"):
        value = _int(ds, keyword)
        if value is not None and 0 < value <= _MAX_EXPECTED:
            return value
    return None


class _Flush:
    """``fdatasync`` of one file on a helper thread.

    The disk wait (the largest single cost of a durable ack) then overlaps the header parse
    and the index statements instead of following them.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDONLY)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="spool-fdatasync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            assert self._fd is not None
            os.fdatasync(self._fd)
        except OSError as exc:
            self._error = exc
            return
        _drop_cached_pages(self._fd)

    def wait(self) -> None:
        """Until the file's data is on disk; raises the ``OSError`` of a failed flush."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._thread.join()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _drop_cached_pages(fd: int) -> None:
    """Let the kernel reuse the page cache of a file that is now durable.

    The spool is written once and read back once, later, by a worker: keeping its pages
    cached only makes every new instance allocate fresh memory, which measured as the
    largest single cost of an instance (512 KB: 1.46 ms to write with fresh pages, 0.26 ms
    when the pages of the previous instance are reused).  Advisory; errors are ignored.
    """
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Durable spool plus its index rows.

    Parameters
    ----------
    spool_dir
        Root of the spool; created if missing.
    db
        The index database.
    min_free_bytes
        Below this free space on the spool's file system, :meth:`ingest` refuses
        instances with :class:`~triage.errors.OutOfResourcesError` (back-pressure).
    clock
        Returns the current time in seconds since the epoch.
    """

    def __init__(
        self,
        spool_dir: Path,
        db: Database,
        *,
        min_free_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool_dir = spool_dir
        self.incoming_dir = spool_dir / ".incoming"
        self.db = db
        self.min_free_bytes = min_free_bytes
        self.clock = clock
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self._spool_dev = os.stat(spool_dir).st_dev
        self._sql = _Statements(db)

    def ingest(
        self,
        src: Path,
        *,
        calling_ae: str | None = None,
        association_id: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoreResult:
        """Make the Part 10 file at ``src`` durable in the spool and index it.

        ``src`` is moved (or copied when it lies on another file system).  Returns only
        after the index row is committed.

        Raises
        ------
        InvalidInstanceError
            Unreadable data set, missing UIDs, or UIDs that disagree with the request.
        OutOfResourcesError
            Spool below its free-space watermark, a failed write/fsync, or the index
            database unavailable.  Nothing is indexed; the sender should retry.
        """
        flush = self._start_flush(src)
        try:
            return self._ingest(src, flush, calling_ae=calling_ae, association_id=association_id,
                                expected_sop_instance_uid=expected_sop_instance_uid,
                                expected_sop_class_uid=expected_sop_class_uid)
        finally:
            if flush is not None:
                flush.close()

    def _ingest(
        self,
        src: Path,
        flush: _Flush | None,
        *,
        calling_ae: str | None,
        association_id: str | None,
        expected_sop_instance_uid: str | None,
        expected_sop_class_uid: str | None,
    ) -> StoreResult:
        header = read_header(src)
        if expected_sop_instance_uid and expected_sop_instance_uid != header.sop_instance_uid:
            raise InvalidInstanceError(
                "SOP Instance UID of the data set differs from the C-STORE request",
                status=STATUS_UID_MISMATCH,
            )
        if expected_sop_class_uid and expected_sop_class_uid != header.sop_class_uid:
            raise InvalidInstanceError(
                "SOP Class UID of the data set differs from the C-STORE request",
                status=STATUS_UID_MISMATCH,
            )
        rel = (
            Path(safe_name(header.study_instance_uid))
            / safe_name(header.series_instance_uid)
            / f"{safe_name(header.sop_instance_uid)}.dcm"
        )
        dest = self.spool_dir / rel
        size = src.stat().st_size
        self._check_space(size)
        try:
            with self.db.write() as conn:
                # The instance row goes first so that a duplicate is neither placed nor
                # indexed again (only its flush, started before the header was read, is
                # spent); the transaction commits only after the file is durable in the
                # spool, so a committed row always has its file.
                inserted = self._index(conn, header, rel=rel, size=size, calling_ae=calling_ae,
                                       association_id=association_id)
                if inserted:
                    try:
                        self._place(src, dest, flush)
                    except OSError as exc:
                        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                        raise OutOfResourcesError(f"cannot write to the spool: {code}") from exc
        except SQLAlchemyError as exc:
            raise OutOfResourcesError(f"index database unavailable ({type(exc).__name__})") from exc
        outcome = StoreOutcome.STORED if inserted else StoreOutcome.DUPLICATE
        return StoreResult(outcome, header, dest)

    def mark_association_released(self, association_id: str) -> int:
        """Record that ``association_id`` was released; returns the number of series it touched."""
        with self.db.write() as conn:
            result = conn.execute(
                sa.update(series)
                .where(series.c.last_association_id == association_id)
                .where(series.c.state == SeriesState.RECEIVING.value)
                .values(association_released_at=self.clock())
            )
            return int(result.rowcount)

    def instance_paths(self, series_instance_uid: str) -> list[Path]:
        """Absolute paths of a series' instances, in instance-number order."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(instances.c.path)
                .where(instances.c.series_instance_uid == series_instance_uid)
                .order_by(instances.c.instance_number, instances.c.sop_instance_uid)
            ).all()
        return [self.spool_dir / row.path for row in rows]

    # --- internals --------------------------------------------------------------------------

    def _check_space(self, incoming: int) -> None:
        if self.min_free_bytes <= 0:
            return
        try:
            st = os.statvfs(self.spool_dir)
        except OSError as exc:
            raise OutOfResourcesError(f"spool not accessible ({exc.strerror})") from exc
        free = st.f_bavail * st.f_frsize
        if free - incoming < self.min_free_bytes:
            raise OutOfResourcesError(
                f"spool free space {free // 2**20} MiB is below the watermark "
                f"{self.min_free_bytes // 2**20} MiB"
            )

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and make each new directory entry durable."""
        if directory.is_dir():
            return
        self._ensure_dir(directory.parent)
        try:
            directory.mkdir()
        except FileExistsError:
            return
        _fsync_path(directory.parent)

    def _start_flush(self, src: Path) -> _Flush | None:
        """Start flushing ``src`` when it lies on the spool's file system (it will be renamed)."""
        try:
            if os.stat(src).st_dev != self._spool_dev:
                return None
            return _Flush(src)
        except OSError:
            return None  # read_header reports an unreadable file

    def _place(self, src: Path, dest: Path, flush: _Flush | None) -> None:
        self._ensure_dir(dest.parent)
        if flush is not None:
            flush.wait()
            os.replace(src, dest)
        else:
            tmp = self.incoming_dir / f"{dest.name}.{os.getpid()}.{time.monotonic_ns()}.part"
            try:
                with src.open("rb") as fin, tmp.open("wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                    fout.flush()
                    os.fdatasync(fout.fileno())
                    _drop_cached_pages(fout.fileno())
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            src.unlink(missing_ok=True)
        _fsync_path(dest.parent)

    def _index(
        self,
        conn: sa.Connection,
        h: InstanceHeader,
        *,
        rel: Path,
        size: int,
        calling_ae: str | None,
        association_id: str | None,
    ) -> bool:
        now = self.clock()
        inserted = conn.execute(
            self._sql.insert_instance,
            {
                "sop_instance_uid": h.sop_instance_uid,
                "series_instance_uid": h.series_instance_uid,
                "study_instance_uid": h.study_instance_uid,
                "sop_class_uid": h.sop_class_uid,
                "transfer_syntax_uid": h.transfer_syntax_uid,
                "instance_number": h.instance_number,
                "path": rel.as_posix(),
                "size_bytes": size,
                "received_at": now,
                "calling_ae": calling_ae,
            },
        ).first()
        if inserted is None:
            return False
        conn.execute(
            self._sql.insert_study,
            {
                "study_instance_uid": h.study_instance_uid,
                "patient_name": _clip(h.patient_name, 324),
                "patient_id": _clip(h.patient_id, 64),
                "patient_birth_date": _clip(h.patient_birth_date, 8),
                "patient_sex": _clip(h.patient_sex, 16),
                "accession_number": _clip(h.accession_number, 16),
                "study_date": _clip(h.study_date, 8),
                "study_time": _clip(h.study_time, 16),
                "study_description": _clip(h.study_description, 64),
                "request_priority": h.request_priority,
                "calling_ae": calling_ae,
                "first_received_at": now,
            },
        )
        conn.execute(
            self._sql.upsert_series,
            {
                "series_instance_uid": h.series_instance_uid,
                "study_instance_uid": h.study_instance_uid,
                "modality": _clip(h.modality, 16),
                "series_number": h.series_number,
                "body_part_examined": _clip(h.body_part_examined, 64),
                "study_description": _clip(h.study_description, 64),
                "series_description": _clip(h.series_description, 64),
                "image_type": _clip("\\".join(h.image_type), 256),
                "slice_thickness": h.slice_thickness,
                "contrast_agent": _clip(h.contrast_agent, 64),
                "sop_class_uid": h.sop_class_uid,
                "request_priority": h.request_priority,
                "expected_count": h.expected_count,
                "instance_count": 1,
                "revision": 1,
                "state": SeriesState.RECEIVING.value,
                "first_received_at": now,
                "last_received_at": now,
                "last_association_id": association_id,
            },
        )
        return True


class _Statements:
    """The index statements, built once per store (building them per instance is costly)."""

    def __init__(self, db: Database) -> None:
        self.insert_instance = db.insert_ignore(instances)
        self.insert_study = db.insert_ignore(studies)
        # A late instance for a series that was already complete reopens it as a new revision.
        insert = (sqlite_insert if db.is_sqlite else pg_insert)(series)
        new = insert.excluded
        reopen = series.c.state != SeriesState.RECEIVING.value
        self.upsert_series = insert.on_conflict_do_update(
            index_elements=[series.c.series_instance_uid],
            set_={
                "instance_count": series.c.instance_count + 1,
                "revision": sa.case((reopen, series.c.revision + 1), else_=series.c.revision),
                "first_received_at": sa.case(
                    (reopen, new.last_received_at), else_=series.c.first_received_at
                ),
                "state": SeriesState.RECEIVING.value,
                "last_received_at": new.last_received_at,
                "last_association_id": new.last_association_id,
                "association_released_at": None,
                "ready_at": None,
                "ready_trigger": None,
                "not_analysed_reason": None,
                "expected_count": sa.case(
                    (new.expected_count.is_(None), series.c.expected_count),
                    (series.c.expected_count.is_(None), new.expected_count),
                    (series.c.expected_count < new.expected_count, new.expected_count),
                    else_=series.c.expected_count,
                ),
                "request_priority": sa.func.coalesce(
                    series.c.request_priority, new.request_priority
                ),
                "contrast_agent": sa.func.coalesce(series.c.contrast_agent, new.contrast_agent),
            },
        )


def _clip(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]
