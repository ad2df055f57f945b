"""The data one client node trains and evaluates on, and how a node reads its folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.data_folder import read_folder_of_role
from fedpriv.shared_models.data_format import model_config_for_data
from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.registry import ModelConfig


@dataclass(frozen=True)
class ClientData:
    """A client's local training split and held-out split.

    ``partition_id`` names the client in reports (in a deployment, the node's
    own number). ``model_config`` is the shared model both sides build.
    """

    partition_id: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    model_config: ModelConfig

    def __post_init__(self) -> None:
        if len(self.x_train) == 0:
            raise DataError(f"client {self.partition_id} has no training examples")
        if len(self.x_train) != len(self.y_train) or len(self.x_val) != len(self.y_val):
            raise DataError(f"client {self.partition_id}: inputs and labels differ in length")


# How a ClientApp finds its data: deployed nodes read their local data folder,
# simulated nodes a partition of a dataset (fedpriv.simulations.apps).
ClientDataFn = Callable[[Context, RunConfig], ClientData]


def load_local_data(path: Path, *, partition_id: int, model: str) -> ClientData:
    """A client data folder as the :class:`ClientData` this node trains and evaluates on.

    Args:
        path: a data folder of role ``"client"`` (:mod:`fedpriv.shared_models.data_format`).
        partition_id: this node's number, shown in reports.
        model: one of ``fedpriv.shared_models.registry.MODEL_NAMES``; must suit the task
            (``cnn`` for images, ``lstm``/``transformer`` for text).

    Raises:
        DataError: the folder is invalid, or holds the coordinator's test set.
        ConfigError: ``model`` does not suit the folder's task.
    """
    data = read_folder_of_role(path, "client")
    (x_train, y_train), (x_val, y_val) = data.splits["train"], data.splits["val"]
    return ClientData(
        partition_id=partition_id,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        model_config=model_config_for_data(model, data.meta),
    )
