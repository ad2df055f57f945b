"""The simulation's data sources: a dataset split across simulated clients.

``fedpriv-sim`` builds the apps with :func:`make_server_app`/:func:`make_client_app`
and its parsed flags. Under ``flwr run .`` the components are ``fedpriv.server.app:app``
and ``fedpriv.client.app:app`` (``[tool.flwr.app.components]`` in ``pyproject.toml``),
which come here for their data when a node has no local data folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedpriv.client.app import build_client_app
from fedpriv.client.data import ClientData
from fedpriv.server.app import build_server_app
from fedpriv.server.central_data import CentralData
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.data_format import DataMeta, model_config_for_data
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.registry import ModelConfig
from fedpriv.simulations.arrays import FederatedData
from fedpriv.simulations.faults import FaultPlan
from fedpriv.simulations.partition import PartitionSpec, cached_partitions, client_split

SIMULATED_LEDGERS = "node-ledgers"  # in the run folder: one ledger folder per simulated client
VAL_FRACTION = 0.2  # of each client's partition, held out for its `evaluate`


def partition_spec(cfg: RunConfig) -> PartitionSpec:
    return PartitionSpec(
        scheme=cfg.partitioning,
        num_partitions=cfg.num_clients,
        alpha=cfg.dirichlet_alpha,
        shards_per_client=cfg.shards_per_client,
        seed=cfg.seed,
    )


def split_client(
    cfg: RunConfig, indices: np.ndarray, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's train and held-out indices: the one rule for simulations and exports."""
    return client_split(indices, val_fraction=VAL_FRACTION, seed=cfg.seed + partition_id)


def load_partitions(cfg: RunConfig) -> tuple[FederatedData, tuple[np.ndarray, ...]]:
    """The dataset and every client's indices into its pool (cached per process)."""
    return cached_partitions(cfg.dataset, cfg.data_dir or None, partition_spec(cfg), cfg.seed)


def data_meta(data: FederatedData) -> DataMeta:
    """The data-folder metadata of a simulation dataset."""
    if data.is_text:
        return DataMeta(
            task="text",
            dataset=data.name,
            num_classes=data.pool.num_classes,
            seq_len=data.seq_len,
            vocab=data.vocab,
        )
    return DataMeta(
        task="image",
        dataset=data.name,
        num_classes=data.pool.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
    )


def model_config_for(cfg: RunConfig, data: FederatedData) -> ModelConfig:
    """The model both sides build for this run's dataset (as for a local data folder)."""
    return model_config_for_data(cfg.model, data_meta(data))


def load_client_data(context: Context, cfg: RunConfig) -> ClientData:
    """This simulated node's partition, split into train and held-out parts."""
    partition_id = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    num_partitions = int(context.node_config["num-partitions"])  # type: ignore[arg-type]
    if num_partitions != cfg.num_clients:
        raise ConfigError(
            f"the federation has {num_partitions} nodes but num-clients is {cfg.num_clients}; "
            "make them equal"
        )
    data, parts = load_partitions(cfg)
    train_idx, val_idx = split_client(cfg, parts[partition_id], partition_id)
    return ClientData(
        partition_id=partition_id,
        x_train=data.pool.x[train_idx],
        y_train=data.pool.y[train_idx],
        x_val=data.pool.x[val_idx],
        y_val=data.pool.y[val_idx],
        model_config=model_config_for(cfg, data),
    )


def load_central_data(cfg: RunConfig) -> CentralData:
    """The central test set, which no client sees."""
    data, _ = load_partitions(cfg)
    vocab = data.vocab.to_json() if data.vocab is not None else None
    return CentralData(model_config_for(cfg, data), data.test.x, data.test.y, vocab)


def make_client_app(
    config: RunConfig | None = None,
    faults: FaultPlan | None = None,
    *,
    parse_config: Callable[[Context], RunConfig] | None = None,
) -> ClientApp:
    """The simulated nodes' ClientApp; ``faults`` makes some of them misbehave.

    ``config``: the run's settings (``fedpriv-sim``); without it they come from
    ``parse_config(context)``, or from ``context.run_config``.
    """
    mods = [faults.mod()] if faults is not None and faults.faults else None
    # fedpriv-sim's nodes keep their privacy ledgers in the run folder, where --resume finds them.
    ledger_root = Path(config.run_dir) / SIMULATED_LEDGERS if config and config.run_dir else None
    return build_client_app(
        load_client_data,
        config if config is not None else parse_config,
        mods=mods,
        ledger_root=ledger_root,
    )


def make_server_app(config: RunConfig | None = None, run_dir: Path | None = None) -> ServerApp:
    return build_server_app(load_central_data, config, run_dir)
