"""``fedpriv-client``: the client node's command.

Subcommands:

* ``start --server HOST:PORT --data DIR --ca CA.crt --key NODE.key``: run this
  node (a Flower SuperNode) against a coordinator, training on ``DIR``
  (:mod:`fedpriv.client.node`).
  ``--budget EPS`` sets the node's own cap on the lifetime epsilon of its data.
* ``check-data DIR``: validate a local data folder (:mod:`fedpriv.client.local_data`) and
  its privacy ledger, and print what it holds (``fedpriv-sim export-demo-data``
  writes demo folders).
* ``budget --data DIR``: what the folder's data has spent (:mod:`fedpriv.client.node_ledger`):
  the lifetime cumulative epsilon over all runs, the node's cap, each run's spend.

Every input mistake ends in one line on stderr and a non-zero exit code:
2 for a malformed command line, 1 for bad data or a bad setting.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedpriv.client.ledger_store import ledger_path, read_ledger
from fedpriv.shared_models.accounting import check_accountant
from fedpriv.shared_models.checks import check_delta
from fedpriv.shared_models.data_folder import DataSummary, SplitSummary, check_data
from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.ledger import PrivacyLedger
from fedpriv.shared_models.plumbing.cli import run_command, show_progress

PROG = "fedpriv-client"
logger = logging.getLogger(__name__)

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="The fedpriv client node: run it, check its local data folder and privacy spend.",
)


@app.command(
    "check-data", help="Validate a local data folder and its privacy ledger; print what it holds."
)
def check_data_command(
    folder: Annotated[Path, typer.Argument(help="the data folder (holds fedpriv-data.json)")],
) -> None:
    summary = check_data(folder)
    ledger = read_ledger(folder)
    typer.echo(format_summary(summary))
    typer.echo(f"  {_ledger_line(ledger)}")


@app.command(
    help="Show what a data folder has spent: the lifetime cumulative epsilon over all runs "
    "(example-level), the node's own budget, and each run's spend."
)
def budget(
    data: Annotated[Path, typer.Option(help="the node's data folder")],
    delta: Annotated[float, typer.Option(help="the delta of every epsilon shown")] = 1e-5,
    accountant: Annotated[str, typer.Option(help="rdp | prv")] = "rdp",
) -> None:
    if not data.is_dir():
        raise DataError(f"data folder {data} does not exist; pass the node's --data folder")
    check_delta(delta, "--delta")
    check_accountant(accountant)
    typer.echo(format_budget(read_ledger(data), data, delta, accountant))


@app.command(
    help="Run this node against a coordinator, training on a local data folder. The folder, "
    "certificate and key are checked before connecting; the node reconnects by itself when "
    "the coordinator restarts."
)
def start(
    server: Annotated[str, typer.Option(help="the coordinator's HOST:PORT")],
    data: Annotated[Path, typer.Option(help="this node's data folder (fedpriv-data.json)")],
    ca: Annotated[
        Path | None, typer.Option(help="the deployment's CA certificate (ca.crt)")
    ] = None,
    key: Annotated[Path | None, typer.Option(help="this node's private key (node-K.key)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="plaintext, no node key: an --insecure coordinator only"),
    ] = False,
    runtime_port: Annotated[
        int, typer.Option(help="the SuperNode's local API port (0: pick a free one)")
    ] = 0,
    flwr_home: Annotated[
        Path | None, typer.Option(help="the SuperNode's FLWR_HOME (default: Flower's)")
    ] = None,
    max_wait: Annotated[
        float,
        typer.Option(help="give up after this many seconds without the coordinator (0: never)"),
    ] = 0.0,
    budget: Annotated[
        float | None,
        typer.Option(
            help="this node's own cap on the lifetime epsilon of its data, over all runs "
            "(stored in its privacy ledger; default: the stored one, if any)"
        ),
    ] = None,
) -> None:
    # Import late: check-data should not pay for Flower's process machinery.
    from fedpriv.client.node import NodeSettings, check_node, open_ledger, run_node
    from fedpriv.shared_models.plumbing.processes import exit_on_termination

    settings = NodeSettings(
        server=server,
        data=data,
        ca=ca,
        key=key,
        device=device,
        insecure=insecure,
        runtime_port=runtime_port,
        flwr_home=flwr_home,
        max_wait=max_wait,
        budget=budget,
    )
    summary = check_node(settings)
    ledger = open_ledger(settings)
    train = summary.splits[0]
    logger.info(
        "%s: %s, %d training examples; connecting to %s (%s)",
        data,
        summary.meta.dataset,
        train.examples,
        server,
        "INSECURE: plaintext, no node key" if insecure else f"TLS, trusting {ca}, key {key}",
    )
    logger.info("%s: %s", data, _ledger_line(ledger))
    exit_on_termination()
    run_node(settings, on_line=lambda line: typer.echo(line, err=True))


def format_summary(summary: DataSummary) -> str:
    """A few lines for a person: task, shape, classes, and examples per split."""
    meta = summary.meta
    shape = " x ".join(map(str, summary.input_shape))
    extra = f", vocabulary of {len(meta.vocab)} ids" if meta.vocab is not None else ""
    lines = [
        f"{summary.path}: valid {summary.role} data folder",
        f"  {meta.dataset}: {meta.task} task, {meta.num_classes} classes, "
        f"examples of shape {shape}{extra}",
    ]
    width = max(len(s.name) for s in summary.splits)
    lines += [f"  {s.name:<{width}} {_split_line(s)}" for s in summary.splits]
    return "\n".join(lines)


def format_budget(ledger: PrivacyLedger, folder: Path, delta: float, accountant: str) -> str:
    """A few lines for a person: lifetime epsilon, the node's cap, and each run's spend."""
    label = f"example-level, at δ={delta:g}, {accountant} accountant"
    cap = (
        f"node's own budget (--budget): ε = {ledger.node_budget:g} over all runs"
        if ledger.node_budget is not None
        else "node's own budget: none set (each run's target epsilon applies)"
    )
    if not ledger.spends:
        return f"{folder}: no privacy spent yet (no DP-SGD round recorded)\n  {cap}"
    runs = ledger.runs()
    lines = [
        f"{ledger_path(folder)}",
        f"  lifetime cumulative ε = {ledger.epsilon(delta, accountant):.3f} over all "
        f"{len(runs)} run(s) on this data ({label})",
        f"  {cap}",
    ]
    for run in runs:
        noise = ledger.run_noise.get(run.run_id)
        lines.append(
            f"  run {run.run_id}: {len(run.rounds)} round(s) ({_ranges(run.rounds)}), "
            f"{run.steps} steps, noise {'?' if noise is None else f'{noise:g}'}; "
            "ε of this run alone = "
            f"{ledger.epsilon(delta, accountant, run.run_id):.3f}"
        )
    return "\n".join(lines)


def _ledger_line(ledger: PrivacyLedger) -> str:
    if not ledger.spends:
        spent = "privacy ledger: nothing spent yet"
    else:
        rounds = sum(len(r.rounds) for r in ledger.runs())
        spent = (
            f"privacy ledger: {rounds} round(s) in {len(ledger.runs())} run(s) so far "
            f"(see {PROG} budget)"
        )
    cap = "" if ledger.node_budget is None else f"; node's own budget ε = {ledger.node_budget:g}"
    return spent + cap


def _ranges(numbers: tuple[int, ...]) -> str:
    """``(1, 2, 3, 5)`` -> ``"rounds 1-3, 5"``."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return "rounds " + ", ".join(parts)


def _split_line(split: SplitSummary) -> str:
    counts = split.class_counts
    present = sum(1 for c in counts if c)
    if len(counts) <= 20:
        per_class = "per class: " + " ".join(map(str, counts))
    else:
        per_class = f"largest class {max(counts)}, smallest {min(counts)}"
    return f"{split.examples:>7} examples, {present}/{len(counts)} classes present ({per_class})"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line of error and a non-zero exit on bad input."""
    args = sys.argv[1:] if argv is None else argv
    show_progress(PROG, ("fedpriv",))
    command = typer.main.get_command(app)
    run_command(command, args, PROG)


if __name__ == "__main__":
    main()
