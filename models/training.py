"""Training of a slice detector on synthetic phantoms (or on any cache of labelled volumes).

1. ``build_cache`` generates studies for a range of seeds, prepares them exactly as the
   detector will at inference (:func:`models.preprocess.prepare`) and stores the cropped HU
   and per-slice labels, one ``.npz`` per study.
2. ``train`` samples slices (every positive slice, negatives at a fixed ratio), applies
   light augmentation, optimises the 2.5-D network, keeps the epoch with the best
   validation AUC, sets the threshold at the target specificity on the validation studies
   and writes the weights, their sha256 and ``metadata.json``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from torch import nn

from models.definition import Definition, eligibility_json
from models.detector import INTENDED_USE, ModelCard, sha256_file
from models.evaluation import roc_auc, threshold_for_specificity
from models.preprocess import Preprocessing, prepare, window_channels
from models.slicenet import SliceNet, aggregate, card_state
from models.synthetic.generate import GENERATOR_REVISION, generate
from models.synthetic.sampling import drawn_keys, sample_case
from models.synthetic.spec import Region

logger = logging.getLogger(__name__)

#: Seed ranges: training, validation (threshold choice) and held-out test never overlap.
TRAIN_SEEDS = 100_000
VALIDATION_SEEDS = 500_000
TEST_SEEDS = 900_000


@dataclass(frozen=True)
class CachedStudy:
    case_id: str
    hu: np.ndarray  # int16 (S, H, W)
    positive: np.ndarray  # bool (S,) slices showing the detector's finding
    label: bool
    labels: dict[str, Any]
    # (N, 6) per finding of the detector: rows r0, r1 and columns c0, c1 of the crop (pixels,
    # may lie partly outside) and z0, z1 (mm) of its bounding box; (0, 6) for none
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), dtype=np.float32))
    z_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def crop_boxes(labels: dict[str, Any], finding: str, crop_origin_mm: tuple[float, float],
               pixel_mm: tuple[float, float]) -> np.ndarray:
    """Bounding boxes (patient mm, from the generator's labels) of ``finding`` in crop pixels."""
    rows = []
    for item in labels.get("findings", []):
        box = item.get("bbox_mm")
        if item.get("kind") != finding or not box:
            continue
        x0, x1, y0, y1, z0, z1 = (float(v) for v in box)
        (oy, ox), (py, px) = crop_origin_mm, pixel_mm
        rows.append(((y0 - oy) / py, (y1 - oy) / py, (x0 - ox) / px, (x1 - ox) / px, z0, z1))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 6)


def slice_labels(case_positive: np.ndarray, case_z: np.ndarray, target_z: np.ndarray,
                 half_width: float) -> np.ndarray:
    """A resampled slice is positive when an original positive slice lies within it."""
    if not case_positive.any():
        return np.zeros(target_z.shape[0], dtype=bool)
    pos_z = case_z[case_positive]
    return np.asarray(np.abs(target_z[:, None] - pos_z[None, :]).min(axis=1) <= half_width)


def seeds_drawn_with(region: Region, counts: Mapping[str, int], *, start: int,
                     stop: int = VALIDATION_SEEDS) -> dict[str, list[int]]:
    """For each key of ``counts`` (a subtype or a level, ``sampling.drawn_keys``), the first
    ``counts[key]`` seeds from ``start`` whose case is drawn with it, to enrich a training set
    with a rare or hard kind.  One pass draws each case once (drawing is cheap, rendering is
    not); a seed that fits several keys goes to the first, in ``counts``' order, that still
    wants one, so none is picked twice.  Raises when fewer lie before ``stop``, so they never
    reach other ranges."""
    found: dict[str, list[int]] = {key: [] for key in counts}
    for seed in range(start, stop):
        wanting = [key for key in counts if len(found[key]) < counts[key]]
        if not wanting:
            break
        drawn = drawn_keys(sample_case(seed, region))
        key = next((k for k in wanting if k in drawn), None)
        if key is not None:
            found[key].append(seed)
    for key, seeds in found.items():
        if len(seeds) < counts[key]:
            raise ValueError(f"only {len(seeds)} {region.value} cases with a {key} finding "
                             f"among seeds {start}-{stop - 1}, {counts[key]} asked for")
    return found


def cache_folder(root: Path, definition: Definition) -> Path:
    """Where ``definition``'s prepared studies live under ``root``: one folder per detector,
    sampling (pixels, crop, centring) and generator revision, so an experiment never reads
    studies prepared another way; windows and mirroring apply at training time."""
    prep = json.dumps({**definition.preprocessing.sampling_json(),
                       "generator": GENERATOR_REVISION}, sort_keys=True)
    digest = hashlib.sha256(prep.encode()).hexdigest()[:8]
    return root / f"{definition.name}-{digest}"


def _cache_one(args: tuple[int, str, dict[str, dict[str, Any]], int]) -> list[str]:
    seed, region, preps, max_slices = args
    torch.set_num_threads(1)
    case = generate(sample_case(seed, Region(region), max_slices=max_slices))
    volume = case.volume()
    case_z = volume.origin_mm[2] + np.arange(volume.shape[0]) * volume.spacing_mm[0]
    written = []
    for folder, prep_json in preps.items():
        finding = prep_json.pop("_finding")
        cfg = Preprocessing.from_json(prep_json)
        prepared = prepare(volume, cfg)
        half = max(cfg.target_spacing_mm[0], volume.spacing_mm[0]) / 2
        mine = case.slice_positive if case.finding == finding else np.zeros_like(
            case.slice_positive)
        positive = slice_labels(mine, case_z, prepared.z_mm, half)
        out = Path(folder) / f"{case.labels['case_id']}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            out,
            hu=np.clip(prepared.hu.numpy(), -1024, 3071).astype(np.int16),
            positive=positive,
            label=np.array(case.finding == finding),
            labels=np.array(json.dumps(case.labels)),
            boxes=crop_boxes(case.labels, finding, prepared.crop_origin_mm,
                             cfg.target_spacing_mm[1:]),
            z_mm=prepared.z_mm,
        )
        written.append(str(out))
        prep_json["_finding"] = finding
    return written


def build_cache(
    definitions: Sequence[Definition],
    seeds: Sequence[int],
    root: Path,
    *,
    workers: int = 2,
    max_slices: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Generate and prepare ``seeds`` for every definition (all of the same region)."""
    regions = {d.region for d in definitions}
    if len(regions) != 1:
        raise ValueError("cache definitions of one region at a time")
    region = regions.pop()
    preps = {str(cache_folder(root, d)): {**d.preprocessing.to_json(), "_finding": d.finding}
             for d in definitions}
    todo = [s for s in seeds if not all(
        (cache_folder(root, d) / f"{region.value}-{s:07d}.npz").exists() for d in definitions)]
    jobs = [(s, region.value, preps, max_slices) for s in todo]
    done = len(seeds) - len(todo)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in pool.map(_cache_one, jobs, chunksize=1):
            done += 1
            if progress is not None:
                progress(done, len(seeds))


def load_cache(folder: Path, seeds: Sequence[int], region: Region) -> list[CachedStudy]:
    studies = []
    for seed in seeds:
        path = folder / f"{region.value}-{seed:07d}.npz"
        with np.load(path) as data:
            labels = json.loads(str(data["labels"]))
            studies.append(CachedStudy(
                case_id=labels["case_id"], hu=data["hu"], positive=data["positive"],
                label=bool(data["label"]), labels=labels,
                boxes=data["boxes"] if "boxes" in data else np.zeros((0, 6), np.float32),
                z_mm=data["z_mm"] if "z_mm" in data else np.zeros(0, np.float32),
            ))
    return studies


#: How positive slices are drawn in an epoch: ``slice`` takes every positive slice once, so
#: a lesion counts as many times as it has slices; ``study`` draws as many positives, with
#: replacement, each positive study with the same share, so a 0.5 mL bleed on two slices
#: weighs as much as a 60 mL one on twenty (the study is what the worklist flags).
POSITIVE_BALANCES = ("slice", "study")


class SliceSampler:
    """Balanced batches of 2.5-D slices with light augmentation."""

    def __init__(self, studies: Sequence[CachedStudy], cfg: Preprocessing, *,
                 negative_ratio: float, rng: np.random.Generator,
                 balance: str = "slice") -> None:
        if balance not in POSITIVE_BALANCES:
            raise ValueError(f"positive balance {balance!r} is not one of {POSITIVE_BALANCES}")
        self.studies = studies
        self.cfg = cfg
        self.rng = rng
        self.balance = balance
        self.positives = [(i, s) for i, st in enumerate(studies)
                          for s in np.nonzero(st.positive)[0]]
        self.negatives = [(i, s) for i, st in enumerate(studies)
                          for s in np.nonzero(~st.positive)[0]]
        self.negative_ratio = negative_ratio
        per_study = np.bincount([i for i, _ in self.positives], minlength=len(studies))
        weights = np.array([1.0 / per_study[i] for i, _ in self.positives])
        self._study_weights = weights / weights.sum() if weights.size else weights

    def epoch(self, batch: int) -> list[list[tuple[int, int, bool]]]:
        n_neg = min(len(self.negatives), int(len(self.positives) * self.negative_ratio))
        neg_idx = self.rng.choice(len(self.negatives), n_neg, replace=False)
        if self.balance == "study" and self.positives:
            pos_idx = self.rng.choice(len(self.positives), len(self.positives),
                                      p=self._study_weights)
            items = [(*self.positives[k], True) for k in pos_idx]
        else:
            items = [(i, s, True) for i, s in self.positives]
        items += [(*self.negatives[k], False) for k in neg_idx]
        order = self.rng.permutation(len(items))
        return [[items[k] for k in order[start : start + batch]]
                for start in range(0, len(order), batch)]

    def tensors(self, items: Sequence[tuple[int, int, bool]], *, grid: tuple[int, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Network input (B, C, H, W), slice targets (B,) and, with ``grid``, cell targets
        (B, *grid): 1 where the (augmented) box of a finding on that slice overlaps the cell,
        0 elsewhere, NaN for a positive slice whose finding has no box (no cell loss)."""
        k = self.cfg.context_slices
        stacks, maps = [], []
        for study_index, slice_index, positive in items:
            study = self.studies[study_index]
            hu = study.hu
            idx = np.clip(np.arange(slice_index - k, slice_index + k + 1), 0, hu.shape[0] - 1)
            block = hu[idx].astype(np.float32)
            flip = self.rng.random() < 0.5
            if flip:
                block = block[:, :, ::-1]  # left-right: findings occur on both sides
            if self.cfg.mirror:  # mirrored about the crop's centre, before the shift moves it
                block = np.concatenate([block, block[:, :, ::-1]])
            dy, dx = self.rng.integers(-8, 9, 2)
            block = np.roll(block, (int(dy), int(dx)), axis=(1, 2))
            block = block + np.float32(self.rng.normal(0, 2.0))
            stacks.append(np.ascontiguousarray(block))
            if grid is not None:
                maps.append(self._cells(study, slice_index, positive, grid=grid,
                                        shape=(block.shape[1], block.shape[2]), flip=flip,
                                        shift=(int(dy), int(dx))))
        hu_t = torch.from_numpy(np.stack(stacks))  # (B, 2k+1, H, W), twice that mirrored
        b, n, h, w = hu_t.shape
        # window each neighbour and order channels as prepare() does: neighbour-major, the
        # mirrored neighbours after the others
        windowed = window_channels(hu_t.reshape(b * n, h, w), self.cfg.windows, 0)
        windowed = windowed.reshape(b, n * len(self.cfg.windows), h, w)
        target = torch.tensor([float(p) for _, _, p in items])
        cells = torch.from_numpy(np.stack(maps)) if grid is not None else None
        return windowed, target, cells

    def _cells(self, study: CachedStudy, slice_index: int, positive: bool, *,
               grid: tuple[int, int], shape: tuple[int, int], flip: bool,
               shift: tuple[int, int]) -> np.ndarray:
        if not positive:
            return np.zeros(grid, dtype=np.float32)
        boxes = study.boxes
        if study.z_mm.size and boxes.size:
            z = float(study.z_mm[slice_index])
            # half the spacing of the resampled slices, as their labels (slice_labels) use
            step = (float(study.z_mm[1] - study.z_mm[0]) if study.z_mm.size > 1
                    else self.cfg.target_spacing_mm[0])
            half = step / 2
            near = boxes[(boxes[:, 4] - half <= z) & (z <= boxes[:, 5] + half)]
            boxes = near if near.size else boxes
        if not boxes.size:
            return np.full(grid, np.nan, dtype=np.float32)
        return cell_targets(boxes, grid=grid, shape=shape, flip=flip, shift=shift)


def cell_targets(boxes: np.ndarray, *, grid: tuple[int, int], shape: tuple[int, int],
                 flip: bool, shift: tuple[int, int]) -> np.ndarray:
    """1 on the cells of a ``grid`` over an image of ``shape`` that the boxes (crop pixels:
    r0, r1, c0, c1, ...) overlap after a left-right ``flip`` and then a roll by ``shift``."""
    out = np.zeros(grid, dtype=np.float32)
    h, w = shape
    rows = boxes[:, 0:2] + shift[0]
    cols = ((w - 1) - boxes[:, 3:1:-1] if flip else boxes[:, 2:4]) + shift[1]
    first_row = np.clip(np.floor(rows / (h / grid[0])), 0, grid[0] - 1).astype(int)
    first_col = np.clip(np.floor(cols / (w / grid[1])), 0, grid[1] - 1).astype(int)
    for (i0, i1), (j0, j1) in zip(first_row, first_col, strict=True):
        out[i0 : i1 + 1, j0 : j1 + 1] = 1.0
    return out


def study_scores(net: SliceNet, studies: Sequence[CachedStudy], cfg: Preprocessing,
                 device: torch.device, threshold: float = 0.5) -> np.ndarray:
    net.eval()
    scores = []
    with torch.inference_mode():
        for study in studies:
            hu = torch.from_numpy(study.hu.astype(np.float32))
            slices = window_channels(hu, cfg.windows, cfg.context_slices, mirror=cfg.mirror)
            probs = []
            for start in range(0, slices.shape[0], 64):
                logits, _ = net(slices[start : start + 64].to(device))
                probs.append(torch.sigmoid(logits).cpu())
            prob, _, _ = aggregate(torch.cat(probs).numpy(), threshold)
            scores.append(prob)
    return np.asarray(scores)


def auc_by_subtype(studies: Sequence[CachedStudy], scores: np.ndarray) -> dict[str, Any]:
    """Validation AUC of each finding subtype: its positive studies against all negatives
    (how ``triage models eval`` stratifies), so experiments compare where they gain."""
    labels = np.array([s.label for s in studies])
    subtype = np.array([s.labels["findings"][0]["subtype"] if s.label and s.labels["findings"]
                        else "" for s in studies])
    out: dict[str, Any] = {}
    for name in sorted(set(subtype[labels])):
        members = subtype == name
        mine = members | ~labels
        out[str(name)] = {"positives": int(members.sum()),
                          "auc": round(roc_auc(labels[mine], scores[mine]), 4)}
    return out


@dataclass
class TrainResult:
    card_path: Path
    validation_auc: float
    threshold: float
    validation_sensitivity: float
    validation_specificity: float
    history: list[dict[str, float]]


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the network's state on the CPU (the best epoch so far)."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def check_same_model(definition: Definition, card: ModelCard) -> None:
    """Fine-tuning needs the same network and the same inputs as the card it starts from."""
    if card.name != definition.name:
        raise ValueError(f"cannot start {definition.name} from the weights of {card.name}")
    if card.network != definition.network:
        raise ValueError(f"{card.folder}: network {card.network} is not the one being trained "
                         f"({definition.network}); fine-tune with the same switches")
    if card.preprocessing != definition.preprocessing:
        raise ValueError(f"{card.folder}: its preprocessing (windows, pixels, crop, mirror) is "
                         "not the one being trained; fine-tune with the same switches")


def train(
    definition: Definition,
    cache_root: Path,
    *,
    train_seeds: Sequence[int],
    val_seeds: Sequence[int],
    out_folder: Path,
    extra_seeds: Mapping[str, Sequence[int]] | None = None,
    epochs: int = 8,
    batch: int = 32,
    lr: float = 2e-3,
    negative_ratio: float = 2.0,
    balance: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    init_from: ModelCard | None = None,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> TrainResult:
    """Train ``definition`` on cached studies and write weights + metadata.json.

    ``extra_seeds`` (subtype or level → seeds, from :func:`seeds_drawn_with`) are trained on as
    well, and named apart in the card: an enriched set is not the generator's prevalence.

    ``log`` gets a line per epoch; by default printed and flushed, so a log file shows each
    epoch when it ends.

    ``init_from``: fine-tune — start from that card's (verified) weights instead of random
    ones.  Its network and preprocessing must be ``definition``'s.  The starting weights are
    scored on validation first (epoch 0 of the history) and kept unless an epoch beats them,
    so fine-tuning never hands back a model worse on validation than the one it started from.

    Raises
    ------
    ValueError
        ``init_from`` has another network or preprocessing than ``definition``.
    WeightsError
        ``init_from``'s weight file is missing or is not the one its card names.
    """
    extra = {k: list(v) for k, v in (extra_seeds or {}).items() if v}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    cfg = definition.preprocessing
    folder = cache_folder(cache_root, definition)
    train_set = load_cache(folder, [*train_seeds, *(s for v in extra.values() for s in v)],
                           definition.region)
    val_set = load_cache(folder, val_seeds, definition.region)
    balance = balance or definition.positive_balance
    sampler = SliceSampler(train_set, cfg, negative_ratio=negative_ratio, rng=rng,
                           balance=balance)
    log(f"{definition.name}: {len(train_set)} training studies "
        f"({sum(s.label for s in train_set)} positive), {len(sampler.positives)} positive "
        f"slices; {len(val_set)} validation studies ({sum(s.label for s in val_set)} positive)")
    net = SliceNet(cfg.channels, definition.network).to(dev)
    if init_from is not None:
        check_same_model(definition, init_from)
        net.load_state_dict(card_state(init_from))
        log(f"{definition.name}: starting from {init_from.name} {init_from.version} "
            f"({init_from.folder}, weights sha256 {init_from.weights_sha256[:12]}…)")
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(sampler.positives) * (1 + negative_ratio) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    grid = None
    if net.head_kind == "map":  # the cell grid of the layer-3 map for this crop
        net.eval()  # a probe must not move the batch-norm statistics
        with torch.no_grad():
            probe = net.forward_cells(torch.zeros(1, cfg.channels, *cfg.crop, device=dev))[2]
        grid = (int(probe.shape[1]), int(probe.shape[2])) if probe is not None else None
        boxed = sum(bool(s.boxes.size) for s in train_set if s.label)
        log(f"{definition.name}: cell-level targets from the boxes of {boxed} of "
            f"{sum(s.label for s in train_set)} positive training studies, grid {grid}")
    val_labels = np.array([s.label for s in val_set])
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history: list[dict[str, float]] = []
    started = time.monotonic()
    if init_from is not None:  # the weights to beat
        auc = roc_auc(val_labels, study_scores(net, val_set, cfg, dev))
        best = (auc, _snapshot(net))
        history.append({"epoch": 0, "val_auc": auc, "minutes": 0.0})
        log(f"epoch 0 (the starting weights): validation AUC {auc:.4f}")
    for epoch in range(1, epochs + 1):
        net.train()
        losses = []
        for items in sampler.epoch(batch):
            x, y, cells = sampler.tensors(items, grid=grid)
            logits, _, cell_logits = net.forward_cells(x.to(dev))
            loss = loss_fn(logits, y.to(dev))
            if cells is not None and cell_logits is not None:
                known = ~torch.isnan(cells).to(dev)
                if bool(known.any()):
                    loss = loss + loss_fn(cell_logits[known], cells.to(dev)[known])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule.last_epoch < steps - 1:
                schedule.step()
            losses.append(loss.item())
        scores = study_scores(net, val_set, cfg, dev)
        auc = roc_auc(val_labels, scores)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_auc": auc,
                        "minutes": (time.monotonic() - started) / 60})
        log(f"epoch {epoch}/{epochs}: loss {np.mean(losses):.4f}, validation AUC {auc:.4f} "
            f"({(time.monotonic() - started) / 60:.1f} min)")
        if best is None or auc > best[0]:
            best = (auc, _snapshot(net))
    if best is None:
        raise ValueError("epochs must be at least 1")
    net.load_state_dict(best[1])
    scores = study_scores(net, val_set, cfg, dev)
    threshold = threshold_for_specificity(val_labels, scores, definition.target_specificity)
    sens = float((scores[val_labels] >= threshold).mean()) if val_labels.any() else 0.0
    spec = float((scores[~val_labels] < threshold).mean()) if (~val_labels).any() else 0.0
    by_subtype = auc_by_subtype(val_set, scores) if (~val_labels).any() else {}
    log(f"{definition.name}: validation AUC by subtype: " + ", ".join(
        f"{k} {v['auc']:.3f} ({v['positives']})" for k, v in by_subtype.items()))
    weights = out_folder / "weights" / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(best[1], weights)
    card = card_json(
        definition,
        threshold=threshold,
        weights_sha256=sha256_file(weights),
        training={
            "data": (f"synthetic phantoms from models.synthetic (generator revision "
                     f"{GENERATOR_REVISION}), seeds {train_seeds[0]}-"
                     f"{train_seeds[-1]} ({len(train_seeds)} studies)"
                     + "".join(f", plus {len(v)} drawn with a {k} finding from seeds "
                               f"{v[0]}-{v[-1]}" for k, v in extra.items())
                     + f"; validation seeds {val_seeds[0]}-{val_seeds[-1]} "
                     f"({len(val_set)} studies)"
                     + (f"; fine-tuned from {init_from.name} {init_from.version}"
                        if init_from is not None else "")),
            **({"initialised_from": {"name": init_from.name, "version": init_from.version,
                                     "weights_sha256": init_from.weights_sha256}}
               if init_from is not None else {}),
            "train_cases": len(train_seeds),
            "validation_cases": len(val_seeds),
            "positives_train": int(sum(s.label for s in train_set)),
            **({"extra_studies": {k: len(v) for k, v in extra.items()}} if extra else {}),
            "epochs": epochs,
            "batch": batch,
            "learning_rate": lr,
            "negative_ratio": negative_ratio,
            "positive_balance": balance,
            "device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "host": platform.node(),
            "minutes": round((time.monotonic() - started) / 60, 1),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
            "history": history,
        },
        validation={
            "auc": round(best[0], 4),
            "sensitivity": round(sens, 4),
            "specificity": round(spec, 4),
            "studies": len(val_set),
            "auc_by_subtype": by_subtype,
        },
    )
    card_path = out_folder / "metadata.json"
    previous = json.loads(card_path.read_text()) if card_path.exists() else {}
    if "performance" in previous:
        card["performance"] = previous["performance"]  # kept until the next evaluation
        card["performance"]["stale"] = True
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    ModelCard.read(out_folder).verified_weights()  # the card we wrote must load
    return TrainResult(card_path, best[0], threshold, sens, spec, history)


def card_json(definition: Definition, *, threshold: float, weights_sha256: str,
              training: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
    """metadata.json: MONAI bundle metadata keys plus ours."""
    cfg = definition.preprocessing
    return {
        "schema": "triage-detector/1",
        "name": definition.name,
        "version": "0.1.0",
        "changelog": {"0.1.0": "first release; trained on synthetic phantoms only"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"highdicom": "0.28.2", "pydicom": "3.0.2"},
        "task": definition.task,
        "description": definition.description,
        "authors": "CT triage project contributors",
        "copyright": "Apache-2.0",
        "intended_use": INTENDED_USE,
        "synthetic_training_data_only": True,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": cfg.channels,
                    "spatial_shape": list(cfg.crop),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {
                        str(i): f"slice {n - cfg.context_slices:+d}, window {c:g}/{w:g}"
                        for i, (n, (c, w)) in enumerate(
                            (n, win) for n in range(2 * cfg.context_slices + 1)
                            for win in cfg.windows)
                    },
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 1,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": definition.finding},
                }
            },
        },
        "network": definition.network,
        "preprocessing": cfg.to_json(),
        "aggregation": {"method": "max of neighbour-smoothed slice probabilities"},
        "threshold": round(float(threshold), 6),
        "operating_point": {
            "rule": f"specificity >= {definition.target_specificity} on the validation studies",
            **validation,
        },
        "weights": {"file": "weights/model.pt", "sha256": weights_sha256},
        "eligibility": eligibility_json(definition.eligibility),
        "training": training,
    }


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
