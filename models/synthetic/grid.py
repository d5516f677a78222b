"""Sampling grids: where a phantom is evaluated, in patient and anatomy-local millimetres.

Conventions (DICOM patient coordinates, LPS): +x towards the patient's left, +y posterior,
+z superior.  Arrays are indexed ``[z, y, x]`` (plane, row, column).  Row index grows
posterior, column index grows to the patient's left, as in a standard axial CT image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.synthetic.spec import Acquisition, Pose

Array = np.ndarray


@dataclass(frozen=True)
class Grid:
    """Sample positions of a volume: ``x`` (columns), ``y`` (rows), ``z`` (planes), in mm.

    ``z`` are the *fine* planes that the scanner model later averages into slices of the
    requested thickness (partial volume).
    """

    x: Array  # (W,) float32, patient coordinates
    y: Array  # (H,) float32
    z: Array  # (Z,) float32

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z), len(self.y), len(self.x))

    @property
    def pixel_mm(self) -> float:
        return float(self.x[1] - self.x[0]) if len(self.x) > 1 else 1.0

    @property
    def voxel_ml(self) -> float:
        """Volume of one fine voxel in millilitres."""
        dz = float(np.median(np.diff(self.z))) if len(self.z) > 1 else 1.0
        return abs(self.pixel_mm * float(self.y[1] - self.y[0]) * dz) / 1000.0


def fine_planes_per_slice(thickness_mm: float) -> int:
    """Sub-planes averaged into one slice (one per started 2.5 mm of thickness)."""
    return max(1, int(np.ceil(thickness_mm / 2.5 - 1e-6)))


def slice_centres(acq: Acquisition) -> Array:
    """Patient z of each slice centre, inferior to superior."""
    return (acq.z_start_mm + np.arange(acq.n_slices) * acq.spacing_mm).astype(np.float32)


def make_grid(acq: Acquisition) -> Grid:
    """The fine grid of a study: ``n_slices × fine_planes_per_slice`` planes."""
    n_sub = fine_planes_per_slice(acq.slice_thickness_mm)
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * acq.slice_thickness_mm
    z = (slice_centres(acq)[:, None] + offsets[None, :]).reshape(-1).astype(np.float32)
    pixel = acq.fov_mm / acq.matrix
    xy = ((np.arange(acq.matrix) + 0.5) * pixel - acq.fov_mm / 2).astype(np.float32)
    return Grid(x=xy, y=xy.copy(), z=z)


def rotation(pose: Pose) -> Array:
    """3×3 rotation taking anatomy-local axes to patient axes."""
    yaw, pitch, roll = np.deg2rad([pose.yaw_deg, pose.pitch_deg, pose.roll_deg])
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
    return np.asarray(rz @ rx @ ry, dtype=np.float32)


def local_coords(grid: Grid, pose: Pose) -> tuple[Array, Array, Array]:
    """Anatomy-local coordinates (mm) of every grid voxel, each a float32 array (Z, H, W).

    The anatomy is rendered in its own frame (origin and axes defined by the renderer);
    the pose places that frame in the scanner.  Inverse: local = Rᵀ (patient − shift).
    """
    r = rotation(pose)
    shape = grid.shape
    zz = (grid.z - np.float32(pose.shift_mm[2]))[:, None, None]
    yy = (grid.y - np.float32(pose.shift_mm[1]))[None, :, None]
    xx = (grid.x - np.float32(pose.shift_mm[0]))[None, None, :]
    out = []
    for axis in range(3):  # local_i = sum_j R[j, i] * p_j, computed in place in float32
        plane = r[0, axis] * xx + r[1, axis] * yy  # (1, H, W)
        column = r[2, axis] * zz  # (Z, 1, 1)
        arr = np.empty(shape, dtype=np.float32)
        np.add(plane, column, out=arr)
        out.append(arr)
    return out[0], out[1], out[2]
