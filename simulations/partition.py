"""Split a dataset's pool across simulated clients, with flwr-datasets partitioners.

The partitioners run over local data only: the labels are wrapped in an
in-memory ``datasets.Dataset`` with an ``idx`` column, and each partition is
read back as the ``idx`` values it holds, i.e. positions into the pool.

Schemes:

* ``iid``: rows shuffled with the seed, then cut into equal contiguous chunks
  (sizes differ by at most one); covers every example.
* ``dirichlet``: per class, proportions drawn from Dir(alpha) (smaller alpha,
  more label skew), with self-balancing; covers every example.
* ``shards``: rows sorted by label and cut into ``num_partitions *
  shards_per_client`` equal shards of ``n // (num_partitions *
  shards_per_client)`` examples; each client gets ``shards_per_client`` random
  shards. The remainder (fewer than ``num_partitions * shards_per_client``
  examples) is left out, as in the flwr-datasets partitioner.
* ``natural``: one client per natural group of the dataset (a president of
  ``sotu``, a source of ``sentiment``); needs the pool's ``groups``. With fewer
  clients than groups, the largest groups are used (ties: smaller group id), and
  the examples of the other groups are left out. Ignores the seed.

:data:`PARTITIONERS` lists the label-based schemes, which work on any dataset;
:data:`PARTITION_SCHEMES` adds ``natural``.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    ShardPartitioner,
)

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.simulations.arrays import FederatedData
from fedpriv.simulations.datasets import load_dataset
from fedpriv.simulations.text_tasks import NATURAL_CLIENT_KIND

logger = logging.getLogger(__name__)

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "shards")  # label-based: any dataset
NATURAL = "natural"
PARTITION_SCHEMES: tuple[str, ...] = (*PARTITIONERS, NATURAL)
MIN_CLIENT_EXAMPLES = 2  # one to train on, one to hold out
# Warnings raised inside the partitioners that a user cannot act on: logged, not re-issued.
_DIRICHLET_RETRY_WARNING = "The specified min_partition_size"  # a redraw, see below
_PYARROW_SORT_WARNING = "Specifying null_placement in SortOptions"  # datasets' sort, pyarrow>=25


@dataclass(frozen=True)
class PartitionSpec:
    """How to split a pool across clients.

    Attributes:
        scheme: one of :data:`PARTITION_SCHEMES`.
        num_partitions: number of clients, >= 1.
        alpha: Dirichlet concentration, > 0 (``dirichlet`` only; 0.1 is very skewed,
            100 is close to iid).
        shards_per_client: label-sorted shards per client, >= 1 (``shards`` only).
        seed: seed of the row shuffle and of the partitioner, >= 0.
    """

    scheme: str = "iid"
    num_partitions: int = 10
    alpha: float = 0.5
    shards_per_client: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheme not in PARTITION_SCHEMES:
            raise ConfigError(
                f"unknown partition scheme {self.scheme!r}; choose one of: "
                f"{', '.join(PARTITION_SCHEMES)}"
            )
        for field_name in ("num_partitions", "shards_per_client", "seed"):
            value = getattr(self, field_name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"{field_name} must be an integer, got {value!r}")
        if self.num_partitions < 1:
            raise ConfigError(f"num_partitions must be >= 1, got {self.num_partitions}")
        if self.shards_per_client < 1:
            raise ConfigError(f"shards_per_client must be >= 1, got {self.shards_per_client}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not isinstance(self.alpha, numbers.Real) or not (
            math.isfinite(self.alpha) and self.alpha > 0
        ):
            raise ConfigError(f"alpha must be a finite number > 0, got {self.alpha!r}")


def partition_indices(
    labels: np.ndarray,
    spec: PartitionSpec,
    *,
    groups: np.ndarray | None = None,
    dataset_name: str = "the pool",
    group_kind: str = "groups",
) -> list[np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``spec.num_partitions`` disjoint parts.

    Deterministic for a given ``spec`` (its seed included). Every part holds at least
    :data:`MIN_CLIENT_EXAMPLES` examples.

    Args:
        labels: integer class labels of the pool, shape (N,).
        spec: the scheme and its settings.
        groups: natural client id of each pool example, shape (N,); needed by
            ``natural`` only, ignored by the other schemes.
        dataset_name: how error messages name the data (e.g. ``"sotu"``).
        group_kind: what a natural group is, for error messages (e.g. ``"presidents"``).

    Returns:
        One sorted int64 array of pool positions per client.

    Raises:
        ConfigError: the split is impossible (too many clients, too few examples per
            shard, or a Dirichlet draw that leaves a client too small).
        DataError: ``labels`` is not a 1-d integer array.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-d integer array, got {labels.dtype} of shape {labels.shape}"
        )
    n, num = len(labels), int(spec.num_partitions)
    if spec.scheme == NATURAL:
        parts = _natural_partitions(n, spec, groups, dataset_name, group_kind)
        _check_partitions(parts, n, spec)
        return parts
    if num > n // MIN_CLIENT_EXAMPLES:
        raise ConfigError(
            f"cannot split {n} examples into {num} clients: at most "
            f"{n // MIN_CLIENT_EXAMPLES} clients (each needs >= {MIN_CLIENT_EXAMPLES} "
            f"examples); use fewer clients"
        )
    order = np.random.default_rng(spec.seed).permutation(n)
    table = datasets.Dataset.from_dict({"idx": order, "label": labels[order]})
    partitioner = _make_partitioner(spec, n)
    partitioner.dataset = table
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parts = [_read_partition(partitioner, i) for i in range(num)]
    except ValueError as exc:
        raise ConfigError(_failure_message(spec, n, exc)) from exc
    finally:
        _relay_warnings(caught)
    _check_partitions(parts, n, spec)
    return parts


def client_split(
    indices: np.ndarray, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's pool positions into a training and a held-out part.

    The held-out part has ``round(len * val_fraction)`` examples, clamped to
    ``[1, len - 1]`` so both parts are non-empty. Deterministic for equal inputs.

    Returns:
        (train, held_out): sorted int64 arrays, disjoint, together equal to ``indices``.

    Raises:
        ConfigError: ``val_fraction`` is not in (0, 1).
        DataError: fewer than 2 indices.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) < MIN_CLIENT_EXAMPLES:
        raise DataError(
            f"a client needs >= {MIN_CLIENT_EXAMPLES} examples to hold one out, got "
            f"{indices.size}; use fewer clients"
        )
    n_val = min(max(round(len(indices) * val_fraction), 1), len(indices) - 1)
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


@functools.lru_cache(maxsize=8)
def cached_partitions(
    dataset_name: str, data_dir: str | None, spec: PartitionSpec, seed: int
) -> tuple[FederatedData, tuple[np.ndarray, ...]]:
    """Load a dataset and partition its pool, once per process and argument set.

    Meant for simulation client processes, so each client call does not redo the
    load and split. Every returned array is read-only (shared between callers):
    use ``data.pool.subset(...)`` (a writable copy) rather than mutating in place.

    Args:
        dataset_name: one of ``fedpriv.simulations.datasets.DATASET_NAMES``.
        data_dir: directory of the dataset files, or None for the default.
        spec: how to partition the pool.
        seed: seed of the pool/test split (``load_dataset``'s seed); the
            partition seed is ``spec.seed``.
    """
    data = load_dataset(
        dataset_name, data_dir=Path(data_dir) if data_dir is not None else None, seed=seed
    )
    parts = tuple(
        partition_indices(
            data.pool.y,
            spec,
            groups=data.groups,
            dataset_name=dataset_name,
            group_kind=NATURAL_CLIENT_KIND.get(dataset_name, "groups"),
        )
    )
    extra = () if data.groups is None else (data.groups,)
    for array in (data.pool.x, data.pool.y, data.test.x, data.test.y, *extra, *parts):
        array.setflags(write=False)
    logger.debug(
        "partitioned %s pool into %d %s clients (sizes %d..%d)",
        dataset_name,
        len(parts),
        spec.scheme,
        min(map(len, parts)),
        max(map(len, parts)),
    )
    return data, parts


def _natural_partitions(
    n: int, spec: PartitionSpec, groups: np.ndarray | None, dataset_name: str, group_kind: str
) -> list[np.ndarray]:
    """One part per natural group: the ``num_partitions`` largest, in group-id order."""
    if groups is None:
        raise ConfigError(
            f"{dataset_name} has no natural clients; use --partitioning "
            f"{', '.join(PARTITIONERS)} or a text dataset (sotu, sentiment)"
        )
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
        raise DataError(
            f"groups must be non-negative integers of shape ({n},), one per label, got "
            f"{groups.dtype} of shape {groups.shape}"
        )
    sizes = np.bincount(groups)
    present = np.flatnonzero(sizes)
    num = int(spec.num_partitions)
    if num > len(present):
        raise ConfigError(
            f"{dataset_name} has {len(present)} natural clients ({group_kind}); --clients "
            f"{num} is too many; use --clients {len(present)} or fewer, or another partitioning"
        )
    largest = sorted(present.tolist(), key=lambda g: (-sizes[g], g))[:num]
    return [np.flatnonzero(groups == g).astype(np.int64) for g in sorted(largest)]


def _make_partitioner(spec: PartitionSpec, n: int) -> Partitioner:
    """The flwr-datasets partitioner for ``spec``, checked to be feasible for ``n`` rows."""
    num = int(spec.num_partitions)
    if spec.scheme == "iid":
        return IidPartitioner(num_partitions=num)
    if spec.scheme == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num,
            partition_by="label",
            alpha=float(spec.alpha),
            min_partition_size=_dirichlet_min_size(n, num),
            self_balancing=True,
            seed=int(spec.seed),
        )
    shards = int(spec.shards_per_client)
    shard_size = n // (num * shards)
    if shard_size * shards < MIN_CLIENT_EXAMPLES:
        raise ConfigError(
            f"cannot cut {n} examples into {num} clients x {shards} shards: each shard "
            f"would hold {shard_size} examples, a client {shard_size * shards} "
            f"(needs >= {MIN_CLIENT_EXAMPLES}); use fewer clients or more shards_per_client"
        )
    return ShardPartitioner(
        num_partitions=num,
        partition_by="label",
        num_shards_per_partition=shards,
        seed=int(spec.seed),
    )


def _dirichlet_min_size(n: int, num_partitions: int) -> int:
    """Smallest client the Dirichlet draw must give: half a fair share, in [2, 10].

    flwr-datasets redraws (11 draws in all) while a client is below it, then gives up.
    """
    return max(MIN_CLIENT_EXAMPLES, min(10, n // num_partitions // 2))


def _failure_message(spec: PartitionSpec, n: int, exc: ValueError) -> str:
    """One line saying why flwr-datasets could not partition, and what to change."""
    num = int(spec.num_partitions)
    if spec.scheme == "dirichlet":
        return (
            f"no Dirichlet(alpha={spec.alpha}) split of {n} examples gave each of {num} "
            f"clients >= {_dirichlet_min_size(n, num)} examples in 11 draws ({exc}); "
            f"use fewer clients or a larger alpha"
        )
    return f"cannot make {num} {spec.scheme} partitions of {n} examples ({exc}); use fewer clients"


def _read_partition(partitioner: Partitioner, partition_id: int) -> np.ndarray:
    """The pool positions of one partition, sorted, as int64."""
    # In datasets 4.x `part["idx"]` is a lazy Column that numpy reads row by row (~40 us a
    # row); an arrow-formatted slice is read in one go, faster than the numpy formatter.
    part = partitioner.load_partition(partition_id)
    idx = part.with_format("arrow")[:]["idx"].to_numpy()
    return np.sort(np.asarray(idx, dtype=np.int64))


def _relay_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Log the Dirichlet redraws and pyarrow's sort deprecation; re-issue any other warning."""
    retries = 0
    for w in caught:
        if str(w.message).startswith(_DIRICHLET_RETRY_WARNING):
            retries += 1
        elif str(w.message).startswith(_PYARROW_SORT_WARNING):
            logger.debug("ignored a pyarrow deprecation inside datasets.sort: %s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if retries:
        logger.debug("dirichlet partitioner resampled %d time(s) to meet min size", retries)


def _check_partitions(parts: list[np.ndarray], n: int, spec: PartitionSpec) -> None:
    """Every client has enough examples; clients are disjoint and within the pool."""
    sizes = [len(p) for p in parts]
    if min(sizes) < MIN_CLIENT_EXAMPLES:
        raise ConfigError(
            f"{spec.scheme} partitioning of {n} examples left a client with {min(sizes)} "
            f"examples (needs >= {MIN_CLIENT_EXAMPLES}); use fewer clients"
            f"{' or a larger alpha' if spec.scheme == 'dirichlet' else ''}"
        )
    merged = np.concatenate(parts)
    if len(np.unique(merged)) != len(merged) or merged.min() < 0 or merged.max() >= n:
        raise RuntimeError(
            f"{spec.scheme} partitioner returned overlapping or out-of-range indices; "
            f"this is a bug, please report it with the spec {spec}"
        )
