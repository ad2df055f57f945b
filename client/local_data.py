"""The local data folder a deployed client node trains on, and its validation.

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
    # (the vocabulary object written by shared_models.tokenizer.WordVocab/CharVocab.to_json)

Arrays of every split:

* ``x``: task image: float32 of shape (N, in_channels, image_size, image_size),
  finite pixel values in [0, 1]; task text: int64 token ids of shape (N, seq_len),
  each in [0, len(vocab)) (0 is padding). The vocabulary kind says what the model
  reads out: a word vocabulary means sentence classification (sentences
  right-padded, the model averages over non-PAD positions), a character
  vocabulary next-character prediction (the model reads the last position).
* ``y``: int64 class labels of shape (N,), each in [0, num_classes).
* N >= 1 in every split.

:func:`check_data` validates a folder, :func:`load_local_data` turns it into the
:class:`~client.data.ClientData` a node trains on, :func:`write_local_data`
(and :func:`write_test_data` for the coordinator) create one.
``simulations.export`` writes them from a simulation dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.data import ClientData
from shared_models.errors import ConfigError, DataError
from shared_models.registry import ModelConfig
from shared_models.tokenizer import CharVocab, Vocab, WordVocab, vocab_from_json

logger = logging.getLogger(__name__)

META_FILE = "fedpriv-data.json"
FORMAT_NAME = "fedpriv-local-data"
FORMAT_VERSION = 1
TASKS: tuple[str, ...] = ("image", "text")
#: The splits (``<split>.npz`` files) a folder of each role holds.
ROLE_SPLITS: dict[str, tuple[str, ...]] = {"client": ("train", "val"), "server": ("test",)}
_IMAGE_FIELDS = ("in_channels", "image_size")
_TEXT_FIELDS = ("seq_len", "vocab")
_COMMON_FIELDS = ("format", "version", "role", "task", "dataset", "num_classes")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip
_FIX = "write the folder with fedpriv-client export-demo-data or client.local_data"


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


@dataclass(frozen=True)
class SplitSummary:
    """One split of a data folder: its size and examples per class."""

    name: str
    examples: int
    class_counts: tuple[int, ...]  # length num_classes; class_counts[c] = examples of class c


@dataclass(frozen=True)
class DataSummary:
    """What :func:`check_data` found in a valid data folder."""

    path: Path
    role: str  # "client" or "server"
    meta: DataMeta
    splits: tuple[SplitSummary, ...]  # in the order of ROLE_SPLITS[role]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, as in :attr:`DataMeta.input_shape`."""
        return self.meta.input_shape


@dataclass(frozen=True)
class LocalData:
    """A validated data folder read into memory: ``splits[name] = (x, y)``."""

    path: Path
    role: str
    meta: DataMeta
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]]


def read_local_data(path: Path) -> LocalData:
    """Read and validate every file of a data folder (either role).

    Raises:
        DataError: anything in the folder departs from the format; the one-line
            message names the file, what was expected, what was seen and what to do.
    """
    path = _existing_folder(path)
    meta, role = _read_meta(path / META_FILE)
    splits = {}
    for split in ROLE_SPLITS[role]:
        file = path / f"{split}.npz"
        if not file.is_file():
            needed = ", ".join(f"{s}.npz" for s in ROLE_SPLITS[role])
            raise DataError(f"{file} is missing; a {role} data folder needs {needed}; {_FIX}")
        x, y = _read_npz(file)
        _check_arrays(meta, x, y, str(file))
        splits[split] = (x, y)
    return LocalData(path=path, role=role, meta=meta, splits=splits)


def check_data(path: Path) -> DataSummary:
    """Validate a data folder and summarise it: examples and class counts per split.

    Raises:
        DataError: see :func:`read_local_data`.
    """
    data = read_local_data(path)
    splits = tuple(
        SplitSummary(
            name=name,
            examples=len(y),
            class_counts=tuple(
                int(c) for c in np.bincount(y, minlength=data.meta.num_classes).tolist()
            ),
        )
        for name, (_, y) in data.splits.items()
    )
    return DataSummary(path=data.path, role=data.role, meta=data.meta, splits=splits)


def load_local_data(path: Path, *, partition_id: int, model: str) -> ClientData:
    """A client folder as the :class:`ClientData` this node trains and evaluates on.

    Args:
        path: a data folder of role ``"client"``.
        partition_id: this node's number, shown in reports.
        model: one of ``shared_models.registry.MODEL_NAMES``; must suit the task
            (``cnn`` for images, ``lstm``/``transformer`` for text).

    Raises:
        DataError: the folder is invalid, or holds the coordinator's test set.
        ConfigError: ``model`` does not suit the folder's task.
    """
    data = read_local_data(path)
    if data.role != "client":
        raise DataError(
            f"{data.path} holds the coordinator's test set (role {data.role!r} in {META_FILE}), "
            "not a client's data; point the client at a client folder"
        )
    (x_train, y_train), (x_val, y_val) = data.splits["train"], data.splits["val"]
    return ClientData(
        partition_id=partition_id,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        model_config=model_config_for_data(model, data.meta),
    )


def load_test_data(
    path: Path, *, model: str
) -> tuple[ModelConfig, np.ndarray, np.ndarray, str | None]:
    """The coordinator's test-set folder: the model config it implies, inputs, labels
    and (text only) the vocabulary as JSON, as stored with the final model.

    Raises:
        DataError: the folder is invalid, or is a client's folder.
        ConfigError: ``model`` does not suit the folder's task.
    """
    data = read_local_data(path)
    if data.role != "server":
        raise DataError(
            f"{data.path} is a client's data folder (role {data.role!r} in {META_FILE}), not the "
            "coordinator's test set; point --test-data at the server-test folder"
        )
    x, y = data.splits["test"]
    vocab = data.meta.vocab.to_json() if data.meta.vocab is not None else None
    return model_config_for_data(model, data.meta), x, y, vocab


def read_meta(path: Path) -> DataMeta:
    """Only the metadata of a data folder (its ``fedpriv-data.json``), validated."""
    return _read_meta(_existing_folder(path) / META_FILE)[0]


def _existing_folder(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"data folder {path} {what}; {_FIX}")
    return path


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


def write_local_data(
    path: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    meta: DataMeta,
) -> Path:
    """Write a client data folder (role ``"client"``), all or nothing.

    The arrays are checked against ``meta`` first, then written into a temporary
    sibling folder that is renamed to ``path`` at the end.

    Returns:
        ``path``.

    Raises:
        DataError: an array does not fit ``meta``, or ``path`` exists and is not an
            empty folder (it is never overwritten).
    """
    return _write(path, meta, "client", {"train": (x_train, y_train), "val": (x_val, y_val)})


def write_test_data(path: Path, x_test: np.ndarray, y_test: np.ndarray, meta: DataMeta) -> Path:
    """Write the coordinator's test-set folder (role ``"server"``); as :func:`write_local_data`."""
    return _write(path, meta, "server", {"test": (x_test, y_test)})


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``, renamed to ``path`` if the block succeeds.

    The folder is readable by its owner only, like the private data it holds. On an
    error it is removed and ``path`` is left as it was.

    Raises:
        DataError: ``path`` exists and is not an empty folder.
    """
    path = Path(path)
    _refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)  # replaces an empty folder; refuses a non-empty one
        except OSError as exc:
            raise DataError(
                f"cannot create {path} ({exc.strerror}); it appeared meanwhile? "
                "choose a new folder or remove it"
            ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(
    path: Path, meta: DataMeta, role: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> Path:
    path = Path(path)
    for name, (x, y) in splits.items():
        _check_arrays(meta, np.asarray(x), np.asarray(y), f"{name} arrays for {path}")
    with atomic_folder(path) as tmp:
        (tmp / META_FILE).write_text(json.dumps(meta.to_json_dict(role), indent=2) + "\n")
        for name, (x, y) in splits.items():
            np.savez_compressed(tmp / f"{name}.npz", x=np.asarray(x), y=np.asarray(y))
    logger.debug("wrote %s data folder %s", role, path)
    return path


def _refuse_existing(path: Path) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"{path} exists and is not a folder; choose a new folder")
    if any(path.iterdir()):
        raise DataError(f"{path} already exists and is not empty; choose a new folder or remove it")


def _read_meta(file: Path) -> tuple[DataMeta, str]:
    """Parse and validate ``fedpriv-data.json``; returns the metadata and the role."""
    if not file.is_file():
        raise DataError(f"{file} is missing; every data folder needs it; {_FIX}")
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


def _read_npz(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an .npz archive, refusing pickled objects."""
    with file.open("rb") as handle:
        magic = handle.read(4)
    if magic not in _ZIP_MAGICS:
        raise DataError(f"{file} is not an .npz archive; write it with numpy.savez(file, x=, y=)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            names = sorted(archive.files)
            if names != ["x", "y"]:
                raise DataError(
                    f"{file} must hold exactly the arrays x and y, got {names or 'none'}; "
                    "write it with numpy.savez(file, x=inputs, y=labels)"
                )
            return archive["x"], archive["y"]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{file} holds object arrays, which would need pickle to load; refused: "
                "store plain numeric arrays (float32 images or int64 ids, int64 labels)"
            ) from exc
        raise DataError(f"cannot read {file} ({exc}); write the file again") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {file} ({exc}); the file is damaged, write it again") from exc


def _check_arrays(meta: DataMeta, x: np.ndarray, y: np.ndarray, where: str) -> None:
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
