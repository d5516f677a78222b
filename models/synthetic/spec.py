"""What a synthetic case is: patient, pose, acquisition, findings and confounders (no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Region(enum.StrEnum):
    HEAD = "head"
    CSPINE = "cspine"


class Side(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"


class HemorrhageSubtype(enum.StrEnum):
    IPH = "intraparenchymal"
    SDH = "subdural"
    EDH = "epidural"
    SAH = "subarachnoid"
    IVH = "intraventricular"


class Territory(enum.StrEnum):
    MCA = "MCA"
    ACA = "ACA"
    PCA = "PCA"


class FractureKind(enum.StrEnum):
    BODY = "body"  # lucent line through the vertebral body
    POSTERIOR = "posterior"  # lucent line through lamina / pedicle / spinous process
    COMPRESSION = "compression"  # loss of body height (anterior wedge), denser trabeculae


@dataclass(frozen=True, slots=True)
class Hemorrhage:
    """An acute intracranial bleed of ``volume_ml`` (0.2-60 mL) and mean density ``density_hu``."""

    subtype: HemorrhageSubtype
    volume_ml: float
    side: Side
    density_hu: float = 65.0


@dataclass(frozen=True, slots=True)
class Stroke:
    """Early ischemic stroke: hypodensity of a few HU with loss of gray-white differentiation."""

    territory: Territory
    side: Side
    hypodensity_hu: float = 5.0  # mean drop in HU inside the territory
    gray_white_loss: float = 0.7  # 0: none, 1: gray matter fully at white-matter density
    extent: float = 0.7  # fraction of the territory involved (0.2-1)
    hyperdense_vessel: bool = False


@dataclass(frozen=True, slots=True)
class Fracture:
    """A cervical fracture at ``level`` (1 = C1 … 7 = C7)."""

    level: int
    kind: FractureKind
    displacement_mm: float = 0.0  # shift of one fragment (body/posterior)
    compression: float = 0.0  # fractional loss of anterior body height (compression)
    side: Side = Side.LEFT  # for posterior-element fractures


Finding = Hemorrhage | Stroke | Fracture


@dataclass(frozen=True, slots=True)
class Confounders:
    """Findings-free look-alikes and artifacts that must not be called positive."""

    pineal_calcification: bool = False
    choroid_calcification: bool = False
    falx_calcification: bool = False
    vascular_calcification: bool = False  # e.g. carotid siphon, vertebral arteries
    beam_hardening: float = 0.0  # 0-1 strength of dark streaks between dense bone
    motion: float = 0.0  # 0-1 strength of patient motion (blur/ghosting on some slices)
    metal: bool = False  # dental filling / clip with starburst streaks
    osteophytes: float = 0.0  # 0-1 degenerative spurs (spine)
    disc_degeneration: float = 0.0  # 0-1 narrowing and vacuum phenomenon (spine)


@dataclass(frozen=True, slots=True)
class Patient:
    age_years: int
    sex: str  # "M" | "F"
    size: float = 1.0  # global scale of the anatomy (≈0.9-1.1)
    name: str = "SYNTHETIC^PHANTOM"
    patient_id: str = "SYN000000"


@dataclass(frozen=True, slots=True)
class Pose:
    """Rigid placement of the anatomy in the scanner (patient coordinates, mm / degrees)."""

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x (left), y (posterior), z (sup)
    yaw_deg: float = 0.0  # rotation about z (head turned)
    pitch_deg: float = 0.0  # rotation about x (chin up/down)
    roll_deg: float = 0.0  # rotation about y (head tilted to a shoulder)


@dataclass(frozen=True, slots=True)
class Acquisition:
    """Scanner and reconstruction parameters."""

    manufacturer: str = "GE MEDICAL SYSTEMS"
    model: str = "Revolution"
    kernel: str = "STANDARD"
    kernel_sharpness: float = 0.5  # 0 soft … 1 sharp (drives resolution and noise texture)
    kvp: float = 120.0
    mas: float = 300.0
    slice_thickness_mm: float = 5.0
    spacing_mm: float = 5.0  # between slice centres
    fov_mm: float = 240.0
    matrix: int = 256
    n_slices: int = 32
    z_start_mm: float = -60.0  # patient z of the first slice centre (anatomy origin at z = 0)
    hu_offset: float = 0.0  # calibration error added to every voxel (drift experiments)
    signed_pixels: bool = True  # PixelRepresentation 1 (GE-like) or 0 with offset (Siemens-like)


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """Everything that determines one synthetic study; rendering it is deterministic."""

    seed: int
    region: Region
    patient: Patient
    acquisition: Acquisition
    pose: Pose = field(default_factory=Pose)
    findings: tuple[Finding, ...] = ()
    confounders: Confounders = field(default_factory=Confounders)
