"""Data folders as a whole: read and validate one, summarise it, write one.

The format (``fedpriv-data.json`` plus ``<split>.npz`` arrays) is in
:mod:`fedpriv.shared_models.data_format`. A client node reads its folder
(:func:`fedpriv.client.data.load_local_data`), the coordinator its test set
(:func:`fedpriv.server.central_data.load_test_data`), ``fedpriv-client check-data``
summarises one (:func:`check_data`), and ``fedpriv-sim export-demo-data`` writes
them (:func:`write_local_data`, :func:`write_test_data`): all or nothing, owner-only.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedpriv.shared_models.data_format import (
    FIX_HINT,
    META_FILE,
    ROLE_SPLITS,
    DataMeta,
    check_arrays,
    parse_meta,
)
from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.plumbing.atomic import atomic_folder

logger = logging.getLogger(__name__)

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


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
    meta, role = parse_meta(path / META_FILE)
    splits = {}
    for split in ROLE_SPLITS[role]:
        file = path / f"{split}.npz"
        if not file.is_file():
            needed = ", ".join(f"{s}.npz" for s in ROLE_SPLITS[role])
            raise DataError(f"{file} is missing; a {role} data folder needs {needed}; {FIX_HINT}")
        x, y = _read_npz(file)
        check_arrays(meta, x, y, str(file))
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


def read_folder_of_role(path: Path, role: str) -> LocalData:
    """Read a data folder that must be of ``role`` (``"client"`` or ``"server"``).

    Raises:
        DataError: the folder is invalid, or is of the other role.
    """
    data = read_local_data(path)
    if data.role != role:
        raise DataError(_WRONG_ROLE[role].format(path=data.path, seen=data.role, meta=META_FILE))
    return data


_WRONG_ROLE = {
    "client": "{path} holds the coordinator's test set (role {seen!r} in {meta}), not a "
    "client's data; point the client at a client folder",
    "server": "{path} is a client's data folder (role {seen!r} in {meta}), not the "
    "coordinator's test set; point --test-data at the server-test folder",
}


def read_meta(path: Path) -> DataMeta:
    """Only the metadata of a data folder (its ``fedpriv-data.json``), validated."""
    return parse_meta(_existing_folder(path) / META_FILE)[0]


def _existing_folder(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"data folder {path} {what}; {FIX_HINT}")
    return path


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


def _write(
    path: Path, meta: DataMeta, role: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> Path:
    path = Path(path)
    for name, (x, y) in splits.items():
        check_arrays(meta, np.asarray(x), np.asarray(y), f"{name} arrays for {path}")
    refuse_existing_folder(path)
    try:
        with atomic_folder(path) as tmp:
            (tmp / META_FILE).write_text(json.dumps(meta.to_json_dict(role), indent=2) + "\n")
            for name, (x, y) in splits.items():
                np.savez_compressed(tmp / f"{name}.npz", x=np.asarray(x), y=np.asarray(y))
    except OSError as exc:
        raise DataError(
            f"cannot write data folder {path} ({exc.strerror or exc}); "
            "choose a new folder (nothing was written)"
        ) from exc
    logger.debug("wrote %s data folder %s", role, path)
    return path


def refuse_existing_folder(path: Path) -> None:
    """Raise DataError unless ``path`` is missing or an empty folder (never overwritten)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"{path} exists and is not a folder; choose a new folder")
    if any(path.iterdir()):
        raise DataError(f"{path} already exists and is not empty; choose a new folder or remove it")


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
