"""Client-level DP at the coordinator: Flower's DP wrappers, and their accountant.

Client-level DP protects a client's whole participation: each client's update
is clipped to an L2 norm C (by the server, or by the client itself), the
clipped updates are averaged with equal weights, and Gaussian noise of std
``z * C / m`` is added to the mean of the ``m`` updates (that is, ``z * C`` to
their sum, whose sensitivity to one client is C). This is DP-FedAvg (McMahan
et al. 2018), run by Flower's
``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`` wrappers.

Accounting: every round that releases an aggregate is one Gaussian mechanism
with noise multiplier ``z``; the releases compose over the run. fedpriv does
not claim privacy amplification by sampling clients (Flower samples a fixed
number of clients without replacement, which the usual Poisson analysis does
not cover), so the epsilon is that of ``releases`` compositions of the plain
Gaussian mechanism, computed with the same accountant code as the clients'
example-level epsilon (Opacus RDP/PRV with sampling rate 1). With adaptive
clipping, ``z`` is the total noise: Flower splits it between the update and
the noisy count of clipped clients (Andrew et al. 2021), which together cost
what one Gaussian mechanism with multiplier ``z`` costs.

The number of clients averaged each round (``m``) is the number that replied,
and it is treated as public.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedpriv.shared_models.accounting import StepPlan, client_level_noise
from fedpriv.shared_models.config import ClientDPConfig, DPConfig
from fedpriv.shared_models.errors import PrivacyBudgetError
from fedpriv.shared_models.ledger import PrivacyLedger
from fedpriv.shared_models.messages import CLIENT_CLIP_MODE

logger = logging.getLogger(__name__)


@dataclass
class ClientLevelLedger:
    """The federation's client-level privacy spend: one Gaussian release per aggregated round.

    The releases are spends of a :class:`~fedpriv.shared_models.ledger.PrivacyLedger`
    (noise ``z``, sampling rate 1, one step each), so they compose with the same
    code as every other epsilon.

    Args:
        noise_multiplier: ``z``, fixed for the run.
        delta: the delta every epsilon is reported at.
        accountant: ``"rdp"`` or ``"prv"``.
        budget: the federation's cumulative client-level epsilon cap (``None``: none).
        ledger: the releases so far.
    """

    noise_multiplier: float
    delta: float
    accountant: str
    budget: float | None = None
    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)

    @classmethod
    def for_run(cls, client_dp: ClientDPConfig, dp: DPConfig, rounds: int) -> ClientLevelLedger:
        """The ledger of a run, its noise given or derived from the budget over ``rounds``."""
        noise = client_dp.noise_multiplier or client_level_noise(
            client_dp.target_epsilon,  # type: ignore[arg-type]  # validated: one is set
            rounds,
            delta=dp.delta,
            accountant=dp.accountant,
        )
        return cls(
            noise_multiplier=noise,
            delta=dp.delta,
            accountant=dp.accountant,
            budget=client_dp.target_epsilon,
        )

    @property
    def releases(self) -> int:
        """How many noisy aggregates have been released so far."""
        return sum(s.steps for s in self.ledger.spends)

    def epsilon(self) -> float:
        """Cumulative client-level epsilon so far (0.0 before the first release)."""
        return self.ledger.epsilon(self.delta, self.accountant)

    def epsilon_after(self, more: int = 1) -> float:
        """Cumulative epsilon if ``more`` further aggregates were released."""
        return self.ledger.epsilon_after(
            self.noise_multiplier,
            StepPlan(sample_rate=1.0, steps=more),
            self.delta,
            self.accountant,
        )

    def check_budget(self) -> None:
        """Raise :class:`PrivacyBudgetError` if one more release would exceed the budget."""
        after = self.epsilon_after(1)
        if self.budget is not None and after > self.budget:
            raise PrivacyBudgetError(
                f"the federation's client-level budget ε={self.budget:g} is spent: one more "
                f"round would reach ε={after:.3f} (δ={self.delta:g}, {self.accountant.upper()}, "
                f"spent so far {self.epsilon():.3f} in {self.releases} round(s))"
            )

    def record_release(self, server_round: int) -> None:
        """Count the aggregate of ``server_round`` as released."""
        self.ledger.record(
            run_id=0,
            server_round=server_round,
            noise_multiplier=self.noise_multiplier,
            sample_rate=1.0,
            steps=1,
        )

    def state_dict(self) -> dict[str, object]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
            "accountant": self.accountant,
            "budget": self.budget,
            "ledger": self.ledger.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> ClientLevelLedger:
        return cls(
            noise_multiplier=float(state["noise_multiplier"]),  # type: ignore[arg-type]
            delta=float(state["delta"]),  # type: ignore[arg-type]
            accountant=str(state["accountant"]),
            budget=None if state["budget"] is None else float(state["budget"]),  # type: ignore[arg-type]
            ledger=PrivacyLedger.from_state_dict(state["ledger"]),
        )


class _QuantileTracking:
    """Adaptive clipping's norm update as Andrew et al. (2021) define it.

    The clipping norm C tracks the ``target_clipped_quantile`` (gamma) of the
    update norms: with b the (noisy) fraction of updates NOT clipped,
    ``C <- C * exp(-lr * (b - gamma))``, so C grows while too many updates are
    clipped. Flower 1.41 plugs the fraction of clipped updates in for b, which
    moves C the wrong way (it shrinks towards 0 when every update is clipped);
    this mixin puts the unclipped fraction back.
    """

    clipping_norm: float
    clip_norm_lr: float
    target_clipped_quantile: float

    def _geometric_update(self, clipped_fraction: float) -> None:
        unclipped = 1.0 - clipped_fraction
        self.clipping_norm *= math.exp(
            -self.clip_norm_lr * (unclipped - self.target_clipped_quantile)
        )


class ServerSideAdaptiveClipping(_QuantileTracking, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping wrapper, norm update per Andrew et al."""


class ClientSideAdaptiveClipping(_QuantileTracking, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping wrapper, norm update per Andrew et al."""


def wrap_client_dp(
    strategy: Strategy, client_dp: ClientDPConfig, noise_multiplier: float, num_clients: int
) -> Strategy:
    """``strategy`` (FedAvg, equal client weights) in the Flower DP wrapper ``client_dp`` names.

    ``num_clients`` is only the initial size; :func:`fedpriv.server.strategies.fit_to_replies`
    updates it to the number of replies before each aggregation.
    """
    if client_dp.adaptive:
        # Noise on the count of clipped clients: std sigma_b = z gives the update
        # noise multiplier (z^-2 - (2 z)^-2)^-1/2, and the pair costs what one
        # Gaussian mechanism with multiplier z costs (Andrew et al. 2021, Thm 1).
        adaptive = (
            ClientSideAdaptiveClipping if client_dp.client_side else ServerSideAdaptiveClipping
        )
        return adaptive(
            strategy,
            noise_multiplier,
            num_clients,
            initial_clipping_norm=client_dp.clipping_norm,
            target_clipped_quantile=client_dp.target_quantile,
            clip_norm_lr=client_dp.clip_learning_rate,
            clipped_count_stddev=noise_multiplier,
        )
    fixed = (
        DifferentialPrivacyClientSideFixedClipping
        if client_dp.client_side
        else DifferentialPrivacyServerSideFixedClipping
    )
    return fixed(strategy, noise_multiplier, client_dp.clipping_norm, num_clients)


def clipping_norm(strategy: Strategy) -> float | None:
    """The DP wrapper's current clipping norm (it moves with adaptive clipping)."""
    value = getattr(strategy, "clipping_norm", None)
    return None if value is None else float(value)


def train_config(client_dp: ClientDPConfig) -> ConfigRecord:
    """What the train instruction tells clients about clipping (client-side modes only)."""
    if not client_dp.client_side:
        return ConfigRecord()
    return ConfigRecord({CLIENT_CLIP_MODE: "adaptive" if client_dp.adaptive else "fixed"})
