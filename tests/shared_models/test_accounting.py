"""Every epsilon fedpriv reports, against Google's dp-accounting computed independently."""

from __future__ import annotations

import math

import pytest
from support.google_dp import dpsgd_epsilon as google_epsilon

from fedpriv.shared_models.accounting import (
    StepPlan,
    compute_epsilon,
    noise_for_target,
    plan_round,
)
from fedpriv.shared_models.errors import PrivacyBudgetError
from fedpriv.shared_models.ledger import PrivacyLedger, check_round


def _spend(ledger: PrivacyLedger, sigma: float, rate: float, steps: int, rnd: int = 1) -> None:
    ledger.record(run_id=1, server_round=rnd, noise_multiplier=sigma, sample_rate=rate, steps=steps)


# (noise multiplier, examples, batch size, local epochs, rounds, delta)
SETTINGS = [
    (1.67, 115, 32, 1, 20, 1e-5),  # the default simulation's clients
    (1.1, 60_000, 256, 1, 5, 1e-5),  # MNIST-sized client
    (0.8, 500, 50, 2, 10, 1e-6),
    (3.0, 2_000, 20, 1, 30, 1e-5),  # small sampling rate
]


@pytest.mark.parametrize(("sigma", "n", "batch", "epochs", "rounds", "delta"), SETTINGS)
def test_cumulative_rdp_epsilon_matches_google_rdp(sigma, n, batch, epochs, rounds, delta):
    plan = plan_round(n, batch, epochs)
    ledger = PrivacyLedger()
    for _ in range(rounds):
        _spend(ledger, sigma, plan.sample_rate, plan.steps)
    ours = ledger.epsilon(delta, "rdp")
    theirs = google_epsilon([(sigma, plan.sample_rate, plan.steps)] * rounds, delta, "rdp")
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize(("sigma", "n", "batch", "epochs", "rounds", "delta"), SETTINGS[:3])
def test_cumulative_prv_epsilon_matches_google_pld(sigma, n, batch, epochs, rounds, delta):
    plan = plan_round(n, batch, epochs)
    ledger = PrivacyLedger()
    for _ in range(rounds):
        _spend(ledger, sigma, plan.sample_rate, plan.steps)
    theirs = google_epsilon([(sigma, plan.sample_rate, plan.steps)] * rounds, delta, "pld")
    assert ledger.epsilon(delta, "prv") == pytest.approx(theirs, rel=0.01)


def test_heterogeneous_history_matches_google():
    history = [(2.0, 0.1, 30), (1.0, 0.05, 100), (2.0, 0.1, 30)]
    ledger = PrivacyLedger()
    for entry in history:
        _spend(ledger, *entry)
    assert ledger.epsilon(1e-5, "rdp") == pytest.approx(
        google_epsilon(history, 1e-5, "rdp"), rel=0.01
    )


def test_epsilon_is_cumulative_and_grows_with_rounds():
    plan = plan_round(115, 32, 1)
    ledger = PrivacyLedger()
    previous = 0.0
    for rounds in range(1, 6):
        _spend(ledger, 1.5, plan.sample_rate, plan.steps, rnd=rounds)
        assert ledger.epsilon(1e-5, "rdp") > previous
        # k rounds cost exactly what k * steps of the same mechanism cost
        same = compute_epsilon([(1.5, plan.sample_rate, rounds * plan.steps)], 1e-5, "rdp")
        assert ledger.epsilon(1e-5, "rdp") == pytest.approx(same, rel=1e-12)
        previous = ledger.epsilon(1e-5, "rdp")


def test_plan_mirrors_opacus_dataloader():
    # Opacus takes int(1 / sample_rate) steps per epoch: 92, not 93, for 93 batches.
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    for n, batch in [(115, 32), (93 * 4, 4), (10, 64), (1000, 7)]:
        loader = DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=batch)
        dp_loader = DPDataLoader.from_data_loader(loader)
        plan = plan_round(n, batch, local_epochs=3)
        assert plan.sample_rate == dp_loader.sample_rate
        assert plan.steps == 3 * len(dp_loader)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_for_target_round_trip(accountant):
    plan = StepPlan(sample_rate=0.25, steps=4)
    sigma = noise_for_target(
        target_epsilon=3.0, delta=1e-5, plan=plan, rounds=10, accountant=accountant
    )
    spent = compute_epsilon([(sigma, 0.25, 40)], 1e-5, accountant)
    assert 3.0 - 0.05 <= spent <= 3.0
    # a little less noise overspends: the search did not stop early
    assert compute_epsilon([(sigma * 0.97, 0.25, 40)], 1e-5, accountant) > 3.0


def test_budget_check_refuses_the_round_that_would_overspend():
    plan = StepPlan(sample_rate=0.25, steps=4)
    two_rounds = compute_epsilon([(1.5, 0.25, 8)], 1e-5, "rdp")
    ledger = PrivacyLedger()
    check = {"noise_multiplier": 1.5, "plan": plan, "delta": 1e-5, "accountant": "rdp"}
    for rnd in (1, 2):
        check_round(ledger, **check, run_budget=two_rounds * 1.0001)
        _spend(ledger, 1.5, plan.sample_rate, plan.steps, rnd)
    with pytest.raises(PrivacyBudgetError, match="declining round"):
        check_round(ledger, **check, run_budget=two_rounds * 1.0001)
    assert ledger.epsilon(1e-5, "rdp") <= two_rounds * 1.0001
    # the owner's own cap wins when it is lower, whatever the run asks
    ledger.node_budget = 1.0
    with pytest.raises(PrivacyBudgetError, match="the node's own budget"):
        check_round(ledger, **check, run_budget=100.0)


def test_ledger_merges_like_opacus_and_round_trips_through_its_json():
    ledger = PrivacyLedger(node_budget=8.0)
    _spend(ledger, 1.2, 0.25, 4)
    _spend(ledger, 1.2, 0.25, 4, rnd=2)  # merged, as Opacus merges
    _spend(ledger, 0.9, 0.5, 2, rnd=3)
    assert ledger.history() == [(1.2, 0.25, 8), (0.9, 0.5, 2)]
    assert ledger.run_noise == {1: 1.2}  # the noise of the run's first round
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again == ledger
    assert again.epsilon(1e-5, "rdp") == ledger.epsilon(1e-5, "rdp")
    assert math.isfinite(ledger.epsilon(1e-5, "rdp"))
