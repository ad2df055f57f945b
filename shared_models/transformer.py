"""A small transformer encoder for sequence classification under DP-SGD.

Written in the spirit of nanoGPT's ``model.py``: token embedding plus a learned
positional embedding, ``depth`` pre-LayerNorm blocks (attention, then an MLP,
each added back through a residual), a final LayerNorm, and a linear head. There
is no causal mask. One set of logits per sequence is read out, by ``pooling``:

* ``"last"``: the last position, which attends to the whole window (next-token
  prediction, where the most recent tokens matter most);
* ``"mean"``: the mean over the non-PAD positions (sentence classification,
  right-padded with PAD), so padding never changes the output.

Padding (:data:`~fedpriv.shared_models.tokenizer.PAD_ID`) is masked as an attention key
in both modes: no position attends to it.

``torch.nn.MultiheadAttention`` computes its projections with one fused
functional call that Opacus cannot hook. Opacus's replacement,
``opacus.layers.DPMultiheadAttention``, is wrong with ``batch_first=True`` in
Opacus 1.6: it reshapes its (B*heads, T, head_dim) output straight to
(B, T, width), splicing heads into time positions (opacus PR #825), while with
``batch_first=False`` its ``nn.Linear`` layers would see the time axis first,
and Opacus's per-sample gradients need the batch first. Attention here is
therefore :class:`SelfAttention`, as in nanoGPT: one ``nn.Linear`` for the
query, key and value projections, ``scaled_dot_product_attention`` (no
parameters, so nothing for Opacus to hook) and one ``nn.Linear`` out.

Every trainable layer is an ``nn.Embedding``, ``nn.Linear`` or ``nn.LayerNorm``,
all of which Opacus supports; LayerNorm, unlike BatchNorm, acts on each sample
on its own.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fedpriv.shared_models.pooling import masked_mean
from fedpriv.shared_models.tokenizer import PAD_ID

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


class SelfAttention(nn.Module):
    """Multi-head self-attention from ``nn.Linear`` layers; shape preserving.

    Args:
        width: Model dimension; must be divisible by ``heads``.
        heads: Number of attention heads, each of size ``width // heads``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map (B, T, width) to (B, T, width); no query attends to a key where ``pad_mask``
        (B, T) is True. Every row needs at least one key left unmasked."""
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )  # each (B, heads, T, head_dim)
        allowed = None if pad_mask is None else ~pad_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """One pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map (B, T, width) to (B, T, width); no position attends where ``pad_mask`` is True."""
        x = x + self.attn(self.ln_1(x), pad_mask)
        return x + self.mlp(self.ln_2(x))


class TransformerClassifier(nn.Module):
    """Sequence classifier: (B, T) int64 token ids, T <= seq_len -> (B, num_classes) logits.

    Construct it through :func:`fedpriv.shared_models.build_model`, which validates the
    settings; the constructor itself assumes they are valid.

    Args:
        vocab_size: Token ids must lie in [0, vocab_size).
        seq_len: Longest accepted input, in tokens (size of the positional table).
        num_classes: Number of output logits; the vocabulary size for
            next-character prediction.
        width: Model dimension; must be divisible by ``heads``.
        depth: Number of transformer blocks (>= 1).
        heads: Attention heads per block.
        pooling: ``"last"`` or ``"mean"`` (:mod:`fedpriv.shared_models.pooling`).
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
        pooling: str = "last",
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.pooling = pooling
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
                1 <= T <= seq_len; PAD (0) marks padding.

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
        is_pad = tokens == PAD_ID
        # A row of padding only would mask every key, and softmax over nothing is
        # NaN: such a row attends to all its positions (its output is unused by
        # "mean", which pools it to zeros).
        pad_mask = is_pad & ~is_pad.all(dim=1, keepdim=True)
        for block in self.blocks:
            x = block(x, pad_mask)
        x = self.ln_f(x)
        if self.pooling == "mean":
            return self.head(masked_mean(x, ~is_pad))
        # The last position, which attends to the whole window, reads it out (as the
        # LSTM's last step does): next-character prediction depends on the most
        # recent characters, which a mean over time would blur away.
        return self.head(x[:, -1])


def _init_weights(module: nn.Module) -> None:
    """GPT-2 style initialisation: N(0, 0.02) weights, zero biases, for Linear and Embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
