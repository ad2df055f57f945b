"""A small convolutional image classifier that trains well under DP-SGD.

Two choices make it DP-friendly:

* **GroupNorm, never BatchNorm.** BatchNorm mixes the samples of a batch, so a
  sample's gradient depends on the others and per-sample clipping no longer
  bounds its influence. GroupNorm normalises each sample on its own.
* **Tanh activations.** Under DP-SGD, bounded "tempered sigmoid" activations
  keep activations and gradients small, so less signal is lost to clipping
  (Papernot et al., "Tempered Sigmoid Activations for Deep Learning with
  Differential Privacy", AAAI 2021).

The network is ``depth`` blocks of Conv3x3 (padding 1) -> GroupNorm -> Tanh, the
first at ``width // 2`` channels and the rest at ``width``, then an adaptive
average pool to 4x4, so the same model handles 8x8 digits and 28x28
Fashion-MNIST. At width 32 and depth 2 it has about ten thousand parameters and
trains on two CPU cores in seconds.
"""

from __future__ import annotations

import logging
import math
from itertools import pairwise

import torch
from torch import nn

__all__ = ["CNN"]

logger = logging.getLogger(__name__)

#: Side of the square feature map fed to the classifier head, in pixels.
POOLED_SIZE = 4

#: Largest number of GroupNorm groups per layer.
MAX_NORM_GROUPS = 4


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """One Conv3x3 -> GroupNorm -> Tanh block; keeps the spatial size.

    Args:
        in_channels: Input channels (>= 1).
        out_channels: Output channels (>= 1).

    Returns:
        The block, mapping (B, in_channels, H, W) to (B, out_channels, H, W).
    """
    # The group count must divide the channel count; gcd keeps that true for any width.
    groups = math.gcd(out_channels, MAX_NORM_GROUPS)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.Tanh(),
    )


class CNN(nn.Module):
    """Image classifier: (B, in_channels, H, W) float images -> (B, num_classes) logits.

    Construct it through :func:`fedpriv.shared_models.build_model`, which validates the
    settings; the constructor itself assumes they are valid.

    Args:
        in_channels: Colour channels of the input (1 for greyscale).
        num_classes: Number of output logits (>= 2).
        width: Channels of every block but the first, which has ``width // 2``.
        depth: Number of conv blocks (>= 1).
    """

    def __init__(self, *, in_channels: int, num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        channels = [in_channels, max(1, width // 2)] + [width] * (depth - 1)
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in pairwise(channels)))
        self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        self.head = nn.Linear(channels[-1] * POOLED_SIZE * POOLED_SIZE, num_classes)
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images.

        Args:
            images: Float tensor (B, in_channels, H, W); any H, W >= 1 works,
                pixel values are expected roughly in [-1, 1] or [0, 1].

        Returns:
            Logits, float tensor (B, num_classes).
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"CNN expects images shaped (B, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        features = self.pool(self.features(images))
        return self.head(torch.flatten(features, start_dim=1))
