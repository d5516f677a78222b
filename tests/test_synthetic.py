"""Synthetic phantom generator: valid DICOM, consistent geometry, determinism, honest labels."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom.config
import pytest
from pydicom import dcmread

from models.synthetic.generate import Case, generate, write_case
from models.synthetic.sampling import (
    drawn_keys,
    drawn_subtype,
    extra_keys,
    sample_case,
    subtypes,
)
from models.synthetic.spec import CaseSpec, Fracture, FractureKind, Hemorrhage, Region, Side
from models.volume import load_series


@pytest.fixture(scope="module")
def head_case_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    case = generate(sample_case(11, Region.HEAD, finding="hemorrhage", max_slices=40))
    folder = tmp_path_factory.mktemp("case")
    write_case(case, folder)
    return folder, case


def test_written_series_is_strictly_valid_dicom(head_case_dir: tuple[Path, object],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = head_case_dir
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    files = sorted(folder.glob("*.dcm"))
    assert files
    for path in files:
        ds = dcmread(path)
        ds.pixel_array  # noqa: B018 - decodes
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.Modality == "CT"
        assert ds.ImageComments.startswith("SYNTHETIC PHANTOM")
        assert ds.PatientName and ds.PatientID.startswith("SYN")


def test_geometry_is_consistent(head_case_dir: tuple[Path, object]) -> None:
    folder, case = head_case_dir
    datasets = [dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    acq = case.spec.acquisition  # type: ignore[attr-defined]
    assert np.allclose(np.diff(z), acq.spacing_mm, atol=1e-3)
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.PixelSpacing[0]) == pytest.approx(acq.fov_mm / acq.matrix, rel=1e-4)
        assert float(ds.SliceThickness) == acq.slice_thickness_mm
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)


def test_files_read_back_to_the_in_memory_volume(head_case_dir: tuple[Path, object]) -> None:
    folder, case = head_case_dir
    volume = load_series(sorted(folder.glob("*.dcm")))
    memory = case.volume()  # type: ignore[attr-defined]
    assert volume.shape == memory.shape
    assert np.array_equal(volume.hu, memory.hu)
    assert volume.spacing_mm == pytest.approx(memory.spacing_mm, rel=1e-4)
    assert volume.origin_mm == pytest.approx(memory.origin_mm, abs=1e-3)


def test_labels_describe_the_finding(head_case_dir: tuple[Path, object]) -> None:
    folder, case = head_case_dir
    labels = json.loads((folder / "labels.json").read_text())
    assert labels["finding"] == "hemorrhage"
    (finding,) = labels["findings"]
    first, last = finding["slices"]
    assert 0 <= first <= last < labels["acquisition"]["n_slices"]
    assert 0.2 * 0.9 <= finding["volume_ml"] <= 60 * 1.1
    assert labels["synthetic"] is True
    assert case.slice_positive[first:last + 1].any()  # type: ignore[attr-defined]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    spec = sample_case(23, Region.CSPINE, max_slices=24)
    write_case(generate(spec), tmp_path / "a")
    write_case(generate(spec), tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_forcing_a_finding_changes_nothing_else() -> None:
    normal = sample_case(31, Region.HEAD, finding="none")
    bleed = sample_case(31, Region.HEAD, finding="hemorrhage")
    assert dataclasses.replace(bleed, findings=()) == normal
    a, b = generate(normal), generate(bleed)
    changed = np.abs(a.hu - b.hu) > 0
    assert changed.any()
    # the change is local: most voxels are identical (noise is the same stream too)
    assert changed.mean() < 0.05


def test_every_fracture_and_hemorrhage_is_visible_in_its_label() -> None:
    for seed in range(6):
        case = generate(sample_case(seed, Region.CSPINE, finding="fracture", max_slices=48))
        assert case.finding == "fracture"
        assert case.labels["findings"][0]["level"] in range(1, 8)
        assert case.slice_positive.any()


def _fracture_case(seed: int, fracture: Fracture) -> tuple[Case, Case]:
    """The phantom of ``seed`` with ``fracture`` and without it (same anatomy and noise)."""
    normal = sample_case(seed, Region.CSPINE, finding="none", max_slices=48)
    broken = dataclasses.replace(normal, findings=(fracture,))
    return generate(broken), generate(normal)


@pytest.mark.parametrize("fracture", [
    Fracture(level=4, kind=FractureKind.POSTERIOR, side=Side.LEFT),
    Fracture(level=6, kind=FractureKind.POSTERIOR, side=Side.RIGHT),
    Fracture(level=5, kind=FractureKind.BODY),
])
def test_a_fracture_slice_is_labelled_only_where_its_gap_shows(fracture: Fracture) -> None:
    # Undisplaced, so the only change is the lucent gap: a labelled slice must be darker
    # than the same slice without the fracture over at least a few mm² (a margin around the
    # plane used to label slices above and below a thin lamina where nothing showed).
    for seed in (3, 4, 5):
        case, normal = _fracture_case(seed, fracture)
        assert case.slice_positive.any(), f"seed {seed}: {fracture} not visible anywhere"
        pixel_mm2 = float(case.grid.x[1] - case.grid.x[0]) ** 2
        darker = ((normal.hu - case.hu) > 60).sum(axis=(1, 2)) * pixel_mm2
        assert (darker[case.slice_positive] >= 2.0).all(), (seed, darker.round(1).tolist(),
                                                            case.slice_positive.tolist())
        assert (darker[~case.slice_positive] < 40.0).all()


def test_the_fracture_subtype_names_the_column_that_broke() -> None:
    case, _ = _fracture_case(3, Fracture(level=2, kind=FractureKind.POSTERIOR))
    finding = case.labels["findings"][0]
    assert (finding["extra"]["part"], finding["subtype"]) == ("dens base", "body")
    case, _ = _fracture_case(3, Fracture(level=5, kind=FractureKind.POSTERIOR))
    assert case.labels["findings"][0]["subtype"] == "posterior"
    assert case.labels["generator_revision"] >= 2


def _first_drawn(region: Region, want: Callable[[CaseSpec], bool]) -> int:
    return next(s for s in range(300_000, 310_000) if want(sample_case(s, region)))


def test_the_subtype_known_before_rendering_is_the_one_the_labels_give() -> None:
    def fracture(level: range, kind: FractureKind) -> Callable[[CaseSpec], bool]:
        def want(spec: CaseSpec) -> bool:
            f = spec.findings[0] if spec.findings else None
            return isinstance(f, Fracture) and f.level in level and f.kind is kind
        return want

    picks: dict[str, tuple[Region, Callable[[CaseSpec], bool]]] = {
        "posterior C3-C7": (Region.CSPINE, fracture(range(3, 8), FractureKind.POSTERIOR)),
        "posterior C2 (the dens)": (Region.CSPINE, fracture(range(2, 3), FractureKind.POSTERIOR)),
        "body": (Region.CSPINE, fracture(range(3, 8), FractureKind.BODY)),
        "compression": (Region.CSPINE, fracture(range(1, 8), FractureKind.COMPRESSION)),
        "subdural": (Region.HEAD, lambda spec: drawn_subtype(spec) == "subdural"),
    }
    seen = set()
    for what, (region, want) in picks.items():
        spec = sample_case(_first_drawn(region, want), region, max_slices=24)
        drawn = drawn_subtype(spec)
        assert drawn is not None, what
        label = generate(spec).labels["findings"][0]
        assert label["subtype"] == drawn, what
        level = {f"C{label['level']}"} if label["level"] else set()
        small = {"small"} if region is Region.HEAD and label["volume_ml"] < 5 else set()
        assert drawn_keys(spec) == {drawn} | level | small, what
        seen.add(drawn)
    assert seen == {"posterior", "body", "compression", "subdural"}
    c1 = sample_case(_first_drawn(Region.CSPINE, fracture(range(1, 2), FractureKind.BODY)),
                     Region.CSPINE)
    assert drawn_subtype(c1) is None  # the renderer picks the arch of a C1 break
    assert drawn_keys(c1) == {"C1"}
    assert generate(c1).labels["findings"][0]["level"] == 1
    normal = sample_case(1, Region.HEAD, finding="none")
    assert drawn_subtype(normal) is None and drawn_keys(normal) == set()
    assert extra_keys("fracture")[-7:] == tuple(f"C{n}" for n in range(1, 8))
    assert "C1" not in extra_keys("hemorrhage") and "subdural" in extra_keys("hemorrhage")
    assert "small" in extra_keys("hemorrhage") and "small" not in extra_keys("fracture")


def test_a_bleed_drawn_small_is_in_the_evaluations_smallest_size_band() -> None:
    from models.assess import size_band

    def bleed(small: bool) -> Callable[[CaseSpec], bool]:
        return lambda spec: (bool(spec.findings) and isinstance(spec.findings[0], Hemorrhage)
                             and ("small" in drawn_keys(spec)) is small)

    for small in (True, False):
        spec = sample_case(_first_drawn(Region.HEAD, bleed(small)), Region.HEAD, max_slices=24)
        label = generate(spec).labels["findings"][0]
        assert (size_band(label["volume_ml"]) == "<5 mL") is small, label["volume_ml"]
    assert "posterior" in subtypes("fracture") and "subdural" in subtypes("hemorrhage")
    with pytest.raises(ValueError, match="finding"):
        subtypes("tumour")


def test_population_shift_overrides_apply() -> None:
    spec = sample_case(5, Region.HEAD, manufacturer="SIEMENS", kernel="H31s",
                       kernel_sharpness=0.35, hu_offset=8.0)
    assert spec.acquisition.manufacturer == "SIEMENS"
    base = generate(sample_case(5, Region.HEAD))
    shifted = generate(dataclasses.replace(
        spec, acquisition=dataclasses.replace(base.spec.acquisition, hu_offset=8.0)))
    brain = (base.hu > 0) & (base.hu < 80)
    assert float((shifted.hu - base.hu)[brain].mean()) == pytest.approx(8.0, abs=0.6)
