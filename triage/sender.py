"""DICOM client for `triage send` and `triage echo`: C-STORE files as they are, byte for byte."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pydicom.misc import is_dicom
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.association import connection_handlers

logger = logging.getLogger(__name__)

_MAX_CONTEXTS = 128
_RETRYABLE = {0xA700, 0xA701, 0xA702}  # out of resources: the receiver asks us to retry
_POLL_INTERVAL_S = 0.0002


def _associate(ae: AE, host: str, port: int, called_ae: str) -> Any:
    assoc = ae.associate(host, port, ae_title=called_ae,
                         evt_handlers=connection_handlers(_POLL_INTERVAL_S))
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_ae}@{host}:{port} was not accepted")
    return assoc


@dataclass
class SendReport:
    """Outcome of a send run."""

    sent: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under ``paths`` (folders recursively, hidden entries skipped), sorted."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def _classify(paths: Iterable[Path], report: SendReport) -> dict[tuple[str, str], list[Path]]:
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in paths:
        if not path.is_file():
            report.skipped.append(f"{path}: not found")
            continue
        if not is_dicom(path):
            report.skipped.append(f"{path}: not a DICOM Part 10 file")
            continue
        try:
            meta = read_file_meta_info(path)
            key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except Exception as exc:
            report.skipped.append(f"{path}: unreadable file meta ({type(exc).__name__})")
            continue
        groups[key].append(path)
    return groups


def send(
    paths: Iterable[Path],
    *,
    host: str,
    port: int,
    called_ae: str = "TRIAGE",
    calling_ae: str = "TRIAGE_SEND",
    retries: int = 3,
    retry_delay_s: float = 2.0,
    progress: Callable[[int, int], None] | None = None,
) -> SendReport:
    """C-STORE every DICOM file under ``paths`` in its own transfer syntax.

    Files are streamed from disk unchanged.  Instances answered with an out-of-resources
    status are retried ``retries`` times after ``retry_delay_s``.

    Raises
    ------
    ConnectionError
        The peer cannot be reached or rejects the association.
    """
    started = time.monotonic()
    report = SendReport()
    groups = _classify(iter_files(paths), report)
    total = sum(len(v) for v in groups.values())
    keys = sorted(groups)
    _config.STORE_SEND_CHUNKED_DATASET = True
    for first in range(0, len(keys), _MAX_CONTEXTS):
        batch = keys[first : first + _MAX_CONTEXTS]
        ae = AE(ae_title=calling_ae)
        for sop_class, syntax in batch:
            ae.add_requested_context(sop_class, [syntax])
        pending = [p for key in batch for p in groups[key]]
        for attempt in range(retries + 1):
            if not pending:
                break
            if attempt:
                time.sleep(retry_delay_s)
            pending = _send_batch(
                ae, pending, host=host, port=port, called_ae=called_ae, report=report,
                last_try=attempt == retries, progress=progress, total=total,
            )
    report.elapsed_s = time.monotonic() - started
    return report


def _send_batch(
    ae: AE,
    files: list[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    report: SendReport,
    last_try: bool,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> list[Path]:
    assoc = _associate(ae, host, port, called_ae)
    retry: list[Path] = []
    try:
        for path in files:
            if not assoc.is_established:
                raise ConnectionError(f"association with {called_ae}@{host}:{port} was lost")
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code == 0x0000 or (code is not None and code & 0xF000 == 0xB000):
                report.sent += 1
            elif code in _RETRYABLE and not last_try:
                retry.append(path)
            else:
                report.failed += 1
                shown = "no response" if code is None else f"0x{code:04X}"
                report.failures.append(f"{path}: {shown}")
            if progress is not None:
                progress(report.sent + report.failed, total)
    finally:
        if assoc.is_established:
            assoc.release()
    return retry


def echo(*, host: str, port: int, called_ae: str = "TRIAGE",
         calling_ae: str = "TRIAGE_SEND") -> int:
    """C-ECHO the peer; returns the status (0 is success).

    Raises
    ------
    ConnectionError
        The peer cannot be reached or rejects the association.
    """
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, host, port, called_ae)
    try:
        status = assoc.send_c_echo()
        return int(getattr(status, "Status", 0xFFFF))
    finally:
        assoc.release()
