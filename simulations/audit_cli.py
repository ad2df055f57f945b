"""``fedpriv-sim audit``: the one-run privacy audit as a command (:mod:`.audit`).

It prints one summary line and writes ``audit.json`` and a histogram of the
canaries' scores. Exit code 0: the bound stays at or below the claimed
epsilon; 3: it exceeds it (the privacy claim is false); 1 or 2: bad input.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from fedpriv.shared_models.plumbing.atomic import atomic_write_json
from fedpriv.simulations.audit_config import AuditConfig

if TYPE_CHECKING:
    from fedpriv.simulations.audit import AuditResult

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.json"
PLOT_FILE = "audit_scores.png"
EXIT_CLAIM_FALSE = 3  # the command's exit code when the bound exceeds the claimed epsilon


def write_report(result: AuditResult, folder: Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and a histogram of the canaries' scores into ``folder``."""
    json_path = folder / AUDIT_FILE
    atomic_write_json(json_path, result.as_dict())
    return json_path, _plot_scores(result, folder / PLOT_FILE)


def _plot_scores(result: AuditResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(result.scores, bins=40).tolist()
    ax.hist(result.scores[result.included], bins=bins, alpha=0.6, label="included (in training)")
    ax.hist(result.scores[~result.included], bins=bins, alpha=0.6, label="excluded")
    claim = "∞" if math.isinf(result.claimed_epsilon) else f"{result.claimed_epsilon:.3f}"
    ax.set(
        xlabel="score (label logit minus the image's mean logit)",
        ylabel="canaries",
        title=f"claimed ε={claim}, empirical lower bound ε ≥ {result.bound.epsilon:.3f}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the command: `fedpriv-sim audit` --

_D = AuditConfig()
audit_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@audit_app.command(
    help="Audit the DP training: train a small digits federation with canaries in client 0's "
    "data, attack the final model, and turn the attack's correct guesses into an empirical "
    "lower bound on epsilon (one-run audit of Steinke, Nasr and Jagielski 2023). Prints one "
    "summary line. Exit code 0: the bound stays at or below the claimed epsilon; 3: it exceeds "
    "it (the privacy claim is false); 1 or 2: bad input."
)
def audit(
    canaries: Annotated[
        int, typer.Option(help="canaries, each in client 0's data with probability 1/2")
    ] = _D.canaries,
    target_epsilon: Annotated[
        float, typer.Option(help="client 0's cumulative epsilon budget: the claim audited")
    ] = _D.target_epsilon,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="train without DP (claims ε=∞)")] = False,
    fault: Annotated[
        str,
        typer.Option(
            help="none | no-noise: a deliberate bug, training with noise multiplier 0 "
            "(clipping on) while the ledger books the configured noise"
        ),
    ] = _D.fault,
    clients: Annotated[int, typer.Option(help="clients; client 0 holds the canaries")] = (
        _D.clients
    ),
    examples_per_client: Annotated[
        int, typer.Option(help="real digits per client, besides the canaries")
    ] = _D.examples_per_client,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = _D.rounds,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = _D.local_epochs,
    batch_size: Annotated[int, typer.Option(help="expected local batch size")] = _D.batch_size,
    lr: Annotated[float, typer.Option(help="client learning rate (SGD)")] = _D.learning_rate,
    momentum: Annotated[float, typer.Option(help="client SGD momentum")] = _D.momentum,
    max_grad_norm: Annotated[
        float, typer.Option(help="per-sample clipping norm C")
    ] = _D.max_grad_norm,
    delta: Annotated[float, typer.Option(help="delta of the claim and the bound")] = _D.delta,
    accountant: Annotated[str, typer.Option(help="rdp | prv")] = _D.accountant,
    beta: Annotated[float, typer.Option(help="1 - confidence of the bound")] = _D.beta,
    seed: Annotated[int, typer.Option(help="seed of canaries, membership, data and noise")] = (
        _D.seed
    ),
    out: Annotated[
        Path | None,
        typer.Option(help="folder for audit.json and the score histogram (new or empty)"),
    ] = None,
) -> None:
    config = AuditConfig(
        canaries=canaries,
        target_epsilon=target_epsilon,
        dp=not no_dp,
        fault=fault,
        clients=clients,
        examples_per_client=examples_per_client,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        max_grad_norm=max_grad_norm,
        delta=delta,
        accountant=accountant,
        beta=beta,
        seed=seed,
    )
    from fedpriv.server.run_folder import RunFolder
    from fedpriv.shared_models.plumbing.cli import quiet_flower
    from fedpriv.simulations.audit import run_audit

    quiet_flower()

    folder = RunFolder.create(out) if out is not None else None  # refuses a non-empty one
    result = run_audit(config)
    if folder is not None:
        paths = write_report(result, folder.path)
        logger.info("wrote %s", " and ".join(str(p) for p in paths))
    typer.echo(result.summary())
    if not result.passed:
        # sys.exit, not typer.Exit: run_command runs click with standalone_mode=False,
        # where click returns an Exit's code instead of exiting with it.
        sys.exit(EXIT_CLAIM_FALSE)
