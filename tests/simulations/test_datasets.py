"""Datasets (digits, IDX reading, fashion-mnist from synthetic files) and partitioning."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.simulations.arrays import ArrayDataset, FederatedData
from fedpriv.simulations.datasets import load_dataset, read_idx
from fedpriv.simulations.partition import (
    PARTITIONERS,
    PartitionSpec,
    cached_partitions,
    client_split,
    partition_indices,
)

# ---------------------------------------------------------------- helpers


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _write_fashion(directory: Path, n_train: int = 12, n_test: int = 5) -> Path:
    """Tiny synthetic fashion-mnist: images with pixel values 0..255, labels 0..9."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return directory


def _entropy(labels: np.ndarray, num_classes: int = 10) -> float:
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def digits() -> FederatedData:
    return load_dataset("digits")


# ---------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_classes(digits: FederatedData) -> None:
    assert (digits.name, digits.image_size, digits.in_channels) == ("digits", 8, 1)
    assert digits.pool.x.shape == (1437, 1, 8, 8) and digits.test.x.shape == (360, 1, 8, 8)
    for split in (digits.pool, digits.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert set(np.unique(split.y)) == set(range(10)) and split.num_classes == 10


def test_digits_split_is_stratified_complete_and_deterministic(digits: FederatedData) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    per_class = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(digits.test.y) - 0.2 * per_class) <= 1)
    # pool + test is exactly the original set of images (as a multiset of rows).
    rows = np.concatenate([digits.pool.x, digits.test.x]).reshape(1797, 64) * 16
    assert sorted(map(tuple, rows)) == sorted(map(tuple, bunch.data.astype(np.float32)))

    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert np.array_equal(again.test.x, digits.test.x)
    assert np.array_equal(again.test.y, digits.test.y)
    assert not np.array_equal(other.test.x, digits.test.x)


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'x'; choose one of: digits, fashion"):
        load_dataset("x")


def test_array_dataset_subset_and_validation(digits: FederatedData) -> None:
    sub = digits.pool.subset(np.array([5, 0, 5]))
    assert len(sub) == 3 and np.array_equal(sub.y, digits.pool.y[[5, 0, 5]])
    with pytest.raises(DataError, match="float32"):
        ArrayDataset(x=np.zeros((2, 1, 8, 8)), y=np.zeros(2, np.int64), num_classes=10)
    with pytest.raises(DataError, match="same length"):
        ArrayDataset(x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(3, np.int64), num_classes=2)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        ArrayDataset(x=np.zeros((1, 1, 8, 8), np.float32), y=np.array([2]), num_classes=2)


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_read_idx_round_trips_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 255], dtype=np.uint8)
    got_images = read_idx(_write_idx(tmp_path / "images", images, gz=gz))
    got_labels = read_idx(_write_idx(tmp_path / "labels", labels, gz=gz))
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad-magic-dtype", bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\0" * 4, "magic"),
        ("bad-magic-ndim", bytes([0, 0, 0x08, 2]) + (1).to_bytes(4, "big") * 2 + b"\0", "magic"),
        ("not-idx", b"hello world", "magic"),
        ("tiny", b"\0\0", "shorter"),
        ("cut-header", bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big"), "header"),
        ("cut-data", _idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1], "truncated"),
        ("too-long", _idx_bytes(np.zeros(4, np.uint8)) + b"\0", "implies"),
        ("cut-gzip", gzip.compress(_idx_bytes(np.zeros(400, np.uint8)))[:-12], "cannot read"),
    ],
)
def test_read_idx_rejects_malformed_files(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- fashion-mnist


def test_fashion_mnist_loads_from_a_directory(tmp_path: Path) -> None:
    data = load_dataset("fashion-mnist", data_dir=_write_fashion(tmp_path / "fm"))
    assert (data.name, data.image_size, data.in_channels) == ("fashion-mnist", 28, 1)
    assert data.pool.x.shape == (12, 1, 28, 28) and data.test.x.shape == (5, 1, 28, 28)
    assert data.pool.x.dtype == np.float32 and data.pool.x.max() == 1.0
    assert data.pool.x.min() >= 0.0
    assert np.array_equal(data.pool.y, np.arange(12) % 10) and data.pool.y.dtype == np.int64
    assert data.test.num_classes == 10


def test_fashion_mnist_missing_directory_names_path_and_remedy(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", data_dir=missing)
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)


def test_fashion_mnist_missing_file_is_named(tmp_path: Path) -> None:
    directory = _write_fashion(tmp_path / "fm")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", data_dir=directory)


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    directory = _write_fashion(tmp_path / "fm")
    _write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load_dataset("fashion-mnist", data_dir=directory)


def test_fashion_mnist_swapped_files_and_bad_labels(tmp_path: Path) -> None:
    directory = _write_fashion(tmp_path / "fm")
    labels = (directory / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (directory / "t10k-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataError, match="28x28 images"):
        load_dataset("fashion-mnist", data_dir=directory)
    directory = _write_fashion(tmp_path / "fm2")
    _write_idx(directory / "train-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        load_dataset("fashion-mnist", data_dir=directory)


# ---------------------------------------------------------------- partitioning


def _assert_valid(parts: list[np.ndarray], n: int, num: int) -> None:
    assert len(parts) == num
    merged = np.concatenate(parts)
    assert len(np.unique(merged)) == len(merged), "partitions overlap"
    assert merged.min() >= 0 and merged.max() < n
    for part in parts:
        assert part.dtype == np.int64 and len(part) >= 2
        assert np.all(np.diff(part) > 0)


@pytest.mark.parametrize("scheme", PARTITIONERS)
def test_partitions_are_disjoint_cover_and_deterministic(
    digits: FederatedData, scheme: str
) -> None:
    labels, n = digits.pool.y, len(digits.pool)
    spec = PartitionSpec(scheme=scheme, num_partitions=10, seed=3)
    parts = partition_indices(labels, spec)
    _assert_valid(parts, n, 10)
    total = sum(map(len, parts))
    if scheme == "shards":  # 20 equal shards of n // 20 label-sorted examples; rest dropped
        assert all(len(p) == 2 * (n // 20) for p in parts) and total == 20 * (n // 20)
        assert max(len(np.unique(labels[p])) for p in parts) <= 4
    else:
        assert total == n
    if scheme == "iid":
        assert max(map(len, parts)) - min(map(len, parts)) <= 1

    again = partition_indices(labels, PartitionSpec(scheme=scheme, num_partitions=10, seed=3))
    other = partition_indices(labels, PartitionSpec(scheme=scheme, num_partitions=10, seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_small_alpha_is_more_label_skewed_than_iid(digits: FederatedData) -> None:
    labels = digits.pool.y

    def mean_entropy(spec: PartitionSpec) -> float:
        return float(np.mean([_entropy(labels[p]) for p in partition_indices(labels, spec)]))

    iid = mean_entropy(PartitionSpec(scheme="iid", num_partitions=10))
    skewed = mean_entropy(PartitionSpec(scheme="dirichlet", num_partitions=10, alpha=0.1))
    assert iid > 0.95 * np.log(10)
    assert skewed < iid - 0.5


def test_partitioning_emits_no_warnings(digits: FederatedData) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scheme in PARTITIONERS:
            partition_indices(digits.pool.y, PartitionSpec(scheme=scheme, alpha=0.1))
    assert [str(w.message) for w in caught] == []


def test_too_many_clients_is_a_config_error(digits: FederatedData) -> None:
    with pytest.raises(ConfigError, match="1437 examples into 2000 clients: at most 718"):
        partition_indices(digits.pool.y, PartitionSpec(num_partitions=2000))
    labels = np.arange(20) % 10
    with pytest.raises(ConfigError, match="at most 10 clients"):
        partition_indices(labels, PartitionSpec(num_partitions=11))
    with pytest.raises(ConfigError, match="shards"):
        partition_indices(labels, PartitionSpec("shards", num_partitions=10, shards_per_client=3))
    with pytest.raises(ConfigError, match="larger alpha"):
        partition_indices(digits.pool.y, PartitionSpec("dirichlet", num_partitions=700, alpha=0.01))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "random"},
        {"num_partitions": 0},
        {"num_partitions": 2.5},
        {"alpha": 0.0},
        {"alpha": float("nan")},
        {"shards_per_client": 0},
        {"seed": -1},
    ],
)
def test_partition_spec_validates(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PartitionSpec(**kwargs)  # type: ignore[arg-type]


def test_client_split_is_disjoint_complete_and_deterministic() -> None:
    indices = np.arange(100, 150)
    train, held_out = client_split(indices, val_fraction=0.2, seed=7)
    assert len(held_out) == 10 and len(train) == 40
    assert np.array_equal(np.sort(np.concatenate([train, held_out])), indices)
    again = client_split(indices, val_fraction=0.2, seed=7)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held_out)
    assert not np.array_equal(client_split(indices, val_fraction=0.2, seed=8)[1], held_out)

    for small in (np.array([3, 9]), np.array([1, 2, 3])):
        train, held_out = client_split(small, val_fraction=0.01)
        assert len(train) >= 1 and len(held_out) >= 1
        train, held_out = client_split(small, val_fraction=0.99)
        assert len(train) >= 1 and len(held_out) >= 1
    with pytest.raises(DataError, match=">= 2 examples"):
        client_split(np.array([4]))
    with pytest.raises(ConfigError, match="val_fraction"):
        client_split(indices, val_fraction=1.0)


def test_cached_partitions_reuses_one_read_only_result() -> None:
    spec = PartitionSpec(scheme="iid", num_partitions=5)
    data, parts = cached_partitions("digits", None, spec, 0)
    assert cached_partitions("digits", None, spec, 0)[1] is parts
    _assert_valid(list(parts), len(data.pool), 5)
    for array in (data.pool.x, data.test.y, parts[0]):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0
    assert data.pool.subset(parts[0]).x.flags.writeable
