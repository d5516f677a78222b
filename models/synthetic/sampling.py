"""Draws case specifications: patient, pose, scanner, findings and confounders, per seed.

Findings are drawn independently of everything else (scanner, patient, pose and
confounders), so that no attribute of a study leaks its label.  Only the age drives the
degenerative and calcification look-alikes, for normals and positives alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.synthetic.spec import (
    Acquisition,
    CaseSpec,
    Confounders,
    Finding,
    Fracture,
    FractureKind,
    Hemorrhage,
    HemorrhageSubtype,
    Patient,
    Pose,
    Region,
    Side,
    Stroke,
    Territory,
)
from models.synthetic.vendors import VENDORS

HEAD_THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
HEAD_THICKNESS_WEIGHTS = (0.08, 0.08, 0.12, 0.1, 0.17, 0.12, 0.33)
SPINE_THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0)
SPINE_THICKNESS_WEIGHTS = (0.15, 0.2, 0.2, 0.2, 0.15, 0.1)
LAST_NAMES = ("DOE", "ROE", "SMITH", "GARCIA", "NGUYEN", "MULLER", "ROSSI", "TANAKA", "KOWALSKI",
              "OKAFOR", "SILVA", "HANSEN", "DUBOIS", "IVANOV", "PATEL", "KIM")
FIRST_NAMES = ("ALEX", "SAM", "JORDAN", "MARIA", "JOHN", "ANA", "LI", "FATIMA", "PETER", "YUKI",
               "OMAR", "EMMA", "NOAH", "ZOE", "IGOR", "PRIYA")


@dataclass(frozen=True, slots=True)
class Mix:
    """Prevalence of each finding in a generated set."""

    hemorrhage: float = 0.4
    stroke: float = 0.2
    fracture: float = 0.45


def _choice(rng: np.random.Generator, items: tuple[Any, ...], weights: tuple[float, ...] | None
            = None) -> Any:
    p = None if weights is None else np.asarray(weights) / np.sum(weights)
    return items[int(rng.choice(len(items), p=p))]


def sample_hemorrhage(rng: np.random.Generator) -> Hemorrhage:
    # log-uniform 0.2-60 mL: small bleeds are common and the hardest
    volume = float(np.exp(rng.uniform(np.log(0.2), np.log(60.0))))
    return Hemorrhage(
        subtype=_choice(rng, tuple(HemorrhageSubtype)),
        volume_ml=round(volume, 3),
        side=_choice(rng, tuple(Side)),
        density_hu=float(rng.uniform(50, 88)),
    )


def sample_stroke(rng: np.random.Generator) -> Stroke:
    return Stroke(
        territory=_choice(rng, tuple(Territory), (0.6, 0.15, 0.25)),
        side=_choice(rng, tuple(Side)),
        hypodensity_hu=float(rng.uniform(2.5, 10.0)),
        gray_white_loss=float(rng.uniform(0.3, 1.0)),
        extent=float(rng.uniform(0.3, 1.0)),
        hyperdense_vessel=bool(rng.random() < 0.3),
    )


def sample_fracture(rng: np.random.Generator) -> Fracture:
    kind = _choice(rng, tuple(FractureKind), (0.4, 0.35, 0.25))
    level = int(_choice(rng, (1, 2, 3, 4, 5, 6, 7), (0.08, 0.2, 0.08, 0.1, 0.17, 0.19, 0.18)))
    if kind is FractureKind.COMPRESSION and level < 3:
        level = int(rng.integers(3, 8))  # C1 has no body; C2 compression is rare
    displaced = rng.random() < 0.5
    return Fracture(
        level=level,
        kind=kind,
        displacement_mm=float(rng.uniform(0.5, 3.5)) if displaced else 0.0,
        compression=float(rng.uniform(0.15, 0.5)) if kind is FractureKind.COMPRESSION else 0.0,
        side=_choice(rng, tuple(Side)),
    )


def subtypes(finding: str) -> tuple[str, ...]:
    """The subtypes the labels give a ``finding`` ("hemorrhage", "stroke" or "fracture")."""
    kinds: dict[str, Any] = {"hemorrhage": HemorrhageSubtype, "stroke": Territory,
                             "fracture": FractureKind}
    if finding not in kinds:
        raise ValueError(f"unknown finding {finding!r}")
    return tuple(k.value for k in kinds[finding])


def level_name(level: int) -> str:
    """A cervical level's name ("C1" … "C7"): the ``--extra`` key and the evaluation stratum."""
    return f"C{level}"


#: A bleed drawn below this volume (mL) is "small": the ``--extra small=N`` key and the upper
#: bound of the evaluation's smallest size band ("<5 mL"), where the project's goal is set.
SMALL_BLEED_ML = 5.0


def extra_keys(finding: str) -> tuple[str, ...]:
    """What a ``finding``'s training set can be enriched with (``train --extra KEY=N``): its
    subtypes, for fractures the levels "C1" … "C7", for hemorrhage "small" (a bleed under
    :data:`SMALL_BLEED_ML`)."""
    levels = tuple(level_name(n) for n in range(1, 8)) if finding == "fracture" else ()
    small = ("small",) if finding == "hemorrhage" else ()
    return subtypes(finding) + levels + small


def drawn_keys(spec: CaseSpec) -> frozenset[str]:
    """The :func:`extra_keys` that ``spec``'s finding is drawn with: its subtype when known
    before rendering (:func:`drawn_subtype`), for a fracture its level ("C1" … "C7"), for a
    bleed drawn under :data:`SMALL_BLEED_ML` "small"."""
    subtype = drawn_subtype(spec)
    keys = {subtype} if subtype else set()
    finding = spec.findings[0] if spec.findings else None
    if isinstance(finding, Fracture):
        keys.add(level_name(finding.level))
    if isinstance(finding, Hemorrhage) and finding.volume_ml < SMALL_BLEED_ML:
        keys.add("small")
    return frozenset(keys)


def drawn_subtype(spec: CaseSpec) -> str | None:
    """The subtype the labels will give ``spec``'s finding, known without rendering it: None
    for a normal case and for a C1 fracture, whose arch the renderer picks.  A C2 fracture
    drawn as posterior breaks the dens, so it counts as body (as ``cspine._subtype`` says)."""
    if not spec.findings:
        return None
    f = spec.findings[0]
    if isinstance(f, Hemorrhage):
        return f.subtype.value
    if isinstance(f, Stroke):
        return f.territory.value
    if isinstance(f, Fracture):
        if f.kind is FractureKind.COMPRESSION:
            return f.kind.value
        if f.level <= 1:
            return None
        return FractureKind.BODY.value if f.level == 2 else f.kind.value
    return None


def sample_confounders(rng: np.random.Generator, region: Region, age: int) -> Confounders:
    old = np.clip((age - 30) / 50, 0.0, 1.0)
    return Confounders(
        pineal_calcification=bool(rng.random() < 0.15 + 0.45 * old),
        choroid_calcification=bool(rng.random() < 0.1 + 0.5 * old),
        falx_calcification=bool(rng.random() < 0.05 + 0.25 * old),
        vascular_calcification=bool(rng.random() < 0.05 + 0.5 * old),
        beam_hardening=float(rng.uniform(0.2, 1.0)) if rng.random() < 0.7 else 0.0,
        motion=float(rng.uniform(0.2, 1.0)) if rng.random() < 0.12 else 0.0,
        metal=bool(rng.random() < 0.08),
        osteophytes=float(np.clip(rng.normal(old, 0.25), 0, 1)) if region is Region.CSPINE
        else 0.0,
        disc_degeneration=float(np.clip(rng.normal(old * 0.8, 0.25), 0, 1))
        if region is Region.CSPINE else 0.0,
    )


def sample_acquisition(rng: np.random.Generator, region: Region, *, max_slices: int) -> Acquisition:
    vendor = _choice(rng, VENDORS)
    if region is Region.HEAD:
        kernel = _choice(rng, vendor.head_kernels if rng.random() < 0.8 else vendor.bone_kernels)
        thickness = float(_choice(rng, HEAD_THICKNESSES, HEAD_THICKNESS_WEIGHTS))
        coverage = float(rng.uniform(135, 165))
        z_start = float(rng.uniform(-72, -58))
        fov = float(rng.uniform(215, 250))
        mas = float(rng.uniform(180, 400))
    else:
        kernel = _choice(rng, vendor.bone_kernels if rng.random() < 0.7 else vendor.head_kernels)
        thickness = float(_choice(rng, SPINE_THICKNESSES, SPINE_THICKNESS_WEIGHTS))
        coverage = float(rng.uniform(140, 160))
        z_start = float(rng.uniform(-80, -70))
        fov = float(rng.uniform(160, 200))
        mas = float(rng.uniform(120, 300))
    spacing = max(thickness, coverage / max_slices)
    return Acquisition(
        manufacturer=vendor.manufacturer,
        model=_choice(rng, vendor.models),
        kernel=kernel.name,
        kernel_sharpness=kernel.sharpness,
        kvp=float(_choice(rng, (100.0, 110.0, 120.0, 130.0, 140.0), (0.1, 0.1, 0.55, 0.1, 0.15))),
        mas=round(mas),
        slice_thickness_mm=thickness,
        spacing_mm=round(spacing, 3),
        fov_mm=round(fov, 1),
        matrix=256,
        n_slices=round(coverage / spacing) + 1,
        z_start_mm=round(z_start, 2),
        signed_pixels=vendor.signed_pixels,
    )


def sample_case(
    seed: int,
    region: Region,
    *,
    mix: Mix = Mix(),
    max_slices: int = 64,
    finding: str | None = None,
    **acquisition_overrides: Any,
) -> CaseSpec:
    """The case for ``seed``: same seed, same case.

    ``finding`` forces "none", "hemorrhage", "stroke" or "fracture"; otherwise it is drawn
    with the prevalences of ``mix``.  ``acquisition_overrides`` replace acquisition fields
    (e.g. ``manufacturer``, ``kernel``, ``slice_thickness_mm``, ``hu_offset``) to simulate a
    population shift.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0 if region is Region.HEAD else 1]))
    sex = "M" if rng.random() < 0.5 else "F"
    age = int(np.clip(rng.normal(58, 19), 18, 96))
    patient = Patient(
        age_years=age,
        sex=sex,
        size=float(np.clip(rng.normal(1.03 if sex == "M" else 0.97, 0.035), 0.88, 1.12)),
        name=f"{_choice(rng, LAST_NAMES)}^{_choice(rng, FIRST_NAMES)}",
        patient_id=f"SYN{seed:08d}",
    )
    pose = Pose(
        shift_mm=(float(rng.normal(0, 5)), float(rng.normal(0, 6)), float(rng.normal(0, 3))),
        yaw_deg=float(rng.normal(0, 5)),
        pitch_deg=float(rng.normal(0, 6)),
        roll_deg=float(rng.normal(0, 3)),
    )
    acquisition = sample_acquisition(rng, region, max_slices=max_slices)
    if acquisition_overrides:
        acquisition = dataclasses.replace(acquisition, **acquisition_overrides)
    confounders = sample_confounders(rng, region, age)
    # The finding comes from its own stream, so forcing it leaves everything else unchanged.
    frng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    if finding is None:
        draw = frng.random()
        if region is Region.HEAD:
            finding = ("hemorrhage" if draw < mix.hemorrhage
                       else "stroke" if draw < mix.hemorrhage + mix.stroke else "none")
        else:
            finding = "fracture" if draw < mix.fracture else "none"
    findings: tuple[Finding, ...]
    match finding:
        case "hemorrhage":
            findings = (sample_hemorrhage(frng),)
        case "stroke":
            findings = (sample_stroke(frng),)
        case "fracture":
            findings = (sample_fracture(frng),)
        case "none":
            findings = ()
        case _:
            raise ValueError(f"unknown finding {finding!r}")
    return CaseSpec(seed=seed, region=region, patient=patient, acquisition=acquisition,
                    pose=pose, findings=findings, confounders=confounders)
