"""Poisoning, end to end: two of ten clients send sign-flipped updates (10x, negated).

Plain FedAvg averages them in and falls to chance; MultiKrum drops the two
updates farthest from the rest and stays with the clean run. Three real
federations (Flower simulation on Ray, Opacus DP-SGD at the default ε=8, digits
CNN, 5 rounds), about 30 s each on 2 cores. benchmarks/poisoning.py measures
every strategy against both attacks.

Margins, from seeds 0-2 of these exact settings (2026-11-24; seed 0, the one
used here, gives the same numbers run after run): clean FedAvg 0.78/0.81/0.76;
attacked FedAvg 0.10/0.10/0.02; attacked MultiKrum 0.79/0.80/0.77, within 0.02
of its seed's clean run. Attacked FedMedian (0.64/0.70/0.71) and FedTrimmedAvg
(0.60/0.63/0.71) lag the clean run by 0.05-0.19 after 5 rounds (0.14 and 0.18
at seed 0): the 0.1 margin below would fail them here.
"""

from __future__ import annotations

import pytest

from fedpriv.shared_models.config import RunConfig
from fedpriv.simulations.faults import FaultPlan
from fedpriv.simulations.run import simulate

CLIENTS, ATTACKERS, ROUNDS = 10, 2, 5


def _accuracy(tmp_path_factory, strategy: str, faults: str) -> float:
    config = RunConfig(
        num_clients=CLIENTS,
        rounds=ROUNDS,
        fraction_evaluate=0.0,
        strategy=strategy,
        byzantine_fraction=ATTACKERS / CLIENTS,  # Krum's f = 2
    )
    plan = FaultPlan.parse(faults, CLIENTS, scale=10.0) if faults else None
    summary = simulate(config, tmp_path_factory.mktemp(strategy) / "run", faults=plan)
    assert summary["rounds_completed"] == ROUNDS and summary["privacy"]["epsilon_max"] <= 8.0
    return summary["test_accuracy"]


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory) -> dict[str, float]:
    """Final test accuracy of the clean run and of two attacked runs."""
    attack = f"signflip:{ATTACKERS}"
    return {
        "clean": _accuracy(tmp_path_factory, "fedavg", ""),
        "fedavg": _accuracy(tmp_path_factory, "fedavg", attack),
        "multikrum": _accuracy(tmp_path_factory, "multikrum", attack),
    }


@pytest.mark.slow
def test_sign_flipped_updates_break_fedavg(accuracy):
    assert accuracy["clean"] >= 0.6, accuracy  # the clean run learns
    # measured at most 0.13x the clean run; chance is 0.1
    assert accuracy["fedavg"] < min(0.3, accuracy["clean"] / 2), accuracy


@pytest.mark.slow
def test_multikrum_keeps_the_clean_accuracy_under_sign_flips(accuracy):
    assert accuracy["multikrum"] >= accuracy["clean"] - 0.1, accuracy
