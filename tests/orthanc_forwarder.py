"""Orthanc as the site's PACS forwarding studies to our listener; prints what arrived.

Run inside a private network namespace, because Debian's Orthanc listens on all interfaces
whatever it is told::

    unshare -n sh -c 'ip link set lo up && exec python tests/orthanc_forwarder.py WORKDIR FILE...'

Steps: start our listener (AE title TRIAGE, SQLite index in WORKDIR) and Orthanc (AE title
PACS, which knows TRIAGE as a modality) on free loopback ports; upload the files to Orthanc
over REST; ask Orthanc to C-ECHO us and then to C-STORE every instance to us (Orthanc's
DCMTK-based SCU negotiates the contexts); read our index.  Prints one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from tests.orthanc_peer import free_port, rest, wait_ready
from triage.config import Settings
from triage.db import Database, instances
from triage.listener import Listener
from triage.store import Store


def main(workdir: Path, files: list[Path]) -> dict[str, Any]:
    settings = Settings(data_dir=workdir / "triage", dicom_host="127.0.0.1", dicom_port=0)
    db = Database(f"sqlite:///{workdir / 'index.db'}")
    db.create_schema()
    store = Store(workdir / "spool", db)
    listener = Listener(settings, store)
    _, our_port = listener.start()
    dicom_port, http_port = free_port(), free_port()
    config = workdir / "orthanc.json"
    config.write_text(json.dumps({
        "Name": "site-pacs", "DicomAet": "PACS", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
        "DicomModalities": {"triage": ["TRIAGE", "127.0.0.1", our_port]}, "Plugins": [],
    }))
    try:
        with (workdir / "orthanc.log").open("wb") as log:
            proc = subprocess.Popen(["Orthanc", str(config)], stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                wait_ready(proc, http_port)
                ids = [rest(http_port, "/instances", path.read_bytes(), timeout=60)["ID"]
                       for path in files]
                echo = rest(http_port, "/modalities/triage/echo", b"{}", timeout=60)
                started = time.monotonic()
                moved = rest(http_port, "/modalities/triage/store", json.dumps(
                    {"Resources": ids, "Synchronous": True}).encode(), timeout=60)
                store_s = time.monotonic() - started
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    finally:
        listener.stop()
    with db.read() as conn:
        rows = conn.execute(sa.select(instances.c.sop_instance_uid, instances.c.path,
                                      instances.c.transfer_syntax_uid,
                                      instances.c.calling_ae)).all()
    db.dispose()
    return {
        "echo": echo,
        "store": moved,
        "store_s": store_s,
        "indexed": [{"sop_instance_uid": r.sop_instance_uid,
                     "path": str(store.spool_dir / r.path),
                     "transfer_syntax_uid": r.transfer_syntax_uid,
                     "calling_ae": r.calling_ae} for r in rows],
    }


if __name__ == "__main__":
    summary = main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    sys.stdout.write(json.dumps(summary) + "\n")
