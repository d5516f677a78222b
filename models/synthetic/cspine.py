"""Cervical-spine CT phantom: neck anatomy, C1–T1 vertebrae, fractures and look-alikes as HU.

Anatomy frame (template mm, scaled by the patient size): origin at the centre of the C4
body, +x left, +y posterior, +z superior; C1 near z = +53, C7 near z = -53, T1 near -72.
Anatomy is drawn from its own random stream, degenerative look-alikes from a second and the
fractures from a third, so a case's anatomy does not depend on its label.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from models.synthetic.cspine_parts import (
    F32,
    BodyShape,
    Bone,
    Break,
    Canvas,
    Frame,
    Part,
    axes,
    blob,
    caps,
    corners,
    make_tile,
    outline,
    part,
    render_bone,
    restore,
    tube,
)
from models.synthetic.grid import Grid
from models.synthetic.render import FindingLabel, Rendered
from models.synthetic.spec import CaseSpec, Fracture, FractureKind, Side

Array = np.ndarray
Vec3 = tuple[float, float, float] | Array
Bleed = tuple[Array, Array, float]  # centre, radii, HU of a prevertebral haematoma
# level: body width, depth, height; canal width, AP; spinous length, droop (deg), bifid
LEVELS = {
    2: (17.0, 15.5, 15.0, 24.0, 16.0, 16.0, 15.0, 1),
    3: (15.5, 15.0, 13.0, 24.0, 15.0, 11.0, 22.0, 1),
    4: (16.5, 15.5, 13.0, 24.5, 14.5, 11.5, 26.0, 1),
    5: (17.5, 16.0, 13.5, 25.0, 14.5, 13.0, 28.0, 1),
    6: (18.5, 16.5, 13.5, 25.0, 14.5, 15.0, 30.0, 1),
    7: (20.0, 16.5, 14.0, 24.0, 14.0, 24.0, 28.0, 0),
    8: (23.0, 17.0, 15.0, 21.0, 13.5, 27.0, 38.0, 0),
}
DISC = {2: 4.3, 3: 4.6, 4: 4.8, 5: 5.0, 6: 5.0, 7: 4.6}  # disc below level k (mm)
DEGEN = {2: 0.3, 3: 0.5, 4: 0.75, 5: 1.0, 6: 0.9, 7: 0.45}  # where degeneration prefers


@dataclass
class Level:
    """One vertebra: frame, body shape, canal (width, AP), lateral-mass centre, spinous."""

    k: int
    frame: Frame
    g: BodyShape
    canal: tuple[float, float]  # width, AP
    pillar: tuple[float, float]  # lateral-mass centre |u|, v
    spinous: tuple[float, float, int]


def _unit(v: Array) -> Array:
    return np.asarray(v / (np.linalg.norm(v) + 1e-9))


class Neck:
    """Per-case anatomy: tissue HU, vertebral levels and frames, degenerative change."""

    def __init__(self, spec: CaseSpec, arng: np.random.Generator,
                 crng: np.random.Generator) -> None:
        age, conf = float(spec.patient.age_years), spec.confounders
        uni, nrm = arng.uniform, arng.normal
        fat = uni(-100, -70)
        self.t = {"skin": uni(30, 50), "fat": fat, "deep": fat + uni(5, 15),
                  "muscle": uni(42, 58), "gland": uni(32, 45), "parotid": uni(-25, 10),
                  "thyroid": uni(70, 100), "blood": uni(35, 50), "csf": uni(5, 15),
                  "cord": uni(35, 40), "disc": uni(80, 100), "mucosa": uni(30, 45),
                  "brain": uni(30, 38), "lung": uni(-870, -820), "vein": uni(30, 45)}
        female_loss = 1.6 * max(age - 50, 0) if spec.patient.sex == "F" else 0.0
        self.marrow = float(np.clip(330 - 2.0 * max(age - 30, 0) - female_loss
                                    + nrm(0, 30), 150, 420))
        self.cortex = float(np.clip(1250 - 5.0 * max(age - 30, 0) + nrm(0, 90), 700, 1400))
        self.cortex_mm = float(np.clip(1.35 - 0.005 * max(age - 30, 0) + nrm(0, 0.12), 0.9, 1.7))
        self.old = float(np.clip((age - 30) / 50, 0, 1))
        self.tile = make_tile(arng)
        self.curve = (uni(-1.5, 9.0), nrm(0, 2.5), nrm(0, 1.2), nrm(0, 1.2))
        self.habitus = (uni(0.93, 1.12), uni(2.5, 9.0), uni(0.2, 0.9), uni(0.1, 0.5),
                        uni(0.0, 0.12), uni(0.85, 1.15))  # size, fat, nape, square, taper, muscle
        self.vessels = (uni(8, 18, 2), uni(0.7, 1.25, 2), uni(3.2, 4.2))  # bifurcations, IJV
        self.degen = {k: float(np.clip(conf.disc_degeneration * w * crng.uniform(0.5, 1.4),
                                       0, 1)) for k, w in DEGEN.items()}
        o = conf.osteophytes
        self.osteo = {k: np.minimum(o * crng.uniform(0, 1.3, 5) * (0.5 + DEGEN.get(k, 0.4)), 1.2)
                      * (crng.random(5) < 0.3 + 0.7 * o) for k in range(2, 9)}
        self.vacuum: dict[int, list[tuple[Array, Array, float]]] = {}
        for k, deg in self.degen.items():
            if deg > 0.35 and crng.random() < deg:
                self.vacuum[k] = [(crng.uniform((-6, -6, -0.4), (6, 3, 0.4)),
                                   crng.uniform((2, 1, 0.6), (5, 3, 0.9)), crng.uniform(500, 900))
                                  for _ in range(int(crng.integers(1, 4)))]
        self.plaques = [(s, crng.uniform(-4, 6), crng.uniform(0, 2 * np.pi),
                         crng.uniform((0.7, 0.7, 1.5), (2, 2, 4)), crng.uniform(150, 600))
                        for s in (-1.0, 1.0) for _ in range(int(crng.integers(1, 4)))
                        ] if conf.vascular_calcification else []
        self.metal = ("dental" if crng.random() < 0.5 else "plate", int(crng.integers(3, 7)),
                      crng.uniform(-1, 1, 4)) if conf.metal else None
        self.fused = self.metal[1] if self.metal and self.metal[0] == "plate" else 0
        self.compressed: dict[int, float] = {}
        self.rng = arng
        self._layout(arng)

    def ys(self, z: float) -> float:
        """Posterior offset of the spine at template height ``z`` (lordosis)."""
        a, b, _, _ = self.curve
        return a * (z / 55) ** 2 + b * z / 55

    def _layout(self, rng: np.random.Generator) -> None:
        fw, fh, fc = rng.normal(1, 0.04), rng.normal(1, 0.04), rng.normal(1, 0.06)
        dims = {}
        for k, (wid, dep, hgt, cw, cap, *_) in LEVELS.items():
            j = rng.normal(1, 0.025, 3)
            dims[k] = (wid * fw * j[0] / 2, dep * fw * j[1] / 2, hgt * fh * j[2] / 2, cw * fc,
                       cap * fc)
        disc = {k: DISC[k] * fh * rng.normal(1, 0.06) * (1 - 0.55 * self.degen[k])
                for k in DISC}
        self.disc = disc
        z = {4: 0.0}
        for k in (3, 2):
            z[k] = z[k + 1] + dims[k + 1][2] + disc[k] + dims[k][2]
        for k in (5, 6, 7, 8):
            z[k] = z[k - 1] - dims[k - 1][2] - disc[k - 1] - dims[k][2]
        a, b, sc1, sc2 = self.curve
        self.levels: dict[int, Level] = {}
        for k, zk in z.items():
            slope = 2 * a * zk / 55**2 + b / 55
            frame = Frame(np.array([sc1 * zk / 60 + sc2 * (zk / 60) ** 2, self.ys(zk), zk]),
                          axes(np.arctan(slope) + rng.normal(0, 0.025), rng.normal(0, 0.02),
                               rng.normal(0, 0.025)))
            ha, hb, hh, cw, cap = dims[k]
            lip = 0.0 if k == 2 else rng.uniform(0.8, 2.0)
            unc = 0.8 if k in (2, 8) else rng.uniform(2.5, 3.8)
            g = BodyShape(ha, hb, hh, ra=rng.uniform(3.5, 5.5), rp=rng.uniform(2.0, 3.0),
                          unc=unc, lip=lip, conc=rng.uniform(0.4, 1.0),
                          waist=rng.uniform(0.4, 1.0))
            spin = LEVELS[k][5:]
            self.levels[k] = Level(k, frame, g, (cw, cap), (cw / 2 + 5.5, hb + 7.0),
                                   (spin[0] * rng.normal(1, 0.08), spin[1] + rng.normal(0, 5),
                                    int(spin[2])))
        self.joints = {}
        for k in range(2, 8):
            lo, up = self.levels[k + 1], self.levels[k]
            pt = (up.frame.at((0, up.pillar[1], 0)) + lo.frame.at((0, lo.pillar[1], 0))) / 2
            phi = rng.uniform(0.6, 0.85)
            n = _unit((up.frame.r + lo.frame.r) @ np.array([0, np.sin(phi), np.cos(phi)]))
            self.joints[k] = (pt, n, rng.uniform(1.0, 1.6))
        l2 = self.levels[2]
        self.c1 = Frame(l2.frame.at((0, -1.2, l2.g.h + 1.3 + 1.2 + 7.3)),
                        l2.frame.r @ axes(rng.normal(0, 0.05)))
        self.head = Frame(self.c1.at((0, 1.5, 11.8)), self.c1.r @ axes(rng.normal(0, 0.07)))
        self.plate = (3.0 + rng.uniform(-1, 1), 27.0, rng.uniform(0.45, 0.65),
                      rng.uniform(0.008, 0.014), rng.uniform(5.0, 7.0), 60.0, 50.0, 22.0)

    def cuts(self, k: int) -> tuple[tuple[Array, Array], ...]:
        """Facet-joint half-spaces that bound the articular pillars of level ``k``."""
        out = []
        if k - 1 in self.joints:  # joint with the level above: keep below it
            pt, n, gap = self.joints[k - 1]
            out.append((pt - n * gap / 2, n))
        if k in self.joints:  # joint with the level below: keep above it
            pt, n, gap = self.joints[k]
            out.append((pt + n * gap / 2, -n))
        return tuple(out)

    def bone(self, frame: Frame, parts: list[Part], *, cortex_mm: float | None = None,
             hu: tuple[float, float, float] | None = None) -> Bone:
        """A bone with this patient's density (or ``hu``: cortex, marrow, texture)."""
        cortex, marrow, tex = hu or (self.cortex, self.marrow, 0.17 * self.marrow)
        return Bone(frame, parts, cortex, marrow, cortex_mm or self.cortex_mm, tex)


# --- bones ----------------------------------------------------------------------------------


def _channel(nk: Neck, b: float, r: float) -> list[Part]:
    """Basivertebral vein channel: a corticated notch in the posterior centre of a body."""
    fill = nk.t["vein"]
    return [part("cap", (0, b + 1.5, 0), (0, b - 3.2, 0), r, (1, 1, 0.9), carve=True,
                 fill=fill, rim=3.0),
            *(part("cap", (0, b - 3.0, 0), (s * 1.8, b - 4.8, 0.2), 0.5, carve=True, fill=fill,
                   rim=3.0) for s in (-1.0, 1.0))]


def _degenerate(nk: Neck, k: int, g: BodyShape) -> list[Part]:
    """Osteophytes at the endplate rims and uncovertebral joints; endplate sclerosis."""
    out, o = [], nk.osteo[k]
    for i, (sv, sw) in enumerate(((-1, 1), (-1, -1), (1, 1), (1, -1))):
        if o[i] < 0.05:
            continue
        length = (1 + 4 * o[i]) * (1.0 if sv < 0 else 0.5)
        rim = sw * (g.h + (g.lip if sw < 0 and sv < 0 else 0))
        out.append(part("ell", (0, sv * (g.b + 0.45 * length - 0.6), rim + sw * 0.4 * length),
                        (g.a * 0.6, 0.5 * length + 0.6, 0.35 * length + 0.7), blend=1.5))
    if o[4] > 0.05:
        for s in (-1.0, 1.0):
            out.append(part("ell", (s * (g.a - 0.3), 0.3 * g.b, g.h + 0.6 * g.unc),
                            (1.5 + 1.5 * o[4], 2.5 + 2 * o[4], 1.2 + 1.2 * o[4]), blend=1.2))
    for disc, sw in ((k - 1, 1), (k, -1)):
        deg = nk.degen.get(disc, 0.0)
        if deg > 0.1:
            out.append(part("box", (0, 0, sw * (g.h - 1.5)), (g.a - 0.5, g.b - 0.5, 2.5), 1.5,
                            add_hu=320 * deg))
    return out


def _spinous(lv: Level, base: Array, r: float = 2.2) -> list[Part]:
    length, droop, bifid = lv.spinous
    d = np.deg2rad(droop)
    tip = base + length * np.array([0, np.cos(d), -np.sin(d)])
    if not bifid:
        return [part("cap", base, tip, r + 0.4, (1, 1, 0.55), group=1),
                part("ell", tip, (3.8, 3.4, 4.4), group=1)]
    mid = base + 0.6 * (tip - base)
    return [part("cap", base, mid, r, (1, 1, 0.5), group=1),
            *(part("cap", mid, tip + np.array([s * 3.2, 0, 0]), r * 0.8, (1, 1, 0.55), group=1)
              for s in (-1.0, 1.0))]


def vertebra(nk: Neck, lv: Level) -> Bone:
    """C3–T1: body (group 0) and posterior elements (group 1), T1 ribs (group 2)."""
    g, k = lv.g, lv.k
    a, b = g.a, g.b
    cw, cap = lv.canal
    px, pv = lv.pillar
    parts = [part("body", g), *_channel(nk, b, 0.7 + 0.15 * (k % 3)), *_degenerate(nk, k, g)]
    for s in (-1.0, 1.0):
        parts += [
            part("cap", (s * (a - 2.5), b - 2.5, 0.8), (s * (cw / 2 + 2.3), b + 5, 0.8), 2.4,
                 (1, 1, 0.6), group=1),
            part("box", (s * px, pv, 0), (5.5 + nk.osteo[k][4], 6.5, 16), 3.5, group=1,
                 cuts=nk.cuts(k)),
            part("cap", (s * (cw / 2 + 1), b + 11.5, -1), (0, b + cap + 2, -3), 1.6,
                 (1, 1, 0.33), group=1)]
        if k < 7:
            parts += [part("box", (s * (a + 5), 2.5, 0.8), (5.5, 5.5, 2.6), 2.0, group=1),
                      part("ell", (s * (a + 10.3), -2.0, 0.3), (2.4, 2.6, 3.4), group=1),
                      part("ell", (s * (a + 10.3), 6.0, 0.3), (2.4, 2.6, 3.2), group=1),
                      part("ell", (s * (a + 4.3), 2.2, 0.8), (2.8, 2.8, 8), group=1,
                           carve=True, rim=1.5)]
        elif k == 7:
            parts += [part("box", (s * (a + 7), 3.5, 0.8), (8, 4.5, 3), 2.0, group=1),
                      part("ell", (s * (a + 4), 2.5, 0.8), (1.6, 1.6, 6), group=1, carve=True,
                           fill=nk.t["fat"])]
        else:
            rib = [(s * (a + 13), 13, 0), (s * (a + 27), 8, -5), (s * (a + 36), -8, -12),
                   (s * (a + 36), -30, -20)]
            parts += [part("cap", (s * (a + 1), 8, 1), (s * (a + 14), 14, 2), 4.0, (1, 1, 0.8),
                           group=1),
                      part("cap", (s * (a - 0.5), 3, 3.5), rib[0], 2.6, group=2),
                      *(part("cap", p, q, 3.2, (1, 0.7, 1), group=2)
                        for p, q in itertools.pairwise(rib))]
    parts += _spinous(lv, np.array([0, b + cap + 2, -3]))
    return nk.bone(lv.frame, parts)


def axis_c2(nk: Neck, lv: Level) -> Bone:
    """C2: body (0), posterior elements (1) and the dens (2) rising into the atlas."""
    g = lv.g
    a, b, h = g.a, g.b, g.h
    cw, cap = lv.canal
    px, pv = lv.pillar
    parts = [part("body", g), *_channel(nk, b, 0.8), *_degenerate(nk, 2, g),
             part("cap", (0, -1.2, h - 5), (0, -1.6, h + 11.5), 4.6, (1, 0.92, 1), group=2)]
    for s in (-1.0, 1.0):
        parts += [
            part("box", (s * 15.0, 0.0, h - 1.7), (6.5, 7.8, 3.0), 2.2, group=1),
            part("cap", (s * (a - 2), b - 1.5, h - 3.5), (s * (px - 1), pv + 1, -4.5), 3.0,
                 (1, 1, 0.75), group=1),
            part("box", (s * px, pv + 1.5, -6), (5.5, 6.5, 10), 3.5, group=1, cuts=nk.cuts(2)),
            part("cap", (s * (cw / 2 + 1.5), pv + 6, -5), (0, b + cap + 3, -5.5), 2.4,
                 (1, 1, 0.45), group=1),
            part("box", (s * (a + 4), 1.0, h - 4.5), (4.2, 4.0, 3.0), 1.8, group=1),
            part("ell", (s * (a + 3.2), 1.2, h - 4.5), (2.7, 2.7, 6), group=1, carve=True)]
    parts += _spinous(lv, np.array([0, b + cap + 3, -5.5]), r=3.2)
    return nk.bone(lv.frame, parts)


def atlas(nk: Neck) -> Bone:
    """C1: a ring (group 1) with lateral masses and transverse processes (group 0)."""
    parts = [part("ring", 0.0, 19.0, 9.8, 29.0, 3.1, 4.6, group=1),
             part("ell", (0, -11.5, 0), (5, 2.8, 5.5), group=1),
             part("ell", (0, 30.5, -0.5), (4.5, 3.2, 5), group=1)]
    for s in (-1.0, 1.0):
        parts += [part("box", (s * 17.5, 1.5, 0), (6.5, 8.5, 7.3), 4.0),
                  part("ell", (s * 16.5, 1.5, 11.8), (6.5, 9.5, 5.6), carve=True),
                  part("box", (s * 28.5, 1.0, 0.5), (7.5, 4.5, 3.0), 2.0),
                  part("ell", (s * 36, 1.0, 0), (3.5, 4.2, 4.5)),
                  part("ell", (s * 25.5, 1.0, 0.5), (2.9, 2.9, 7), carve=True)]
    return nk.bone(nk.c1, parts)


def skull(nk: Neck, rng: np.random.Generator) -> list[Bone]:
    """Skull base (foramen magnum, condyles, clivus, mastoids), mandible, maxilla, teeth."""
    parts = [part("plate", *nk.plate), part("ell", (0, 9.0, 3.0), (13.5, 17.5, 12), carve=True),
             part("cap", (0, -7, 4), (0, -26, 28), 5.5, (0.42, 1, 1))]
    for s in (-1.0, 1.0):
        parts += [part("ell", (s * 16.5, 1.5, 0), (5.3, 8.3, 4.4), group=1),
                  part("ell", (s * 47, 7, 5), (8, 10, 13), group=2)]
        for _ in range(int(rng.integers(2, 6))):
            parts.append(part("ell", (s * rng.uniform(44, 50), rng.uniform(3, 11),
                                      rng.uniform(3, 14)), rng.uniform(1.5, 3.2, 3), group=2,
                              carve=True, fill=-950.0))
    head = nk.head
    jaw = [part("arch", -74.0, 0.022, 4.5, -48.0, -22.0, 45.0)]
    for s in (-1.0, 1.0):
        jaw += [part("cap", (s * 45.5, -29, -44), (s * 49, -13, 6), 3.6, (1, 0.3, 1)),
                part("ell", (s * 50, -12, 8), (8.5, 4.5, 4.5))]
    maxilla = [part("arch", -70.0, 0.02, 5.0, -7.0, 4.0, 40.0),
               part("box", (0, -48, 1.5), (20, 20, 2.2), 1.5)]
    teeth = [part("arch", -71.5, 0.021, 3.4, -27.0, -16.8, 38.0, 7.5),
             part("arch", -70.5, 0.020, 3.6, -16.2, -5.5, 38.0, 8.0)]
    return [nk.bone(head, parts, cortex_mm=2.0), nk.bone(head, jaw, cortex_mm=2.5),
            nk.bone(head, maxilla), Bone(head, teeth, 2500.0, 1600.0, 1.2)]


def neck_bones(nk: Neck) -> list[Bone]:
    """Hyoid and laryngeal cartilages (ossifying with age)."""
    eye = np.eye(3)
    cart = (110 + 450 * nk.old, 80 + 120 * nk.old, 80 * nk.old)
    return [nk.bone(Frame(np.array([0, 0, 17.0]), eye),
                    [part("arch", -40.0, 0.045, 2.3, -2.8, 2.8, 21.0)], cortex_mm=1.0),
            nk.bone(Frame(np.array([0, 0, 7.0]), eye),
                    [part("arch", -47.0, 0.055, 1.1, -10.0, 6.0, 20.0)], cortex_mm=0.8, hu=cart),
            nk.bone(Frame(np.array([0, 0, -11.0]), eye),
                    [part("ring", -31.0, 10.5, 10.5, 10.0, 1.3, 3.5)], cortex_mm=0.8, hu=cart)]


def discs(nk: Neck) -> list[Bone]:
    """Intervertebral discs C2/3–C7/T1 (annulus as 'cortex', nucleus as 'marrow')."""
    out = []
    for k in range(2, 8):
        up, lo = nk.levels[k], nk.levels[k + 1]
        half = float(np.linalg.norm(up.frame.c - lo.frame.c)) / 2
        frame = Frame((up.frame.c + lo.frame.c) / 2, up.frame.r)
        w0, w1 = -half + lo.g.h - 2 - nk.compressed.get(k + 1, 0.0), half - up.g.h + 2
        shape = part("box", (0, 0, (w0 + w1) / 2), ((up.g.a + lo.g.a) / 2 + 0.4,
                                                    (up.g.b + lo.g.b) / 2 + 0.3, (w1 - w0) / 2),
                     3.0)
        disc = nk.t["disc"]
        if nk.fused == k:
            out.append(Bone(frame, [shape], 500.0, 380.0, 1.0, 60.0))
            continue
        gas = [part("ell", (c[0], c[1], (w0 + w1) / 2 + c[2]), r, add_hu=-(disc + hu))
               for c, r, hu in nk.vacuum.get(k, [])]
        out.append(Bone(frame, [shape, *gas], disc + 8, disc - 12, 3.0))
    return out


def extras(nk: Neck) -> list[Bone]:
    """Calcified carotid plaques and metal (dental fillings or an anterior plate)."""
    out = []
    for s, dz, ang, radii, hu in nk.plaques:
        bif = nk.vessels[0][int(s > 0)]
        c = np.array([s * 22 + 3.6 * np.cos(ang), -16 + 3.6 * np.sin(ang), bif + dz])
        out.append(Bone(Frame(c, np.eye(3)), [part("ell", (0, 0, 0), radii)], hu, hu, 0.0))
    if nk.metal is None:
        return out
    kind, k, r = nk.metal
    if kind == "dental":
        us = [np.sign(r[i] + 1e-9) * (12 + 22 * abs(r[i]))
              for i in range(1 + int(abs(r[3]) * 2.99))]
        fill = [part("ell", (u, -71.5 + 0.021 * u * u, -17.6), (2.0, 2.3, 1.5)) for u in us]
        return [*out, Bone(nk.head, fill, 3000.0, 3000.0, 0.5, metal=True)]
    up, lo = nk.levels[k], nk.levels[k + 1]
    half = float(np.linalg.norm(up.frame.c - lo.frame.c)) / 2
    bm, hm = (up.g.b + lo.g.b) / 2, (up.g.h + lo.g.h) / 2
    plate = [part("box", (0, -bm - 2.6, 0), (7, 1.0, half + 0.55 * hm), 0.8)]
    plate += [part("cap", (s * 3.8, -bm - 2, w), (s * 2.4, -bm + 11, w), 1.7)
              for s in (-1.0, 1.0) for w in (-half, half)]
    frame = Frame((up.frame.c + lo.frame.c) / 2, up.frame.r)
    return [*out, Bone(frame, plate, 3000.0, 3000.0, 0.5, metal=True)]


# --- soft tissue ----------------------------------------------------------------------------

# name: (spine-relative y, angle, rows of z, x, y, rx, ry) for the left side, mirrored
MUSCLES = {
    "trapezius": (True, 0.3, ((-110, 60, 48, 40, 11), (-70, 48, 52, 34, 9), (-40, 34, 58, 28, 7),
                              (0, 26, 60, 24, 5.5), (40, 18, 60, 16, 4), (66, 14, 58, 12, 3.5))),
    "splenius": (True, 0.55, ((-60, 22, 44, 12, 6), (-20, 26, 46, 15, 7.5), (20, 30, 44, 16, 8.5),
                              (60, 34, 38, 15, 9), (75, 36, 34, 12, 8))),
    "levator": (True, 0.0, ((-110, 46, 30, 12, 13), (-60, 38, 26, 9.5, 11), (-10, 35, 20, 8, 10),
                            (40, 33, 12, 6.5, 8), (58, 31, 8, 5, 6))),
    "semispinalis": (True, 0.0, ((-80, 11, 46, 8, 8), (-40, 13, 48, 10, 9), (0, 14, 48, 10.5, 9.5),
                                 (40, 15, 48, 10.5, 9), (68, 15, 46, 9, 8))),
    "multifidus": (True, 0.0, ((-110, 10, 33, 7.5, 10), (-40, 10, 33, 7.5, 10),
                               (0, 10, 32, 7, 9.5), (35, 11, 33, 8, 9), (62, 13, 31, 9, 7))),
    "scalene": (True, 0.0, ((-110, 38, 2, 9, 12), (-60, 32, 2, 8, 11), (-20, 29, 1, 6.5, 9),
                            (5, 28, 0, 4, 5))),
    "longus": (True, 0.0, ((-80, 6.5, -12.5, 4.5, 2.6), (0, 6.5, -12.5, 4.5, 2.8),
                           (40, 8, -12, 5.5, 3.5), (62, 10, -10, 6, 4))),
    "scm": (False, -0.7, ((-110, 14, -52, 7, 11), (-70, 18, -47, 8, 13), (-30, 33, -36, 8, 14),
                          (10, 42, -18, 8, 14), (40, 46, 0, 8, 12), (66, 46, 10, 7, 9))),
    "strap": (False, 0.0, ((-110, 11, -46, 9, 3), (-40, 11, -46, 9, 3), (-5, 12, -48, 8, 3),
                           (12, 14, -44, 6, 2.5))),
    "masseter": (False, 0.0, ((22, 53, -28, 4, 10), (50, 54, -26, 5, 12), (80, 52, -22, 5, 12))),
    "pterygoid": (False, 0.3, ((35, 38, -22, 4, 9), (60, 38, -20, 5, 10), (80, 36, -18, 5, 9))),
}
GLANDS = {  # tissue: rows (left side, mirrored; x = 0 rows are painted once)
    "thyroid": ((-78, 16, -27, 0.5, 1), (-70, 16, -27, 6.5, 9), (-52, 17, -28, 8, 11),
                (-40, 16, -30, 6, 8), (-33, 15, -31, 0.5, 1)),
    "gland": ((18, 30, -44, 0.5, 0.5), (22, 30, -44, 9, 8), (34, 29, -42, 9, 8),
              (38, 29, -42, 0.5, 0.5)),
    "parotid": ((36, 43, -8, 0.5, 0.5), (42, 43, -8, 9, 12), (75, 45, -10, 11, 14)),
}


def _mirror(rows: tuple[tuple[float, ...], ...], s: float, nk: Neck | None,
            bulk: float = 1.0) -> list[tuple[float, ...]]:
    return [(z, s * x, y + (nk.ys(z) if nk else 0.0), rx * bulk, ry * bulk)
            for z, x, y, rx, ry in rows]


def soft(cv: Canvas, nk: Neck, bleeds: list[Bleed]) -> None:
    """Muscles with fat planes, glands, vessels, airway, canal contents, brain, lung apices."""
    t, bulk, rng = nk.t, nk.habitus[5], nk.rng
    layer = outline(cv, nk.habitus, t)
    for s in (-1.0, 1.0):
        blob(cv, (s * 40, -4, -102), (27, 31, 41), t["fat"])
        blob(cv, (s * 40, -4, -102), (24, 28, 38), t["lung"])
    for rel, angle, rows in MUSCLES.values():
        for s in (-1.0, 1.0):
            tube(cv, _mirror(rows, s, nk if rel else None, bulk), t["muscle"], halo=1.3,
                 halo_hu=t["fat"], angle=s * angle)
    tube(cv, ((22, 0, -48, 0.5, 0.5), (28, 0, -50, 18, 16), (45, 0, -52, 22, 20),
              (58, 0, -50, 20, 18), (62, 0, -50, 0.5, 0.5)), t["muscle"])
    for name, rows in GLANDS.items():
        for s in (-1.0, 1.0):
            tube(cv, _mirror(rows, s, None), t[name], halo=1.0, halo_hu=t["fat"])
    tube(cv, ((-56, 0, -40, 0.5, 0.5), (-54, 0, -40, 10, 3), (-46, 0, -40, 10, 3),
              (-44, 0, -40, 0.5, 0.5)), t["thyroid"])
    ys = nk.ys
    lumen = ((-110, 0, -33, 8, 7.5), (-12, 0, -30, 8, 7.5), (-5, 0, -31, 3.5, 8.5),
             (3, 0, -28, 7, 9), (12, 0, ys(12) - 21, 12, 6.5), (28, 0, ys(28) - 18, 12, 5.5),
             (52, 0, ys(52) - 17, 11, 5), (62, 0, ys(62) - 22, 12, 7),
             (110, 0, ys(62) - 26, 13, 9))
    gullet = ((-110, 3, ys(-90) - 13.5, 7, 4), (-10, 2, ys(-10) - 13, 7, 3.5),
              (-2, 0, ys(0) - 13, 6, 3))
    tube(cv, gullet, t["mucosa"], halo=1.0, halo_hu=t["fat"])
    tube(cv, [(z, x, y, rx + 2, ry + 2) for z, x, y, rx, ry in lumen], t["mucosa"])
    tube(cv, lumen, -1000.0)
    bif, ijv, cca = nk.vessels
    for i, s in enumerate((-1.0, 1.0)):
        tube(cv, _mirror(((0, 12, -22, 0.5, 0.5), (3, 12, -22, 3, 4), (13, 13, -21, 3.5, 4.5),
                          (16, 13, -21, 0.5, 0.5)), s, None), -1000.0)
        f, b = ijv[i], bif[i]
        veins = ((-110, 34, -28, 6 * f, 5 * f), (-60, 36, -22, 7 * f, 5 * f),
                 (0, 34, -13, 7 * f, 5 * f), (40, 32, -6, 6 * f, 4.5 * f), (70, 28, 3, 5, 4.5))
        tube(cv, _mirror(veins, s, None), t["vein"], halo=1.0, halo_hu=t["fat"])
        arteries = (((-110, 27, -28, cca, cca), (-60, 27, -24, cca, cca), (-20, 24, -20, cca, cca),
                     (b, 22, -17, cca * 1.15, cca * 1.15)),
                    ((b - 1, 23, -15, 3.0, 3.0), (b + 10, 24, -11, 2.7, 2.7),
                     (45, 26, -4, 2.5, 2.5), (72, 25, 2, 2.4, 2.4)),
                    ((b - 1, 20, -20, 2.2, 2.2), (b + 10, 21, -25, 1.9, 1.9),
                     (42, 31, -30, 1.7, 1.7)))
        for rows in arteries:
            tube(cv, _mirror(rows, s, None), t["blood"], halo=1.0, halo_hu=t["fat"])
        for _ in range(3):  # jugular chain lymph nodes
            z = rng.uniform(-60, 40)
            blob(cv, (s * rng.uniform(36, 44), rng.uniform(-14, 0), z),
                 rng.uniform((2, 2.5, 4), (4, 5, 8)), t["muscle"] - 12)
        path = [nk.levels[8].frame.at((s * (nk.levels[8].g.a + 4), -8, -25)),
                nk.levels[7].frame.at((s * (nk.levels[7].g.a + 5), -5, 0))]
        path += [nk.levels[k].frame.at((s * (nk.levels[k].g.a + 4.3), 2.2, 0.8))
                 for k in (6, 5, 4, 3)]
        path += [nk.levels[2].frame.at((s * (nk.levels[2].g.a + 3.2), 1.2, nk.levels[2].g.h - 4.5)),
                 nk.c1.at((s * 25.5, 1, 0.5)), nk.c1.at((s * 24, 10, 5.5)),
                 nk.c1.at((s * 13, 25, 5.5)), nk.c1.at((s * 7, 14, 10)),
                 nk.head.at((s * 4, 4, 10))]
        caps(cv, path, 2.8, t["fat"])
        caps(cv, path, 2.0, t["blood"])
        blob(cv, nk.head.at((s * 24, -52, 14)), (13, 15, 12), -1000.0)
    brain(cv, nk)
    canal(cv, nk)
    for c, r, hu in bleeds:
        blob(cv, c, r, hu)
    restore(cv, t, layer)


def brain(cv: Canvas, nk: Neck) -> None:
    """Posterior fossa contents above the skull-base plate and behind the clivus."""
    w0, knee, slope, curv, thick, eu, ev, vc = nk.plate
    sl = cv.box(nk.head.at(corners((-eu, vc - ev, -5), (eu, vc + ev, 70))))
    if sl is None:
        return
    u, v, w = cv.local(nk.head, sl)
    surf = F32(w0 + thick / 2) + F32(slope) * np.maximum(v - F32(knee), 0) + F32(curv) * u * u
    inside = ((u * F32(1 / 56)) ** 2 + ((v - F32(22)) * F32(1 / 48)) ** 2 < 1) & (w > surf)
    inside &= v > -7 - (w - 4) * F32(0.8)
    np.copyto(cv.hu[sl], F32(nk.t["brain"]), where=inside)


def canal(cv: Canvas, nk: Neck) -> None:
    """Epidural fat, thecal sac (CSF) and cord along the canal, up into the medulla."""
    rows = []
    for k in range(8, 1, -1):
        lv = nk.levels[k]
        cw, cap = lv.canal
        c = lv.frame.at((0, lv.g.b + cap / 2, 0))
        cord = (6.5, 4.3) if k in (5, 6) else (5.0, 3.8) if k == 8 else (5.7, 3.9)
        rows.append((c[2], c[0], c[1], cw / 2, cap / 2, *cord))
        if k == 8:
            rows.insert(0, (c[2] - 40, c[0], c[1] + 4, cw / 2, cap / 2, *cord))
    for frame, p, canal_r, cord in ((nk.c1, (0, 15.5, 0), (14, 10.5), (6.5, 5.0)),
                                    (nk.head, (0, 9, 3), (13, 16), (8, 6.5)),
                                    (nk.head, (0, 6, 25), (13, 15), (9.5, 8.5))):
        c = frame.at(p)
        rows.append((c[2], c[0], c[1], *canal_r, *cord))
    r = np.asarray(rows)
    tube(cv, r[:, :5], nk.t["fat"])
    sac = r[:, :5].copy()
    sac[:, 3:5] -= (1.5, 1.2)
    tube(cv, sac, nk.t["csf"])
    cord_rows = np.concatenate([r[:, :3], r[:, 5:7]], axis=1)
    cord_rows[:, 2] -= 1.0
    tube(cv, cord_rows, nk.t["cord"])


# --- fractures ------------------------------------------------------------------------------


def _tilted(rng: np.random.Generator, n: Vec3, spread: float) -> Array:
    return _unit(np.asarray(n, dtype=float) + rng.normal(0, spread, 3))


def _break(rng: np.random.Generator, f: Fracture, p0: Array, n: Array, *, label: int,
           size: float, group: int, reach: float = 1e6, decay: float = 0.0) -> Break:
    """A fracture plane with random width, density, roughness and in-plane displacement."""
    waves = tuple((_unit(rng.normal(size=3)) * 2 * np.pi / rng.uniform(5, 14),
                   rng.uniform(0.15, 0.6), rng.uniform(0, 2 * np.pi)) for _ in range(2))
    shift = _unit(np.cross(n, rng.normal(size=3))) * f.displacement_mm / size
    return Break(label=label, group=group, moves=(group,), p0=p0, n=n,
                 width=rng.uniform(1.0, 2.5), hu=rng.uniform(20, 60),
                 margin=rng.uniform(1.0, 2.0), shift=shift, waves=waves, reach=reach,
                 decay=decay)


def plan(spec: CaseSpec, nk: Neck, rng: np.random.Generator
         ) -> tuple[dict[int, list[Break]], dict[int, list[Part]], list[Bleed]]:
    """Breaks per level, extra density parts (compaction) and prevertebral haematomas."""
    breaks: dict[int, list[Break]] = {}
    dense: dict[int, list[Part]] = {}
    bleeds: list[Bleed] = []
    size = spec.patient.size
    for i, f in enumerate(spec.findings):
        if not isinstance(f, Fracture):
            continue
        level, s = int(np.clip(f.level, 1, 7)), 1.0 if f.side is Side.LEFT else -1.0
        if level == 1:  # a break of the atlas ring, anterior or posterior arch
            post = rng.random() < 0.7
            th = rng.uniform(0.35, 1.3) if post else rng.uniform(0.2, 0.9)
            ry = 29.0 if post else 9.8
            sign = 1.0 if post else -1.0
            p0 = np.array([s * 19 * np.sin(th), sign * ry * np.cos(th), 0.0])
            n = _tilted(rng, (s * 19 * np.cos(th), -sign * ry * np.sin(th), 0), 0.25)
            br = _break(rng, f, p0, n, label=i + 1, size=size, group=1,
                        reach=rng.uniform(7, 10), decay=rng.uniform(10, 16))
            br.where = "posterior arch" if post else "anterior arch"
        else:
            lv = nk.levels[level]
            g = lv.g
            if f.kind is FractureKind.COMPRESSION:
                dip = rng.uniform(0.5, 2.0)
                br = Break(label=i + 1, group=0, moves=(0,), p0=np.zeros(3),
                           n=np.array([0, 0, 1.0]), margin=rng.uniform(1.0, 2.0),
                           wedge=(float(np.clip(f.compression, 0.05, 0.6)), dip, g), where="body")
                nk.compressed[level] = f.compression * 2 * g.h + dip
                dense.setdefault(level, []).append(
                    part("box", (0, -0.2 * g.b, g.h - 2.5), (g.a - 0.3, g.b * 0.9, 3.0), 1.5,
                         add_hu=rng.uniform(100, 250)))
            elif f.kind is FractureKind.BODY:
                style = int(rng.choice(4, p=(0.3, 0.25, 0.2, 0.25)))
                p0 = rng.uniform(-0.35, 0.35, 3) * (g.a, g.b, 0.6 * g.h)
                if style == 2:  # teardrop: antero-inferior corner fragment
                    p0 = np.array([0, -0.45 * g.b, -0.45 * g.h]) + rng.normal(0, 1.0, 3)
                normal = ((1, 0, 0), (0, 1, 0), (0, -0.6, -0.8), rng.normal(size=3))[style]
                n = _tilted(rng, normal, 0.3)
                if abs(n[2]) > 0.8:
                    n = _unit(n * (1, 1, 0.5))
                br = _break(rng, f, p0, n, label=i + 1, size=size, group=0)
                br.where = ("sagittal", "coronal", "teardrop", "oblique")[style] + " body"
            elif level == 2:  # dens base (odontoid type II/III)
                p0 = np.array([0, -1.2, g.h + rng.uniform(-1.0, 3.0)])
                n = _tilted(rng, (0, rng.normal(0, 0.35), 1), 0.15)
                br = _break(rng, f, p0, n, label=i + 1, size=size, group=2)
                br.where = "dens base"
            else:
                br = _posterior(rng, f, lv, label=i + 1, size=size, side=s)
            if (f.kind is not FractureKind.POSTERIOR or level == 2) and rng.random() < 0.6:
                thick = rng.uniform(3, 7)
                c = lv.frame.at((0, -g.b - 3.5 - thick / 2, 0))
                bleeds.append((c, np.array([g.a * 0.9, thick / 2 + 1, rng.uniform(10, 18)]),
                               rng.uniform(45, 65)))
        breaks.setdefault(level, []).append(br)
    return breaks, dense, bleeds


def _posterior(rng: np.random.Generator, f: Fracture, lv: Level, *, label: int, size: float,
               side: float) -> Break:
    """Lamina, pedicle, articular pillar, spinous or transverse process on ``side``."""
    g, (cw, cap), (px, pv) = lv.g, lv.canal, lv.pillar
    a, b = g.a, g.b
    target = int(rng.choice(5, p=(0.35, 0.2, 0.2, 0.15, 0.1)))
    t = rng.uniform(0.3, 0.7)
    if target == 0:
        ends = np.array([[side * (cw / 2 + 1), b + 11.5, -1], [0, b + cap + 2, -3]])
    elif target == 1:
        ends = np.array([[side * (a - 2.5), b - 2.5, 0.8], [side * (cw / 2 + 2.3), b + 5, 0.8]])
    elif target == 2:
        ends = np.array([[side * px, pv, -4.0], [side * px, pv, 4.0]])
        if rng.random() < 0.5:
            ends[:, 1] += (-3.0, 3.0)
    elif target == 3:
        d = np.deg2rad(lv.spinous[1])
        base = np.array([0, b + cap + 2, -3])
        ends = np.array([base, base + 0.7 * lv.spinous[0] * np.array([0, np.cos(d), -np.sin(d)])])
    else:
        ends = np.array([[side * (a + 1), 2.5, 0.8], [side * (a + 10), 2.5, 0.8]])
    p0 = ends[0] + t * (ends[1] - ends[0])
    n = _tilted(rng, _unit(ends[1] - ends[0]), 0.35)
    br = _break(rng, f, p0, n, label=label, size=size, group=1, reach=rng.uniform(7, 11),
                decay=rng.uniform(8, 14))
    br.where = ("lamina", "pedicle", "articular pillar", "spinous process",
                "transverse process")[target]
    return br


# --- assembly -------------------------------------------------------------------------------


def render_cspine(grid: Grid, spec: CaseSpec, rng: np.random.Generator) -> Rendered:
    """Render ``spec`` on ``grid``: noise-free HU (Z, H, W), fracture labels, body, landmarks."""
    arng, crng, frng = rng.spawn(3)
    cv = Canvas(grid, spec)
    nk = Neck(spec, arng, crng)
    breaks, dense, bleeds = plan(spec, nk, frng)
    soft(cv, nk, bleeds)
    spine = {k: vertebra(nk, nk.levels[k]) for k in range(8, 2, -1)}
    spine |= {2: axis_c2(nk, nk.levels[2]), 1: atlas(nk)}
    for level, items in breaks.items():
        spine[level].breaks.extend(items)
        spine[level].parts.extend(dense.get(level, []))
    for bone in [*discs(nk), *spine.values(), *skull(nk, nk.rng), *neck_bones(nk), *extras(nk)]:
        render_bone(cv, bone, nk.tile)
    _mottle(cv, arng)
    where = {br.label: br for items in breaks.values() for br in items}
    out = Rendered(hu=cv.hu, lesion=cv.lesion, body=cv.body, findings=_labels(cv, spec, where),
                   metal=cv.metal if nk.metal is not None else None)
    out.landmarks["bone"] = cv.hu > 250
    centres = {k: nk.levels[k].frame.c for k in range(2, 8)} | {1: nk.c1.c}
    out.landmarks["levels"] = {k: tuple(float(v) for v in cv.patient(c))
                               for k, c in sorted(centres.items())}
    return out


def _mottle(cv: Canvas, rng: np.random.Generator) -> None:
    """A few HU of smooth, separable inhomogeneity over the soft tissue."""
    shape = cv.hu.shape
    field = np.zeros((*shape[:2], 1), dtype=F32)
    for _ in range(2):
        kz, ky = rng.uniform(0.02, 0.12, 2)
        field += (rng.uniform(1.5, 3.0) * np.cos(kz * np.arange(shape[0]) + rng.uniform(0, 6))
                  [:, None, None] * np.cos(ky * np.arange(shape[1]) + rng.uniform(0, 6))
                  [None, :, None]).astype(F32)
    kx = rng.uniform(0.02, 0.1)
    cols = (1 + 0.5 * np.cos(kx * np.arange(shape[2]) + rng.uniform(0, 6))).astype(F32)
    cv.hu += field * cols[None, None, :] * cv.body
    np.maximum(cv.hu, F32(-1000), out=cv.hu)


ANTERIOR_PARTS = ("dens base", "anterior arch")  # outside C3–T1, what counts as "body"


def _subtype(f: Fracture, where: str) -> str:
    """The column that broke: a C2 fracture drawn for "posterior" breaks the dens, and a C1
    ring break drawn for "body" may hit its posterior arch, so the part decides."""
    if f.kind is FractureKind.COMPRESSION:
        return f.kind.value
    if where.endswith("body") or where in ANTERIOR_PARTS:
        return FractureKind.BODY.value
    return FractureKind.POSTERIOR.value


def _labels(cv: Canvas, spec: CaseSpec, breaks: dict[int, Break]) -> list[FindingLabel]:
    """Measured fracture labels: mask volume, patient-coordinate bounding box, details."""
    grid, out = cv.grid, []
    for i, f in enumerate(spec.findings):
        if not isinstance(f, Fracture):
            continue
        mask = cv.lesion == i + 1
        count = int(mask.sum())
        bbox = None
        if count:
            zz = np.nonzero(mask.any(axis=(1, 2)))[0]
            yy = np.nonzero(mask.any(axis=(0, 2)))[0]
            xx = np.nonzero(mask.any(axis=(0, 1)))[0]
            bbox = (float(grid.x[xx[0]]), float(grid.x[xx[-1]]), float(grid.y[yy[0]]),
                    float(grid.y[yy[-1]]), float(grid.z[zz[0]]), float(grid.z[zz[-1]]))
        where = breaks[i + 1].where
        out.append(FindingLabel(
            kind="fracture", subtype=_subtype(f, where), volume_ml=count * grid.voxel_ml,
            side=f.side.value if f.kind is FractureKind.POSTERIOR and f.level > 2 else None,
            level=f.level, bbox_mm=bbox,
            extra={"displacement_mm": f.displacement_mm, "compression": f.compression,
                   "part": where,
                   "gap_mm": 0.0 if breaks[i + 1].wedge else round(breaks[i + 1].width, 2)}))
    return out
