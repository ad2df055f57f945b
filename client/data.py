"""The data one client node trains and evaluates on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context

from shared_models.config import RunConfig
from shared_models.errors import DataError
from shared_models.registry import ModelConfig


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


# How a ClientApp finds its data: simulations read a partition of a dataset,
# deployed nodes a local data folder.
ClientDataFn = Callable[[Context, RunConfig], ClientData]
