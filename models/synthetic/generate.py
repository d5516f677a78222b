"""Generates synthetic studies: render → scan → store, in memory or as DICOM plus labels.

The in-memory volume is exactly what a reader of the written DICOM files gets back (the
same quantisation and padding), so training on it and evaluating on files agree.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.synthetic.cspine import render_cspine
from models.synthetic.dicom import case_uids, stored_values, write_series
from models.synthetic.grid import Grid, make_grid, slice_centres
from models.synthetic.head import render_head
from models.synthetic.render import Rendered
from models.synthetic.sampling import sample_case
from models.synthetic.scanner import scan
from models.synthetic.spec import CaseSpec, Region
from models.synthetic.vendors import vendor_named
from models.volume import HU_MAX, HU_MIN, Volume

#: A slice counts as showing a finding when the finding covers at least this area in it.
MIN_SLICE_AREA_MM2 = 4.0

#: Bumped whenever a change makes the same seed give other images or labels, so prepared
#: training caches and evaluation figures can say which phantoms they came from.
#: 2: a fracture gap is labelled where it replaced bone, not over a margin around its plane;
#:    a fracture's subtype follows the part that broke (a dens break is "body").
GENERATOR_REVISION = 2

LABEL_COLUMNS = (
    "case_id", "study_instance_uid", "region", "finding", "subtype", "volume_ml", "side",
    "level", "manufacturer", "kernel", "kvp", "slice_thickness_mm", "age", "sex", "seed", "path",
)


@dataclass
class Case:
    """One generated study in memory."""

    spec: CaseSpec
    hu: np.ndarray  # float32 (S, H, W), HU as a DICOM reader sees them
    spacing_mm: tuple[float, float, float]  # z, y, x
    labels: dict[str, Any]
    slice_positive: np.ndarray  # bool (S,): any finding on the slice
    grid: Grid

    @property
    def finding(self) -> str:
        return str(self.labels["finding"])

    def volume(self) -> Volume:
        """The study as :class:`models.volume.Volume`, as the DICOM loader would return it."""
        acq = self.spec.acquisition
        z0 = float(slice_centres(acq)[0])
        meta = {
            "modality": "CT",
            "manufacturer": acq.manufacturer,
            "model": acq.model,
            "kernel": acq.kernel,
            "kvp": acq.kvp,
            "slice_thickness_mm": acq.slice_thickness_mm,
            "pixel_spacing_mm": [self.grid.pixel_mm, self.grid.pixel_mm],
            "body_part_examined": "HEAD" if self.spec.region is Region.HEAD else "CSPINE",
            "contrast_agent": "",
            "patient_age": f"{self.spec.patient.age_years:03d}Y",
            "patient_sex": self.spec.patient.sex,
            "n_slices": int(self.hu.shape[0]),
        }
        return Volume(
            hu=np.clip(self.hu, HU_MIN, HU_MAX),
            spacing_mm=self.spacing_mm,
            origin_mm=(float(self.grid.x[0]), float(self.grid.y[0]), z0),
            study_instance_uid=self.labels["study_instance_uid"],
            series_instance_uid=self.labels["series_instance_uid"],
            meta=meta,
        )


def renderer(region: Region) -> Callable[[Grid, CaseSpec, np.random.Generator], Rendered]:
    return render_head if region is Region.HEAD else render_cspine


def generate(spec: CaseSpec) -> Case:
    """Render, scan and quantise ``spec`` (deterministic)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 11]))
    grid = make_grid(spec.acquisition)
    rendered = renderer(spec.region)(grid, spec, rng)
    scanned = scan(rendered, grid, spec, rng)
    intercept = vendor_named(spec.acquisition.manufacturer).rescale_intercept
    hu = stored_values(scanned.hu, spec).astype(np.float32) + np.float32(intercept)
    findings = []
    positive = np.zeros(hu.shape[0], dtype=bool)
    for index, label in enumerate(rendered.findings):
        areas = scanned.lesion_area_mm2[index]
        on = np.nonzero(areas >= MIN_SLICE_AREA_MM2)[0]
        if label.volume_ml <= 0 or on.size == 0:
            continue  # not visible in this acquisition
        positive[on] = True
        findings.append({
            "kind": label.kind,
            "subtype": label.subtype,
            "volume_ml": round(float(label.volume_ml), 3),
            "side": label.side,
            "level": label.level,
            "bbox_mm": [round(float(v), 2) for v in label.bbox_mm] if label.bbox_mm else None,
            "slices": [int(on[0]), int(on[-1])],
            "extra": label.extra,
        })
    study_uid, series_uid, _ = case_uids(spec)
    acq = spec.acquisition
    labels: dict[str, Any] = {
        "case_id": f"{spec.region.value}-{spec.seed:07d}",
        "seed": spec.seed,
        "region": spec.region.value,
        "study_instance_uid": study_uid,
        "series_instance_uid": series_uid,
        "finding": findings[0]["kind"] if findings else "none",
        "findings": findings,
        "patient": {"age": spec.patient.age_years, "sex": spec.patient.sex},
        "acquisition": {
            "manufacturer": acq.manufacturer, "model": acq.model, "kernel": acq.kernel,
            "kvp": acq.kvp, "mas": acq.mas, "slice_thickness_mm": acq.slice_thickness_mm,
            "spacing_mm": acq.spacing_mm, "n_slices": acq.n_slices, "fov_mm": acq.fov_mm,
            "matrix": acq.matrix, "hu_offset": acq.hu_offset,
        },
        "confounders": dataclasses.asdict(spec.confounders),
        "noise_sd_hu": round(scanned.noise_sd_hu, 2),
        "synthetic": True,
        "generator_revision": GENERATOR_REVISION,
    }
    return Case(spec=spec, hu=hu, spacing_mm=(acq.spacing_mm, grid.pixel_mm, grid.pixel_mm),
                labels=labels, slice_positive=positive, grid=grid)


def write_case(case: Case, folder: Path) -> list[Path]:
    """Write the DICOM series and ``labels.json`` of ``case`` into ``folder``."""
    # case.hu already went through storage once; storing it again gives the same values.
    paths = write_series(case.spec, case.hu, case.grid, folder)
    (folder / "labels.json").write_text(json.dumps(case.labels, indent=1))
    return paths


def label_row(labels: dict[str, Any], path: str) -> dict[str, Any]:
    """The flat ``labels.csv`` row of a case."""
    first = labels["findings"][0] if labels["findings"] else {}
    acq = labels["acquisition"]
    return {
        "case_id": labels["case_id"],
        "study_instance_uid": labels["study_instance_uid"],
        "region": labels["region"],
        "finding": labels["finding"],
        "subtype": first.get("subtype", ""),
        "volume_ml": first.get("volume_ml", ""),
        "side": first.get("side", "") or "",
        "level": first.get("level", "") or "",
        "manufacturer": acq["manufacturer"],
        "kernel": acq["kernel"],
        "kvp": acq["kvp"],
        "slice_thickness_mm": acq["slice_thickness_mm"],
        "age": labels["patient"]["age"],
        "sex": labels["patient"]["sex"],
        "seed": labels["seed"],
        "path": path,
    }


def _write_one(args: tuple[int, str, str, int, dict[str, Any]]) -> dict[str, Any]:
    seed, region, out, max_slices, overrides = args
    spec = sample_case(seed, Region(region), max_slices=max_slices, **overrides)
    case = generate(spec)
    folder = Path(out) / case.labels["case_id"]
    write_case(case, folder)
    return label_row(case.labels, folder.name)


def write_dataset(
    region: Region,
    seeds: Iterable[int],
    out: Path,
    *,
    max_slices: int = 64,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> Path:
    """Write one folder per case plus ``labels.csv`` under ``out``; returns the CSV path."""
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(seeds)
    jobs = [(s, region.value, str(out), max_slices, overrides) for s in seed_list]
    rows: list[dict[str, Any]] = []
    workers = workers or max(1, (os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for row in pool.map(_write_one, jobs, chunksize=2):
            rows.append(row)
            if progress is not None:
                progress(len(rows), len(jobs))
    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def iter_cases(region: Region, seeds: Iterable[int], *, max_slices: int = 64,
               **overrides: Any) -> Iterator[Case]:
    """Generate cases in memory, one after the other."""
    for seed in seeds:
        yield generate(sample_case(seed, region, max_slices=max_slices, **overrides))


def timed(spec: CaseSpec) -> tuple[Case, float]:
    started = time.perf_counter()
    case = generate(spec)
    return case, time.perf_counter() - started
