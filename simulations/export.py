"""Write a simulation dataset as the data folders of a real deployment.

:func:`export_partitions` splits a dataset exactly as ``fedpriv-sim`` does (same
partitioning, same per-client train/held-out split, same seeds) and writes one
client data folder per client plus the coordinator's test set, in the format of
:mod:`fedpriv.shared_models.data_format`::

    <out_dir>/client-0/ ... client-<n-1>/   role "client": train.npz, val.npz
    <out_dir>/server-test/                  role "server": test.npz (the central test set)

so a newcomer can try a deployment on one machine, one folder per node.
The coordinator's folder holds only ``test.npz``: it never trains, and no
client example is copied to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.data_folder import (
    refuse_existing_folder,
    write_local_data,
    write_test_data,
)
from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.plumbing.atomic import atomic_folder
from fedpriv.simulations.apps import data_meta, load_partitions, split_client

logger = logging.getLogger(__name__)

SERVER_TEST_FOLDER = "server-test"
_D = RunConfig()


def client_folder_name(partition_id: int) -> str:
    """Name of client ``partition_id``'s folder under the export folder."""
    return f"client-{partition_id}"


def export_partitions(
    dataset: str,
    num_clients: int,
    out_dir: Path,
    *,
    partitioning: str = "iid",
    seed: int = 0,
    data_dir: Path | None = None,
    dirichlet_alpha: float = _D.dirichlet_alpha,
    shards_per_client: int = _D.shards_per_client,
) -> list[Path]:
    """Write each client's partition, and the central test set, as data folders.

    Client ``i`` gets the examples that simulated client ``i`` of
    ``fedpriv-sim --dataset DATASET --clients NUM_CLIENTS --partitioning ... --seed SEED``
    trains on (``train.npz``) and holds out (``val.npz``). All or nothing: the
    folders are written into a temporary folder renamed to ``out_dir`` at the end.

    Args:
        dataset: one of ``fedpriv.simulations.datasets.DATASET_NAMES``.
        num_clients: number of client folders (>= 1).
        out_dir: the export folder; must not exist or be empty.
        partitioning: ``iid`` | ``dirichlet`` | ``shards`` | ``natural`` (text only).
        seed: seed of the pool/test split, the partitioning and the held-out split.
        data_dir: folder of the dataset's files (default: the dataset's own default).
        dirichlet_alpha: Dirichlet concentration (``dirichlet`` only).
        shards_per_client: label shards per client (``shards`` only).

    Returns:
        The client folders, ``out_dir/client-<i>`` for i in 0..num_clients-1; the
        test set is in ``out_dir/server-test`` (:data:`SERVER_TEST_FOLDER`).

    Raises:
        ConfigError: a setting is out of range (unknown dataset or scheme, ...).
        DataError: the dataset is missing, too small for ``num_clients``, or
            ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    config = RunConfig(
        dataset=dataset,
        num_clients=num_clients,
        partitioning=partitioning,
        dirichlet_alpha=dirichlet_alpha,
        shards_per_client=shards_per_client,
        seed=seed,
        data_dir="" if data_dir is None else str(data_dir),
    )
    refuse_existing_folder(out_dir)  # before any work
    try:
        folders = _write_all(config, out_dir)
    except OSError as exc:
        raise DataError(
            f"cannot write {out_dir} ({exc.strerror or exc}); choose a new folder"
        ) from exc
    logger.debug("exported %s as %d client folders to %s", dataset, num_clients, out_dir)
    return folders


def _write_all(config: RunConfig, out_dir: Path) -> list[Path]:
    with atomic_folder(out_dir) as tmp:
        data, parts = load_partitions(config)
        meta = data_meta(data)
        for partition_id, indices in enumerate(parts):
            train_idx, val_idx = split_client(config, indices, partition_id)
            write_local_data(
                tmp / client_folder_name(partition_id),
                data.pool.x[train_idx],
                data.pool.y[train_idx],
                data.pool.x[val_idx],
                data.pool.y[val_idx],
                meta,
            )
        write_test_data(tmp / SERVER_TEST_FOLDER, data.test.x, data.test.y, meta)
    return [out_dir / client_folder_name(i) for i in range(config.num_clients)]
