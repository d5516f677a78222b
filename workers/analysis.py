"""Run the routed detectors on one series and describe the result as JSON.

The detectors are loaded once per worker process, on first use (after Celery's fork, so CUDA
is never touched in the prefork parent) and kept warm.  Everything here is plain Python:
:func:`analyse_series` is called by :mod:`workers.pipeline` and by tests without Celery.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread

import models
from models.detector import Detector, Finding, NotEligibleError
from models.inputs import describe_inputs
from models.volume import Volume, VolumeError, volume_from_datasets

logger = logging.getLogger(__name__)

# What the worklist and the outputs call each detector's finding.
FINDING_TEXT = {
    "hemorrhage": "intracranial hemorrhage",
    "stroke": "ischemic stroke",
    "cspine_fracture": "cervical spine fracture",
}

# Shown on every preview; the worklist page repeats it.
PREVIEW_BANNER = "AI-generated preview - not for diagnosis"


class SeriesUnreadable(Exception):
    """The stored files cannot be read at all (poison input: fail, do not retry)."""


def resolve_device(setting: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if setting != "auto":
        return setting
    import torch  # noqa: PLC0415 - only workers pay for the import

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class DetectorPool:
    """Detectors of this process, loaded on first use and kept warm."""

    device: str = "cpu"
    on_load: Callable[[Detector], None] | None = None  # e.g. publish the card to the index
    _loaded: dict[str, Detector] = field(default_factory=dict)

    def get(self, name: str) -> Detector:
        """The loaded detector ``name``.

        Raises
        ------
        models.ModelError
            Unknown detector, missing or mismatched weights.
        """
        detector = self._loaded.get(name)
        if detector is None:
            started = time.perf_counter()
            detector = models.load(name, device=self.device)
            self._loaded[name] = detector
            logger.info("Loaded detector %s %s on %s in %.1f s (pid %d)", name,
                        detector.card.version, self.device, time.perf_counter() - started,
                        os.getpid())
            if self.on_load is not None:
                try:
                    self.on_load(detector)
                except Exception:
                    logger.exception("Could not publish the card of detector %s", name)
        return detector


def read_volume(paths: Sequence[Path]) -> Volume:
    """The series as a HU volume (highdicom geometry checks included).

    Raises
    ------
    SeriesUnreadable
        A stored file cannot be parsed.
    VolumeError
        The series cannot be a trustworthy volume (tilt, missing slices, ...): not analysed.
    """
    datasets = []
    for path in paths:
        try:
            dataset = dcmread(path)
        except Exception as exc:
            raise SeriesUnreadable(f"stored file {path.name} is unreadable: "
                                   f"{type(exc).__name__}") from exc
        if "PixelData" not in dataset:  # pydicom stops quietly at a truncated file
            raise SeriesUnreadable(f"stored file {path.name} is unreadable: no pixel data "
                                   "(truncated or damaged on disk)")
        datasets.append(dataset)
    return volume_from_datasets(datasets)


def write_preview(volume: Volume, finding: Finding, window: tuple[float, float],
                  path: Path) -> None:
    """Key slice in ``window`` (centre, width) with the AI banner and the flagged extent."""
    center, width = window
    pixels = volume.hu[finding.key_slice]
    grey = np.clip((pixels - (center - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L").convert("RGB")
    scale = max(1, 512 // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    banner = 18
    canvas = Image.new("RGB", (image.width, image.height + 2 * banner), (0, 0, 0))
    canvas.paste(image, (0, banner))
    draw = ImageDraw.Draw(canvas)
    colour = (255, 80, 80) if finding.flagged else (200, 200, 200)
    draw.text((4, 3), PREVIEW_BANNER, fill=(255, 210, 0))
    extent = (f"slices {finding.slice_range[0] + 1}-{finding.slice_range[1] + 1}"
              if finding.slice_range else "no flagged slices")
    draw.text((4, image.height + banner + 3),
              f"{finding.detector} p={finding.probability:.2f} key slice "
              f"{finding.key_slice + 1}/{volume.shape[0]}; {extent}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    canvas.save(partial, format="PNG")
    partial.replace(path)


def _finding_json(detector: Detector, finding: Finding, volume: Volume,
                  preview: str | None) -> dict[str, Any]:
    card = detector.card
    uids: list[str] = list(volume.meta.get("sop_instance_uids", []))
    key_uid = uids[finding.key_slice] if finding.key_slice < len(uids) else ""
    return {
        **finding.summary(),
        "finding": FINDING_TEXT.get(finding.detector, finding.detector),
        "model_name": card.name,
        "weights_sha256": card.weights_sha256,
        "key_sop_instance_uid": key_uid or None,
        "slices": volume.shape[0],
        "preview": preview,
    }


def card_summary(detector: Detector) -> dict[str, Any]:
    """What the service needs to know of a loaded detector's card (``model_info`` row)."""
    card = detector.card
    validation: dict[str, Any] = {}
    overall = (card.raw.get("performance") or {}).get("overall")
    if overall:
        n, positives = int(overall["n"]), int(overall["positives"])
        sens = float(overall["sensitivity"]["value"])
        spec = float(overall["specificity"]["value"])
        true_pos, false_pos = sens * positives, (1.0 - spec) * (n - positives)
        validation = {
            "auc": overall["auc"]["value"],
            "sensitivity": sens,
            "specificity": spec,
            "ppv": round(true_pos / (true_pos + false_pos), 4) if true_pos + false_pos else None,
            "n": n,
            "positives": positives,
            "source": card.raw["performance"].get("source"),
        }
    ood = card.ood or {}
    return {
        "version": card.version,
        "task": card.task,
        "threshold": card.threshold,
        "weights_sha256": card.weights_sha256,
        "validation": validation,
        "ood": {k: ood[k] for k in ("feature_threshold", "intensity_threshold",
                                    "calibration_ood_rate", "quantile") if k in ood},
    }


def _monitoring(detector: Detector, outcome: str, finding: Finding | None) -> dict[str, Any]:
    """The per-detector monitoring record (written to the ``analyses`` table)."""
    record: dict[str, Any] = {
        "detector": detector.card.name,
        "model_version": detector.card.version,
        "outcome": outcome,
        "threshold": detector.card.threshold,
    }
    if finding is not None:
        record.update(
            probability=round(finding.probability, 5),
            flagged=finding.flagged and outcome == "analysed",
            ood_score=round(finding.ood.score, 4) if finding.ood is not None else None,
            features=[round(float(v), 5) for v in finding.features],
            timings={k: round(v, 4) for k, v in finding.timings_s.items()},
        )
    return record


def analyse_series(pool: DetectorPool, paths: Sequence[Path], detectors: Sequence[str], *,
                   preview_dir: Path | None) -> dict[str, Any]:
    """Run ``detectors`` on the series stored at ``paths``; the job result as JSON.

    A series none of whose detectors could run is reported ``not_analysed`` with the reasons
    (never a silent negative).

    Raises
    ------
    SeriesUnreadable
        The files cannot be parsed (the job fails without retry).
    models.ModelError
        A detector's weights are missing or do not match its card (an installation problem:
        the job fails and is retried up to the attempt cap).
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        volume = read_volume(paths)
    except VolumeError as exc:
        return {"analysis": "detectors", "not_analysed": str(exc),
                "summary": f"not analysed: {exc}", "findings": [], "skipped": [],
                "timings_s": {"load": round(time.perf_counter() - started, 4)}}
    timings["load"] = time.perf_counter() - started
    inputs = describe_inputs(volume)
    findings: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    monitoring: list[dict[str, Any]] = []
    for name in detectors:
        detector = pool.get(name)
        t0 = time.perf_counter()
        try:
            finding = detector(volume)
        except NotEligibleError as exc:
            skipped.append({"detector": name, "reason": exc.reason})
            monitoring.append(_monitoring(detector, "not_eligible", None))
            continue
        timings[name] = time.perf_counter() - t0
        if finding.ood is not None and finding.out_of_distribution:
            # Never a silent negative: the study says the AI does not apply to it.
            skipped.append({
                "detector": name,
                "reason": finding.ood.reason,
                "outcome": "ood",
                # what the site outputs need to say "not applicable" for this detector
                "finding": FINDING_TEXT.get(name, name),
                "probability": round(finding.probability, 4),
                "threshold": finding.threshold,
                "model_name": detector.card.name,
                "model_version": detector.card.version,
                "weights_sha256": detector.card.weights_sha256,
                "ood_score": round(finding.ood.score, 4),
            })
            monitoring.append(_monitoring(detector, "ood", finding))
            continue
        monitoring.append(_monitoring(detector, "analysed", finding))
        preview = None
        if preview_dir is not None:
            window = detector.card.preprocessing.windows[0]
            target = preview_dir / f"{name}.png"
            write_preview(volume, finding, (float(window[0]), float(window[1])), target)
            preview = target.name
        findings.append(_finding_json(detector, finding, volume, preview))
    timings["total"] = time.perf_counter() - started
    summary = "; ".join(
        f"{f['detector']} {f['probability']:.2f}{' FLAGGED' if f['flagged'] else ''}"
        for f in findings
    )
    result: dict[str, Any] = {
        "analysis": "detectors",
        "summary": summary or "not analysed",
        "volume": {
            "slices": volume.shape[0],
            "shape": list(volume.shape),
            "spacing_mm": [round(v, 4) for v in volume.spacing_mm],
            # slice index → SOP Instance UID (inferior → superior), for SR/KOS references
            "sop_instance_uids": list(volume.meta.get("sop_instance_uids", [])),
        },
        "findings": findings,
        "skipped": skipped,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "inputs": inputs,
        # Popped by workers.pipeline into the ``analyses`` table before the result is stored.
        "monitoring": monitoring,
    }
    if not findings:
        reasons = "; ".join(f"{s['detector']}: {s['reason']}" for s in skipped)
        result["not_analysed"] = reasons or "no detector applies"
        result["summary"] = f"not analysed: {result['not_analysed']}"
    return result
