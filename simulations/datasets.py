"""Real image datasets for simulations, held in memory as numpy arrays.

Two datasets are offered, both read from local files only (nothing is
downloaded at call time):

* ``digits``: scikit-learn's embedded 8x8 handwritten digits (1,797 images,
  10 classes), split into a pool and a central test set with a stratified
  80/20 split.
* ``fashion-mnist``: the 28x28 Zalando images (60,000 train, 10,000 test,
  10 classes) read from the gzip'd IDX files installed by the Debian package
  ``dataset-fashion-mnist``, or from any directory holding the same files.

Two text tasks (``sotu``, ``sentiment``) are built by :mod:`simulations.text_tasks`
from corpora cached by :mod:`simulations.text_data`; they carry int64 token ids,
their vocabulary and each pool example's natural client (``groups``).

The *pool* is what gets partitioned across clients; the *test* set stays with
the coordinator for central evaluation and is never given to a client.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_models.errors import ConfigError, DataError
from shared_models.tokenizer import Vocab

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


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs and labels of one split, as numpy arrays.

    Attributes:
        x: either float32 images of shape (N, C, H, W), pixel values in [0, 1], or
            int64 token ids of shape (N, T), each >= 0 (0 is padding).
        y: int64 class labels of shape (N,), each in [0, num_classes).
        num_classes: number of classes of the task (not only those present).
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        is_images = self.x.dtype == np.float32 and self.x.ndim == 4
        is_tokens = self.x.dtype == np.int64 and self.x.ndim == 2
        if not (is_images or is_tokens):
            raise DataError(
                f"inputs must be float32 images of shape (N, C, H, W) or int64 token ids "
                f"of shape (N, T), got {self.x.dtype} of shape {self.x.shape}; convert "
                f"them before wrapping"
            )
        if is_tokens and self.x.size and self.x.min() < 0:
            raise DataError(f"token ids must be >= 0, got {self.x.min()}; check the encoding")
        if self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(
                f"labels must be an int64 array of shape (N,), got {self.y.dtype} "
                f"of shape {self.y.shape}; convert them before wrapping"
            )
        if len(self.x) != len(self.y):
            raise DataError(
                f"inputs and labels must have the same length, got {len(self.x)} inputs "
                f"and {len(self.y)} labels; check that both come from the same split"
            )
        if self.num_classes < 1:
            raise DataError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(
                f"labels must lie in [0, {self.num_classes}), got values in "
                f"[{self.y.min()}, {self.y.max()}]; check the label file or num_classes"
            )

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.y)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the examples at ``indices`` (a copy; the order of ``indices`` is kept)."""
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(x=self.x[indices], y=self.y[indices], num_classes=self.num_classes)


@dataclass(frozen=True)
class FederatedData:
    """A dataset ready for a simulation: a pool to split across clients and a test set.

    Image datasets set ``image_size`` and ``in_channels`` and leave the text fields
    at their defaults; text datasets set ``seq_len`` > 0 and ``vocab``, with
    ``image_size = in_channels = 0``.

    Attributes:
        name: one of :data:`DATASET_NAMES`.
        pool: the examples to be partitioned across clients.
        test: the central held-out test set (never given to clients).
        image_size: height (= width) of the square images, in pixels; 0 for text.
        in_channels: number of image channels (1 for both image datasets); 0 for text.
        vocab: text only: the vocabulary of the token ids (ids < len(vocab)), a
            ``CharVocab`` (sotu) or a ``WordVocab`` (sentiment).
        groups: the natural client of each pool example, int64 of shape (len(pool),)
            with values in [0, len(group_names)), or None when there is none.
        group_names: name of each natural client (a president, a source), by id.
        seq_len: text only: tokens per example (> 0); 0 for images.
    """

    name: str
    pool: ArrayDataset
    test: ArrayDataset
    image_size: int
    in_channels: int
    vocab: Vocab | None = None
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    seq_len: int = 0

    @property
    def is_text(self) -> bool:
        """True for token-id datasets (``seq_len > 0``), False for images."""
        return self.seq_len > 0

    def __post_init__(self) -> None:
        if self.pool.num_classes != self.test.num_classes:
            raise DataError(
                f"{self.name} pool and test disagree on num_classes: "
                f"{self.pool.num_classes} vs {self.test.num_classes}"
            )
        self._check_groups()
        if self.is_text:
            self._check_text()
            return
        for split_name, split in (("pool", self.pool), ("test", self.test)):
            expected = (self.in_channels, self.image_size, self.image_size)
            if split.x.shape[1:] != expected:
                raise DataError(
                    f"{self.name} {split_name} images must have shape (N, *{expected}), "
                    f"got {split.x.shape}"
                )

    def _check_text(self) -> None:
        if self.vocab is None:
            raise DataError(f"{self.name} is text (seq_len={self.seq_len}) but has no vocab")
        for split_name, split in (("pool", self.pool), ("test", self.test)):
            if split.x.dtype != np.int64 or split.x.shape[1:] != (self.seq_len,):
                raise DataError(
                    f"{self.name} {split_name} must hold int64 token ids of shape "
                    f"(N, {self.seq_len}), got {split.x.dtype} of shape {split.x.shape}"
                )
            if split.x.size and split.x.max() >= len(self.vocab):
                raise DataError(
                    f"{self.name} {split_name} has token id {split.x.max()}, outside the "
                    f"vocabulary of {len(self.vocab)}; rebuild the vocabulary"
                )

    def _check_groups(self) -> None:
        if self.groups is None:
            return
        groups = self.groups
        if groups.dtype != np.int64 or groups.shape != (len(self.pool),):
            raise DataError(
                f"{self.name} groups must be int64 of shape ({len(self.pool)},), "
                f"got {groups.dtype} of shape {groups.shape}"
            )
        if len(groups) and (groups.min() < 0 or groups.max() >= len(self.group_names)):
            raise DataError(
                f"{self.name} groups must lie in [0, {len(self.group_names)}) "
                f"(one per group name), got [{groups.min()}, {groups.max()}]"
            )


def load_dataset(name: str, *, data_dir: Path | None = None, seed: int = 0) -> FederatedData:
    """Load a dataset by name, from local files only.

    Args:
        name: one of :data:`DATASET_NAMES`.
        data_dir: directory holding the fashion-mnist IDX files (default
            :data:`FASHION_MNIST_DIR`), or the text corpora cache (default
            ``simulations.text_data.DEFAULT_DATA_DIR``). Ignored for ``digits``
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
        from simulations.text_tasks import load_text_task  # text_tasks builds on this module

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
