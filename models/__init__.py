"""Detectors, synthetic CT phantoms and their training/evaluation code (no service imports).

``available()`` lists the model cards of the bundled detectors; ``load(name, device=…)``
returns a ready detector or raises (never ``None``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from models.detector import (
    MODELS_DIR,
    Detector,
    ModelCard,
    ModelError,
    ModelNotFoundError,
    NotEligibleError,
    WeightsError,
)

DETECTORS = ("hemorrhage", "stroke", "cspine_fracture")

__all__ = [
    "DETECTORS",
    "MODELS_DIR",
    "Detector",
    "ModelCard",
    "ModelError",
    "ModelNotFoundError",
    "NotEligibleError",
    "WeightsError",
    "available",
    "card",
    "load",
]


def card(name: str, *, root: Path | None = None) -> ModelCard:
    """The model card of detector ``name`` (bundled, or in ``root/<name>`` for experiments).

    Raises
    ------
    ModelNotFoundError
        Unknown detector or missing metadata.json.
    """
    if name not in DETECTORS:
        raise ModelNotFoundError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    return ModelCard.read((root or MODELS_DIR) / name)


def available() -> list[ModelCard]:
    """Cards of the bundled detectors that have a metadata.json."""
    cards = []
    for name in DETECTORS:
        try:
            cards.append(card(name))
        except ModelNotFoundError:
            continue
    return cards


def load(name: str, *, device: str = "cpu", root: Path | None = None,
         flip_average: bool | None = None) -> Detector:
    """Load detector ``name`` with its sha256-verified weights onto ``device``.

    ``root``: a folder with ``<name>/metadata.json`` (an experiment's ``models train --out``)
    instead of the bundled detectors.  ``flip_average``: switch the card's test-time flip
    averaging on or off for this detector only (``None``: as the card says); used to choose
    a threshold with it before the card is changed.

    Raises
    ------
    ModelNotFoundError
        Unknown detector or missing card.
    WeightsError
        Weight file missing or not the one the card names.
    """
    model_card = card(name, root=root)  # raises for an unknown name before any import is tried
    if flip_average is not None:
        model_card = model_card.with_flip_average(flip_average)
    module = importlib.import_module(f"models.{name}")
    detector: Detector = module.build(model_card, device=device)
    return detector
