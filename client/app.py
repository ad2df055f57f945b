"""The ClientApp: local DP-SGD on a node's own data (Flower Message API).

``train`` loads the global weights and runs one client round
(:func:`fedpriv.client.round.client_round`: budget check, DP-SGD, ledger
record), declining with an error reply when the round would overspend, and
replies with the trained weights and a
:class:`~fedpriv.shared_models.messages.TrainReport`. ``evaluate`` reports loss
and accuracy on the node's held-out split.

A deployed node (``fedpriv-client start``) names its data folder in its node
config (``data-path``) and keeps its privacy ledger there
(:mod:`fedpriv.client.ledger_store`): the epsilon it reports is its lifetime
one over all runs on that data, and its budget is the lower of the run's
target epsilon and its own ``privacy-budget``. Simulations build the same app
around their own data (:mod:`fedpriv.simulations.apps`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedpriv.client.clipping_mod import client_clipping_mod
from fedpriv.client.data import ClientData, ClientDataFn, load_local_data
from fedpriv.client.ledger_store import FileStore, LedgerError, LedgerStore, StateStore
from fedpriv.client.round import client_round
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import ConfigError, PrivacyBudgetError
from fedpriv.shared_models.evaluation import evaluate_model, resolve_device
from fedpriv.shared_models.messages import (
    DECLINED_BUDGET,
    LEDGER_UNUSABLE,
    EvalReport,
    MessageFormatError,
    evaluate_reply,
    server_round,
    state_dict_from_message,
    train_reply,
)
from fedpriv.shared_models.registry import build_model

logger = logging.getLogger(__name__)

#: The SuperNode's ``--node-config`` key naming its local data folder (a deployment).
NODE_DATA_PATH = "data-path"
#: Optional ``--node-config`` key: the number this node goes by in reports.
NODE_PARTITION_ID = "partition-id"
#: Optional ``--node-config`` key: this node's device (auto | cpu | cuda), over the run's.
NODE_DEVICE = "device"
#: Optional ``--node-config`` key: the node's own cap on its lifetime cumulative epsilon
#: (``fedpriv-client start --budget``); the run's target epsilon cannot raise it.
NODE_PRIVACY_BUDGET = "privacy-budget"


def build_client_app(
    load_data: ClientDataFn,
    config: RunConfig | Callable[[Context], RunConfig] | None = None,
    *,
    mods: list[Mod] | None = None,
    ledger_root: Path | None = None,
) -> ClientApp:
    """A ClientApp that trains on what ``load_data`` returns.

    Args:
        load_data: finds this node's data from its context and the run config.
        config: the run's settings, or how to read them from the context;
            ``None`` parses ``context.run_config``.
        mods: further Flower mods, outermost first (they see the reply after
            client-side clipping), e.g. a simulation's faulty-client mod.
        ledger_root: where nodes without a data folder (simulated ones) keep
            their ledger files, one folder ``client-K`` each; ``None``: in
            ``context.state``, for the run only.
    """
    app = ClientApp(mods=[*(mods or []), client_clipping_mod])

    def run_config(context: Context) -> RunConfig:
        if isinstance(config, RunConfig):
            return config
        if config is not None:
            return config(context)
        return RunConfig.from_run_config(context.run_config)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = run_config(context)
        data = load_data(context, cfg)
        rnd = server_round(msg)
        store = ledger_store(context, ledger_root)
        try:
            # One round at a time per data folder: the budget check and the record
            # of the spend must see every other run's rounds on the same data.
            with store.lock():
                model = build_model(data.model_config)
                _load_global(model, msg)
                result = client_round(
                    model,
                    data,
                    cfg,
                    store=store,
                    run_id=context.run_id,
                    server_round=rnd,
                    device=node_device(context, cfg),
                    seed=cfg.seed * 1_000_003 + data.partition_id * 1009 + rnd,
                    node_budget=node_budget(context),
                )
        except PrivacyBudgetError as err:
            logger.info("client %d, round %d: %s", data.partition_id, rnd, err)
            return Message(Error(code=DECLINED_BUDGET, reason=str(err)), reply_to=msg)
        except LedgerError as err:
            logger.error("round %d: %s", rnd, err)
            return Message(Error(code=LEDGER_UNUSABLE, reason=str(err)), reply_to=msg)
        return train_reply(msg, result.update, result.report)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = run_config(context)
        data = load_data(context, cfg)
        model = build_model(data.model_config)
        _load_global(model, msg)
        loss, accuracy = evaluate_model(
            model, data.x_val, data.y_val, device=node_device(context, cfg)
        )
        return evaluate_reply(msg, EvalReport(len(data.x_val), loss, accuracy))

    return app


def _load_global(model: torch.nn.Module, msg: Message) -> None:
    """Load the server's weights; a shape mismatch means the two sides disagree on the task."""
    try:
        model.load_state_dict(state_dict_from_message(msg))
    except RuntimeError as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), "")
        raise MessageFormatError(
            "the global model does not fit this node's data (a different task, number of "
            f"classes, input shape or vocabulary than the coordinator's): {first}"
        ) from None


def node_device(context: Context, cfg: RunConfig) -> torch.device:
    """The device this node trains on: its own ``device`` node config, else the run's."""
    return resolve_device(str(context.node_config.get(NODE_DEVICE, cfg.device)))


def load_node_data(context: Context, cfg: RunConfig) -> ClientData:
    """A deployed node's data: the local data folder its node config names.

    ``fedpriv-client start`` passes ``--node-config 'data-path="DIR"'``; the
    node goes by its ``partition-id`` there, or by its Flower node id (mod
    2**31) in reports.
    """
    node_config = context.node_config
    if NODE_DATA_PATH not in node_config:
        raise ConfigError(
            f"this node has no '{NODE_DATA_PATH}' in its node config: start it with "
            "fedpriv-client start --data DIR (simulations use fedpriv.simulations.flwr_app)"
        )
    partition_id = node_config.get(NODE_PARTITION_ID, context.node_id % 2**31)
    return load_local_data(
        Path(str(node_config[NODE_DATA_PATH])),
        partition_id=int(partition_id),  # type: ignore[arg-type]
        model=cfg.model,
    )


def node_budget(context: Context) -> float | None:
    """The node's own cap on its lifetime epsilon (``privacy-budget``), or ``None``."""
    value = context.node_config.get(NODE_PRIVACY_BUDGET)
    return None if value is None else float(value)  # type: ignore[arg-type]


def ledger_store(context: Context, ledger_root: Path | None) -> LedgerStore:
    """Where this node's ledger lives.

    A deployed node: its data folder. A simulated node of ``fedpriv-sim``:
    ``ledger_root/client-K`` in the run folder, so that a resumed run continues
    its clients' ledgers. Otherwise (``flwr run .``): ``context.state``, for
    this run only.
    """
    if NODE_DATA_PATH in context.node_config:
        return FileStore(Path(str(context.node_config[NODE_DATA_PATH])))
    if ledger_root is not None and NODE_PARTITION_ID in context.node_config:
        partition_id = int(context.node_config[NODE_PARTITION_ID])  # type: ignore[arg-type]
        folder = ledger_root / f"client-{partition_id}"
        folder.mkdir(parents=True, exist_ok=True)
        return FileStore(folder)
    return StateStore(context.state)


# What a deployed node runs (the app bundle `fedpriv-server start` submits).
app = build_client_app(load_node_data)
