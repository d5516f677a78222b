"""Experiment switches of the detectors: global pooling, positive balance, an --out card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.__main__ import parser
from models.slicenet import DEFAULT_NETWORK, SliceNet
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.training import CachedStudy, SliceSampler


def test_max_pooling_keeps_the_parameters_and_sees_a_small_spot() -> None:
    torch.manual_seed(0)
    avg = SliceNet(9, DEFAULT_NETWORK).eval()
    peak = SliceNet(9, {**DEFAULT_NETWORK, "pool": "max"}).eval()
    assert avg.state_dict().keys() == peak.state_dict().keys()
    peak.load_state_dict(avg.state_dict())  # same weights, only the pooling differs
    x = torch.zeros(2, 9, 128, 128)
    x[1, :, 60:64, 60:64] = 1.0  # a spot of 4x4 pixels
    with torch.inference_mode():
        _, f_avg = avg(x)
        _, f_max = peak(x)
    # The spot changes the max-pooled features more than the crop-averaged ones.
    assert float((f_max[1] - f_max[0]).abs().sum()) > float((f_avg[1] - f_avg[0]).abs().sum())
    assert torch.all(f_max >= f_avg - 1e-6)  # ReLU features: max >= mean


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="pool"):
        SliceNet(9, {**DEFAULT_NETWORK, "pool": "median"})


def test_an_experiment_card_loads_from_its_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cspine_fracture"
    shutil.copytree(models.MODELS_DIR / "cspine_fracture", folder,
                    ignore=shutil.ignore_patterns("__pycache__", "*.py", "README.md"))
    meta = json.loads((folder / "metadata.json").read_text())
    meta["network"]["pool"] = "max"
    (folder / "metadata.json").write_text(json.dumps(meta))
    bundled = models.load("cspine_fracture")
    experiment = models.load("cspine_fracture", root=tmp_path)
    assert experiment.card.folder == folder
    assert experiment.card.network["pool"] == "max"
    assert "pool" not in bundled.card.network
    volume = generate(sample_case(900_010, Region.CSPINE)).volume()
    a, b = bundled(volume), experiment(volume)
    assert not np.isclose(a.probability, b.probability)  # the switch reaches inference
    with pytest.raises(models.ModelNotFoundError):
        models.card("cspine_fracture", root=tmp_path / "elsewhere")


def test_cli_switches_parse() -> None:
    args = parser().parse_args(["train", "cspine_fracture", "--pool", "max", "--out", "x"])
    assert args.pool == "max"
    assert parser().parse_args(["train", "cspine_fracture"]).pool is None
    assert parser().parse_args(["train", "cspine_fracture", "--conv1-stride", "1"]
                               ).conv1_stride == 1
    assert parser().parse_args(["train", "cspine_fracture"]).conv1_stride is None
    args = parser().parse_args(["eval", "cspine_fracture", "--models-dir", "x"])
    assert args.models_dir == Path("x")
    assert parser().parse_args(["eval", "cspine_fracture"]).models_dir is None


def _cached(case_id: str, n_slices: int, positive: range) -> CachedStudy:
    flags = np.zeros(n_slices, dtype=bool)
    flags[list(positive)] = True
    return CachedStudy(case_id=case_id, hu=np.zeros((n_slices, 8, 8), dtype=np.int16),
                       positive=flags, label=bool(flags.any()), labels={})


def test_study_balance_gives_a_small_lesion_the_share_of_a_large_one() -> None:
    from models import hemorrhage

    studies = [_cached("large", 30, range(5, 25)), _cached("small", 30, range(10, 12)),
               _cached("normal", 30, range(0))]
    cfg = hemorrhage.DEFINITION.preprocessing

    def share_of_small(balance: str) -> float:
        sampler = SliceSampler(studies, cfg, negative_ratio=1.0,
                               rng=np.random.default_rng(0), balance=balance)
        drawn = [item for _ in range(50) for b in sampler.epoch(8) for item in b]
        positives = [i for i, _, p in drawn if p]
        assert len(positives) == 50 * 22  # as many positives per epoch either way
        assert sum(not p for _, _, p in drawn) == 50 * 22  # and the same negatives
        return positives.count(1) / len(positives)

    assert share_of_small("slice") == pytest.approx(2 / 22)
    assert share_of_small("study") == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="balance"):
        SliceSampler(studies, cfg, negative_ratio=1.0, rng=np.random.default_rng(0),
                     balance="lesion")


def test_the_balance_switch_reaches_training() -> None:
    args = parser().parse_args(["train", "hemorrhage", "--balance", "study"])
    assert args.balance == "study"
    assert parser().parse_args(["train", "hemorrhage"]).balance is None
