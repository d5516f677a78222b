"""Time a /metrics scrape of `triage web` over an index DB holding N finished jobs.

Usage: ``python bench/metrics_scrape.py [--jobs 10000] [--database-url URL]``.  Fills a fresh
SQLite database (or the given empty one) with N finished jobs (each with a 200-UID result, as
the workers write), their series, analyses rows and deliveries, then scrapes the exporter
in-process: the first scrape reads every row, later ones only rows newer than the high-water
mark.  The Redis URL points at a closed port, as in a broker outage.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from triage.api import create_app
from triage.config import load_settings
from triage.db import Database, analyses, deliveries, jobs, series


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(db: Database, n: int) -> None:
    now = time.time()
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(200)]
    job_rows, series_rows, analysis_rows, delivery_rows = [], [], [], []
    for i in range(n):
        job_id = str(uuid.uuid4())
        series_uid = f"1.2.3.{i}"
        finished = now - (n - i)
        job_rows.append({
            "job_id": job_id, "job_key": f"{series_uid}/1", "series_instance_uid": series_uid,
            "study_instance_uid": f"1.2.4.{i}", "revision": 1,
            "detectors": ["hemorrhage", "fracture"], "rules": [], "queue": "routine",
            "state": "DONE", "attempts": 1, "max_attempts": 3, "publish_count": 1,
            "created_at": finished - 20, "not_before": finished - 20,
            "started_at": finished - 5, "finished_at": finished,
            "result": {"findings": [], "volume": {"sop_instance_uids": uids},
                       "timings_s": {"load": 0.4, "hemorrhage": 0.8, "fracture": 0.6,
                                     "total": 1.9}},
        })
        series_rows.append({
            "series_instance_uid": series_uid, "study_instance_uid": f"1.2.4.{i}",
            "instance_count": 200, "revision": 1, "state": "READY",
            "first_received_at": finished - 60, "last_received_at": finished - 25,
        })
        analysis_rows.append({
            "job_id": job_id, "detector": "hemorrhage", "model_version": "0.1.0",
            "study_instance_uid": f"1.2.4.{i}", "series_instance_uid": series_uid,
            "revision": 1, "analysed_at": finished, "outcome": "analysed",
            "probability": 0.2, "threshold": 0.5, "flagged": i % 10 == 0,
            "inputs": {"manufacturer": "ACME"}, "features": [0.1] * 32,
        })
        delivery_rows.append({
            "study_instance_uid": f"1.2.4.{i}", "version": 1, "destination": "pacs",
            "state": "SENT", "attempts": 1, "next_attempt_at": finished, "created_at": finished,
        })
    with db.write() as conn:
        for table, rows in ((jobs, job_rows), (series, series_rows),
                            (analyses, analysis_rows), (deliveries, delivery_rows)):
            conn.execute(table.insert(), rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'index.sqlite3'}"
        settings = load_settings(data_dir=Path(tmp), spool_min_free_mb=0,
                                 broker_url=f"redis://127.0.0.1:{free_port()}/0")
        db = Database(url)
        db.create_schema()
        fill(db, args.jobs)
        client = TestClient(create_app(settings, db))
        t0 = time.perf_counter()
        first = client.get("/metrics")
        first_s = time.perf_counter() - t0
        assert first.status_code == 200
        times = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            assert client.get("/metrics").status_code == 200
            times.append(time.perf_counter() - t0)
        print(f"{args.jobs} jobs on {url.split(':')[0]}: first scrape {first_s * 1000:.0f} ms, "
              f"then median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {args.scrapes} scrapes "
              f"({len(first.content)} bytes)")
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
