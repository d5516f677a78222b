"""Population drift of each detector's inputs, scores and flag rate against its reference window.

What is compared
    Per detector and current model version (that of its newest record), the *reference* (the
    first ``drift_reference_size`` records with outcome ``analysed`` or ``ood``, i.e. studies
    the detector looked at) against the *window* (the newest ``drift_window_size`` such
    records):

    * every numeric input (:data:`NUMERIC_INPUTS`): PSI and two-sample KS;
    * categorical inputs (:data:`CATEGORICAL_INPUTS`: vendor, kernel, slice-thickness band):
      chi-square of the window's counts against the reference's smoothed shares (half a study
      added to every cell); categories the reference saw fewer than 5 times and those it never
      saw share one "other" cell, so a new vendor or kernel counts, and sparse cells do not
      make the statistic heavy-tailed;
    * the output score ``probability`` (PSI and KS), and, for detectors with an OOD gate, the
      OOD rate (chi-square on analysed/ood) and ``ood_score`` (PSI and KS).

    PSI bins are the reference's deciles (equal values merged), each side smoothed with half a
    study per bin, so an empty bin never gives an infinite PSI.

Thresholds
    Calibrated by bootstrap on the reference, not fixed bands: ``drift_bootstrap_samples``
    times, a pseudo-window of ``drift_window_size`` and a pseudo-reference of the reference's
    size are drawn with replacement from the reference and the statistic is computed between
    them.  (Drawing both sides matters: a window compared with the *fixed* reference also sees
    the reference's own sampling noise; calibrating against the full reference alone gives
    thresholds ~1.4x too low for 200 vs 500 studies and false alarms.)  The threshold of each
    test is the ``1 - drift_false_alarm_rate / n_tests`` quantile (Bonferroni across one
    detector's tests).  That quantile is far beyond what 1,000 samples resolve, so it is
    extrapolated from the bootstrap's 99th percentile: by the Kolmogorov tail
    ``P(D > d) ~ 2 exp(-2 n d^2)`` for KS; for PSI and chi-square by the larger of a scaled
    chi-square fitted by moments (Wilson-Hilferty quantiles) and an exponential tail through
    the 90th and 99th percentiles; never below the bootstrap maximum.
    Calibrations are cached in-process per (detector, model version, reference content,
    window size).

Flag-rate rule
    Per UTC day, the share of the detector's analysed studies that were flagged (reference
    studies excluded) against the reference's flag rate.  A day alarms when it has at least
    :data:`FLAG_RATE_MIN_STUDIES` studies *and* its Wilson 95% interval does not overlap the
    reference's Wilson 95% interval.  Only the last *completed* day can alarm (one look per
    day; the current day is reported but never alarms).  With the rate unchanged this fires on
    fewer than 1 % of days (exact binomial, reference 500 studies, rates 0.1-0.5, 50+ studies a
    day; 0.15 % at 200 a day), where "the day's rate is outside the reference's 95% interval"
    would fire on 20-50 % of days.

Everything is numpy (scipy is not in the service image; with bootstrap thresholds no p-values
are needed).  No drift library: alibi-detect is BSL-licensed and pins numpy<2, whylogs'
vendor is closing, TorchDrift is dormant since 2021, NannyML and Evidently are heavy and send
telemetry by default.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import sqlalchemy as sa

from triage.analyses import AnalysisRecord, Outcome, detectors, earliest, latest_version, recent
from triage.config import Settings
from triage.db import Database, analyses
from triage.performance import wilson_interval

#: Numeric inputs (same keys as ``models.inputs.NUMERIC_INPUTS``; triage does not import models).
NUMERIC_INPUTS: tuple[str, ...] = (
    "kvp", "slice_thickness_mm", "pixel_spacing_mm", "n_slices", "hu_p05", "hu_median",
    "hu_p95", "soft_tissue_hu", "bone_fraction", "noise_hu",
)
#: Categorical inputs: ``models.inputs.CATEGORICAL_INPUTS`` plus the slice-thickness band (a
#: protocol choice from a small set, where a new value is the shift that matters).
CATEGORICAL_INPUTS: tuple[str, ...] = ("manufacturer", "kernel", "thickness_band")
PSI_BINS = 10
#: Pseudo-count added to every PSI bin and seen category (half a study).
SMOOTHING = 0.5
#: Categories seen fewer times than this in the reference share the "other" cell.
RARE_COUNT = 5
#: A numeric test needs this many values on each side.
MIN_VALUES = 20
#: A day needs this many analysed studies before its flag rate can alarm.
FLAG_RATE_MIN_STUDIES = 50
_TAIL_ANCHOR = 10  # bootstrap samples above the anchor quantile of the tail extrapolation
_OUTCOMES = (Outcome.ANALYSED, Outcome.OOD)


class DriftState(enum.StrEnum):
    COLLECTING_REFERENCE = "collecting_reference"  # fewer than drift_reference_size records
    INSUFFICIENT_WINDOW = "insufficient_window"  # the window would overlap the reference
    OK = "ok"
    DRIFT = "drift"  # some test or the flag rate alarms


class TestKind(enum.StrEnum):
    PSI = "psi"
    KS = "ks"
    CHI2 = "chi2"


@dataclass(frozen=True, slots=True)
class DriftTest:
    """One statistic of the window against the reference.

    ``name`` is ``input:<key>``, ``score:probability``, ``ood:rate`` or ``ood:score`` (bounded:
    usable as a metric label together with ``kind``); ``alarm`` is ``statistic > threshold``.
    """

    name: str
    kind: TestKind
    statistic: float
    threshold: float
    alarm: bool


@dataclass(frozen=True, slots=True)
class FlagRateDay:
    """Flagged share of one UTC day's analysed studies (reference studies excluded)."""

    day: str  # ISO date, UTC
    complete: bool  # a finished day; only those can alarm
    studies: int
    flagged: int
    rate: float | None
    ci_low: float | None  # Wilson 95 %
    ci_high: float | None
    alarm: bool


@dataclass(frozen=True, slots=True)
class FlagRate:
    """Daily flag rate against the reference's (see the module docstring for the rule)."""

    reference_studies: int
    reference_rate: float | None
    reference_ci_low: float | None
    reference_ci_high: float | None
    min_studies: int
    days: tuple[FlagRateDay, ...]  # the last completed UTC day, then the current one
    alarm: bool


@dataclass(frozen=True, slots=True)
class DetectorDrift:
    """Drift of one detector's current model version; ``alarm`` is any test or the flag rate."""

    detector: str
    model_version: str
    state: DriftState
    reference_size: int  # records in the reference (so far)
    window_size: int  # records in the window (0 unless the reference is full)
    tests: tuple[DriftTest, ...]  # empty unless the state is ok or drift
    flag_rate: FlagRate | None  # None while the reference is being collected
    alarm: bool


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Drift of every detector that has records; ``alarm`` is any detector's alarm."""

    evaluated_at: float
    detectors: tuple[DetectorDrift, ...]
    alarm: bool


# --- statistics -------------------------------------------------------------------------------

def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (observed values, duplicates merged)."""
    levels = np.arange(1, bins) / bins
    return np.unique(np.quantile(np.asarray(reference, dtype=float), levels, method="lower"))


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)


def _psi_counts(ref: np.ndarray, win: np.ndarray) -> np.ndarray:
    """PSI from bin counts (last axis), both sides smoothed with :data:`SMOOTHING`."""
    k = ref.shape[-1]
    p = (ref + SMOOTHING) / (ref.sum(axis=-1, keepdims=True) + SMOOTHING * k)
    q = (win + SMOOTHING) / (win.sum(axis=-1, keepdims=True) + SMOOTHING * k)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def psi(reference: Sequence[float] | np.ndarray, sample: Sequence[float] | np.ndarray, *,
        edges: np.ndarray | None = None) -> float:
    """Population stability index of ``sample`` against ``reference`` (reference-decile bins)."""
    ref = np.asarray(reference, dtype=float)
    edges = quantile_edges(ref) if edges is None else edges
    win = np.asarray(sample, dtype=float)
    return float(_psi_counts(_bin_counts(ref, edges), _bin_counts(win, edges)))


def ks_statistic(reference: Sequence[float] | np.ndarray,
                 sample: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    ref = np.sort(np.asarray(reference, dtype=float))
    win = np.sort(np.asarray(sample, dtype=float))
    points = np.concatenate([ref, win])
    f_ref = np.searchsorted(ref, points, side="right") / ref.size
    f_win = np.searchsorted(win, points, side="right") / win.size
    return float(np.max(np.abs(f_ref - f_win)))


def _expected(ref_counts: np.ndarray) -> np.ndarray:
    """Smoothed category shares (last axis)."""
    pseudo = ref_counts + SMOOTHING
    return np.asarray(pseudo / pseudo.sum(axis=-1, keepdims=True))


def _chi2_counts(expected: np.ndarray, win: np.ndarray) -> np.ndarray:
    n = win.sum(axis=-1, keepdims=True)
    e = expected * n
    return np.asarray(np.sum((win - e) ** 2 / e, axis=-1))


def _cells(reference: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """Cell index of each common category (the last cell pools the rare and unseen ones) and
    the reference's counts per cell."""
    counts = Counter(reference)
    common = sorted(c for c, n in counts.items() if n >= RARE_COUNT)
    index = {c: i for i, c in enumerate(common)}
    other = sum(n for c, n in counts.items() if c not in index)
    return index, np.array([counts[c] for c in common] + [other], dtype=float)


def chi_square(reference: Sequence[str], sample: Sequence[str]) -> float:
    """Chi-square of ``sample``'s category counts against ``reference``'s smoothed shares.

    Categories seen fewer than :data:`RARE_COUNT` times in the reference and categories it
    never saw share one "other" cell; every cell is smoothed with :data:`SMOOTHING` studies.
    """
    index, ref = _cells(reference)
    win = np.zeros(ref.size)
    for value in sample:
        win[index.get(value, ref.size - 1)] += 1
    return float(_chi2_counts(_expected(ref), win))


def chi2_quantile(df: float, level: float) -> float:
    """Quantile of the chi-square distribution (Wilson-Hilferty; conservative for df < 3)."""
    z = NormalDist().inv_cdf(level)
    h = 2.0 / (9.0 * df)
    return float(df * max(1.0 - h + z * math.sqrt(h), 0.0) ** 3)


def tail_threshold(stats: np.ndarray, alpha: float, kind: TestKind) -> float:
    """The ``1 - alpha`` quantile of bootstrap ``stats``, extrapolated where 1/B is too coarse.

    Beyond the resolution of the bootstrap (fewer than :data:`_TAIL_ANCHOR` samples above the
    quantile), the tail is extrapolated from the anchor quantile ``q_a``: KS by the Kolmogorov
    tail ``2 exp(-2 n d^2)``; PSI and chi-square by the larger of a scaled chi-square fitted
    by moments and an exponential tail through the 90th percentile and ``q_a`` (PSI and sparse
    chi-square tails are heavier than chi-square's).  Never below the bootstrap maximum.
    """
    stats = np.sort(np.asarray(stats, dtype=float))
    samples = stats.size
    if alpha * samples >= _TAIL_ANCHOR:
        return float(np.quantile(stats, 1.0 - alpha, method="higher"))
    anchor = _TAIL_ANCHOR / samples
    q = float(np.quantile(stats, 1.0 - anchor, method="higher"))
    if kind is TestKind.KS:
        return max(q * math.sqrt(math.log(2.0 / alpha) / math.log(2.0 / anchor)),
                   float(stats[-1]))
    mean, var = float(stats.mean()), float(stats.var())
    df = min(max(2.0 * mean * mean / var, 1.0), 1e4) if var > 0 else 1e4
    moments = q * chi2_quantile(df, 1.0 - alpha) / chi2_quantile(df, 1.0 - anchor)
    low = min(0.5, 10.0 * anchor)  # 0.1 with 1,000 samples
    q_low = float(np.quantile(stats, 1.0 - low))
    exponential = q + (q - q_low) / math.log(low / anchor) * math.log(anchor / alpha)
    return max(moments, exponential, float(stats[-1]))


def _counts_by_row(codes: np.ndarray, size: int) -> np.ndarray:
    """Per-row bincount of a (B, m) code matrix into (B, size)."""
    rows = codes.shape[0]
    flat = codes + (np.arange(rows) * size)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * size).reshape(rows, size).astype(float)


def bootstrap_numeric(reference: np.ndarray, window_size: int, samples: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """PSI and KS between ``samples`` pseudo-windows and pseudo-references, both drawn with
    replacement from ``reference``."""
    ref = np.asarray(reference, dtype=float)
    edges = quantile_edges(ref)
    bins = np.searchsorted(edges, ref, side="right")
    unique, rank = np.unique(ref, return_inverse=True)
    win_idx = rng.integers(0, ref.size, (samples, window_size))
    ref_idx = rng.integers(0, ref.size, (samples, ref.size))
    psis = _psi_counts(_counts_by_row(bins[ref_idx], edges.size + 1),
                       _counts_by_row(bins[win_idx], edges.size + 1))
    cdf_w = np.cumsum(_counts_by_row(rank[win_idx], unique.size), axis=1) / window_size
    cdf_r = np.cumsum(_counts_by_row(rank[ref_idx], unique.size), axis=1) / ref.size
    return psis, np.max(np.abs(cdf_w - cdf_r), axis=1)


def bootstrap_categorical(reference: Sequence[str], window_size: int, samples: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Chi-square between pseudo-windows drawn from the reference's smoothed shares (so a few
    studies of an unseen category are within the null) and pseudo-references resampled from it."""
    _, ref = _cells(reference)
    pseudo_refs = rng.multinomial(len(reference), ref / ref.sum(), size=samples).astype(float)
    windows = rng.multinomial(window_size, _expected(ref), size=samples).astype(float)
    return _chi2_counts(_expected(pseudo_refs), windows)


def flag_rate_alarm(flagged: int, studies: int, ref_flagged: int, ref_studies: int, *,
                    min_studies: int = FLAG_RATE_MIN_STUDIES) -> bool:
    """The day's and the reference's Wilson 95 % intervals are disjoint (day has enough studies)."""
    if studies < min_studies or ref_studies <= 0:
        return False
    low, high = wilson_interval(flagged, studies)
    ref_low, ref_high = wilson_interval(ref_flagged, ref_studies)
    return high < ref_low or low > ref_high


# --- service -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Prepared:
    """One calibrated test: the reference side and its threshold."""

    name: str
    kind: TestKind
    threshold: float
    numeric: np.ndarray | None  # reference values (numeric tests)
    edges: np.ndarray | None  # PSI bins
    categories: tuple[str, ...]  # reference values (chi-square tests)
    min_window: int


_CALIBRATIONS: dict[tuple[Any, ...], tuple[_Prepared, ...]] = {}
_CALIBRATIONS_LOCK = threading.Lock()
_CALIBRATIONS_MAX = 64


def clear_calibrations() -> None:
    """Forget the cached calibrations (they are rebuilt on the next :func:`evaluate`)."""
    with _CALIBRATIONS_LOCK:
        _CALIBRATIONS.clear()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _extractors(reference: Sequence[AnalysisRecord]) -> list[tuple[str, bool, Any]]:
    """(name, numeric?, row -> value) of every test the reference supports."""
    out: list[tuple[str, bool, Any]] = [
        (f"input:{key}", True, lambda r, k=key: _number(r.inputs.get(k))) for key in NUMERIC_INPUTS
    ]
    out += [(f"input:{key}", False, lambda r, k=key: str(r.inputs.get(k) or "unknown"))
            for key in CATEGORICAL_INPUTS if any(key in r.inputs for r in reference)]
    out.append(("score:probability", True, lambda r: _number(r.probability)))
    if sum(r.ood_score is not None for r in reference) * 2 >= len(reference):
        out.append(("ood:rate", False, lambda r: r.outcome.value))
        out.append(("ood:score", True, lambda r: _number(r.ood_score)))
    return out


def _calibrate(key: tuple[Any, ...], reference: Sequence[AnalysisRecord], window_size: int,
               settings: Settings) -> tuple[_Prepared, ...]:
    rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
    samples = settings.drift_bootstrap_samples
    drafts: list[tuple[str, TestKind, np.ndarray, _Prepared]] = []
    for name, numeric, get in _extractors(reference):
        values = [v for v in (get(r) for r in reference) if v is not None]
        if len(values) < max(MIN_VALUES, len(reference) // 2):
            continue
        window = max(MIN_VALUES, round(window_size * len(values) / len(reference)))
        if numeric:
            ref = np.asarray(values, dtype=float)
            psis, kss = bootstrap_numeric(ref, window, samples, rng)
            edges = quantile_edges(ref)
            for kind, stats in ((TestKind.PSI, psis), (TestKind.KS, kss)):
                drafts.append((name, kind, stats,
                               _Prepared(name, kind, 0.0, ref, edges, (), window // 2)))
        else:
            stats = bootstrap_categorical(values, window, samples, rng)
            drafts.append((name, TestKind.CHI2, stats, _Prepared(
                name, TestKind.CHI2, 0.0, None, None, tuple(values), window // 2)))
    alpha = settings.drift_false_alarm_rate / max(len(drafts), 1)
    return tuple(
        _Prepared(p.name, p.kind, tail_threshold(stats, alpha, kind), p.numeric, p.edges,
                  p.categories, p.min_window)
        for _, kind, stats, p in drafts
    )


def _calibration(detector: str, version: str, reference: Sequence[AnalysisRecord], window_size: int,
                 settings: Settings) -> tuple[_Prepared, ...]:
    content = repr([(r.job_id, r.analysed_at, r.outcome.value, r.probability, r.ood_score,
                     sorted(r.inputs.items())) for r in reference])
    key = (detector, version, len(reference), window_size, settings.drift_false_alarm_rate,
           settings.drift_bootstrap_samples, zlib.crc32(content.encode()))
    with _CALIBRATIONS_LOCK:
        cached = _CALIBRATIONS.get(key)
    if cached is not None:
        return cached
    prepared = _calibrate(key, reference, window_size, settings)
    with _CALIBRATIONS_LOCK:
        while len(_CALIBRATIONS) >= _CALIBRATIONS_MAX:
            _CALIBRATIONS.pop(next(iter(_CALIBRATIONS)))
        _CALIBRATIONS[key] = prepared
    return prepared


def _run_tests(prepared: Sequence[_Prepared], reference: Sequence[AnalysisRecord],
               window: Sequence[AnalysisRecord]) -> tuple[DriftTest, ...]:
    getters = {name: get for name, _, get in _extractors(reference)}
    out = []
    for test in prepared:
        values = [v for v in (getters[test.name](r) for r in window) if v is not None]
        if len(values) < max(test.min_window, 1):
            continue  # too few values in the window (e.g. inputs not described)
        ref = test.numeric if test.numeric is not None else np.empty(0)
        if test.kind is TestKind.CHI2:
            stat = chi_square(test.categories, values)
        elif test.kind is TestKind.PSI:
            stat = psi(ref, values, edges=test.edges)
        else:
            stat = ks_statistic(ref, values)
        out.append(DriftTest(test.name, test.kind, round(stat, 6), round(test.threshold, 6),
                             stat > test.threshold))
    return tuple(out)


def _flag_rate(db: Database, detector: str, version: str, reference: Sequence[AnalysisRecord],
               now: float) -> FlagRate:
    ref = [r.flagged for r in reference
           if r.outcome is Outcome.ANALYSED and r.flagged is not None]
    ref_n, ref_k = len(ref), sum(ref)
    ref_ci = wilson_interval(ref_k, ref_n) if ref_n else (None, None)
    in_reference = {r.job_id for r in reference}
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0,
                                                           microsecond=0)
    days = []
    for start, complete in ((today - dt.timedelta(days=1), True), (today, False)):
        end = start + dt.timedelta(days=1)
        query = sa.select(analyses.c.job_id, analyses.c.flagged).where(
            analyses.c.detector == detector, analyses.c.model_version == version,
            analyses.c.outcome == Outcome.ANALYSED.value, analyses.c.flagged.is_not(None),
            analyses.c.analysed_at >= start.timestamp(),
            analyses.c.analysed_at < min(end.timestamp(), now + 1e-6))
        with db.read() as conn:
            flags = [bool(f) for j, f in conn.execute(query) if j not in in_reference]
        n, k = len(flags), sum(flags)
        low, high = wilson_interval(k, n) if n else (None, None)
        alarm = complete and flag_rate_alarm(k, n, ref_k, ref_n)
        days.append(FlagRateDay(start.date().isoformat(), complete, n, k,
                                k / n if n else None, low, high, alarm))
    return FlagRate(ref_n, ref_k / ref_n if ref_n else None, ref_ci[0], ref_ci[1],
                    FLAG_RATE_MIN_STUDIES, tuple(days), any(d.alarm for d in days))


def evaluate_detector(db: Database, settings: Settings, detector: str, *,
                      now: float | None = None) -> DetectorDrift | None:
    """Drift of ``detector``'s current model version; ``None`` when it has no analysed record."""
    now = time.time() if now is None else now
    version = latest_version(db, detector, _OUTCOMES)
    if version is None:
        return None
    reference = earliest(db, detector, limit=settings.drift_reference_size, outcomes=_OUTCOMES,
                         model_version=version)
    if len(reference) < settings.drift_reference_size:
        return DetectorDrift(detector, version, DriftState.COLLECTING_REFERENCE, len(reference),
                             0, (), None, False)
    flag_rate = _flag_rate(db, detector, version, reference, now)
    window = recent(db, detector, limit=settings.drift_window_size, outcomes=_OUTCOMES,
                    model_version=version)
    in_reference = {r.job_id for r in reference}
    tests: tuple[DriftTest, ...] = ()
    if len(window) < settings.drift_window_size or any(r.job_id in in_reference for r in window):
        state = DriftState.INSUFFICIENT_WINDOW
    else:
        prepared = _calibration(detector, version, reference, settings.drift_window_size,
                                settings)
        tests = _run_tests(prepared, reference, window)
        state = DriftState.OK
    alarm = flag_rate.alarm or any(t.alarm for t in tests)
    return DetectorDrift(detector, version, DriftState.DRIFT if alarm else state, len(reference),
                         len(window), tests, flag_rate, alarm)


def evaluate(db: Database, settings: Settings, *, now: float | None = None) -> DriftReport:
    """Drift of every detector with records (see the module docstring for what is compared).

    Parameters
    ----------
    db
        The index database (table ``analyses``).
    settings
        ``drift_reference_size``, ``drift_window_size``, ``drift_false_alarm_rate`` and
        ``drift_bootstrap_samples`` are used.  Callers that export on every scrape should keep
        the report for ``drift_cache_s`` seconds; the calibration is cached here.
    now
        Epoch seconds (the current UTC day for the flag rate); default the current time.

    Returns
    -------
    DriftReport
        One :class:`DetectorDrift` per detector, in name order.
    """
    now = time.time() if now is None else now
    results = [evaluate_detector(db, settings, name, now=now) for name in detectors(db)]
    found = tuple(r for r in results if r is not None)
    return DriftReport(now, found, any(r.alarm for r in found))
