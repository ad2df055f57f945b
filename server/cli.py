"""``fedpriv-server``: the coordinator's command (real deployment, not simulation).

``fedpriv-server init DIR`` makes the deployment folder: a private CA, the SuperLink's
TLS certificate and one key pair per SuperNode (see :mod:`server.certs`).

Every input mistake ends in one line on stderr and a non-zero exit code: 2 for a
malformed command line, 1 for a bad setting, an existing file or a refused write.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from server.certs import CA_CERT, CA_KEY, NODES_DIR, SERVER_CERT, SERVER_KEY, init_deployment
from shared_models.cli import run_command

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
    typer.echo("On the SuperLink machine (registrations live in --database):")
    typer.echo(
        f"  flower-superlink --host 0.0.0.0 --database state.db --enable-supernode-auth "
        f"--ssl-ca-certfile {rel(CA_CERT)} --ssl-certfile {rel(SERVER_CERT)} "
        f"--ssl-keyfile {rel(SERVER_KEY)}"
    )
    typer.echo(f"  flwr supernode register {rel(NODES_DIR + '/node-K.pub')} <connection>")
    typer.echo("At site K:")
    typer.echo(
        f"  flower-supernode --superlink {result.hosts[0]}:8000 --root-certificates ca.crt "
        "--auth-supernode-private-key node-K.key"
    )


# `fedpriv-server start DIR` (the SuperLink and ServerApp from a deployment folder) goes
# here, as another @app.command(); it can find its files with server.certs.describe(DIR).


def configure_logging() -> None:
    """Warnings and errors of fedpriv on stderr; the command's own output goes to stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line of error and a non-zero exit on bad input."""
    args = sys.argv[1:] if argv is None else argv
    configure_logging()
    command = typer.main.get_command(app)
    run_command(command, args, PROG)


if __name__ == "__main__":
    main()
