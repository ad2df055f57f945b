"""How every fedpriv command turns input mistakes into one line and an exit code.

Shared by ``fedpriv-sim``, ``fedpriv-server`` and ``fedpriv-client``: a
malformed command line exits 2, a bad setting or bad data exits 1, and either
prints exactly one line, ``PROG: error: ...``, on stderr (no traceback).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Annotated, NoReturn

import click
import typer

from shared_models.errors import ConfigError, FedprivError


def show_progress(prog: str, loggers: Iterable[str], *, quiet_flower: bool = True) -> None:
    """Send these loggers' INFO lines to stderr as bare messages.

    Safe to call again (``main()`` in tests): the handler named ``prog`` is
    replaced by one on the current ``sys.stderr``, never added twice. Flower's
    own logs are kept to errors unless ``quiet_flower`` is False.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(prog)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in loggers:
        log = logging.getLogger(name)
        log.setLevel(logging.INFO)
        for old in [h for h in log.handlers if h.get_name() == prog]:
            log.removeHandler(old)
        log.addHandler(handler)
        log.propagate = False
    if quiet_flower:
        logging.getLogger("flwr").setLevel(logging.ERROR)


def run_command(command: click.Command, args: list[str], prog: str) -> None:
    """Run a click/typer command; map every input mistake to one line and an exit code."""
    try:
        # Without standalone mode click returns (not raises) the code of a typer.Exit.
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(2)  # the help was printed: no error line to add
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.UsageError as err:
        fail(prog, err.format_message(), 2)
    except click.Abort:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except FedprivError as err:
        fail(prog, str(err), 1)
    except OSError as err:  # the system refused: a folder under a file, no permission, disk full
        fail(prog, str(err), 1)
    if isinstance(code, int) and code:
        sys.exit(code)


def refuse_flags_with_resume(ctx: click.Context, allowed: set[str]) -> None:
    """``--resume`` takes the run's own settings: refuse other flags given on the command line."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in ctx.params
        if name not in allowed
        and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        raise ConfigError(
            f"--resume continues a run with its own settings: leave out {', '.join(given)}"
        )


def fail(prog: str, message: str, code: int) -> NoReturn:
    """Print ``message`` as one line (newlines folded) on stderr and exit with ``code``."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


# -- the training flags fedpriv-sim and fedpriv-server start share (typer option types) --

Model = Annotated[str, typer.Option(help="cnn | lstm | transformer")]
Rounds = Annotated[int, typer.Option(help="federated rounds")]
Fraction = Annotated[float, typer.Option(help="fraction of clients trained per round")]
FractionEvaluate = Annotated[
    float, typer.Option(help="fraction of clients evaluating their held-out split per round")
]
LocalEpochs = Annotated[int, typer.Option(help="local epochs per round")]
BatchSize = Annotated[int, typer.Option(help="expected local batch size")]
LearningRate = Annotated[float, typer.Option(help="client learning rate (SGD)")]
Momentum = Annotated[float, typer.Option(help="client SGD momentum")]
Strategy = Annotated[str, typer.Option(help="fedavg, fedadam, fedmedian, ...")]
TargetEpsilon = Annotated[
    float | None, typer.Option(help="each client's cumulative epsilon budget for the run")
]
NoiseMultiplier = Annotated[
    float | None, typer.Option(help="fixed DP noise multiplier (instead of a target)")
]
NoDP = Annotated[bool, typer.Option("--no-dp", help="train without privacy")]
MaxGradNorm = Annotated[float, typer.Option(help="per-sample clipping norm C")]
Delta = Annotated[float, typer.Option(help="delta of every epsilon")]
Accountant = Annotated[str, typer.Option(help="rdp | prv")]
InitCheckpoint = Annotated[
    str, typer.Option(help="start from this .safetensors checkpoint (e.g. from pretrain)")
]
Freeze = Annotated[
    str, typer.Option(help="comma-separated parameter prefixes clients keep fixed, e.g. embed")
]
ClientDP = Annotated[
    str,
    typer.Option(
        help="client-level DP: off | server-fixed | server-adaptive | client-fixed | "
        "client-adaptive (who clips each client's update, to a fixed or adaptive norm)"
    ),
]
ClientEpsilon = Annotated[
    float | None,
    typer.Option(help="the federation's cumulative client-level epsilon budget"),
]
ClientNoise = Annotated[
    float | None,
    typer.Option(help="client-level noise multiplier (instead of deriving it from the budget)"),
]
ClientClip = Annotated[
    float, typer.Option(help="client-level clipping norm of an update (initial, if adaptive)")
]
ClientClipQuantile = Annotated[
    float, typer.Option(help="adaptive clipping: quantile of update norms the norm tracks")
]
ClientClipLr = Annotated[float, typer.Option(help="adaptive clipping: norm learning rate")]
MaxUpdateNorm = Annotated[
    float | None,
    typer.Option(help="reject client updates whose L2 norm exceeds this (default: no bound)"),
]
NormBound = Annotated[
    float, typer.Option(help="the normbounded strategy clips each update to this L2 norm")
]
ByzantineFraction = Annotated[
    float,
    typer.Option(
        help="fedtrimmedavg trims this fraction per side; krum assumes this x sampled bad"
    ),
]
