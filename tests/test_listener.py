"""Listener over real sockets: pynetdicom and dcmtk peers, statuses, allowlist, failures."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.conftest import RunningListener, TestAE, wait_for
from tests.dicom_factory import series_uids, write_series
from triage.db import Database, instances, series
from triage.sender import send

REPO = Path(__file__).resolve().parent.parent
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

Start = Callable[..., RunningListener]


def index_count(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(instances)).scalar_one())


def scu(contexts: list[tuple[str, str]] | None = None, ae_title: str = "TESTSCU") -> AE:
    ae = TestAE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    for abstract, syntax in contexts or [(CTImageStorage, ExplicitVRLittleEndian)]:
        ae.add_requested_context(abstract, [syntax])
    return ae


@pytest.fixture
def chunked_send() -> Iterator[None]:
    _config.STORE_SEND_CHUNKED_DATASET = True
    yield
    _config.STORE_SEND_CHUNKED_DATASET = False


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the preamble and file meta group: the data set as sent on the wire."""
    data = path.read_bytes()
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack("<H", data[pos : pos + 2])[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack("<L", data[pos + 8 : pos + 12])[0]
            pos += 12 + length
        else:
            length = struct.unpack("<H", data[pos + 6 : pos + 8])[0]
            pos += 8 + length
    return data[pos:]


# --- pynetdicom peer --------------------------------------------------------------------------

def test_pynetdicom_echo_and_store(start_listener: Start, sqlite_db: Database,
                                   tmp_path: Path) -> None:
    running = start_listener(sqlite_db)
    paths = write_series(tmp_path / "src", 5)
    assoc = scu().associate(running.host, running.port, ae_title="TRIAGE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    statuses = [assoc.send_c_store(dcmread(p)).Status for p in paths]
    # the file for the next instance is made while the peer prepares it; one at most
    assert len(list(running.store.incoming_dir.iterdir())) <= 1
    assoc.release()
    assert statuses == [0x0000] * 5
    assert index_count(sqlite_db) == 5
    wait_for(lambda: not any(running.store.incoming_dir.iterdir()), 5,
             what="the spare file removed at the end of the association")
    study, series_uid = series_uids(paths)
    stored = sorted((running.settings.spool / study / series_uid).glob("*.dcm"))
    assert len(stored) == 5


def test_release_starts_the_release_grace(start_listener: Start, sqlite_db: Database,
                                          tmp_path: Path) -> None:
    running = start_listener(sqlite_db)
    paths = write_series(tmp_path / "src", 2)
    assoc = scu().associate(running.host, running.port)
    for path in paths:
        assoc.send_c_store(dcmread(path))
    with sqlite_db.read() as conn:
        assert conn.execute(sa.select(series.c.association_released_at)).scalar() is None
    assoc.release()

    def released() -> bool:
        with sqlite_db.read() as conn:
            return conn.execute(sa.select(series.c.association_released_at)).scalar() is not None

    wait_for(released, 5, what="release recorded")


def test_concurrent_associations_all_land(start_listener: Start, database_url: str,
                                          tmp_path: Path) -> None:
    db = Database(database_url)
    db.create_schema()
    running = start_listener(db)
    study = generate_uid()
    batches = [write_series(tmp_path / f"s{i}", 15, study_uid=study) for i in range(4)]
    results: list[list[int]] = []

    def push(paths: list[Path]) -> None:
        assoc = scu().associate(running.host, running.port)
        results.append([assoc.send_c_store(dcmread(p)).Status for p in paths])
        assoc.release()

    threads = [threading.Thread(target=push, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(s for statuses in results for s in statuses) == [0] * 60
    assert index_count(db) == 60
    with db.read() as conn:
        counts = conn.execute(sa.select(series.c.instance_count)).scalars().all()
    assert sorted(counts) == [15, 15, 15, 15]
    # The listener's last counter flush needs the database: stop it before the engine goes,
    # or that flush opens a connection nothing closes (a ResourceWarning in a later test).
    running.listener.stop()
    db.dispose()


def test_unknown_calling_ae_is_rejected(start_listener: Start, sqlite_db: Database) -> None:
    running = start_listener(sqlite_db, allowed_calling_aes=["CT1"])
    intruder = scu(ae_title="INTRUDER").associate(running.host, running.port)
    assert intruder.is_rejected
    friend = scu(ae_title="CT1").associate(running.host, running.port)
    assert friend.is_established
    friend.release()


def test_garbage_and_truncated_data_sets_fail_and_the_listener_keeps_serving(
    start_listener: Start, sqlite_db: Database, tmp_path: Path, chunked_send: None
) -> None:
    running = start_listener(sqlite_db)
    (good,) = write_series(tmp_path / "good", 1)
    garbage = tmp_path / "garbage.dcm"
    head = good.read_bytes()
    meta_len = len(head) - len(dataset_bytes(good))
    garbage.write_bytes(head[:meta_len] + os.urandom(4096))
    (truncated,) = write_series(tmp_path / "trunc", 1)
    truncated.write_bytes(truncated.read_bytes()[:-700])
    assoc = scu().associate(running.host, running.port)
    garbage_status = assoc.send_c_store(garbage).Status
    truncated_status = assoc.send_c_store(truncated).Status
    good_status = assoc.send_c_store(good).Status
    assoc.release()
    assert 0xC000 <= garbage_status <= 0xCFFF
    assert 0xC000 <= truncated_status <= 0xCFFF
    assert good_status == 0x0000
    assert index_count(sqlite_db) == 1
    # still serving new associations
    again = scu().associate(running.host, running.port)
    assert again.send_c_echo().Status == 0x0000
    again.release()


def test_duplicate_sends_answer_success_and_store_once(
    start_listener: Start, sqlite_db: Database, tmp_path: Path
) -> None:
    running = start_listener(sqlite_db)
    (path,) = write_series(tmp_path / "src", 1)
    assoc = scu().associate(running.host, running.port)
    assert [assoc.send_c_store(dcmread(path)).Status for _ in range(3)] == [0, 0, 0]
    assoc.release()
    assert index_count(sqlite_db) == 1


def test_watermark_answers_out_of_resources(start_listener: Start, sqlite_db: Database,
                                            tmp_path: Path) -> None:
    running = start_listener(sqlite_db, min_free_bytes=2**62)
    (path,) = write_series(tmp_path / "src", 1)
    assoc = scu().associate(running.host, running.port)
    assert assoc.send_c_store(dcmread(path)).Status == 0xA700
    assoc.release()
    assert index_count(sqlite_db) == 0


def test_failed_fsync_answers_out_of_resources(
    start_listener: Start, sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = start_listener(sqlite_db)
    (path,) = write_series(tmp_path / "src", 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    assoc = scu().associate(running.host, running.port)
    assert assoc.send_c_store(dcmread(path)).Status == 0xA700
    monkeypatch.undo()
    assert assoc.send_c_store(dcmread(path)).Status == 0x0000  # the sender's retry
    assoc.release()
    assert index_count(sqlite_db) == 1


def test_full_disk_answers_out_of_resources_and_indexes_nothing_partial(
    start_listener: Start, sqlite_db: Database, tmp_path: Path, tiny_tmpfs: Path
) -> None:
    running = start_listener(sqlite_db, spool_dir=tiny_tmpfs / "spool")
    paths = write_series(tmp_path / "src", 12, rows=256, columns=256)
    # dcmtk as the sender: a bare pynetdicom 3.0.4 SCU can lose a response that comes back
    # very fast (see triage.association.hand_back_responses); refusals of a full disk do.
    sent = subprocess.run(["storescu", "-v", "--no-halt", "-aec", "TRIAGE", running.host,
                           str(running.port),
                           *map(str, paths)], env=DCMTK_ENV, capture_output=True, text=True,
                          timeout=60)
    statuses = re.findall(r"Received Store Response \(([^)]*)\)", sent.stderr + sent.stdout)
    assert len(statuses) == len(paths), sent.stderr
    assert "Refused: OutOfResources" in statuses  # 0xA7xx
    assert set(statuses) <= {"Success", "Refused: OutOfResources"}
    assert index_count(sqlite_db) == statuses.count("Success") > 0
    for file in running.store.instance_paths(series_uids(paths)[1]):
        assert dcmread(file).pixel_array.shape == (256, 256)


def test_phi_never_appears_in_info_logs(
    start_listener: Start, sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = start_listener(sqlite_db)
    paths = write_series(tmp_path / "src", 2)
    assoc = scu().associate(running.host, running.port)
    for path in paths:
        assoc.send_c_store(dcmread(path))
    assoc.release()
    text = caplog.text
    for phi in ("Phantom", "PHANTOM-1", "19700101", "ACC1"):
        assert phi not in text


# --- dcmtk peers ------------------------------------------------------------------------------

def test_dcmtk_echoscu(start_listener: Start, sqlite_db: Database) -> None:
    running = start_listener(sqlite_db, allowed_calling_aes=["CT1"])
    ok = subprocess.run(["echoscu", "-aet", "CT1", "-aec", "TRIAGE", running.host,
                         str(running.port)], env=DCMTK_ENV, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(["echoscu", "-aet", "INTRUDER", running.host, str(running.port)],
                             env=DCMTK_ENV, capture_output=True, timeout=30)
    assert refused.returncode != 0
    assert b"Rejected" in refused.stderr or b"rejected" in refused.stderr.lower()


def test_dcmtk_storescu_folder(start_listener: Start, sqlite_db: Database,
                               tmp_path: Path) -> None:
    running = start_listener(sqlite_db)
    paths = write_series(tmp_path / "src", 20)
    result = subprocess.run(["storescu", "-aec", "TRIAGE", "+sd", running.host,
                             str(running.port), str(tmp_path / "src")],
                            env=DCMTK_ENV, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert index_count(sqlite_db) == 20
    study, series_uid = series_uids(paths)
    for path in paths:
        sop = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = running.settings.spool / study / series_uid / f"{sop}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(path)


# --- transfer syntaxes ------------------------------------------------------------------------

PYDICOM_FILES = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",
    "1.2.840.10008.1.2.4.50": "SC_rgb_jpeg_dcmtk.dcm",
    "1.2.840.10008.1.2.4.51": "JPGExtended.dcm",
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",
}
DCMTK_ENCODERS = {
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "+e1"],
    "1.2.840.10008.1.2.4.57": ["dcmcjpeg", "+el"],
    "1.2.840.10008.1.2.4.81": ["dcmcjpls", "+en"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per transfer syntax: pydicom's test files plus CT compressed by dcmtk."""
    folder = tmp_path_factory.mktemp("corpus")
    files: dict[str, Path] = {}
    for syntax, name in PYDICOM_FILES.items():
        # Several of pydicom's files share UIDs: give each its own (encoding is kept).
        ds = dcmread(str(get_testdata_file(name)))
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = folder / name
        ds.save_as(target)
        files[syntax] = target
    for syntax, command in DCMTK_ENCODERS.items():
        # near-lossless JPEG-LS takes unsigned pixels only
        (ct,) = write_series(folder / f"ct-{syntax}", 1, rows=64, columns=64,
                             signed=not syntax.endswith(".81"))
        target = folder / f"ct-{syntax}.dcm"
        subprocess.run([*command, str(ct), str(target)], check=True, capture_output=True)
        files[syntax] = target
    for syntax, path in files.items():
        assert str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    return files


# storescu's option that proposes each syntax (it has none for JPEG lossless process 14).
STORESCU_OPTIONS = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}


@pytest.mark.parametrize("syntax", sorted(STORESCU_OPTIONS))
def test_storescu_sends_each_syntax_and_it_is_kept_without_transcoding(
    start_listener: Start, sqlite_db: Database, corpus: dict[str, Path], syntax: str
) -> None:
    running = start_listener(sqlite_db)
    source = corpus[syntax]
    result = subprocess.run(["storescu", STORESCU_OPTIONS[syntax], "-aec", "TRIAGE",
                             running.host, str(running.port), str(source)],
                            env=DCMTK_ENV, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (stored,) = running.store.instance_paths(
        str(dcmread(source, stop_before_pixels=True).SeriesInstanceUID)
    )
    received = dcmread(stored)
    assert str(received.file_meta.TransferSyntaxUID) == syntax
    # dcmtk re-encodes the header it sends; the (compressed) pixel data arrives untouched.
    assert received.PixelData == dcmread(source).PixelData


def test_every_syntax_round_trips_with_the_pynetdicom_sender(
    start_listener: Start, sqlite_db: Database, corpus: dict[str, Path]
) -> None:
    running = start_listener(sqlite_db)
    report = send(list(corpus.values()), host=running.host, port=running.port)
    assert report.sent == len(corpus) and report.ok
    for source in corpus.values():
        (stored,) = running.store.instance_paths(
            str(dcmread(source, stop_before_pixels=True).SeriesInstanceUID)
        )
        assert dataset_bytes(stored) == dataset_bytes(source)


def test_both_ends_disable_nagle(start_listener: Start, sqlite_db: Database) -> None:
    import socket

    from triage.sender import _associate

    running = start_listener(sqlite_db)
    assoc = _associate(scu(), running.host, running.port, "TRIAGE")
    try:
        client = assoc.dul.socket.socket
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        (server,) = running.listener.server.connections()
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        assoc.release()


# --- a real PACS forwarding to us ---------------------------------------------------------------

@pytest.mark.integration
def test_orthanc_forwards_a_study_in_every_syntax_it_holds(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    """Orthanc (DCMTK's SCU, as many PACS) echoes us and C-STOREs what it holds, unchanged."""
    from tests.conftest import orthanc_namespace_problem

    problem = orthanc_namespace_problem()
    if problem:
        pytest.skip(problem)
    files = [*write_series(tmp_path / "ct", 4), *corpus.values()]
    script = f"ip link set lo up && exec {sys.executable} tests/orthanc_forwarder.py \"$@\""
    done = subprocess.run(["unshare", "-n", "sh", "-c", script, "sh", str(tmp_path),
                           *map(str, files)], cwd=REPO, capture_output=True, text=True,
                          timeout=180, check=False)
    log = (tmp_path / "orthanc.log").read_text(errors="replace")[-3000:] \
        if (tmp_path / "orthanc.log").exists() else ""
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{log}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["echo"] in ({}, None), summary["echo"]
    expected = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    indexed = {row["sop_instance_uid"]: row for row in summary["indexed"]}
    assert set(indexed) == set(expected), summary["store"]
    assert {row["calling_ae"] for row in indexed.values()} == {"PACS"}
    for uid, source in expected.items():
        row = indexed[uid]
        # Stored as Orthanc holds it: same transfer syntax, same data set bytes.
        assert row["transfer_syntax_uid"] == str(
            dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert dcmread(row["path"]).PixelData == dcmread(source).PixelData
