"""End-to-end latency: last instance received → flag visible at /api/worklist.

Starts the whole service as a user would (`triage up`: listener, assembly, one warm worker,
web, a private Redis), then sends synthetic 48-slice head CTs one at a time with dcmtk
`storescu` (TCP_NODELAY=1) and polls /api/worklist every 50 ms until the study's result is
visible.  Latency is measured from the listener's own timestamp of the study's last instance
(``last_received_at`` in the API) to the moment the poll first sees the final state, so it
includes everything: the completion trigger (association release + grace), the outbox,
Redis, the worker (DICOM load, both head detectors, previews) and the API.

Usage::

    python bench/latency.py [--studies 20] [--slices 48] [--release-grace 2.0] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from models.synthetic.generate import generate, write_case
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region

FINAL = {"FLAGGED", "NO_FINDINGS", "NOT_ANALYSED", "FAILED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--release-grace", type=float, default=2.0,
                        help="TRIAGE_RELEASE_GRACE_S of the service under test")
    parser.add_argument("--seed", type=int, default=800_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("storescu") is None:
        print("bench/latency.py needs dcmtk's storescu (apt-get install dcmtk)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="triage-latency-"))
    studies = []
    for i in range(args.studies):
        finding = "hemorrhage" if i % 2 == 0 else "none"
        case = generate(sample_case(args.seed + i, Region.HEAD, finding=finding,
                                    max_slices=args.slices))
        folder = work / "studies" / f"{i:03d}"
        paths = write_case(case, folder)
        studies.append((folder, case.labels["study_instance_uid"], len(paths)))
    dicom_port, web_port, redis_port = free_port(), free_port(), free_port()
    env = {**os.environ, "TRIAGE_DATA_DIR": str(work / "var"), "TCP_NODELAY": "1",
           "TRIAGE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
           "TRIAGE_RELEASE_GRACE_S": str(args.release_grace), "TRIAGE_SPOOL_MIN_FREE_MB": "0",
           "TRIAGE_LOG_LEVEL": "WARNING"}
    log = (work / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "triage", "up", "--port", str(dicom_port),
                           "--web-port", str(web_port)], env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{web_port}"
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while not ((r := get_json(f"{base}/readyz")) and r["ready"]):
            if time.monotonic() > deadline or up.poll() is not None:
                print((work / "up.log").read_text()[-3000:])
                return 1
            time.sleep(0.2)
        # one warm-up study, not counted: the worker loads its models on start, but the
        # first call still pays for lazy initialisation in torch
        for index, (folder, uid, slices) in enumerate(studies):
            sent = subprocess.run(["storescu", "-aec", "TRIAGE", "+sd", "+sp", "*.dcm",
                                   "127.0.0.1", str(dicom_port), str(folder)], check=False,
                                  env=env, capture_output=True, timeout=120)
            if sent.returncode != 0:
                print(sent.stderr.decode()[-2000:])
                return 1
            sent_at = time.time()
            while True:
                body = get_json(f"{base}/api/worklist?limit=50")
                study = next((s for s in (body or {}).get("studies", [])
                              if s["study_instance_uid"] == uid), None)
                if study and study["state"] in FINAL:
                    seen = time.time()
                    break
                if time.time() - sent_at > 300:
                    print(f"study {index} not finished after 300 s")
                    return 1
                time.sleep(0.05)
            last = dt.datetime.fromisoformat(study["last_received_at"]).timestamp()
            series = study["series"][0]
            timings = (series.get("result") or {}).get("timings_s", {})
            rows.append({"study": index, "slices": slices, "state": study["state"],
                         "latency_s": seen - last, "storescu_return_to_seen_s": seen - sent_at,
                         "worker_total_s": timings.get("total"), "warmup": index == 0})
            if not args.json:
                print(f"study {index:2d}: {study['state']:<12} {seen - last:6.2f} s "
                      f"(worker {timings.get('total', float('nan')):.2f} s)", flush=True)
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
    measured = [r["latency_s"] for r in rows if not r["warmup"]]
    worker = [r["worker_total_s"] for r in rows if not r["warmup"] and r["worker_total_s"]]
    summary = {
        "studies": len(measured),
        "slices": args.slices,
        "release_grace_s": args.release_grace,
        "latency_p50_s": round(statistics.median(measured), 2),
        "latency_p95_s": round(percentile(measured, 0.95), 2),
        "latency_max_s": round(max(measured), 2),
        "worker_total_p50_s": round(statistics.median(worker), 2) if worker else None,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"\n{summary['studies']} studies of {args.slices} slices: p50 "
              f"{summary['latency_p50_s']} s, p95 {summary['latency_p95_s']} s, max "
              f"{summary['latency_max_s']} s (worker p50 {summary['worker_total_p50_s']} s; "
              f"release grace {args.release_grace} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
