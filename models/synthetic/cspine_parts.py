"""Geometry toolkit of the C-spine phantom: canvas, signed-distance bones, breaks, tubes.

Everything is laid out in a *template* frame: anatomy-local millimetres (origin at the centre
of the C4 body, +x left, +y posterior, +z superior) divided by the patient size.  A bone is a
union of signed-distance parts (negative inside) in its own frame; cortex and marrow follow
from the distance and edges are anti-aliased over one pixel.  A :class:`Break` warps the
coordinates of one fragment (shear step-off, wedge compression) and cuts a lucent gap without
cortical margins, unlike the normal lucencies (joints, vascular channels), which are carved
out of the bone and therefore corticated.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.synthetic.grid import Grid, local_coords, rotation
from models.synthetic.spec import CaseSpec

Array = np.ndarray
F32 = np.float32
ZT0, ZSTEP, NZT = -160.0, 0.5, 641  # z look-up table of the tubes (template mm)
TILE, TILE_MM = 32, 0.55  # periodic marrow texture: cells per side, mm per cell
Slices = tuple[slice, slice, slice]
Vec = Sequence[float] | Array
Args = tuple[Any, ...]
# a gap voxel is labelled where it lowered the bone by at least this much (noise SD is 5–40 HU)
GAP_LABEL_DROP_HU = 100.0
# skin outline of the neck: z, centre y, half width, half depth
OUTLINE = ((-160, 10, 140, 90), (-110, 10, 105, 72), (-75, 10, 86, 66), (-55, 10, 66, 63),
           (-30, 10, 57, 61), (0, 10, 55, 60), (18, 4, 56, 66), (34, -4, 60, 77),
           (55, -8, 66, 84), (110, -8, 70, 88), (140, 0, 55, 70), (158, 0, 8, 10))


def axes(tilt: float, roll: float = 0.0, yaw: float = 0.0) -> Array:
    """Frame axes (columns u, v, w) tilted by ``tilt`` rad: +w leans posterior for tilt > 0."""
    ct, st, cr, sr, cy, sy = (np.cos(tilt), np.sin(tilt), np.cos(roll), np.sin(roll),
                              np.cos(yaw), np.sin(yaw))
    rx = np.array([[1, 0, 0], [0, ct, st], [0, -st, ct]])
    ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=float)


@dataclass
class Frame:
    """A local frame: origin ``c`` and axes (columns of ``r``), in template coordinates."""

    c: Array
    r: Array

    def at(self, p: Vec) -> Array:
        """Template coordinates of frame point(s) ``p``."""
        return np.asarray(self.c + np.asarray(p, dtype=float) @ self.r.T)

    def turned(self, tilt: float, pivot: Vec = (0.0, 0.0, 0.0)) -> Frame:
        """The frame tilted about its u axis through frame point ``pivot``."""
        r = self.r @ axes(tilt)
        origin = self.at(pivot) - r @ np.asarray(pivot, dtype=float)
        return Frame(origin, r)


def corners(lo: Vec, hi: Vec) -> Array:
    lo_, hi_ = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    sel = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    return np.asarray(lo_ + sel * (hi_ - lo_))


class Canvas:
    """Template coordinates of every voxel and the volumes being painted."""

    def __init__(self, grid: Grid, spec: CaseSpec) -> None:
        self.grid = grid
        size = float(spec.patient.size)
        x, y, z = local_coords(grid, spec.pose)
        for arr in (x, y, z):
            np.multiply(arr, F32(1.0 / size), out=arr)
        self.x, self.y, self.z = x, y, z
        self.to_patient = rotation(spec.pose).astype(float) * size
        self.shift = np.asarray(spec.pose.shift_mm, dtype=float)
        self.pix = grid.pixel_mm / size  # template mm per pixel
        self.hu = np.full(grid.shape, -1000.0, dtype=F32)
        self.body = np.zeros(grid.shape, dtype=bool)
        self.lesion = np.zeros(grid.shape, dtype=np.uint8)
        self.metal = np.zeros(grid.shape, dtype=bool)
        iz = z * F32(1.0 / ZSTEP)
        iz += F32(-ZT0 / ZSTEP + 0.5)
        np.clip(iz, 0, NZT - 1, out=iz)
        self.iz = iz.astype(np.int32)

    def patient(self, points: Vec) -> Array:
        return np.asarray(np.asarray(points, dtype=float) @ self.to_patient.T + self.shift)

    def box(self, points: Vec) -> Slices | None:
        """Index box of the grid that holds all template ``points`` (None if outside)."""
        q = self.patient(np.atleast_2d(np.asarray(points, dtype=float)))
        lo, hi = q.min(axis=0), q.max(axis=0)
        out = []
        for axis, coords in ((2, self.grid.z), (1, self.grid.y), (0, self.grid.x)):
            i0 = max(int(np.searchsorted(coords, lo[axis])) - 1, 0)
            i1 = min(int(np.searchsorted(coords, hi[axis], side="right")) + 1, len(coords))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def xyz(self, sl: Slices) -> tuple[Array, Array, Array]:
        return self.x[sl], self.y[sl], self.z[sl]

    def local(self, frame: Frame, sl: Slices) -> tuple[Array, Array, Array]:
        """Frame coordinates (u, v, w) of the voxels of box ``sl``."""
        dx = self.x[sl] - F32(frame.c[0])
        dy = self.y[sl] - F32(frame.c[1])
        dz = self.z[sl] - F32(frame.c[2])
        r = frame.r.astype(F32)
        out = []
        for i in range(3):
            a = dx * r[0, i]
            a += dy * r[1, i]
            a += dz * r[2, i]
            out.append(a)
        return out[0], out[1], out[2]


def inner(outer: Slices, part: Slices) -> Slices | None:
    """``part`` relative to ``outer`` (both absolute), clipped; None when they do not meet."""
    out = []
    for o, p in zip(outer, part, strict=True):
        start, stop = max(o.start, p.start) - o.start, min(o.stop, p.stop) - o.start
        if stop <= start:
            return None
        out.append(slice(start, stop))
    return out[0], out[1], out[2]


# --- signed distances (template mm, negative inside) ----------------------------------------


def smoothstep(v: Array, e0: float, e1: float) -> Array:
    t = np.clip((v - F32(e0)) * F32(1.0 / (e1 - e0)), 0, 1)
    return np.asarray(t * t * (3 - 2 * t), dtype=F32)


def smin(a: Array, b: Array, k: float) -> Array:
    """Smooth union (fillet of radius ~k)."""
    h = np.clip(F32(0.5) + F32(0.5 / k) * (b - a), 0, 1)
    out = b + (a - b) * h
    out -= F32(k) * h * (1 - h)
    return np.asarray(out, dtype=F32)


def sd_box(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Rounded box: centre, half sizes, corner radius."""
    c, half, r = a
    q = [np.abs(x - F32(c[i])) - F32(half[i] - r) for i, x in enumerate((u, v, w))]
    inside = np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0)
    for x in q:
        np.maximum(x, 0, out=x)
    out = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
    out += inside - F32(r)
    return np.asarray(out, dtype=F32)


def sd_ell(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Ellipsoid (approximate distance): centre, radii."""
    c, radii = a
    k = ((u - F32(c[0])) * F32(1 / radii[0])) ** 2
    k += ((v - F32(c[1])) * F32(1 / radii[1])) ** 2
    k += ((w - F32(c[2])) * F32(1 / radii[2])) ** 2
    out = np.sqrt(k)
    out -= 1
    out *= F32(min(radii))
    return np.asarray(out, dtype=F32)


def sd_cap(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Capsule (p, q, r[, s]): ``s`` (≤ 1 per axis) stretches the cross-section by 1/s."""
    p0, p1, r = a[:3]
    s = a[3] if len(a) > 3 else (1.0, 1.0, 1.0)
    p = [(x - F32(p0[i])) * F32(s[i]) for i, x in enumerate((u, v, w))]
    ab = [(p1[i] - p0[i]) * s[i] for i in range(3)]
    length2 = max(sum(x * x for x in ab), 1e-6)
    t = (p[0] * F32(ab[0]) + p[1] * F32(ab[1]) + p[2] * F32(ab[2])) * F32(1 / length2)
    np.clip(t, 0, 1, out=t)
    d2 = (p[0] - t * F32(ab[0])) ** 2
    d2 += (p[1] - t * F32(ab[1])) ** 2
    d2 += (p[2] - t * F32(ab[2])) ** 2
    out = np.sqrt(d2)
    out -= F32(r)
    return np.asarray(out, dtype=F32)


@dataclass(frozen=True)
class BodyShape:
    """A vertebral body: half width/depth/height, corner radii and endplate shaping (mm)."""

    a: float
    b: float
    h: float
    ra: float = 4.5  # anterior corner radius (axial)
    rp: float = 2.5  # posterior corner radius
    unc: float = 3.0  # uncinate processes: rise of the lateral superior rim
    lip: float = 1.5  # anterior-inferior lip
    conc: float = 0.8  # endplate concavity
    waist: float = 0.8
    edge: float = 1.2  # rounding of the endplate rims


def sd_body(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Vertebral body (BodyShape): rounded section, waist, uncinate rims, lips, concavity."""
    g: BodyShape = a[0]
    au = np.abs(u)
    r2 = np.where(v < 0, F32(g.ra), F32(g.rp))
    qx = au - F32(g.a) + r2
    qy = np.abs(v) - F32(g.b) + r2
    d2 = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    d2 += np.minimum(np.maximum(qx, qy), 0) - r2
    d2 += F32(g.waist) * np.clip(1 - (w * F32(1 / g.h)) ** 2, 0, 1)
    rim = smoothstep(au, g.a - 4.5, g.a - 0.5) * smoothstep(v, -0.6 * g.b, 0.0)
    bowl = np.clip(1 - (u * F32(1 / g.a)) ** 2 - (v * F32(1 / g.b)) ** 2, 0, 1) * F32(g.conc)
    top = F32(g.h) + F32(g.unc) * rim - bowl
    bot = -F32(g.h) - F32(g.lip) * smoothstep(-v, g.b - 4.0, g.b) + F32(0.8 * g.unc) * rim
    bot += bowl
    dz = np.abs(w - (top + bot) * F32(0.5)) - (top - bot) * F32(0.5)
    e = F32(g.edge)
    d2 += e
    dz += e
    out = np.hypot(np.maximum(d2, 0), np.maximum(dz, 0))
    out += np.minimum(np.maximum(d2, dz), 0) - e
    return np.asarray(out, dtype=F32)


def sd_ring(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Atlas-like ring (vc, rx, anterior ry, posterior ry, half thickness, half height)."""
    vc, rx, rya, ryp, t, h = a
    dv = v - F32(vc)
    ry = np.where(dv < 0, F32(rya), F32(ryp))
    rho = np.sqrt((u * F32(1 / rx)) ** 2 + (dv / ry) ** 2) + F32(1e-4)
    dist = np.hypot(u, dv)
    radial = dist - dist / rho
    out = np.sqrt((radial * F32(1 / t)) ** 2 + (w * F32(1 / h)) ** 2)
    out -= 1
    out *= F32(min(t, h))
    return np.asarray(out, dtype=F32)


def sd_arch(u: Array, v: Array, w: Array, a: Args) -> Array:
    """U-shaped bar along v = v0 + k u² (v0, k, t, w0, w1, |u| max[, tooth period])."""
    v0, k, t, w0, w1, um = a[:6]
    slope = u * F32(2 * k)
    dn = np.abs(v - F32(v0) - F32(k) * u * u) / np.sqrt(1 + slope * slope) - F32(t)
    if len(a) > 6:  # teeth: gaps every ``period`` mm
        dn += F32(0.6 * t) * (1 - np.cos(u * F32(2 * np.pi / a[6]))) ** 2
    dz = np.abs(w - F32((w0 + w1) / 2)) - F32((w1 - w0) / 2)
    out = np.maximum(np.maximum(dn, dz), np.abs(u) - F32(um))
    return np.asarray(out, dtype=F32)


def sd_plate(u: Array, v: Array, w: Array, a: Args) -> Array:
    """Skull-base plate: surface w0 + slope·(v - knee)₊ + curv·u², thickness t, oval extent."""
    w0, knee, slope, curv, t, eu, ev, vc = a
    surf = F32(w0) + F32(slope) * np.maximum(v - F32(knee), 0) + F32(curv) * u * u
    out = (np.abs(w - surf) - F32(t / 2)) * F32(0.85)
    lateral = np.sqrt((u * F32(1 / eu)) ** 2 + ((v - F32(vc)) * F32(1 / ev)) ** 2) - 1
    lateral *= F32(min(eu, ev))
    np.maximum(out, lateral, out=out)
    return np.asarray(out, dtype=F32)


SDF: dict[str, Callable[[Array, Array, Array, Args], Array]] = {
    "box": sd_box, "ell": sd_ell, "cap": sd_cap, "body": sd_body, "ring": sd_ring,
    "arch": sd_arch, "plate": sd_plate}


def _extent(kind: str, a: Args) -> tuple[Array, Array]:
    """Bounding box of a part in its bone's frame."""
    if kind in ("box", "ell"):
        c, half = np.asarray(a[0], dtype=float), np.asarray(a[1], dtype=float)
        return c - half, c + half
    if kind == "cap":
        p, q = np.asarray(a[0], dtype=float), np.asarray(a[1], dtype=float)
        ext = a[2] / np.asarray(a[3] if len(a) > 3 else (1, 1, 1), dtype=float)
        return np.minimum(p, q) - ext, np.maximum(p, q) + ext
    if kind == "body":
        g = a[0]
        return np.array([-g.a, -g.b, -g.h - g.lip - 0.5]), np.array([g.a, g.b, g.h + g.unc + 0.5])
    if kind == "ring":
        vc, rx, rya, ryp, t, h = a
        return np.array([-rx - t, vc - rya - t, -h]), np.array([rx + t, vc + ryp + t, h])
    if kind == "arch":
        v0, k, t, w0, w1, um = a[:6]
        return (np.array([-um - t, v0 - 2 * t, w0]),
                np.array([um + t, v0 + k * um * um + 2 * t, w1]))
    w0, knee, slope, curv, t, eu, ev, vc = a  # plate
    top = w0 + t + slope * max(vc + ev - knee, 0) + curv * eu * eu
    return np.array([-eu, vc - ev, w0 - t]), np.array([eu, vc + ev, top])


@dataclass
class Part:
    """One signed-distance piece of a bone, in the bone's frame."""

    kind: str
    args: Args
    lo: Array
    hi: Array
    group: int = 0  # fragments: parts of a group move together under a break
    carve: bool = False  # subtract from its group (foramina, channels, air cells)
    fill: float | None = None  # HU put behind a carve
    rim: float = 1.0  # carve: > 1 thins the cortical rim around the hole
    add_hu: float = 0.0  # density part: raises the marrow HU inside instead of shaping
    cuts: tuple[tuple[Array, Array], ...] = ()  # keep n·(p - point) ≤ 0 (template coords)
    blend: float = 1.0  # smooth-union radius


def part(kind: str, *args: Any, **kw: Any) -> Part:
    """A part of ``kind`` (a key of :data:`SDF`) with its bounding box."""
    lo, hi = _extent(kind, args)
    return Part(kind, args, lo, hi, **kw)


@dataclass
class Break:
    """A fracture of one bone: lucent gap, fragment displacement or wedge compression."""

    label: int  # value written into the lesion mask
    group: int  # the gap only cuts the bone of this group
    moves: tuple[int, ...]  # groups whose coordinates the break warps
    p0: Array  # point on the fracture plane (frame coordinates)
    n: Array  # plane normal; the fragment on the + side moves
    width: float = 1.5
    hu: float = 40.0  # haematoma in the gap
    margin: float = 1.5  # label margin around a compressed body (a gap labels what it cut)
    shift: Array = field(default_factory=lambda: np.zeros(3))  # displacement (in the plane)
    reach: float = 1e6  # in-plane extent of the line from p0
    decay: float = 0.0  # > 0: displacement fades with distance from p0 (mm)
    waves: tuple[tuple[Array, float, float], ...] = ()  # (wave vector, amplitude, phase)
    wedge: tuple[float, float, BodyShape] | None = None  # (fraction, endplate dip, body)
    where: str = ""  # fractured part, for the label


def plane_distance(br: Break, u: Array, v: Array, w: Array) -> tuple[Array, Array]:
    """Wavy signed distance to the fracture plane, and the planar one."""
    du, dv, dw = u - F32(br.p0[0]), v - F32(br.p0[1]), w - F32(br.p0[2])
    flat = du * F32(br.n[0]) + dv * F32(br.n[1]) + dw * F32(br.n[2])
    s = flat.copy()
    for k, amp, phase in br.waves:
        s += F32(amp) * np.sin(du * F32(k[0]) + dv * F32(k[1]) + dw * F32(k[2]) + F32(phase))
    return s, flat


@dataclass
class Bone:
    """Parts in a frame plus the densities of cortex and marrow."""

    frame: Frame
    parts: list[Part]
    cortex_hu: float
    marrow_hu: float
    cortex_mm: float = 1.2
    texture_hu: float = 0.0
    metal: bool = False
    blend: float = 1.0  # smooth union between groups
    breaks: list[Break] = field(default_factory=list)


def _warp(br: Break, coords: dict[int, tuple[Array, Array, Array]], u: Array, v: Array,
          w: Array) -> Array:
    """Warp the coordinates of the moving groups in place of ``coords``; returns the plane."""
    s, _ = plane_distance(br, u, v, w)
    if br.wedge is not None:
        frac, dip, g = br.wedge
        ant = np.clip((F32(g.b) - v) * F32(0.5 / g.b), 0, 1)
        scale = 1 - F32(frac) * ant
        bowl = np.exp(-(u * u + (v + F32(0.15 * g.b)) ** 2) * F32(1 / (0.5 * g.a) ** 2))
        scale -= bowl * F32(dip / (2 * g.h))
        np.maximum(scale, F32(0.25), out=scale)
        for grp in br.moves:
            cu, cv_, cw = coords[grp]
            coords[grp] = (cu, cv_, F32(-g.h) + (cw + F32(g.h)) / scale)
        return s
    if not np.any(br.shift):
        return s
    fac = (s > 0).astype(F32)
    if br.decay > 0:
        r2 = (u - F32(br.p0[0])) ** 2 + (v - F32(br.p0[1])) ** 2 + (w - F32(br.p0[2])) ** 2
        fac *= np.exp(r2 * F32(-0.5 / br.decay**2))
    for grp in br.moves:
        cu, cv_, cw = coords[grp]
        coords[grp] = (cu - F32(br.shift[0]) * fac, cv_ - F32(br.shift[1]) * fac,
                       cw - F32(br.shift[2]) * fac)
    return s


def render_bone(cv: Canvas, bone: Bone, tile: Array) -> None:
    """Composite ``bone`` (and its breaks) onto the canvas."""
    geo = [p for p in bone.parts if p.add_hu == 0 and not p.carve]
    if not geo:
        return
    sl = cv.box(bone.frame.at(np.concatenate([corners(p.lo, p.hi) for p in geo])))
    if sl is None:
        return
    u, v, w = cv.local(bone.frame, sl)
    groups = sorted({p.group for p in bone.parts})
    coords = {g: (u, v, w) for g in groups}
    planes = [_warp(br, coords, u, v, w) for br in bone.breaks]
    dist = {g: np.full(u.shape, 50.0, dtype=F32) for g in groups}
    dense: Array | None = None
    x, y, z = cv.xyz(sl)
    for p in sorted(bone.parts, key=lambda q: (q.carve, q.add_hu != 0)):
        psl = cv.box(bone.frame.at(corners(p.lo, p.hi)))
        rel = None if psl is None else inner(sl, psl)
        if rel is None:
            continue
        pu, pv, pw = (c[rel] for c in coords[p.group])
        d = SDF[p.kind](pu, pv, pw, p.args)
        for point, normal in p.cuts:
            cut = (x[rel] - F32(point[0])) * F32(normal[0])
            cut += (y[rel] - F32(point[1])) * F32(normal[1])
            cut += (z[rel] - F32(point[2])) * F32(normal[2])
            np.maximum(d, cut, out=d)
        if p.add_hu:
            dense = np.zeros(u.shape, dtype=F32) if dense is None else dense
            dense[rel] += F32(p.add_hu) * np.clip(F32(0.5) - d * F32(0.5), 0, 1)
        elif p.carve:
            np.maximum(dist[p.group][rel], d * F32(-p.rim), out=dist[p.group][rel])
            if p.fill is not None:
                np.copyto(cv.hu[sl][rel], F32(p.fill), where=d < 0)
        else:
            dist[p.group][rel] = smin(dist[p.group][rel], d, p.blend)
    d = dist[groups[0]]
    for g in groups[1:]:
        d = smin(d, dist[g], bone.blend)
    occ = np.clip(F32(0.5) - d * F32(1 / cv.pix), 0, 1)
    marrow = np.full(u.shape, bone.marrow_hu, dtype=F32)
    if bone.texture_hu:
        marrow += F32(bone.texture_hu) * texture(tile, *coords[groups[0]])
    if dense is not None:
        marrow += dense
    np.maximum(marrow, F32(-1000), out=marrow)  # overlapping gas pockets
    deep = np.clip((-d - F32(bone.cortex_mm)) * F32(1 / 0.6) + F32(0.5), 0, 1)
    value = F32(bone.cortex_hu) + deep * (marrow - F32(bone.cortex_hu))
    hu = cv.hu[sl]
    hu += occ * (value - hu)
    if bone.metal:
        cv.metal[sl] |= d < 0
    for br, s in zip(bone.breaks, planes, strict=True):
        _cut(cv, sl, br, (s, dist[br.group], u, v, w))


def _cut(cv: Canvas, sl: Slices, br: Break, arrays: tuple[Array, ...]) -> None:
    """Lucent gap (not corticated) and lesion label of one break."""
    s, target, u, v, w = arrays
    lesion = cv.lesion[sl]
    if br.wedge is not None:
        lesion[target < F32(br.margin)] = br.label
        return
    gap = np.abs(s) - F32(br.width / 2)
    if br.reach < 1e5:
        r2 = (u - F32(br.p0[0])) ** 2 + (v - F32(br.p0[1])) ** 2 + (w - F32(br.p0[2])) ** 2
        _, flat = plane_distance(br, u, v, w)
        r2 -= flat * flat
        gap = np.where(r2 < F32(br.reach**2), gap, F32(50.0))
    occ = np.clip(F32(0.5) - gap * F32(1 / cv.pix), 0, 1)
    occ *= np.clip(F32(0.5) - target * F32(1 / cv.pix), 0, 1)
    hu = cv.hu[sl]
    change = occ * (F32(br.hu) - hu)
    hu += change
    # the label is the bone the gap replaced, not a margin around the plane: where the gap
    # barely grazes the bone (or misses it), nothing shows on the image and nothing is labelled
    lesion[change <= F32(-GAP_LABEL_DROP_HU)] = br.label


def make_tile(rng: np.random.Generator) -> Array:
    """Periodic trabecular texture (unit variance), grain about 1 mm."""
    spec = np.fft.fftn(rng.standard_normal((TILE, TILE, TILE)))
    k = np.fft.fftfreq(TILE)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    field_ = np.real(np.fft.ifftn(spec * np.exp(-k2 * (2 * np.pi * 0.8) ** 2 / 2)))
    field_ = np.abs(field_ - field_.mean()) * 2.0 - np.abs(field_).mean()  # rod-like ridges
    field_ /= field_.std() + 1e-6
    return np.asarray(field_.ravel(), dtype=F32)


def texture(tile: Array, u: Array, v: Array, w: Array) -> Array:
    inv, mask = F32(1 / TILE_MM), TILE - 1
    i = (u * inv).astype(np.int32)
    i &= mask
    i *= TILE
    j = (v * inv).astype(np.int32)
    j &= mask
    i += j
    i *= TILE
    k = (w * inv).astype(np.int32)
    k &= mask
    i += k
    return np.asarray(tile[i], dtype=F32)


# --- soft tissue ----------------------------------------------------------------------------


def tube(cv: Canvas, ctrl: Sequence[Sequence[float]] | Array, hu: float, *, halo: float = 0.0,
         halo_hu: float = 0.0, angle: float = 0.0) -> None:
    """Elliptic tube through rows (z, cx, cy, rx, ry), optionally in a fat halo (mm)."""
    c = np.asarray(ctrl, dtype=float)
    zt = ZT0 + ZSTEP * np.arange(NZT)
    valid = (zt >= c[0, 0]) & (zt <= c[-1, 0])
    cx, cy, rx, ry = (np.interp(zt, c[:, 0], c[:, i]) for i in range(1, 5))
    rx, ry = np.maximum(rx, 0.05), np.maximum(ry, 0.05)
    irx = np.where(valid, 1 / rx, 1e3).astype(F32)
    iry = np.where(valid, 1 / ry, 1e3).astype(F32)
    grow = ((np.minimum(rx, ry) + halo) / np.minimum(rx, ry)) ** 2
    ext = np.maximum(c[:, 3], c[:, 4]) + halo
    pts = [(c[i, 1] + sx * ext[i], c[i, 2] + sy * ext[i], c[i, 0])
           for i in range(len(c)) for sx in (-1, 1) for sy in (-1, 1)]
    sl = cv.box(np.asarray(pts))
    if sl is None:
        return
    iz = cv.iz[sl]
    dx = cv.x[sl] - cx.astype(F32)[iz]
    dy = cv.y[sl] - cy.astype(F32)[iz]
    if angle:
        ca, sa = F32(np.cos(angle)), F32(np.sin(angle))
        dx, dy = ca * dx + sa * dy, ca * dy - sa * dx
    dx *= irx[iz]
    dy *= iry[iz]
    q = dx * dx
    q += dy * dy
    hv = cv.hu[sl]
    if halo:
        np.copyto(hv, F32(halo_hu), where=q < grow.astype(F32)[iz])
    np.copyto(hv, F32(hu), where=q < 1)


def caps(cv: Canvas, points: Sequence[Vec], r: float, hu: float) -> None:
    """Polyline of capsules of radius ``r`` (template coordinates), e.g. a vessel."""
    for a, b in itertools.pairwise(points):
        sl = cv.box(np.array([np.asarray(a) - r, np.asarray(a) + r, np.asarray(b) - r,
                              np.asarray(b) + r]))
        if sl is not None:
            d = sd_cap(*cv.xyz(sl), (a, b, r))
            np.copyto(cv.hu[sl], F32(hu), where=d < 0)


def blob(cv: Canvas, c: Vec, radii: Vec, hu: float) -> None:
    """Ellipsoid of soft tissue (template coordinates)."""
    cc, rr = np.asarray(c, dtype=float), np.asarray(radii, dtype=float)
    sl = cv.box(corners(cc - rr, cc + rr))
    if sl is not None:
        np.copyto(cv.hu[sl], F32(hu), where=sd_ell(*cv.xyz(sl), (cc, rr)) < 0)


def outline(cv: Canvas, habitus: Sequence[float], t: dict[str, float]) -> Array:
    """Skin, subcutaneous fat and deep fat, a few planes at a time; returns the layers."""
    scale, fat0, nape, square, taper = habitus[:5]
    rows = np.asarray(OUTLINE, dtype=float)
    zt = ZT0 + ZSTEP * np.arange(NZT)
    yc = np.interp(zt, rows[:, 0], rows[:, 1]).astype(F32)
    irx = (1 / (scale * np.interp(zt, rows[:, 0], rows[:, 2]))).astype(F32)
    iry = (1 / (scale * np.interp(zt, rows[:, 0], rows[:, 3]))).astype(F32)
    irx[zt >= rows[-1, 0]] = 1e3  # above the vertex: air
    skin = F32(1.6)
    layer = np.zeros(cv.hu.shape, dtype=np.uint8)  # 0 air, 1 skin, 2 subcutaneous fat, 3 deep
    for z0 in range(0, cv.hu.shape[0], 8):
        ch = (slice(z0, z0 + 8), slice(None), slice(None))
        iz = cv.iz[ch]
        dx, dy = cv.x[ch], cv.y[ch] - yc[iz]
        ny = dy * iry[iz]
        nx = dx * irx[iz] / (1 + F32(taper) * np.clip(ny, -1, 1))
        x2, y2 = nx * nx, ny * ny
        q = x2 + y2 - F32(square) * np.minimum(x2, 1) * np.minimum(y2, 1)  # squarer corners
        inside = q < 1
        dist = np.hypot(dx, dy)
        depth = dist / (np.sqrt(q) + F32(1e-3)) - dist
        lv = layer[ch]
        lv[inside] = 3
        lv[inside & (depth < F32(fat0) * (1 + F32(nape) * ny) + skin)] = 2
        lv[inside & (depth < skin)] = 1
        np.take(np.array([-1000, t["skin"], t["fat"], t["deep"]], dtype=F32), lv, out=cv.hu[ch])
        cv.body[ch] = inside
    return layer


def restore(cv: Canvas, t: dict[str, float], layer: Array) -> None:
    """Keep the deep structures inside the subcutaneous fat: repaint air, skin and fat."""
    for z0 in range(0, cv.hu.shape[0], 8):
        ch = (slice(z0, z0 + 8), slice(None), slice(None))
        lv = layer[ch]
        keep = lv == 3
        np.copyto(cv.hu[ch], np.take(np.array([-1000, t["skin"], t["fat"], 0], dtype=F32),
                                     lv), where=~keep)
