"""The ClientApp: local DP-SGD on a node's own data (Flower Message API).

``train`` loads the global weights, checks that one more round fits the
node's privacy budget (declining with an error reply if it does not), runs
DP-SGD, records the steps in the node's ledger and replies with the unwrapped
weights and a :class:`~shared_models.messages.TrainReport`. ``evaluate``
reports loss and accuracy on the node's held-out split.

The ledger: a deployed node (one with a ``data-path``) keeps it in its data
folder (:mod:`client.node_ledger`), the source of truth across rounds, runs and
restarts: it is read before the budget check and saved after training, before
the reply leaves; the epsilon reported is the lifetime cumulative one over all
runs on that data, and the budget is the lower of the run's target epsilon and
the node's own ``privacy-budget``. A simulated node of ``fedpriv-sim`` keeps
the same kind of file in the run folder (``node-ledgers/client-K``), so a
resumed run continues it; under ``flwr run`` it keeps a per-run ledger in
``context.state``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from client.clipping_mod import client_clipping_mod
from client.data import ClientData, ClientDataFn
from client.local_data import load_local_data
from client.node_ledger import LedgerError, RunLedger, locked
from client.privacy import PrivacyLedger, compute_epsilon, noise_for_target, plan_round
from client.training import DPStep, train_locally
from shared_models.checkpoint import freeze
from shared_models.config import RunConfig
from shared_models.errors import PrivacyBudgetError
from shared_models.evaluation import evaluate_model, resolve_device
from shared_models.messages import (
    DECLINED_BUDGET,
    LEDGER_UNUSABLE,
    EvalReport,
    MessageFormatError,
    TrainReport,
    evaluate_reply,
    server_round,
    state_dict_from_message,
    train_reply,
)
from shared_models.registry import build_model

logger = logging.getLogger(__name__)

LEDGER_STATE_KEY = "privacy-ledger"
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
    config: RunConfig | None = None,
    *,
    mods: list[Mod] | None = None,
    ledger_root: Path | None = None,
) -> ClientApp:
    """A ClientApp that trains on what ``load_data`` returns.

    Args:
        load_data: finds this node's data from its context and the run config.
        config: the run's settings; ``None`` reads them from
            ``context.run_config`` (as under ``flwr run``).
        mods: further Flower mods, outermost first (they see the reply after
            client-side clipping), e.g. a simulation's faulty-client mod.
        ledger_root: where nodes without a data folder (simulated ones) keep
            their ledger files, one folder ``client-K`` each; ``None``: in
            ``context.state``, for the run only.
    """
    app = ClientApp(mods=[*(mods or []), client_clipping_mod])

    def run_config(context: Context) -> RunConfig:
        return config if config is not None else RunConfig.from_run_config(context.run_config)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        # One round at a time per data folder: the budget check and the record
        # of the spend must see every other run's rounds on the same data.
        try:
            with _ledger_lock(context, ledger_root):
                return train_round(msg, context)
        except LedgerError as err:
            logger.error("round %d: %s", server_round(msg), err)
            return Message(Error(code=LEDGER_UNUSABLE, reason=str(err)), reply_to=msg)

    def train_round(msg: Message, context: Context) -> Message:
        cfg = run_config(context)
        data = load_data(context, cfg)
        rnd = server_round(msg)
        plan = plan_round(len(data.x_train), cfg.batch_size, cfg.local_epochs)
        dp_step: DPStep | None = None
        ledger = _load_ledger(context, cfg, rnd, ledger_root)
        if ledger is not None:
            if ledger.noise_multiplier is None:
                ledger.noise_multiplier = cfg.dp.noise_multiplier or noise_for_target(
                    target_epsilon=cfg.dp.target_epsilon,  # type: ignore[arg-type]
                    delta=cfg.dp.delta,
                    plan=plan,
                    rounds=cfg.rounds,
                    accountant=cfg.dp.accountant,
                )
            try:
                ledger.check_budget(ledger.noise_multiplier, plan)
            except PrivacyBudgetError as err:
                logger.info("client %d, round %d: %s", data.partition_id, rnd, err)
                _save_ledger(context, ledger)
                return Message(Error(code=DECLINED_BUDGET, reason=str(err)), reply_to=msg)
            dp_step = DPStep(ledger.noise_multiplier, cfg.dp.max_grad_norm, cfg.dp.accountant)

        model = build_model(data.model_config)
        _load_global(model, msg)
        if cfg.frozen_prefixes:
            freeze(model, cfg.frozen_prefixes)
        result = train_locally(
            model,
            data.x_train,
            data.y_train,
            epochs=cfg.local_epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            momentum=cfg.momentum,
            dp=dp_step,
            device=node_device(context, cfg),
            seed=cfg.seed * 1_000_003 + data.partition_id * 1009 + rnd,
        )
        if ledger is not None and dp_step is not None:
            for sigma, rate, steps in result.history:
                ledger.record(sigma, rate, steps)
            _save_ledger(context, ledger)
            epsilon = ledger.epsilon()
            epsilon_round = compute_epsilon(result.history, cfg.dp.delta, cfg.dp.accountant)
            noise = dp_step.noise_multiplier
        else:
            epsilon = epsilon_round = float("inf")
            noise = 0.0
        report = TrainReport(
            num_examples=result.num_examples,
            train_loss=result.mean_loss,
            epsilon=epsilon,
            epsilon_round=epsilon_round,
            delta=cfg.dp.delta,
            noise_multiplier=noise,
            sample_rate=plan.sample_rate,
            steps=result.steps,
            dp_enabled=cfg.dp.enabled,
            partition_id=data.partition_id,
            accountant=cfg.dp.accountant if cfg.dp.enabled else "none",
        )
        # Frozen tensors did not change: leave them out, the server keeps its own.
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        frozen = {name for name, _ in model.named_parameters()} - trainable
        update = {k: v for k, v in result.state_dict.items() if k not in frozen}
        return train_reply(msg, update, report)

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
    """This node's data: its local data folder in a deployment, else its simulated partition.

    A deployed SuperNode names its folder with ``--node-config 'data-path="DIR"'``
    (``fedpriv-client start`` does this) and goes by its ``partition-id`` there,
    or by its Flower node id (mod 2**31) in reports. Simulated nodes
    (``flwr run .``) have only ``partition-id`` and ``num-partitions``.
    """
    node_config = context.node_config
    if NODE_DATA_PATH not in node_config:
        from simulations.apps import load_client_data  # late: simulation only

        return load_client_data(context, cfg)
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


def ledger_folder(context: Context, ledger_root: Path | None) -> Path | None:
    """Where this node's ledger file lives; ``None``: in ``context.state``, for this run only.

    A deployed node: its data folder. A simulated node of ``fedpriv-sim``:
    ``ledger_root/client-K`` in the run folder, so that a resumed run continues
    its clients' ledgers.
    """
    if NODE_DATA_PATH in context.node_config:
        return Path(str(context.node_config[NODE_DATA_PATH]))
    if ledger_root is not None and NODE_PARTITION_ID in context.node_config:
        partition_id = int(context.node_config[NODE_PARTITION_ID])  # type: ignore[arg-type]
        folder = ledger_root / f"client-{partition_id}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return None


def _ledger_lock(
    context: Context, ledger_root: Path | None
) -> contextlib.AbstractContextManager[None]:
    folder = ledger_folder(context, ledger_root)
    return locked(folder) if folder is not None else contextlib.nullcontext()


def _load_ledger(
    context: Context, cfg: RunConfig, rnd: int, ledger_root: Path | None
) -> PrivacyLedger | RunLedger | None:
    """This node's ledger, or ``None`` when DP is off.

    A node with a ledger folder (:func:`ledger_folder`): its ledger file, over
    all runs on that data (:class:`~client.node_ledger.RunLedger`; raises
    ``LedgerError`` if it cannot be read). Otherwise (``flwr run`` simulation):
    its ledger for this run, in ``context.state``.
    """
    if not cfg.dp.enabled:
        return None
    folder = ledger_folder(context, ledger_root)
    if folder is not None:
        return RunLedger(
            folder,
            run_id=context.run_id,
            server_round=rnd,
            delta=cfg.dp.delta,
            accountant=cfg.dp.accountant,
            run_budget=cfg.dp.target_epsilon,
            node_budget=node_budget(context),
        )
    record = context.state.config_records.get(LEDGER_STATE_KEY)
    if record is None:
        return PrivacyLedger(
            accountant=cfg.dp.accountant, delta=cfg.dp.delta, budget=cfg.dp.target_epsilon
        )
    return PrivacyLedger.from_config_record(record)


def _save_ledger(context: Context, ledger: PrivacyLedger | RunLedger) -> None:
    if isinstance(ledger, RunLedger):
        ledger.save()  # atomic; raises LedgerError, and then no reply with weights leaves
    else:
        context.state[LEDGER_STATE_KEY] = ledger.to_config_record()


# What `flwr run` and `fedpriv-client start` run (`[tool.flwr.app.components]`).
app = build_client_app(load_node_data)
