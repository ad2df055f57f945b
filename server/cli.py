"""``fedpriv-server``: the coordinator's command (real deployment, not simulation).

``fedpriv-server init DIR`` makes the deployment folder: a private CA, the SuperLink's
TLS certificate and one key pair per SuperNode (see :mod:`server.certs`).
``fedpriv-server start DIR --test-data FOLDER`` starts the SuperLink from that folder
and runs one federation on the nodes that connect (see :mod:`server.deploy`).

Every input mistake ends in one line on stderr and a non-zero exit code: 2 for a
malformed command line, 1 for a bad setting, an existing file or a refused write.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from server.certs import CA_CERT, CA_KEY, NODES_DIR, SERVER_CERT, SERVER_KEY, init_deployment
from shared_models import cli as opt
from shared_models.cli import refuse_flags_with_resume, run_command
from shared_models.config import ClientDPConfig, DPConfig, RunConfig
from shared_models.errors import ConfigError

if TYPE_CHECKING:
    from server.deploy import Coordinator

PROG = "fedpriv-server"

app = typer.Typer(
    name=PROG,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Run the coordinator of a real federation: certificates, keys and the SuperLink.",
)


@app.callback()
def _group() -> None:
    """Run the coordinator of a real federation: certificates, keys and the SuperLink."""


@app.command(help="Make a deployment folder: CA, SuperLink TLS certificate and node keys.")
def init(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="deployment folder (created if missing)")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="NAME_OR_IP",
            help="a DNS name or IP address nodes use to reach the SuperLink (repeatable); "
            "localhost, 127.0.0.1 and ::1 are always included",
        ),
    ] = None,
    nodes: Annotated[int, typer.Option(help="number of SuperNode key pairs to make")] = 2,
    force: Annotated[
        bool, typer.Option("--force", help="replace an existing deployment's files")
    ] = False,
) -> None:
    result = init_deployment(directory, hosts=host or [], nodes=nodes, force=force)
    d = result.deployment

    def rel(name: str) -> str:
        return str(d.directory / name)

    typer.echo(f"Wrote {len(result.written)} files to {d.directory}:")
    typer.echo(f"  {rel(CA_CERT):<28} CA certificate, valid until {result.ca_not_after:%Y-%m-%d}")
    typer.echo(f"  {rel(CA_KEY):<28} CA private key (0600): keep it offline, copy it nowhere")
    typer.echo(
        f"  {rel(SERVER_CERT):<28} SuperLink certificate, valid until "
        f"{result.server_not_after:%Y-%m-%d}, for {', '.join(result.hosts)}"
    )
    typer.echo(f"  {rel(SERVER_KEY):<28} SuperLink private key (0600): stays on the SuperLink")
    for k in range(1, nodes + 1):
        key = rel(f"{NODES_DIR}/node-{k}.key")
        typer.echo(f"  {key:<28} SuperNode {k}'s private key (0600), public key in node-{k}.pub")
    for stale in result.stale_nodes:
        typer.echo(f"  note: {stale.name} is left from an earlier init and was not replaced")
    typer.echo("")
    typer.echo("Copy to each site K, and nothing else:")
    typer.echo(f"  {rel(CA_CERT)}  and  {rel(NODES_DIR + '/node-K.key')}")
    typer.echo("On this machine, start the coordinator (add --host 0.0.0.0 for remote sites):")
    typer.echo(f"  {PROG} start {d.directory} --test-data TEST_FOLDER --nodes {nodes}")
    typer.echo("At site K:")
    typer.echo(
        f"  fedpriv-client start --server {result.hosts[0]}:8000 --data DATA_FOLDER "
        "--ca ca.crt --key node-K.key"
    )


_D = RunConfig()


@app.command(
    help="Start the coordinator: a SuperLink with TLS and node authentication, then run "
    "the federation on the nodes that connect, and write the run folder. Exits 0 only when "
    "the run completed."
)
def start(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="deployment folder made by fedpriv-server init")
    ],
    test_data: Annotated[
        Path | None,
        typer.Option(
            help="the coordinator's test-set data folder (role server), e.g. "
            "server-test from fedpriv-client export-demo-data (required unless --resume)"
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue this run folder from its last checkpoint, with the run's own settings"
        ),
    ] = None,
    keep_checkpoints: Annotated[
        int, typer.Option(help="round checkpoints kept in the run folder")
    ] = _D.keep_checkpoints,
    out: Annotated[
        Path | None, typer.Option(help="run folder (default runs/<time>-<model>-<dataset>)")
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on; 0.0.0.0 accepts nodes on other machines")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the SuperLink's one port (all APIs)")] = 8000,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="plaintext and no node authentication (experiments only)"),
    ] = False,
    model: opt.Model = _D.model,
    nodes: Annotated[
        int, typer.Option(help="nodes the run waits for before round 1 (up to --round-timeout)")
    ] = 2,
    min_nodes: Annotated[
        int, typer.Option(help="fewest connected nodes a round may start with (default --nodes)")
    ] = 0,
    rounds: opt.Rounds = _D.rounds,
    round_timeout: Annotated[
        float, typer.Option(help="seconds a round (or the wait for nodes) may take")
    ] = _D.round_timeout,
    fraction: opt.Fraction = _D.fraction_train,
    fraction_evaluate: opt.FractionEvaluate = _D.fraction_evaluate,
    local_epochs: opt.LocalEpochs = _D.local_epochs,
    batch_size: opt.BatchSize = _D.batch_size,
    lr: opt.LearningRate = _D.learning_rate,
    momentum: opt.Momentum = _D.momentum,
    strategy: opt.Strategy = _D.strategy,
    max_update_norm: opt.MaxUpdateNorm = None,
    norm_bound: opt.NormBound = _D.norm_bound,
    byzantine_fraction: opt.ByzantineFraction = _D.byzantine_fraction,
    seed: Annotated[int, typer.Option(help="seed of sampling and noise")] = _D.seed,
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
    init_checkpoint: opt.InitCheckpoint = _D.init_checkpoint,
    freeze: opt.Freeze = _D.freeze,
) -> None:
    # Import late: `init` should not pay for torch.
    from client.local_data import read_meta
    from server.app import check_resume, initial_model, load_central_data, resume_config
    from server.deploy import Coordinator
    from server.run_folder import RunFolder

    coordinator = Coordinator(directory, host=host, port=port, insecure=insecure)
    if resume is not None:
        refuse_flags_with_resume(ctx, _RESUME_FLAGS)
        config = resume_config(
            resume, round_timeout=round_timeout, keep_checkpoints=keep_checkpoints
        )
        central = load_central_data(config)
        model_now, _ = initial_model(config, central)
        folder = RunFolder.open_existing(Path(config.resume))
        check_resume(folder, config, model_now, central.model_config.to_dict())
        _coordinate(config, coordinator, folder.path, insecure)
        return
    if test_data is None:
        raise ConfigError("--test-data is required (the coordinator's test-set data folder)")
    test_data = test_data.expanduser().resolve()
    config = RunConfig(
        model=model,
        dataset=read_meta(test_data).dataset,
        num_clients=nodes,
        min_nodes=min_nodes,
        rounds=rounds,
        round_timeout=round_timeout,
        fraction_train=fraction,
        fraction_evaluate=fraction_evaluate,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        strategy=strategy,
        max_update_norm=max_update_norm,
        norm_bound=norm_bound,
        byzantine_fraction=byzantine_fraction,
        seed=seed,
        init_checkpoint=str(Path(init_checkpoint).resolve()) if init_checkpoint else "",
        freeze=freeze,
        keep_checkpoints=keep_checkpoints,
        test_data=str(test_data),
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
    # Up-front checks: test data, model, checkpoint, the federation's budget and the run
    # folder, before any process starts. (Each node checks its own budget against its data.)
    initial_model(config, load_central_data(config))
    if config.client_dp.enabled:
        from server.client_dp import ClientLevelLedger

        ClientLevelLedger.for_run(config.client_dp, config.dp, config.rounds)
    run_dir = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{model}-{config.dataset}"
    folder = RunFolder.create(run_dir)
    _coordinate(config, coordinator, folder.path, insecure)


#: Flags that may go with --resume (where and how the coordinator listens, not what it computes).
_RESUME_FLAGS = {
    "directory",
    "resume",
    "host",
    "port",
    "insecure",
    "round_timeout",
    "keep_checkpoints",
}


def _coordinate(config: RunConfig, coordinator: Coordinator, run_dir: Path, insecure: bool) -> None:
    from server.app import privacy_summary_text
    from server.deploy import start_coordinator
    from shared_models.processes import exit_on_termination

    if insecure:
        typer.echo(
            f"{PROG}: WARNING: --insecure: no TLS and no node authentication. Anyone who can "
            "reach the port can read the model updates and join as a node. Experiments only.",
            err=True,
        )
    exit_on_termination()
    summary = start_coordinator(
        config, coordinator, run_dir, lambda line: typer.echo(line, err=True)
    )
    eps_text = privacy_summary_text(summary)
    acc = summary["test_accuracy"]
    typer.echo(
        f"run {summary['flower_run_id']} completed: {summary['rounds_completed']} round(s), "
        f"test accuracy {'n/a' if acc is None else f'{acc:.3f}'}; {eps_text}. "
        f"Run folder: {run_dir}"
    )


def configure_logging() -> None:
    """Warnings and errors of fedpriv on stderr; the command's own output goes to stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line of error and a non-zero exit on bad input."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging()
    command = typer.main.get_command(app)
    run_command(command, args, PROG)


if __name__ == "__main__":
    main()
