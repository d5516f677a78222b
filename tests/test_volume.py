"""Series → volume: sorting, duplicates, mixed series, compression, refusals."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from models.volume import VolumeError, find_series, load_series
from tests.dicom_factory import write_series


def hu_of(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_unsorted_files_give_an_ordered_volume(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 12, rows=24, columns=24, slice_thickness=2.0)
    shuffled = paths[:]
    random.Random(4).shuffle(shuffled)
    volume = load_series(shuffled)
    assert volume.shape == (12, 24, 24)
    assert volume.spacing_mm == pytest.approx((2.0, 0.5, 0.5))
    assert volume.origin_mm[2] == pytest.approx(0.0)
    for index, path in enumerate(paths):  # inferior → superior = instance order here
        assert np.array_equal(volume.hu[index], hu_of(path))
        # each slice knows its instance (for key images in SR/KOS and the worklist preview)
        assert volume.meta["sop_instance_uids"][index] == dcmread(path).SOPInstanceUID
    assert volume.meta["body_part_examined"] == "HEAD"
    assert volume.meta["slice_thickness_mm"] == 2.0


def test_duplicates_are_dropped(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 8, rows=16, columns=16)
    copy = tmp_path / "again.dcm"
    shutil.copyfile(paths[3], copy)
    assert load_series([*paths, copy]).shape[0] == 8
    # a second image at an identical position (a re-sent, re-numbered slice)
    ds = dcmread(paths[5])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "dup-position.dcm")
    assert load_series([*paths, tmp_path / "dup-position.dcm"]).shape[0] == 8


def test_mixed_series_are_refused_and_grouped(tmp_path: Path) -> None:
    a = write_series(tmp_path / "in" / "a", 5, rows=16, columns=16)
    b = write_series(tmp_path / "in" / "b", 6, rows=16, columns=16)
    (tmp_path / "in" / "readme.txt").write_text("not dicom")
    with pytest.raises(VolumeError, match="2 series"):
        load_series([*a, *b])
    groups = find_series([tmp_path / "in"])
    assert sorted(len(v) for v in groups.values()) == [5, 6]


@pytest.mark.parametrize(("tool", "option"), [
    ("dcmcjpeg", "+e1"), ("dcmcjpls", "+el"), ("dcmcrle", ""),
])
def test_lossless_compressed_series_decode_to_the_same_hu(tmp_path: Path, tool: str,
                                                          option: str) -> None:
    paths = write_series(tmp_path / "plain", 6, rows=32, columns=32)
    compressed = []
    for path in paths:
        target = tmp_path / "packed" / path.name
        target.parent.mkdir(exist_ok=True)
        subprocess.run([tool, *([option] if option else []), str(path), str(target)],
                       check=True, capture_output=True)
        compressed.append(target)
    assert dcmread(compressed[0]).file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(load_series(compressed).hu, load_series(paths).hu)


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 6, rows=16, columns=16)
    for path in paths:
        ds = dcmread(path)
        ds.GantryDetectorTilt = 15
        ds.save_as(path)
    with pytest.raises(VolumeError, match="gantry tilt"):
        load_series(paths)


def test_oblique_stacking_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 6, rows=16, columns=16)
    for index, path in enumerate(paths):
        ds = dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + index * 1.3, z]  # tilted acquisition, no tag
        ds.save_as(path)
    with pytest.raises(VolumeError, match="oblique"):
        load_series(paths)


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 8, rows=16, columns=16)
    with pytest.raises(VolumeError, match="regular"):
        load_series(paths[:3] + paths[4:])


def test_localizer_is_ignored(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 6, rows=16, columns=16)
    ds = dcmread(paths[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.9"
    ds.ImagePositionPatient = [0, 0, -100]
    ds.save_as(tmp_path / "scout.dcm")
    assert load_series([*paths, tmp_path / "scout.dcm"]).shape[0] == 6


def test_unreadable_file_is_a_volume_error(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 4, rows=16, columns=16)
    paths[2].write_bytes(b"\x00" * 132)
    with pytest.raises(VolumeError, match="unreadable"):
        load_series(paths)
