"""Population drift: statistics, bootstrap thresholds, flag-rate rule, evaluate() on an index."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from models.inputs import CATEGORICAL_INPUTS, NUMERIC_INPUTS, describe_inputs
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.synthetic.vendors import HELD_OUT_VENDORS
from triage import drift
from triage.analyses import AnalysisRecord, Outcome, record
from triage.config import Settings
from triage.db import Database

DAY = 86_400.0
START = 1_735_689_600.0  # 2025-01-01T00:00Z


def test_input_keys_match_the_models_package() -> None:
    assert drift.NUMERIC_INPUTS == NUMERIC_INPUTS
    assert set(CATEGORICAL_INPUTS) <= set(drift.CATEGORICAL_INPUTS)


def test_ks_is_zero_for_identical_samples_and_one_for_disjoint_ones() -> None:
    rng = np.random.default_rng(1)
    sample = rng.normal(size=300)
    assert drift.ks_statistic(sample, sample) == 0.0
    assert drift.ks_statistic(sample, sample + 100) == 1.0
    other = rng.normal(size=300)
    assert drift.ks_statistic(sample, other) < 0.15


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(2)
    reference = rng.normal(size=500)
    values = [drift.psi(reference, rng.normal(loc=shift, size=200))
              for shift in (0.0, 0.25, 0.5, 1.0)]
    assert values == sorted(values)
    assert values[0] < 0.15
    assert values[-1] > 0.5
    assert drift.psi(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_a_discrete_input_uses_merged_bins_and_stays_finite() -> None:
    reference = [120.0] * 400 + [100.0] * 50 + [140.0] * 50
    # deciles 100, 120 (x8), 120: bins below 100, [100, 120), 120 and above
    assert drift.quantile_edges(np.asarray(reference)).tolist() == [100.0, 120.0]
    assert math.isfinite(drift.psi(reference, [80.0] * 200))
    assert drift.psi(reference, [80.0] * 200) > drift.psi(reference, [100.0] * 200) > 0


def test_chi_square_counts_unseen_categories() -> None:
    rng = np.random.default_rng(3)
    vendors = ["GE", "SIEMENS", "TOSHIBA", "Philips"]
    reference = list(rng.choice(vendors, 500))
    same = list(rng.choice(vendors, 200))
    new = list(rng.choice(vendors, 160)) + ["UIH"] * 40
    assert drift.chi_square(reference, same) < 15
    assert drift.chi_square(reference, new) > 1000


def _rates(population: Callable[[int], np.ndarray], alpha: float, windows: int,
           rng: np.random.Generator) -> dict[str, float]:
    reference = population(500)
    psis, kss = drift.bootstrap_numeric(reference, 200, 1000, rng)
    psi_t = drift.tail_threshold(psis, alpha, drift.TestKind.PSI)
    ks_t = drift.tail_threshold(kss, alpha, drift.TestKind.KS)
    fresh = [population(200) for _ in range(windows)]
    return {"psi": float(np.mean([drift.psi(reference, w) > psi_t for w in fresh])),
            "ks": float(np.mean([drift.ks_statistic(reference, w) > ks_t for w in fresh]))}


def test_bootstrap_thresholds_give_about_the_configured_false_alarm_rate() -> None:
    # Fresh unshifted windows from the population (not from the reference) against a reference
    # of 500: at alpha = 0.02 (within the bootstrap's resolution) the rate is about alpha; at
    # 0.001 (extrapolated tail) it is not above a few per thousand.
    rng = np.random.default_rng(4)

    def population(n: int) -> np.ndarray:
        return rng.gamma(3.0, 1.0, n)

    rates = [_rates(population, 0.02, 500, rng) for _ in range(4)]
    for kind in ("psi", "ks"):
        mean = float(np.mean([r[kind] for r in rates]))
        assert 0.005 < mean < 0.06, (kind, mean)
    tail = [_rates(population, 0.001, 1000, rng) for _ in range(2)]
    for kind in ("psi", "ks"):
        assert float(np.mean([r[kind] for r in tail])) <= 0.004


def test_bootstrap_threshold_of_categories_tolerates_one_unseen_study_not_forty() -> None:
    rng = np.random.default_rng(5)
    kernels = [f"K{i}" for i in range(12)]
    reference = list(rng.choice(kernels, 500))
    threshold = drift.tail_threshold(drift.bootstrap_categorical(reference, 200, 1000, rng),
                                     0.001 / 26, drift.TestKind.CHI2)
    one_new = [*rng.choice(kernels, 199), "NEW"]
    forty_new = list(rng.choice(kernels, 160)) + ["NEW"] * 40
    assert drift.chi_square(reference, one_new) < threshold < drift.chi_square(reference,
                                                                              forty_new)


def test_wilson_interval() -> None:
    low, high = drift.wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)
    low, high = drift.wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def _binomial_alarm_probability(p: float, n: int, ref_k: int, ref_n: int) -> float:
    return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)
               if drift.flag_rate_alarm(k, n, ref_k, ref_n))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_flag_rate_rule_rarely_fires_on_an_unchanged_rate(rate: float) -> None:
    ref_n = 500
    ref_k = round(rate * ref_n)
    for n in (50, 100, 200):
        assert _binomial_alarm_probability(rate, n, ref_k, ref_n) < 0.01, n
    # The naive rule (the day's rate outside the reference's interval) fires most days.
    low, high = drift.wilson_interval(ref_k, ref_n)
    naive = sum(math.comb(50, k) * rate**k * (1 - rate) ** (50 - k) for k in range(51)
                if not low <= k / 50 <= high)
    assert naive > 0.2


def test_flag_rate_rule_fires_on_a_real_change_and_needs_enough_studies() -> None:
    assert drift.flag_rate_alarm(55, 100, 150, 500)  # 0.30 -> 0.55
    assert not drift.flag_rate_alarm(31, 100, 150, 500)
    assert not drift.flag_rate_alarm(40, 40, 150, 500)  # every study flagged, but only 40
    assert _binomial_alarm_probability(0.55, 100, 150, 500) > 0.9


# --- evaluate() on a real index ----------------------------------------------------------------

def _settings(make_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    values = {"drift_reference_size": 50, "drift_window_size": 20}
    values.update(overrides)
    return make_settings(**values)


def _drawn_inputs(rng: np.random.Generator) -> dict[str, Any]:
    inputs: dict[str, Any] = {key: float(rng.normal(10, 2)) for key in NUMERIC_INPUTS}
    inputs["kvp"] = float(rng.choice([100.0, 120.0, 140.0], p=[0.2, 0.6, 0.2]))
    inputs["manufacturer"] = str(rng.choice(["GE", "SIEMENS", "TOSHIBA", "Philips"]))
    inputs["kernel"] = str(rng.choice(["SOFT", "STANDARD", "BONE"]))
    inputs["thickness_band"] = str(rng.choice(["1.25 mm", "2.5 mm", "5 mm"]))
    return inputs


def _records(rows: list[tuple[dict[str, Any], float, bool]], *, first: int = 0,
             version: str = "1.0.0", detector: str = "hemorrhage",
             spacing: float = 600.0) -> list[AnalysisRecord]:
    return [
        AnalysisRecord(
            job_id=f"job-{version}-{first + i:05d}", detector=detector, model_version=version,
            study_instance_uid=f"2.25.{first + i}", series_instance_uid=f"2.25.{first + i}.1",
            revision=1, analysed_at=START + (first + i) * spacing, outcome=Outcome.ANALYSED,
            inputs=inputs, probability=probability, threshold=0.5, flagged=flagged,
        )
        for i, (inputs, probability, flagged) in enumerate(rows)
    ]


def _drawn_rows(n: int, rng: np.random.Generator) -> list[tuple[dict[str, Any], float, bool]]:
    rows = []
    for _ in range(n):
        p = float(rng.beta(2, 5))
        rows.append((_drawn_inputs(rng), p, p > 0.5))
    return rows


def test_evaluate_states_follow_the_reference_and_the_window(
        db: Database, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings)
    rng = np.random.default_rng(6)
    record(db, _records(_drawn_rows(49, rng)))
    report = drift.evaluate(db, settings, now=START + DAY)
    (det,) = report.detectors
    assert (det.state, det.reference_size, det.alarm) == ("collecting_reference", 49, False)
    record(db, _records(_drawn_rows(11, rng), first=49))  # 60 rows: window overlaps reference
    det = drift.evaluate(db, settings, now=START + DAY).detectors[0]
    assert det.state == drift.DriftState.INSUFFICIENT_WINDOW
    assert det.tests == ()
    record(db, _records(_drawn_rows(20, rng), first=60))
    report = drift.evaluate(db, settings, now=START + DAY)
    det = report.detectors[0]
    assert det.state == drift.DriftState.OK, [t for t in det.tests if t.alarm]
    names = {(t.name, t.kind) for t in det.tests}
    assert ("input:kvp", "psi") in names and ("input:kvp", "ks") in names
    assert ("input:manufacturer", "chi2") in names and ("score:probability", "ks") in names
    assert all(t.threshold > 0 for t in det.tests)
    # A new model version starts a new reference.
    record(db, _records(_drawn_rows(5, rng), first=80, version="2.0.0"))
    det = drift.evaluate(db, settings, now=START + DAY).detectors[0]
    assert (det.model_version, det.state, det.reference_size) == (
        "2.0.0", "collecting_reference", 5)


def test_evaluate_is_fast_once_calibrated(sqlite_db: Database,
                                          make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()  # reference 500, window 200
    rng = np.random.default_rng(7)
    record(sqlite_db, _records(_drawn_rows(700, rng), spacing=60.0))
    drift.clear_calibrations()
    first = drift.evaluate(sqlite_db, settings, now=START + DAY)
    started = time.perf_counter()
    again = drift.evaluate(sqlite_db, settings, now=START + DAY)
    elapsed = time.perf_counter() - started
    assert again == first
    assert first.detectors[0].state == drift.DriftState.OK
    assert elapsed < 0.5, elapsed


def test_flag_rate_alarms_on_a_completed_day_only(
        db: Database, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings)
    rng = np.random.default_rng(8)
    record(db, _records(_drawn_rows(50, rng), spacing=60.0))  # reference: ~10 % flagged
    flagged_day = [(_drawn_inputs(rng), 0.9, True) for _ in range(60)]
    # 60 studies on 2025-01-02, every one flagged (spacing 1,000 s from 2025-01-02 00:00)
    day_start = START + DAY
    recs = _records(flagged_day, first=0, spacing=1000.0, version="1.0.0")
    recs = [AnalysisRecord(**{**r.row(), "job_id": f"day-{i}", "outcome": Outcome.ANALYSED,
                              "analysed_at": day_start + i * 1000.0}) for i, r in enumerate(recs)]
    record(db, recs)
    during = drift.evaluate(db, settings, now=day_start + 70_000).detectors[0]
    assert during.flag_rate is not None
    today = during.flag_rate.days[-1]
    assert (today.studies, today.flagged, today.complete, today.alarm) == (60, 60, False, False)
    after = drift.evaluate(db, settings, now=day_start + DAY + 10).detectors[0]
    assert after.flag_rate is not None
    assert after.flag_rate.days[0].alarm and after.alarm
    assert after.state == drift.DriftState.DRIFT
    assert after.flag_rate.reference_studies == 50


# --- demonstration on synthetic phantoms (small sample) ------------------------------------------

SEED0 = 4_100_000
REFERENCE, WINDOW = 50, 20


def _phantom(seed: int, **overrides: Any) -> dict[str, Any]:
    spec = sample_case(seed, Region.HEAD, max_slices=16, matrix=64, **overrides)
    return describe_inputs(generate(spec).volume())


@pytest.fixture(scope="module")
def phantoms() -> dict[str, list[dict[str, Any]]]:
    """Input descriptions of real phantoms (64 x 64, 17 slices: fast), generated once."""
    vendor = HELD_OUT_VENDORS[0]
    kernel = vendor.head_kernels[0]
    new_vendor = {"manufacturer": vendor.manufacturer, "model": vendor.models[0],
                  "kernel": kernel.name, "kernel_sharpness": kernel.sharpness}
    unshifted = [_phantom(SEED0 + i) for i in range(REFERENCE + WINDOW)]
    after = list(range(REFERENCE + WINDOW, REFERENCE + 2 * WINDOW))
    return {
        "unshifted": unshifted,
        # the next 20 studies, every fifth one (20 %) from a new vendor's scanner
        "vendor": [_phantom(SEED0 + i, **new_vendor) if i % 5 == 4 else _phantom(SEED0 + i)
                   for i in after],
        # the same 20 studies on a scanner whose HU calibration is 10 HU too bright
        "hu_offset": [_phantom(SEED0 + i, hu_offset=10.0) for i in after],
    }


def _scored(inputs: list[dict[str, Any]], seed: int) -> list[tuple[dict[str, Any], float, bool]]:
    # Scores drawn, not computed: running the detector on every phantom would take minutes.
    rng = np.random.default_rng(seed)
    out = []
    for row in inputs:
        p = float(rng.beta(2, 5))
        out.append((row, p, p > 0.5))
    return out


@pytest.mark.parametrize("scenario", [None, "vendor", "hu_offset"])
def test_synthetic_shift_is_detected_and_unshifted_data_raises_no_alarm(
        db: Database, make_settings: Callable[..., Settings],
        phantoms: dict[str, list[dict[str, Any]]], scenario: str | None) -> None:
    settings = _settings(make_settings)
    unshifted = phantoms["unshifted"]
    record(db, _records(_scored(unshifted[:REFERENCE], 1)))
    window = unshifted[REFERENCE:] if scenario is None else phantoms[scenario]
    record(db, _records(_scored(window, 2), first=REFERENCE))
    det = drift.evaluate(db, settings, now=START + DAY).detectors[0]
    alarms = {t.name for t in det.tests if t.alarm}
    if scenario is None:
        assert det.state == drift.DriftState.OK, alarms
        assert not det.alarm
    elif scenario == "vendor":
        assert det.state == drift.DriftState.DRIFT
        assert "input:manufacturer" in alarms
    else:
        assert det.state == drift.DriftState.DRIFT
        assert alarms & {"input:hu_median", "input:soft_tissue_hu", "input:hu_p05"}, alarms
