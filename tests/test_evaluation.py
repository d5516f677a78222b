"""Evaluation statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    StudyResult,
    auc_ci,
    report,
    roc_auc,
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
    assert any(s.startswith("manufacturer=B: sensitivity")
               for s in rep["strata_below_overall_by_more_than_5_points"])
