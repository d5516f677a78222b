"""Scanner vendors, models, reconstruction kernels and pixel-storage conventions to sample from."""

from __future__ import annotations

from dataclasses import dataclass

from models.synthetic.spec import Region


@dataclass(frozen=True, slots=True)
class Kernel:
    name: str
    sharpness: float  # 0 soft … 1 sharp
    bone: bool  # a bone/lung kernel rather than a soft-tissue/brain one


@dataclass(frozen=True, slots=True)
class Vendor:
    manufacturer: str
    models: tuple[str, ...]
    head_kernels: tuple[Kernel, ...]
    bone_kernels: tuple[Kernel, ...]
    signed_pixels: bool  # PixelRepresentation 1
    rescale_intercept: float  # HU = stored + intercept
    bits_stored: int
    padding_hu: float | None  # value outside the reconstruction circle, if the vendor pads


VENDORS: tuple[Vendor, ...] = (
    Vendor(
        "GE MEDICAL SYSTEMS",
        ("Revolution CT", "Optima CT660", "LightSpeed VCT", "Discovery CT750 HD"),
        (Kernel("SOFT", 0.2, False), Kernel("STANDARD", 0.45, False),
         Kernel("DETAIL", 0.6, False)),
        (Kernel("BONE", 0.85, True), Kernel("BONEPLUS", 0.95, True)),
        signed_pixels=True, rescale_intercept=-1024.0, bits_stored=16, padding_hu=-3024.0,
    ),
    Vendor(
        "SIEMENS",
        ("SOMATOM Definition AS+", "SOMATOM go.Top", "SOMATOM Force", "SOMATOM Edge Plus"),
        (Kernel("H31s", 0.35, False), Kernel("Hr38", 0.45, False), Kernel("J40s", 0.5, False)),
        (Kernel("H60s", 0.75, True), Kernel("Br64", 0.85, True), Kernel("H70h", 0.92, True)),
        signed_pixels=False, rescale_intercept=-1024.0, bits_stored=12, padding_hu=None,
    ),
    Vendor(
        "TOSHIBA",
        ("Aquilion ONE", "Aquilion PRIME", "Aquilion Lightning"),
        (Kernel("FC21", 0.35, False), Kernel("FC26", 0.45, False), Kernel("FC64", 0.55, False)),
        (Kernel("FC30", 0.8, True), Kernel("FC81", 0.9, True)),
        signed_pixels=True, rescale_intercept=0.0, bits_stored=16, padding_hu=-2048.0,
    ),
    Vendor(
        "Philips",
        ("Brilliance 64", "Ingenuity CT", "IQon - Spectral CT", "Incisive CT"),
        (Kernel("UB", 0.35, False), Kernel("UC", 0.45, False), Kernel("C", 0.5, False)),
        (Kernel("D", 0.8, True), Kernel("YD", 0.88, True), Kernel("EC", 0.95, True)),
        signed_pixels=False, rescale_intercept=-1000.0, bits_stored=12, padding_hu=None,
    ),
)

#: Vendors :func:`~models.synthetic.sampling.sample_case` never draws: a scanner a site adds
#: later, for population-shift (drift) experiments via acquisition overrides.
HELD_OUT_VENDORS: tuple[Vendor, ...] = (
    Vendor(
        "UIH",
        ("uCT 760", "uCT 960+"),
        (Kernel("B_SOFT_B", 0.3, False), Kernel("B_BRAIN_C", 0.5, False)),
        (Kernel("B_SHARP_C", 0.85, True),),
        signed_pixels=True, rescale_intercept=-1024.0, bits_stored=16, padding_hu=-2048.0,
    ),
)

STUDY_DESCRIPTIONS = {
    Region.HEAD: ("CT HEAD WO CONTRAST", "CT BRAIN NON CONTRAST", "HEAD ROUTINE", "CT HEAD",
                  "CT CRANIAL WO"),
    Region.CSPINE: ("CT CERVICAL SPINE WO CONTRAST", "CT C-SPINE", "C-SPINE TRAUMA",
                    "CT CERVICAL SPINE"),
}

BODY_PARTS = {Region.HEAD: ("HEAD", "BRAIN", "HEAD"), Region.CSPINE: ("CSPINE", "NECK", "CSPINE")}


def vendor_named(manufacturer: str) -> Vendor:
    """The profile of ``manufacturer``.

    Raises
    ------
    KeyError
        Unknown manufacturer.
    """
    for vendor in VENDORS + HELD_OUT_VENDORS:
        if vendor.manufacturer == manufacturer:
            return vendor
    raise KeyError(manufacturer)
