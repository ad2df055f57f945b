"""``fedpriv-server``: the coordinator's command (real deployment, not simulation).

``fedpriv-server init DIR`` makes the deployment folder: a private CA, the SuperLink's
TLS certificate and one key pair per SuperNode (see :mod:`fedpriv.server.certs`).
``fedpriv-server start DIR --test-data FOLDER`` starts the SuperLink from that folder
and runs one federation on the nodes that connect (see :mod:`fedpriv.server.deploy`).

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

from fedpriv.server.certs import (
    CA_CERT,
    CA_KEY,
    NODES_DIR,
    SERVER_CERT,
    SERVER_KEY,
    init_deployment,
)
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.plumbing.cli import refuse_flags_with_resume, run_command
from fedpriv.shared_models.plumbing.flags import (
    RESUME_SAFE,
    Flags,
    run_config_from_flags,
    training_flags,
)

if TYPE_CHECKING:
    from fedpriv.server.deploy import Coordinator
    from fedpriv.shared_models.config import RunConfig

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


@app.command(
    help="Start the coordinator: a SuperLink with TLS and node authentication, then run "
    "the federation on the nodes that connect, and write the run folder. Exits 0 only when "
    "the run completed."
)
@training_flags
def start(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="deployment folder made by fedpriv-server init")
    ],
    test_data: Annotated[
        Path | None,
        typer.Option(
            help="the coordinator's test-set data folder (role server), e.g. "
            "server-test from fedpriv-sim export-demo-data (required unless --resume)"
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="continue this run folder from its last checkpoint, with the run's own settings"
        ),
    ] = None,
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
    nodes: Annotated[
        int, typer.Option(help="nodes the run waits for before round 1 (up to --round-timeout)")
    ] = 2,
    min_nodes: Annotated[
        int, typer.Option(help="fewest connected nodes a round may start with (default --nodes)")
    ] = 0,
    flags: Flags = {},  # noqa: B006 - filled by @training_flags
) -> None:
    # Import late: `init` should not pay for torch.
    from fedpriv.server.central_data import load_central_data
    from fedpriv.server.deploy import Coordinator
    from fedpriv.server.model_init import initial_model
    from fedpriv.server.resume import prepare_resume
    from fedpriv.server.run_folder import RunFolder
    from fedpriv.shared_models.data_folder import read_meta

    coordinator = Coordinator(directory, host=host, port=port, insecure=insecure)
    if resume is not None:
        refuse_flags_with_resume(ctx, _RESUME_FLAGS)
        config, _ = prepare_resume(
            resume,
            load_central_data,
            round_timeout=flags["round_timeout"],
            keep_checkpoints=flags["keep_checkpoints"],
        )
        _coordinate(config, coordinator, Path(config.resume), insecure)
        return
    if test_data is None:
        raise ConfigError("--test-data is required (the coordinator's test-set data folder)")
    test_data = test_data.expanduser().resolve()
    init_checkpoint = flags["init_checkpoint"]
    config = run_config_from_flags(
        flags,
        dataset=read_meta(test_data).dataset,
        num_clients=nodes,
        min_nodes=min_nodes,
        init_checkpoint=str(Path(init_checkpoint).resolve()) if init_checkpoint else "",
        test_data=str(test_data),
    )
    # Up-front checks: test data, model, checkpoint, the federation's budget and the run
    # folder, before any process starts. (Each node checks its own budget against its data.)
    initial_model(config, load_central_data(config))
    if config.client_dp.enabled:
        from fedpriv.server.client_dp import ClientLevelLedger

        ClientLevelLedger.for_run(config.client_dp, config.dp, config.rounds)
    stamp = f"{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = out or Path("runs") / f"{stamp}-{config.model}-{config.dataset}"
    folder = RunFolder.create(run_dir)
    _coordinate(config, coordinator, folder.path, insecure)


#: Flags that may go with --resume (where and how the coordinator listens, not what it computes).
_RESUME_FLAGS = {"directory", "resume", "host", "port", "insecure", *RESUME_SAFE}


def _coordinate(config: RunConfig, coordinator: Coordinator, run_dir: Path, insecure: bool) -> None:
    from fedpriv.server.deploy import start_coordinator
    from fedpriv.server.reporting import privacy_summary_text
    from fedpriv.shared_models.plumbing.cli import quiet_flower
    from fedpriv.shared_models.plumbing.processes import exit_on_termination

    quiet_flower()

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
