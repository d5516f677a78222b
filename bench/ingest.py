"""Ingest benchmark: our listener (durable acks) against dcmtk storescp and Orthanc.

500 CT slices (512x512 int16) are sent by dcmtk ``storescu`` (TCP_NODELAY=1) to each
receiver, several rounds in one run, peers interleaved (A B C A B C …) so that drift of the
machine's speed hits all of them alike.  Every run starts its receiver on empty storage.
Reported: instances/s per peer (median, min, max) and our ratio to each peer, taken round by
round.  A second phase sends 10,000 distinct instances to one listener and samples its RSS.

Everything runs inside a private network namespace (``unshare -n``, needs root) because
storescp and Debian's Orthanc listen on all interfaces whatever they are told.

Usage::

    python bench/ingest.py [--runs 3] [--instances 500] [--rss-instances 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
PORT = 11112
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def make_slices(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """``count`` axial head-CT slices of one series, 512x512 int16, realistic header."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    base = rng.integers(-1024, 1500, (512, 512), dtype=np.int16)
    paths = []
    for index in range(count):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Bench^Phantom", "B1", "A1"
        ds.StudyDate, ds.StudyTime, ds.Modality = "20261125", "120000", "CT"
        ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = "HEAD", 2, index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness, ds.PixelSpacing = 1.0, [0.45, 0.45]
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.PixelData = np.roll(base, index, axis=0).tobytes()
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_ours(storage: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRIAGE_DATA_DIR": str(storage),
        "TRIAGE_DICOM_PORT": str(PORT),
        "TRIAGE_BROKER_URL": "redis://127.0.0.1:1/0",  # no broker: ingest only
        "TRIAGE_STABLE_AGE_S": "3600",
        "TRIAGE_RELEASE_GRACE_S": "3600",
        "TRIAGE_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "triage", "listen"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_storescp(storage: Path) -> subprocess.Popen[bytes]:
    storage.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["storescp", "-od", str(storage), str(PORT)], env=NODELAY,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def orthanc_starter(nodelay: bool) -> Callable[[Path], subprocess.Popen[bytes]]:
    def start(storage: Path) -> subprocess.Popen[bytes]:
        storage.mkdir(parents=True, exist_ok=True)
        config = storage / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(storage / "db"),
            "IndexDirectory": str(storage / "db"), "DicomAet": "ORTHANC", "DicomPort": PORT,
            "HttpPort": 18042, "RemoteAccessAllowed": False, "Plugins": [],
            "DicomCheckCalledAet": False,
        }))
        env = NODELAY if nodelay else {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        return subprocess.Popen(["Orthanc", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return start


def send(folder: Path) -> float:
    """storescu the folder; returns seconds."""
    started = time.perf_counter()
    subprocess.run(["storescu", "+sd", "127.0.0.1", str(PORT), str(folder)], env=NODELAY,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def stored_count(name: str, storage: Path) -> int:
    if name == "ours":
        return sum(1 for _ in (storage / "spool").rglob("*.dcm"))
    if name == "storescp":
        return sum(1 for p in storage.iterdir() if p.name.startswith("CT."))
    return -1  # Orthanc: its own storage layout, trusted from storescu's exit status


def one_run(name: str, start: Callable[[Path], subprocess.Popen[bytes]], folder: Path,
            count: int) -> float:
    storage = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir="/var/tmp"))
    proc = start(storage)
    try:
        wait_port(PORT)
        if name.startswith("orthanc"):
            time.sleep(1.0)  # Orthanc opens its port before its database is ready
        seconds = send(folder)
        got = stored_count(name, storage)
        if got not in (-1, count):
            raise RuntimeError(f"{name} stored {got} of {count}")
        return count / seconds
    finally:
        stop(proc)
        shutil.rmtree(storage, ignore_errors=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def rss_phase(template: list[Path], total: int, work: Path) -> list[tuple[int, int]]:
    """Send ``total`` distinct instances in batches; RSS of the listener after each batch."""
    storage = work / "rss-storage"
    proc = start_ours(storage)
    samples: list[tuple[int, int]] = []
    try:
        wait_port(PORT)
        samples.append((0, rss_kib(proc.pid)))
        batch = len(template)
        sent = 0
        while sent < total:
            folder = work / "rss-batch"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            series = generate_uid()
            for index, path in enumerate(template):
                ds = dcmread(path)
                ds.SeriesInstanceUID = series
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.save_as(folder / f"{index:05d}.dcm")
            send(folder)
            sent += batch
            samples.append((sent, rss_kib(proc.pid)))
            print(f"  {sent:6d} instances: listener RSS {samples[-1][1] / 1024:.1f} MiB",
                  flush=True)
        stored = sum(1 for _ in (storage / "spool").rglob("*.dcm"))
        if stored != total:
            raise RuntimeError(f"listener stored {stored} of {total}")
    finally:
        stop(proc)
        shutil.rmtree(storage, ignore_errors=True)
    return samples


def version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rss-instances", type=int, default=10_000)
    parser.add_argument("--peers", default="ours,storescp,orthanc,orthanc-default-env")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if os.environ.get("BENCH_IN_NETNS") != "1":
        if os.geteuid() != 0:
            print("bench/ingest.py needs root for `unshare -n` (a private network namespace)")
            return 2
        script = f'ip link set lo up && exec "{sys.executable}" "{__file__}" "$@"'
        env = {**os.environ, "BENCH_IN_NETNS": "1"}
        return subprocess.call(["unshare", "-n", "sh", "-c", script, "bench",
                                *sys.argv[1:]], env=env)

    starters: dict[str, Callable[[Path], subprocess.Popen[bytes]]] = {
        "ours": start_ours,
        "storescp": start_storescp,
        "orthanc": orthanc_starter(nodelay=True),
        "orthanc-default-env": orthanc_starter(nodelay=False),
    }
    peers = [p for p in args.peers.split(",") if p]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="/var/tmp"))
    try:
        print(f"Generating {args.instances} CT slices (512x512 int16) …", flush=True)
        folder = work / "slices"
        template = make_slices(folder, args.instances)
        rates: dict[str, list[float]] = {p: [] for p in peers}
        for round_no in range(1, args.runs + 1):
            for peer in peers:
                rate = one_run(peer, starters[peer], folder, args.instances)
                rates[peer].append(rate)
                print(f"round {round_no} {peer:20s} {rate:7.1f} instances/s", flush=True)
        result: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "storescp": version(["storescp", "--version"]),
                "orthanc": version(["Orthanc", "--version"]),
            },
            "instances": args.instances,
            "runs": args.runs,
            "rates": rates,
        }
        print(f"\n{'peer':22s} {'median':>8s} {'min':>8s} {'max':>8s}  instances/s")
        for peer, values in rates.items():
            print(f"{peer:22s} {statistics.median(values):8.1f} {min(values):8.1f} "
                  f"{max(values):8.1f}")
        if "ours" in rates:
            ratios = {}
            for peer, values in rates.items():
                if peer == "ours":
                    continue
                per_round = [a / b for a, b in zip(rates["ours"], values, strict=True)]
                ratios[peer] = per_round
                print(f"ours / {peer:15s} median {statistics.median(per_round):.2f} "
                      f"(rounds: {', '.join(f'{r:.2f}' for r in per_round)})")
            result["ratios"] = ratios
        if args.rss_instances:
            print(f"\nListener RSS while receiving {args.rss_instances} distinct instances:")
            result["rss_kib"] = rss_phase(template, args.rss_instances, work)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
