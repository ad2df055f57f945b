"""What ``flwr run .`` runs: the simulation's ServerApp and ClientApp, configured by Flower.

``pyproject.toml`` names these two (``[tool.flwr.app.components]``). Their
settings come from ``context.run_config`` (the ``[tool.flwr.app.config]``
defaults, overridden with ``--run-config``); each simulated node trains on its
partition of the ``dataset`` and keeps its privacy ledger in Flower's
``context.state``, for the run. The deployed components are
``fedpriv.server.app:app`` and ``fedpriv.client.app:app``, which never import
this package.

The number of clients: ``num-clients = 0`` (the default in ``pyproject.toml``)
means "the SuperNodes the federation has", so the bare ``flwr run .`` works
with Flower's default local federation (2 SuperNodes). A ``num-clients`` given
with ``--run-config`` must equal the federation's ``num-supernodes``; if it does
not, the ServerApp stops within seconds and says which flag to change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.server.app import default_run_dir, show_progress
from fedpriv.server.federation import run_federation
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import FederationError, FedprivError
from fedpriv.simulations.apps import load_central_data, make_client_app

logger = logging.getLogger(__name__)

#: ``num-clients`` in the run config that means "as many as the federation's SuperNodes".
AUTO = 0
#: How long the ServerApp waits for the simulated SuperNodes to register (seconds).
REGISTRATION_WAIT_S = 20.0


def simulated_config(run_config: Mapping[str, Any], supernodes: int) -> RunConfig:
    """The run's settings, with ``num-clients`` resolved against the federation's size.

    Raises:
        FederationError: ``num-clients`` was set and differs from ``supernodes``.
    """
    asked = run_config.get("num-clients", AUTO)
    if asked not in (AUTO, supernodes):
        raise FederationError(
            f"the federation has {supernodes} SuperNodes but num-clients is {asked}: run "
            f'`flwr run . --federation-config "num-supernodes={asked}"` or '
            f'`flwr run . --run-config "num-clients={supernodes}"`'
        )
    return RunConfig.from_run_config({**run_config, "num-clients": supernodes})


def count_supernodes(grid: Grid, wait: float = REGISTRATION_WAIT_S) -> int:
    """The federation's SuperNodes, once their number has settled (all register at start)."""
    deadline = time.monotonic() + wait
    seen, stable_since = -1, time.monotonic()
    while True:
        count = len(list(grid.get_node_ids()))
        now = time.monotonic()
        if count != seen:
            seen, stable_since = count, now
        if (count and now - stable_since >= 1.0) or now >= deadline:
            return count
        time.sleep(0.2)


# Simulated clients share one machine: one torch thread each, as fedpriv-sim's clients have.
# (Flower's default client resources are 2 CPUs, and two threads per client on a busy machine
# made a 1.5 s round take a minute.)
torch.set_num_threads(1)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    show_progress()
    logger.info("ServerApp started: counting the federation's SuperNodes")
    try:
        cfg = simulated_config(context.run_config, count_supernodes(grid))
    except FedprivError as err:
        logger.error("error: %s", err)
        raise SystemExit(1) from None
    if context.run_config.get("num-clients", AUTO) == AUTO:
        logger.info(
            "num-clients not set: using the federation's %d SuperNodes (set it with "
            '--federation-config "num-supernodes=N")',
            cfg.num_clients,
        )
    where = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    run_federation(grid, cfg, load_central_data(cfg), where)


def _client_config(context: Context) -> RunConfig:
    supernodes = int(context.node_config["num-partitions"])  # type: ignore[arg-type]
    return simulated_config(context.run_config, supernodes)


client_app = make_client_app(parse_config=_client_config)
