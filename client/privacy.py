"""A client's privacy ledger: what its records have spent, across rounds.

Example-level DP: each client runs DP-SGD (Poisson-subsampled Gaussian
mechanism) on its own records. The ledger keeps the full composition history
``[(noise_multiplier, sample_rate, steps), ...]`` of every round the client
took part in, so the epsilon it reports is cumulative over the whole run, not
one round's (the mistake of building a fresh accountant every round).

The math is Opacus's accountants (``rdp``: RDPAccountant, ``prv``:
PRVAccountant), called through pure functions; the ledger is a small object
with ``state_dict()``/``load_state_dict()`` that lives in the node's
``context.state`` between rounds.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ConfigRecord
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from shared_models.config import ACCOUNTANTS
from shared_models.errors import ConfigError, PrivacyBudgetError

History = list[tuple[float, float, int]]


@dataclass(frozen=True)
class StepPlan:
    """How many DP-SGD steps one round takes, at which sampling rate.

    Mirrors Opacus's ``DPDataLoader``: ``sample_rate = 1 / len(loader)`` with
    ``len(loader) = ceil(n / batch_size)``, and ``int(1 / sample_rate)`` steps
    per epoch (which is one less than ``len(loader)`` for some sizes, e.g. 93).
    """

    sample_rate: float
    steps: int


def plan_round(num_examples: int, batch_size: int, local_epochs: int) -> StepPlan:
    """The sampling rate and number of steps of one round of local DP-SGD."""
    if num_examples < 1:
        raise ConfigError(f"a client needs at least one training example, got {num_examples}")
    sample_rate = 1 / math.ceil(num_examples / batch_size)
    return StepPlan(sample_rate=sample_rate, steps=local_epochs * int(1 / sample_rate))


def compute_epsilon(history: History, delta: float, accountant: str) -> float:
    """Cumulative epsilon at ``delta`` of a composition ``history``.

    Returns 0.0 for an empty history (nothing spent yet). RDP uses Opacus's
    RDP analysis and its default orders; PRV uses Opacus's PRVAccountant with
    an epsilon error of at most ``PRV_EPS_ERROR`` (its default, 0.01, is over
    1% of small epsilons).
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant '{accountant}'; choose one of: {ACCOUNTANTS}")
    key = tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)
    return _epsilon(key, float(delta), accountant) if key else 0.0


PRV_EPS_ERROR = 1e-3


@functools.lru_cache(maxsize=1024)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if accountant == "rdp":
        # What RDPAccountant.get_privacy_spent computes, with the per-step RDP
        # curve of each mechanism cached (RDP composes additively over steps).
        rdp = sum(n * _rdp_per_step(s, q) for s, q, n in history)
        with _largest_alpha_is_fine():
            eps, _ = rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
            )
        return float(eps)
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    # At sampling rate 1 (client-level releases) Opacus's PRV takes log(1 - q) = log(0),
    # which numpy warns about; the result is still right (checked against Google's PLD).
    with np.errstate(divide="ignore"):
        return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


@contextlib.contextmanager
def _largest_alpha_is_fine() -> Iterator[None]:
    """Silence Opacus's "Optimal order is the largest alpha" (and only that).

    It says a larger Renyi order might give a *smaller* epsilon: the figure is
    valid and conservative. It fires at extreme settings (tiny budgets, a
    planner's search), and would break the one-line error of the commands.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate,
            noise_multiplier=noise_multiplier,
            steps=1,
            orders=RDPAccountant.DEFAULT_ALPHAS,
        )
    )


@functools.lru_cache(maxsize=64)
def noise_for_target(
    *, target_epsilon: float, delta: float, plan: StepPlan, rounds: int, accountant: str
) -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``rounds`` rounds.

    The result spends at most ``target_epsilon`` (Opacus searches to within
    0.01 below it) if the client takes part in all ``rounds`` rounds. Cached:
    the search costs seconds and clients of equal size share the answer.
    """
    total_steps = plan.steps * rounds
    try:
        with _largest_alpha_is_fine():
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=plan.sample_rate,
                    steps=total_steps,
                    accountant=accountant,
                )
            )
    except ValueError as err:
        raise PrivacyBudgetError(
            f"cannot reach epsilon {target_epsilon} at delta {delta} in {total_steps} steps "
            f"at sampling rate {plan.sample_rate:.4g}: {err}"
        ) from None


@dataclass
class PrivacyLedger:
    """The composition history of one client's DP-SGD, and its budget.

    Args:
        accountant: ``"rdp"`` or ``"prv"``.
        delta: the delta every epsilon of this ledger is reported at.
        budget: the cumulative epsilon this client may spend (``None``: no cap).
        noise_multiplier: fixed for the whole run once chosen (derived from the
            budget in round one, or given).
        history: ``[(noise_multiplier, sample_rate, steps), ...]``, consecutive
            entries with the same mechanism merged (as Opacus does).
    """

    accountant: str
    delta: float
    budget: float | None = None
    noise_multiplier: float | None = None
    history: History = field(default_factory=list)

    def epsilon(self) -> float:
        """Cumulative epsilon spent so far, at ``self.delta``."""
        return compute_epsilon(self.history, self.delta, self.accountant)

    def epsilon_after(self, noise_multiplier: float, plan: StepPlan) -> float:
        """Cumulative epsilon if one more round of ``plan`` were spent."""
        return compute_epsilon(
            merged_history(self.history, noise_multiplier, plan.sample_rate, plan.steps),
            self.delta,
            self.accountant,
        )

    def check_budget(self, noise_multiplier: float, plan: StepPlan) -> float:
        """Raise :class:`PrivacyBudgetError` if the next round would overspend.

        Returns the cumulative epsilon the round would lead to.
        """
        after = self.epsilon_after(noise_multiplier, plan)
        if self.budget is not None and after > self.budget:
            raise PrivacyBudgetError(
                f"declining round: cumulative epsilon would reach {after:.3f} > budget "
                f"{self.budget:g} (delta={self.delta:g}, {self.accountant}); "
                f"spent so far {self.epsilon():.3f}"
            )
        return after

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` DP-SGD steps that were actually taken."""
        self.history = merged_history(self.history, noise_multiplier, sample_rate, steps)

    def state_dict(self) -> dict[str, object]:
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "budget": self.budget,
            "noise_multiplier": self.noise_multiplier,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state["accountant"] != self.accountant or state["delta"] != self.delta:
            raise ConfigError(
                f"saved ledger is for accountant {state['accountant']} at delta "
                f"{state['delta']}, but this run uses {self.accountant} at delta {self.delta}"
            )
        self.budget = state["budget"]  # type: ignore[assignment]
        self.noise_multiplier = state["noise_multiplier"]  # type: ignore[assignment]
        self.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]  # type: ignore[attr-defined]

    # -- context.state holds records, not dicts --

    def to_config_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "accountant": self.accountant,
                "delta": self.delta,
                "budget": -1.0 if self.budget is None else self.budget,
                "noise-multiplier": -1.0
                if self.noise_multiplier is None
                else self.noise_multiplier,
                "sigmas": [h[0] for h in self.history],
                "rates": [h[1] for h in self.history],
                "steps": [h[2] for h in self.history],
            }
        )

    @classmethod
    def from_config_record(cls, record: ConfigRecord) -> PrivacyLedger:
        budget = float(record["budget"])  # type: ignore[arg-type]
        noise = float(record["noise-multiplier"])  # type: ignore[arg-type]
        sigmas = cast(list[float], record["sigmas"])
        rates = cast(list[float], record["rates"])
        steps = cast(list[int], record["steps"])
        return cls(
            accountant=str(record["accountant"]),
            delta=float(record["delta"]),  # type: ignore[arg-type]
            budget=None if budget < 0 else budget,
            noise_multiplier=None if noise < 0 else noise,
            history=[
                (float(s), float(q), int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)
            ],
        )


def merged_history(
    history: History, noise_multiplier: float, sample_rate: float, steps: int
) -> History:
    """``history`` plus ``steps`` steps of a mechanism (merged into an equal last entry)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    merged = list(history)
    if merged and merged[-1][:2] == (noise_multiplier, sample_rate):
        merged[-1] = (noise_multiplier, sample_rate, merged[-1][2] + steps)
    elif steps:
        merged.append((noise_multiplier, sample_rate, steps))
    return merged
