"""Runs detectors over studies: held-out synthetic evaluation, site folders, offline analysis."""

from __future__ import annotations

import csv
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from models.detector import Detector, ModelError, NotEligibleError
from models.evaluation import StudyResult, plot_roc, report, roc_auc, roc_curve
from models.inputs import AGE_UNITS_PER_YEAR, years_band
from models.synthetic.generate import generate
from models.synthetic.sampling import SMALL_BLEED_ML, level_name, sample_case
from models.synthetic.spec import Region
from models.volume import Volume, VolumeError, find_series, load_series

logger = logging.getLogger(__name__)

POPULATION_STRATA = ("manufacturer", "age_band", "sex", "slice_thickness")
REGION_OF = {"hemorrhage": Region.HEAD, "stroke": Region.HEAD, "cspine_fracture": Region.CSPINE}
FINDING_OF = {"hemorrhage": "hemorrhage", "stroke": "stroke", "cspine_fracture": "fracture"}


def age_band(age: float | None) -> str:
    return years_band(age) or ""


def size_band(volume_ml: float | None) -> str:
    if volume_ml is None:
        return ""
    return "<5 mL" if volume_ml < SMALL_BLEED_ML else "5-25 mL" if volume_ml <= 25 else ">25 mL"


def parse_age(text: str | None) -> float | None:
    """DICOM AS (``045Y``, ``006M``) or a plain number of years."""
    if not text:
        return None
    match = re.fullmatch(r"(\d+)([DWMY]?)", str(text).strip().upper())
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2) or "Y"
    return value / AGE_UNITS_PER_YEAR[unit]


def synthetic_attributes(labels: dict[str, Any], finding: str) -> tuple[bool, dict[str, str]]:
    """Truth and strata of a synthetic study for the detector of ``finding``."""
    positive = labels["finding"] == finding
    first = labels["findings"][0] if labels["findings"] else {}
    acq = labels["acquisition"]
    attributes = {
        "manufacturer": acq["manufacturer"],
        "age_band": age_band(labels["patient"]["age"]),
        "sex": labels["patient"]["sex"],
        "slice_thickness": f"{acq['slice_thickness_mm']:g} mm",
        "kernel": acq["kernel"],
    }
    if positive:
        attributes["subtype"] = str(first.get("subtype", ""))
        attributes["size_band"] = size_band(first.get("volume_ml"))
        if first.get("level"):
            attributes["level"] = level_name(first["level"])
    else:
        attributes["negative_kind"] = labels["finding"]
    return positive, attributes


# --- held-out synthetic evaluation (worker processes each load the detector once) ----------

_WORKER: dict[str, Any] = {}


def _init_worker(name: str, device: str, roots: tuple[Path | None, ...],
                 flip_average: bool | None) -> None:
    torch.set_num_threads(1)
    _WORKER["detectors"] = [models.load(name, device=device, root=root,
                                        flip_average=flip_average) for root in roots]
    _WORKER["name"] = name


def _evaluate_seed(seed: int) -> tuple[list[StudyResult], str | None, float]:
    """The study of ``seed`` scored by each loaded card (rendered once); the first card's time."""
    name = str(_WORKER["name"])
    detectors: list[Detector] = _WORKER["detectors"]
    case = generate(sample_case(seed, REGION_OF[name]))
    positive, attributes = synthetic_attributes(case.labels, FINDING_OF[name])
    volume = case.volume()
    results: list[StudyResult] = []
    elapsed = 0.0
    for detector in detectors:
        started = time.perf_counter()
        try:
            finding = detector(volume)
        except NotEligibleError as exc:
            return [], f"{case.labels['case_id']}: {exc.reason}", 0.0
        if not results:  # the timing reported is the evaluated (first) card's
            elapsed = time.perf_counter() - started
        results.append(StudyResult(case.labels["study_instance_uid"], positive,
                                   finding.probability, finding.flagged, attributes))
    return results, None, elapsed


def evaluate_synthetic(
    name: str,
    seeds: Sequence[int],
    *,
    workers: int = 2,
    device: str = "cpu",
    root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[StudyResult], list[str], list[float]]:
    """Score held-out synthetic studies; returns results, not-analysed reasons, timings.

    ``root``: evaluate the card in ``root/<name>`` (an experiment) instead of the bundled one.
    """
    scored, skipped, timings = score_synthetic(name, seeds, roots=(root,), workers=workers,
                                               device=device, progress=progress)
    return scored[0], skipped, timings


def score_synthetic(
    name: str,
    seeds: Sequence[int],
    *,
    roots: Sequence[Path | None],
    workers: int = 2,
    device: str = "cpu",
    flip_average: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[list[StudyResult]], list[str], list[float]]:
    """Score held-out synthetic studies with the card in each of ``roots`` (None: bundled).

    Each study is rendered once and scored by every card, so two models are compared on
    the same studies for little more than the time of one evaluation.  Returns one result
    list per root (the same studies, in the same order), the not-analysed reasons, and the
    first card's inference times.  ``flip_average``: as in :func:`models.load`.
    """
    scored: list[list[StudyResult]] = [[] for _ in roots]
    skipped: list[str] = []
    timings: list[float] = []
    with ProcessPoolExecutor(max_workers=max(1, workers), initializer=_init_worker,
                             initargs=(name, device, tuple(roots), flip_average)) as pool:
        for done, (results, reason, elapsed) in enumerate(pool.map(_evaluate_seed, seeds), 1):
            if results:
                for into, result in zip(scored, results, strict=True):
                    into.append(result)
                timings.append(elapsed)
            if reason is not None:
                skipped.append(reason)
            if progress is not None:
                progress(done, len(seeds))
    return scored, skipped, timings


# --- a site's labelled DICOM folder -------------------------------------------------------

def read_site_labels(path: Path) -> dict[str, dict[str, str]]:
    """``study_instance_uid`` → row; the ``finding`` column names the finding or ``none``.

    Optional columns used for strata: subtype, volume_ml, level, age, sex.
    """
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "study_instance_uid" not in rows[0] or "finding" not in rows[0]:
        raise ValueError(f"{path}: needs columns study_instance_uid and finding")
    return {row["study_instance_uid"].strip(): row for row in rows}


def evaluate_folder(detector: Detector, folder: Path, labels: dict[str, dict[str, str]],
                    finding: str) -> tuple[list[StudyResult], list[str]]:
    """Score every series of a labelled folder (one series per labelled study is used)."""
    scored, skipped = score_folder([detector], folder, labels, finding)
    return scored[0], skipped


def score_folder(detectors: Sequence[Detector], folder: Path,
                 labels: dict[str, dict[str, str]], finding: str
                 ) -> tuple[list[list[StudyResult]], list[str]]:
    """Score every series of a labelled folder with each detector, each series loaded once.

    One series per labelled study is used: the first (by Series Instance UID) that every
    detector accepts.  Returns one result list per detector, in the same study order.
    """
    scored: list[list[StudyResult]] = [[] for _ in detectors]
    skipped: list[str] = []
    seen: set[str] = set()
    for uid, paths in sorted(find_series([folder]).items()):
        try:
            volume = load_series(paths)
        except VolumeError as exc:
            skipped.append(f"series {uid}: {exc}")
            continue
        study = volume.study_instance_uid
        row = labels.get(study)
        if row is None or study in seen:
            continue
        try:
            outputs = [detector(volume) for detector in detectors]
        except NotEligibleError as exc:
            skipped.append(f"series {uid}: {exc.reason}")
            continue
        seen.add(study)
        positive = row["finding"].strip().lower() == finding
        volume_ml = float(row["volume_ml"]) if row.get("volume_ml") else None
        attributes = {
            "manufacturer": str(volume.meta.get("manufacturer", "")),
            "age_band": age_band(parse_age(row.get("age") or volume.meta.get("patient_age"))),
            "sex": (row.get("sex") or str(volume.meta.get("patient_sex", ""))).upper(),
            "slice_thickness": f"{volume.meta.get('slice_thickness_mm') or 0:g} mm",
        }
        if positive:
            attributes["subtype"] = row.get("subtype", "")
            attributes["size_band"] = size_band(volume_ml)
            attributes["level"] = row.get("level", "")
        for into, result in zip(scored, outputs, strict=True):
            into.append(StudyResult(study, positive, result.probability, result.flagged,
                                    attributes))
    return scored, skipped


def write_report(name: str, results: Sequence[StudyResult], skipped: Sequence[str], *,
                 threshold: float, strata: Sequence[str], out: Path,
                 source: str) -> dict[str, Any]:
    """Metrics JSON and ROC PNG under ``out``; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    rep = report(results, strata=[*strata, *POPULATION_STRATA], threshold=threshold)
    rep["detector"] = name
    rep["source"] = source
    rep["not_analysed"] = {"count": len(skipped), "reasons": list(skipped)[:50]}
    labels = np.array([r.positive for r in results])
    scores = np.array([r.probability for r in results])
    curves = {"all": (*roc_curve(labels, scores), roc_auc(labels, scores))}
    negatives = [r for r in results if not r.positive]
    for subtype in sorted({r.attributes.get("subtype", "") for r in results if r.positive}):
        if not subtype:
            continue
        members = [r for r in results if r.positive and r.attributes.get("subtype") == subtype]
        sub_labels = np.array([True] * len(members) + [False] * len(negatives))
        sub_scores = np.array([r.probability for r in [*members, *negatives]])
        curves[subtype] = (*roc_curve(sub_labels, sub_scores), roc_auc(sub_labels, sub_scores))
    plot_roc(curves, out / f"{name}-roc.png", f"{name}: {source}")
    rep["roc_png"] = f"{name}-roc.png"
    rep["studies"] = [
        {"study_instance_uid": r.study_instance_uid, "positive": r.positive,
         "probability": round(r.probability, 5), "flagged": r.flagged, **r.attributes}
        for r in results
    ]
    return rep


# --- offline analysis of DICOM folders ---------------------------------------------------

_HEAD_WORDS = re.compile(r"\b(head|brain|skull|cranial|cerebral)\b", re.IGNORECASE)
_SPINE_WORDS = re.compile(r"\b(c-?spine|cervical|neck)\b", re.IGNORECASE)
_HEAD_PARTS = {"HEAD", "BRAIN", "SKULL"}
_SPINE_PARTS = {"CSPINE", "C-SPINE", "NECK", "SPINE"}


def infer_region(volume: Volume) -> Region | None:
    """Head or C-spine from Body Part Examined, else from the descriptions; None if unclear."""
    part = str(volume.meta.get("body_part_examined") or "").upper()
    if part in _HEAD_PARTS:
        return Region.HEAD
    if part in _SPINE_PARTS:
        return Region.CSPINE
    text = f"{volume.meta.get('study_description', '')} {volume.meta.get('series_description', '')}"
    if _SPINE_WORDS.search(text):
        return Region.CSPINE
    if _HEAD_WORDS.search(text):
        return Region.HEAD
    return None


@dataclass
class SeriesAnalysis:
    study_instance_uid: str
    series_instance_uid: str
    slices: int
    slice_thickness_mm: float | None
    results: dict[str, dict[str, Any]]  # detector → summary or {"not_analysed": reason}
    error: str | None = None


def analyze(paths: Iterable[Path], detectors: dict[str, Detector]) -> Iterator[SeriesAnalysis]:
    """One :class:`SeriesAnalysis` per series found under ``paths``."""
    for uid, files in sorted(find_series(paths).items()):
        try:
            volume = load_series(files)
        except VolumeError as exc:
            yield SeriesAnalysis("", uid, len(files), None, {}, error=str(exc))
            continue
        region = infer_region(volume)
        results: dict[str, dict[str, Any]] = {}
        for name, detector in detectors.items():
            if region is not None and REGION_OF[name] is not region:
                results[name] = {"not_analysed": f"series is {region.value}, detector is for "
                                                 f"{REGION_OF[name].value}"}
                continue
            try:
                finding = detector(volume)
                results[name] = finding.summary()
                if finding.ood is not None and finding.out_of_distribution:
                    results[name] = {"not_analysed": finding.ood.reason,
                                     "ood_score": round(finding.ood.score, 4)}
            except NotEligibleError as exc:
                results[name] = {"not_analysed": exc.reason}
            except ModelError as exc:
                results[name] = {"not_analysed": f"model error: {exc}"}
        yield SeriesAnalysis(volume.study_instance_uid, uid, volume.shape[0],
                             volume.meta.get("slice_thickness_mm"), results)
