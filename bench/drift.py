"""Population drift monitoring on synthetic head CT: false alarms and time to detect a shift.

A reference of 500 unshifted studies, then 2,000 further unshifted studies evaluated as a
rolling window every 25 studies (:func:`triage.drift.evaluate` on a real SQLite index, default
drift settings): every evaluation that alarms is a false alarm.  Then, per shift scenario,
from the same reference and 200 unshifted studies, a stream where the shift starts: the number
of studies after its start until the first alarm (evaluated every 25 studies).

Scenarios (each shifted study is the same seed as the unshifted one it replaces):

* ``kernel``: a reconstruction kernel never seen before, in 20 % of studies;
* ``thickness``: 3.75 mm slices (a thick-slice protocol the reference never had; thicker than
  5 mm the detectors refuse as not eligible, so such studies never reach drift) in 20 %;
* ``vendor``: a scanner of a new vendor (``HELD_OUT_VENDORS``) in 20 %;
* ``hu_offset``: a brighter HU calibration (+``--hu-offset`` HU) in every study.

Studies are real phantoms (:mod:`models.synthetic`) described by
:func:`models.inputs.describe_inputs` and scored by the ``hemorrhage`` detector on CPU.  To
fit one core in ~25 minutes they are rendered at a 128 x 128 matrix with at most 20 slices
(the detector's scores are then lower-quality than on its 256-matrix validation, the same for
reference and window).  Descriptions and scores are cached in ``var/bench-drift/`` so a
rerun only computes what it lacks.

Usage::

    OMP_NUM_THREADS=1 python bench/drift.py [--json var/bench-drift/result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import models
from models.detector import NotEligibleError
from models.inputs import describe_inputs
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.synthetic.vendors import HELD_OUT_VENDORS
from triage.analyses import AnalysisRecord, Outcome, record
from triage.config import load_settings
from triage.db import Database
from triage.drift import DetectorDrift, evaluate

DETECTOR = "hemorrhage"
SEED0 = 3_000_000
START = 1_735_689_600.0  # 2025-01-01T00:00Z
SPACING_S = 864.0  # 100 studies a day
SCENARIOS = ("kernel", "thickness", "vendor", "hu_offset")


def overrides(scenario: str, seed: int, hu_offset: float) -> dict[str, Any]:
    """Acquisition overrides of a shifted study."""
    if scenario == "kernel":
        return {"kernel": "Hr40f", "kernel_sharpness": 0.6}
    if scenario == "thickness":
        return {"slice_thickness_mm": 3.75}
    if scenario == "vendor":
        vendor = HELD_OUT_VENDORS[0]
        kernels = vendor.head_kernels if seed % 5 else vendor.bone_kernels
        kernel = kernels[seed % len(kernels)]
        return {"manufacturer": vendor.manufacturer, "model": vendor.models[seed % 2],
                "kernel": kernel.name, "kernel_sharpness": kernel.sharpness,
                "signed_pixels": vendor.signed_pixels}
    if scenario == "hu_offset":
        return {"hu_offset": hu_offset}
    raise ValueError(scenario)


class Studies:
    """Generated, described and scored studies, cached as JSON lines per configuration."""

    def __init__(self, cache: Path, args: argparse.Namespace) -> None:
        self.args = args
        tag = f"m{args.matrix}-s{args.max_slices}-{'scored' if args.scores else 'noscore'}"
        self.path = cache / f"studies-{tag}.jsonl"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.rows[row["key"]] = row
        self.detector = models.load(DETECTOR) if args.scores else None
        self.generated = 0
        self.seconds = Counter[str]()

    def get(self, seed: int, scenario: str = "none") -> dict[str, Any]:
        hu = self.args.hu_offset if scenario == "hu_offset" else 0.0
        key = f"{seed}:{scenario}:{hu:g}"
        if key in self.rows:
            return self.rows[key]
        started = time.perf_counter()
        extra = overrides(scenario, seed, hu) if scenario != "none" else {}
        spec = sample_case(seed, Region.HEAD, max_slices=self.args.max_slices,
                           matrix=self.args.matrix, **extra)
        volume = generate(spec).volume()
        inputs = describe_inputs(volume)
        described = time.perf_counter()
        row: dict[str, Any] = {"key": key, "outcome": "analysed", "inputs": inputs,
                               "probability": None, "flagged": None, "ood_score": None}
        if self.detector is not None:
            try:
                finding = self.detector(volume)
            except NotEligibleError:
                row["outcome"] = "not_eligible"
            else:
                row.update(probability=finding.probability, flagged=finding.flagged,
                           model_version=finding.model_version)
                if finding.ood is not None:
                    row["ood_score"] = finding.ood.score
                    if finding.out_of_distribution:
                        row["outcome"] = "ood"
        self.seconds["generate_describe"] += described - started
        self.seconds["detector"] += time.perf_counter() - described
        self.generated += 1
        self.rows[key] = row
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


def as_record(row: dict[str, Any], index: int, prefix: str) -> AnalysisRecord:
    return AnalysisRecord(
        job_id=f"{prefix}-{index:06d}", detector=DETECTOR,
        model_version=row.get("model_version") or "bench",
        study_instance_uid=f"2.25.{index}", series_instance_uid=f"2.25.{index}.1", revision=1,
        analysed_at=START + index * SPACING_S, outcome=Outcome(row["outcome"]),
        inputs=row["inputs"], probability=row["probability"],
        threshold=None, flagged=row["flagged"], ood_score=row["ood_score"],
    )


def alarms(drift: DetectorDrift) -> list[str]:
    out = [f"{t.name}/{t.kind} {t.statistic:.3g}>{t.threshold:.3g}" for t in drift.tests
           if t.alarm]
    if drift.flag_rate is not None and drift.flag_rate.alarm:
        out.append("flag_rate")
    return out


def stream(db: Database, settings: Any, rows: list[dict[str, Any]], first: int, *,
           prefix: str, step: int, stop_at_alarm: bool) -> list[tuple[int, list[str]]]:
    """Record ``rows`` from index ``first`` on, evaluating every ``step``: (count, alarms)."""
    out = []
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        record(db, [as_record(r, first + start + i, prefix) for i, r in enumerate(chunk)])
        now = START + (first + start + len(chunk) - 1) * SPACING_S
        report = evaluate(db, settings, now=now)
        found = alarms(report.detectors[0]) if report.detectors else []
        out.append((start + len(chunk), found))
        if found and stop_at_alarm:
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=int, default=500)
    parser.add_argument("--unshifted", type=int, default=2000)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--step", type=int, default=25)
    parser.add_argument("--max-after", type=int, default=1000,
                        help="give up a scenario this many studies after the shift starts")
    parser.add_argument("--hu-offset", type=float, default=10.0)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--max-slices", type=int, default=20)
    parser.add_argument("--no-scores", dest="scores", action="store_false")
    parser.add_argument("--cache", type=Path, default=Path("var/bench-drift"))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    studies = Studies(args.cache, args)
    pool = [studies.get(SEED0 + i) for i in range(args.reference + args.unshifted)]
    pool_generated = studies.generated
    settings = load_settings(data_dir=args.cache / "data", drift_reference_size=args.reference,
                             drift_window_size=args.window)
    result: dict[str, Any] = {
        "settings": {k: getattr(settings, k) for k in (
            "drift_reference_size", "drift_window_size", "drift_false_alarm_rate",
            "drift_bootstrap_samples")},
        "phantoms": {"matrix": args.matrix, "max_slices": args.max_slices,
                     "scores": args.scores, "hu_offset": args.hu_offset},
    }
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/unshifted.sqlite3")
        db.create_schema()
        record(db, [as_record(r, i, "u") for i, r in enumerate(pool[:args.reference])])
        evals = stream(db, settings, pool[args.reference:], args.reference,
                       prefix="u", step=args.step, stop_at_alarm=False)
        db.dispose()
        false = [(n, found) for n, found in evals if found]
        result["unshifted"] = {
            "studies": args.unshifted, "evaluations": len(evals),
            "false_alarm_evaluations": len(false),
            "false_alarms": [{"after": n, "alarms": found} for n, found in false],
        }
        result["scenarios"] = {}
        pre = args.reference + args.window
        for scenario in SCENARIOS:
            shifted = []
            for j in range(args.max_after):
                index = pre + j
                seed = SEED0 + index % len(pool)
                if scenario == "hu_offset" or j % 5 == 4:
                    shifted.append((seed, scenario))
                else:
                    shifted.append((seed, "none"))
            db = Database(f"sqlite:///{tmp}/{scenario}.sqlite3")
            db.create_schema()
            record(db, [as_record(r, i, "s") for i, r in enumerate(pool[:pre])])
            lazy = _Lazy(studies, shifted)
            evals = stream(db, settings, lazy, pre, prefix="s", step=args.step,
                           stop_at_alarm=True)
            db.dispose()
            detected = next(((n, found) for n, found in evals if found), None)
            result["scenarios"][scenario] = {
                "detected_after": detected[0] if detected else None,
                "alarms": detected[1] if detected else [],
                "shifted_share": 1.0 if scenario == "hu_offset" else 0.2,
            }
    result["cost"] = {
        "studies_generated_this_run": studies.generated,
        "pool_generated_this_run": pool_generated,
        "seconds_per_generated_study": {k: round(v / max(studies.generated, 1), 3)
                                        for k, v in studies.seconds.items()},
        "wall_s": round(time.perf_counter() - began, 1),
    }
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


class _Lazy(list[dict[str, Any]]):
    """The scenario's studies, generated only when the stream reaches them."""

    def __init__(self, studies: Studies, keys: list[tuple[int, str]]) -> None:
        super().__init__()
        self.studies, self.keys = studies, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return [self.studies.get(*k) for k in self.keys[item]]
        return self.studies.get(*self.keys[item])


def print_report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(f"Drift bench: reference {s['drift_reference_size']}, window "
          f"{s['drift_window_size']}, false-alarm rate {s['drift_false_alarm_rate']} per "
          f"evaluation, {s['drift_bootstrap_samples']} bootstrap samples")
    p = result["phantoms"]
    print(f"phantoms: head CT, matrix {p['matrix']}, <= {p['max_slices'] + 1} slices, "
          f"detector scores: {'hemorrhage' if p['scores'] else 'none'}")
    u = result["unshifted"]
    print(f"\nunshifted: {u['studies']} studies, {u['evaluations']} evaluations, "
          f"{u['false_alarm_evaluations']} with an alarm (goal: 0)")
    for alarm in u["false_alarms"]:
        print(f"  after {alarm['after']}: {', '.join(alarm['alarms'])}")
    print("\nshift scenario          studies after the shift until the first alarm (goal <= 500)")
    for name, sc in result["scenarios"].items():
        found = sc["detected_after"]
        when = f"{found}" if found is not None else "not detected"
        print(f"  {name:<10} ({sc['shifted_share']:.0%})  {when:>12}   {'; '.join(sc['alarms'])}")
    c = result["cost"]
    print(f"\ncost: {c['studies_generated_this_run']} studies generated this run "
          f"({c['seconds_per_generated_study']} s each), wall {c['wall_s']} s")


if __name__ == "__main__":
    sys.exit(main())
