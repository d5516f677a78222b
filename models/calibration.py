"""``triage models calibrate-ood``: fit and calibrate each detector's OOD reference.

Fit on training-seed phantoms, calibrate the thresholds on validation-seed phantoms (never
seen by the fit), then check on held-out seeds: the in-distribution rate of "AI not
applicable", and the rate on shifted inputs (a brighter HU calibration, the other body region
with its body-part tag removed).  Writes ``weights/ood.npz``, its sha256 and the figures into
``metadata.json`` and the model card.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from typing import Any

import numpy as np
import torch

import models
from models.detector import Detector, NotEligibleError, sha256_file
from models.inputs import intensity_histogram
from models.ood import OODReference, fit_reference
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.volume import Volume

REGION_OF = {"hemorrhage": Region.HEAD, "stroke": Region.HEAD, "cspine_fracture": Region.CSPINE}
OTHER = {Region.HEAD: Region.CSPINE, Region.CSPINE: Region.HEAD}

#: Shifted variants of held-out studies that the gate should call out of distribution.
SHIFTS: dict[str, Callable[[Volume], Volume]] = {
    "hu_offset_+50": lambda v: dataclasses.replace(v, hu=v.hu + 50.0),
    "hu_offset_+150": lambda v: dataclasses.replace(v, hu=v.hu + 150.0),
}

_WORKER: dict[str, Any] = {}

Sample = tuple[np.ndarray, np.ndarray] | None  # features, histogram; None = not eligible


def _init(names: Sequence[str]) -> None:
    torch.set_num_threads(1)
    _WORKER["detectors"] = {n: models.load(n) for n in names}


def _describe(detector: Detector, volume: Volume) -> Sample:
    try:
        finding = detector(volume)
    except NotEligibleError:
        return None
    return finding.features.astype(np.float64), intensity_histogram(volume)


def _one(job: tuple[int, str, bool]) -> dict[str, dict[str, Sample]]:
    seed, region, check = job
    detectors: dict[str, Detector] = _WORKER["detectors"]
    volume = sample_volume(seed, Region(region))
    out: dict[str, dict[str, Sample]] = {}
    for name, detector in detectors.items():
        variants = {"plain": _describe(detector, volume)}
        if check:
            for shift, apply in SHIFTS.items():
                variants[shift] = _describe(detector, apply(volume))
            other = sample_volume(seed, OTHER[Region(region)])
            meta = {**other.meta, "body_part_examined": ""}
            variants["other_region"] = _describe(detector, dataclasses.replace(other, meta=meta))
        out[name] = variants
    return out


def sample_volume(seed: int, region: Region) -> Volume:
    from models.synthetic.generate import generate  # noqa: PLC0415

    return generate(sample_case(seed, region)).volume()


def _collect(names: Sequence[str], region: Region, seeds: Sequence[int], *, check: bool,
             workers: int, progress: Callable[[int, int], None] | None
             ) -> dict[str, list[dict[str, Sample]]]:
    per_detector: dict[str, list[dict[str, Sample]]] = {n: [] for n in names}
    jobs = [(s, region.value, check) for s in seeds]
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init,
                             initargs=(tuple(names),)) as pool:
        for done, result in enumerate(pool.map(_one, jobs), 1):
            for name in names:
                per_detector[name].append(result[name])
            if progress is not None:
                progress(done, len(jobs))
    return per_detector


def _stack(samples: Sequence[dict[str, Sample]], variant: str) -> tuple[np.ndarray, np.ndarray]:
    got = [s[variant] for s in samples if s.get(variant) is not None]
    feats = np.stack([g[0] for g in got if g is not None])
    hists = np.stack([g[1] for g in got if g is not None])
    return feats, hists


def _rate(reference: OODReference, samples: Sequence[dict[str, Sample]],
          variant: str) -> dict[str, Any]:
    scored = [reference.score(s[variant][0], s[variant][1]).score  # type: ignore[index]
              for s in samples if s.get(variant) is not None]
    refused = sum(1 for s in samples if variant in s and s[variant] is None)
    return {
        "studies": len(scored),
        "not_eligible": refused,
        "ood_rate": round(float(np.mean(np.asarray(scored) > 1.0)), 4) if scored else None,
        "median_score": round(float(np.median(scored)), 3) if scored else None,
    }


def calibrate(names: Sequence[str], *, fit_cases: int, calibration_cases: int,
              check_cases: int, workers: int, quantile: float,
              progress: Callable[[str], Callable[[int, int], None]] | None = None
              ) -> dict[str, dict[str, Any]]:
    """Fit, calibrate and check the OOD reference of each detector in ``names``.

    Writes each detector's ``weights/ood.npz`` and the ``ood`` section of its card.
    """
    from models.training import TEST_SEEDS, TRAIN_SEEDS, VALIDATION_SEEDS  # noqa: PLC0415

    summaries: dict[str, dict[str, Any]] = {}
    for region in sorted({REGION_OF[n] for n in names}, key=lambda r: r.value):
        group = [n for n in names if REGION_OF[n] is region]
        started = time.monotonic()

        def prog(label: str, region: Region = region) -> Callable[[int, int], None] | None:
            return progress(f"{region.value} {label}") if progress else None

        fit = _collect(group, region, range(TRAIN_SEEDS, TRAIN_SEEDS + fit_cases),
                       check=False, workers=workers, progress=prog("fit"))
        cal = _collect(group, region,
                       range(VALIDATION_SEEDS, VALIDATION_SEEDS + calibration_cases),
                       check=False, workers=workers, progress=prog("calibration"))
        chk = _collect(group, region, range(TEST_SEEDS, TEST_SEEDS + check_cases),
                       check=True, workers=workers, progress=prog("check"))
        for name in group:
            reference, summary = fit_reference(*_stack(fit[name], "plain"),
                                               *_stack(cal[name], "plain"), quantile=quantile)
            card = models.card(name)
            path = card.folder / "weights" / "ood.npz"
            path.write_bytes(reference.to_bytes())
            checks = {"held_out_in_distribution": _rate(reference, chk[name], "plain")}
            for variant in (*SHIFTS, "other_region"):
                checks[variant] = _rate(reference, chk[name], variant)
            section = {
                "file": "weights/ood.npz",
                "sha256": sha256_file(path),
                "method": "max(Mahalanobis distance of the feature vector (Ledoit-Wolf "
                          "shrunk covariance, standardised features) / its threshold, "
                          "Jensen-Shannon distance of the body HU histogram / its threshold)",
                "fit": f"synthetic phantoms, training seeds {TRAIN_SEEDS}-"
                       f"{TRAIN_SEEDS + fit_cases - 1}",
                "calibration": f"synthetic phantoms, validation seeds {VALIDATION_SEEDS}-"
                               f"{VALIDATION_SEEDS + calibration_cases - 1}",
                "checks_on": f"held-out seeds {TEST_SEEDS}-{TEST_SEEDS + check_cases - 1}",
                **summary,
                "checks": checks,
                "date": date.today().isoformat(),
                "minutes": round((time.monotonic() - started) / 60, 1),
            }
            meta_path = card.folder / "metadata.json"
            data = json.loads(meta_path.read_text())
            data["ood"] = section
            meta_path.write_text(json.dumps(data, indent=2) + "\n")
            summaries[name] = section
    return summaries
