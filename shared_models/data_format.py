"""The local data-folder format: what a node's data folder holds, and its checks.

A *data folder* holds one node's examples as plain numpy arrays, with a small
JSON file saying what they are. Format version 1::

    <folder>/
      fedpriv-data.json    what the arrays hold (below)
      train.npz, val.npz   role "client": arrays x and y each (np.savez, no pickles)
      test.npz             role "server": the coordinator's central test set instead

``fedpriv-data.json`` (every field required, no others)::

    {"format": "fedpriv-local-data", "version": 1,
     "role": "client",           # "client" (train + val) | "server" (test)
     "task": "image",            # "image" | "text"
     "dataset": "digits",        # a name for reports; any non-empty string
     "num_classes": 10,          # >= 2; labels lie in [0, num_classes)
     "in_channels": 1, "image_size": 8}               # task "image" only
    # task "text" has instead:
    #  "seq_len": 40, "vocab": {"kind": "word-vocab", "version": 1, "words": ["the", ...]}
    #  or, character level: "vocab": {"kind": "char-vocab", "version": 1, "chars": "..."}
    # (the vocabulary object written by fedpriv.shared_models.tokenizer.WordVocab/CharVocab.to_json)

Arrays of every split:

* ``x``: task image: float32 of shape (N, in_channels, image_size, image_size),
  finite pixel values in [0, 1]; task text: int64 token ids of shape (N, seq_len),
  each in [0, len(vocab)) (0 is padding). The vocabulary kind says what the model
  reads out: a word vocabulary means sentence classification (sentences
  right-padded, the model averages over non-PAD positions), a character
  vocabulary next-character prediction (the model reads the last position).
* ``y``: int64 class labels of shape (N,), each in [0, num_classes).
* N >= 1 in every split.


This module holds the format itself: :class:`DataMeta`, the checks every
split's arrays go through, and the model a task implies
(:func:`model_config_for_data`), on which both sides must agree.
:mod:`fedpriv.shared_models.data_folder` reads, checks and writes whole folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.registry import ModelConfig
from fedpriv.shared_models.tokenizer import CharVocab, Vocab, WordVocab, vocab_from_json

META_FILE = "fedpriv-data.json"
FORMAT_NAME = "fedpriv-local-data"
FORMAT_VERSION = 1
TASKS: tuple[str, ...] = ("image", "text")
#: The splits (``<split>.npz`` files) a folder of each role holds.
ROLE_SPLITS: dict[str, tuple[str, ...]] = {"client": ("train", "val"), "server": ("test",)}
_IMAGE_FIELDS = ("in_channels", "image_size")
_TEXT_FIELDS = ("seq_len", "vocab")
_COMMON_FIELDS = ("format", "version", "role", "task", "dataset", "num_classes")
#: What to do about a malformed folder, appended to every message.
FIX_HINT = "write the folder with fedpriv-sim export-demo-data or fedpriv.shared_models.data_folder"


@dataclass(frozen=True)
class DataMeta:
    """What a data folder's arrays hold; validated on construction.

    Attributes:
        task: ``"image"`` or ``"text"``.
        dataset: a name for reports (e.g. ``"digits"``); not interpreted.
        num_classes: number of classes of the task (>= 2), not only those present.
        in_channels: image only: channels per image (>= 1); 0 for text.
        image_size: image only: height = width of the images, in pixels (>= 1); 0 for text.
        seq_len: text only: tokens per example (>= 1); 0 for images.
        vocab: text only: the vocabulary of the token ids (a ``WordVocab`` or a
            ``CharVocab``); None for images.

    Raises:
        DataError: a field is missing for its task, set for the other task, or out of range.
    """

    task: str
    dataset: str
    num_classes: int
    in_channels: int = 0
    image_size: int = 0
    seq_len: int = 0
    vocab: Vocab | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise DataError(f"dataset must be a non-empty string, got {self.dataset!r}")
        _check_int("num_classes", self.num_classes, 2)
        image = self.task == "image"
        for name in ("in_channels", "image_size"):
            _check_int(name, getattr(self, name), 1 if image else 0, exactly=None if image else 0)
        _check_int("seq_len", self.seq_len, 0 if image else 1, exactly=0 if image else None)
        if image and self.vocab is not None:
            raise DataError("an image task has no vocab; leave it out")
        if not image and not isinstance(self.vocab, CharVocab | WordVocab):
            raise DataError(
                f"a text task needs its CharVocab or WordVocab as vocab, got {self.vocab!r}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example: (C, H, W) for images, (seq_len,) for text."""
        if self.task == "image":
            return (self.in_channels, self.image_size, self.image_size)
        return (self.seq_len,)

    @property
    def x_dtype(self) -> np.dtype:
        """float32 for images, int64 for token ids."""
        return np.dtype(np.float32 if self.task == "image" else np.int64)

    def to_json_dict(self, role: str) -> dict[str, Any]:
        """The contents of ``fedpriv-data.json`` for a folder of ``role``."""
        out: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "role": role}
        out.update(task=self.task, dataset=self.dataset, num_classes=self.num_classes)
        if self.task == "image":
            out.update(in_channels=self.in_channels, image_size=self.image_size)
        else:
            assert self.vocab is not None  # checked on construction
            out.update(seq_len=self.seq_len, vocab=json.loads(self.vocab.to_json()))
        return out


def model_config_for_data(model: str, meta: DataMeta) -> ModelConfig:
    """The model both sides build for a task (a data folder's or a simulation's).

    Text: a word vocabulary is sentence classification, so the sequence models
    average over the non-PAD positions (``pooling="mean"``); a character
    vocabulary is next-character prediction, read at the last position
    (``pooling="last"``).

    Raises:
        ConfigError: ``model`` is unknown or does not suit the task.
    """
    if meta.task == "text":
        assert meta.vocab is not None  # checked on construction
        if model == "cnn":
            raise ConfigError(f"'{meta.dataset}' is text; use --model lstm or --model transformer")
        return ModelConfig(
            name=model,
            num_classes=meta.num_classes,
            vocab_size=len(meta.vocab),
            seq_len=meta.seq_len,
            pooling="mean" if isinstance(meta.vocab, WordVocab) else "last",
        )
    if model != "cnn":
        raise ConfigError(
            f"model '{model}' needs a text dataset, but '{meta.dataset}' is images; use --model cnn"
        )
    return ModelConfig(
        name=model,
        num_classes=meta.num_classes,
        in_channels=meta.in_channels,
        image_size=meta.image_size,
    )


def parse_meta(file: Path) -> tuple[DataMeta, str]:
    """Parse and validate ``fedpriv-data.json``; returns the metadata and the role."""
    if not file.is_file():
        raise DataError(f"{file} is missing; every data folder needs it; {FIX_HINT}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file} is not valid JSON ({exc}); fix or rewrite the file") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{file} must hold a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT_NAME:
        raise DataError(
            f"{file}: field 'format' must be {FORMAT_NAME!r}, got {raw.get('format')!r}; "
            "is this a fedpriv data folder?"
        )
    if raw.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{file}: format version {raw.get('version')!r} is not supported "
            f"(expected {FORMAT_VERSION}); rewrite the folder or upgrade fedpriv"
        )
    role = raw.get("role")
    if role not in ROLE_SPLITS:
        raise DataError(f"{file}: field 'role' must be 'client' or 'server', got {role!r}")
    task = raw.get("task")
    if task not in TASKS:
        raise DataError(f"{file}: field 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    expected = (*_COMMON_FIELDS, *(_IMAGE_FIELDS if task == "image" else _TEXT_FIELDS))
    missing = [f for f in expected if f not in raw]
    if missing:
        raise DataError(f"{file}: field {missing[0]!r} is missing; task {task!r} needs it")
    extra = sorted(set(raw) - set(expected))
    if extra:
        raise DataError(
            f"{file}: unknown field {extra[0]!r} for task {task!r}; "
            f"expected exactly: {', '.join(expected)}"
        )
    try:
        vocab = None
        if task == "text":
            vocab = vocab_from_json(json.dumps(raw["vocab"]))
        fields = {k: raw[k] for k in ("in_channels", "image_size", "seq_len") if k in raw}
        meta = DataMeta(
            task=task,
            dataset=raw.get("dataset"),  # type: ignore[arg-type]
            num_classes=raw.get("num_classes"),  # type: ignore[arg-type]
            vocab=vocab,
            **fields,
        )
    except DataError as exc:
        raise DataError(f"{file}: {exc}") from exc
    return meta, role


def check_arrays(meta: DataMeta, x: np.ndarray, y: np.ndarray, where: str) -> None:
    """Check one split's inputs and labels against ``meta``; ``where`` opens each message."""
    if x.dtype != meta.x_dtype:
        hint = (
            "scale pixels to [0, 1] and convert with x.astype(np.float32)"
            if meta.task == "image"
            else "convert with x.astype(np.int64)"
        )
        raise DataError(
            f"{where}: x must be {meta.x_dtype} ({meta.task} task), got {x.dtype}; {hint}"
        )
    if x.ndim != 1 + len(meta.input_shape) or x.shape[1:] != meta.input_shape:
        shape = ", ".join(("N", *map(str, meta.input_shape)))
        raise DataError(
            f"{where}: x must have shape ({shape}) as {META_FILE} says, got {x.shape}; "
            f"fix the arrays or the {_shape_fields(meta)} in {META_FILE}"
        )
    if y.dtype != np.int64 or y.ndim != 1:
        raise DataError(
            f"{where}: y must be int64 labels of shape (N,), got {y.dtype} of shape {y.shape}; "
            "convert with y.astype(np.int64)"
        )
    if len(x) != len(y):
        raise DataError(
            f"{where}: x has {len(x)} examples but y has {len(y)} labels; "
            "they must come from the same examples"
        )
    if len(y) == 0:
        raise DataError(f"{where}: no examples; every split needs at least one")
    if y.min() < 0 or y.max() >= meta.num_classes:
        raise DataError(
            f"{where}: labels must lie in [0, {meta.num_classes}) (num_classes in {META_FILE}), "
            f"got values in [{y.min()}, {y.max()}]; fix the labels or num_classes"
        )
    if meta.task == "image":
        if not np.isfinite(x).all():
            raise DataError(
                f"{where}: x holds {int(np.size(x) - np.isfinite(x).sum())} NaN or infinite "
                "pixel values; replace or drop those images"
            )
        if x.min() < 0.0 or x.max() > 1.0:
            raise DataError(
                f"{where}: pixel values must lie in [0, 1], got [{x.min():g}, {x.max():g}]; "
                "scale the images (e.g. divide 8-bit pixels by 255)"
            )
    else:
        assert meta.vocab is not None  # checked on construction
        if x.min() < 0 or x.max() >= len(meta.vocab):
            raise DataError(
                f"{where}: token ids must lie in [0, {len(meta.vocab)}) (the vocab in "
                f"{META_FILE}), got [{x.min()}, {x.max()}]; encode with that vocabulary"
            )


def _shape_fields(meta: DataMeta) -> str:
    if meta.task == "image":
        return f"in_channels={meta.in_channels}, image_size={meta.image_size}"
    return f"seq_len={meta.seq_len}"


def _check_int(name: str, value: object, minimum: int, *, exactly: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if exactly is not None and value != exactly:
        raise DataError(f"{name} must be {exactly} for this task, got {value}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
