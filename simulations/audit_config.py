"""The settings of one privacy audit (``fedpriv-sim audit``), validated on construction.

Kept apart from the audit itself (:mod:`.audit`, which imports torch) so that
the command's ``--help`` and its bad-input errors cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedpriv.shared_models.checks import check_probability_open
from fedpriv.shared_models.config import DPConfig, RunConfig
from fedpriv.shared_models.errors import ConfigError

FAULTS: tuple[str, ...] = ("none", "no-noise")


@dataclass(frozen=True)
class AuditConfig:
    """The settings of one audit; validated on construction.

    The defaults make a broken run (``fault="no-noise"``) fail and a correct
    one pass, in about ten seconds each on two CPU cores. The training
    settings are those of a :class:`~fedpriv.shared_models.config.RunConfig`
    (:meth:`run_config`), checked by it.

    Args:
        canaries: m (>= 2); the bound cannot exceed about 5.8 with 1,000.
        target_epsilon: client 0's cumulative epsilon budget for the run, at
            ``delta``; every client's noise multiplier is derived from it.
        dp: train with DP-SGD; ``False`` trains plain SGD and claims nothing.
        fault: ``"none"``, or ``"no-noise"``: train with noise multiplier 0
            (clipping still on) while the ledger books the configured one.
        clients: clients of the federation (>= 1); client 0 holds the canaries.
        examples_per_client: real digits each client holds, besides canaries.
        beta: 1 - confidence of the bound, in (0, 1).
    """

    canaries: int = 1000
    target_epsilon: float = 2.0
    dp: bool = True
    fault: str = "none"
    clients: int = 2
    examples_per_client: int = 200
    rounds: int = 2
    local_epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.5
    momentum: float = 0.9
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    beta: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise ConfigError(f"canaries must be >= 2, got {self.canaries}")
        if self.fault not in FAULTS:
            raise ConfigError(f"unknown fault {self.fault!r}; choose one of: {', '.join(FAULTS)}")
        if not self.dp and self.fault != "none":
            raise ConfigError(f"--fault {self.fault} breaks DP training: drop --no-dp")
        for name in ("clients", "examples_per_client"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ConfigError(f"{flag} must be >= 1, got {getattr(self, name)}")
        check_probability_open("beta (1 - confidence)", self.beta)
        self.run_config()  # the training settings, checked as every run's are

    def run_config(self) -> RunConfig:
        """The run every audited client trains in, as a federation's clients do."""
        return RunConfig(
            model="cnn",
            dataset="digits",
            num_clients=self.clients,
            rounds=self.rounds,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            seed=self.seed,
            device="cpu",
            dp=DPConfig(
                enabled=self.dp,
                target_epsilon=self.target_epsilon,
                max_grad_norm=self.max_grad_norm,
                delta=self.delta,
                accountant=self.accountant,
            ),
        )
