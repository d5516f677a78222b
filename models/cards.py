"""Writes the human model card (README.md) of a detector from its metadata.json and evaluation."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from models.detector import ModelCard
from models.training import TEST_SEEDS

EVAL_CASES = 600  # `triage models eval`'s held-out synthetic studies (from TEST_SEEDS), by default

GOALS = {
    "hemorrhage": "AUC ≥ 0.98; sensitivity ≥ 0.95 at specificity ≥ 0.95; sensitivity ≥ 0.85 "
                  "for bleeds < 5 mL; no stratum more than 5 points below overall",
    "stroke": "AUC ≥ 0.90; no stratum more than 5 points below overall",
    "cspine_fracture": "AUC ≥ 0.95; no stratum more than 5 points below overall",
}


def _fmt(metric: dict[str, Any]) -> str:
    value, (lo, hi) = metric.get("value"), metric.get("ci95", [None, None])
    if value is None:
        return "n/a"
    return f"{value:.3f} ({lo:.3f}-{hi:.3f})" if lo is not None else f"{value:.3f}"


def record_performance(card: ModelCard, report: dict[str, Any]) -> None:
    """Store a held-out evaluation in metadata.json and regenerate README.md."""
    data = dict(card.raw)
    data["performance"] = {
        "source": report["source"],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "threshold": report["threshold"],
        "overall": report["overall"],
        "strata": {
            attribute: {value: {k: m[k] for k in ("n", "positives", "auc", "sensitivity",
                                                  "specificity")}
                        for value, m in table.items()}
            for attribute, table in report["strata"].items()
        },
        "strata_below_overall_by_more_than_5_points":
            report["strata_below_overall_by_more_than_5_points"],
        "not_analysed": report["not_analysed"]["count"],
        "inference_seconds_per_study": report.get("inference_seconds_per_study"),
    }
    _save(card, data)


def _save(card: ModelCard, data: dict[str, Any]) -> None:
    """Write ``data`` as the card's metadata.json and regenerate its README.md from it."""
    (card.folder / "metadata.json").write_text(json.dumps(data, indent=2) + "\n")
    write_readme(ModelCard.read(card.folder))


def _operating_point_line(op: dict[str, Any]) -> str:
    """Where the threshold was chosen and what it gave there (training or calibration)."""
    def fmt(metric: Any) -> str:
        return _fmt(metric) if isinstance(metric, dict) else f"{float(metric):.3f}"

    where = op.get("source") or "the validation studies of training"
    positives = f", {op['positives']} positive" if "positives" in op else ""
    when = f", {op['date']}" if "date" in op else ""
    return (f"- Operating point chosen on {op.get('studies', '?')} studies{positives} "
            f"({where}{when}): there sensitivity {fmt(op['sensitivity'])}, specificity "
            f"{fmt(op['specificity'])}, AUC {fmt(op['auc'])}.")


def next_patch_version(version: str) -> str:
    """``0.2.0`` → ``0.2.1``; a version that is not three numbers gets ``.1`` appended."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}.{parts[1]}.{int(parts[2]) + 1}"
    return f"{version}.1"


def record_operating_point(card: ModelCard, threshold: float, metrics: dict[str, Any], *,
                           rule: str, source: str, flip_average: bool | None = None) -> str:
    """Store a re-chosen threshold in metadata.json and README.md; returns the new version.

    The weights are unchanged but the flags are not, so the version moves on a patch step
    (results in the worklist carry it) and the changelog says why.  A held-out evaluation
    made at the old threshold is kept and marked stale until the next ``eval --update-card``.
    ``flip_average``: the threshold was chosen with test-time flip averaging switched on or
    off (``None``: as the card has it), which the card then says.
    """
    data = dict(card.raw)
    old = float(data["threshold"])
    version = next_patch_version(str(data.get("version", "0.0.0")))
    switched = ""
    if flip_average is not None and flip_average != card.flip_average:
        data["aggregation"] = {**data.get("aggregation", {}), "flip_average": flip_average}
        switched = (f"test-time flip averaging switched {'on' if flip_average else 'off'}, "
                    "scores change; ")
    data["version"] = version
    data["changelog"] = {
        **data.get("changelog", {}),
        version: (f"{switched}threshold {old:.4f} -> {threshold:.4f}: {rule} ({source}); "
                  "weights unchanged"),
    }
    data["threshold"] = threshold
    data["operating_point"] = {
        "rule": rule,
        "source": source,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        **metrics,
    }
    if "performance" in data and float(data["performance"]["threshold"]) != threshold:
        data["performance"] = {**data["performance"], "stale": True}
    _save(card, data)
    return version


def train_command(name: str, train: dict[str, Any]) -> str:
    """The ``triage models train`` line that redoes the training a card records: its study
    counts, epochs, balance, negative ratio and extra studies (the network and sampling are
    the detector's definition)."""
    parts = [f"triage models train {name}"]
    if "train_cases" in train and "validation_cases" in train:
        parts.append(f"--train-cases {train['train_cases']} "
                     f"--val-cases {train['validation_cases']}")
    if "epochs" in train:
        parts.append(f"--epochs {train['epochs']}")
    if train.get("positive_balance"):
        parts.append(f"--balance {train['positive_balance']}")
    if train.get("negative_ratio", 2.0) != 2.0:
        parts.append(f"--negative-ratio {train['negative_ratio']:g}")
    if train.get("learning_rate", 2e-3) != 2e-3:
        parts.append(f"--lr {train['learning_rate']:g}")
    parts += [f"--extra {k}={v}" for k, v in train.get("extra_studies", {}).items()]
    if train.get("initialised_from"):
        parts.append("--init-from DIR")
    return " ".join(parts)


def _init_line(train: dict[str, Any]) -> list[str]:
    """What ``--init-from DIR`` of the train line stands for, where the weights were
    fine-tuned from another card's."""
    parent = train.get("initialised_from")
    if not parent:
        return []
    return [f"# DIR: a models folder holding {parent['name']} {parent['version']} (weights "
            f"sha256 {parent['weights_sha256'][:16]}…), these weights' starting point"]


def eval_command(name: str, perf: dict[str, Any] | None) -> str:
    """The ``triage models eval`` line that redoes a card's held-out evaluation: the seed
    range its source names, as ``--cases``/``--seed-base`` where they are not the defaults."""
    parts = [f"triage models eval {name}"]
    seeds = _seed_range("held-out synthetic", (perf or {}).get("source"))
    if seeds:
        first, cases = seeds
        if cases != EVAL_CASES:
            parts.append(f"--cases {cases}")
        if first != TEST_SEEDS:
            parts.append(f"--seed-base {first}")
    return " ".join([*parts, "--update-card"])


def threshold_command(name: str, op: dict[str, Any], *, flip_average: bool = False
                      ) -> str | None:
    """The ``triage models calibrate-threshold`` line that re-chose a card's threshold on
    synthetic validation seeds after training (None where training's own choice stands or a
    site's data chose it): training alone would give another threshold.  Training never
    switches flip averaging on, so a card with it on was calibrated with it."""
    seeds = _seed_range("synthetic validation", op.get("source"))
    target = re.match(r"specificity >= ([0-9.]+) on", op.get("rule", ""))
    if not (seeds and target):
        return None
    first, cases = seeds
    return (f"triage models calibrate-threshold {name} --specificity {target[1]} "
            f"--cases {cases} --seed-base {first}"
            + (" --flip-average on" if flip_average else ""))


def _seed_range(kind: str, source: str | None) -> tuple[int, int] | None:
    """First seed and number of studies of the "``kind`` ... seeds FIRST-LAST" that a card's
    source sentence names (as ``eval`` and ``calibrate-threshold`` write it), else None."""
    seeds = re.search(rf"{kind} .*?seeds (\d+)-(\d+)", source or "")
    return (int(seeds[1]), int(seeds[2]) - int(seeds[1]) + 1) if seeds else None


def write_readme(card: ModelCard) -> None:
    data = card.raw
    perf = data.get("performance")
    train = data.get("training", {})
    elig = data["eligibility"]
    prep = data["preprocessing"]
    chosen = threshold_command(card.name, data.get("operating_point", {}),
                               flip_average=card.flip_average)
    lines = [
        f"# Model card: `{card.name}` {card.version}",
        "",
        "> **Not for clinical use.** The bundled weights were trained **only on synthetic CT "
        "phantoms** generated by this project (`models/synthetic`), never on patient data. "
        "Their performance on real CT is unknown. Output is AI-generated triage information, "
        "not a diagnosis.",
        "",
        "## Model",
        f"- Task: {card.task}.",
        f"- {data['description']}",
        f"- Network: {data['network']['type']} (2-D, blocks {data['network']['layers']}, "
        f"widths {data['network']['block_inplanes']}), "
        f"{data['network_data_format']['inputs']['image']['num_channels']} input channels of "
        f"{prep['crop'][0]}×{prep['crop'][1]} pixels at "
        f"{prep['target_spacing_mm'][1]:g} mm, slices resampled to "
        f"{prep['target_spacing_mm'][0]:g} mm (thin slices averaged, thick ones kept)"
        + ("; the second half of the channels is the first mirrored left-right about the "
           "crop's centre (bilateral comparison)." if prep.get("mirror") else "."),
        f"- Output: study probability (threshold {card.threshold:.4f}, "
        f"{data['operating_point']['rule']}), the slice range above threshold, the key slice "
        "and a feature vector for out-of-distribution and drift monitoring."
        + (" Test-time flip averaging: each slice's probability is the mean of the slice's "
           "and its left-right mirror's (twice the network time; the feature vector is the "
           "unmirrored slices')." if card.flip_average else ""),
        _operating_point_line(data["operating_point"]),
        f"- Weights: `{data['weights']['file']}`, sha256 `{data['weights']['sha256']}` "
        "(checked at every load).",
        "",
        "## Intended use and eligibility",
        f"- {data['intended_use']}",
        f"- Eligible input: {'/'.join(elig['modalities'])}, body part "
        f"{'/'.join(elig['body_parts']) or 'any'} (or missing), at least {elig['min_slices']} "
        f"axial slices covering {elig['min_coverage_mm']:g} mm, slices at most "
        f"{elig['max_slice_thickness_mm']:g} mm thick"
        + (", no contrast agent" if elig["contrast"] == "absent" else "")
        + ". Gantry-tilted, non-axial or gapped series are refused by the loader. Anything "
        "else is reported as *not analysed* with the reason, never as a negative.",
        "",
        "## Training data",
        f"- {train.get('data', 'not trained yet')}.",
        f"- {train.get('positives_train', '?')} positive training studies; {train.get('epochs')}"
        f" epochs on {train.get('device', '?')} in {train.get('minutes', '?')} minutes "
        f"({train.get('date', '?')})"
        + ("; positive slices drawn study-balanced (each positive study the same share, "
           "whatever the extent of its finding)" if train.get("positive_balance") == "study"
           else "") + ".",
        "- The generator varies anatomy, pose, age, sex, vendor (GE, Siemens, Toshiba, "
        "Philips), kernel, kVp, mAs, slice thickness (0.625-5 mm) and adds look-alikes "
        "(calcifications, dense venous sinuses, beam hardening, motion, metal, degenerative "
        "spine) to normals and positives alike; the finding is drawn independently of all of "
        "them so that none leaks the label.",
        "",
        "## Performance",
    ]
    if perf is None:
        lines.append("Not evaluated yet: run `triage models eval "
                     f"{card.name} --update-card`.")
    else:
        overall = perf["overall"]
        if perf.get("stale"):
            lines += ["**Stale:** measured with earlier weights or another threshold than "
                      "the card's; rerun `triage models eval "
                      f"{card.name} --update-card`.", ""]
        lines += [
            f"Held-out evaluation ({perf['source']}; {perf['date']}), threshold "
            f"{perf['threshold']:.4f}. 95 % confidence intervals: bootstrap for AUC, Wilson "
            "for proportions.",
            "",
            "| | value (95 % CI) |",
            "| --- | --- |",
            f"| studies (positive) | {overall['n']} ({overall['positives']}) |",
            f"| AUC | {_fmt(overall['auc'])} |",
            f"| sensitivity | {_fmt(overall['sensitivity'])} |",
            f"| specificity | {_fmt(overall['specificity'])} |",
            "",
            f"Goals of the project for this detector: {GOALS.get(card.name, 'n/a')}.",
            "",
            "### By stratum",
            "",
            "| stratum | n (pos) | AUC | sensitivity | specificity |",
            "| --- | --- | --- | --- | --- |",
        ]
        for attribute, table in perf["strata"].items():
            for value, m in table.items():
                lines.append(f"| {attribute} = {value} | {m['n']} ({m['positives']}) | "
                             f"{_fmt(m['auc'])} | {_fmt(m['sensitivity'])} | "
                             f"{_fmt(m['specificity'])} |")
        below = perf["strata_below_overall_by_more_than_5_points"]
        lines += ["", "Strata more than 5 points below overall: "
                  + ("; ".join(below) if below else "none") + "."]
        timing = perf.get("inference_seconds_per_study")
        if timing:
            lines += ["", f"CPU inference: median {timing['median']} s per study "
                      f"(max {timing['max']} s), {timing['note']}."]
    ood = data.get("ood")
    lines += ["", "## Out-of-distribution gate"]
    if not ood:
        lines.append("Not calibrated: run `triage models calibrate-ood "
                     f"{card.name}`. Without it every eligible study gets a score.")
    else:
        checks = ood["checks"]

        def rate(key: str) -> str:
            c = checks.get(key) or {}
            return "n/a" if c.get("ood_rate") is None else f"{c['ood_rate']:.3f} of {c['studies']}"

        lines += [
            "Every study gets an OOD score: " + ood["method"] + ". Above 1.0 the worklist "
            "shows *AI not applicable: out of distribution* instead of a result, never a "
            "silent negative.",
            "",
            f"- Reference: {ood['fit']} ({ood['fit_studies']} studies); thresholds at the "
            f"{ood['quantile']} quantile of {ood['calibration']} ({ood['calibration_studies']} "
            f"studies); reference file `{ood['file']}`, sha256 `{ood['sha256']}` (checked at "
            "every load).",
            f"- Rate of *AI not applicable* ({ood['checks_on']}, {ood['date']}): "
            f"in-distribution {rate('held_out_in_distribution')}; HU calibration +50 HU "
            f"{rate('hu_offset_+50')}; +150 HU {rate('hu_offset_+150')}; the other body "
            f"region with its body-part tag removed {rate('other_region')}.",
            "- The reference is synthetic: on real CT expect many studies to score as out of "
            "distribution until a site re-fits the reference on its own accepted studies.",
        ]
    lines += [
        "",
        "## Limitations",
        "- Synthetic phantoms are simplified anatomy; real scans contain variation, "
        "pathology and artifacts the generator does not model. Treat these weights as a "
        "pipeline test and a starting point for fine-tuning on a site's labelled data.",
        "- Slice-level 2.5-D model: findings are localised to a slice range, not outlined.",
        "",
        "## Reproduce or adapt",
        "```",
        f"{train_command(card.name, train)}   # regenerates data, retrains the same way",
        *_init_line(train),
        *([f"{chosen}   # re-chooses the threshold as for these weights"] if chosen else []),
        f"{eval_command(card.name, perf)}   # held-out synthetic seeds",
        f"triage models eval {card.name} --data SITE_DICOM/ --labels labels.csv",
        f"triage models calibrate-threshold {card.name} --data SITE_DICOM/ --labels labels.csv"
        "   # re-chooses the threshold",
        f"triage models calibrate-ood {card.name}    # refits the out-of-distribution gate",
        "```",
        "",
        "## History",
        *[f"- {version}: {text}" for version, text in data.get("changelog", {}).items()],
        "",
    ]
    (card.folder / "README.md").write_text("\n".join(lines))
