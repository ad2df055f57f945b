"""Where a node's privacy ledger lives, and how it is read, saved and locked.

The same records trained on in two runs (or twice in one run, across a
restart) compose: their privacy loss adds up. So a node keeps one
:class:`~fedpriv.shared_models.ledger.PrivacyLedger` per data folder, and it
outlives runs, restarts and coordinators:

* :class:`FileStore`: ``privacy-ledger.json`` in a folder. A deployed node's
  data folder; a simulated node of ``fedpriv-sim`` keeps the same file in the
  run folder (``node-ledgers/client-K``), so a resumed run continues it.
* :class:`StateStore`: Flower's ``context.state`` (``flwr run .`` simulations,
  whose nodes have no folder): for one run only.
* :class:`MemoryStore`: a plain object (the audit and the benchmarks).

The file is the source of truth: it is saved atomically
(:mod:`fedpriv.shared_models.plumbing.atomic`) after every round, before the
reply with the weights leaves the node, so a node that dies in between still
counts the round (conservative). A file that cannot be read, or is not a
ledger of this format, is never reset or overwritten: :func:`read_ledger`
raises :class:`LedgerError` and the node refuses to train on that folder. A
file lock (``filelock``) lets one round at a time read, check and save it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from fedpriv.shared_models.checks import check_positive
from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.ledger import PrivacyLedger
from fedpriv.shared_models.plumbing.atomic import atomic_write

LEDGER_FILE = "privacy-ledger.json"
LOCK_FILE = ".privacy-ledger.lock"
#: Key of the ledger (as JSON text) in ``context.state.config_records``.
STATE_KEY = "privacy-ledger"
_NEVER_RESET = (
    "it records every DP-SGD spend of this data and is never reset or overwritten: restore it "
    "from a backup (training on this folder is refused until then)"
)


class LedgerError(DataError):
    """A node's ledger file cannot be read, is not a ledger, or cannot be saved."""


class LedgerStore(Protocol):
    """Where one node's ledger is kept."""

    def load(self) -> PrivacyLedger:
        """The ledger as last saved (an empty one if none was ever saved)."""
        ...

    def save(self, ledger: PrivacyLedger) -> None:
        """Keep ``ledger``, durably where the store can; raise LedgerError if it cannot."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[object]:
        """Hold the ledger for one round (other rounds on the same data wait)."""
        ...


def ledger_path(folder: Path) -> Path:
    """Where the ledger of data folder ``folder`` lives."""
    return Path(folder) / LEDGER_FILE


def read_ledger(folder: Path) -> PrivacyLedger:
    """The ledger of ``folder``; an empty one if it has none yet.

    Raises:
        LedgerError: the file exists but cannot be read or is not a version-1
            ledger (it is left as it is).
    """
    path = ledger_path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PrivacyLedger()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise LedgerError(
            f"privacy ledger {path} cannot be read ({reason}); {_NEVER_RESET}"
        ) from None
    try:
        return PrivacyLedger.from_state_dict(json.loads(text))
    except (ValueError, TypeError) as err:
        raise LedgerError(
            f"privacy ledger {path} is corrupt or not a fedpriv ledger ({err}); {_NEVER_RESET}"
        ) from None


def write_ledger(folder: Path, ledger: PrivacyLedger) -> None:
    """Save ``ledger`` atomically: the old file stays whole if anything fails.

    Raises:
        LedgerError: the file could not be written (disk full, no permission).
    """
    path = ledger_path(folder)
    text = json.dumps(ledger.state_dict(), indent=2, allow_nan=False) + "\n"
    try:
        atomic_write(path, text, mode=0o600)
    except OSError as err:
        raise LedgerError(
            f"cannot save privacy ledger {path} ({err.strerror or err}); the node needs to write "
            "into its data folder"
        ) from None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder``'s ledger (one round at a time per data folder).

    Two runs training on the same folder at once would each check the budget
    against a ledger missing the other's round. A folder that does not exist
    is not locked (loading its data fails with its own message).
    """
    folder = Path(folder)
    if not folder.is_dir():
        yield
        return
    with FileLock(str(folder / LOCK_FILE)):
        yield


def set_node_budget(folder: Path, budget: float) -> PrivacyLedger:
    """Store the node's own cap in ``folder``'s ledger (creating the file if needed)."""
    with locked(folder):
        ledger = read_ledger(folder)
        ledger.node_budget = check_positive("--budget", budget)
        write_ledger(folder, ledger)
    return ledger


class FileStore:
    """The ledger file of one folder (a node's data folder, or a simulated node's)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def load(self) -> PrivacyLedger:
        return read_ledger(self.folder)

    def save(self, ledger: PrivacyLedger) -> None:
        write_ledger(self.folder, ledger)

    def lock(self) -> contextlib.AbstractContextManager[object]:
        return locked(self.folder)


class StateStore:
    """The ledger in a node's Flower ``context.state``: for one run (``flwr run .``)."""

    def __init__(self, state: object) -> None:
        self.state = state  # a flwr.app.RecordDict

    def load(self) -> PrivacyLedger:
        from flwr.app import ConfigRecord

        record = self.state.config_records.get(STATE_KEY)  # type: ignore[attr-defined]
        if not isinstance(record, ConfigRecord):
            return PrivacyLedger()
        return PrivacyLedger.from_state_dict(json.loads(str(record["json"])))

    def save(self, ledger: PrivacyLedger) -> None:
        from flwr.app import ConfigRecord

        self.state[STATE_KEY] = ConfigRecord({"json": json.dumps(ledger.state_dict())})  # type: ignore[index]

    def lock(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


class MemoryStore:
    """A ledger held in memory (the audit, benchmarks and tests)."""

    def __init__(self, ledger: PrivacyLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else PrivacyLedger()

    def load(self) -> PrivacyLedger:
        return PrivacyLedger.from_state_dict(self.ledger.state_dict())

    def save(self, ledger: PrivacyLedger) -> None:
        self.ledger = PrivacyLedger.from_state_dict(ledger.state_dict())

    def lock(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()
