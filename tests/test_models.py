"""Detectors: registry, checksum refusal, eligibility, and the committed weights at work."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models
from models.detector import ModelCard, NotEligibleError, WeightsError
from models.evaluation import roc_auc
from models.slicenet import SliceDetector
from models.synthetic.generate import generate, write_case
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.volume import Volume

REPO = Path(__file__).resolve().parent.parent


def test_unknown_detector_is_an_error() -> None:
    with pytest.raises(models.ModelNotFoundError):
        models.load("appendicitis")


def test_every_bundled_detector_has_a_card_and_verified_weights() -> None:
    cards = {c.name: c for c in models.available()}
    assert set(cards) == set(models.DETECTORS)
    for card in cards.values():
        card.verified_weights()
        assert "synthetic" in card.intended_use and "not for diagnosis" in card.intended_use
        assert card.raw["synthetic_training_data_only"] is True
        assert (card.folder / "README.md").read_text().count("Not for clinical use") == 1
        size = card.weights_path.stat().st_size
        assert size < 8 * 2**20, f"{card.name} weights are {size} bytes"


@pytest.fixture
def copied_card(tmp_path: Path) -> Path:
    folder = tmp_path / "hemorrhage"
    shutil.copytree(models.MODELS_DIR / "hemorrhage", folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return folder


def test_modified_weights_are_refused(copied_card: Path) -> None:
    weights = copied_card / "weights" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        SliceDetector(ModelCard.read(copied_card))


def test_missing_weights_are_refused(copied_card: Path) -> None:
    (copied_card / "weights" / "model.pt").unlink()
    with pytest.raises(WeightsError, match="missing"):
        SliceDetector(ModelCard.read(copied_card))


def _volume(**meta: object) -> Volume:
    base = {"modality": "CT", "body_part_examined": "HEAD", "slice_thickness_mm": 2.5,
            "contrast_agent": ""}
    base.update(meta)
    return Volume(np.zeros((40, 8, 8), np.float32), (2.5, 1, 1), (0, 0, 0), "1", "2", base)


@pytest.mark.parametrize(("volume", "reason"), [
    (_volume(slice_thickness_mm=7.5), "7.5 mm thick"),
    (_volume(contrast_agent="Omnipaque"), "contrast agent present"),
    (_volume(modality="MR"), "modality MR"),
    (_volume(body_part_examined="CHEST"), "body part CHEST"),
    (Volume(np.zeros((10, 8, 8), np.float32), (2.5, 1, 1), (0, 0, 0), "1", "2",
            {"modality": "CT"}), "only 10 slices"),
])
def test_ineligible_volumes_are_refused_with_the_reason(volume: Volume, reason: str) -> None:
    detector = models.load("hemorrhage")
    assert reason in (detector.eligibility(volume) or "")
    with pytest.raises(NotEligibleError, match=reason):
        detector(volume)


# Fixed held-out sets (seeds never used in training or validation), one positive and one
# negative phantom per seed.  The bar is well above chance (a broken weight file or a
# preprocessing mismatch scores about 0.5) and below each detector's validated AUC (see its
# model card): hemorrhage 0.98, stroke 0.99, cspine_fracture 0.96.  The fracture detector
# had the weakest, so it gets more pairs for a steadier estimate: 0.945 on these 20 pairs
# (0.2.0: 0.953), where cspine_fracture 0.1.0 (blind to posterior-element breaks) scored 0.77.
FIXED_SET = {  # name: (pairs, minimum AUC)
    "hemorrhage": (6, 0.9),
    "stroke": (6, 0.9),
    "cspine_fracture": (20, 0.85),
}


@pytest.mark.parametrize("name", models.DETECTORS)
def test_committed_detector_separates_positives_from_negatives(name: str) -> None:
    from models.assess import FINDING_OF, REGION_OF

    pairs, minimum_auc = FIXED_SET[name]
    detector = models.load(name)
    labels, scores, localised = [], [], []
    for offset in range(pairs):
        for finding in (FINDING_OF[name], "none"):
            case = generate(sample_case(990_000 + offset, REGION_OF[name], finding=finding))
            result = detector(case.volume())
            # a forced finding that shows on no slice is not one (the generator's labels)
            labels.append(case.finding != "none")
            scores.append(result.probability)
            if case.finding != "none" and result.flagged:
                assert result.slice_range is not None
                first, last = case.labels["findings"][0]["slices"]
                # the flagged slices overlap the labelled ones (within two slices)
                localised.append(result.slice_range[0] <= last + 2
                                 and result.slice_range[1] >= first - 2)
            assert result.features.shape == (256,)
    auc = roc_auc(np.array(labels), np.array(scores))
    assert auc >= minimum_auc, f"{name}: AUC {auc:.2f} on the fixed set; scores {scores}"
    assert localised, f"{name}: no positive flagged"
    assert sum(localised) >= 0.8 * len(localised), f"{name}: flags elsewhere: {localised}"


def test_analyze_command_reports_each_series(tmp_path: Path) -> None:
    head = generate(sample_case(990_100, Region.HEAD, finding="hemorrhage", max_slices=40))
    write_case(head, tmp_path / "head")
    (tmp_path / "notes.txt").write_text("not dicom")
    out = subprocess.run([sys.executable, "-m", "triage", "analyze", str(tmp_path), "--csv"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.strip().splitlines()
    assert rows[0].startswith("study_instance_uid,series_instance_uid")
    by_detector = {row.split(",")[4]: row for row in rows[1:]}
    assert set(by_detector) == set(models.DETECTORS)
    assert "series is head, detector is for cspine" in by_detector["cspine_fracture"]
    assert by_detector["hemorrhage"].split(",")[5] != ""


def test_eval_on_a_labelled_site_folder(tmp_path: Path) -> None:
    """What a site does with its own data: a DICOM folder plus a labels CSV."""
    data = tmp_path / "site"
    run = [sys.executable, "-m", "models"]
    gen = subprocess.run([*run, "synthetic", "generate", "--region", "head", "--n", "4",
                          "--seed", "990200", "--max-slices", "36", "--out", str(data)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert gen.returncode == 0, gen.stderr
    # a site's own CSV: only the two required columns, two more studies known positive
    with (data / "labels.csv").open(newline="") as fh:
        rows = [{"study_instance_uid": r["study_instance_uid"], "finding": r["finding"]}
                for r in csv.DictReader(fh)]
    for offset in range(2):
        case = generate(sample_case(990_210 + offset, Region.HEAD, finding="hemorrhage",
                                    max_slices=36))
        write_case(case, data / f"extra{offset}")
        rows.append({"study_instance_uid": case.labels["study_instance_uid"],
                     "finding": "hemorrhage"})
    labels = tmp_path / "site-labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["study_instance_uid", "finding"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "eval"
    res = subprocess.run([*run, "eval", "hemorrhage", "--data", str(data), "--labels",
                          str(labels), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "hemorrhage-eval.json").read_text())
    assert report["overall"]["n"] == 6
    assert report["overall"]["positives"] >= 2
    assert (out / "hemorrhage-roc.png").stat().st_size > 1000
    assert "site data" in report["source"]
    # The same folder, a candidate card that flags everything against the bundled one: each
    # series is loaded once and scored by both, and the pairs are the same six studies.
    candidate = _card_flagging_everything(tmp_path / "candidate")
    res = subprocess.run([*run, "eval", "hemorrhage", "--data", str(data), "--labels",
                          str(labels), "--out", str(out), "--models-dir", str(candidate),
                          "--baseline"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    comparison = json.loads((out / "hemorrhage-eval.json").read_text())["comparison"]
    assert comparison["studies"] == 6 and comparison["unpaired"] == 0
    auc = comparison["overall"]["auc"]
    assert auc["difference"] == 0 and auc["baseline"] == report["overall"]["auc"]["value"]
    assert comparison["overall"]["sensitivity"]["candidate"] == 1


def _card_flagging_everything(root: Path) -> Path:
    """A copy of the bundled hemorrhage card whose threshold is 0: same scores, every study
    flagged."""
    shutil.copytree(models.MODELS_DIR / "hemorrhage", root / "hemorrhage",
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    meta_path = root / "hemorrhage" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["threshold"] = 0.0
    meta["version"] = "flags-everything"
    meta_path.write_text(json.dumps(meta))
    return root


def test_eval_compares_a_candidate_with_the_bundled_card_on_the_same_studies(
        tmp_path: Path) -> None:
    """What the team (or a site) does before adopting new weights: a paired comparison."""
    candidate = _card_flagging_everything(tmp_path / "candidate")
    out = tmp_path / "eval"
    run = [sys.executable, "-m", "models", "eval", "hemorrhage", "--cases", "8",
           "--workers", "1", "--out", str(out)]
    same = subprocess.run([*run, "--baseline"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert same.returncode != 0 and "is the card being evaluated" in same.stderr
    plain = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    bundled = json.loads((out / "hemorrhage-eval.json").read_text())
    res = subprocess.run([*run, "--models-dir", str(candidate), "--baseline"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "hemorrhage-eval.json").read_text())
    comparison = rep["comparison"]
    assert comparison["baseline"]["version"] == models.card("hemorrhage").version
    assert comparison["candidate"]["version"] == "flags-everything"
    assert comparison["studies"] == bundled["overall"]["n"] == 8
    overall = comparison["overall"]
    # the same scores, so the same AUC; every study flagged by the candidate
    assert overall["auc"]["difference"] == 0 and overall["auc"]["ci95"] == [0, 0]
    assert overall["auc"]["baseline"] == bundled["overall"]["auc"]["value"]
    assert overall["sensitivity"]["candidate"] == 1 and overall["specificity"]["candidate"] == 0
    assert overall["specificity"]["baseline"] == bundled["overall"]["specificity"]["value"]
    flagged = {s["study_instance_uid"]: s["flagged"] for s in bundled["studies"]}
    negatives = [s for s in bundled["studies"] if not s["positive"]]
    assert negatives, "the 8 held-out seeds hold negatives"
    assert comparison["flags"]["negatives"] == {
        "both": sum(flagged[s["study_instance_uid"]] for s in negatives),
        "candidate_only": sum(not flagged[s["study_instance_uid"]] for s in negatives),
        "baseline_only": 0, "neither": 0}
    assert "against" in res.stdout and "negatives newly flagged" in res.stdout
    for study in rep["studies"]:  # each study carries both cards' scores and flags
        assert study["flagged"] is True
        assert study["baseline_flagged"] is flagged[study["study_instance_uid"]]
        assert study["baseline_probability"] == study["probability"]


def test_calibrate_threshold_sets_the_operating_point_on_validation_seeds(
        tmp_path: Path) -> None:
    """A site (or the project) re-chooses the threshold without retraining."""
    from models.assess import evaluate_synthetic
    from models.cards import next_patch_version
    from models.evaluation import threshold_for_specificity

    shutil.copytree(models.MODELS_DIR / "hemorrhage", tmp_path / "hemorrhage",
                    ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    before = models.card("hemorrhage", root=tmp_path)
    run = [sys.executable, "-m", "models", "calibrate-threshold", "hemorrhage",
           "--models-dir", str(tmp_path)]
    refused = subprocess.run([*run, "--seed-base", "900000", "--cases", "4"],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode != 0 and "not all validation seeds" in refused.stderr
    # chosen with test-time flip averaging switched on, which the card then says
    flip = "off" if before.flip_average else "on"
    res = subprocess.run([*run, "--cases", "12", "--specificity", "0.8", "--flip-average", flip],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "note: " in res.stdout and "use at least 50 negatives" in res.stdout  # 12 studies
    assert "calibrate-ood hemorrhage" in res.stdout  # the key slice is chosen another way
    after = models.card("hemorrhage", root=tmp_path)
    assert after.version == next_patch_version(before.version) != before.version
    assert after.weights_sha256 == before.weights_sha256
    assert after.flip_average is (flip == "on")
    op = after.raw["operating_point"]
    assert op["studies"] == 12 and "500000-500011" in op["source"]
    assert op["rule"] == "specificity >= 0.8 on 12 validation studies"
    assert after.version in after.raw["changelog"] and after.raw["performance"]["stale"] is True
    assert f"flip averaging switched {flip}" in after.raw["changelog"][after.version]
    readme = (tmp_path / "hemorrhage" / "README.md").read_text()
    assert "Stale" in readme and "Operating point chosen on 12 studies" in readme
    assert ("Test-time flip averaging" in readme) is after.flip_average
    assert f"--flip-average {flip}" in readme or flip == "off"
    # Scored again independently, with the card as written (flip averaging as recorded):
    # the stored threshold is the lowest with specificity >= 0.8.
    results, skipped, _ = evaluate_synthetic("hemorrhage", range(500_000, 500_012), workers=1,
                                             root=tmp_path)
    assert not skipped
    labels = np.array([r.positive for r in results])
    scores = np.array([r.probability for r in results])
    assert 0 < labels.sum() < len(labels)
    assert after.threshold == pytest.approx(threshold_for_specificity(labels, scores, 0.8),
                                            abs=1.5e-6)
    assert (scores[~labels] < after.threshold).mean() >= 0.8
    assert op["specificity"]["value"] == pytest.approx((scores[~labels] < after.threshold).mean(),
                                                       abs=1e-4)


def test_patch_versions() -> None:
    from models.cards import next_patch_version

    assert next_patch_version("0.2.0") == "0.2.1"
    assert next_patch_version("1.9.9") == "1.9.10"
    assert next_patch_version("site-a") == "site-a.1"
