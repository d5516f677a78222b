"""2.5-D slice network (MONAI ResNet) and the detector that aggregates its slice scores.

Each resampled axial slice, with its neighbours and several HU windows as channels, gets a
probability; the study probability is the highest slice probability, the location the run
of slices around it above threshold.  The pooled network features form the vector used for
out-of-distribution and drift monitoring.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from models.detector import Finding, ModelCard, NotEligibleError
from models.inputs import intensity_histogram
from models.preprocess import Prepared, prepare
from models.volume import Volume

DEFAULT_NETWORK: dict[str, Any] = {
    "type": "monai.networks.nets.ResNet + linear head",
    "block": "basic",
    "layers": [1, 1, 1, 1],
    "block_inplanes": [16, 32, 64, 128],
    "conv1_t_size": 5,
    "conv1_t_stride": 2,
    "dropout": 0.2,
}


class SliceNet(nn.Module):
    """MONAI ResNet backbone (2-D) + dropout + linear: one logit and a feature vector per slice."""

    def __init__(self, in_channels: int, network: dict[str, Any]) -> None:
        super().__init__()
        planes = [int(v) for v in network["block_inplanes"]]
        self.backbone = ResNet(
            block=str(network["block"]),
            layers=[int(v) for v in network["layers"]],
            block_inplanes=planes,
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=int(network["conv1_t_size"]),
            conv1_t_stride=int(network["conv1_t_stride"]),
            num_classes=1,
            feed_forward=False,
        )
        # "avg" (the default and what the bundled weights use) or "max": a global max over the
        # last feature map lets a finding a few pixels wide decide the slice, where the average
        # over the whole crop dilutes it.  No parameters either way: the weights are the same.
        pool = str(network.get("pool", "avg"))
        if pool == "max":
            self.backbone.add_module("avgpool", nn.AdaptiveMaxPool2d(1))
        elif pool != "avg":
            raise ValueError(f"network pool {pool!r} is not 'avg' or 'max'")
        self.dropout = nn.Dropout(float(network.get("dropout", 0.0)))
        # "linear" (the default): one logit from the pooled features.  "map": a logit per cell
        # of the layer-3 grid (1x1 convolutions on layers 3 and 4, the latter upsampled), the
        # slice logit their maximum; training can then also say *where* the finding is (the
        # cells its box covers), which a few-pixel fracture line needs to be learnt at all.
        self.head_kind = str(network.get("head", "linear"))
        if self.head_kind == "map":
            self.map3 = nn.Conv2d(planes[2], 1, 1)
            self.map4 = nn.Conv2d(planes[3], 1, 1)
        elif self.head_kind != "linear":
            raise ValueError(f"network head {self.head_kind!r} is not 'linear' or 'map'")
        else:
            self.head = nn.Linear(planes[-1], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, _ = self.forward_cells(x)
        return logits, features

    def forward_cells(self, x: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Slice logits (B,), pooled features (B, F) and, for a "map" head, cell logits
        (B, h, w) on the layer-3 grid (``None`` for a linear head)."""
        if self.head_kind == "linear":
            features = self.backbone(x)
            return self.head(self.dropout(features)).squeeze(-1), features, None
        b = self.backbone
        h = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            h = b.maxpool(h)
        h3 = b.layer3(b.layer2(b.layer1(h)))
        h4 = b.layer4(h3)
        features = b.avgpool(h4).flatten(1)
        coarse = nn.functional.interpolate(self.map4(self.dropout(h4)), size=h3.shape[-2:],
                                           mode="nearest")
        cells = (self.map3(self.dropout(h3)) + coarse).squeeze(1)
        return cells.flatten(1).amax(dim=1), features, cells


def build_network(card: ModelCard) -> SliceNet:
    return SliceNet(card.preprocessing.channels, card.network)


def score_slices(net: SliceNet, slices: torch.Tensor, *, device: torch.device,
                 batch: int = 32, amp: bool | None = None,
                 flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Slice probabilities (S,) and features (S, F), without gradients.

    ``amp``: bfloat16 autocast; ``None`` means on CUDA only (the CPU path stays float32, which
    is faster there).  Tests run the bfloat16 path on the CPU to check it agrees.
    ``flip``: each probability is the mean of the slice's and its left-right mirror's (test-
    time flip averaging: findings occur on either side and training flips at random); twice
    the network time.  The features stay those of the slices as they are, the input the OOD
    reference was fitted on.
    """
    probs, feats = [], []
    use_amp = device.type == "cuda" if amp is None else amp
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if use_amp else nullcontext())
    with torch.inference_mode(), autocast:
        for start in range(0, slices.shape[0], batch):
            block = slices[start : start + batch].to(device, non_blocking=True)
            logits, features = net(block)
            prob = torch.sigmoid(logits.float())
            if flip:
                mirrored, _ = net(torch.flip(block, dims=(-1,)))
                prob = (prob + torch.sigmoid(mirrored.float())) / 2
            probs.append(prob.cpu())
            feats.append(features.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def aggregate(probs: np.ndarray, threshold: float) -> tuple[float, int, tuple[int, int] | None]:
    """Study probability, key slice and the run of slices around it above threshold."""
    if probs.size == 0:
        return 0.0, 0, None
    # Mean of each slice with its better neighbour: one hot slice of noise counts less
    # than two consecutive ones, which is how real lesions look.
    padded = np.pad(probs, 1, mode="edge")
    paired = np.maximum((padded[:-2] + probs) / 2, (padded[2:] + probs) / 2)
    smoothed = np.maximum(paired, probs * 0.9)
    key = int(np.argmax(smoothed))
    study = float(smoothed[key])
    if study < threshold:
        return study, key, None
    first = last = key
    while first > 0 and smoothed[first - 1] >= threshold:
        first -= 1
    while last < probs.size - 1 and smoothed[last + 1] >= threshold:
        last += 1
    return study, key, (first, last)


def card_state(card: ModelCard) -> dict[str, torch.Tensor]:
    """The network state stored in a card's weight file, after checking its sha256.

    Raises
    ------
    WeightsError
        Missing file or checksum mismatch.
    """
    state: dict[str, torch.Tensor] = torch.load(card.verified_weights(), map_location="cpu",
                                                weights_only=True)
    return state


class SliceDetector:
    """A :class:`models.detector.Detector` built from a card and its verified weights."""

    def __init__(self, card: ModelCard, *, device: str = "cpu", amp: bool | None = None) -> None:
        self.card = card
        self.device = torch.device(device)
        self.amp = amp  # None: bfloat16 autocast on CUDA only
        self.net = build_network(card)
        self.net.load_state_dict(card_state(card))
        self.net.to(self.device).eval()
        self.ood_reference = card.verified_ood_reference()

    def eligibility(self, volume: Volume) -> str | None:
        return self.card.eligibility.check(volume)

    def prepare(self, volume: Volume) -> Prepared:
        return prepare(volume, self.card.preprocessing)

    def __call__(self, volume: Volume) -> Finding:
        reason = self.eligibility(volume)
        if reason is not None:
            raise NotEligibleError(reason)
        started = time.perf_counter()
        prepared = self.prepare(volume)
        prepared_at = time.perf_counter()
        probs, feats = score_slices(self.net, prepared.slices, device=self.device, amp=self.amp,
                                    flip=self.card.flip_average)
        scored_at = time.perf_counter()
        study, key, run = aggregate(probs, self.card.threshold)
        features = np.concatenate([feats.mean(axis=0), feats[key]]).astype(np.float32)
        ood = None
        if self.ood_reference is not None:
            ood = self.ood_reference.score(features, intensity_histogram(volume))
        slice_range = z_range = None
        if run is not None:
            src = prepared.source_index
            slice_range = (int(src[run[0]]), int(src[run[1]]))
            z_range = (float(prepared.z_mm[run[0]]), float(prepared.z_mm[run[1]]))
        return Finding(
            detector=self.card.name,
            model_version=self.card.version,
            probability=study,
            threshold=self.card.threshold,
            flagged=run is not None,
            slice_range=slice_range,
            z_range_mm=z_range,
            key_slice=int(prepared.source_index[key]),
            slice_probabilities=tuple(float(p) for p in probs),
            features=features,
            timings_s={"preprocess": prepared_at - started, "inference": scored_at - prepared_at,
                       "ood": time.perf_counter() - scored_at},
            ood=ood,
        )
