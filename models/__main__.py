"""Command line of the models package (``python -m models …``; ``triage models …`` runs it).

Commands: ``list``, ``train NAME``, ``eval NAME``, ``analyze PATH…`` and
``synthetic generate|contact-sheet``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import models
from models.cards import EVAL_CASES
from models.definition import Definition
from models.preprocess import Preprocessing
from models.synthetic.generate import GENERATOR_REVISION
from models.synthetic.sampling import extra_keys
from models.training import TEST_SEEDS

logger = logging.getLogger("models")


def definition(name: str) -> Definition:
    if name not in models.DETECTORS:
        raise SystemExit(f"unknown detector {name!r}; known: {', '.join(models.DETECTORS)}")
    module = importlib.import_module(f"models.{name}")
    result: Definition = module.DEFINITION
    return result


def progress_printer(label: str) -> Any:
    """Progress on stderr: one rewritten line on a terminal, a line every 30 s in a log file."""
    started = time.monotonic()
    last = [0.0]
    tty = sys.stderr.isatty()
    every = 2.0 if tty else 30.0

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every:
            last[0] = now
            rate = done / max(1e-6, now - started)
            eta = (total - done) / max(rate, 1e-6)
            text = f"{label}: {done}/{total} ({rate:.2f}/s, about {eta / 60:.1f} min left)"
            if tty:
                print(f"\r{text}", end="\n" if done == total else "", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr, flush=True)

    return show


def cmd_list(_: argparse.Namespace) -> int:
    cards = models.available()
    if not cards:
        print("no trained detectors yet: run `triage models train all`")
    for card in cards:
        perf = card.raw.get("performance", {}).get("overall", {})
        auc = perf.get("auc", {}).get("value")
        weights = "weights ok"
        try:
            card.verified_weights()
        except models.WeightsError as exc:
            weights = f"WEIGHTS PROBLEM: {exc}"
        print(f"{card.name} {card.version}: {card.task}")
        print(f"  threshold {card.threshold:.4f}; held-out synthetic AUC "
              f"{auc if auc is not None else 'not evaluated'}; {weights}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models import training  # noqa: PLC0415 - torch-heavy, only for this command

    names = models.DETECTORS if args.name == "all" else (args.name,)
    defs = [definition(n) for n in names]
    changes: dict[str, Any] = {}  # an experiment: recorded in the card's "network" section
    if args.pool is not None:
        changes["pool"] = args.pool
    if args.conv1_stride is not None:
        changes["conv1_t_stride"] = args.conv1_stride
    if args.head is not None:
        changes["head"] = args.head
    if changes:
        defs = [dataclasses.replace(d, network={**d.network, **changes}) for d in defs]
    prep: dict[str, Any] = {}  # an experiment: recorded in the card's "preprocessing"
    if args.pixel_mm is not None:
        prep["pixel_mm"] = args.pixel_mm
    if args.crop is not None:
        prep["crop"] = (args.crop, args.crop)
    if args.mirror:
        prep["mirror"] = True
    if prep:
        defs = [dataclasses.replace(d, preprocessing=_with_preprocessing(d.preprocessing,
                                                                         **prep))
                for d in defs]
    starts = {d.name: _starting_card(d, args.init_from, args.out) for d in defs}
    train_seeds = list(range(training.TRAIN_SEEDS, training.TRAIN_SEEDS + args.train_cases))
    val_seeds = list(range(training.VALIDATION_SEEDS, training.VALIDATION_SEEDS + args.val_cases))
    extra = _extra_seeds(args.extra or [], defs, start=training.TRAIN_SEEDS + args.train_cases)
    added = [s for v in extra.values() for s in v]
    for region in {d.region for d in defs}:
        group = [d for d in defs if d.region is region]
        training.build_cache(group, train_seeds + added + val_seeds, args.cache,
                             workers=args.workers,
                             progress=progress_printer(f"generating {region.value} studies"))
    for d in defs:
        result = training.train(
            d, args.cache, train_seeds=train_seeds, val_seeds=val_seeds,
            out_folder=(args.out or models.MODELS_DIR) / d.name, extra_seeds=extra,
            epochs=args.epochs,
            batch=args.batch, lr=args.lr, negative_ratio=args.negative_ratio,
            balance=args.balance,
            device=args.device,
            init_from=starts[d.name],
        )
        print(f"{d.name}: validation AUC {result.validation_auc:.4f}, threshold "
              f"{result.threshold:.4f} (sensitivity {result.validation_sensitivity:.3f}, "
              f"specificity {result.validation_specificity:.3f}); card {result.card_path}")
    return 0


def _starting_card(d: Definition, init_from: Path | None, out: Path | None
                   ) -> models.ModelCard | None:
    """The card ``--init-from`` names for ``d``, checked before any data is generated."""
    if init_from is None:
        return None
    from models import training  # noqa: PLC0415

    card = models.card(d.name, root=init_from)
    if card.folder.resolve() == ((out or models.MODELS_DIR) / d.name).resolve():
        raise SystemExit(f"--init-from {init_from} is where the new weights would be written; "
                         "train into another --out")
    try:
        training.check_same_model(d, card)
        card.verified_weights()
    except (ValueError, models.WeightsError) as exc:
        raise SystemExit(f"--init-from: {exc}") from exc
    return card


def _extra_seeds(asked: list[str], defs: list[Definition], *, start: int
                 ) -> dict[str, list[int]]:
    """``--extra KEY=N`` → key → the first N seeds from ``start`` drawn with a KEY finding (a
    subtype, a level for fractures, "small" for bleeds), none picked twice."""
    from models import training  # noqa: PLC0415 - torch-heavy, only for this command

    if not asked:
        return {}
    if len(defs) != 1:
        raise SystemExit("--extra applies to one detector: name it instead of all")
    known = extra_keys(defs[0].finding)
    counts: dict[str, int] = {}
    for item in asked:
        key, _, count = item.partition("=")
        if key not in known or key in counts or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--extra {item!r}: expected KEY=N with KEY one of "
                             f"{', '.join(known)} (each once) and N a positive number")
        counts[key] = int(count)
    out = training.seeds_drawn_with(defs[0].region, counts, start=start)
    for key, seeds in out.items():
        print(f"{defs[0].name}: {len(seeds)} extra training studies with a {key} finding, "
              f"seeds {seeds[0]}-{seeds[-1]}")
    return out


def _with_preprocessing(cfg: Preprocessing, *, pixel_mm: float | None = None,
                 crop: tuple[int, int] | None = None, mirror: bool = False) -> Preprocessing:
    """``cfg`` (a Preprocessing) with other in-plane pixels, crop and/or mirrored channels."""
    z, y, x = cfg.target_spacing_mm
    return dataclasses.replace(
        cfg, target_spacing_mm=(z, pixel_mm or y, pixel_mm or x), crop=crop or cfg.crop,
        mirror=mirror or cfg.mirror)


def cmd_eval(args: argparse.Namespace) -> int:
    from models import assess, cards, evaluation, training  # noqa: PLC0415

    d = definition(args.name)
    card = models.card(args.name, root=args.models_dir)
    base_card = None
    if args.baseline is not None:
        base_card = models.card(args.name, root=args.baseline)
        if base_card.folder.resolve() == card.folder.resolve():
            raise SystemExit(f"--baseline {args.baseline} is the card being evaluated "
                             f"({card.folder}); name the other one")
    started = time.monotonic()
    results, skipped, timings, base_results = _score(args, d.finding, "evaluating",
                                                     baseline=args.baseline)
    if args.data:
        source = f"site data {args.data}"
    else:
        source = (f"held-out synthetic phantoms (generator revision "
                  f"{GENERATOR_REVISION}), seeds {args.seed_base}-"
                  f"{args.seed_base + args.cases - 1} (training used {training.TRAIN_SEEDS}+, "
                  f"validation {training.VALIDATION_SEEDS}+)")
    rep = assess.write_report(args.name, results, skipped, threshold=card.threshold,
                              strata=d.strata, out=args.out, source=source)
    if timings:
        rep["inference_seconds_per_study"] = {
            "median": round(float(sorted(timings)[len(timings) // 2]), 3),
            "max": round(max(timings), 3),
            "device": args.device,
            "note": "one process per worker, one thread each",
        }
    if base_card is not None:
        rep["comparison"] = {
            "baseline": {"folder": str(base_card.folder), "version": base_card.version,
                         "threshold": base_card.threshold,
                         "weights_sha256": base_card.weights_sha256},
            "candidate": {"folder": str(card.folder), "version": card.version},
            **evaluation.compare(results, base_results,
                                 strata=[*d.strata, *assess.POPULATION_STRATA]),
        }
        by_uid = {r.study_instance_uid: r for r in base_results}
        for study in rep["studies"]:  # per study, to look at the flags that changed
            if (base := by_uid.get(study["study_instance_uid"])) is not None:
                study["baseline_probability"] = round(base.probability, 5)
                study["baseline_flagged"] = base.flagged
    rep["minutes"] = round((time.monotonic() - started) / 60, 1)
    (args.out / f"{args.name}-eval.json").write_text(json.dumps(rep, indent=1) + "\n")
    overall = rep["overall"]
    print(f"{args.name}: {overall['n']} studies ({overall['positives']} positive), "
          f"AUC {overall['auc']['value']} {overall['auc']['ci95']}, sensitivity "
          f"{overall['sensitivity']['value']} {overall['sensitivity']['ci95']}, specificity "
          f"{overall['specificity']['value']} {overall['specificity']['ci95']}; "
          f"{len(skipped)} not analysed; report in {args.out}")
    for line in rep["strata_below_overall_by_more_than_5_points"]:
        print(f"  below overall: {line}")
    if "comparison" in rep:
        _print_comparison(rep["comparison"])
    if args.update_card and not args.data:
        cards.record_performance(card, rep)
        print(f"updated {card.folder / 'metadata.json'} and README.md")
    return 0


def _print_comparison(comparison: dict[str, Any]) -> None:
    """The paired comparison in a few lines: overall differences, changed flags, strata."""
    base, overall = comparison["baseline"], comparison["overall"]
    parts = []
    for name in ("auc", "sensitivity", "specificity"):
        m = overall[name]
        lo, hi = m["ci95"]
        parts.append(f"{name} {m['baseline']} -> {m['candidate']} ({m['difference']:+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}])" if m["difference"] is not None
                     else f"{name} not computable")
    print(f"against {base['folder']} ({base['version']}) on the same {comparison['studies']} "
          f"studies, paired 95 % CI: {'; '.join(parts)}")
    pos, neg = comparison["flags"]["positives"], comparison["flags"]["negatives"]
    print(f"  positives newly flagged {pos['candidate_only']}, no longer flagged "
          f"{pos['baseline_only']}; negatives newly flagged {neg['candidate_only']}, no longer "
          f"flagged {neg['baseline_only']}")
    for line in comparison["differences_excluding_zero"]:
        print(f"  interval excludes 0: {line}")
    if comparison["unpaired"]:
        print(f"  {comparison['unpaired']} studies scored by one model only were left out")


def _score(args: argparse.Namespace, finding: str, verb: str,
           baseline: Path | None = None) -> tuple[list[Any], list[str], list[float], list[Any]]:
    """Score a site's labelled folder (``--data/--labels``) or synthetic seeds with the card
    in ``--models-dir`` (or the bundled one): results, not-analysed reasons, timings, and the
    same studies scored by the card in ``baseline/<name>`` (empty without one)."""
    from models import assess  # noqa: PLC0415

    roots = [args.models_dir] + ([baseline] if baseline is not None else [])
    if args.data:
        if not args.labels:
            raise SystemExit("--data needs --labels (CSV: study_instance_uid,finding,...)")
        detectors = [models.load(args.name, device=args.device, root=root,
                                 flip_average=_flip_average(args)) for root in roots]
        labels = assess.read_site_labels(args.labels)
        scored, skipped = assess.score_folder(detectors, args.data, labels, finding)
        timings: list[float] = []
    else:
        seeds = list(range(args.seed_base, args.seed_base + args.cases))
        scored, skipped, timings = assess.score_synthetic(
            args.name, seeds, roots=roots, workers=args.workers, device=args.device,
            flip_average=_flip_average(args), progress=progress_printer(f"{verb} {args.name}"))
    return scored[0], skipped, timings, scored[1] if baseline is not None else []


def _flip_average(args: argparse.Namespace) -> bool | None:
    """``--flip-average on|off`` where the command has it; ``None``: as the card says."""
    choice = getattr(args, "flip_average", None)
    return None if choice is None else choice == "on"


def cmd_calibrate_threshold(args: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415

    from models import cards, evaluation, training  # noqa: PLC0415

    d = definition(args.name)
    card = models.card(args.name, root=args.models_dir)
    target = d.target_specificity if args.specificity is None else args.specificity
    if not 0.5 <= target < 1.0:
        raise SystemExit(f"--specificity must be in [0.5, 1), not {target}")
    if args.data:
        source = f"site data {args.data}"
    else:
        first, last = args.seed_base, args.seed_base + args.cases - 1
        if first < training.VALIDATION_SEEDS or last >= training.TEST_SEEDS:
            raise SystemExit(
                f"synthetic seeds {first}-{last} are not all validation seeds "
                f"({training.VALIDATION_SEEDS}-{training.TEST_SEEDS - 1}): a threshold chosen "
                "on training or held-out studies would make the held-out figures optimistic")
        source = (f"synthetic validation phantoms (generator revision "
                  f"{GENERATOR_REVISION}), seeds {first}-{last}")
    results, skipped, _, _ = _score(args, d.finding, "scoring")
    labels = np.array([r.positive for r in results], dtype=bool)
    scores = np.array([r.probability for r in results], dtype=float)
    try:
        threshold, metrics = evaluation.operating_point(labels, scores, target)
    except ValueError as exc:
        raise SystemExit(f"{args.name}: {exc}") from None
    flip = _flip_average(args)
    switched = flip is not None and flip != card.flip_average
    now_sens = float((scores[labels] >= card.threshold).mean())
    now_spec = float((scores[~labels] < card.threshold).mean())
    print(f"{args.name}: {metrics['studies']} studies ({metrics['positives']} positive, "
          f"{len(skipped)} not analysed), AUC {metrics['auc']['value']}"
          + (f" with flip averaging {args.flip_average}" if switched else ""))
    print(f"  now   threshold {card.threshold:.6f}: sensitivity {now_sens:.4f}, "
          f"specificity {now_spec:.4f}" + (f" (scored with flip averaging {args.flip_average})"
                                             if switched else ""))
    print(f"  chose threshold {threshold:.6f}: sensitivity {metrics['sensitivity']['value']} "
          f"{metrics['sensitivity']['ci95']}, specificity {metrics['specificity']['value']} "
          f"{metrics['specificity']['ci95']} (target {target:g})")
    negatives = int((~labels).sum())
    allowed = evaluation.allowed_false_positives(negatives, target)
    if allowed < 10:
        print(f"  note: {negatives} negative studies, of which {allowed} may score above the "
              f"threshold: it rests on that many studies, and the specificity on new studies "
              f"may differ by several points (95 % CI above); for specificity {target:g} use "
              f"at least {math.ceil(10 / (1 - target) - 1e-9)} negatives")
    if args.dry_run:
        print("dry run: the card is unchanged")
        return 0
    rule = f"specificity >= {target:g} on {metrics['studies']} validation studies"
    version = cards.record_operating_point(card, threshold, metrics, rule=rule, source=source,
                                           flip_average=flip)
    print(f"wrote {card.folder / 'metadata.json'} (version {version}) and README.md; the "
          f"held-out figures were measured at the old threshold: rerun `triage models eval "
          f"{args.name} --update-card`")
    if switched:
        print(f"  flip averaging {args.flip_average}: the key slice, whose features the OOD "
              f"gate reads, is chosen another way; refit it once this card is in place: "
              f"`triage models calibrate-ood {args.name}`")
    return 0


def cmd_calibrate_ood(args: argparse.Namespace) -> int:
    from models import calibration, cards  # noqa: PLC0415 - torch-heavy, only for this command

    names = models.DETECTORS if args.name == "all" else (args.name,)
    for name in names:
        models.card(name)  # unknown names fail before any work
    summaries = calibration.calibrate(
        names, fit_cases=args.fit_cases, calibration_cases=args.calibration_cases,
        check_cases=args.check_cases, workers=args.workers, quantile=args.quantile,
        progress=progress_printer)
    for name, section in summaries.items():
        cards.write_readme(models.card(name))
        checks = section["checks"]
        print(f"{name}: thresholds feature {section['feature_threshold']}, intensity "
              f"{section['intensity_threshold']}; AI-not-applicable rate: held-out "
              f"{checks['held_out_in_distribution']['ood_rate']}, "
              + ", ".join(f"{k} {v['ood_rate']}" for k, v in checks.items()
                          if k != "held_out_in_distribution"))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from models import assess  # noqa: PLC0415

    names = args.detectors.split(",") if args.detectors else [c.name for c in models.available()]
    detectors = {n: models.load(n, device=args.device) for n in names}
    rows = list(assess.analyze([Path(p) for p in args.paths], detectors))
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=1, default=str))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["study_instance_uid", "series_instance_uid", "slices",
                         "slice_thickness_mm", "detector", "probability", "flagged",
                         "slice_range", "not_analysed"])
        for row in rows:
            if row.error:
                writer.writerow([row.study_instance_uid, row.series_instance_uid, row.slices,
                                 "", "", "", "", "", row.error])
            for name, res in row.results.items():
                rng = res.get("slice_range")
                writer.writerow([row.study_instance_uid, row.series_instance_uid, row.slices,
                                 row.slice_thickness_mm, name, res.get("probability", ""),
                                 res.get("flagged", ""),
                                 f"{rng[0]}-{rng[1]}" if rng else "",
                                 res.get("not_analysed", "")])
    else:
        for row in rows:
            head = f"{row.series_instance_uid} ({row.slices} slices"
            head += f", {row.slice_thickness_mm:g} mm)" if row.slice_thickness_mm else ")"
            if row.error:
                print(f"{head}: not analysed: {row.error}")
                continue
            parts = []
            for name, res in row.results.items():
                if "not_analysed" in res:
                    parts.append(f"{name} not analysed: {res['not_analysed']}")
                else:
                    flag = "FLAGGED" if res["flagged"] else "-"
                    where = (f" slices {res['slice_range'][0]}-{res['slice_range'][1]}"
                             if res["slice_range"] else "")
                    parts.append(f"{name} {res['probability']:.3f} {flag}{where}")
            print(f"{head}: " + "; ".join(parts))
        print("AI output, not for diagnosis; models trained on synthetic phantoms only.",
              file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from models.synthetic.generate import write_dataset  # noqa: PLC0415
    from models.synthetic.spec import Region  # noqa: PLC0415

    overrides: dict[str, Any] = {}
    if args.finding:
        overrides["finding"] = args.finding
    seeds = range(args.seed, args.seed + args.n)
    path = write_dataset(Region(args.region), seeds, args.out, max_slices=args.max_slices,
                         workers=args.workers, progress=progress_printer("generating"),
                         **overrides)
    print(path)
    return 0


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from models.synthetic.contact import contact_sheet  # noqa: PLC0415

    contact_sheet(args.out, seed=args.seed)
    print(args.out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triage models", description="Detectors and their data.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="bundled detectors and their cards").set_defaults(fn=cmd_list)

    t = sub.add_parser("train", help="train a detector on synthetic phantoms")
    t.add_argument("name", help=f"{', '.join(models.DETECTORS)} or all")
    t.add_argument("--train-cases", type=int, default=1200)
    t.add_argument("--val-cases", type=int, default=300)
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--negative-ratio", type=float, default=2.0,
                   help="negative slices drawn per positive slice")
    t.add_argument("--balance", choices=["slice", "study"],
                   help="positive slices: each once (slice) or each positive study with the "
                        "same share (study); default: the definition's (experiments)")
    t.add_argument("--out", type=Path,
                   help="write weights and card to OUT/<name> instead of the bundled folder "
                        "(experiments)")
    t.add_argument("--pool", choices=["avg", "max"],
                   help="global pooling of the last feature map (default: the definition's, "
                        "average); recorded in the card (experiments)")
    t.add_argument("--conv1-stride", type=int, choices=[1, 2],
                   help="stride of the first convolution (default: the definition's, 2); 1 "
                        "keeps twice the resolution in every later layer for about four times "
                        "the compute (experiments)")
    t.add_argument("--head", choices=["linear", "map"],
                   help="slice logit from the pooled features (linear, the default) or the "
                        "maximum of a grid of cell logits trained also on where the finding "
                        "is, from the generator's boxes (map); recorded in the card "
                        "(experiments)")
    t.add_argument("--pixel-mm", type=float,
                   help="in-plane pixel size the slices are resampled to (default: the "
                        "definition's); recorded in the card's preprocessing (experiments)")
    t.add_argument("--crop", type=int,
                   help="side of the square crop in pixels (default: the definition's); with "
                        "--pixel-mm it sets the field of view (experiments)")
    t.add_argument("--mirror", action="store_true",
                   help="add every channel mirrored left-right about the crop's centre, so the "
                        "network can compare the two sides (most posterior-element breaks "
                        "are one-sided; the normal gaps come in pairs); recorded in the card's "
                        "preprocessing (experiments)")
    t.add_argument("--extra", action="append", metavar="KEY=N",
                   help="also train on N studies drawn with a KEY finding: a subtype (e.g. "
                        "posterior=800 for the C-spine detector, subdural=300 for "
                        "hemorrhage), a fracture level (C1=300) or, for hemorrhage, small (a "
                        "bleed under 5 mL: small=400); from the training seeds "
                        "after --train-cases, none twice; repeatable; recorded in the card's "
                        "training data (experiments)")
    t.add_argument("--init-from", type=Path, metavar="DIR",
                   help="fine-tune: start from the weights of the card in DIR/<name> (e.g. "
                        "`models` for the bundled ones) instead of random ones; same network "
                        "and preprocessing switches required; the starting weights are kept "
                        "unless an epoch beats them on validation")
    t.add_argument("--workers", type=int, default=2, help="processes generating data")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--cache", type=Path, default=Path("var/model-cache"),
                   help="prepared studies, one folder per detector, sampling and generator "
                        "revision")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate on held-out synthetic data or a labelled folder")
    e.add_argument("name")
    e.add_argument("--cases", type=int, default=EVAL_CASES,
                   help="held-out synthetic studies (default %(default)s)")
    e.add_argument("--seed-base", type=int, default=TEST_SEEDS,
                   help="first held-out seed (default %(default)s)")
    e.add_argument("--data", type=Path, help="folder of DICOM studies from a site")
    e.add_argument("--labels", type=Path, help="CSV: study_instance_uid,finding[,subtype,...]")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="cpu")
    e.add_argument("--models-dir", type=Path,
                   help="evaluate the card in MODELS_DIR/<name> (the --out of `train`) instead "
                        "of the bundled one")
    e.add_argument("--baseline", type=Path, nargs="?", const=models.MODELS_DIR,
                   metavar="DIR",
                   help="also score the card in DIR/<name> (without DIR: the bundled one) on "
                        "the same studies, each rendered or loaded once, and report the "
                        "paired differences with bootstrap CIs and the flags that changed")
    e.add_argument("--out", type=Path, default=Path("var/eval"))
    e.add_argument("--update-card", action="store_true",
                   help="write the results into metadata.json and README.md")
    e.set_defaults(fn=cmd_eval)

    h = sub.add_parser("calibrate-threshold",
                       help="choose a detector's threshold at a target specificity on "
                            "validation studies (synthetic seeds or a site's labelled folder)")
    h.add_argument("name")
    h.add_argument("--specificity", type=float,
                   help="target specificity (default: the detector's, e.g. 0.95)")
    h.add_argument("--cases", type=int, default=1000, help="synthetic validation studies")
    h.add_argument("--seed-base", type=int, default=500_000,
                   help="first synthetic validation seed (500000-899999)")
    h.add_argument("--data", type=Path, help="folder of a site's DICOM validation studies")
    h.add_argument("--labels", type=Path, help="CSV: study_instance_uid,finding[,...]")
    h.add_argument("--workers", type=int, default=2)
    h.add_argument("--device", default="cpu")
    h.add_argument("--models-dir", type=Path,
                   help="recalibrate the card in MODELS_DIR/<name> instead of the bundled one")
    h.add_argument("--flip-average", choices=["on", "off"],
                   help="score with test-time flip averaging switched on or off (each slice's "
                        "probability the mean of the slice's and its left-right mirror's; "
                        "twice the network time) and record it in the card with the threshold "
                        "(default: as the card has it)")
    h.add_argument("--dry-run", action="store_true",
                   help="print the threshold it would choose; change nothing")
    h.set_defaults(fn=cmd_calibrate_threshold)

    o = sub.add_parser("calibrate-ood",
                       help="fit and calibrate the out-of-distribution gate of a detector")
    o.add_argument("name", help=f"{', '.join(models.DETECTORS)} or all")
    o.add_argument("--fit-cases", type=int, default=300, help="training-seed studies")
    o.add_argument("--calibration-cases", type=int, default=200,
                   help="validation-seed studies that set the thresholds")
    o.add_argument("--check-cases", type=int, default=100, help="held-out studies checked")
    o.add_argument("--quantile", type=float, default=0.995)
    o.add_argument("--workers", type=int, default=2)
    o.set_defaults(fn=cmd_calibrate_ood)

    a = sub.add_parser("analyze", help="run the detectors on DICOM folders")
    a.add_argument("paths", nargs="+")
    a.add_argument("--detectors", help="comma-separated (default: all)")
    a.add_argument("--device", default="cpu")
    out = a.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    a.set_defaults(fn=cmd_analyze)

    s = sub.add_parser("synthetic", help="synthetic CT phantoms")
    ssub = s.add_subparsers(dest="synthetic_command", required=True)
    g = ssub.add_parser("generate", help="write synthetic DICOM studies and labels.csv")
    g.add_argument("--region", choices=["head", "cspine"], default="head")
    g.add_argument("--n", type=int, default=10)
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--finding", choices=["none", "hemorrhage", "stroke", "fracture"])
    g.add_argument("--max-slices", type=int, default=64)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--out", type=Path, required=True)
    g.set_defaults(fn=cmd_generate)
    c = ssub.add_parser("contact-sheet", help="PNG of synthetic cases in brain/bone windows")
    c.add_argument("--out", type=Path, default=Path("docs/synthetic-contact-sheet.png"))
    c.add_argument("--seed", type=int, default=3)
    c.set_defaults(fn=cmd_contact_sheet)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except (models.ModelError, ValueError, OSError) as exc:
        print(f"triage models: error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
