"""``fedpriv-sim`` (the run command): a whole DP federation on one machine.

Flower's simulation engine on Ray runs the same ServerApp and ClientApp a
deployment runs (:mod:`fedpriv.simulations.apps`), with the simulation's data
in place of the nodes' data folders. Everything that can be checked is checked
before Ray starts, so bad input is one line and exit code 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import FedprivError
from fedpriv.shared_models.plumbing.cli import quiet_flower, refuse_flags_with_resume
from fedpriv.shared_models.plumbing.flags import (
    RESUME_SAFE,
    Flags,
    run_config_from_flags,
    training_flags,
)

if TYPE_CHECKING:
    from fedpriv.simulations.faults import FaultPlan

logger = logging.getLogger(__name__)
_D = RunConfig()

run_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@run_app.command(
    help="Run a federation of DP-SGD clients on one machine and write a run folder. "
    "Other commands: `fedpriv-sim data` fetches the text corpora; `fedpriv-sim pretrain` "
    "pretrains a text model on public text; `fedpriv-sim plan` and `fedpriv-sim audit` "
    "plan and audit the privacy; `fedpriv-sim export-demo-data` writes data folders."
)
@training_flags
def run(
    ctx: typer.Context,
    dataset: Annotated[
        str, typer.Option(help="digits (embedded) | fashion-mnist | sotu | sentiment")
    ] = _D.dataset,
    data_dir: Annotated[str, typer.Option(help="folder of the dataset's files")] = _D.data_dir,
    clients: Annotated[int, typer.Option(help="number of clients")] = _D.num_clients,
    partitioning: Annotated[
        str, typer.Option(help="iid | dirichlet | shards | natural")
    ] = _D.partitioning,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration")] = _D.dirichlet_alpha,
    shards_per_client: Annotated[int, typer.Option(help="label shards per client")] = (
        _D.shards_per_client
    ),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = _D.device,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default runs/<time>-<model>-<dataset>)")
    ] = None,
    faults: Annotated[
        str,
        typer.Option(
            help="make the last clients misbehave, e.g. nan:1,shape:1,huge:1 or signflip:2 "
            "(nan, shape, huge, scale, signflip, crash, hang)"
        ),
    ] = "",
    fault_scale: Annotated[
        float, typer.Option(help="factor of scale/signflip updates (signflip uses minus it)")
    ] = 10.0,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue this run folder from its last checkpoint, with the run's own settings"
        ),
    ] = None,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated client")] = 1.0,
    client_gpus: Annotated[float, typer.Option(help="GPUs per simulated client")] = 0.0,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's own logs")] = False,
    flags: Flags = {},  # noqa: B006 - filled by @training_flags
) -> None:
    if client_cpus <= 0 or client_gpus < 0:
        raise FedprivError("--client-cpus must be > 0 and --client-gpus >= 0")
    if resume is not None:
        from fedpriv.server.resume import resume_config

        refuse_flags_with_resume(ctx, _RESUME_FLAGS)
        config = resume_config(
            resume,
            device=device,
            keep_checkpoints=flags["keep_checkpoints"],
            round_timeout=flags["round_timeout"],
        )
        run_dir = Path(config.resume)
    else:
        config = run_config_from_flags(
            flags,
            dataset=dataset,
            data_dir=data_dir,
            num_clients=clients,
            partitioning=partitioning,
            dirichlet_alpha=alpha,
            shards_per_client=shards_per_client,
            device=device,
        )
        stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = out or Path("runs") / f"{stamp}-{config.model}-{dataset}"
    plan = None
    if faults:
        from fedpriv.simulations.faults import FaultPlan

        plan = FaultPlan.parse(faults, config.num_clients, fault_scale)
    simulate(
        config,
        run_dir,
        client_cpus=client_cpus,
        client_gpus=client_gpus,
        verbose=verbose,
        faults=plan,
    )


#: Flags that may go with --resume (they do not change what the run computes).
_RESUME_FLAGS = {
    "resume",
    "device",
    "client_cpus",
    "client_gpus",
    "verbose",
    "faults",
    "fault_scale",
    *RESUME_SAFE,
}


def simulate(
    config: RunConfig,
    run_dir: Path,
    *,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    verbose: bool = False,
    faults: FaultPlan | None = None,
) -> dict:
    """Check everything that can be checked up front, then run the federation.

    Returns the run's summary (also in ``run_dir/summary.json``).
    """
    # Import late: the apps pull in torch, Opacus and Flower's simulation.
    from flwr.simulation import run_simulation

    from fedpriv.server.model_init import initial_model
    from fedpriv.server.reporting import privacy_summary_text
    from fedpriv.server.resume import check_resume
    from fedpriv.server.run_folder import METRICS_FILE, SUMMARY_FILE, RunFolder
    from fedpriv.simulations.apps import (
        load_central_data,
        load_partitions,
        make_client_app,
        make_server_app,
        split_client,
    )

    if not verbose:
        quiet_flower()

    # Up-front checks; they log nothing, so bad input shows its error line alone.
    _, parts = load_partitions(config)  # missing data / too many clients fail here
    central = load_central_data(config)
    model, _ = initial_model(config, central)  # model/data/checkpoint/freeze errors
    _check_budgets(config, [len(split_client(config, p, i)[0]) for i, p in enumerate(parts)])
    if config.resume:
        folder = RunFolder.open_existing(run_dir)
        check_resume(folder, config, model, central.model_config.to_dict())  # corrupt/foreign
    else:
        folder = RunFolder.create(run_dir)  # an existing non-empty folder fails here
    # The simulated nodes keep their privacy ledgers in the run folder (so a resumed run
    # continues them): they need to know where it is.
    config = dataclasses.replace(config, run_dir=str(folder.path))
    sizes = sorted(len(p) for p in parts)
    logger.info(
        "%d clients (%s split, %d-%d examples each), %d rounds, %s",
        config.num_clients,
        config.partitioning,
        sizes[0],
        sizes[-1],
        config.rounds,
        _privacy_words(config),
    )
    if faults is not None:
        logger.info("faulty clients: %s", faults.describe())
    started = time.monotonic()
    # Ray 2.55 warns on every start that a future version will stop hiding GPUs from tasks
    # with num_gpus=0; fedpriv relies on today's behaviour (--client-gpus 0 means CPU).
    warnings.filterwarnings(
        "ignore", message="Tip: In future versions of Ray", category=FutureWarning
    )
    run_simulation(
        server_app=make_server_app(config, folder.path),
        client_app=make_client_app(config, faults),
        num_supernodes=config.num_clients,
        backend_config={
            "client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
            "init_args": {
                "logging_level": "INFO" if verbose else "ERROR",
                "log_to_driver": verbose,
            },
        },
        verbose_logging=verbose,
    )
    summary_path = folder.path / SUMMARY_FILE
    if not summary_path.exists():
        raise FedprivError(f"the simulation ended without a summary in {folder.path}")
    summary = json.loads(summary_path.read_text())
    if summary["rounds_completed"] == 0:
        failures = [
            f
            for line in (folder.path / METRICS_FILE).read_text().splitlines()
            for f in json.loads(line).get("failures", [])
        ]
        raise FedprivError(
            f"no client trained in any round: {failures[0] if failures else 'no replies'} "
            f"(run folder {folder.path})"
        )
    eps_text = privacy_summary_text(summary)
    logger.info(
        "done in %.0fs: test accuracy %.3f after %d round(s); %s. Run folder: %s",
        time.monotonic() - started,
        _or_nan(summary["test_accuracy"]),
        summary["rounds_completed"],
        eps_text,
        folder.path,
    )
    if summary["stopped_early"]:
        logger.warning("stopped early: %s", summary["stopped_early"])
    return summary


def _check_budgets(config: RunConfig, train_sizes: list[int]) -> None:
    """Refuse an impossible privacy budget before anything starts (the clients would fail).

    Example-level: the smallest and the largest client (the extremes of the
    sampling rate); client-level: the federation's noise.
    """
    from fedpriv.server.client_dp import ClientLevelLedger
    from fedpriv.shared_models.accounting import noise_for_target, plan_round

    dp = config.dp
    if dp.enabled and dp.noise_multiplier is None and dp.target_epsilon is not None:
        for size in {min(train_sizes), max(train_sizes)}:
            noise_for_target(
                target_epsilon=dp.target_epsilon,
                delta=dp.delta,
                plan=plan_round(size, config.batch_size, config.local_epochs),
                rounds=config.rounds,
                accountant=dp.accountant,
            )
    if config.client_dp.enabled:
        ClientLevelLedger.for_run(config.client_dp, config.dp, config.rounds)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _privacy_words(config: RunConfig) -> str:
    if not config.dp.enabled:
        words = "no example-level DP" if config.client_dp.enabled else "no DP"
    elif config.dp.noise_multiplier is not None:
        words = f"DP-SGD with noise multiplier {config.dp.noise_multiplier:g}"
    else:
        words = (
            f"DP-SGD to a cumulative ε budget of {config.dp.target_epsilon:g} per client "
            f"(δ={config.dp.delta:g}, {config.dp.accountant.upper()})"
        )
    client = config.client_dp
    if client.enabled:
        words += f"; client-level DP ({client.mode}"
        words += (
            f", noise multiplier {client.noise_multiplier:g}" if client.noise_multiplier else ""
        )
        words += f", federation budget ε={client.target_epsilon:g}" if client.target_epsilon else ""
        words += ")"
    return words
