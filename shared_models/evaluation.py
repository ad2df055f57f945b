"""Loss and accuracy of a model on labelled data: the same code on both sides.

Clients evaluate on their held-out split; the server evaluates the global
model on its central test set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedpriv.shared_models.errors import ConfigError


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """Mean cross-entropy loss (nats) and accuracy (fraction in [0, 1])."""
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty set")
    model.to(device).eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb = torch.tensor(x[start : start + batch_size], device=device)
        yb = torch.tensor(y[start : start + batch_size], device=device)
        logits = model(xb)
        total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is available; use auto or cpu"
        )
    return torch.device(name)
