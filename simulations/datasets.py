"""Real image datasets for simulations, held in memory as numpy arrays.

Two datasets are offered, both read from local files only (nothing is
downloaded at call time):

* ``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images,
  10 classes), split into a pool and a central test set with a stratified
  80/20 split.
* ``fashion-mnist``: the 28x28 Zalando images (60,000 train, 10,000 test,
  10 classes) read from the gzip'd IDX files installed by the Debian package
  ``dataset-fashion-mnist``, or from any directory holding the same files.

Two text tasks (``sotu``, ``sentiment``) are built by :mod:`fedpriv.simulations.text_tasks`
from corpora cached by :mod:`fedpriv.simulations.text_data`; they carry int64 token ids,
their vocabulary and each pool example's natural client (``groups``).

The *pool* is what gets partitioned across clients; the *test* set stays with
the coordinator for central evaluation and is never given to a client.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.simulations.arrays import ArrayDataset, FederatedData
from fedpriv.simulations.text_tasks import load_text_task

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = ("digits", "fashion-mnist", "sotu", "sentiment")
TEXT_DATASETS: tuple[str, ...] = ("sotu", "sentiment")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist

_FASHION_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
_IDX_NDIMS = {1: "labels", 3: "images"}  # the only IDX layouts fedpriv reads


def load_dataset(name: str, *, data_dir: Path | None = None, seed: int = 0) -> FederatedData:
    """Load a dataset by name, from local files only.

    Args:
        name: one of :data:`DATASET_NAMES`.
        data_dir: directory holding the fashion-mnist IDX files (default
            :data:`FASHION_MNIST_DIR`), or the text corpora cache (default
            ``fedpriv.simulations.text_data.DEFAULT_DATA_DIR``). Ignored for ``digits``
            (embedded in scikit-learn).
        seed: random state of the digits and sentiment pool/test splits.
            fashion-mnist (fixed official split) and sotu (split by position in
            each president's text) ignore it.

    Raises:
        ConfigError: ``name`` is not a known dataset.
        DataError: a data file is missing or malformed.
    """
    if name == "digits":
        data = _load_digits(seed)
    elif name == "fashion-mnist":
        data = _load_fashion_mnist(data_dir if data_dir is not None else FASHION_MNIST_DIR)
    elif name in TEXT_DATASETS:
        data = load_text_task(name, data_dir=data_dir, seed=seed)
    else:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    logger.debug(
        "loaded %s: %d pool and %d test examples, %d classes",
        name,
        len(data.pool),
        len(data.test),
        data.pool.num_classes,
    )
    return data


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip'd or raw IDX file of unsigned bytes, validating its header and length.

    Supports magic 0x00000801 (uint8 vector, e.g. labels) and 0x00000803
    (uint8 3-d array, e.g. images). Gzip is detected from the content, not the name.

    Returns:
        A read-only uint8 array with the shape stored in the header.

    Raises:
        DataError: the file is missing, unreadable, has another magic number, or its
            length does not match its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DataError(f"IDX file {path} does not exist; check the path") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read IDX file {path} ({exc}); the file is damaged, obtain it again"
        ) from exc
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is {len(raw)} bytes, shorter than its 4-byte magic")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != _IDX_UINT8 or ndim not in _IDX_NDIMS:
        raise DataError(
            f"IDX file {path} must start with magic 0x00000801 (labels) or 0x00000803 "
            f"(images), got 0x{raw[:4].hex()}; is this an IDX file of unsigned bytes?"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its "
            f"{header_len}-byte header; obtain the file again"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} has {len(raw)} bytes but its header {shape} implies "
            f"{expected}; the file is truncated or damaged, obtain it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _load_digits(seed: int) -> FederatedData:
    """Scikit-learn's 8x8 digits, split stratified 80/20 into pool and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = bunch.target.astype(np.int64)
    pool_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed
    )
    pool_idx, test_idx = np.sort(pool_idx), np.sort(test_idx)
    return FederatedData(
        name="digits",
        pool=ArrayDataset(x=x[pool_idx], y=y[pool_idx], num_classes=10),
        test=ArrayDataset(x=x[test_idx], y=y[test_idx], num_classes=10),
        image_size=8,
        in_channels=1,
    )


def _load_fashion_mnist(data_dir: Path) -> FederatedData:
    """Fashion-MNIST from the four gzip'd IDX files in ``data_dir``."""
    data_dir = Path(data_dir)
    paths = {key: data_dir / filename for key, filename in _FASHION_FILES.items()}
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        what = f"directory {data_dir}" if not data_dir.is_dir() else f"file {missing[0]}"
        raise DataError(
            f"fashion-mnist {what} not found; install the Debian package "
            f"dataset-fashion-mnist or pass --data-dir DIR containing "
            f"{', '.join(_FASHION_FILES.values())}"
        )
    pool = _fashion_split(paths["train_images"], paths["train_labels"])
    test = _fashion_split(paths["test_images"], paths["test_labels"])
    return FederatedData(name="fashion-mnist", pool=pool, test=test, image_size=28, in_channels=1)


def _fashion_split(images_path: Path, labels_path: Path) -> ArrayDataset:
    """One fashion-mnist split, checked for shapes and a matching count."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path} must hold 28x28 images (magic 0x00000803), got shape "
            f"{images.shape}; check that the file names are not swapped"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path} must hold a label vector (magic 0x00000801), got shape "
            f"{labels.shape}; check that the file names are not swapped"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has "
            f"{len(labels)} labels; the files come from different splits, obtain them again"
        )
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return ArrayDataset(x=x, y=labels.astype(np.int64), num_classes=10)
