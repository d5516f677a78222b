"""Experiment switches of the detectors: global pooling, positive balance, pixels and crop,
an --out card."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.__main__ import _with_preprocessing, parser
from models.slicenet import DEFAULT_NETWORK, SliceNet
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region
from models.training import CachedStudy, SliceSampler, auc_by_subtype, cache_folder


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


def test_the_crop_origin_puts_a_patient_point_on_its_crop_pixel() -> None:
    from models.preprocess import Preprocessing, prepare
    from models.volume import Volume

    cfg = Preprocessing(target_spacing_mm=(2.0, 0.8, 0.8), crop=(128, 128),
                        windows=((40.0, 80.0),), context_slices=0)
    for pixel, origin in (((0.5, 0.5), (-50.0, -30.0)), ((0.7, 0.7), (12.0, -80.0))):
        hu = np.full((20, 200, 220), -1000, dtype=np.float32)
        hu[:, 40:160, 40:180] = 0.0
        hu[:, 70, 90] = 2000.0  # a dot at row 70, column 90
        volume = Volume(hu=hu, spacing_mm=(2.0, *pixel), origin_mm=(*origin, 0.0),
                        study_instance_uid="1.2", series_instance_uid="1.2.3", meta={})
        prepared = prepare(volume, cfg)
        row, col = np.unravel_index(int(np.argmax(prepared.hu[5].numpy())), (128, 128))
        oy, ox = prepared.crop_origin_mm
        assert oy + row * 0.8 == pytest.approx(origin[1] + 70 * pixel[0], abs=0.8)
        assert ox + col * 0.8 == pytest.approx(origin[0] + 90 * pixel[1], abs=0.8)


def test_cell_targets_follow_the_flip_and_the_shift() -> None:
    from models.training import cell_targets

    box = np.array([[10.0, 20.0, 100.0, 110.0, 0.0, 0.0]], dtype=np.float32)
    plain = cell_targets(box, grid=(8, 8), shape=(128, 128), flip=False, shift=(0, 0))
    assert {tuple(v) for v in np.argwhere(plain)} == {(0, 6), (1, 6)}
    flipped = cell_targets(box, grid=(8, 8), shape=(128, 128), flip=True, shift=(0, 0))
    assert {tuple(v) for v in np.argwhere(flipped)} == {(0, 1), (1, 1)}  # columns 17-27
    shifted = cell_targets(box, grid=(8, 8), shape=(128, 128), flip=False, shift=(8, -8))
    assert {tuple(v) for v in np.argwhere(shifted)} == {(1, 5), (1, 6)}  # rows 18-28, 92-102


def test_the_sampler_gives_cell_targets_only_where_the_finding_is() -> None:
    from models import cspine_fracture

    cfg = cspine_fracture.DEFINITION.preprocessing
    boxed = _cached("boxed", 10, range(4, 6))
    boxed = dataclasses.replace(
        boxed, hu=np.zeros((10, 128, 128), dtype=np.int16),
        boxes=np.array([[40.0, 50.0, 60.0, 70.0, 7.0, 11.0]], dtype=np.float32),
        z_mm=np.arange(10, dtype=np.float32) * 2.0)
    unboxed = dataclasses.replace(boxed, boxes=np.zeros((0, 6), dtype=np.float32))
    sampler = SliceSampler([boxed, unboxed], cfg, negative_ratio=1.0,
                           rng=np.random.default_rng(0))
    _, target, cells = sampler.tensors([(0, 4, True), (0, 0, False), (1, 4, True)],
                                       grid=(8, 8))
    assert target.tolist() == [1.0, 0.0, 1.0]
    assert cells is not None and cells.shape == (3, 8, 8)
    assert 1 <= int(cells[0].sum()) <= 4  # the box's cells (it may move by the augmentation)
    assert int(cells[1].sum()) == 0  # a negative slice: no cell
    assert bool(torch.isnan(cells[2]).all())  # positive without a box: no cell loss
    assert sampler.tensors([(0, 4, True)])[2] is None  # no grid, no cell targets


def test_a_thick_slice_takes_the_boxes_within_half_its_own_spacing() -> None:
    """Cell targets pick a slice's boxes as its label does: within half the resampled
    spacing (5 mm slices kept at 5 mm), not half the 2 mm target."""
    from models import cspine_fracture

    cfg = cspine_fracture.DEFINITION.preprocessing  # target 2 mm
    study = CachedStudy(
        case_id="thick", hu=np.zeros((6, 128, 128), dtype=np.int16),
        positive=np.array([1, 1, 0, 0, 1, 0], dtype=bool), label=True, labels={},
        boxes=np.array([[0.0, 10.0, 0.0, 10.0, 0.0, 4.0],  # near slice 1 (z 6)
                        [100.0, 120.0, 100.0, 120.0, 20.0, 24.0]],  # near slice 4 (z 21)
                       dtype=np.float32),
        z_mm=np.arange(6, dtype=np.float32) * 5.0 + 1.0)  # slice 1 lies 2 mm above box 1
    sampler = SliceSampler([study], cfg, negative_ratio=1.0, rng=np.random.default_rng(0))
    cells = sampler._cells(study, 1, True, grid=(8, 8), shape=(128, 128), flip=False,
                           shift=(0, 0))
    assert cells[0, 0] == 1.0 and cells[7, 7] == 0.0  # box 1 only, not both


def test_a_cached_fracture_box_lies_on_the_bone_of_its_slices_and_trains_a_map_head(
        tmp_path: Path) -> None:
    from models import cspine_fracture
    from models.training import build_cache, cache_folder, load_cache, train

    definition = cspine_fracture.DEFINITION
    seeds = [100_000, 100_001, 100_002]  # a dens (C2 body) break and two normals
    build_cache([definition], seeds, tmp_path, workers=1)
    study = load_cache(cache_folder(tmp_path, definition), seeds, definition.region)[0]
    assert study.label and study.boxes.shape == (1, 6)
    r0, r1, c0, c1, z0, z1 = study.boxes[0]
    positive = np.nonzero(study.positive)[0]
    assert z0 - 1.0 <= study.z_mm[positive].min() and study.z_mm[positive].max() <= z1 + 1.0
    middle = study.hu[positive[len(positive) // 2]]
    inside = middle[int(r0) : int(r1) + 1, int(c0) : int(c1) + 1]
    assert (inside > 250).mean() > 3 * (middle > 250).mean()  # on the vertebra, not beside

    mapped = dataclasses.replace(definition, network={**definition.network, "head": "map"})
    logged: list[str] = []
    result = train(mapped, tmp_path, train_seeds=seeds[1:], val_seeds=seeds,
                   extra_seeds={"body": seeds[:1]},  # as `--extra body=1` would add it
                   out_folder=tmp_path / "out" / definition.name, epochs=1, batch=8,
                   log=logged.append)
    assert logged[0].startswith("cspine_fracture: 3 training studies (1 positive)")
    assert "boxes of 1 of 1 positive training studies, grid (8, 8)" in logged[1]
    assert np.isfinite(result.history[0]["loss"])
    card = models.load(definition.name, root=tmp_path / "out").card
    assert card.network["head"] == "map"
    assert "seeds 100001-100002 (2 studies), plus 1 drawn with a body finding from seeds " \
        "100000-100000;" in card.raw["training"]["data"]
    assert card.raw["training"]["extra_studies"] == {"body": 1}
    assert (card.raw["training"]["train_cases"], card.raw["training"]["validation_cases"]) == (2, 3)


def test_the_card_says_how_to_retrain_its_weights() -> None:
    from models.cards import train_command

    train = {"data": "synthetic phantoms from models.synthetic (generator revision 2), seeds "
                     "100000-101499 (1500 studies), plus 1600 drawn with a posterior finding "
                     "from seeds 101506-115790; validation seeds 500000-500299 (300 studies)",
             "train_cases": 1500, "validation_cases": 300,
             "epochs": 14, "positive_balance": "slice", "negative_ratio": 3.0,
             "extra_studies": {"posterior": 1600}}
    line = train_command("cspine_fracture", train)
    assert line == ("triage models train cspine_fracture --train-cases 1500 --val-cases 300 "
                    "--epochs 14 --balance slice --negative-ratio 3 --extra posterior=1600")
    args = parser().parse_args(line.split()[2:])
    assert (args.train_cases, args.val_cases, args.epochs, args.extra) == (
        1500, 300, 14, ["posterior=1600"])
    for name in models.DETECTORS:  # every bundled card gives its own recipe
        card = models.card(name)
        assert train_command(name, card.raw["training"]) in (card.folder / "README.md").read_text()


def test_the_card_says_how_to_redo_its_held_out_evaluation() -> None:
    from models.cards import eval_command

    def source(seeds: str) -> dict[str, str]:
        return {"source": f"held-out synthetic phantoms (generator revision 2), seeds {seeds} "
                          "(training used 100000+, validation 500000+)"}

    assert eval_command("stroke", source("900000-900599")) == (
        "triage models eval stroke --update-card")
    line = eval_command("cspine_fracture", source("900000-901499"))
    assert line == "triage models eval cspine_fracture --cases 1500 --update-card"
    args = parser().parse_args(line.split()[2:])
    assert (args.cases, args.seed_base, args.update_card) == (1500, 900_000, True)
    assert eval_command("stroke", source("950000-950099")) == (
        "triage models eval stroke --cases 100 --seed-base 950000 --update-card")
    for perf in (None, {"source": "site data /data/site"}):  # not evaluated, or on a site's
        assert eval_command("stroke", perf) == "triage models eval stroke --update-card"
    for name in models.DETECTORS:  # every bundled card gives its own command
        card = models.card(name)
        assert (eval_command(name, card.raw.get("performance"))
                in (card.folder / "README.md").read_text())


def test_the_card_says_how_its_threshold_was_re_chosen() -> None:
    from models.cards import threshold_command

    op = {"rule": "specificity >= 0.95 on 1200 validation studies",
          "source": "synthetic validation phantoms (generator revision 2), seeds 500000-501199"}
    line = threshold_command("hemorrhage", op)
    assert line == ("triage models calibrate-threshold hemorrhage --specificity 0.95 "
                    "--cases 1200 --seed-base 500000")
    args = parser().parse_args(line.split()[2:])
    assert (args.specificity, args.cases, args.seed_base) == (0.95, 1200, 500_000)
    # training's own choice, or a site's data: no synthetic command to give
    assert threshold_command("stroke", {"rule": "specificity >= 0.9 on the validation "
                                                "studies", "source": None}) is None
    assert threshold_command("stroke", {**op, "source": "site data /data/site"}) is None
    flipped = threshold_command("hemorrhage", op, flip_average=True)
    assert flipped == line + " --flip-average on"
    assert parser().parse_args(flipped.split()[2:]).flip_average == "on"
    for name in models.DETECTORS:  # a bundled card re-chosen after training says how
        card = models.card(name)
        chosen = threshold_command(name, card.raw["operating_point"],
                                   flip_average=card.flip_average)
        readme = (card.folder / "README.md").read_text()
        assert chosen is None or chosen in readme
        assert (chosen is None) == ("calibrate-threshold " + name + " --specificity"
                                    not in readme)


def test_extra_studies_are_the_first_seeds_drawn_with_the_subtype_or_level() -> None:
    from models.__main__ import _extra_seeds
    from models.cspine_fracture import DEFINITION as CSPINE
    from models.hemorrhage import DEFINITION as HEMORRHAGE
    from models.synthetic.sampling import drawn_keys

    args = parser().parse_args(["train", "cspine_fracture", "--extra", "posterior=3",
                                "--extra", "compression=2", "--extra", "C1=2"])
    extra = _extra_seeds(args.extra, [CSPINE], start=100_000)
    assert [len(v) for v in extra.values()] == [3, 2, 2]
    for key, seeds in extra.items():
        scanned = range(100_000, seeds[-1] + 1)
        picked = [s for s in scanned if key in drawn_keys(sample_case(s, Region.CSPINE))]
        assert picked == seeds  # the first ones, none skipped
    # a C2 break is a body break: a study asked for twice is picked once
    both = _extra_seeds(["body=4", "C2=4"], [CSPINE], start=100_000)
    assert not set(both["body"]) & set(both["C2"])
    assert all("C2" in drawn_keys(sample_case(s, Region.CSPINE)) for s in both["C2"])
    assert set(both["body"]) & {s for s in range(100_000, both["C2"][-1] + 1)
                                if "C2" in drawn_keys(sample_case(s, Region.CSPINE))}
    assert parser().parse_args(["train", "cspine_fracture"]).extra is None
    for bad in (["posterio=3"], ["posterior=0"], ["posterior"], ["subdural=3"], ["C8=1"],
                ["C1=1", "C1=2"]):
        with pytest.raises(SystemExit, match="KEY=N"):
            _extra_seeds(bad, [CSPINE], start=100_000)
    with pytest.raises(SystemExit, match="KEY=N"):
        _extra_seeds(["C1=1"], [HEMORRHAGE], start=100_000)  # levels are for fractures
    with pytest.raises(SystemExit, match="one detector"):
        _extra_seeds(["subdural=1"], [HEMORRHAGE, CSPINE], start=100_000)
    from models.training import seeds_drawn_with
    with pytest.raises(ValueError, match="only 0 cspine cases with a body finding"):
        seeds_drawn_with(Region.CSPINE, {"body": 1}, start=100_001, stop=100_002)


def test_the_map_head_scores_a_slice_by_its_hottest_cell() -> None:
    torch.manual_seed(0)
    net = SliceNet(9, {**DEFAULT_NETWORK, "head": "map"}).eval()
    x = torch.rand(2, 9, 128, 128)
    with torch.inference_mode():
        logits, features, cells = net.forward_cells(x)
        again, _ = net(x)
    assert cells is not None and cells.shape == (2, 8, 8)
    assert torch.equal(logits, cells.flatten(1).amax(dim=1))
    assert torch.equal(logits, again)
    assert features.shape == (2, 128)
    assert SliceNet(9, DEFAULT_NETWORK).forward_cells(x)[2] is None
    with pytest.raises(ValueError, match="head"):
        SliceNet(9, {**DEFAULT_NETWORK, "head": "attention"})
    assert parser().parse_args(["train", "cspine_fracture", "--head", "map"]).head == "map"
    assert parser().parse_args(["train", "cspine_fracture"]).head is None



def test_pixels_and_crop_change_only_the_in_plane_sampling_and_get_their_own_cache() -> None:
    from models import cspine_fracture

    d = cspine_fracture.DEFINITION
    args = parser().parse_args(["train", "cspine_fracture", "--pixel-mm", "0.6", "--crop", "160"])
    assert (args.pixel_mm, args.crop) == (0.6, 160)
    assert parser().parse_args(["train", "cspine_fracture"]).pixel_mm is None
    zoomed = _with_preprocessing(d.preprocessing, pixel_mm=args.pixel_mm,
                                 crop=(args.crop, args.crop))
    assert zoomed.target_spacing_mm == (d.preprocessing.target_spacing_mm[0], 0.6, 0.6)
    assert zoomed.crop == (160, 160)
    assert (zoomed.windows, zoomed.context_slices, zoomed.center_on) == (
        d.preprocessing.windows, d.preprocessing.context_slices, d.preprocessing.center_on)
    assert _with_preprocessing(d.preprocessing) == d.preprocessing
    # an experiment never reads studies prepared another way (same name, other pixels)
    root = Path("cache")
    other = dataclasses.replace(d, preprocessing=zoomed)
    assert cache_folder(root, other) != cache_folder(root, d)
    assert cache_folder(root, dataclasses.replace(d)) == cache_folder(root, d)
    assert cache_folder(root, d).parent == root and cache_folder(root, d).name.startswith(d.name)


def test_validation_auc_by_subtype_ranks_each_subtype_against_all_negatives() -> None:
    def study(subtype: str | None) -> CachedStudy:
        findings = [{"subtype": subtype}] if subtype else []
        return CachedStudy(case_id="c", hu=np.zeros((1, 2, 2), np.int16),
                           positive=np.zeros(1, bool), label=subtype is not None,
                           labels={"findings": findings})

    studies = [study(None), study(None), study("body"), study("body"), study("posterior")]
    scores = np.array([0.2, 0.6, 0.9, 0.7, 0.4])
    out = auc_by_subtype(studies, scores)
    assert out == {"body": {"positives": 2, "auc": 1.0},
                   "posterior": {"positives": 1, "auc": 0.5}}


def test_mirrored_channels_are_the_first_half_flipped_in_training_and_inference() -> None:
    from models import cspine_fracture
    from models.preprocess import window_channels

    d = cspine_fracture.DEFINITION
    assert parser().parse_args(["train", "cspine_fracture", "--mirror"]).mirror is True
    assert parser().parse_args(["train", "cspine_fracture"]).mirror is False
    cfg = _with_preprocessing(d.preprocessing, mirror=True)
    assert cfg.channels == 2 * d.preprocessing.channels
    assert cfg.to_json()["mirror"] is True
    assert "mirror" not in d.preprocessing.to_json()  # cards written before it read the same
    assert type(cfg).from_json(cfg.to_json()) == cfg
    rng = np.random.default_rng(3)
    hu = torch.from_numpy(rng.normal(300, 400, (5, 32, 32)).astype(np.float32))
    # inference: the mirrored half follows, in the same neighbour-major order
    x = window_channels(hu, cfg.windows, cfg.context_slices, mirror=True)
    half = d.preprocessing.channels
    assert x.shape == (5, cfg.channels, 32, 32)
    assert torch.equal(x[:, :half], window_channels(hu, cfg.windows, cfg.context_slices))
    assert torch.equal(x[:, half:], x[:, :half].flip(-1))
    # training: mirrored about the crop's centre before the random shift, so flipping the
    # mirrored half back gives the first half moved by twice the horizontal shift
    study = CachedStudy(case_id="c", hu=hu.numpy().astype(np.int16), positive=np.ones(5, bool),
                        label=True, labels={})
    sampler = SliceSampler([study], cfg, negative_ratio=0.0, rng=np.random.default_rng(1))
    batch, _, _ = sampler.tensors([(0, 2, True)] * 6)
    assert batch.shape == (6, cfg.channels, 32, 32)
    moved = []
    for sample in batch:
        first, back = sample[:half], sample[half:].flip(-1)
        shifts = [s for s in range(-16, 17, 2)
                  if torch.allclose(torch.roll(back, s, dims=-1), first)]
        assert shifts
        moved.append(0 not in shifts)
    assert any(moved)  # mirrored after the shift, the two would always line up unmoved


def test_flip_averaging_scores_each_slice_as_the_mean_of_it_and_its_mirror() -> None:
    from models.slicenet import aggregate, score_slices

    card = models.card("hemorrhage")
    assert card.with_flip_average(True).flip_average
    assert not card.with_flip_average(False).flip_average
    assert models.card("hemorrhage").raw == card.raw  # switched in memory only
    plain = models.load("hemorrhage", flip_average=False)
    both = models.load("hemorrhage", flip_average=True)
    assert both.card.flip_average and not plain.card.flip_average
    volume = generate(sample_case(900_003, Region.HEAD)).volume()
    slices = plain.prepare(volume).slices
    device = torch.device("cpu")
    p, f = score_slices(plain.net, slices, device=device)
    q, _ = score_slices(plain.net, slices.flip(-1), device=device)
    m, g = score_slices(plain.net, slices, device=device, flip=True)
    assert not np.allclose(p, q, atol=1e-4)  # the network is not symmetric by construction
    np.testing.assert_allclose(m, (p + q) / 2, atol=1e-6)
    np.testing.assert_array_equal(g, f)  # features: the slices as they are (OOD reference)
    a, b = plain(volume), both(volume)
    assert a.probability == pytest.approx(aggregate(p, 2.0)[0], abs=1e-6)
    assert b.probability == pytest.approx(aggregate(m, 2.0)[0], abs=1e-6)
    assert b.probability != pytest.approx(a.probability, abs=1e-6)
    # the features: the per-slice mean is that of the slices as they are either way; the
    # key slice's half follows the key, which flip averaging may move
    half = f.shape[1]
    np.testing.assert_allclose(b.features[:half], a.features[:half], atol=1e-6)
    key_a, key_b = aggregate(p, 2.0)[1], aggregate(m, 2.0)[1]
    np.testing.assert_allclose(a.features[half:], f[key_a], atol=1e-6)
    np.testing.assert_allclose(b.features[half:], f[key_b], atol=1e-6)
    symmetric = torch.cat([slices[..., :92], slices[..., :92].flip(-1)], dim=-1)
    s0, _ = score_slices(plain.net, symmetric, device=device)
    s1, _ = score_slices(plain.net, symmetric, device=device, flip=True)
    np.testing.assert_allclose(s1, s0, atol=1e-5)  # a mirror-symmetric input: no change
    assert parser().parse_args(["calibrate-threshold", "hemorrhage", "--flip-average",
                                "on"]).flip_average == "on"
    with pytest.raises(SystemExit):
        parser().parse_args(["calibrate-threshold", "hemorrhage", "--flip-average", "yes"])


def test_the_cache_follows_sampling_and_generator_not_windows() -> None:
    from models import cspine_fracture
    from models.synthetic.generate import GENERATOR_REVISION

    d = cspine_fracture.DEFINITION
    root = Path("cache")
    same = [dataclasses.replace(d, preprocessing=dataclasses.replace(d.preprocessing, **c))
            for c in ({"mirror": True}, {"windows": ((40.0, 80.0),)}, {"context_slices": 2})]
    assert {cache_folder(root, x) for x in same} == {cache_folder(root, d)}
    moved = dataclasses.replace(d, preprocessing=dataclasses.replace(
        d.preprocessing, center_on="body"))
    assert cache_folder(root, moved) != cache_folder(root, d)
    assert GENERATOR_REVISION >= 2


def test_fine_tuning_starts_from_a_cards_verified_weights_and_keeps_them_unless_beaten(
        tmp_path: Path) -> None:
    from models import cspine_fracture
    from models.cards import train_command, write_readme
    from models.training import build_cache, train

    definition = cspine_fracture.DEFINITION
    seeds = [100_000, 100_001, 100_002]  # a dens break and two normals
    build_cache([definition], seeds, tmp_path, workers=1)
    parent = train(definition, tmp_path, train_seeds=seeds, val_seeds=seeds,
                   out_folder=tmp_path / "parent" / definition.name, epochs=1, batch=8,
                   log=lambda _: None)
    parent_card = models.card(definition.name, root=tmp_path / "parent")
    logged: list[str] = []
    child = train(definition, tmp_path, train_seeds=seeds, val_seeds=seeds,
                  out_folder=tmp_path / "child" / definition.name, epochs=1, batch=8,
                  lr=1e-3, init_from=parent_card, log=logged.append)
    # epoch 0 scores the starting weights: the parent's own best validation AUC, exactly
    assert child.history[0] == {"epoch": 0, "val_auc": parent.validation_auc, "minutes": 0.0}
    assert any(line.startswith("cspine_fracture: starting from cspine_fracture "
                               f"{parent_card.version}") for line in logged)
    card = models.card(definition.name, root=tmp_path / "child")
    if child.history[1]["val_auc"] <= parent.validation_auc:  # not beaten: the same weights
        assert card.weights_sha256 == parent_card.weights_sha256
    assert card.raw["training"]["initialised_from"] == {
        "name": "cspine_fracture", "version": parent_card.version,
        "weights_sha256": parent_card.weights_sha256}
    assert card.raw["training"]["data"].endswith(f"; fine-tuned from cspine_fracture "
                                                 f"{parent_card.version}")
    line = train_command(definition.name, card.raw["training"])
    assert line.endswith("--lr 0.001 --init-from DIR")
    args = parser().parse_args(line.split()[2:])
    assert (args.lr, args.init_from) == (1e-3, Path("DIR"))
    write_readme(card)
    assert f"# DIR: a models folder holding cspine_fracture {parent_card.version} (weights " \
        f"sha256 {parent_card.weights_sha256[:16]}" in (card.folder / "README.md").read_text()

    mapped = dataclasses.replace(definition, network={**definition.network, "head": "map"})
    with pytest.raises(ValueError, match="network"):
        train(mapped, tmp_path, train_seeds=seeds, val_seeds=seeds, epochs=1,
              out_folder=tmp_path / "x" / definition.name, init_from=parent_card)
    (parent_card.weights_path).write_bytes(b"not these weights")
    with pytest.raises(models.WeightsError):
        train(definition, tmp_path, train_seeds=seeds, val_seeds=seeds, epochs=1,
              out_folder=tmp_path / "x" / definition.name, init_from=parent_card)


def test_init_from_is_checked_before_any_data_is_generated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from models.__main__ import main

    cache = tmp_path / "cache"
    for argv, message in (
            (["--init-from", "models"], "is where the new weights would be written"),
            (["--init-from", "models", "--head", "map", "--out", str(tmp_path / "o")],
             "--init-from: .* network"),
            (["--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
             "no model card")):
        try:
            code = main(["train", "cspine_fracture", "--train-cases", "2", "--val-cases", "1",
                         "--cache", str(cache), *argv])
            error = capsys.readouterr().err
        except SystemExit as exc:
            code, error = 2, str(exc)
        assert code != 0 and re.search(message, error), (argv, error)
    assert not cache.exists()
