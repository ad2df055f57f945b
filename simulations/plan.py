"""``fedpriv-sim plan``: what a privacy budget buys, before any training.

Given a client's dataset size, batch size, local epochs, rounds and
participation rate, and a target epsilon (or a noise multiplier), it prints
the noise multiplier and the cumulative epsilon after every round. With
``--clients`` it does the same for client-level DP. It calls exactly the
functions the training commands call (:mod:`fedpriv.shared_models.accounting`:
``plan_round``, ``noise_for_target``, ``compute_epsilon``, ``client_level_noise``),
so the plan is what a run does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import typer

from fedpriv.shared_models.accounting import (
    check_accountant,
    client_level_epsilon,
    client_level_noise,
    compute_epsilon,
    noise_for_target,
    plan_round,
)
from fedpriv.shared_models.checks import check_delta
from fedpriv.shared_models.errors import ConfigError


@dataclass(frozen=True)
class PlanRow:
    """Cumulative epsilons after ``round`` rounds."""

    round: int
    epsilon_every_round: float  # a client that took part in every round (what the budget guards)
    epsilon_expected: float  # a client that took part in ceil(participation * round) rounds
    client_level_epsilon: float | None  # the federation's, when client-level DP is planned


@dataclass(frozen=True)
class Plan:
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    client_noise_multiplier: float | None
    clients_per_round: int | None
    rows: list[PlanRow]


def make_plan(
    *,
    examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    participation: float,
    delta: float,
    accountant: str,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    clients: int | None = None,
    client_epsilon: float | None = None,
    client_noise: float | None = None,
) -> Plan:
    """The example-level (and optionally client-level) plan of a run.

    Exactly one of ``target_epsilon``/``noise_multiplier`` is given; with
    ``clients``, exactly one of ``client_epsilon``/``client_noise``.
    """
    _check(examples, batch_size, local_epochs, rounds, participation, delta, accountant)
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError("give exactly one of --target-epsilon and --noise-multiplier")
    for name, value in (
        ("--target-epsilon", target_epsilon),
        ("--noise-multiplier", noise_multiplier),
        ("--client-epsilon", client_epsilon),
        ("--client-noise", client_noise),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be > 0, got {value}")
    step = plan_round(examples, batch_size, local_epochs)
    sigma = noise_multiplier or noise_for_target(
        target_epsilon=target_epsilon,  # type: ignore[arg-type]
        delta=delta,
        plan=step,
        rounds=rounds,
        accountant=accountant,
    )
    z: float | None = None
    per_round: int | None = None
    if clients is not None:
        if clients < 1:
            raise ConfigError(f"--clients must be >= 1, got {clients}")
        if (client_epsilon is None) == (client_noise is None):
            raise ConfigError(
                "with --clients, give exactly one of --client-epsilon and --client-noise"
            )
        per_round = max(1, math.floor(clients * participation))
        z = client_noise or client_level_noise(
            client_epsilon,  # type: ignore[arg-type]
            rounds,
            delta=delta,
            accountant=accountant,
        )
    elif client_epsilon is not None or client_noise is not None:
        raise ConfigError("--client-epsilon/--client-noise need --clients")
    rows = []
    for rnd in range(1, rounds + 1):
        taken = math.ceil(participation * rnd - 1e-9)
        rows.append(
            PlanRow(
                round=rnd,
                epsilon_every_round=compute_epsilon(
                    [(sigma, step.sample_rate, step.steps * rnd)], delta, accountant
                ),
                epsilon_expected=compute_epsilon(
                    [(sigma, step.sample_rate, step.steps * taken)], delta, accountant
                ),
                client_level_epsilon=(
                    None
                    if z is None
                    else client_level_epsilon(z, rnd, delta=delta, accountant=accountant)
                ),
            )
        )
    return Plan(step.sample_rate, step.steps, sigma, z, per_round, rows)


def _check(
    examples: int,
    batch_size: int,
    local_epochs: int,
    rounds: int,
    participation: float,
    delta: float,
    accountant: str,
) -> None:
    for name, value in (
        ("--examples", examples),
        ("--batch-size", batch_size),
        ("--local-epochs", local_epochs),
        ("--rounds", rounds),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not 0 < participation <= 1:
        raise ConfigError(f"--participation must be in (0, 1], got {participation}")
    check_delta(delta, "--delta")
    check_accountant(accountant)


def format_plan(
    plan: Plan, *, delta: float, accountant: str, participation: float, clip: float
) -> str:
    """The plan as the command prints it."""
    lines = [
        f"example-level DP-SGD: sampling rate {plan.sample_rate:.5g}, {plan.steps_per_round} steps "
        f"per round, noise multiplier {plan.noise_multiplier:.4f}",
    ]
    if plan.client_noise_multiplier is not None:
        std = plan.client_noise_multiplier * clip / plan.clients_per_round  # type: ignore[operator]
        lines.append(
            f"client-level DP: {plan.clients_per_round} clients per round, noise multiplier "
            f"{plan.client_noise_multiplier:.4f} (noise std {std:.4g} per coordinate of the mean "
            f"update at clipping norm {clip:g}); no sampling amplification claimed"
        )
    header = f"{'round':>5}  {'ε every round':>13}  {f'ε at {participation:g} particip.':>20}"
    if plan.client_noise_multiplier is not None:
        header += f"  {'federation ε':>12}"
    lines.append(
        f"cumulative ε at δ={delta:g}, {accountant.upper()} (example-level per client"
        + ("; federation: client-level" if plan.client_noise_multiplier is not None else "")
        + ")"
    )
    lines.append(header)
    for row in plan.rows:
        line = f"{row.round:>5}  {row.epsilon_every_round:>13.3f}  {row.epsilon_expected:>20.3f}"
        if row.client_level_epsilon is not None:
            line += f"  {row.client_level_epsilon:>12.3f}"
        lines.append(line)
    return "\n".join(lines)


plan_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@plan_app.command(
    help="Plan a privacy budget: the noise a target epsilon needs, or the epsilon a noise "
    "multiplier leads to, round by round. Uses the same code as training."
)
def plan(
    examples: Annotated[int, typer.Option(help="training examples of one client")],
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 20,
    batch_size: Annotated[int, typer.Option(help="expected local batch size")] = 32,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = 2,
    participation: Annotated[
        float, typer.Option(help="fraction of clients sampled per round")
    ] = 1.0,
    target_epsilon: Annotated[
        float | None, typer.Option(help="each client's cumulative example-level budget")
    ] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="DP-SGD noise multiplier (instead of a target)")
    ] = None,
    delta: Annotated[float, typer.Option(help="delta of every epsilon")] = 1e-5,
    accountant: Annotated[str, typer.Option(help="rdp | prv")] = "rdp",
    clients: Annotated[
        int | None, typer.Option(help="number of clients (plans client-level DP too)")
    ] = None,
    client_epsilon: Annotated[
        float | None, typer.Option(help="the federation's client-level budget")
    ] = None,
    client_noise: Annotated[
        float | None, typer.Option(help="client-level noise multiplier (instead of a budget)")
    ] = None,
    client_clip: Annotated[float, typer.Option(help="client-level clipping norm")] = 1.0,
) -> None:
    if not (math.isfinite(client_clip) and client_clip > 0):
        raise ConfigError(f"--client-clip must be > 0, got {client_clip}")
    result = make_plan(
        examples=examples,
        batch_size=batch_size,
        local_epochs=local_epochs,
        rounds=rounds,
        participation=participation,
        delta=delta,
        accountant=accountant,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        clients=clients,
        client_epsilon=client_epsilon,
        client_noise=client_noise,
    )
    typer.echo(
        format_plan(
            result,
            delta=delta,
            accountant=accountant,
            participation=participation,
            clip=client_clip,
        )
    )
