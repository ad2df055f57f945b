"""What a simulation dataset is in memory: labelled arrays, a pool and a test split.

The *pool* is what gets partitioned across clients; the *test* set stays with
the coordinator for central evaluation and is never given to a client. Image
datasets (:mod:`fedpriv.simulations.datasets`) and text tasks
(:mod:`fedpriv.simulations.text_tasks`) both produce a :class:`FederatedData`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.tokenizer import Vocab


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
