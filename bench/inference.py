"""CPU (or GPU) inference time per detector on 32-64-slice synthetic studies.

Loads each bundled detector once, runs it on synthetic studies of the matching region (in
memory, as the DICOM loader would return them), and prints the median and maximum seconds
per study for preprocessing + network, after one warm-up study.

Usage::

    python bench/inference.py [--studies 8] [--slices 48] [--device cpu] [--threads N]
                              [--flip-average on|off]

``--flip-average``: time every detector with test-time flip averaging switched on or off
(default: as each card says), e.g. to see what switching it costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import models
from models.assess import REGION_OF
from models.synthetic.generate import generate
from models.synthetic.sampling import sample_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=48, help="slices per study (32-64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--flip-average", choices=["on", "off"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flip = None if args.flip_average is None else args.flip_average == "on"
    results = {}
    for card in models.available():
        detector = models.load(card.name, device=args.device, flip_average=flip)
        region = REGION_OF[card.name]
        volumes = []
        for seed in range(700_000, 700_000 + args.studies + 1):
            spec = sample_case(seed, region, max_slices=args.slices)
            # thin slices are capped by spacing; force the requested count
            volumes.append(generate(spec).volume())
        detector(volumes[0])  # warm-up
        times, slices = [], []
        for volume in volumes[1:]:
            started = time.perf_counter()
            detector(volume)
            times.append(time.perf_counter() - started)
            slices.append(volume.shape[0])
        results[card.name] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "slices": [min(slices), max(slices)],
            "device": args.device,
            "threads": torch.get_num_threads(),
            "flip_average": detector.card.flip_average,
        }
        print(f"{card.name:16s} median {results[card.name]['median_s']:.3f} s, max "
              f"{results[card.name]['max_s']:.3f} s per study ({min(slices)}-{max(slices)} "
              f"slices, {args.device}, {torch.get_num_threads()} threads"
              f"{', flip averaging' if detector.card.flip_average else ''})", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
