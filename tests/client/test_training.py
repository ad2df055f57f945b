"""DP-SGD as fedpriv runs it: clipping bound and noise scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedpriv.client.training import DPStep, train_locally


def _clipped_gradient_of_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float):
    """The clipped gradient Opacus accumulates for a single example (noise off)."""
    loader = DataLoader(TensorDataset(x[None], y[None]), batch_size=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    private, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    loss = nn.functional.cross_entropy(private(x[None]), y[None])
    loss.backward()
    raw = torch.cat([p.grad_sample.flatten() for p in model.parameters()])
    optimizer.clip_and_accumulate()
    clipped = torch.cat([p.summed_grad.flatten() for p in model.parameters()])
    return raw, clipped


@pytest.mark.parametrize("clip", [0.01, 0.5, 1.0, 100.0])
def test_per_sample_clipping_bounds_every_norm(clip):
    torch.manual_seed(0)
    for i in range(8):
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
        x, y = torch.randn(6) * (i + 1), torch.tensor(i % 3)
        raw, clipped = _clipped_gradient_of_one(model, x, y, clip)
        assert clipped.norm() <= clip * (1 + 1e-5)
        if raw.norm() <= clip:  # an already-small gradient is left alone
            assert torch.allclose(clipped, raw, atol=1e-7)
        else:  # a large one is scaled down to the bound, same direction
            assert clipped.norm() == pytest.approx(clip, rel=1e-4)
            assert torch.allclose(clipped / clipped.norm(), raw / raw.norm(), atol=1e-5)


def test_zero_gradient_stays_zero():
    model = nn.Linear(4, 2, bias=False)
    nn.init.zeros_(model.weight)
    # equal logits and a zero input: the weight gradient is exactly zero
    raw, clipped = _clipped_gradient_of_one(model, torch.zeros(4), torch.tensor(1), 1.0)
    assert raw.abs().max() == 0 and clipped.abs().max() == 0


@pytest.mark.parametrize(("sigma", "clip"), [(1.0, 1.0), (0.5, 2.0), (2.0, 0.3)])
def test_noise_has_the_configured_scale(sigma, clip):
    """Through fedpriv's own training loop: a weight whose data gradient is zero
    moves by pure noise, lr * N(0, (sigma * clip)^2) / expected batch size."""
    n, d_in, d_out, lr = 8, 500, 40, 1.0
    model = nn.Linear(d_in, d_out, bias=False)
    nn.init.zeros_(model.weight)
    x = np.zeros((n, d_in), dtype=np.float32)  # zero inputs: zero per-sample gradients
    y = np.arange(n, dtype=np.int64) % d_out
    result = train_locally(
        model,
        x,
        y,
        epochs=1,
        batch_size=n,
        learning_rate=lr,
        dp=DPStep(noise_multiplier=sigma, max_grad_norm=clip, accountant="rdp"),
        device=torch.device("cpu"),
        seed=123,
    )
    assert result.steps == 1  # batch_size >= n: sampling rate 1, one step
    update = result.state_dict["weight"].flatten().double()  # started at zero
    expected_std = lr * sigma * clip / n
    count = update.numel()
    assert update.std().item() == pytest.approx(expected_std, rel=4 / np.sqrt(2 * count) * 2)
    assert abs(update.mean().item()) < 4 * expected_std / np.sqrt(count)


def test_no_noise_without_dp():
    model = nn.Linear(10, 2, bias=False)
    nn.init.zeros_(model.weight)
    result = train_locally(
        model,
        np.zeros((8, 10), np.float32),
        np.zeros(8, np.int64),
        epochs=1,
        batch_size=8,
        learning_rate=1.0,
        dp=None,
        device=torch.device("cpu"),
        seed=0,
    )
    assert result.state_dict["weight"].abs().max() == 0
    assert result.history == []


def test_empty_poisson_batches_are_noise_only_steps():
    """With 3 examples and sampling rate 1/3, about 30% of Poisson batches are
    empty; each must still be one (noise-only) step, as the accountant counts."""
    from fedpriv.shared_models.accounting import plan_round

    rng = np.random.default_rng(0)
    for seed in range(10):
        model = nn.Linear(4, 2)
        result = train_locally(
            model,
            rng.random((3, 4), dtype=np.float32),
            np.array([0, 1, 0]),
            epochs=3,
            batch_size=1,
            learning_rate=0.1,
            dp=DPStep(noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp"),
            device=torch.device("cpu"),
            seed=seed,
        )
        assert result.steps == plan_round(3, 1, 3).steps == 9
        assert result.history == [(1.0, 1 / 3, 9)]
        assert all(torch.isfinite(v).all() for v in result.state_dict.values())
