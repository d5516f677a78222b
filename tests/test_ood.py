"""Out-of-distribution gate: the statistics, the committed references, and phantoms at work."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import models
from models.detector import ModelCard, WeightsError
from models.ood import OODReference, fit_reference, jensen_shannon, ledoit_wolf
from models.slicenet import SliceDetector
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region

# Held-out seeds (training used 100000+, validation 500000+, calibration checks 900000-900079).
SEEDS = (990_010, 990_011, 990_012)


def test_ledoit_wolf_is_well_conditioned_when_samples_are_few() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 100))
    x -= x.mean(axis=0)
    sample = x.T @ x / 40
    assert np.linalg.matrix_rank(sample) < 100  # singular: plain Mahalanobis impossible
    shrunk = ledoit_wolf(x)
    assert np.all(np.linalg.eigvalsh(shrunk) > 0)
    assert np.allclose(shrunk, shrunk.T)


def test_jensen_shannon_bounds() -> None:
    p = np.array([0.5, 0.5, 0.0])
    assert jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-3)
    assert jensen_shannon(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0, abs=1e-2)


def test_thresholds_are_calibrated_on_held_out_in_distribution_samples() -> None:
    rng = np.random.default_rng(1)
    mean = rng.normal(size=32)

    def draw(n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        feats = mean + shift + rng.normal(size=(n, 32))
        hists = rng.dirichlet(np.full(20, 50.0), size=n)
        return feats, hists

    reference, summary = fit_reference(*draw(300), *draw(400), quantile=0.99)
    assert summary["calibration_ood_rate"] <= 0.02
    fresh = draw(1000)
    rate = np.mean([reference.score(f, h).score > 1 for f, h in zip(*fresh, strict=True)])
    assert rate < 0.05  # about 1 - quantile per distance on new in-distribution samples
    shifted = draw(200, shift=1.5)
    rate = np.mean([reference.score(f, h).score > 1 for f, h in zip(*shifted, strict=True)])
    assert rate > 0.95
    restored = OODReference.load(_saved(reference))
    f, h = fresh[0][0], fresh[1][0]
    assert restored.score(f, h).score == pytest.approx(reference.score(f, h).score, rel=1e-4)


def _saved(reference: OODReference) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "ood.npz"
    path.write_bytes(reference.to_bytes())
    return path


def test_every_bundled_detector_has_a_verified_ood_reference() -> None:
    for card in models.available():
        assert card.ood is not None, f"{card.name}: run `triage models calibrate-ood`"
        assert card.verified_ood_reference() is not None
        checks = card.ood["checks"]
        assert checks["held_out_in_distribution"]["ood_rate"] <= 0.05
        assert "## Out-of-distribution gate" in (card.folder / "README.md").read_text()


def test_modified_ood_reference_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "hemorrhage"
    shutil.copytree(models.MODELS_DIR / "hemorrhage", folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    path = folder / "weights" / "ood.npz"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(WeightsError, match="OOD reference"):
        SliceDetector(ModelCard.read(folder))
    path.unlink()
    with pytest.raises(WeightsError, match="missing"):
        SliceDetector(ModelCard.read(folder))


@pytest.fixture(scope="module")
def head_volumes() -> list:  # type: ignore[type-arg]
    return [generate(sample_case(s, Region.HEAD, max_slices=40)).volume() for s in SEEDS]


@pytest.mark.parametrize("name", ["hemorrhage", "stroke"])
def test_head_detectors_accept_held_out_phantoms_and_refuse_shifted_ones(
        name: str, head_volumes: list) -> None:  # type: ignore[type-arg]
    detector = models.load(name)
    plain = [detector(v) for v in head_volumes]
    assert all(f.ood is not None for f in plain)
    assert sum(f.out_of_distribution for f in plain) == 0, [f.ood for f in plain]
    bright = [detector(dataclasses.replace(v, hu=v.hu + 150.0)) for v in head_volumes]
    assert all(f.out_of_distribution for f in bright), [f.ood for f in bright]


def test_fracture_detector_refuses_a_head_without_a_body_part_tag(
        head_volumes: list) -> None:  # type: ignore[type-arg]
    detector = models.load("cspine_fracture")
    spine = generate(sample_case(SEEDS[0], Region.CSPINE)).volume()
    assert not detector(spine).out_of_distribution
    untagged = [dataclasses.replace(v, meta={**v.meta, "body_part_examined": ""})
                for v in head_volumes]
    eligible = [v for v in untagged if detector.eligibility(v) is None]
    assert eligible, "no head phantom passes the fracture detector's eligibility"
    for volume in eligible:
        finding = detector(volume)
        assert finding.out_of_distribution, finding.ood


@pytest.mark.parametrize("name", ["hemorrhage", "stroke"])
def test_bfloat16_autocast_agrees_with_float32(name: str, head_volumes: list) -> None:  # type: ignore[type-arg]
    """The GPU path uses bfloat16 autocast; the same arithmetic on the CPU must agree closely
    enough that flags and the OOD gate do not change (CI has no GPU)."""
    card = models.card(name)
    full = SliceDetector(card)
    half = SliceDetector(card, amp=True)
    for volume in head_volumes:
        a, b = full(volume), half(volume)
        assert abs(a.probability - b.probability) < 0.05, (a.probability, b.probability)
        assert a.flagged == b.flagged
        assert a.ood is not None and b.ood is not None
        assert abs(a.ood.score - b.ood.score) < 0.1 * max(1.0, a.ood.score)
        assert a.out_of_distribution == b.out_of_distribution
