"""Head CT phantom renderer: anatomy, hemorrhages, strokes and look-alikes as noise-free HU.

:func:`render_head` draws a per-case random head (:mod:`models.synthetic.head_parts`), its
anatomical confounders (calcifications, metal) and then its findings.  Bleeds hit the
requested volume exactly on the fine grid: candidate voxels are ranked by a per-subtype shape
function (noise-deformed ellipsoid, thickness profile against the inner table, distance from
a focus, dependent level) and exactly as many as the volume needs are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.synthetic.grid import Grid
from models.synthetic.head_parts import (
    CALC,
    CENTRE,
    CEREB,
    CSF,
    DEEP,
    F32,
    GRAY,
    IS_BRAIN,
    IS_PAR,
    METAL,
    STEM,
    VENT,
    VESSEL,
    WHITE,
    Array,
    Head,
    Pts,
    Vec,
    View,
    ellipsoid_q,
    member,
)
from models.synthetic.render import FindingLabel, Rendered
from models.synthetic.spec import (
    CaseSpec,
    Confounders,
    Hemorrhage,
    HemorrhageSubtype,
    Side,
    Stroke,
    Territory,
)

SOFT_BRAIN = member((CSF, GRAY, WHITE, DEEP, VESSEL))
CEREBRAL = member((GRAY, WHITE, DEEP))


def render_head(grid: Grid, spec: CaseSpec, rng: np.random.Generator) -> Rendered:
    """Render ``spec`` on ``grid`` as noise-free HU (float32 (Z, H, W)) with ground truth.

    ``lesion`` holds ``i + 1`` for ``spec.findings[i]`` (hemorrhages and strokes; other kinds
    get a zero-volume label).  Anatomy, confounders and findings draw from independent child
    streams of ``rng``, so a finding never changes the head it is drawn into.  ``landmarks``:
    ``bone`` (HU > 300), ``brain`` (parenchyma and CSF inside the inner table), ``midline_x``
    (patient mm at the head centre) and ``labels`` (tissue label per voxel).
    """
    anatomy_rng, finding_rng, confounder_rng = rng.spawn(3)
    head = Head(grid, spec, anatomy_rng)
    head.render()
    hu = head.add
    hu += np.take(head.lut, head.lab)
    _texture(head, hu, anatomy_rng)
    scene = Scene(head, hu, np.zeros(grid.shape, dtype=np.uint8), confounder_rng)
    metal = _confounders(scene, spec.confounders)
    scene.rng = finding_rng
    labels = []
    for index, finding in enumerate(spec.findings):
        scene.value = index + 1
        if isinstance(finding, Hemorrhage):
            labels.append(_hemorrhage(scene, finding))
        elif isinstance(finding, Stroke):
            labels.append(_stroke(scene, finding))
        else:  # not a head finding: keep indices aligned; volume 0 means "not rendered"
            labels.append(FindingLabel(kind=type(finding).__name__.lower(), subtype="",
                                       volume_ml=0.0))
    out = Rendered(hu=hu, lesion=scene.lesion, body=head.lab > 0, findings=labels, metal=metal)
    mid = head.rot @ np.array([head.midline[0] * head.size, 0.0, 0.0]) + head.shift
    out.landmarks.update(bone=hu > 300, brain=IS_BRAIN[head.lab], midline_x=float(mid[0]),
                         labels=head.lab)
    return out


@dataclass
class Scene:
    """What finding renderers draw into: the head, final HU, lesion codes, their stream."""

    head: Head
    hu: Array
    lesion: Array
    rng: np.random.Generator
    value: int = 0  # lesion code of the finding being drawn

    def mark(self, v: View, sel: Array) -> None:
        np.copyto(self.lesion[v.index], np.uint8(self.value), where=sel)

    def free(self, v: View) -> Array:
        return np.asarray(self.lesion[v.index] == 0)

    def label(self, kind: str, subtype: str, side: Side, extra: dict[str, object]
              ) -> FindingLabel:
        """The ground truth of the current finding, measured from its lesion voxels."""
        grid = self.head.grid
        hit = self.lesion == self.value
        count = int(np.count_nonzero(hit))
        bbox = None
        if count:
            zs, ys, xs = (np.nonzero(hit.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
            bbox = (float(grid.x[xs[0]]), float(grid.x[xs[-1]]), float(grid.y[ys[0]]),
                    float(grid.y[ys[-1]]), float(grid.z[zs[0]]), float(grid.z[zs[-1]]))
        return FindingLabel(kind=kind, subtype=subtype, volume_ml=count * grid.voxel_ml,
                            side=side.value, bbox_mm=bbox, extra=extra)


# --- helpers -------------------------------------------------------------------------------------


def _smooth_noise(p: View | Pts, rng: np.random.Generator, wavelength: float,
                  terms: int = 4) -> Array:
    """Smooth random field of unit-ish amplitude (sum of random plane waves)."""
    x, y, z = p.p if isinstance(p, View) else p
    out = np.zeros(x.shape, dtype=F32)
    for _ in range(terms):
        k = rng.normal(size=3)
        k *= 2 * np.pi / wavelength / np.linalg.norm(k) * rng.uniform(0.7, 1.3)
        out += np.sin(x * F32(k[0]) + y * F32(k[1]) + z * F32(k[2])
                      + F32(rng.uniform(0, 2 * np.pi)))
    out *= F32(np.sqrt(2 / terms))
    return out


def _texture(head: Head, hu: Array, rng: np.random.Generator) -> None:
    """Smooth biological HU variation (about ±1.5 HU) over the parenchyma."""
    grid = head.grid
    index = head.box((-75, -95, -70), (75, 95, 90))
    if index is None:
        return
    field = np.zeros([s.stop - s.start for s in index], dtype=F32)
    for _ in range(3):
        term = np.ones(1, dtype=F32)
        for axis, coords in enumerate((grid.z, grid.y, grid.x)):
            k = rng.uniform(0.01, 0.05)
            part = np.cos(coords[index[axis]] * k + rng.uniform(0, 2 * np.pi)).astype(F32)
            term = term * part.reshape([-1 if i == axis else 1 for i in range(3)])
        field += term
    field *= F32(rng.uniform(0.6, 1.5))
    field *= IS_PAR[head.lab[index]]
    hu[index] += field


def _select(q: Array, ok: Array, count: int) -> tuple[Array, float]:
    """Mask of the ``count`` voxels with the smallest ``q`` among ``ok``; the threshold q."""
    flat = np.flatnonzero(ok)
    if flat.size == 0 or count <= 0:
        return np.zeros(q.shape, dtype=bool), 0.0
    values = q.ravel()[flat]
    if count < flat.size:
        part = np.argpartition(values, count - 1)[:count]
        flat, values = flat[part], values[part]
    mask = np.zeros(q.size, dtype=bool)
    mask[flat] = True
    return mask.reshape(q.shape), float(values.max())


def _direction(side: int, rng: np.random.Generator, ap: tuple[float, float],
               si: tuple[float, float]) -> Array:
    """A random lateral direction on ``side`` (+1 left), tilted front/back and up/down."""
    u = np.array([side * 1.0, rng.uniform(*ap), rng.uniform(*si)])
    return np.asarray(u / np.linalg.norm(u))


def _blood(sc: Scene, v: View, sel: Array, density: float, wavelength: float) -> None:
    """Clotted-blood HU (mean ``density``, smooth ±5-10 HU texture) on ``sel``."""
    tex = _smooth_noise(v, sc.rng, wavelength)
    tex *= F32(sc.rng.uniform(3.5, 7.0))
    tex += F32(density)
    np.copyto(sc.hu[v.index], tex, where=sel)


# --- hemorrhage -----------------------------------------------------------------------------------


def _hemorrhage(sc: Scene, finding: Hemorrhage) -> FindingLabel:
    side = 1 if finding.side is Side.LEFT else -1
    count = max(1, round(finding.volume_ml / sc.head.grid.voxel_ml))
    kind = finding.subtype
    if kind is HemorrhageSubtype.IPH:
        extra = _iph(sc, finding, side, count)
    elif kind in (HemorrhageSubtype.SDH, HemorrhageSubtype.EDH):
        extra = _extra_axial(sc, finding, side, count)
    elif kind is HemorrhageSubtype.SAH:
        extra = _sah(sc, finding, side, count)
    else:
        extra = _ivh(sc, finding, side, count)
    extra["density_hu"] = round(finding.density_hu, 1)
    return sc.label("hemorrhage", kind.value, finding.side, extra)


IPH_SITES = {"putamen": (24.0, -3.0, 0.0), "thalamus": (11.0, 12.0, 3.0), "lobar": None,
             "cerebellum": (20.0, 50.0, -38.0), "pons": (3.0, 10.0, -36.0)}


def _iph(sc: Scene, finding: Hemorrhage, side: int, count: int) -> dict[str, object]:
    """Irregular parenchymal clot with a thin edema rim once it is larger than ~5 mL."""
    head, rng, volume = sc.head, sc.rng, finding.volume_ml
    site = str(rng.choice(list(IPH_SITES), p=(0.33, 0.15, 0.37, 0.1, 0.05)))
    if (site == "pons" and volume > 8) or (site == "cerebellum" and volume > 30):
        site = "lobar"
    r_eq = (3 * volume * 1000 / (4 * np.pi)) ** (1 / 3) / head.size
    base = IPH_SITES[site]
    if base is None:  # lobar: subcortical white matter under a random convexity point
        u = _direction(side, rng, (-1.2, 1.2), (-0.3, 1.0))
        depth = rng.uniform(10, 16) + 0.5 * r_eq
        centre = CENTRE + (float(head.radius_at(u[None])[0]) - depth) * u
    else:
        centre = np.array([side * base[0], base[1], base[2]]) + rng.normal(0, 2.5, 3)
    radii = np.exp(rng.normal(0, 0.18, 3))
    radii *= r_eq / np.cbrt(radii.prod())
    yaw = rng.uniform(0, np.pi)
    allowed = {"lobar": member((CSF, GRAY, WHITE, DEEP)), "putamen": CEREBRAL,
               "thalamus": CEREBRAL}.get(site, member((CEREB, STEM)))
    half = 1.7 * float(radii.max()) + 4
    found = None
    for grow in (1.0, 1.5, 2.25):  # widen the box if the clot does not fit in it
        v = head.view(centre - half * grow, centre + half * grow)
        if v is None:
            break
        q = np.sqrt(ellipsoid_q(v.p, centre, radii, yaw))
        q *= 1 + F32(0.22) * _smooth_noise(v, rng, 1.3 * r_eq + 5)
        ok = allowed[v.lab] & (v.sdc < -1.5) & sc.free(v)
        if site != "pons":
            ok &= head.midline_distance(v) * F32(side) > 0.6
        found = (v, q, *_select(q, ok, count))
        if np.count_nonzero(found[2]) >= count:
            break
    if found is None:
        return {"site": site}
    v, q, sel, thresh = found
    sc.mark(v, sel)
    _blood(sc, v, sel, finding.density_hu, 1.2 * r_eq + 4)
    if volume > 5:  # perihematomal edema
        rim = (rng.uniform(2.0, 5.0) + 0.1 * r_eq) / r_eq
        edge = (q > thresh) & (q < thresh * (1 + rim)) & IS_PAR[v.lab] & ~sel
        fade = np.clip((thresh * (1 + rim) - q) / F32(thresh * rim), 0, 1)
        fade *= F32(rng.uniform(5, 12))
        np.subtract(sc.hu[v.index], fade, out=sc.hu[v.index], where=edge)
    return {"site": site}


def _extra_axial(sc: Scene, finding: Hemorrhage, side: int, count: int) -> dict[str, object]:
    """Subdural crescent or epidural lens against the inner table of one hemisphere."""
    head, rng = sc.head, sc.rng
    volume = finding.volume_ml * 1000 / head.size**3  # template mm³
    epidural = finding.subtype is HemorrhageSubtype.EDH
    if epidural:  # lens: V = π R² t / 2
        thick = 3 + 18 * np.sqrt(finding.volume_ml / 60)
        extent = np.sqrt(2 * volume / (np.pi * thick))
        u0 = _direction(side, rng, (-0.6, 0.7), (-0.45, 0.35))
        elong = rng.uniform(1.0, 1.4)
    else:  # crescent with a flat top: V ≈ 2/3 π R² t
        thick = 1.5 + 16 * (finding.volume_ml / 60) ** 0.55
        extent = np.sqrt(1.5 * volume / (np.pi * thick))
        u0 = _direction(side, rng, (-0.7, 0.8), (-0.2, 0.8))
        elong = rng.uniform(1.2, 1.8)
    e1 = np.array([0.0, 1.0, 0.0]) - u0[1] * u0  # tangent frame: e1 runs front-back
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u0, e1)
    s = np.sin(min(1.35, extent / float(head.radius_at(u0[None])[0])))
    ab = (s * elong, s / np.sqrt(elong))
    t = np.stack(np.meshgrid(np.linspace(-1, 1, 15), np.linspace(-1, 1, 15)), -1).reshape(-1, 2)
    a = t * np.array(ab) * 1.1
    a = a[(a**2).sum(1) < 1]
    dirs = u0 * np.sqrt(1 - (a**2).sum(1))[:, None] + a[:, :1] * e1 + a[:, 1:] * e2
    rad = head.radius_at(dirs)[:, None]
    pts = np.concatenate([CENTRE + rad * dirs, CENTRE + (rad - 1.3 * thick - 4) * dirs])
    v = head.view(pts.min(axis=0) - 3, pts.max(axis=0) + 3)
    if v is None:
        return {"thickness_mm": 0.0}
    d = (v.x - CENTRE[0], v.y - CENTRE[1], v.z - CENTRE[2])
    r = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) + F32(1e-3)

    def along(e: Array) -> Array:
        return np.asarray(d[0] * F32(e[0]) + d[1] * F32(e[1]) + d[2] * F32(e[2]))

    prof = 1 - (along(e1) / (r * F32(ab[0]))) ** 2 - (along(e2) / (r * F32(ab[1]))) ** 2
    np.clip(prof, 0, 1, out=prof)
    if not epidural:
        np.sqrt(prof, out=prof)
    prof *= 1 + F32(0.12) * _smooth_noise(v, rng, 25.0)
    facing = along(u0) > 0
    ok = facing & (prof > 0.02) & SOFT_BRAIN[v.lab] & (v.sdc < 0) & sc.free(v)
    ok &= (head.midline_distance(v) * F32(side) > 0.6) & head.supratentorial(v)
    q = -v.sdc / np.maximum(prof, F32(0.02))
    sel, thresh = _select(q, ok, count)
    sc.mark(v, sel)
    _blood(sc, v, sel, finding.density_hu, 18.0)
    if finding.volume_ml > 2:  # sulci under the collection are effaced
        under = ~sel & (v.lab == CSF) & facing & (prof > 0.05) & (-v.sdc < thresh * prof + 10)
        np.copyto(sc.hu[v.index], head.lut[GRAY] - F32(2), where=under)
    depth = float(np.max(-v.sdc, where=sel, initial=0.0))
    return {"thickness_mm": round(depth * head.size, 1), "location": _lobe_name(u0)}


def _lobe_name(u: Array) -> str:
    if u[2] < -0.25:
        return "temporal"
    if u[1] < -0.3:
        return "frontal"
    return "occipital" if u[1] > 0.6 else "parietal"


def _keep(sc: Scene, flat: Array, q: Array, count: int, density: float) -> None:
    """Blood on the ``count`` voxels (flat indices) with the smallest ``q``."""
    keep = flat[np.argpartition(q, count - 1)[:count]] if q.size > count else flat
    keep = keep[sc.lesion.ravel()[keep] == 0]
    sc.lesion.ravel()[keep] = sc.value
    x, y = sc.head.x.ravel()[keep], sc.head.y.ravel()[keep]
    sc.hu.ravel()[keep] = F32(density) + F32(sc.rng.uniform(3, 7)) * np.sin(
        x * F32(0.2) + y * F32(0.13) + F32(sc.rng.uniform(0, 6.3)))


def _sah(sc: Scene, finding: Hemorrhage, side: int, count: int) -> dict[str, object]:
    """Blood replacing subarachnoid CSF (sulci, fissures, cisterns) around a focus."""
    head, rng = sc.head, sc.rng
    flat = np.flatnonzero(head.lab == CSF)
    if rng.random() < (0.7 if finding.volume_ml > 8 else 0.35):
        centre = np.array([side * rng.uniform(6, 24), rng.normal(-14, 4), rng.normal(-16, 3)])
        where = "basal cisterns / sylvian"
    else:
        u0 = _direction(side, rng, (-0.8, 0.9), (-0.1, 0.9))
        centre = CENTRE + (float(head.radius_at(u0[None])[0]) - 8) * u0
        where = "convexity sulci"
    x, y, z = (a.ravel()[flat] for a in (head.x, head.y, head.z))
    d = (x - F32(centre[0]), y - F32(centre[1]), z - F32(centre[2]))
    q = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    q *= 1 + F32(0.15 * np.sqrt(1.5)) * _smooth_noise(d, rng, 50.0, 3)
    q += F32(30) * ((x - F32(head.midline[0])) * F32(side) < 0)
    _keep(sc, flat, q, count, finding.density_hu)
    return {"location": where}


def _ivh(sc: Scene, finding: Hemorrhage, side: int, count: int) -> dict[str, object]:
    """Ventricular blood layering dependently (supine: posterior), casting when large."""
    head, rng = sc.head, sc.rng
    flat = np.flatnonzero(head.lab == VENT)
    rows = (flat // head.grid.shape[2]) % head.grid.shape[1]
    x = head.x.ravel()[flat] - F32(head.midline[0])
    q = -head.grid.y[rows].astype(F32)  # the fluid level is horizontal in the scanner
    q += F32(rng.uniform(0, 25)) * (x * F32(side) < 0)
    q += F32(rng.uniform(0, 15)) * (np.abs(x) < 4)
    if flat.size < count and head.vent_sd is not None:  # the cast distends the system
        index, sd = head.vent_sd
        near = np.zeros(head.grid.shape, dtype=bool)
        near[index] = (sd < 12) & IS_PAR[head.lab[index]]
        extra = np.flatnonzero(near)
        dist = np.zeros(head.grid.shape, dtype=F32)
        dist[index] = sd
        flat = np.concatenate([flat, extra])
        q = np.concatenate([q, 1000 + dist.ravel()[extra]])
    _keep(sc, flat, q, count, finding.density_hu)
    return {"location": "ventricles"}


# --- ischemic stroke -----------------------------------------------------------------------------


def _territory(sc: Scene, pts: Pts, lab: Array, side: int, territory: Territory) -> Array:
    """Which of the cerebral voxels ``pts`` of one hemisphere belong to ``territory``."""
    m0, m1, m2 = sc.head.midline
    x, y, z = pts
    t = y * F32(1 / 80)
    xs = (x - (m0 + m1 * t + m2 * t * t)) * F32(side)
    wobble = _smooth_noise(pts, sc.rng, 40.0, 3)
    border = 13 + F32(0.17) * np.clip(z - 5, 0, 75) + F32(2.5) * wobble  # ACA/MCA watershed
    occipital = (y > 52 - F32(0.1) * z + F32(6) * wobble) & (z < 48)
    mesial_temporal = (z < -10) & (y > -18) & (xs < 38)
    thalamus = (lab == DEEP) & (y > 3) & (xs < 20)
    if territory is Territory.PCA:
        return np.asarray(occipital | mesial_temporal | thalamus)
    if territory is Territory.ACA:
        caudate = (lab == DEEP) & (y < -8) & (xs < 19)
        return np.asarray((xs <= border) & ~occipital & (z > -28) & ((lab != DEEP) | caudate))
    return np.asarray((xs > border) & ~occipital & ~mesial_temporal & ~thalamus)


VESSEL_PATHS: dict[Territory, Callable[[Head, int], Sequence[Vec]]] = {
    Territory.MCA: lambda h, s: h.mca[s],  # M1 from the carotid terminus to the Sylvian fissure
    Territory.ACA: lambda h, s: [(s * 13, -14, -19), (s * 2, -22, -16), (s * 1, -36, -4)],
    Territory.PCA: lambda h, s: [(0, -4, -21), (s * 8, 0, -19), (s * 17, 11, -14),
                                 (s * 23, 26, -8)],
}


def _stroke(sc: Scene, finding: Stroke) -> FindingLabel:
    """Early infarct: hypodensity and loss of gray-white contrast in part of a territory."""
    head, rng = sc.head, sc.rng
    side = 1 if finding.side is Side.LEFT else -1
    extra: dict[str, object] = {
        "hypodensity_hu": round(finding.hypodensity_hu, 2), "extent": round(finding.extent, 3),
        "gray_white_loss": round(finding.gray_white_loss, 3),
        "hyperdense_vessel": finding.hyperdense_vessel}
    lo, hi = sorted((side * -6.0, side * 90.0))
    v = head.view((lo, -110, -75), (hi, 110, 100))
    if v is not None:
        tissue = CEREBRAL[v.lab] & (v.sdc < 0) & (head.midline_distance(v) * F32(side) > 0.5)
        tissue &= head.supratentorial(v) & sc.free(v)
        where = np.nonzero(tissue)
        pts = (v.x[where], v.y[where], v.z[where])
        lab = v.lab[where]
        flat = np.flatnonzero(_territory(sc, pts, lab, side, finding.territory))
        if flat.size:
            _infarct(sc, finding, v, tuple(w[flat] for w in where))
    if finding.hyperdense_vessel:
        path = VESSEL_PATHS[finding.territory](head, side)
        keep = max(2, round(len(path) * rng.uniform(0.6, 1.0)))
        radius = rng.uniform(1.0, 2.0)
        tube = head.tube(path[:keep], [radius] * keep)
        if tube is not None:
            tv, sd = tube
            np.copyto(sc.hu[tv.index], F32(rng.uniform(55, 80)),
                      where=(sd < 0) & SOFT_BRAIN[tv.lab])
        extra["vessel_diameter_mm"] = round(2 * radius * head.size, 2)
    return sc.label("stroke", finding.territory.value, finding.side, extra)


def _infarct(sc: Scene, finding: Stroke, v: View, where: tuple[Array, ...]) -> None:
    """Involve ``extent`` of the territory voxels ``where`` nearest a focus inside it."""
    rng = sc.rng
    x, y, z = (a[where] for a in v.p)
    focus = int(rng.integers(x.size))
    c = 0.5 * (np.array([x[focus], y[focus], z[focus]]) + np.array([x.mean(), y.mean(),
                                                                       z.mean()]))
    q = np.sqrt((x - F32(c[0])) ** 2 + (y - F32(c[1])) ** 2 + (z - F32(c[2])) ** 2)
    q *= 1 + F32(0.3) * _smooth_noise((x, y, z), rng, 35.0)
    count = max(1, round(float(np.clip(finding.extent, 0.05, 1.0)) * x.size))
    order = np.argpartition(q, count - 1)[:count] if count < x.size else np.arange(x.size)
    sel = tuple(w[order] for w in where)
    sc.lesion[v.index][sel] = sc.value
    qs = q[order]
    thresh = float(qs.max())
    taper = np.clip((F32(thresh) - qs) / F32(0.2 * thresh + 1e-3), 0, 1)  # soft margin
    taper *= 0.5 + 0.5 * taper
    drop = F32(0.75) + F32(0.25) * _smooth_noise((x[order], y[order], z[order]), rng, 20.0)
    drop *= F32(finding.hypodensity_hu)
    lab = v.lab[sel]
    contrast = (np.take(sc.head.lut, lab) - sc.head.lut[WHITE]) * member((GRAY, DEEP))[lab]
    drop += contrast * F32(finding.gray_white_loss)  # gray matter fades towards white
    drop *= taper
    sc.hu[v.index][sel] -= drop


# --- confounders -------------------------------------------------------------------------------


def _dot(sc: Scene, centre: Vec, radius: float, value: float, label: int = CALC) -> None:
    """A small dense sphere with partial volume at its edge."""
    c = np.asarray(centre, float)
    v = sc.head.view(c - radius - 1, c + radius + 1)
    if v is None:
        return
    d = np.sqrt(ellipsoid_q(v.p, c, (1.0, 1.0, 1.0)))
    w = np.clip((F32(radius) - d) / F32(sc.head.pixel) + F32(0.5), 0, 1)
    hv = sc.hu[v.index]
    hv += (F32(value) - hv) * w
    np.copyto(v.lab, label, where=w > 0.5)


def _confounders(sc: Scene, conf: Confounders) -> Array | None:
    """Calcifications and metal that must not be called a finding; returns the metal mask."""
    head, rng = sc.head, sc.rng
    if conf.pineal_calcification:
        c = head.pineal + rng.normal(0, 1.0, 3)
        for _ in range(int(rng.integers(1, 4))):
            _dot(sc, c + rng.normal(0, 1.0, 3), rng.uniform(1.0, 2.8), rng.uniform(150, 600))
    if conf.choroid_calcification:
        for atrium in head.atria:
            for _ in range(int(rng.integers(1, 4))):
                _dot(sc, atrium + rng.normal(0, 1.8, 3), rng.uniform(0.8, 2.2),
                     rng.uniform(150, 450))
    if conf.falx_calcification:
        y0, z0, length = rng.uniform(-60, 20), rng.uniform(18, 60), rng.uniform(5, 25)
        for t in np.linspace(0, 1, max(2, int(length / 1.5))):
            c = np.array([head.midline[0], y0 + t * length * 0.8, z0 + t * length * 0.6])
            _dot(sc, c, rng.uniform(0.6, 1.2), rng.uniform(200, 700))
    if conf.vascular_calcification:  # carotid siphons and vertebral arteries
        for s in (1, -1):
            for path in ([(s * 15, -10, -34), (s * 16, -17, -30), (s * 15, -20, -24),
                          (s * 13, -15, -20)],
                         [(s * 8, 14, -72), (s * 6, 6, -60), (s * 3, -1, -52)]):
                for _ in range(int(rng.integers(1, 4))):
                    i = int(rng.integers(len(path) - 1))
                    c = np.array(path[i]) + rng.uniform() * (np.array(path[i + 1]) - path[i])
                    _dot(sc, c + rng.normal(0, 1.2, 3), rng.uniform(0.7, 1.6),
                         rng.uniform(150, 500))
    if not conf.metal:
        return None
    before = head.lab == METAL
    teeth = head.box((-30, -100, -112), (30, -68, -90))
    if teeth is not None and rng.random() < 0.7:  # dental filling in the lowest slices
        x = rng.choice([-1, 1]) * rng.uniform(8, 26)
        top = float(head.z[teeth].max())
        c = np.array([x, -84 + 0.02 * x * x, min(top - 1.5, rng.uniform(-100, -92))])
        for _ in range(int(rng.integers(1, 3))):
            _dot(sc, c + rng.normal(0, 1.5, 3), rng.uniform(1.5, 3.0), 3000.0, METAL)
    else:  # aneurysm clip at the MCA bifurcation or the anterior communicating artery
        s = int(rng.choice([-1, 1]))
        base = head.mca[s][-1] if rng.random() < 0.6 else (0.0, -22.0, -16.0)
        c = np.asarray(base, float) + rng.normal(0, 1.5, 3)
        d = rng.normal(size=3)
        d *= rng.uniform(2, 4) / np.linalg.norm(d)
        for t in np.linspace(-1, 1, 5):
            _dot(sc, c + t * d, 1.0, 3000.0, METAL)
    metal = (head.lab == METAL) & ~before
    return metal if metal.any() else None
