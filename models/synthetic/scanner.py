"""Scanner model: slice-thickness averaging, kernel resolution and noise, streaks, motion, storage.

Turns the noise-free fine-grid HU of an anatomy renderer into the slices a scanner would
reconstruct.  Noise is correlated with a texture set by the kernel (soft kernels: blotchy,
sharp kernels: fine-grained and stronger) and its level by kVp, mAs, slice thickness and
patient size, roughly as photon statistics would have it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from models.synthetic.grid import Grid, fine_planes_per_slice
from models.synthetic.render import Rendered
from models.synthetic.spec import CaseSpec

HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass
class Scanned:
    """Reconstructed slices (HU, float32 (S, H, W)) and per-slice lesion areas."""

    hu: np.ndarray
    lesion_area_mm2: np.ndarray  # float32 (n_findings, S): lesion area per slice
    noise_sd_hu: float
    pixel_mm: float


def average_slices(volume: np.ndarray, n_sub: int) -> np.ndarray:
    """Mean of each run of ``n_sub`` fine planes: the slice sensitivity profile (partial volume)."""
    planes, height, width = volume.shape
    stacked = volume.reshape(planes // n_sub, n_sub, height, width)
    return np.asarray(stacked.mean(axis=1, dtype=np.float32), dtype=np.float32)


def _lesion_areas(rendered: Rendered, n_sub: int, pixel_area: float) -> np.ndarray:
    count = len(rendered.findings)
    planes = rendered.lesion.shape[0] // n_sub
    areas = np.zeros((count, planes), dtype=np.float32)
    for index in range(count):
        per_plane = (rendered.lesion == index + 1).sum(axis=(1, 2)).astype(np.float32)
        areas[index] = per_plane.reshape(planes, n_sub).mean(axis=1) * pixel_area
    return areas


def _streaks(shape: tuple[int, int], centre: tuple[float, float], angles: np.ndarray,
             amplitudes: np.ndarray, *, width_px: float, decay_px: float) -> np.ndarray:
    """Lines through ``centre`` at ``angles`` with the given amplitudes, fading with distance."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = rows - centre[0], cols - centre[1]
    radius = np.hypot(dx, dy) + 1.0
    out = np.zeros(shape, dtype=np.float32)
    for angle, amp in zip(angles, amplitudes, strict=True):
        distance = np.abs(dx * np.sin(angle) - dy * np.cos(angle))
        out += amp * np.exp(-(distance / width_px) ** 2)
    out *= np.exp(-radius / decay_px)
    return out


def beam_hardening(hu: np.ndarray, bone: np.ndarray, body: np.ndarray, strength: float,
                   rng: np.random.Generator) -> None:
    """Dark bands between dense bone (e.g. petrous bones, shoulders), in place."""
    if strength <= 0:
        return
    for index in range(hu.shape[0]):
        dense = bone[index]
        area = float(dense.sum())
        if area < 400:  # little bone in this slice: no visible streaks
            continue
        rows, cols = np.nonzero(dense)
        centre = (float(rows.mean()), float(cols.mean()))
        n = int(rng.integers(2, 6))
        angles = rng.uniform(0, np.pi, n)
        amps = -strength * rng.uniform(8, 35, n) * min(1.0, area / 4000)
        streak = _streaks(dense.shape, centre, angles, amps, width_px=rng.uniform(1.5, 4.0),
                          decay_px=rng.uniform(30, 80))
        hu[index] += streak * body[index]


def metal_streaks(hu: np.ndarray, metal: np.ndarray, rng: np.random.Generator) -> None:
    """Starburst of bright and dark streaks around metal, in place."""
    for index in range(hu.shape[0]):
        if not metal[index].any():
            continue
        rows, cols = np.nonzero(metal[index])
        centre = (float(rows.mean()), float(cols.mean()))
        n = int(rng.integers(6, 16))
        angles = rng.uniform(0, np.pi, n)
        amps = rng.choice([-1.0, 1.0], n) * rng.uniform(50, 220, n)
        hu[index] += _streaks(hu.shape[1:], centre, angles, amps,
                              width_px=rng.uniform(0.8, 2.0), decay_px=rng.uniform(25, 70))


def motion(hu: np.ndarray, strength: float, rng: np.random.Generator) -> None:
    """Blur and ghosting along one direction on a run of slices, in place."""
    if strength <= 0:
        return
    count = hu.shape[0]
    length = max(1, int(count * rng.uniform(0.1, 0.5)))
    start = int(rng.integers(0, count - length + 1))
    angle = rng.uniform(0, 2 * np.pi)
    shift = strength * rng.uniform(1.0, 4.0)
    offset = (shift * np.sin(angle), shift * np.cos(angle))
    weight = np.float32(0.25 + 0.25 * strength)
    for index in range(start, start + length):
        moved = ndimage.shift(hu[index], offset, order=1, mode="nearest")
        hu[index] = (1 - weight) * hu[index] + weight * moved


def noise_sd(spec: CaseSpec) -> float:
    """Target noise standard deviation in HU for this acquisition."""
    acq = spec.acquisition
    # ~4 HU for a 5 mm brain kernel at 300 mAs, ~15 HU for a bone kernel
    base = 2.5 + 14.0 * acq.kernel_sharpness**2
    dose = np.sqrt(300.0 / max(acq.mas, 20.0)) * (120.0 / acq.kvp) ** 1.5
    # thinner slices are noisier; iterative reconstruction softens the 1/sqrt(T) law
    thickness = (5.0 / max(acq.slice_thickness_mm, 0.5)) ** 0.4
    size = np.exp(1.5 * (spec.patient.size - 1.0))
    return float(base * dose * thickness * size)


def correlated_noise(shape: tuple[int, int, int], sharpness: float, sd: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Noise with a kernel-dependent texture, scaled to ``sd`` (per slice, in-plane only)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    coarse = ndimage.gaussian_filter(white, sigma=(0, 1.3, 1.3))
    fine = white - ndimage.gaussian_filter(white, sigma=(0, 1.6, 1.6))
    coarse /= coarse.std() + 1e-6
    fine /= fine.std() + 1e-6
    mixed = (1 - sharpness) * coarse + sharpness * fine
    mixed *= sd / (mixed.std() + 1e-6)
    return np.asarray(mixed, dtype=np.float32)


def scan(rendered: Rendered, grid: Grid, spec: CaseSpec, rng: np.random.Generator) -> Scanned:
    """Apply the scanner model to a rendered phantom."""
    acq = spec.acquisition
    n_sub = fine_planes_per_slice(acq.slice_thickness_mm)
    hu = average_slices(rendered.hu, n_sub)
    body = average_slices(rendered.body.astype(np.float32), n_sub) > 0.5
    areas = _lesion_areas(rendered, n_sub, grid.pixel_mm**2)
    bone = rendered.landmarks.get("bone")
    if isinstance(bone, np.ndarray):
        dense = average_slices(bone.astype(np.float32), n_sub) > 0.5
        beam_hardening(hu, dense, body, spec.confounders.beam_hardening, rng)
    if rendered.metal is not None:
        metal_streaks(hu, average_slices(rendered.metal.astype(np.float32), n_sub) > 0.3, rng)
    motion(hu, spec.confounders.motion, rng)
    blur_mm = 0.9 - 0.55 * acq.kernel_sharpness
    hu = ndimage.gaussian_filter(hu, sigma=(0, blur_mm / grid.pixel_mm, blur_mm / grid.pixel_mm))
    sd = noise_sd(spec)
    noise = correlated_noise(hu.shape, acq.kernel_sharpness, sd, rng)
    # Air outside the patient is nearly noise-free after reconstruction thresholds.
    noise *= np.where(body, np.float32(1.0), np.float32(0.3))
    hu += noise
    hu += np.float32(acq.hu_offset)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return Scanned(hu=hu, lesion_area_mm2=areas, noise_sd_hu=sd, pixel_mm=grid.pixel_mm)
