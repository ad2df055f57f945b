"""An LSTM sequence classifier under DP-SGD: next-token prediction or sentence classes.

Token ids (B, T) go through an embedding, a stack of Opacus ``DPLSTM`` layers
and a linear head, giving one set of logits per sequence, read out by ``pooling``:
``"last"``, the last time step (the token that follows the window), or ``"mean"``,
the mean of the outputs at the non-PAD positions (a right-padded sentence: the
LSTM runs left to right, so trailing PAD never changes the output).

``torch.nn.LSTM`` runs as one fused kernel, so Opacus cannot see the per-sample
activations it needs; ``opacus.layers.DPLSTM`` is a drop-in replacement built
from ``nn.Linear``-like pieces that Opacus's grad samplers understand.

``DPLSTM`` registers each weight twice, under the ``nn.LSTM`` name
(``weight_ih_l0``) and under its cell's name (``l0.ih.weight``). Opacus only
drops the second name when the LSTM itself is the root of ``state_dict()``, so
inside a model every LSTM tensor would appear twice. Two hooks below keep this
model's ``state_dict()`` to one entry per parameter (the ``nn.LSTM`` names), so
code that ships or clips the state dict sees each weight once.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from opacus.layers import DPLSTM
from torch import nn

from fedpriv.shared_models.pooling import masked_mean
from fedpriv.shared_models.tokenizer import PAD_ID

__all__ = ["LSTMClassifier"]

logger = logging.getLogger(__name__)


def _renamed_submodules(module: nn.Module) -> list[tuple[str, DPLSTM]]:
    """Every ``DPLSTM`` inside ``module``, with its dotted path plus a trailing dot."""
    return [
        (f"{name}." if name else "", sub)
        for name, sub in module.named_modules()
        if isinstance(sub, DPLSTM)
    ]


def _drop_alias_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: remove the duplicate cell-name keys of every ``DPLSTM``, in place."""
    for path, lstm in _renamed_submodules(module):
        for old_name in lstm.old_to_new:
            state_dict.pop(prefix + path + old_name, None)


def _restore_alias_keys(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: refill the cell-name keys that :func:`_drop_alias_keys` removed."""
    for path, lstm in _renamed_submodules(module):
        for old_name, new_name in lstm.old_to_new.items():
            old_key, new_key = prefix + path + old_name, prefix + path + new_name
            if new_key in state_dict and old_key not in state_dict:
                state_dict[old_key] = state_dict[new_key]


class LSTMClassifier(nn.Module):
    """Sequence classifier: (B, T) int64 token ids -> (B, num_classes) logits.

    Construct it through :func:`fedpriv.shared_models.build_model`, which validates the
    settings; the constructor itself assumes they are valid.

    Args:
        vocab_size: Token ids must lie in [0, vocab_size).
        num_classes: Number of output logits; the vocabulary size for
            next-character prediction.
        width: Embedding size and LSTM hidden size.
        depth: Number of stacked LSTM layers (>= 1).
        pooling: ``"last"`` or ``"mean"`` (:mod:`fedpriv.shared_models.pooling`).
    """

    def __init__(
        self, *, vocab_size: int, num_classes: int, width: int, depth: int, pooling: str = "last"
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, width)
        self.lstm = DPLSTM(width, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, num_classes)
        # Registered on this model, not on the DPLSTM: Opacus's own hook there
        # returns a fresh dict, so a hook after it would edit the wrong one.
        self.register_state_dict_post_hook(_drop_alias_keys)
        self.register_load_state_dict_pre_hook(_restore_alias_keys)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Classify each sequence (with ``"last"``: predict the token that follows it).

        Args:
            tokens: Int64 tensor (B, T) of token ids in [0, vocab_size), T >= 1.

        Returns:
            Logits, float tensor (B, num_classes), read from the last time step
            or the mean over non-PAD steps.
        """
        if tokens.dim() != 2 or tokens.shape[1] == 0:
            raise ValueError(
                f"LSTMClassifier expects token ids shaped (B, T) with T >= 1, "
                f"got {tuple(tokens.shape)}"
            )
        outputs, _ = self.lstm(self.embed(tokens))
        if self.pooling == "mean":
            return self.head(masked_mean(outputs, tokens != PAD_ID))
        return self.head(outputs[:, -1])
