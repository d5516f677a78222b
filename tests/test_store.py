"""Store: durable placement, index rows, duplicates, late instances, failures.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicom_factory import ct_slice, write_series
from triage.db import Database, instances, series, studies
from triage.domain import SeriesState, StoreOutcome
from triage.errors import InvalidInstanceError, OutOfResourcesError
from triage.store import STATUS_MISSING_UID, STATUS_UID_MISMATCH, Store, read_header, safe_name


def incoming(store: Store, source: Path) -> Path:
    """Copy a file to where the listener's receive would have left it."""
    target = store.incoming_dir / f"{source.name}.{os.urandom(4).hex()}.tmp"
    shutil.copyfile(source, target)
    return target


def count(db: Database, table: sa.Table) -> int:
    with db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def series_row(db: Database, uid: str) -> sa.Row[tuple[object, ...]]:
    with db.read() as conn:
        return conn.execute(
            sa.select(series).where(series.c.series_instance_uid == uid)
        ).one()


def test_ingest_places_file_and_commits_row(store: Store, db: Database, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "src", 3, expected_count=3)
    for path in paths:
        result = store.ingest(incoming(store, path), calling_ae="CT1", association_id="a1")
        assert result.outcome is StoreOutcome.STORED
        assert result.path.read_bytes()[128:] != b""
    header = read_header(paths[0])
    final = (store.spool_dir / header.study_instance_uid / header.series_instance_uid
             / f"{header.sop_instance_uid}.dcm")
    assert final.is_file()
    # The stored file is the received file, byte for byte.
    assert final.read_bytes() == paths[0].read_bytes()
    assert count(db, instances) == 3
    row = series_row(db, header.series_instance_uid)
    assert row.instance_count == 3
    assert row.expected_count == 3
    assert row.state == SeriesState.RECEIVING
    assert row.body_part_examined == "HEAD"
    assert row.slice_thickness == 2.5
    assert row.last_association_id == "a1"
    assert list(store.incoming_dir.iterdir()) == []
    assert store.instance_paths(header.series_instance_uid)[0] == final


def test_duplicate_instance_is_stored_once(store: Store, db: Database, tmp_path: Path) -> None:
    (path,) = write_series(tmp_path / "src", 1)
    first = store.ingest(incoming(store, path))
    second = store.ingest(incoming(store, path))
    assert first.outcome is StoreOutcome.STORED
    assert second.outcome is StoreOutcome.DUPLICATE
    assert count(db, instances) == 1
    assert series_row(db, first.header.series_instance_uid).instance_count == 1


def test_late_instance_reopens_a_completed_series(
    store: Store, db: Database, tmp_path: Path
) -> None:
    paths = write_series(tmp_path / "src", 3)
    for path in paths[:2]:
        store.ingest(incoming(store, path))
    uid = read_header(paths[0]).series_instance_uid
    with db.write() as conn:
        conn.execute(sa.update(series).values(state=SeriesState.READY.value, ready_at=1.0,
                                              ready_trigger="timer"))
    store.ingest(incoming(store, paths[2]))
    row = series_row(db, uid)
    assert row.state == SeriesState.RECEIVING
    assert row.revision == 2
    assert row.instance_count == 3
    assert row.ready_at is None
    # A duplicate of an old instance does not reopen anything.
    with db.write() as conn:
        conn.execute(sa.update(series).values(state=SeriesState.READY.value))
    store.ingest(incoming(store, paths[0]))
    assert series_row(db, uid).revision == 2


def test_study_row_keeps_demographics_for_the_worklist(
    store: Store, db: Database, tmp_path: Path
) -> None:
    (path,) = write_series(tmp_path / "src", 1, priority="STAT")
    store.ingest(incoming(store, path))
    with db.read() as conn:
        row = conn.execute(sa.select(studies)).one()
    assert row.patient_id == "PHANTOM-1"
    assert row.accession_number == "ACC1"
    assert row.request_priority == "STAT"


def test_garbage_is_refused_and_not_indexed(store: Store, db: Database) -> None:
    bad = store.incoming_dir / "garbage.tmp"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(3000))
    with pytest.raises(InvalidInstanceError) as info:
        store.ingest(bad)
    assert 0xC200 <= info.value.status <= 0xCFFF
    assert count(db, instances) == 0


def test_missing_uid_is_refused(store: Store, db: Database, tmp_path: Path) -> None:
    ds = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    del ds.SeriesInstanceUID
    path = tmp_path / "noseries.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInstanceError, match="SeriesInstanceUID") as info:
        store.ingest(incoming(store, path))
    assert info.value.status == STATUS_MISSING_UID
    assert count(db, instances) == 0


def test_uid_that_differs_from_the_request_is_refused(store: Store, tmp_path: Path) -> None:
    (path,) = write_series(tmp_path / "src", 1)
    with pytest.raises(InvalidInstanceError) as info:
        store.ingest(incoming(store, path), expected_sop_instance_uid="1.2.3")
    assert info.value.status == STATUS_UID_MISMATCH


def test_below_watermark_is_out_of_resources_and_not_indexed(
    db: Database, tmp_path: Path
) -> None:
    store = Store(tmp_path / "spool", db, min_free_bytes=2**62)
    (path,) = write_series(tmp_path / "src", 1)
    with pytest.raises(OutOfResourcesError, match="watermark"):
        store.ingest(incoming(store, path))
    assert count(db, instances) == 0
    assert count(db, series) == 0


def test_failed_fsync_is_out_of_resources_and_not_indexed(
    store: Store, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (path,) = write_series(tmp_path / "src", 1)

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OutOfResourcesError, match="ENOSPC"):
        store.ingest(incoming(store, path))
    assert count(db, instances) == 0
    monkeypatch.undo()
    # The retry the sender makes is stored.
    assert store.ingest(incoming(store, path)).outcome is StoreOutcome.STORED


def test_index_down_is_out_of_resources(tmp_path: Path) -> None:
    db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    store = Store(tmp_path / "spool", db)
    (path,) = write_series(tmp_path / "src", 1)
    with pytest.raises(OutOfResourcesError, match="index database unavailable"):
        store.ingest(incoming(store, path))
    db.dispose()


@pytest.mark.parametrize(
    "uid", ["../../etc/passwd", ".", "..", "1.2.3/../../x", "1.2.abc", "", "9" * 65]
)
def test_unsafe_uids_cannot_escape_the_spool(uid: str) -> None:
    name = safe_name(uid)
    assert "/" not in name and name not in (".", "..", "")
    assert name.startswith("x")


def test_conformant_uid_is_used_as_is() -> None:
    assert safe_name("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"


def test_real_full_disk_is_out_of_resources(
    db: Database, tmp_path: Path, tiny_tmpfs: Path
) -> None:
    # The spool is on another file system than the received files: the copy path.
    store = Store(tiny_tmpfs / "spool", db)
    stored = 0
    source = tmp_path / "src"
    paths = write_series(source, 12, rows=256, columns=256)  # 128 KiB each
    with pytest.raises(OutOfResourcesError, match="ENOSPC"):
        for path in paths:
            copy = source / f"{path.name}.in"
            shutil.copyfile(path, copy)
            store.ingest(copy)
            stored += 1
    assert 0 < stored < len(paths)
    assert count(db, instances) == stored
    # Everything indexed is readable in full.
    for file in store.instance_paths(read_header(paths[0]).series_instance_uid):
        assert dcmread(file).pixel_array.shape == (256, 256)
    assert not any(p.suffix == ".part" for p in store.incoming_dir.iterdir())


def test_file_truncated_in_its_pixel_data_is_refused(
    store: Store, db: Database, tmp_path: Path
) -> None:
    (path,) = write_series(tmp_path / "src", 1)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(InvalidInstanceError, match="truncated"):
        store.ingest(incoming(store, path))
    assert count(db, instances) == 0


def test_encapsulated_file_truncated_is_refused(store: Store, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    source = Path(str(get_testdata_file("JPEG2000.dcm")))
    truncated = tmp_path / "j2k.dcm"
    truncated.write_bytes(source.read_bytes()[:-50])
    with pytest.raises(InvalidInstanceError, match="truncated"):
        store.ingest(incoming(store, truncated))
    assert store.ingest(incoming(store, source)).outcome is StoreOutcome.STORED
