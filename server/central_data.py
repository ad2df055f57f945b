"""The coordinator's own data: its held-out test set and the model everyone trains.

In a deployment the test set is a data folder of role ``server`` (the
``test-data`` setting, written by ``fedpriv-sim export-demo-data`` or
:func:`fedpriv.shared_models.data_folder.write_test_data`); a simulation passes
its own loader (:mod:`fedpriv.simulations.apps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.data_folder import read_folder_of_role
from fedpriv.shared_models.data_format import model_config_for_data
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.registry import ModelConfig


@dataclass(frozen=True)
class CentralData:
    """The coordinator's held-out test set and the model everyone trains."""

    model_config: ModelConfig
    x_test: np.ndarray
    y_test: np.ndarray
    vocab: str | None = None  # the text tokeniser, as JSON; None for images


CentralDataFn = Callable[[RunConfig], CentralData]


def load_test_data(path: Path, *, model: str) -> CentralData:
    """The coordinator's test-set folder: the model config it implies, inputs, labels
    and (text only) the vocabulary as JSON, as stored with the final model.

    Raises:
        DataError: the folder is invalid, or is a client's folder.
        ConfigError: ``model`` does not suit the folder's task.
    """
    data = read_folder_of_role(path, "server")
    x, y = data.splits["test"]
    vocab = data.meta.vocab.to_json() if data.meta.vocab is not None else None
    return CentralData(model_config_for_data(model, data.meta), x, y, vocab)


def load_central_data(cfg: RunConfig) -> CentralData:
    """A deployed coordinator's test set: the run's ``test-data`` folder."""
    if not cfg.test_data:
        raise ConfigError(
            "the coordinator needs its test set: set test-data to a data folder of role "
            "'server' (fedpriv-server start --test-data FOLDER)"
        )
    return load_test_data(Path(cfg.test_data), model=cfg.model)
