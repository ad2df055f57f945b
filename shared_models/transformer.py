"""A small transformer encoder for sequence classification under DP-SGD.

Written in the spirit of nanoGPT's ``model.py``: token embedding plus a learned
positional embedding, ``depth`` pre-LayerNorm blocks (attention, then an MLP,
each added back through a residual), a final LayerNorm, and a linear head on the
last position. There is no causal mask: the last position attends to the whole
window and emits one set of logits for it.

``torch.nn.MultiheadAttention`` computes its projections with one fused
functional call that Opacus cannot hook, so attention uses
``opacus.layers.DPMultiheadAttention``, built from separate ``nn.Linear``
layers whose per-sample gradients Opacus knows how to compute. Its forward is
``(query, key, value, key_padding_mask=None, need_weights=True,
attn_mask=None, is_causal=False) -> (output, weights)``; ``is_causal=True`` is
rejected, and a causal mask would have to be passed as ``attn_mask``.

Every trainable layer is an ``nn.Embedding``, ``nn.Linear`` or ``nn.LayerNorm``,
all of which Opacus supports; LayerNorm, unlike BatchNorm, acts on each sample
on its own.
"""

from __future__ import annotations

import logging

import torch
from opacus.layers import DPMultiheadAttention
from torch import nn

__all__ = ["TransformerClassifier"]

logger = logging.getLogger(__name__)

#: Hidden size of each block's MLP, as a multiple of the model width.
MLP_RATIO = 4

#: Standard deviation of the normal initialisation of weights (as in GPT-2).
INIT_STD = 0.02


class MLP(nn.Module):
    """Position-wise feed-forward layer: Linear -> GELU -> Linear, shape preserving."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, width) to (B, T, width)."""
        return self.proj(self.gelu(self.fc(x)))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = DPMultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, width) to (B, T, width)."""
        h = self.ln_1(x)
        attended, _ = self.attn(h, h, h, need_weights=False)
        x = x + attended
        return x + self.mlp(self.ln_2(x))


class TransformerClassifier(nn.Module):
    """Sequence classifier: (B, T) int64 token ids, T <= seq_len -> (B, num_classes) logits.

    Construct it through :func:`shared_models.build_model`, which validates the
    settings; the constructor itself assumes they are valid.

    Args:
        vocab_size: Token ids must lie in [0, vocab_size).
        seq_len: Longest accepted input, in tokens (size of the positional table).
        num_classes: Number of output logits; the vocabulary size for
            next-character prediction.
        width: Model dimension; must be divisible by ``heads``.
        depth: Number of transformer blocks (>= 1).
        heads: Attention heads per block.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        num_classes: int,
        width: int,
        depth: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Classify each window of tokens.

        Args:
            tokens: Int64 tensor (B, T) of token ids in [0, vocab_size),
                1 <= T <= seq_len.

        Returns:
            Logits, float tensor (B, num_classes).

        Raises:
            ValueError: If ``tokens`` is not 2-D or longer than ``seq_len``.
        """
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.seq_len:
            raise ValueError(
                f"TransformerClassifier expects token ids shaped (B, T) with "
                f"1 <= T <= seq_len={self.seq_len}, got {tuple(tokens.shape)}"
            )
        batch, length = tokens.shape
        # Positions carry the batch dimension so Opacus's Embedding grad sampler,
        # which reads the batch size from the input, gives true per-sample gradients.
        positions = torch.arange(length, device=tokens.device).expand(batch, length)
        x = self.token_embed(tokens) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        # The last position, which attends to the whole window, reads it out (as the
        # LSTM's last step does): next-character prediction depends on the most
        # recent characters, which a mean over time would blur away.
        return self.head(self.ln_f(x)[:, -1])


def _init_weights(module: nn.Module) -> None:
    """GPT-2 style initialisation: N(0, 0.02) weights, zero biases, for Linear and Embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
