"""The training flags ``fedpriv-sim`` and ``fedpriv-server start`` share, declared once.

Both commands train the same federation, so the ~30 flags that say how
(model, rounds, DP, client-level DP, robustness, checkpoints) are one table,
:data:`TRAINING_FLAGS`. :func:`training_flags` adds them to a typer command,
which receives them as one :class:`Flags` mapping, and :func:`run_config_from_flags`
turns that mapping (plus the command's own settings) into the
:class:`~fedpriv.shared_models.config.RunConfig` both sides read.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from fedpriv.shared_models.config import ClientDPConfig, DPConfig, RunConfig

__all__ = ["TRAINING_FLAGS", "Flag", "Flags", "run_config_from_flags", "training_flags"]

_D = RunConfig()

#: How a command receives the training flags: flag name (snake_case) -> value.
Flags = Mapping[str, Any]


@dataclass(frozen=True)
class Flag:
    """One ``--flag``: its parameter name, type, default and help."""

    name: str
    kind: Any
    default: Any
    help: str
    decls: tuple[str, ...] = ()  # explicit option names (e.g. "--no-dp"); default: --kebab-name


TRAINING_FLAGS: tuple[Flag, ...] = (
    Flag("model", str, _D.model, "cnn | lstm | transformer"),
    Flag("rounds", int, _D.rounds, "federated rounds"),
    Flag("fraction", float, _D.fraction_train, "fraction of clients trained per round"),
    Flag(
        "fraction_evaluate",
        float,
        _D.fraction_evaluate,
        "fraction of clients evaluating their held-out split per round",
    ),
    Flag("local_epochs", int, _D.local_epochs, "local epochs per round"),
    Flag("batch_size", int, _D.batch_size, "expected local batch size"),
    Flag("lr", float, _D.learning_rate, "client learning rate (SGD)"),
    Flag("momentum", float, _D.momentum, "client SGD momentum"),
    Flag("seed", int, _D.seed, "seed of data split, client sampling, batch sampling and noise"),
    Flag(
        "round_timeout",
        float,
        _D.round_timeout,
        "seconds a round (or the wait for nodes) may take before going on without the rest",
    ),
    Flag("strategy", str, _D.strategy, "fedavg, fedadam, fedmedian, ..."),
    Flag(
        "max_update_norm",
        float | None,
        None,
        "reject client updates whose L2 norm exceeds this (default: no bound)",
    ),
    Flag("norm_bound", float, _D.norm_bound, "the normbounded strategy clips each update to this"),
    Flag(
        "byzantine_fraction",
        float,
        _D.byzantine_fraction,
        "fedtrimmedavg trims this fraction per side; krum assumes this x sampled bad",
    ),
    Flag(
        "target_epsilon",
        float | None,
        None,
        "each client's cumulative epsilon budget for the run (default 8)",
    ),
    Flag("noise_multiplier", float | None, None, "fixed DP noise multiplier (instead of a target)"),
    Flag("no_dp", bool, False, "train without privacy", ("--no-dp",)),
    Flag("max_grad_norm", float, _D.dp.max_grad_norm, "per-sample clipping norm C"),
    Flag("delta", float, _D.dp.delta, "delta of every epsilon"),
    Flag("accountant", str, _D.dp.accountant, "rdp | prv"),
    Flag(
        "client_dp",
        str,
        _D.client_dp.mode,
        "client-level DP: off | server-fixed | server-adaptive | client-fixed | "
        "client-adaptive (who clips each client's update, to a fixed or adaptive norm)",
    ),
    Flag(
        "client_epsilon",
        float | None,
        None,
        "the federation's cumulative client-level epsilon budget",
    ),
    Flag(
        "client_noise",
        float | None,
        None,
        "client-level noise multiplier (instead of deriving it from the budget)",
    ),
    Flag(
        "client_clip",
        float,
        _D.client_dp.clipping_norm,
        "client-level clipping norm of an update (initial, if adaptive)",
    ),
    Flag(
        "client_clip_quantile",
        float,
        _D.client_dp.target_quantile,
        "adaptive clipping: quantile of update norms the norm tracks",
    ),
    Flag(
        "client_clip_lr",
        float,
        _D.client_dp.clip_learning_rate,
        "adaptive clipping: norm learning rate",
    ),
    Flag(
        "init_checkpoint",
        str,
        _D.init_checkpoint,
        "start from this .safetensors checkpoint (e.g. from pretrain)",
    ),
    Flag(
        "freeze",
        str,
        _D.freeze,
        "comma-separated parameter prefixes clients keep fixed, e.g. embed",
    ),
    Flag("keep_checkpoints", int, _D.keep_checkpoints, "round checkpoints kept in the run folder"),
)

#: The training flags that may go with ``--resume`` (where and how, not what is computed).
RESUME_SAFE = frozenset({"round_timeout", "keep_checkpoints"})


def training_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add :data:`TRAINING_FLAGS` to a typer command function.

    ``func`` declares its own parameters plus one named ``flags``, which
    receives the training flags' values as a mapping (name -> value).
    """
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "flags"]
    added = [
        inspect.Parameter(
            flag.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=flag.default,
            annotation=Annotated[flag.kind, typer.Option(*flag.decls, help=flag.help)],
        )
        for flag in TRAINING_FLAGS
    ]
    names = {flag.name for flag in TRAINING_FLAGS}

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in names}
        return func(**kwargs, flags=flags)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the new signature, not func's
    return wrapper


def run_config_from_flags(flags: Flags, **fields: Any) -> RunConfig:
    """The :class:`RunConfig` of the training flags plus a command's own ``fields``
    (e.g. ``dataset`` and ``num_clients``); validated, so a bad value is a ConfigError."""
    settings: dict[str, Any] = {
        "model": flags["model"],
        "rounds": flags["rounds"],
        "fraction_train": flags["fraction"],
        "fraction_evaluate": flags["fraction_evaluate"],
        "local_epochs": flags["local_epochs"],
        "batch_size": flags["batch_size"],
        "learning_rate": flags["lr"],
        "momentum": flags["momentum"],
        "seed": flags["seed"],
        "round_timeout": flags["round_timeout"],
        "strategy": flags["strategy"],
        "max_update_norm": flags["max_update_norm"],
        "norm_bound": flags["norm_bound"],
        "byzantine_fraction": flags["byzantine_fraction"],
        "init_checkpoint": flags["init_checkpoint"],
        "freeze": flags["freeze"],
        "keep_checkpoints": flags["keep_checkpoints"],
        "dp": DPConfig.from_flags(
            no_dp=flags["no_dp"],
            target_epsilon=flags["target_epsilon"],
            noise_multiplier=flags["noise_multiplier"],
            max_grad_norm=flags["max_grad_norm"],
            delta=flags["delta"],
            accountant=flags["accountant"],
        ),
        "client_dp": ClientDPConfig(
            mode=flags["client_dp"],
            target_epsilon=flags["client_epsilon"],
            noise_multiplier=flags["client_noise"],
            clipping_norm=flags["client_clip"],
            target_quantile=flags["client_clip_quantile"],
            clip_learning_rate=flags["client_clip_lr"],
        ),
    }
    settings.update(fields)
    return RunConfig(**settings)
