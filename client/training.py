"""Local training: the one loop every model family goes through.

With DP, Opacus wraps the model, optimizer and data loader: Poisson sampling
(``DPDataLoader``, what the accountant assumes), per-sample gradients clipped
to ``max_grad_norm`` and Gaussian noise of std ``noise_multiplier *
max_grad_norm`` added to their sum. The steps Opacus actually took are read
back from its accountant, so the ledger records what happened, not a plan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPStep:
    """How DP-SGD runs this round."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: str


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training produced.

    ``history`` is the composition Opacus recorded this round,
    ``[(noise_multiplier, sample_rate, steps)]``; empty without DP.
    """

    state_dict: dict[str, torch.Tensor]
    num_examples: int
    mean_loss: float
    steps: int
    history: list[tuple[float, float, int]]


def train_locally(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.0,
    dp: DPStep | None,
    device: torch.device,
    seed: int,
) -> LocalResult:
    """Train ``model`` in place on ``(x, y)``; return its unwrapped weights.

    Args:
        epochs: passes over the data (with Poisson sampling, expected passes).
        batch_size: expected batch size; with DP the sampling rate is
            ``1 / ceil(n / batch_size)``.
        dp: DP-SGD settings, or ``None`` for non-private SGD.
        seed: seeds batch sampling and DP noise, for reproducible runs.
    """
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    dataset = TensorDataset(torch.tensor(x), torch.tensor(y))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    engine: PrivacyEngine | None = None
    trained: nn.Module = model
    if dp is not None:
        engine = PrivacyEngine(accountant=dp.accountant)
        # secure_mode stays off: it needs torchcsprng, which has no build for
        # current torch. Noise comes from torch's seeded PRNG.
        trained, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator(device=device).manual_seed(seed + 1),
        )
    loss_fn = nn.CrossEntropyLoss()
    total_loss, total_seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            if len(xb) == 0:
                # Poisson sampling drew an empty batch: still a step (zero
                # per-sample gradients, so noise only), counted like any other.
                trained(xb).sum().backward()
                optimizer.step()
                steps += 1
                continue
            loss = loss_fn(trained(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            total_loss += loss.item() * len(xb)
            total_seen += len(xb)
    history = [] if engine is None else list(engine.accountant.history)
    if engine is not None and sum(h[2] for h in history) != steps:
        raise RuntimeError(f"Opacus recorded {history} but the loop took {steps} steps")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return LocalResult(
        state_dict=state,
        num_examples=len(dataset),
        mean_loss=total_loss / max(total_seen, 1),
        steps=steps,
        history=history,
    )
