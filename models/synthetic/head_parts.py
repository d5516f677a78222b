"""Head anatomy of the synthetic CT phantom: per-case shape model, tissue labels and bone HU.

The anatomy lives in a template frame (mm; origin near the foramen of Monro, +x left,
+y posterior, +z superior) scaled by the patient size.  Smooth per-case shape fields live in
small tables: one over directions from the cranial centre (an octahedral map holding the
inner-table radius, skull and scalp thickness, sulcal pattern …) and one over (x, y) for the
skull-base floor.  :class:`Head` turns them into a tissue label per voxel plus the HU that
labels cannot express (bone, partial volume, texture); the HU of label ``L`` is ``lut[L]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.synthetic.grid import Grid, local_coords, rotation
from models.synthetic.spec import CaseSpec

Array = np.ndarray
Pts = tuple[Array, Array, Array]
Vec = Sequence[float] | Array
F32 = np.float32

(AIR, SKIN, FAT, MUSCLE, BONE, CSF, VENT, GRAY, WHITE, DEEP, CEREB, STEM, DURA, VSINUS, GLOBE,
 LENS, ORBFAT, NERVE, VESSEL, CHOROID, GLAND, MUCOSA, SINUSAIR, CALC, METAL) = range(25)
N_LABELS = 32
BRAIN = (CSF, VENT, GRAY, WHITE, DEEP, CEREB, STEM, DURA, VSINUS, VESSEL, CHOROID, GLAND, CALC)
PARENCHYMA = (GRAY, WHITE, DEEP, CEREB, STEM)
CENTRE = np.array([0.0, 6.0, 12.0], dtype=F32)  # origin of the direction table
N_DIR = 288  # octahedral direction table: N_DIR × N_DIR cells
FLOOR_X0, FLOOR_Y0, FLOOR_NX, FLOOR_NY, FLOOR_STEP = -100.0, -130.0, 401, 521, 0.5
FACE_Z0, FACE_STEP = -112.0, 0.25  # face profiles tabulated from z = -112 mm


def member(labels: Sequence[int]) -> Array:
    """Boolean look-up table: ``member(L)[lab]`` is True where ``lab`` is one of ``L``."""
    table = np.zeros(N_LABELS, dtype=bool)
    table[list(labels)] = True
    return table


IS_BRAIN = member(BRAIN)
IS_PAR = member(PARENCHYMA)
NOT_BRAIN = ~IS_BRAIN
NOT_BRAIN[AIR] = False
CORTEX = member((GRAY, WHITE, CSF))


def hu_table(age: float, rng: np.random.Generator) -> Array:
    """Per-case HU of each label (a few HU of biological and calibration spread)."""
    gray = rng.uniform(37.0, 42.0)
    white = np.clip(gray - rng.uniform(7.5, 11.0) - 1.5 * np.clip((age - 40) / 45, 0, 1), 24, 32)
    csf = rng.uniform(3.0, 10.0)
    values = {
        AIR: -1000.0, SKIN: rng.uniform(35, 55), FAT: rng.uniform(-100, -65),
        MUSCLE: rng.uniform(42, 56), BONE: 0.0, CSF: csf, VENT: csf + rng.uniform(-1.5, 1.5),
        GRAY: gray, WHITE: white, DEEP: gray - rng.uniform(0.5, 4.0),
        CEREB: gray - rng.uniform(0.0, 3.0), STEM: white + rng.uniform(2.0, 6.0),
        DURA: rng.uniform(42, 52), VSINUS: rng.uniform(44, 60), GLOBE: rng.uniform(6, 15),
        LENS: rng.uniform(80, 115), ORBFAT: rng.uniform(-95, -70), NERVE: rng.uniform(32, 48),
        VESSEL: rng.uniform(38, 48), CHOROID: rng.uniform(30, 44), GLAND: rng.uniform(32, 45),
        MUCOSA: rng.uniform(25, 45), SINUSAIR: -990.0, CALC: 0.0, METAL: 3000.0,
    }
    lut = np.zeros(N_LABELS, dtype=F32)
    for key, value in values.items():
        lut[key] = value
    return lut


# --- geometry helpers -----------------------------------------------------------------------


def ellipsoid_q(p: Pts, c: Vec, r: Vec, yaw: float = 0.0) -> Array:
    """Normalised squared radius of an ellipsoid (turned by ``yaw`` radians about z)."""
    dx, dy = p[0] - F32(c[0]), p[1] - F32(c[1])
    if yaw:
        cs, sn = F32(np.cos(yaw)), F32(np.sin(yaw))
        dx, dy = cs * dx + sn * dy, cs * dy - sn * dx
    q = (dx / F32(r[0])) ** 2
    q += (dy / F32(r[1])) ** 2
    q += ((p[2] - F32(c[2])) / F32(r[2])) ** 2
    return q


def segment_sd(p: Pts, a: Vec, b: Vec, ra: float, rb: float) -> Array:
    """Signed distance to a tapered capsule from ``a`` (radius ``ra``) to ``b`` (``rb``)."""
    ab = (np.asarray(b, float) - np.asarray(a, float)).astype(F32)
    length2 = F32(max(float(ab @ ab), 1e-6))
    px, py, pz = p[0] - F32(a[0]), p[1] - F32(a[1]), p[2] - F32(a[2])
    t = (px * ab[0] + py * ab[1] + pz * ab[2]) / length2
    np.clip(t, 0, 1, out=t)
    d2 = (px - t * ab[0]) ** 2
    d2 += (py - t * ab[1]) ** 2
    d2 += (pz - t * ab[2]) ** 2
    sd = np.sqrt(d2)
    sd -= F32(ra) + F32(rb - ra) * t
    return np.asarray(sd)


def octa_index(dx: Array, dy: Array, dz: Array, n: int = N_DIR) -> Array:
    """Index into an ``n × n`` octahedral direction table for direction vectors (dx, dy, dz)."""
    s = np.abs(dx) + np.abs(dy)
    s += np.abs(dz)
    s += F32(1e-6)
    px, py = dx / s, dy / s
    neg = dz < 0
    if neg.any():
        fx = (1 - np.abs(py)) * np.sign(px)
        fy = (1 - np.abs(px)) * np.sign(py)
        np.copyto(px, fx, where=neg)
        np.copyto(py, fy, where=neg)
    half = F32(n / 2)
    ix = ((px + 1) * half).astype(np.int32)
    iy = ((py + 1) * half).astype(np.int32)
    np.clip(ix, 0, n - 1, out=ix)
    np.clip(iy, 0, n - 1, out=iy)
    iy *= n
    iy += ix
    return np.asarray(iy)


def octa_directions(n: int = N_DIR) -> Array:
    """Unit direction of every cell of the octahedral table, (n*n, 3) float32."""
    t = (np.arange(n) + 0.5) / n * 2 - 1
    px, py = np.meshgrid(t, t)
    pz = 1 - np.abs(px) - np.abs(py)
    neg = pz < 0
    fx = (1 - np.abs(py)) * np.sign(px)
    fy = (1 - np.abs(px)) * np.sign(py)
    px, py = np.where(neg, fx, px), np.where(neg, fy, py)
    v = np.stack([px, py, pz], axis=-1).reshape(-1, 3)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), dtype=F32)


def bumps(u: Array, rng: np.random.Generator, count: int, amp: float,
          width: tuple[float, float]) -> Array:
    """Sum of ``count`` random smooth bumps on the sphere (amplitude sd ``amp``)."""
    v = rng.normal(size=(count, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.uniform(*width, count)
    e = (u @ v.T.astype(F32) - 1) / (w**2).astype(F32)
    np.exp(e, out=e)
    return np.asarray(e @ rng.normal(0, amp, count).astype(F32))


def lobe(u: Array, direction: Vec, width: float) -> Array:
    v = np.asarray(direction, dtype=float)
    v /= np.linalg.norm(v)
    return np.asarray(np.exp((u @ v - 1) / width**2))


def smooth_min(a: Array, b: Array, k: float) -> Array:
    """Union of two signed distances with a rounded (radius ~k) junction."""
    h = np.clip(F32(k) - np.abs(a - b), 0, None) * F32(1 / k)
    out = np.minimum(a, b)
    out -= h * h * F32(k / 4)
    return np.asarray(out)


@dataclass
class View:
    """Template coordinates and output arrays of one box of the grid (views, no copies)."""

    index: tuple[slice, slice, slice]
    x: Array
    y: Array
    z: Array
    lab: Array
    add: Array
    sdc: Array

    @property
    def p(self) -> Pts:
        return self.x, self.y, self.z


Shape = tuple[View, Array] | None  # a box and a field in it (ellipsoid q, tube distance)


class Head:
    """Per-case anatomy: shape tables and parameters drawn from ``rng``; renders labels/HU.

    After :meth:`render`: ``lab`` (uint8 tissue labels), ``add`` (HU on top of ``lut[lab]``)
    and ``sdc`` (signed distance to the inner table, template mm, negative inside).
    """

    def __init__(self, grid: Grid, spec: CaseSpec, rng: np.random.Generator) -> None:
        self.grid, self.rng = grid, rng
        self.size = float(spec.patient.size)
        self.age = float(spec.patient.age_years)
        atrophy = np.clip((self.age - 20) / 65, 0, 1) + rng.normal(0, 0.08)
        self.atrophy = float(np.clip(atrophy, 0, 1.1))
        self.lut = hu_table(self.age, rng)
        self.pixel = grid.pixel_mm / self.size  # template mm per pixel
        self.dz = (float(np.median(np.diff(grid.z))) if len(grid.z) > 1 else 1.0) / self.size
        self.x, self.y, self.z = local_coords(grid, spec.pose)
        for coord in (self.x, self.y, self.z):
            np.multiply(coord, F32(1 / self.size), out=coord)
        self.rot = rotation(spec.pose).astype(float)
        self.shift = np.asarray(spec.pose.shift_mm, dtype=float)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)
        self.add = np.zeros(grid.shape, dtype=F32)
        self.sdc = np.full(grid.shape, 1000.0, dtype=F32)
        self.mca: dict[int, list[tuple[float, float, float]]] = {}
        self.atria: list[Array] = []
        self.pineal = np.zeros(3)
        self.vent_sd: tuple[tuple[slice, slice, slice], Array] | None = None
        self.midline = (0.0, 0.0, 0.0)
        self._sample_shape()

    # -- per-case shape ------------------------------------------------------------------------

    def _sample_shape(self) -> None:
        rng, a = self.rng, self.atrophy
        u = octa_directions()
        ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
        coarse, half = octa_directions(N_DIR // 2), N_DIR // 2

        def bump(count: int, amp: float, width: tuple[float, float]) -> Array:
            field = bumps(coarse, rng, count, amp, width).reshape(half, half)
            return np.asarray(field.repeat(2, axis=0).repeat(2, axis=1).ravel())

        half_w = 69 * np.exp(rng.normal(0, 0.035))
        front, back = (v * np.exp(rng.normal(0, 0.035)) for v in (80.0, 85.0))
        up, down = 72 * np.exp(rng.normal(0, 0.04)), 95 * np.exp(rng.normal(0, 0.03))
        aw = half_w * (1 + rng.uniform(0.02, 0.1) * uy)  # egg shape: wider at the back
        b, c = np.where(uy < 0, front, back), np.where(uz > 0, up, down)
        radius = 1 / np.sqrt((ux / aw) ** 2 + (uy / b) ** 2 + (uz / c) ** 2)
        radius += bump(10, 1.8, (0.35, 0.7))
        thick = (rng.uniform(4.8, 6.8) + 1.5 * lobe(u, (0, -1, 0.3), 0.6)
                 + rng.uniform(1.5, 4) * lobe(u, (0, 1, -0.3), 0.45)
                 - 3.2 * (lobe(u, (1, -0.05, -0.3), 0.45) + lobe(u, (-1, -0.05, -0.3), 0.45))
                 + bump(8, 0.7, (0.3, 0.6)))
        self.frontal_sinus = rng.uniform(0.0, 1.3) if rng.random() < 0.85 else 0.0
        thick += (4 + 9 * self.frontal_sinus) * lobe(u, (0, -0.97, -0.24), 0.2)
        temporalis = lobe(u, (1, -0.1, -0.3), 0.45) + lobe(u, (-1, -0.1, -0.3), 0.45)
        scalp = (rng.uniform(4.0, 6.5) + rng.uniform(6, 11) * temporalis
                 + 4 * lobe(u, (0, 1, -0.55), 0.35) + bump(6, 0.6, (0.3, 0.6)))
        fat = np.clip(rng.uniform(1.0, 3.5) + bump(6, 0.5, (0.3, 0.7)), 0.4, 6)
        atrophic = lobe(u, (0, -1, 0.3), 0.6) + lobe(u, (1, 0, -0.3), 0.4) + lobe(
            u, (-1, 0, -0.3), 0.4)
        csfw = np.clip(0.7 + 2.4 * a + 0.8 * a * atrophic + bump(10, 0.5, (0.25, 0.5)), 0.3, 7)
        depth = np.clip(rng.uniform(11, 16) + bump(12, 2.5, (0.2, 0.5))
                        + bump(40, 3.0, (0.06, 0.15)), 5, 24)
        depth2 = np.clip(rng.uniform(3, 6) + bump(40, 2.5, (0.06, 0.15)), 0.5, 10)
        diploe = rng.uniform(350, 600) + bump(10, 90, (0.15, 0.4))
        # radius, skull, scalp, fat, surface CSF, primary sulci, their depth, diploe HU,
        # secondary sulci, their depth
        self.dirtab = [np.ascontiguousarray(t, dtype=F32) for t in (
            radius, np.clip(thick, 2.2, 25), scalp, fat, csfw, self._sulci(u, 10.5, 13.0),
            depth, diploe, self._sulci(u, 19.0, 24.0), depth2)]
        self.cortex = rng.uniform(2.2, 2.9)
        self.sulcus_w = rng.uniform(0.25, 0.5) + 1.1 * a * rng.uniform(0.7, 1.3)
        self.cortical_hu = rng.uniform(1500, 1900)
        self._floor()
        self.tent = (rng.uniform(-3, 2), rng.uniform(0.36, 0.46), rng.uniform(0.008, 0.011))
        fz = [-104, -80, -65, -50, -40, -30, -22]
        front_y = np.array([-84, -93, -95, -92, -87, -88, -86]) + rng.normal(0, 2, 7)
        curve = np.array([0.012, 0.012, 0.010, 0.008, 0.006, 0.008, 0.01]) * np.exp(
            rng.normal(0, 0.1))
        width = np.array([48, 56, 60, 64, 60, 58, 58]) + rng.normal(0, 2, 7)
        tip = rng.normal(-118, 3)
        nose = ([-76, -70, -63, -45, -33, -26], [-94, -106, tip, (tip - 98) / 2 - 6, -99, -95])
        zs = np.arange(FACE_Z0, -9.0, FACE_STEP)
        self.face_lut = [np.interp(zs, fz, front_y).astype(F32),
                         np.interp(zs, fz, curve).astype(F32),
                         np.interp(zs, fz, width).astype(F32),
                         np.interp(zs, *nose).astype(F32)]
        self.globes = [np.array([s * 33, -71, -38, 11.5]) + np.r_[rng.normal(0, 1.2, 3),
                                                                  rng.normal(0, 0.4)]
                       for s in (1, -1)]

    def _sulci(self, u: Array, lo: float, hi: float) -> Array:
        """Angular distance (rad) to the nearest sulcus: zero set of a band-limited field."""
        rng, count = self.rng, 16
        w = rng.normal(size=(count, 3))
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        f = rng.uniform(lo, hi) * rng.uniform(0.8, 1.25, count)
        amp = rng.uniform(0.6, 1.0, count)
        phase = u @ (w * f[:, None]).T.astype(F32) + rng.uniform(0, 2 * np.pi, count).astype(F32)
        value = np.sin(phase) @ amp.astype(F32)
        grad = np.cos(phase) @ (w * (amp * f)[:, None]).astype(F32)
        grad -= (grad * u).sum(axis=1, keepdims=True) * u
        return np.asarray(np.minimum(np.abs(value) / (np.linalg.norm(grad, axis=1) + 1e-6), 1))

    def _floor(self) -> None:
        """Skull-base floor height F(x, y), floor-bone thickness and density, as tables."""
        rng = self.rng
        x, y = np.meshgrid(FLOOR_X0 + np.arange(FLOOR_NX) * FLOOR_STEP,
                           FLOOR_Y0 + np.arange(FLOOR_NY) * FLOOR_STEP)
        ax = np.abs(x + rng.normal(0, 1.0) * y / 100)
        theta = np.deg2rad(rng.uniform(30, 40))  # petrous ridge, from the coronal plane
        apex_y = rng.uniform(-2, 4)
        self.petrous = (float(theta), float(apex_y))
        across = (y - apex_y - np.tan(theta) * (ax - 16)) * np.cos(theta)  # > 0: posterior
        mid = rng.uniform(-51, -45) + 0.014 * ((ax - 36) ** 2 + (y + 6) ** 2)
        post = rng.uniform(-58, -53) + 0.0035 * ((1.3 * x) ** 2 + (y - 35) ** 2)
        crest = rng.uniform(-30, -25) - 0.08 * (ax - 16)
        floor = np.where(across < 0, crest + (mid - crest) * np.clip(-across / 11, 0, 1),
                         crest + (post - crest) * np.clip(across / 6, 0, 1))
        sph_y = rng.uniform(-34, -27)  # sphenoid ridge: anterior / middle fossa
        anterior = (rng.uniform(-24, -19) + 3 * np.exp(-(((ax - 28) / 13) ** 2))
                    - rng.uniform(4, 9) * np.exp(-((x / 6) ** 2)))
        wa = 1 / (1 + np.exp((y - (sph_y - 0.15 * ax)) / 1.2))
        floor = wa * anterior + (1 - wa) * floor
        sella, basion = rng.uniform(-33, -28), rng.uniform(-57, -51)
        central = np.interp(y, [-130, sph_y - 2, -24, -20, -13, -9.5, -7, 14, 130],
                            [-22, -22, -22, sella, sella, -21, -23, basion, basion])
        wc = 1 / (1 + np.exp((ax - 15) / 1.5)) / (1 + np.exp(-(y - sph_y) / 1.5))
        floor = wc * central + (1 - wc) * floor
        for _ in range(4):
            k = rng.normal(0, 0.05, 2)
            floor += rng.normal(0, 1.0) * np.cos(k[0] * x + k[1] * y + rng.uniform(0, 6.3))
        thick = np.where(across > 0, 6.5, 5.0)
        thick = np.where(wa > 0.5, 2.5 + 1.5 * np.exp(-((x / 8) ** 2)), thick)
        body = wc * (central - rng.uniform(-54, -50))  # sphenoid body down to ~-52 mm
        thick = np.maximum(thick, np.where(y > -8, 11.0 * wc, body))
        pet = np.exp(-((across / 7) ** 2)) * ((ax > 14) & (ax < 62))
        thick = np.maximum(thick, 17 * pet)
        dens = 1 + 0.3 * pet - 0.2 * (wa > 0.5)
        floor = ndimage.gaussian_filter(floor, 4)
        thick = ndimage.gaussian_filter(thick, 3)
        fm = (x / rng.uniform(13, 17)) ** 2 + ((y - 31) / rng.uniform(16, 20)) ** 2 < 1
        floor[fm], thick[fm] = -120, 0  # foramen magnum
        self.floortab = [np.ascontiguousarray(t.ravel(), dtype=F32) for t in (floor, thick, dens)]

    # -- look-ups and boxes --------------------------------------------------------------------

    def floor_index(self, x: Array, y: Array) -> Array:
        inv = F32(1 / FLOOR_STEP)
        ix = ((x - F32(FLOOR_X0)) * inv + F32(0.5)).astype(np.int32)
        iy = ((y - F32(FLOOR_Y0)) * inv + F32(0.5)).astype(np.int32)
        np.clip(ix, 0, FLOOR_NX - 1, out=ix)
        np.clip(iy, 0, FLOOR_NY - 1, out=iy)
        iy *= FLOOR_NX
        iy += ix
        return iy

    def radius_at(self, d: Array) -> Array:
        """Inner-table radius in the directions ``d`` ((n, 3), from CENTRE)."""
        d = np.asarray(d, dtype=F32)
        return np.asarray(self.dirtab[0][octa_index(d[:, 0], d[:, 1], d[:, 2])])

    def box(self, lo: Vec, hi: Vec) -> tuple[slice, slice, slice] | None:
        """Grid index ranges covering the template-frame box ``lo``–``hi``."""
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])], dtype=float) * self.size
        pat = corners @ self.rot.T + self.shift
        out = []
        for axis, coords in ((2, self.grid.z), (1, self.grid.y), (0, self.grid.x)):
            i0 = int(np.searchsorted(coords, pat[:, axis].min(), "left"))
            i1 = int(np.searchsorted(coords, pat[:, axis].max(), "right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def view(self, lo: Vec, hi: Vec) -> View | None:
        idx = self.box(lo, hi)
        if idx is None:
            return None
        return View(idx, self.x[idx], self.y[idx], self.z[idx], self.lab[idx], self.add[idx],
                    self.sdc[idx])

    def jit(self, c: Vec, r: Vec, sc: float = 1.5, sr: float = 0.08) -> tuple[Array, Array]:
        """A template centre and radii with per-case jitter."""
        centre = np.asarray(c, float) + self.rng.normal(0, sc, 3)
        return centre, np.asarray(r, float) * np.exp(self.rng.normal(0, sr, 3))

    def ell(self, c: Vec, r: Vec, yaw: float = 0.0) -> Shape:
        ext = np.full(3, np.max(r)) if yaw else np.asarray(r, float)
        v = self.view(np.asarray(c) - ext, np.asarray(c) + ext)
        return None if v is None else (v, ellipsoid_q(v.p, c, r, yaw))

    def tube(self, points: Sequence[Vec], radii: Sequence[float], margin: float = 0.0,
             v: View | None = None) -> Shape:
        """Signed distance to a chain of tapered capsules (in ``v`` or their own box)."""
        pts = np.asarray(points, float)
        pad = max(radii) + margin
        v = v or self.view(pts.min(axis=0) - pad, pts.max(axis=0) + pad)
        if v is None:
            return None
        sd = np.full(v.x.shape, 100.0, dtype=F32)
        for i in range(len(pts) - 1):
            a, b = pts[i], pts[i + 1]
            pad = max(radii[i], radii[i + 1]) + margin
            sub = self.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
            if sub is None:
                continue
            loc = [slice(max(s.start, o.start) - o.start,
                         max(s.start, o.start, min(s.stop, o.stop)) - o.start)
                   for s, o in zip(sub, v.index, strict=True)]
            ix = (loc[0], loc[1], loc[2])
            seg = segment_sd((v.x[ix], v.y[ix], v.z[ix]), a, b, radii[i], radii[i + 1])
            np.minimum(sd[ix], seg, out=sd[ix])
        return v, sd

    def paint(self, v: View, mask: Array, label: int, value: npt.ArrayLike = 0.0) -> None:
        np.copyto(v.lab, label, where=mask)
        np.copyto(v.add, value, where=mask)

    def put(self, shape: Shape, inside: float, label: int, allowed: Array,
            value: npt.ArrayLike = 0.0) -> None:
        """Paint ``label`` where the shape's field is below ``inside`` and the label allows."""
        if shape is not None:
            v, q = shape
            self.paint(v, (q < inside) & allowed[v.lab], label, value)

    def midline_distance(self, v: View) -> Array:
        """Signed distance (mm, + to the left) from the slightly curved midsagittal plane."""
        m0, m1, m2 = self.midline
        t = v.y * F32(1 / 80)
        return v.x - (m0 + m1 * t + m2 * t * t)

    def tentorium_z(self, x: Array, y: Array) -> Array:
        z0, ky, kx = self.tent
        kxx = F32(kx) * (1 - F32(0.5) * np.clip((y - 30) * F32(1 / 50), 0, 1))
        out = F32(z0) - F32(ky) * np.maximum(y - 28, 0)
        out -= kxx * x * x
        return np.asarray(out)

    def ridge_y(self, x: Array) -> Array:
        """Petrous ridge / dorsum sellae: the front of the posterior fossa."""
        theta, apex = self.petrous
        ax = np.abs(x)
        return np.asarray(np.where(ax > 16, apex + F32(np.tan(theta)) * (ax - 16),
                                   apex - 0.7 * (16 - ax)))

    def supratentorial(self, v: View) -> Array:
        return (v.z > self.tentorium_z(v.x, v.y) + 1) | (v.y < self.ridge_y(v.x))

    # -- rendering -------------------------------------------------------------------------------

    def render(self) -> None:
        """Fill ``lab``, ``add`` and ``sdc`` with the whole head."""
        self._shell()
        cerebrum(self)
        posterior_fossa(self)
        skull_base(self)

    def _face_sd(self, x: Array, y: Array, z: Array) -> Array:
        """Signed distance (approx.) to the skin of the face, nose and eyelids."""
        iz = ((z - F32(FACE_Z0)) * F32(1 / FACE_STEP)).astype(np.int32)
        np.clip(iz, 0, len(self.face_lut[0]) - 1, out=iz)
        yf, k, w, ridge = (np.take(t, iz) for t in self.face_lut)
        sd = yf + k * x * x - y
        np.maximum(sd, np.abs(x) - w + F32(0.004) * (y + 15) ** 2, out=sd)
        np.maximum(sd, z + 22, out=sd)
        np.maximum(sd, -104 - z, out=sd)
        np.maximum(sd, y + 15, out=sd)
        nose = ridge + 2.1 * np.abs(x) - y
        np.maximum(nose, z + 26, out=nose)
        np.maximum(nose, -76 - z, out=nose)
        np.maximum(nose, y + 82, out=nose)
        np.minimum(sd, nose, out=sd)
        for c in self.globes:  # eyelids over the globes
            lid = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - (c[3] + 2.2)
            np.minimum(sd, lid, out=sd)
        return np.asarray(sd)

    def _face_union(self, x: Array, y: Array, z: Array, skin: Array) -> None:
        """Merge the face into the calvarial skin distance (in place; rows in front only)."""
        if float(z.min()) >= -15:
            return
        rows = np.nonzero(y.min(axis=(0, 2)) < -13)[0]
        if rows.size:
            part = (slice(None), slice(int(rows[0]), int(rows[-1]) + 1))
            skin[part] = smooth_min(skin[part], self._face_sd(x[part], y[part], z[part]), 8.0)

    def _shell(self) -> None:
        """Scalp, skull, face envelope, cortex and white matter, in cropped chunks of planes."""
        step = 4
        x, y, z = (a[:, ::step, ::step] for a in (self.x, self.y, self.z))
        dx, dy, dz = x - CENTRE[0], y - CENTRE[1], z - CENTRE[2]
        idx = octa_index(dx, dy, dz)
        skin = np.sqrt(dx * dx + dy * dy + dz * dz)
        for table in self.dirtab[:3]:
            skin -= np.take(table, idx)
        self._face_union(x, y, z, skin)
        coarse = skin < 8
        planes, rows, cols = self.lab.shape
        for k0 in range(0, planes, 6):
            hit = coarse[k0:k0 + 6]
            if not hit.any():
                continue
            rr = np.nonzero(hit.any(axis=(0, 2)))[0]
            cc = np.nonzero(hit.any(axis=(0, 1)))[0]
            self._shell_chunk((slice(k0, k0 + 6),
                               slice(max(0, (rr[0] - 1) * step), min(rows, (rr[-1] + 2) * step)),
                               slice(max(0, (cc[0] - 1) * step), min(cols, (cc[-1] + 2) * step))))

    def _shell_chunk(self, idx: tuple[slice, slice, slice]) -> None:
        x, y, z = self.x[idx], self.y[idx], self.z[idx]
        lab, add = self.lab[idx], self.add[idx]
        dx, dy, dz = x - CENTRE[0], y - CENTRE[1], z - CENTRE[2]
        r = np.sqrt(dx * dx + dy * dy + dz * dz)
        di = octa_index(dx, dy, dz)
        radius, thick, scalp, fatw, csfw, sdist, sdep, dip, sdist2, sdep2 = (
            np.take(t, di) for t in self.dirtab)
        fl, tb, dens = (np.take(t, self.floor_index(x, y)) for t in self.floortab)
        sd_r = r - radius
        fl -= z  # > 0 below the skull-base floor
        sdc = np.maximum(sd_r, fl)
        radial = sd_r >= fl
        np.copyto(tb, thick, where=radial)
        np.copyto(dens, F32(1), where=radial)
        skin = sd_r - thick
        skin -= scalp
        self._face_union(x, y, z, skin)
        lab.fill(MUSCLE)
        np.copyto(lab, FAT, where=skin > -1.4 - fatw)
        np.copyto(lab, SKIN, where=skin > -1.4)
        np.copyto(lab, AIR, where=skin > 0)
        # cortex: CSF over the brain and in V-shaped sulci, a gray ribbon, white matter inside
        db = -sdc - csfw
        g, sw = F32(self.cortex), F32(self.sulcus_w)
        gray, csf = db < g, db < 0
        for sulcus, dep, width in ((sdist, sdep, sw), (sdist2, sdep2, sw * F32(0.7))):
            gap = sulcus * r  # tangential distance to the sulcus centre
            gap -= width * (F32(1.7) - F32(1.4) * np.clip(db / dep, 0, 1))
            csf |= (gap < 0) & (db < dep)
            np.maximum(gap, 0, out=gap)
            gap *= gap
            over = np.maximum(db - dep, 0)
            over *= over
            gap += over
            gray |= gap < g * g
        cav = sdc < 0
        np.copyto(lab, WHITE, where=cav)
        np.copyto(lab, GRAY, where=cav & gray)
        np.copyto(lab, CSF, where=cav & csf)
        # skull: cortical tables around diploe, partial volume at both surfaces
        px = F32(self.pixel)
        frac = np.clip(sdc / px + F32(0.5), 0, 1)
        frac *= np.clip((tb - sdc) / px + F32(0.5), 0, 1)
        bone = (frac > 0.02) & (skin < 0) & (fl < np.maximum(tb, F32(1)))
        if bone.any():
            cort = dens * F32(self.cortical_hu)
            m = np.clip(np.minimum(sdc - F32(1.3), tb - F32(1.7) - sdc), 0, 1)
            value = cort + (dip - cort) * m
            other = np.where(sdc < tb * F32(0.5), self.lut[CSF], self.lut[MUSCLE])
            value -= other
            value *= frac
            value += other
            np.copyto(lab, BONE, where=bone)
            np.copyto(add, value, where=bone)
        self.sdc[idx] = sdc


# --- regions: cerebrum, posterior fossa, skull base and face -----------------------------------


def cerebrum(h: Head) -> None:
    """Interhemispheric and Sylvian fissures, deep nuclei, ventricles, midbrain and cisterns."""
    rng, a, g = h.rng, h.atrophy, F32(h.cortex)
    h.midline = (rng.normal(0, 0.8), rng.normal(0, 1.2), rng.normal(0, 1.0))
    v = h.view((-14, -115, -50), (14, 112, 105))
    if v is not None:  # fissure with the falx (partial volume) and the superior sagittal sinus
        d = np.abs(h.midline_distance(v))
        ok = CORTEX[v.lab] & (ellipsoid_q(v.p, (0, 0, -5), (1e9, 42, 27)) >= 1) & (v.sdc < 0)
        wf = F32(0.6 + 1.4 * a + rng.uniform(0, 0.5))
        np.copyto(v.lab, GRAY, where=ok & (d < wf + g) & (v.lab == WHITE))
        np.copyto(v.lab, CSF, where=ok & (d < wf))
        hw = F32(max(0.6, 0.75 * h.pixel))
        falx = ok & (ellipsoid_q(v.p, (0, 0, -5), (1e9, 50, 37)) > 1) & (d < hw)
        np.copyto(v.add, np.clip(1 - d / hw, 0, 1) * F32(
            (h.lut[DURA] - h.lut[CSF]) * 0.8 / hw), where=falx)
        w = 2.2 + 3.0 * np.clip((v.y + 60) / 140, 0, 1)
        depth = -v.sdc
        sss = (v.sdc < 0) & (depth < 2.2 * w) & (d < w * (1 - depth / (2.2 * w))) & (
            v.y > -85) & (v.z > h.tentorium_z(v.x, v.y) + 2)
        h.paint(v, sss, VSINUS)
    for side in (1, -1):
        _sylvian(h, side)
    _deep(h)
    _midbrain(h)


def _sylvian(h: Head, side: int) -> None:
    """Insular cistern and the oblique Sylvian stem, lined with cortex, plus the vallecula."""
    rng, a, g = h.rng, h.atrophy, F32(h.cortex)
    xi = 36.0 + rng.normal(0, 1.5)
    ws = F32(0.6 + 1.8 * a + rng.uniform(0, 0.6))
    lo, hi = sorted((side * 24.0, side * 80.0))
    v = h.view((lo, -52, -32), (hi, 36, 28))
    if v is None:
        return
    xs = v.x * F32(side)
    ok = CORTEX[v.lab] & (v.sdc < 0)
    ins = ((v.y + 4) / F32(22 + rng.normal(0, 2))) ** 2 + ((v.z - 3) / F32(15)) ** 2 < 1
    d = np.abs(xs - (xi + 0.05 * v.y - 0.006 * (v.y + 4) ** 2))
    d[~ins] = 99
    y0, k1, k2 = rng.normal(-10, 2), rng.uniform(0.6, 1.0), rng.uniform(0.25, 0.5)
    ph = rng.uniform(0, 6.3, 2)
    wav = F32(2.5) * np.sin(xs * F32(0.22) + F32(ph[0])) + F32(1.5) * np.sin(
        v.z * F32(0.3) + xs * F32(0.1) + F32(ph[1]))
    stem = np.abs(v.y - (y0 + k1 * v.z - k2 * (xs - xi)) - wav) * F32(0.85)
    stem[(xs < xi) | (v.z < -24) | (v.z > 16)] = 99
    np.minimum(d, stem, out=d)
    np.copyto(v.lab, GRAY, where=ok & (d < ws + g) & (v.lab == WHITE))
    np.copyto(v.lab, CSF, where=ok & (d < ws))
    h.mca[side] = [(side * 13.0, -14.0, -19.0), (side * 25.0, -13.0, -16.0),
                   (side * (xi + 1), -9.0, -12.0)]
    h.put(h.tube(h.mca[side], [2.5 + a, 3.0 + a, 2.5 + a]), 0, CSF,
          member((GRAY, WHITE, CSF, DEEP)))


VENTRICLE = ([(11, -32, 5, 2.5), (10, -22, 10, 5.5), (9, -8, 16, 5.0), (11, 8, 19, 5.0),
              (22, 27, 12, 7.0), (20, 44, 6, 4.0), (16, 56, 4, 1.5)],  # frontal … occipital
             [(22, 27, 12, 6.0), (31, 18, -4, 4.0), (33, 2, -16, 3.0), (31, -12, -22, 1.2)])
NUCLEI = (((24, -3, -1), (6.5, 16, 11), 0.12, 0.0),  # putamen
          ((18.5, -1, -2), (3.5, 8, 6), 0.1, -2.0),  # globus pallidus
          ((10.5, 12, 3), (8.5, 13, 9), 0.0, 0.0))  # thalamus


def _deep(h: Head) -> None:
    """Basal ganglia, thalami, lateral and third ventricles, choroid, periventricular WM."""
    rng, a = h.rng, h.atrophy
    vs = (0.72 + 0.95 * a**1.3) * np.exp(rng.normal(0, 0.13))  # ventricle size with age
    spread = 1 + 0.25 * (vs - 1)
    v = h.view((-50, -55, -40), (50, 76, 42))
    if v is None:
        return
    for side in (1, -1):
        for c, r, yaw, dhu in NUCLEI:
            cc, rr = h.jit((side * c[0] * spread, c[1], c[2]), r, 1.0, 0.06)
            h.put(h.ell(cc, rr, side * yaw), 1, DEEP, CORTEX, F32(dhu))
    sd = np.full(v.x.shape, 100.0, dtype=F32)
    for side in (1, -1):
        j = rng.normal(0, 1.0, (9, 3))
        rs = vs * np.exp(rng.normal(0, 0.1))
        horn = rng.uniform(0.6, 1.3)
        for k, chain in enumerate(VENTRICLE):
            pts = [(side * (p[0] * spread + j[i + 3 * k, 0]), p[1] + j[i + 3 * k, 1],
                    p[2] + j[i + 3 * k, 2]) for i, p in enumerate(chain)]
            rad = [p[3] * (rs * (horn if i == 5 else 1) if k == 0 else rs**1.4)
                   for i, p in enumerate(chain)]
            tube = h.tube(pts, rad, 10.0, v)
            if tube is not None:
                np.minimum(sd, tube[1], out=sd)
        h.atria.append(np.array([side * 23.0 * spread, 28.0, 11.0]))
    dmid = np.abs(h.midline_distance(v))
    brain = IS_BRAIN[v.lab] & (v.lab != VSINUS)
    h.paint(v, (sd < 0) & (dmid > F32(rng.uniform(0.7, 1.4))) & brain, VENT)
    w3 = (1.2 + 3.5 * a**1.5) * np.exp(rng.normal(0, 0.15))
    third = ((v.y - 2) / F32(15)) ** 2 + ((v.z + 4) / F32(11)) ** 2 < 1
    h.paint(v, third & (dmid < w3) & brain, VENT)
    for side in (1, -1):  # caudate heads indent the frontal horns
        cc, rr = h.jit((side * 14.5 * spread, -17, 8), (6, 9.5, 9), 1.0, 0.06)
        h.put(h.ell(cc, rr), 1, DEEP, member((VENT, WHITE, GRAY, CSF)))
    for atrium in h.atria:
        size = np.array([3.5, 5, 4]) * np.sqrt(vs)
        h.put(h.ell(atrium + rng.normal(0, 1, 3), size * np.exp(rng.normal(0, 0.1, 3))), 1,
              CHOROID, member((VENT,)))
    h.vent_sd = (v.index, sd)
    amp = max(0.0, a - 0.35) * rng.uniform(3, 10)  # age-related periventricular hypodensity
    if amp > 0.3:
        kv = rng.normal(0, 0.25, (2, 3))
        patch = np.sin(v.x * F32(kv[0, 0]) + v.y * F32(kv[0, 1]) + v.z * F32(kv[0, 2]))
        patch *= np.sin(v.x * F32(kv[1, 0]) + v.y * F32(kv[1, 1]) + v.z * F32(kv[1, 2]))
        pv = np.clip(1 - sd / F32(11), 0, 1) * F32(amp) * (0.6 + 0.6 * patch)
        np.subtract(v.add, pv, out=v.add, where=(v.lab == WHITE) & (sd > 0))


def _midbrain(h: Head) -> None:
    """Midbrain with perimesencephalic cisterns, suprasellar cistern, pineal, arteries."""
    rng, a = h.rng, h.atrophy
    cisterns = member((GRAY, WHITE, CSF, DEEP))
    grow = 2.0 + 2.5 * a
    parts = [(*h.jit(c, r, 0.7, 0.06), yaw) for c, r, yaw in (
        ((7, 4, -13), (6, 8.5, 9), 0.5), ((-7, 4, -13), (6, 8.5, 9), -0.5),
        ((0, 13, -12), (9.5, 7, 9), 0.0))]
    for c, r, yaw in parts:
        h.put(h.ell(c, r + grow, yaw), 1, CSF, cisterns)
    for c, r, yaw in parts:
        h.put(h.ell(c, r, yaw), 1, STEM, member((CSF,)))
    h.put(h.tube([(-20, -20, -16), (0, -13, -19), (20, -20, -16)], [2.5, 6.0, 2.5]), 0, CSF,
          cisterns)
    h.put(h.tube([(0, -13, -19), (0, -32, -17)], [4.0, 2.0]), 0, CSF, cisterns)
    for where, size, label, allowed in (((0, -1, -15), (3.0, 4, 5), CSF, member((STEM,))),
                                        ((0, 23, -6), (7, 5, 6), CSF, cisterns),
                                        ((0, 22, 1), (4, 5, 3.5), GLAND, IS_BRAIN)):
        cc, rr = h.jit(where, size, 0.7, 0.06)
        h.put(h.ell(cc, rr), 1, label, allowed)
    h.pineal = cc
    h.put(h.tube([(0, 16, -4), (0, 22, -26)], [1.0, 1.0]), 0, VENT, member((STEM,)))
    vessels: list[tuple[Sequence[Vec], list[float]]] = [([(0, -4, -50), (0, -4, -21)],
                                                         [1.7, 1.7])]
    for s in (1, -1):
        vessels += [
            (h.mca[s], [1.7, 1.5, 1.3]),
            ([(s * 13, -14, -19), (s * 2, -22, -16), (s * 1, -36, -4), (s * 1, -36, 16)],
             [1.4, 1.2, 1.1, 1.0]),
            ([(0, -4, -21), (s * 8, 0, -19), (s * 17, 11, -14), (s * 23, 26, -8)],
             [1.4, 1.3, 1.2, 1.1]),
            ([(s * 8, 14, -72), (s * 5, 4, -56), (0, -4, -50)], [1.6, 1.6, 1.6])]
    for pts, rad in vessels:
        h.put(h.tube(pts, [r * rng.uniform(0.85, 1.15) for r in rad]), 0, VESSEL,
              member((CSF,)))


def dura(h: Head, v: View, mask: Array, dist: Array, hw: float) -> None:
    """A thin dense dural sheet at distance ``dist`` (mm), as partial volume."""
    w = np.clip(1 - np.abs(dist) / F32(hw), 0, 1) * F32(min(1.0, 0.9 / hw))
    w *= h.lut[DURA] - h.lut[v.lab]
    np.add(v.add, w, out=v.add, where=mask & (np.abs(dist) < hw))


def posterior_fossa(h: Head) -> None:
    """Tentorium, cerebellum with folia, brainstem, fourth ventricle, posterior sinuses."""
    rng, a, g = h.rng, h.atrophy, F32(h.cortex)
    v = h.view((-78, -20, -90), (78, 108, 16))
    if v is None:
        return
    zt = h.tentorium_z(v.x, v.y)
    inc = (v.x / F32(19)) ** 2 + ((v.y - 6) / F32(28)) ** 2 < 1  # tentorial incisura
    cav = v.sdc < 0
    post = (v.y > h.ridge_y(v.x)) & cav
    dz = v.z - zt
    above = post & (dz >= 0) & ~inc & (v.lab == WHITE)
    np.copyto(v.lab, GRAY, where=above & (dz < 0.2 + g))
    np.copyto(v.lab, CSF, where=above & (dz < 0.2))
    below = post & (dz < 0) & (~inc | (v.z < -25)) & (v.lab != STEM)
    h.paint(v, below, CSF)
    depth = -v.sdc
    front = 23 - 14 * (1 - np.exp(-((v.x / F32(16)) ** 2)))
    h.paint(v, below & (depth > 0.8 + 2.0 * a) & (dz < -0.4 - 0.8 * a) & (v.y > front)
            & (v.z > -58), CEREB)
    _folia(h)
    for side in (1, -1):  # central white matter of the hemispheres
        e = h.ell(*h.jit((side * 17, 42, -34), (9, 12, 8)))
        if e is not None:
            dw = F32(0.35 * (h.lut[CEREB] - h.lut[WHITE]))
            np.subtract(e[0].add, dw, out=e[0].add, where=(e[1] < 1) & (e[0].lab == CEREB))
    cm = rng.uniform(0.4, 1.4) * (1 + 0.4 * a)
    for c, r, label, allowed in (
            ((0, 72, -48), (8 * cm, 14 * cm, 10 * cm), CSF, member((CEREB,))),  # cisterna magna
            ((0, 10, -36), (15, 12, 13), STEM, member((CSF, CEREB))),  # pons
            ((0, 25, -36), (7 * (0.8 + 0.4 * a), 4, 8), VENT, member((STEM, CEREB, CSF)))):
        h.put(h.ell(*h.jit(c, r, 0.8, 0.06)), 1, label, allowed)
    h.put(h.tube([(0, 13, -46), (0, 21, -62), (0, 25, -90)], [9.0, 8.0, 7.0], v=v), 0, STEM,
          member((CSF, CEREB)))
    dura(h, v, post & ~inc & (v.lab != VSINUS), dz, max(0.7, 0.45 * h.dz))
    ts = cav & (depth < 7) & (np.abs(dz + F32(2.5)) < 3.6 * (1 - depth / 7)) & (v.y > 38)
    ysig = 42 + (v.z + 28) * F32(0.65)
    sig = cav & (np.abs(v.x) > 30) & (depth < 5.5) & (dz < 0) & (v.z > -62) & (
        np.abs(v.y - ysig) < 4.5 * (1 - depth / 5.5))
    h.paint(v, ts | sig, VSINUS)  # transverse and sigmoid sinuses
    z30, z82 = (float(h.tentorium_z(np.zeros(1, F32), np.full(1, y, F32))[0]) for y in (30, 82))
    for pts, rad in (([(0, 27, z30 + 2), (0, 82, z82)], [2.6, 2.6]),  # straight sinus
                     ([(0, 84, z82), (0, 86, z82)], [6.0, 6.0]),  # torcula
                     ([(0, 25, 2), (0, 29, 2)], [2.5, 2.5])):  # vein of Galen
        tube = h.tube(pts, rad, v=v)
        if tube is not None:
            h.paint(v, (tube[1] < 0) & cav & (depth > 0.5), VSINUS)


def _folia(h: Head) -> None:
    """Thin CSF shells roughly parallel to the cerebellar surface."""
    rng, a = h.rng, h.atrophy
    v = h.view((-64, 4, -68), (64, 102, 2))
    if v is None:
        return
    lam = F32(rng.uniform(2.8, 4.0))
    cx = np.where(v.x > 0, F32(22), F32(-22))
    k = rng.uniform(0, 6.3, 3)
    rho = np.sqrt((v.x - cx) ** 2 + ((v.y - 38) * F32(0.9)) ** 2 + ((v.z + 32) * F32(1.3)) ** 2)
    rho += F32(1.5) * np.sin(v.x * F32(0.21) + F32(k[0])) * np.sin(v.z * F32(0.17) + F32(k[1]))
    rho += F32(1.0) * np.sin(v.y * F32(0.23) + F32(k[2]))
    tri = np.abs(rho / lam - np.floor(rho / lam) - F32(0.5)) * lam
    fol = np.clip(1 - tri / F32(0.6), 0, 1) * np.clip(1 + v.sdc / F32(18), 0, 1)
    fol *= F32((h.lut[CEREB] - h.lut[CSF]) * (0.15 + 0.25 * a))
    np.subtract(v.add, fol, out=v.add, where=v.lab == CEREB)


def _honeycomb(h: Head, v: View, period: float, wall: float) -> Array:
    """Fraction of thin bony septum at each voxel of air cells of size ``period``."""
    k = h.rng.uniform(0, 6.3, 3)
    p = F32(np.pi / period)
    m = np.abs(np.sin((v.x + F32(1.3) * np.sin(v.y * F32(0.31) + F32(k[0]))) * p))
    for one, other, kk, f in ((v.y, v.z, k[1], 0.27), (v.z, v.x, k[2], 0.29)):
        np.minimum(m, np.abs(np.sin((one + F32(1.3) * np.sin(other * F32(f) + F32(kk))) * p)),
                   out=m)
    return np.asarray(np.clip(1 - m / F32(np.pi * wall / period), 0, 1))


def skull_base(h: Head) -> None:
    """Paranasal sinuses, nasal cavity, orbits, temporal bones, zygoma, mandible, C1/C2."""
    rng = h.rng
    soft, tissue = member((MUSCLE, FAT)), member((MUSCLE, FAT, BONE, MUCOSA))
    dense = rng.uniform(0.9, 1.1)

    def bone(hu: float) -> F32:
        return F32(hu * dense)

    for s in (1, -1):  # parapharyngeal fat, maxillary sinus (sometimes mucosal thickening)
        h.put(h.ell(*h.jit((s * 20, -22, -70), (5, 10, 12))), 1, FAT, soft)
        c, r = h.jit((s * 27, -60, -70), (13, 16, 17), 2.0, 0.1)
        h.put(h.ell(c, r * 1.12), 1, BONE, tissue, bone(700))
        h.put(h.ell(c, r), 1, SINUSAIR, tissue)
        if rng.random() < 0.3:
            h.put(h.ell(c, r), (1 - rng.uniform(0.1, 0.35)) ** 2, SINUSAIR, member((SINUSAIR,)))
            h.put(h.ell(c, r), 1, MUCOSA, member((SINUSAIR,)))
            h.put(h.ell(c, r * (1 - rng.uniform(0.1, 0.35))), 1, SINUSAIR, member((MUCOSA,)))
    v = h.view((-16, -96, -88), (16, -36, -38))
    if v is not None:  # nasal cavity with a (deviated) septum
        wn = 5 + 6 * np.clip((-42 - v.z) / F32(25), 0, 1)
        q = (v.x / wn) ** 4 + ((v.y + 66) / F32(29)) ** 4 + ((v.z + 63) / F32(24)) ** 4
        h.paint(v, (q < 1.5) & tissue[v.lab], BONE, bone(450))
        h.paint(v, (q < 1) & NOT_BRAIN[v.lab], SINUSAIR)
        sept = np.abs(v.x - F32(rng.normal(0, 2.0)) * np.sin((v.y + 40) * F32(0.06))) < 1.1
        h.paint(v, (q < 1) & sept, BONE, bone(380))
    for s in (1, -1):  # inferior and middle turbinates
        for where, size in (((s * 8.5, -62, -75), (3.5, 22, 4.5)),
                            ((s * 7.5, -58, -59), (2.5, 18, 4.5))):
            h.put(h.ell(*h.jit(where, size, 0.8)), 1, MUCOSA, member((SINUSAIR,)))
    h.put(h.ell(*h.jit((0, -30, -73), (12, 9, 10))), 1, SINUSAIR, tissue)  # nasopharynx
    for s in (1, -1):  # ethmoid air cells
        e = h.ell(*h.jit((s * 8.5, -60, -40), (6, 21, 14), 0.7, 0.05))
        if e is not None:
            frac = _honeycomb(h, e[0], rng.uniform(3.5, 5.5), 0.45)
            h.paint(e[0], (e[1] < 1) & NOT_BRAIN[e[0].lab], SINUSAIR, frac * F32(bone(1200)))
    e = h.ell(*h.jit((0, -22, -41), (14, 11, 9), 1.5, 0.12))
    if e is not None:  # sphenoid sinus with an off-midline septum
        v, q = e
        h.paint(v, (q < 1) & tissue[v.lab], SINUSAIR)
        sept = np.abs(v.x - F32(rng.normal(0, 3))) < 0.8
        h.paint(v, (q < 1) & sept & (v.lab == SINUSAIR), BONE, bone(600))
    for s in (1, -1):
        _orbit(h, s, bone(650))
    if h.frontal_sinus > 0:  # frontal sinus inside the thick glabellar bone
        u = np.array([0, -0.97, -0.24])
        u /= np.linalg.norm(u)
        uu = np.asarray(u, F32)[None]
        cell = octa_index(uu[:, 0], uu[:, 1], uu[:, 2])[0]
        fc = CENTRE + float(h.dirtab[0][cell] + 0.5 * h.dirtab[1][cell]) * u
        fs = h.frontal_sinus
        for s in (1, -1):
            c, r = h.jit((fc[0] + s * (6 + 3 * fs), fc[1], fc[2] + 4 * fs),
                         (4 + 6 * fs, 3.5 + 1.5 * fs, 4 + 8 * fs), 1.0, 0.15)
            h.put(h.ell(c, r), 1, SINUSAIR, member((BONE,)))
    for s in (1, -1):
        _temporal_bone(h, s, dense)
    v = h.view((-34, -96, -112), (34, -36, -82))
    if v is not None:  # hard palate and the upper dental arch
        pal = (np.abs(v.x) < 20) & (v.y > -88) & (np.abs(v.z + 87) < 2.0)
        h.paint(v, pal & NOT_BRAIN[v.lab], BONE, bone(900))
        arch = (np.abs(v.y - (-84 + 0.02 * v.x * v.x)) < 5) & (np.abs(v.x) < 30) & (v.z < -90)
        h.paint(v, arch & NOT_BRAIN[v.lab], BONE, bone(2300))
    for where, size, hu in (((0, -2, -70), (9, 4, 5), 900), ((19, 13, -71), (8, 11, 7), 700),
                            ((-19, 13, -71), (8, 11, 7), 700), ((17, 17, -63), (7, 10, 5), 950),
                            ((-17, 17, -63), (7, 10, 5), 950)):  # atlas, occipital condyles
        h.put(h.ell(*h.jit(where, size, 0.7, 0.05)), 1, BONE, soft, bone(hu))
    for pts, rad in (([(0, 8, -66), (0, 9, -120)], [5.5, 5.5]),  # dens
                     ([(17, 34, -69), (8, 49, -68), (-8, 49, -68), (-17, 34, -69)],
                      [3.5, 3.5, 3.5, 3.5])):  # posterior arch of the atlas
        h.put(h.tube(pts, rad), 0, BONE, soft, bone(850))


def _orbit(h: Head, s: int, wall_hu: npt.ArrayLike) -> None:
    """Bony orbit (a cone, taller than wide), fat, extraocular muscles, optic nerve, globe."""
    rng = h.rng
    g0, gr = h.globes[0 if s > 0 else 1][:3], float(h.globes[0 if s > 0 else 1][3])
    ap = np.array([s * 14.0, -36.0, -36.0]) + rng.normal(0, 1, 3)
    base = np.array([g0[0], -92.0, g0[2] + 2])
    v = h.view(np.minimum(ap, base) - 28, np.maximum(ap, base) + 28)
    if v is not None:
        zc = F32(0.5 * (ap[2] + base[2]))
        sd = segment_sd((v.x, v.y, (v.z - zc) * F32(0.72) + zc), ap, base, 3.0, 18.0)
        h.paint(v, (sd < 1.7) & (v.y > -80) & NOT_BRAIN[v.lab], BONE, wall_hu)
        h.paint(v, (sd < 0) & NOT_BRAIN[v.lab], ORBFAT)
    for end, rad in (((s * 22, -68, -39), 2.3), ((s * 44, -68, -38), 2.2),
                     ((s * 33, -66, -27), 2.0), ((s * 33, -66, -49), 2.0),
                     ((g0[0], -60, g0[2]), 2.2)):
        start = ap + np.array([s * (2 if rad < 2.2 else 4), 0, 0])
        h.put(h.tube([start, end], [rad, rad]), 0, NERVE, member((ORBFAT,)))
    h.put(h.ell(g0, np.full(3, gr)), 1, NERVE, NOT_BRAIN)  # sclera
    h.put(h.ell(g0, np.full(3, gr - 0.9)), 1, GLOBE, NOT_BRAIN)
    h.put(h.ell((g0[0], g0[1] - gr + 2.4, g0[2]), (4.3, 1.8, 4.3)), 1, LENS, NOT_BRAIN)


def _temporal_bone(h: Head, s: int, dense: float) -> None:
    """Petrous pyramid, IAC, inner and middle ear, EAC, mastoid cells, zygoma, mandible."""
    rng = h.rng
    theta, apex = h.petrous
    tan = float(np.tan(theta))

    def at(dx: float, dy: float, z: float) -> tuple[float, float, float]:
        return (s * (16 + dx), apex + tan * dx + dy, z)

    h.put(h.tube([at(0, 2, -34), at(40, 3, -38)], [7.0, 10.0]), 0, BONE,
          member((BONE, MUSCLE, FAT)), F32(rng.uniform(1700, 2100) * dense))
    h.put(h.tube([at(4, 8, -34), at(15, 4, -35)], [2.2, 2.0]), 0, CSF, member((BONE,)))
    h.put(h.ell(at(20, 2, -36), (3, 3, 3)), 1, NERVE, member((BONE,)))
    h.put(h.ell(at(27, -4, -38), (3, 5, 6)), 1, SINUSAIR, member((BONE, MUSCLE)))
    ear_y = at(28, -12, 0)[1]
    h.put(h.tube([(s * 44, ear_y, -40), (s * 90, ear_y + 2, -42)], [3.5, 4.0]), 0, SINUSAIR,
          member((BONE, MUSCLE, FAT, SKIN)))
    pn = rng.uniform(0.5, 1.25)  # mastoid pneumatisation
    c, r = h.jit((s * 50, ear_y + 20, -47), (11 * pn, 13 * pn, 14 * pn), 1.5, 0.08)
    h.put(h.ell(c, r * 1.25), 1, BONE, member((MUSCLE, FAT, BONE)), F32(1100 * dense))
    e = h.ell(c, r)
    if e is not None:
        frac = _honeycomb(h, e[0], rng.uniform(3.0, 5.0), 0.5)
        h.paint(e[0], (e[1] < 1) & (e[0].lab == BONE), SINUSAIR, frac * F32(1300 * dense))
    for pts, rad, hu in (
            ([(s * 42, -72, -47), (s * 60, -50, -46), (s * 65, -20, -46),
              (s * 60, ear_y - 6, -46)], [3.5, 3.0, 3.0, 3.0], 1100),  # zygomatic arch
            ([(s * 44, -72, -47), (s * 47, -72, -24)], [4.0, 3.5], 1000),  # orbital rim
            ([(s * 51, ear_y - 10, -52), (s * 50, ear_y - 14, -62),
              (s * 48, ear_y - 20, -110)], [5.5, 4.0, 4.0], 950)):  # mandibular condyle
        h.put(h.tube(pts, rad), 0, BONE, member((MUSCLE, FAT)), F32(hu * dense))
