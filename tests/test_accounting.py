"""Every epsilon fedpriv reports, against Google's dp-accounting computed independently."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from client.privacy import PrivacyLedger, StepPlan, compute_epsilon, noise_for_target, plan_round
from shared_models.errors import PrivacyBudgetError


def google_epsilon(history, delta: float, method: str) -> float:
    """Epsilon of a DP-SGD history with dp-accounting (RDP or PLD)."""
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for sigma, q, steps in history
    ]
    accountant = RdpAccountant() if method == "rdp" else PLDAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(delta)


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
    ledger = PrivacyLedger(accountant="rdp", delta=delta)
    for _ in range(rounds):
        ledger.record(sigma, plan.sample_rate, plan.steps)
    ours = ledger.epsilon()
    theirs = google_epsilon([(sigma, plan.sample_rate, plan.steps)] * rounds, delta, "rdp")
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.parametrize(("sigma", "n", "batch", "epochs", "rounds", "delta"), SETTINGS[:3])
def test_cumulative_prv_epsilon_matches_google_pld(sigma, n, batch, epochs, rounds, delta):
    plan = plan_round(n, batch, epochs)
    ledger = PrivacyLedger(accountant="prv", delta=delta)
    for _ in range(rounds):
        ledger.record(sigma, plan.sample_rate, plan.steps)
    theirs = google_epsilon([(sigma, plan.sample_rate, plan.steps)] * rounds, delta, "pld")
    assert ledger.epsilon() == pytest.approx(theirs, rel=0.01)


def test_heterogeneous_history_matches_google():
    history = [(2.0, 0.1, 30), (1.0, 0.05, 100), (2.0, 0.1, 30)]
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    for entry in history:
        ledger.record(*entry)
    assert ledger.epsilon() == pytest.approx(google_epsilon(history, 1e-5, "rdp"), rel=0.01)


def test_epsilon_is_cumulative_and_grows_with_rounds():
    plan = plan_round(115, 32, 1)
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    previous = 0.0
    for rounds in range(1, 6):
        ledger.record(1.5, plan.sample_rate, plan.steps)
        assert ledger.epsilon() > previous
        # k rounds cost exactly what k * steps of the same mechanism cost
        same = compute_epsilon([(1.5, plan.sample_rate, rounds * plan.steps)], 1e-5, "rdp")
        assert ledger.epsilon() == pytest.approx(same, rel=1e-12)
        previous = ledger.epsilon()


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
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=two_rounds * 1.0001)
    for _ in range(2):
        ledger.check_budget(1.5, plan)
        ledger.record(1.5, plan.sample_rate, plan.steps)
    with pytest.raises(PrivacyBudgetError, match="declining round"):
        ledger.check_budget(1.5, plan)
    assert ledger.epsilon() <= ledger.budget


def test_ledger_round_trips_through_state_and_records():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, budget=8.0, noise_multiplier=1.2)
    ledger.record(1.2, 0.25, 4)
    ledger.record(1.2, 0.25, 4)  # merged, as Opacus merges
    ledger.record(0.9, 0.5, 2)
    assert ledger.history == [(1.2, 0.25, 8), (0.9, 0.5, 2)]
    again = PrivacyLedger.from_config_record(ledger.to_config_record())
    assert again == ledger
    other = PrivacyLedger(accountant="rdp", delta=1e-5)
    other.load_state_dict(ledger.state_dict())
    assert other.epsilon() == ledger.epsilon() and other.budget == 8.0
    assert math.isfinite(ledger.epsilon())
