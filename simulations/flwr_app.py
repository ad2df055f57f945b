"""What ``flwr run .`` runs: the simulation's ServerApp and ClientApp, configured by Flower.

``pyproject.toml`` names these two (``[tool.flwr.app.components]``). Their
settings come from ``context.run_config`` (the ``[tool.flwr.app.config]``
defaults, overridden with ``--run-config``); each simulated node trains on its
partition of the ``dataset`` and keeps its privacy ledger in Flower's
``context.state``, for the run. The deployed components are
``fedpriv.server.app:app`` and ``fedpriv.client.app:app``, which never import
this package.
"""

from __future__ import annotations

from fedpriv.simulations.apps import make_client_app, make_server_app

server_app = make_server_app()
client_app = make_client_app()
