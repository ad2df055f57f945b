"""How a sequence model reads one output vector from its positions.

* ``"last"``: the last position. For next-token prediction, where the most
  recent tokens matter most and a mean over time would blur them away.
* ``"mean"``: the mean over the non-PAD positions. For classifying right-padded
  sentences: every token counts, and padding never changes the output.

Both the LSTM and the Transformer take ``pooling`` through
:class:`~fedpriv.shared_models.registry.ModelConfig`; the task decides which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["POOLINGS", "masked_mean"]

#: The pooling modes a sequence model accepts.
POOLINGS: tuple[str, ...] = ("last", "mean")


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over the positions where the bool ``keep`` (B, T) is True.

    Returns:
        A (B, D) tensor; a row with no position kept gives zeros, not NaN.
    """
    weights = keep.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
