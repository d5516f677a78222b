"""Evaluation statistics: AUC with bootstrap CI, sensitivity/specificity with Wilson CIs, strata.

Computed on studies the model never trained on: held-out synthetic seeds or a site's
labelled DICOM folder.  Every figure comes with its count and a 95 % confidence interval.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

Z95 = 1.959963984540054
FINDING_STRATA = ("subtype", "size_band", "level")
T = TypeVar("T")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN if one class."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auc_ci(labels: np.ndarray, scores: np.ndarray, *, resamples: int = 1000,
           seed: int = 0) -> tuple[float, float, float]:
    """AUC and its 95 % CI by stratified bootstrap (positives and negatives resampled apart)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    auc = roc_auc(labels, scores)
    if math.isnan(auc):
        return auc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels], scores[~labels]
    values = [_auc_of(rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
              for _ in range(resamples)]
    lo, hi = np.percentile(values, [2.5, 97.5])
    return auc, float(lo), float(hi)


def _auc_of(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative) + half P(tie): the AUC, by sorting once."""
    n_sorted = np.sort(neg)
    below = np.searchsorted(n_sorted, pos, side="left")
    equal = np.searchsorted(n_sorted, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(pos) * len(neg)))


def wilson(successes: int, total: int) -> tuple[float, float, float]:
    """Proportion and its 95 % Wilson score interval; NaNs when ``total`` is 0."""
    if total == 0:
        return float("nan"), float("nan"), float("nan")
    p = successes / total
    denom = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def allowed_false_positives(negatives: int, target_specificity: float) -> int:
    """How many of ``negatives`` may score at or above a threshold that keeps the target:
    floor((1 - target) · n)."""
    return math.floor((1 - target_specificity) * negatives + 1e-9)


def threshold_for_specificity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Lowest threshold whose specificity on ``labels``/``scores`` is at least ``target``."""
    labels = np.asarray(labels, dtype=bool)
    negatives = np.sort(np.asarray(scores, dtype=float)[~labels])
    if negatives.size == 0:
        return 0.5
    allowed = allowed_false_positives(negatives.size, target)
    index = negatives.size - allowed - 1
    if index < 0:
        return float(negatives[0])
    return float(np.nextafter(negatives[index], np.inf))


def operating_point(labels: np.ndarray, scores: np.ndarray,
                    target_specificity: float) -> tuple[float, dict[str, Any]]:
    """The threshold for ``target_specificity`` on these studies and what it gives on them.

    The threshold is rounded *up* to six decimals (as stored in metadata.json), so that no
    negative the rule excluded is flagged again by the rounding.  Sensitivity and
    specificity carry Wilson intervals, the AUC a bootstrap one.

    Raises
    ------
    ValueError
        ``labels`` lacks positives or negatives: no operating point can be chosen.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if not labels.any() or labels.all():
        raise ValueError(f"an operating point needs positive and negative studies; got "
                         f"{int(labels.sum())} positive of {labels.size}")
    threshold = math.ceil(threshold_for_specificity(labels, scores, target_specificity)
                          * 1e6) / 1e6
    m = _array_metrics(labels, scores, scores >= threshold, seed=0)
    return threshold, {"auc": m["auc"], "sensitivity": m["sensitivity"],
                       "specificity": m["specificity"], "studies": m["n"],
                       "positives": m["positives"]}


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and true-positive rates at every distinct threshold."""
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")
    tp = np.cumsum(labels[order])
    fp = np.cumsum(~labels[order])
    tpr = np.concatenate([[0.0], tp / max(1, labels.sum())])
    fpr = np.concatenate([[0.0], fp / max(1, (~labels).sum())])
    return fpr, tpr


@dataclass(frozen=True)
class StudyResult:
    """One evaluated study: truth, score and the attributes used for strata."""

    study_instance_uid: str
    positive: bool
    probability: float
    flagged: bool
    attributes: dict[str, str]


def _metrics(items: Sequence[StudyResult], *, seed: int) -> dict[str, Any]:
    return _array_metrics(np.array([r.positive for r in items], dtype=bool),
                          np.array([r.probability for r in items], dtype=float),
                          np.array([r.flagged for r in items], dtype=bool), seed=seed)


def _array_metrics(labels: np.ndarray, scores: np.ndarray, flagged: np.ndarray, *,
                   seed: int) -> dict[str, Any]:
    auc, lo, hi = auc_ci(labels, scores, seed=seed) if labels.size else (float("nan"),) * 3
    sens = wilson(int((flagged & labels).sum()), int(labels.sum()))
    spec = wilson(int((~flagged & ~labels).sum()), int((~labels).sum()))
    ppv = wilson(int((flagged & labels).sum()), int(flagged.sum()))
    return {
        "n": int(labels.size),
        "positives": int(labels.sum()),
        "auc": _round3(auc, lo, hi),
        "sensitivity": _round3(*sens),
        "specificity": _round3(*spec),
        "ppv": _round3(*ppv),
    }


def _round3(value: float, lo: float, hi: float) -> dict[str, float | None]:
    def r(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 4)

    return {"value": r(value), "ci95": [r(lo), r(hi)]}  # type: ignore[dict-item]


def report(results: Sequence[StudyResult], *, strata: Sequence[str], threshold: float,
           seed: int = 0, min_points: float = 0.05) -> dict[str, Any]:
    """Overall and stratified metrics; strata more than ``min_points`` below overall are listed.

    Sensitivity is compared within positive-bearing strata, specificity within the others,
    AUC where both classes are present.
    """
    overall = _metrics(results, seed=seed)
    out: dict[str, Any] = {"threshold": threshold, "overall": overall, "strata": {}}
    for attribute in strata:
        out["strata"][attribute] = {
            value: _metrics(members, seed=seed)
            for value, members in _stratum_groups(results, attribute, lambda r: r)}
    out["strata_below_overall_by_more_than_5_points"] = shortfalls(
        overall, out["strata"], min_points=min_points)
    return out


def shortfalls(overall: dict[str, Any], strata: dict[str, dict[str, dict[str, Any]]], *,
               min_points: float = 0.05) -> list[str]:
    """One line per stratum measure more than ``min_points`` below overall.

    Each line gives the stratum's 95 % CI and says whether it lies wholly below the overall
    value (a gap the data support) or reaches it (a small stratum may fall this far by
    chance).  Works on the stored metrics of a card as well as on a fresh report.
    """
    lines = []
    for attribute, table in strata.items():
        for value, metrics in table.items():
            for name in ("auc", "sensitivity", "specificity"):
                base, mine = overall[name]["value"], metrics[name]["value"]
                if base is None or mine is None or mine >= base - min_points:
                    continue
                lo, hi = metrics[name]["ci95"]
                verdict = ("its CI lies below overall" if hi is not None and hi < base
                           else "its CI reaches overall: may be chance")
                interval = f" [{lo:.3f}-{hi:.3f}]" if lo is not None and hi is not None else ""
                lines.append(f"{attribute}={value}: {name} {mine:.3f}{interval} vs {base:.3f} "
                             f"({verdict})")
    return lines


def _stratum_groups(items: Sequence[T], attribute: str, study: Callable[[T], StudyResult]
                       ) -> list[tuple[str, list[T]]]:
    """The studies of each value of ``attribute``, sorted by value.

    Finding strata (subtype, size band, level) describe positives only, so each group is
    its positives plus all negatives; population strata (vendor, age, ...) split both
    classes.
    """
    of_finding = attribute in FINDING_STRATA
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        r = study(item)
        value = r.attributes.get(attribute)
        if value and (r.positive or not of_finding):
            groups[value].append(item)
    negatives = [item for item in items if not study(item).positive]
    return [(value, [*members, *negatives] if of_finding else members)
            for value, members in sorted(groups.items())]


Pair = tuple[StudyResult, StudyResult]  # (candidate, baseline) of one study


def compare(candidate: Sequence[StudyResult], baseline: Sequence[StudyResult], *,
            strata: Sequence[str], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two models scored on the same studies (candidate − baseline).

    Studies are matched by Study Instance UID; one scored by only one model is counted in
    ``unpaired`` and left out.  Overall and for every stratum (grouped as in :func:`report`):
    each model's AUC, sensitivity and specificity, the difference, and its 95 % CI by paired
    bootstrap: every resample (positives and negatives drawn apart) scores *both* models on
    the same studies, so what is hard for both cancels and a small but consistent gain shows
    as an interval that excludes 0 where two separate CIs would overlap.  ``flags`` counts the
    studies whose flag changed; ``differences_excluding_zero`` names the differences whose
    interval excludes 0.

    Raises
    ------
    ValueError
        No study was scored by both, or one study's truth differs between the two lists.
    """
    by_uid = {r.study_instance_uid: r for r in baseline}
    pairs = [(c, by_uid[c.study_instance_uid]) for c in candidate
             if c.study_instance_uid in by_uid]
    if not pairs:
        raise ValueError("no study was scored by both models")
    for c, b in pairs:
        if c.positive != b.positive:
            raise ValueError(f"study {c.study_instance_uid} is positive for one model's "
                             "evaluation and negative for the other's")
    out: dict[str, Any] = {
        "studies": len(pairs),
        "unpaired": len(candidate) + len(baseline) - 2 * len(pairs),
        "resamples": resamples,
        "overall": _paired_metrics(pairs, resamples=resamples, seed=seed),
        "flags": _flag_changes(pairs),
        "strata": {},
    }
    notable = [f"overall: {line}" for line in _excluding_zero(out["overall"])]
    for attribute in strata:
        table = {}
        for value, members in _stratum_groups(pairs, attribute, lambda pair: pair[0]):
            table[value] = _paired_metrics(members, resamples=resamples, seed=seed)
            notable += [f"{attribute}={value}: {line}" for line in _excluding_zero(table[value])]
        out["strata"][attribute] = table
    out["differences_excluding_zero"] = notable
    return out


def _paired_metrics(pairs: Sequence[Pair], *, resamples: int, seed: int) -> dict[str, Any]:
    labels = np.array([c.positive for c, _ in pairs], dtype=bool)
    scores = {"candidate": np.array([c.probability for c, _ in pairs], dtype=float),
              "baseline": np.array([b.probability for _, b in pairs], dtype=float)}
    flags = {"candidate": np.array([c.flagged for c, _ in pairs], dtype=bool),
             "baseline": np.array([b.flagged for _, b in pairs], dtype=bool)}
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)

    def measures(p: np.ndarray, n: np.ndarray) -> dict[str, dict[str, float]]:
        values: dict[str, dict[str, float]] = {"auc": {}, "sensitivity": {}, "specificity": {}}
        for model in ("candidate", "baseline"):
            s, f = scores[model], flags[model]
            values["auc"][model] = _auc_of(s[p], s[n]) if p.size and n.size else math.nan
            values["sensitivity"][model] = float(f[p].mean()) if p.size else math.nan
            values["specificity"][model] = float(1 - f[n].mean()) if n.size else math.nan
        return values

    point = measures(pos, neg)
    rng = np.random.default_rng(seed)
    differences: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(resamples):
        sample = measures(rng.choice(pos, pos.size), rng.choice(neg, neg.size))
        for name, v in sample.items():
            differences[name].append(v["candidate"] - v["baseline"])
    out: dict[str, Any] = {"n": len(pairs), "positives": int(pos.size)}
    for name, v in point.items():
        diff = v["candidate"] - v["baseline"]
        lo, hi = ((math.nan, math.nan) if math.isnan(diff)
                  else np.percentile(differences[name], [2.5, 97.5]))
        out[name] = {"baseline": _r4(v["baseline"]), "candidate": _r4(v["candidate"]),
                     "difference": _r4(diff), "ci95": [_r4(float(lo)), _r4(float(hi))]}
    return out


def _flag_changes(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    """Positives caught by both/neither/only one model; negatives flagged likewise."""
    out = {}
    for kind, positive in (("positives", True), ("negatives", False)):
        group = [(c.flagged, b.flagged) for c, b in pairs if c.positive is positive]
        out[kind] = {"both": sum(c and b for c, b in group),
                     "candidate_only": sum(c and not b for c, b in group),
                     "baseline_only": sum(b and not c for c, b in group),
                     "neither": sum(not c and not b for c, b in group)}
    return out


def _excluding_zero(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("auc", "sensitivity", "specificity"):
        m = metrics[name]
        lo, hi = m["ci95"]
        if lo is not None and hi is not None and (lo > 0 or hi < 0):
            lines.append(f"{name} {m['baseline']:.3f} -> {m['candidate']:.3f} "
                         f"({m['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}])")
    return lines


def _r4(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path,
             title: str) -> None:
    """ROC curves (name → fpr, tpr, auc) as a PNG."""
    import matplotlib  # noqa: PLC0415 - only evaluation needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.text(0.99, 0.02, "synthetic phantoms - not for clinical use", fontsize=6,
            ha="right", va="bottom", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
