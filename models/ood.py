"""Per-study out-of-distribution (OOD) score of a detector's input.

Two distances against the detector's training reference, each divided by its threshold
calibrated on held-out in-distribution studies, so that ``score > 1`` means "out of
distribution" (the worklist then shows *AI not applicable*, never a silent negative):

* feature distance: Mahalanobis distance of the detector's feature vector (mean-pooled and
  key-slice network features) from the training studies, with a Ledoit-Wolf shrunk covariance
  over standardised features (a few hundred studies for a few hundred dimensions);
* intensity distance: Jensen-Shannon distance between the study's HU histogram inside the
  body (:func:`models.inputs.intensity_histogram`) and the training studies' mean histogram.
  It catches what the network features may normalise away (a miscalibrated scanner, a
  different body region with the same texture).

``score = max(feature / feature_threshold, intensity / intensity_threshold)``.

The reference is a small ``.npz`` next to the weights, fitted by ``triage models
calibrate-ood`` and named with its sha256 in the model card (checked at load).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_EPS = 1e-6


@dataclass(frozen=True)
class OODScore:
    """Distances of one study and the combined score (1.0 = calibrated threshold)."""

    score: float
    feature_distance: float
    intensity_distance: float

    @property
    def out_of_distribution(self) -> bool:
        return self.score > 1.0

    @property
    def reason(self) -> str:
        """What the worklist, ``triage analyze`` and the site outputs say above the gate."""
        return f"AI not applicable: out of distribution (OOD score {self.score:.2f} > 1.00)"

    def summary(self) -> dict[str, float]:
        return {
            "score": round(self.score, 4),
            "feature_distance": round(self.feature_distance, 4),
            "intensity_distance": round(self.intensity_distance, 5),
        }


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (already centred).

    Shrinks the sample covariance towards ``mu * I`` by the data-driven intensity of Ledoit &
    Wolf (2004), which keeps the estimate well conditioned when samples ≈ dimensions.
    """
    n, p = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / p
    target_gap = float(np.sum((sample - mu * np.eye(p)) ** 2)) / p
    row_norms = np.sum(x**2, axis=1)
    spread = (float(np.sum(row_norms**2)) - n * float(np.sum(sample**2))) / (n * n * p)
    shrink = 0.0 if target_gap <= 0 else min(1.0, max(0.0, spread / target_gap))
    return np.asarray(shrink * mu * np.eye(p) + (1.0 - shrink) * sample, dtype=np.float64)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms."""
    p = np.asarray(p, dtype=np.float64) + _EPS
    q = np.asarray(q, dtype=np.float64) + _EPS
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    divergence = 0.5 * float(np.sum(p * np.log2(p / m))) + 0.5 * float(np.sum(q * np.log2(q / m)))
    return float(np.sqrt(max(divergence, 0.0)))


@dataclass(frozen=True)
class OODReference:
    """The fitted training reference of one detector and its calibrated thresholds."""

    feature_mean: np.ndarray  # (F,)
    feature_scale: np.ndarray  # (F,) standard deviations used to standardise
    precision: np.ndarray  # (F, F) inverse shrunk covariance of standardised features
    histogram: np.ndarray  # (B,) mean HU histogram of the reference studies
    feature_threshold: float
    intensity_threshold: float

    def feature_distance(self, features: np.ndarray) -> float:
        z = (np.asarray(features, dtype=np.float64) - self.feature_mean) / self.feature_scale
        return float(np.sqrt(max(float(z @ self.precision @ z), 0.0) / z.size))

    def intensity_distance(self, histogram: np.ndarray) -> float:
        return jensen_shannon(histogram, self.histogram)

    def score(self, features: np.ndarray, histogram: np.ndarray) -> OODScore:
        """The study's OOD score."""
        feature = self.feature_distance(features)
        intensity = self.intensity_distance(histogram)
        combined = max(feature / self.feature_threshold, intensity / self.intensity_threshold)
        return OODScore(float(combined), feature, intensity)

    # --- persistence ---------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            feature_mean=self.feature_mean.astype(np.float32),
            feature_scale=self.feature_scale.astype(np.float32),
            precision=self.precision.astype(np.float32),
            histogram=self.histogram.astype(np.float64),
            thresholds=np.asarray([self.feature_threshold, self.intensity_threshold]),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> OODReference:
        with np.load(path, allow_pickle=False) as data:
            thresholds = data["thresholds"]
            return cls(
                feature_mean=data["feature_mean"].astype(np.float64),
                feature_scale=data["feature_scale"].astype(np.float64),
                precision=data["precision"].astype(np.float64),
                histogram=data["histogram"].astype(np.float64),
                feature_threshold=float(thresholds[0]),
                intensity_threshold=float(thresholds[1]),
            )


def fit_reference(
    fit_features: np.ndarray,
    fit_histograms: np.ndarray,
    calibration_features: np.ndarray,
    calibration_histograms: np.ndarray,
    *,
    quantile: float = 0.995,
) -> tuple[OODReference, dict[str, Any]]:
    """Fit the reference on one set of in-distribution studies, calibrate on another.

    Each threshold is the ``quantile`` of the distances of the calibration studies (never
    seen by the fit), so about ``1 - quantile`` of in-distribution studies exceed each.
    Returns the reference and a summary for the model card.
    """
    feats = np.asarray(fit_features, dtype=np.float64)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0) + 1e-3
    z = (feats - mean) / scale
    covariance = ledoit_wolf(z)
    precision = np.linalg.inv(covariance)
    histogram = np.asarray(fit_histograms, dtype=np.float64).mean(axis=0)
    draft = OODReference(mean, scale, precision, histogram, 1.0, 1.0)
    feature_d = np.array([draft.feature_distance(f) for f in calibration_features])
    intensity_d = np.array([draft.intensity_distance(h) for h in calibration_histograms])
    reference = OODReference(
        mean, scale, precision, histogram,
        feature_threshold=float(np.quantile(feature_d, quantile)),
        intensity_threshold=float(np.quantile(intensity_d, quantile)),
    )
    calibration_scores = np.array([
        reference.score(f, h).score
        for f, h in zip(calibration_features, calibration_histograms, strict=True)
    ])
    summary = {
        "fit_studies": int(feats.shape[0]),
        "calibration_studies": len(calibration_features),
        "quantile": quantile,
        "feature_threshold": round(reference.feature_threshold, 5),
        "intensity_threshold": round(reference.intensity_threshold, 6),
        "calibration_ood_rate": round(float(np.mean(calibration_scores > 1.0)), 4),
    }
    return reference, summary
