"""The settings of one federated run, parsed once at the edge.

Both sides of the wire read the same :class:`RunConfig`: the ServerApp and the
ClientApp get it from ``context.run_config`` (``flwr run .``, whose keys are
the kebab-case ``[tool.flwr.app.config]`` entries of ``pyproject.toml``) or
from ``fedpriv-sim``, which builds it from its flags. Nothing else reads
``run_config[...]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedpriv.shared_models.accounting import check_accountant
from fedpriv.shared_models.checks import check_delta
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.registry import MODEL_NAMES

STRATEGIES: tuple[str, ...] = (
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedmedian",
    "fedtrimmedavg",
    "fedyogi",
    "krum",
    "multikrum",
    "normbounded",
)
#: Strategies whose aggregate is a plain (weighted) mean of the updates: the only ones
#: client-level DP noise is calibrated for, and the only ones secure aggregation could run.
LINEAR_STRATEGIES: tuple[str, ...] = ("fedavg",)
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Client-level DP: who clips each client's update (server or client) and how
#: (a fixed norm, or adaptive clipping to a quantile of the update norms).
CLIENT_DP_MODES: tuple[str, ...] = (
    "off",
    "server-fixed",
    "server-adaptive",
    "client-fixed",
    "client-adaptive",
)


@dataclass(frozen=True)
class DPConfig:
    """Example-level DP-SGD settings for every client's local training.

    Args:
        enabled: train with DP-SGD (Opacus). ``False`` trains non-privately.
        target_epsilon: the cumulative epsilon budget of each client for the
            whole run (all rounds), at ``delta``. When ``noise_multiplier`` is
            not given, the noise is derived so that a client that takes part
            in every planned round ends at (just under) this epsilon. A client
            whose next round would exceed it declines the round.
        noise_multiplier: Gaussian noise std as a multiple of
            ``max_grad_norm``. Given explicitly, it is used as is (and
            ``target_epsilon``, if also given, is only the budget).
        max_grad_norm: per-sample gradient clipping bound C (L2 norm).
        delta: the delta of every (epsilon, delta) figure reported.
        accountant: ``"rdp"`` (Renyi DP, Opacus ``RDPAccountant``) or
            ``"prv"`` (privacy random variables, Opacus ``PRVAccountant``).
    """

    enabled: bool = True
    target_epsilon: float | None = 8.0
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise ConfigError(
                f"target epsilon must be a positive number, got {self.target_epsilon}"
            )
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise ConfigError(
                f"noise multiplier must be > 0, got {self.noise_multiplier} "
                "(to train without privacy use --no-dp)"
            )
        if self.enabled and self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError("DP needs a target epsilon or a noise multiplier (or use --no-dp)")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"max grad norm must be > 0, got {self.max_grad_norm}")
        check_delta(self.delta)
        check_accountant(self.accountant)

    @classmethod
    def from_flags(
        cls,
        *,
        no_dp: bool,
        target_epsilon: float | None,
        noise_multiplier: float | None = None,
        max_grad_norm: float = 1.0,
        delta: float = 1e-5,
        accountant: str = "rdp",
    ) -> DPConfig:
        """The DP settings of a command line (``--no-dp``, ``--target-epsilon``, ...).

        Without ``--noise-multiplier`` or ``--target-epsilon`` the budget is the default 8.
        """
        if no_dp and (target_epsilon is not None or noise_multiplier is not None):
            raise ConfigError("--no-dp cannot be combined with --target-epsilon/--noise-multiplier")
        if not no_dp and noise_multiplier is None and target_epsilon is None:
            target_epsilon = cls.target_epsilon
        return cls(
            enabled=not no_dp,
            target_epsilon=None if no_dp else target_epsilon,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            delta=delta,
            accountant=accountant,
        )


@dataclass(frozen=True)
class ClientDPConfig:
    """Client-level DP: each client's whole update is clipped, the aggregate noised.

    The guarantee covers a client's entire participation (all its records at
    once), against anyone who sees the global models. Implemented with
    Flower's ``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping``
    wrappers around FedAvg with equal client weights; the coordinator
    accounts for it (``server/client_dp.py``). Delta and accountant are the
    run's (``DPConfig.delta``/``accountant``).

    Args:
        mode: one of :data:`CLIENT_DP_MODES`; ``"off"`` disables it.
        target_epsilon: the federation's client-level budget (cumulative, all
            rounds). Without ``noise_multiplier`` the noise is derived so the
            planned rounds end at (just under) it. The coordinator ends the
            run before a round that would exceed it.
        noise_multiplier: std of the noise on the *sum* of clipped updates,
            as a multiple of the clipping norm (Flower adds
            ``noise_multiplier * clip / clients`` to their mean). With
            adaptive clipping this is the total: part of it goes to the noisy
            count of clipped updates (Andrew et al. 2021).
        clipping_norm: L2 bound on a client's update (the initial one with
            adaptive clipping).
        target_quantile: adaptive clipping moves the clipping norm towards this
            quantile of the clients' update norms (0.5: the median; this
            fraction of updates is left unclipped).
        clip_learning_rate: step size of the adaptive (geometric) norm update.
    """

    mode: str = "off"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    clipping_norm: float = 1.0
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def adaptive(self) -> bool:
        return self.mode.endswith("-adaptive")

    @property
    def client_side(self) -> bool:
        """Clients clip their own updates (the only kind that composes with secure aggregation)."""
        return self.mode.startswith("client-")

    def __post_init__(self) -> None:
        if self.mode not in CLIENT_DP_MODES:
            raise ConfigError(
                f"unknown client-level DP mode '{self.mode}'; "
                f"choose one of: {', '.join(CLIENT_DP_MODES)}"
            )
        for name in ("target_epsilon", "noise_multiplier"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{_CLIENT_DP_KEYS[name]} must be > 0, got {value}")
        if self.enabled and self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                f"client-level DP ({self.mode}) needs --client-epsilon (a budget) "
                "or --client-noise (a noise multiplier)"
            )
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ConfigError(f"client-clip must be > 0, got {self.clipping_norm}")
        if not 0 < self.target_quantile < 1:
            raise ConfigError(f"client-clip-quantile must be in (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.clip_learning_rate) and self.clip_learning_rate > 0):
            raise ConfigError(f"client-clip-lr must be > 0, got {self.clip_learning_rate}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, validated at construction."""

    model: str = "cnn"
    dataset: str = "digits"
    data_dir: str = ""
    num_clients: int = 10
    rounds: int = 20
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.5
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.2
    momentum: float = 0.0
    partitioning: str = "iid"
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0
    strategy: str = "fedavg"
    device: str = "auto"
    round_timeout: float = 600.0
    init_checkpoint: str = ""  # a .safetensors checkpoint to start from ("": fresh weights)
    freeze: str = ""  # comma-separated parameter-name prefixes clients do not train
    # Deployment (fedpriv-server start); unused in simulation, where every node is started.
    min_nodes: int = 0  # fewest connected nodes a round may start with (0: num_clients)
    test_data: str = ""  # the coordinator's test-set data folder ("": the simulation's test split)
    run_dir: str = (
        ""  # where the ServerApp writes the run folder ("": runs/<time>-<model>-<dataset>)
    )
    # Checkpoints (server/round_checkpoint.py): kept after every round; resume continues a run.
    keep_checkpoints: int = 3  # newest round checkpoints kept in RUN_DIR/checkpoints
    resume: str = ""  # a run folder to continue from its last checkpoint ("": a new run)
    # Robustness: update validation and robust aggregation (see server/validation.py).
    max_update_norm: float | None = None  # reject updates with a larger L2 norm (None: no bound)
    norm_bound: float = 1.0  # the `normbounded` strategy clips each update to this L2 norm
    byzantine_fraction: float = 0.2  # trimmed per side (fedtrimmedavg); Krum's f = this x sampled
    dp: DPConfig = field(default_factory=DPConfig)
    client_dp: ClientDPConfig = field(default_factory=ClientDPConfig)

    def __post_init__(self) -> None:
        positive_ints = (
            "num_clients",
            "rounds",
            "local_epochs",
            "batch_size",
            "shards_per_client",
            "keep_checkpoints",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_flag(name)} must be an integer >= 1, got {value!r}")
        if isinstance(self.min_nodes, bool) or not isinstance(self.min_nodes, int):
            raise ConfigError(f"min-nodes must be an integer, got {self.min_nodes!r}")
        if not 0 <= self.min_nodes <= self.num_clients:
            raise ConfigError(
                f"min-nodes must be in [1, num-clients={self.num_clients}] "
                f"(0 means num-clients), got {self.min_nodes}"
            )
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError(f"fraction-evaluate must be in [0, 1], got {self.fraction_evaluate}")
        for name in ("learning_rate", "dirichlet_alpha", "round_timeout", "norm_bound"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{_flag(name)} must be > 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.model not in MODEL_NAMES:
            raise ConfigError(
                f"unknown model '{self.model}'; choose one of: {', '.join(MODEL_NAMES)}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy '{self.strategy}'; choose one of: {', '.join(STRATEGIES)}"
            )
        if self.device not in DEVICES:
            raise ConfigError(
                f"unknown device '{self.device}'; choose one of: {', '.join(DEVICES)}"
            )
        if self.max_update_norm is not None and not (
            math.isfinite(self.max_update_norm) and self.max_update_norm > 0
        ):
            raise ConfigError(f"max-update-norm must be > 0, got {self.max_update_norm}")
        if not 0 <= self.byzantine_fraction < 0.5:
            raise ConfigError(
                f"byzantine-fraction must be in [0, 0.5), got {self.byzantine_fraction}"
            )
        if self.client_dp.enabled and self.strategy not in LINEAR_STRATEGIES:
            raise ConfigError(
                f"client-level DP needs --strategy fedavg, got '{self.strategy}': the noise is "
                "calibrated to a plain mean of clipped updates (see docs/privacy.md)"
            )
        if self.client_dp.enabled and self.frozen_prefixes:
            raise ConfigError(
                "client-level DP cannot be combined with --freeze: clipping and noise "
                "need every tensor of the update"
            )

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoints (not where/how it resumes)."""
        flat = self.to_run_config()
        for key in RESUME_FREE_KEYS:
            flat.pop(key, None)
        return flat

    @property
    def min_available_nodes(self) -> int:
        """The fewest connected nodes a round may start with."""
        return self.min_nodes or self.num_clients

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """The ``freeze`` setting as a tuple of parameter-name prefixes."""
        return tuple(p.strip() for p in self.freeze.split(",") if p.strip())

    # -- flat kebab-case view, as in pyproject.toml and context.run_config --

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flatten to kebab-case keys (``None`` values are left out)."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name not in _SECTIONS:
                value = getattr(self, f.name)
                flat[_flag(f.name)] = 0.0 if value is None else value
        for section, keys in _SECTIONS.items():
            for name, key in keys.items():
                value = getattr(getattr(self, section), name)
                if value is None and key in _UNSET_AS_ZERO:
                    value = 0.0
                if value is not None:
                    flat[key] = value
        return flat

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Parse kebab-case keys; unknown keys and wrong types are refused.

        Keys that are absent take the defaults of this class.
        """
        top = {_flag(f.name): f for f in dataclasses.fields(cls) if f.name not in _SECTIONS}
        nested = {
            key: (section, name)
            for section, keys in _SECTIONS.items()
            for name, key in keys.items()
        }
        kwargs: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
        for key, value in run_config.items():
            if key in _UNSET_AS_ZERO and key in top:
                value = _coerce(key, value, float)
                kwargs[top[key].name] = None if value == 0 else value
            elif key in top:
                kwargs[top[key].name] = _coerce(key, value, type(getattr(_DEFAULT, top[key].name)))
            elif key in nested:
                section, name = nested[key]
                kind = float if name in ("target_epsilon", "noise_multiplier") else None
                default = getattr(getattr(_DEFAULT, section), name)
                value = _coerce(key, value, kind or type(default))
                if key in _UNSET_AS_ZERO and value == 0:
                    value = None
                sections[section][name] = value
            else:
                known = sorted([*top, *nested])
                raise ConfigError(f"unknown setting '{key}'; known settings: {', '.join(known)}")
        dp_kwargs = sections["dp"]
        if dp_kwargs.get("enabled") is False:
            dp_kwargs.setdefault("target_epsilon", None)
        if "noise_multiplier" in dp_kwargs and "target_epsilon" not in dp_kwargs:
            dp_kwargs["target_epsilon"] = None
        return cls(
            **kwargs, dp=DPConfig(**dp_kwargs), client_dp=ClientDPConfig(**sections["client_dp"])
        )


_CLIENT_DP_KEYS = {
    "mode": "client-dp",
    "target_epsilon": "client-epsilon",
    "noise_multiplier": "client-noise",
    "clipping_norm": "client-clip",
    "target_quantile": "client-clip-quantile",
    "clip_learning_rate": "client-clip-lr",
}

_DP_KEYS = {
    "enabled": "dp",
    "target_epsilon": "target-epsilon",
    "noise_multiplier": "noise-multiplier",
    "max_grad_norm": "max-grad-norm",
    "delta": "delta",
    "accountant": "accountant",
}


#: Settings that may differ between a run and its resumption.
RESUME_FREE_KEYS = ("resume", "run-dir", "round-timeout", "keep-checkpoints", "device")

#: Optional settings that TOML (no null) writes as 0.0, meaning "not set", so that
#: pyproject.toml can list them and ``flwr run --run-config`` can set them.
_UNSET_AS_ZERO = frozenset(
    {"target-epsilon", "noise-multiplier", "client-epsilon", "client-noise", "max-update-norm"}
)

#: The nested settings, flattened to these kebab-case keys.
_SECTIONS = {"dp": _DP_KEYS, "client_dp": _CLIENT_DP_KEYS}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert one run-config value to ``kind`` or raise a ConfigError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - programming error
        raise TypeError(kind)
    raise ConfigError(f"setting '{key}' must be {kind.__name__}, got {value!r}")


_DEFAULT = RunConfig()
