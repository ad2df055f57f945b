"""``fedpriv-client``: the client node's command.

Subcommands:

* ``start --server HOST:PORT --data DIR --ca CA.crt --key NODE.key``: run this
  node (a Flower SuperNode) against a coordinator, training on ``DIR``
  (:mod:`client.node`).
* ``check-data DIR``: validate a local data folder (:mod:`client.local_data`) and
  print what it holds.
* ``export-demo-data --dataset digits --clients 3 OUT``: write a simulation
  dataset as one data folder per client plus the coordinator's test set, to try
  a deployment on one machine.

Every input mistake ends in one line on stderr and a non-zero exit code:
2 for a malformed command line, 1 for bad data or a bad setting.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from client.local_data import DataSummary, SplitSummary, check_data
from shared_models.cli import run_command, show_progress
from shared_models.config import RunConfig

PROG = "fedpriv-client"
logger = logging.getLogger("client.cli")
_D = RunConfig()  # partitioning defaults, as in fedpriv-sim

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="The fedpriv client node: check its local data folder, or write demo folders.",
)


@app.command("check-data", help="Validate a local data folder and print what it holds.")
def check_data_command(
    folder: Annotated[Path, typer.Argument(help="the data folder (holds fedpriv-data.json)")],
) -> None:
    typer.echo(format_summary(check_data(folder)))


@app.command(
    "export-demo-data",
    help="Write a simulation dataset as client data folders (client-0, client-1, ...) and "
    "the coordinator's test set (server-test), split exactly as fedpriv-sim splits it.",
)
def export_demo_data(
    out: Annotated[Path, typer.Argument(help="folder to create (must not exist or be empty)")],
    dataset: Annotated[
        str, typer.Option(help="digits | fashion-mnist | sotu | sentiment")
    ] = "digits",
    clients: Annotated[int, typer.Option(help="number of client folders")] = 3,
    partitioning: Annotated[str, typer.Option(help="iid | dirichlet | shards | natural")] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration")] = _D.dirichlet_alpha,
    shards_per_client: Annotated[int, typer.Option(help="label shards per client")] = (
        _D.shards_per_client
    ),
    seed: Annotated[int, typer.Option(help="seed of the data split")] = _D.seed,
    data_dir: Annotated[Path | None, typer.Option(help="folder of the dataset's files")] = None,
) -> None:
    # Import late: the simulation's data code is only needed here.
    from simulations.export import SERVER_TEST_FOLDER, export_partitions

    folders = export_partitions(
        dataset,
        clients,
        out,
        partitioning=partitioning,
        seed=seed,
        data_dir=data_dir,
        dirichlet_alpha=alpha,
        shards_per_client=shards_per_client,
    )
    for folder in [*folders, out / SERVER_TEST_FOLDER]:
        summary = check_data(folder)
        sizes = ", ".join(f"{s.examples} {s.name}" for s in summary.splits)
        typer.echo(f"{folder}: {sizes}")
    typer.echo(f"check a folder with: {PROG} check-data {folders[0]}")


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
) -> None:
    # Import late: check-data should not pay for Flower's process machinery.
    from client.node import NodeSettings, check_node, run_node
    from shared_models.processes import exit_on_termination

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
    )
    summary = check_node(settings)
    train = summary.splits[0]
    logger.info(
        "%s: %s, %d training examples; connecting to %s (%s)",
        data,
        summary.meta.dataset,
        train.examples,
        server,
        "INSECURE: plaintext, no node key" if insecure else f"TLS, trusting {ca}, key {key}",
    )
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
    show_progress(PROG, ("client", "simulations"))
    command = typer.main.get_command(app)
    run_command(command, args, PROG)


if __name__ == "__main__":
    main()
