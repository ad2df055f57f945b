"""The ServerApp: FedAvg (or another strategy) over DP-SGD clients.

Each round it trains on the sampled clients, evaluates on a sample of the
clients' held-out splits and on the central test set, prints one line of
progress, and appends to the run folder (:mod:`fedpriv.server.federation`).
A deployed coordinator (``fedpriv-server start``) runs :data:`app`, which
tests on the ``test-data`` folder; simulations build the same app around
their own test split (:mod:`fedpriv.simulations.apps`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.server.central_data import CentralDataFn, load_central_data
from fedpriv.server.federation import run_federation
from fedpriv.shared_models.config import RunConfig

logger = logging.getLogger(__name__)

#: How the ServerApp's progress lines start when Flower runs it (``fedpriv-server start``
#: reads them from the run's log stream).
PROGRESS_PREFIX = "fedpriv: "


def build_server_app(
    load_central: CentralDataFn,
    config: RunConfig | None = None,
    run_dir: Path | None = None,
) -> ServerApp:
    """A ServerApp that runs the federation described by ``config``.

    Args:
        load_central: gives the central test set and the model config.
        config: the run's settings; ``None`` reads ``context.run_config``.
        run_dir: where to write the run folder; ``None`` takes the ``run-dir``
            setting, or makes ``./runs/<timestamp>-<model>-<dataset>``.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is None:  # started by Flower (`flwr run`): this is the entry point
            show_progress()
        cfg = config if config is not None else RunConfig.from_run_config(context.run_config)
        where = run_dir or (Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg))
        run_federation(grid, cfg, load_central(cfg), where)

    return app


def show_progress() -> None:
    """Send fedpriv's progress lines to stderr, once, when Flower runs the ServerApp."""
    log = logging.getLogger("fedpriv")
    if not any(h.get_name() == "fedpriv-serverapp" for h in log.handlers):
        handler = logging.StreamHandler()
        handler.set_name("fedpriv-serverapp")
        handler.setFormatter(logging.Formatter(PROGRESS_PREFIX + "%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # once, not again through the root logger Flower configures


def default_run_dir(cfg: RunConfig) -> Path:
    """``runs/<time>-<model>-<dataset>`` in the current folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model}-{cfg.dataset}"


# What a deployed coordinator runs (the app bundle `fedpriv-server start` submits).
app = build_server_app(load_central_data)
