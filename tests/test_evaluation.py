"""Evaluation statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    StudyResult,
    auc_ci,
    compare,
    report,
    roc_auc,
    shortfalls,
    threshold_for_specificity,
    wilson,
)


def test_auc_counts_ties_as_half() -> None:
    labels = np.array([1, 1, 0, 0], dtype=bool)
    assert roc_auc(labels, np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(0.875)
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))


def test_auc_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(80, bool), np.zeros(160, bool)]
    scores = np.r_[rng.normal(1.2, 1, 80), rng.normal(0, 1, 160)]
    auc, lo, hi = auc_ci(labels, scores)
    assert lo < auc < hi
    assert 0.7 < auc < 0.9
    assert hi - lo < 0.15


def test_wilson_interval() -> None:
    p, lo, hi = wilson(95, 100)
    assert p == 0.95
    assert lo == pytest.approx(0.8883, abs=1e-3)
    assert hi == pytest.approx(0.9785, abs=1e-3)
    assert wilson(0, 0)[0] != wilson(0, 0)[0]  # NaN when there is nothing to count


def test_threshold_meets_the_specificity_target() -> None:
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(50, bool), np.zeros(200, bool)]
    scores = np.r_[rng.uniform(0.4, 1, 50), rng.uniform(0, 0.8, 200)]
    threshold = threshold_for_specificity(labels, scores, 0.95)
    assert (scores[~labels] < threshold).mean() >= 0.95
    assert (scores[~labels] < threshold * 0.999).mean() < 0.96  # and not more than needed


def test_report_strata_and_shortfalls() -> None:
    results = []
    for i in range(40):  # vendor A: perfect; vendor B: positives missed
        vendor = "A" if i < 20 else "B"
        positive = i % 2 == 0
        hit = positive and vendor == "A"
        results.append(StudyResult(str(i), positive, 0.9 if hit else 0.1, hit,
                                   {"manufacturer": vendor, "subtype": "x" if positive else ""}))
    rep = report(results, strata=["manufacturer", "subtype"], threshold=0.5)
    assert rep["overall"]["sensitivity"]["value"] == 0.5
    assert rep["strata"]["manufacturer"]["A"]["sensitivity"]["value"] == 1.0
    assert rep["strata"]["manufacturer"]["B"]["sensitivity"]["value"] == 0.0
    # the subtype stratum holds its positives plus every negative
    assert rep["strata"]["subtype"]["x"]["n"] == 40
    [line] = [s for s in rep["strata_below_overall_by_more_than_5_points"]
              if s.startswith("manufacturer=B: sensitivity")]
    # 0 of 10 positives: Wilson's upper bound (0.278) is below 0.5, so the gap is supported
    assert line == ("manufacturer=B: sensitivity 0.000 [0.000-0.278] vs 0.500 "
                    "(its CI lies below overall)")


def test_a_shortfall_says_whether_its_interval_reaches_overall() -> None:
    overall = {"auc": {"value": 0.96, "ci95": [0.95, 0.97]},
               "sensitivity": {"value": 0.92, "ci95": [0.90, 0.94]},
               "specificity": {"value": 0.89, "ci95": [0.87, 0.90]}}
    def m(spec: float, lo: float, hi: float) -> dict[str, dict[str, object]]:
        return {"auc": {"value": 0.96, "ci95": [0.9, 0.99]},
                "sensitivity": {"value": None, "ci95": [None, None]},
                "specificity": {"value": spec, "ci95": [lo, hi]}}
    strata = {"slice_thickness": {"1 mm": m(0.829, 0.75, 0.89), "3 mm": m(0.80, 0.76, 0.84),
                                  "5 mm": m(0.85, 0.80, 0.90)}}
    assert shortfalls(overall, strata) == [
        "slice_thickness=1 mm: specificity 0.829 [0.750-0.890] vs 0.890 "
        "(its CI reaches overall: may be chance)",
        "slice_thickness=3 mm: specificity 0.800 [0.760-0.840] vs 0.890 "
        "(its CI lies below overall)",
    ]  # 5 mm is 4 points below: not listed
    assert shortfalls(overall, strata, min_points=0.1) == []


def _studies(scores: np.ndarray, labels: np.ndarray, subtypes: list[str],
             threshold: float) -> list[StudyResult]:
    return [StudyResult(f"1.2.{i}", bool(y), float(s), bool(s >= threshold),
                        {"subtype": t if y else "", "sex": "F" if i % 2 else "M"})
            for i, (s, y, t) in enumerate(zip(scores, labels, subtypes, strict=True))]


def test_a_model_compared_with_itself_differs_by_exactly_nothing() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(60, bool), np.zeros(120, bool)]
    scores = np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, 120)]
    subtypes = ["a" if i % 2 else "b" for i in range(180)]
    same = _studies(scores, labels, subtypes, 0.5)
    out = compare(same, list(reversed(same)), strata=["subtype", "sex"], resamples=200)
    assert out["studies"] == 180 and out["unpaired"] == 0
    for m in (out["overall"], out["strata"]["subtype"]["a"], out["strata"]["sex"]["F"]):
        for name in ("auc", "sensitivity", "specificity"):
            assert m[name]["difference"] == 0 and m[name]["ci95"] == [0, 0]
            assert m[name]["candidate"] == m[name]["baseline"]
    assert out["flags"]["positives"]["candidate_only"] == 0
    assert out["flags"]["negatives"]["baseline_only"] == 0
    assert out["differences_excluding_zero"] == []
    # the subtype stratum holds its positives plus every negative, as in report()
    assert out["strata"]["subtype"]["a"]["n"] == 30 + 120


def test_a_gain_on_one_subtype_shows_there_with_an_interval_that_excludes_zero() -> None:
    """The paired interval finds a gain that two separate intervals would not separate."""
    rng = np.random.default_rng(4)
    labels = np.r_[np.ones(200, bool), np.zeros(400, bool)]
    baseline = np.r_[rng.normal(1.5, 1, 200), rng.normal(0, 1, 400)]
    subtypes = ["a" if i < 40 else "b" for i in range(600)]
    candidate = baseline.copy()
    candidate[:40] += 0.6  # only subtype "a" positives score higher
    out = compare(_studies(candidate, labels, subtypes, 1.0),
                  _studies(baseline, labels, subtypes, 1.0),
                  strata=["subtype", "sex"], resamples=500)
    a, b = out["strata"]["subtype"]["a"], out["strata"]["subtype"]["b"]
    assert a["auc"]["difference"] > 0.05 and a["auc"]["ci95"][0] > 0
    assert b["auc"]["difference"] == 0 and b["auc"]["ci95"] == [0, 0]
    assert out["overall"]["specificity"]["difference"] == 0  # no negative changed
    gained = int(((candidate[:40] >= 1.0) & (baseline[:40] < 1.0)).sum())
    assert gained > 0
    assert out["flags"]["positives"] == {
        "both": int(((candidate[:200] >= 1.0) & (baseline[:200] >= 1.0)).sum()),
        "candidate_only": gained, "baseline_only": 0,
        "neither": int((candidate[:200] < 1.0).sum())}
    assert any(line.startswith("subtype=a: auc") for line in out["differences_excluding_zero"])
    assert not any(line.startswith("subtype=b") for line in out["differences_excluding_zero"])
    # the two separate bootstrap intervals of subtype a's AUC overlap nonetheless
    sub = np.r_[np.arange(40), np.arange(200, 600)]
    _, lo_candidate, _ = auc_ci(labels[sub], candidate[sub])
    _, _, hi_baseline = auc_ci(labels[sub], baseline[sub])
    assert lo_candidate < hi_baseline


def test_a_comparison_pairs_studies_by_uid_and_refuses_a_changed_truth() -> None:
    labels = np.array([True, False, True, False])
    scores = np.array([0.9, 0.1, 0.8, 0.2])
    four = _studies(scores, labels, ["a"] * 4, 0.5)
    out = compare(four, four[:3], strata=[], resamples=50)
    assert out["studies"] == 3 and out["unpaired"] == 1
    flipped = [StudyResult(r.study_instance_uid, not r.positive, r.probability, r.flagged,
                           r.attributes) for r in four]
    with pytest.raises(ValueError, match="positive for one"):
        compare(four, flipped, strata=[])
    with pytest.raises(ValueError, match="no study"):
        compare(four, [], strata=[])
