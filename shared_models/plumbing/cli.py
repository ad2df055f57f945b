"""How every fedpriv command turns input mistakes into one line and an exit code.

Shared by ``fedpriv-sim``, ``fedpriv-server`` and ``fedpriv-client``: a
malformed command line exits 2, a bad setting or bad data exits 1, and either
prints exactly one line, ``PROG: error: ...``, on stderr (no traceback).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import NoReturn

import click

from fedpriv.shared_models.errors import ConfigError, FedprivError


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


def quiet_flower() -> None:
    """Keep Flower's own logs to errors.

    Flower sets its logger to DEBUG when it is first imported, which the commands do
    late (so that ``--help`` stays light): call this once Flower is imported.
    """
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)


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
    except ModuleNotFoundError as err:  # a site install (no extras) running a simulation tool
        fail(
            prog,
            f"the Python package '{err.name}' is not installed; simulations need the sim extra: "
            "pip install 'fedpriv[sim]'",
            1,
        )
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
