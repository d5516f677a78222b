"""Send DICOM files to a private Orthanc with :func:`send_to_pacs`; print what Orthanc stored.

Run inside a private network namespace, because Debian's Orthanc listens on all interfaces
whatever it is told::

    unshare -n sh -c 'ip link set lo up && exec python tests/orthanc_peer.py WORKDIR FILE...'

Steps: start Orthanc (AE title PACS) on free loopback ports with its storage in WORKDIR, wait
until its REST API answers, send the files, list the stored instances over REST, send them
again (a resend must not add instances), then try a wrong called AE title (must be rejected).
Prints one JSON object on stdout; Orthanc's log is left in WORKDIR/orthanc.log.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom import dcmread

from triage.outputs.store_scu import DicomDestination, PacsStoreError, send_to_pacs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rest(port: int, path: str, body: bytes | None = None, *, timeout: float = 5) -> Any:
    """GET ``path`` from Orthanc's REST API, or POST ``body`` to it; the decoded JSON."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as rsp:
        data = rsp.read()
    return json.loads(data) if data.strip() else None


def wait_ready(proc: subprocess.Popen[bytes], http_port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}")
        try:
            rest(http_port, "/system")
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("Orthanc did not answer on its REST API")


def stored(http_port: int) -> list[dict[str, str]]:
    rows = []
    for ident in rest(http_port, "/instances"):
        tags = rest(http_port, f"/instances/{ident}/tags?simplify")
        rows.append({key: str(tags.get(key, "")) for key in
                     ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
                      "StudyInstanceUID", "Modality")})
    return sorted(rows, key=lambda row: row["SOPInstanceUID"])


def main(workdir: Path, files: list[Path]) -> dict[str, Any]:
    dicom_port, http_port = free_port(), free_port()
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "test-pacs", "DicomAet": "PACS", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
        "DicomCheckCalledAet": True, "Plugins": [],
    }))
    datasets = [dcmread(path) for path in files]
    destination = DicomDestination("127.0.0.1", dicom_port, called_ae="PACS",
                                   calling_ae="TRIAGE", connect_timeout_s=5, acse_timeout_s=10)
    with (workdir / "orthanc.log").open("wb") as log:
        proc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(proc, http_port)
            started = time.monotonic()
            first = send_to_pacs(datasets, destination)
            first_s = time.monotonic() - started
            after_first = stored(http_port)
            second = send_to_pacs(datasets, destination)
            after_second = stored(http_port)
            wrong = DicomDestination("127.0.0.1", dicom_port, called_ae="NOT_PACS",
                                     calling_ae="TRIAGE")
            started = time.monotonic()
            try:
                send_to_pacs(datasets, wrong)
                rejected: dict[str, Any] = {"raised": False}
            except PacsStoreError as exc:
                rejected = {"raised": True, "retryable": exc.retryable, "message": str(exc)}
            rejected["seconds"] = time.monotonic() - started
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "sent": [[s.sop_instance_uid, s.status] for s in first],
        "first_send_s": first_s,
        "resent": [[s.sop_instance_uid, s.status] for s in second],
        "after_first": after_first,
        "after_second": after_second,
        "wrong_called_ae": rejected,
    }


if __name__ == "__main__":
    summary = main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    sys.stdout.write(json.dumps(summary) + "\n")
