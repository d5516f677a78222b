"""Contact sheet of synthetic studies (brain, bone and reformatted views) for judging realism."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.synthetic.generate import Case, generate
from models.synthetic.sampling import sample_case
from models.synthetic.spec import Region

ROWS: tuple[tuple[Region, str | None, str], ...] = (
    (Region.HEAD, "none", "normal head"),
    (Region.HEAD, "hemorrhage", "hemorrhage"),
    (Region.HEAD, "hemorrhage", "hemorrhage"),
    (Region.HEAD, "hemorrhage", "hemorrhage"),
    (Region.HEAD, "stroke", "ischemic stroke"),
    (Region.CSPINE, "none", "normal C-spine"),
    (Region.CSPINE, "fracture", "C-spine fracture"),
)


def _window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.clip((hu - (centre - width / 2)) / width, 0, 1)


def _key_slice(case: Case) -> int:
    if case.slice_positive.any():
        on = np.nonzero(case.slice_positive)[0]
        return int(on[len(on) // 2])
    return int(case.hu.shape[0] * 0.45)


def contact_sheet(path: Path, *, seed: int = 3) -> None:
    """Render the cases of :data:`ROWS` (seeds from ``seed``) into one PNG."""
    import matplotlib  # noqa: PLC0415 - plotting only for this tool

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(ROWS), 4, figsize=(12, 3.1 * len(ROWS)), dpi=90)
    for row, (region, finding, title) in enumerate(ROWS):
        case = generate(sample_case(seed + 97 * row, region, max_slices=96, finding=finding))
        key = _key_slice(case)
        hu = case.hu
        soft = (40, 80) if region is Region.HEAD else (50, 350)
        bone = (600, 2800) if region is Region.HEAD else (500, 2000)
        other = int(np.clip(key + (6 if key < hu.shape[0] // 2 else -6), 0, hu.shape[0] - 1))
        coronal = hu[:, hu.shape[1] // 2 + (0 if region is Region.HEAD else 10), :][::-1]
        aspect = case.spacing_mm[0] / case.spacing_mm[2]
        views = (
            (_window(hu[key], *soft), f"slice {key} {soft[0]}/{soft[1]}", 1.0),
            (_window(hu[other], *soft), f"slice {other}", 1.0),
            (_window(hu[key], *bone), f"slice {key} bone {bone[0]}/{bone[1]}", 1.0),
            (_window(coronal, *(soft if region is Region.HEAD else bone)), "coronal", aspect),
        )
        for col, (image, label, asp) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, aspect=asp)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7)
        acq = case.labels["acquisition"]
        detail = case.labels["findings"][0] if case.labels["findings"] else {}
        text = f"{title}: {detail.get('subtype', '')} "
        if detail.get("volume_ml"):
            text += f"{detail['volume_ml']:.1f} mL "
        if detail.get("level"):
            text += f"C{detail['level']} "
        text += (f"\n{acq['manufacturer']} {acq['kernel']} {acq['kvp']:g} kVp "
                 f"{acq['slice_thickness_mm']:g} mm, age {case.labels['patient']['age']}")
        axes[row, 0].set_ylabel(text, fontsize=7)
    fig.suptitle("Synthetic CT phantoms (models/synthetic) - not patient data, not for "
                 "clinical use", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
