"""Privacy accounting: the pure math both sides compute.

Example-level DP-SGD is a Poisson-subsampled Gaussian mechanism, one per step;
client-level DP is one Gaussian mechanism per released aggregate (sampling
rate 1). Both compose over a *history* ``[(noise_multiplier, sample_rate,
steps), ...]``, and every epsilon fedpriv reports is the composition of a whole
history (cumulative), at a stated delta, under a named accountant:

* ``rdp``: Renyi DP, Opacus's RDP analysis with its default orders;
* ``prv``: privacy random variables, Opacus's ``PRVAccountant`` with an epsilon
  error of at most :data:`PRV_EPS_ERROR`.

Opacus (and with it torch and scipy) is imported on first use, so reading a
ledger or a plan's shape costs nothing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedpriv.shared_models.errors import ConfigError, PrivacyBudgetError

__all__ = [
    "ACCOUNTANTS",
    "PRV_EPS_ERROR",
    "client_level_epsilon",
    "client_level_noise",
    "History",
    "StepPlan",
    "compute_epsilon",
    "merged_history",
    "noise_for_target",
    "plan_round",
]

#: The accountants every epsilon can be computed with.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: Largest error of a PRV epsilon (absolute; Opacus's default 0.01 is over 1% of small epsilons).
PRV_EPS_ERROR = 1e-3

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


def check_accountant(accountant: str) -> str:
    """``accountant`` if it is one of :data:`ACCOUNTANTS`, else a ConfigError."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown accountant '{accountant}'; choose one of: {', '.join(ACCOUNTANTS)}"
        )
    return accountant


def compute_epsilon(history: History, delta: float, accountant: str) -> float:
    """Cumulative epsilon at ``delta`` of a composition ``history``.

    Returns 0.0 for an empty history (nothing spent yet).
    """
    check_accountant(accountant)
    key = tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)
    return _epsilon(key, float(delta), accountant) if key else 0.0


@functools.lru_cache(maxsize=1024)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if accountant == "rdp":
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp as rdp_analysis

        # What RDPAccountant.get_privacy_spent computes, with the per-step RDP
        # curve of each mechanism cached (RDP composes additively over steps).
        rdp = sum(n * _rdp_per_step(s, q) for s, q, n in history)
        with _largest_alpha_is_fine():
            eps, _ = rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
            )
        return float(eps)
    from opacus.accountants import create_accountant

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
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

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
    from opacus.accountants.utils import get_noise_multiplier

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


#: One client-level release: a Gaussian mechanism at "sampling rate" 1 (no amplification).
_RELEASE = StepPlan(sample_rate=1.0, steps=1)


def client_level_epsilon(
    noise_multiplier: float, releases: int, *, delta: float, accountant: str
) -> float:
    """Cumulative client-level epsilon after ``releases`` noisy aggregates, at ``delta``."""
    return compute_epsilon([(noise_multiplier, 1.0, releases)], delta, accountant)


def client_level_noise(
    target_epsilon: float, rounds: int, *, delta: float, accountant: str
) -> float:
    """The noise multiplier with which ``rounds`` releases spend (just under) ``target_epsilon``."""
    try:
        return noise_for_target(
            target_epsilon=target_epsilon,
            delta=delta,
            plan=_RELEASE,
            rounds=rounds,
            accountant=accountant,
        )
    except PrivacyBudgetError as err:
        raise PrivacyBudgetError(f"client-level DP: {err}") from None
