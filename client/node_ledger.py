"""A deployed node's durable privacy ledger: every DP-SGD spend its data has ever had.

The same records trained on in two runs (or twice in one run, across a
restart) compose: their privacy loss adds up. So a node with a data folder
keeps one file in it, ``privacy-ledger.json``, that outlives runs, restarts
and coordinators. Format version 1::

    {"format": "fedpriv-privacy-ledger", "version": 1,
     "node_budget": 6.0,       # the node's own cap (fedpriv-client start --budget), or null
     "runs": {"8123456789": {"noise_multiplier": 1.07}},   # chosen in the node's first
                                                          # round of that Flower run
     "spends": [{"run_id": 8123456789, "round": 1, "noise_multiplier": 1.07,
                 "sample_rate": 0.0112, "steps": 89, "time": "2026-01-01T12:00:00+00:00"}]}

The history is mechanism-level (noise multiplier, sampling rate, steps), so
any delta and accountant can be asked: the cumulative epsilon is the
composition of *all* spends of *all* runs (:func:`client.privacy.compute_epsilon`).

The file is the source of truth: it is saved atomically (temporary file in the
same folder, fsync, rename, fsync of the folder) after every round, before the
reply with the weights leaves the node, so a node that dies in between still
counts the round (conservative). A file that cannot be read, or is not a
ledger of this format, is never reset or overwritten: :func:`read_ledger`
raises :class:`LedgerError` and the node refuses to train on that folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.privacy import History, StepPlan, compute_epsilon, merged_history
from shared_models.errors import ConfigError, DataError, PrivacyBudgetError

LEDGER_FILE = "privacy-ledger.json"
FORMAT_NAME = "fedpriv-privacy-ledger"
FORMAT_VERSION = 1
_TOP_FIELDS = {"format", "version", "node_budget", "runs", "spends"}
_SPEND_FIELDS = {"run_id", "round", "noise_multiplier", "sample_rate", "steps", "time"}
_NEVER_RESET = (
    "it records every DP-SGD spend of this data and is never reset or overwritten: restore it "
    "from a backup (training on this folder is refused until then)"
)


class LedgerError(DataError):
    """A node's ledger file cannot be read, is not a ledger, or cannot be saved."""


@dataclass(frozen=True)
class Spend:
    """One round of DP-SGD on this data.

    Attributes:
        run_id: the Flower run id.
        round: the server round (>= 1).
        noise_multiplier: Gaussian noise std as a multiple of the clipping bound (> 0).
        sample_rate: Poisson sampling rate of each step, in (0, 1].
        steps: DP-SGD steps taken (>= 1).
        time: when it was recorded (ISO 8601, UTC).
    """

    run_id: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    time: str


@dataclass(frozen=True)
class RunSpend:
    """What one run spent on this data: its rounds and steps (see :meth:`NodeLedger.runs`)."""

    run_id: int
    rounds: tuple[int, ...]
    steps: int


@dataclass
class NodeLedger:
    """Every spend of one data folder, the noise of each run, and the node's own cap.

    Args:
        spends: in the order they were recorded.
        run_noise: Flower run id -> the noise multiplier chosen in the node's
            first round of that run (a node restarted mid-run keeps it).
        node_budget: the node owner's cap on the lifetime cumulative epsilon
            (``None``: none); the coordinator cannot raise it.
    """

    spends: list[Spend] = field(default_factory=list)
    run_noise: dict[int, float] = field(default_factory=dict)
    node_budget: float | None = None

    def history(self, run_id: int | None = None) -> History:
        """``[(noise_multiplier, sample_rate, steps), ...]`` of every spend (or one run's)."""
        history: History = []
        for s in self.spends:
            if run_id is None or s.run_id == run_id:
                history = merged_history(history, s.noise_multiplier, s.sample_rate, s.steps)
        return history

    def epsilon(self, delta: float, accountant: str, run_id: int | None = None) -> float:
        """Cumulative epsilon at ``delta``: over all runs, or ``run_id``'s spends alone."""
        return compute_epsilon(self.history(run_id), delta, accountant)

    def epsilon_after(
        self, noise_multiplier: float, plan: StepPlan, delta: float, accountant: str
    ) -> float:
        """Lifetime cumulative epsilon if one more round of ``plan`` were spent."""
        history = merged_history(self.history(), noise_multiplier, plan.sample_rate, plan.steps)
        return compute_epsilon(history, delta, accountant)

    def record(
        self,
        *,
        run_id: int,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        time: str | None = None,
    ) -> None:
        """Add a round that was actually trained (``steps == 0`` records nothing)."""
        if steps <= 0:
            return
        spend = Spend(
            run_id=int(run_id),
            round=int(server_round),
            noise_multiplier=float(noise_multiplier),
            sample_rate=float(sample_rate),
            steps=int(steps),
            time=time or datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _check_spend(spend)
        self.spends.append(spend)
        self.run_noise.setdefault(spend.run_id, spend.noise_multiplier)

    def runs(self) -> list[RunSpend]:
        """Per run, in the order first seen: its rounds and total steps."""
        order: dict[int, list[Spend]] = {}
        for s in self.spends:
            order.setdefault(s.run_id, []).append(s)
        return [
            RunSpend(run_id, tuple(sorted({s.round for s in spends})), sum(s.steps for s in spends))
            for run_id, spends in order.items()
        ]

    def state_dict(self) -> dict[str, Any]:
        """The JSON object of the file (format version 1)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "node_budget": self.node_budget,
            "runs": {
                str(run_id): {"noise_multiplier": noise}
                for run_id, noise in sorted(self.run_noise.items())
            },
            "spends": [
                {
                    "run_id": s.run_id,
                    "round": s.round,
                    "noise_multiplier": s.noise_multiplier,
                    "sample_rate": s.sample_rate,
                    "steps": s.steps,
                    "time": s.time,
                }
                for s in self.spends
            ],
        }

    def load_state_dict(self, state: Any) -> None:
        """Replace this ledger with ``state``, validated.

        Raises:
            ValueError: ``state`` is not a version-1 ledger; says what is wrong.
        """
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
        if state.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {state.get('format')!r}, not {FORMAT_NAME!r}")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"version {state.get('version')!r}; this fedpriv reads version {FORMAT_VERSION} "
                "(a newer fedpriv wrote it? upgrade this node)"
            )
        _exact_fields(state, _TOP_FIELDS, "the ledger")
        node_budget = state["node_budget"]
        if node_budget is not None:
            node_budget = _positive("node_budget", node_budget)
        runs = state["runs"]
        if not isinstance(runs, dict):
            raise ValueError("runs must be an object of run id -> {noise_multiplier}")
        run_noise: dict[int, float] = {}
        for key, value in runs.items():
            if not (isinstance(key, str) and key.isdigit()):
                raise ValueError(f"run id {key!r} is not a number")
            if not isinstance(value, dict):
                raise ValueError(f"run {key}: expected an object, got {value!r}")
            _exact_fields(value, {"noise_multiplier"}, f"run {key}")
            run_noise[int(key)] = _positive(
                f"run {key} noise_multiplier", value["noise_multiplier"]
            )
        spends = state["spends"]
        if not isinstance(spends, list):
            raise ValueError("spends must be a list")
        parsed = []
        for i, item in enumerate(spends):
            if not isinstance(item, dict):
                raise ValueError(f"spend {i}: expected an object, got {item!r}")
            _exact_fields(item, _SPEND_FIELDS, f"spend {i}")
            spend = Spend(**item)
            try:
                _check_spend(spend)
            except ValueError as err:
                raise ValueError(f"spend {i}: {err}") from None
            parsed.append(spend)
        self.spends, self.run_noise, self.node_budget = parsed, run_noise, node_budget

    @classmethod
    def from_state_dict(cls, state: Any) -> NodeLedger:
        ledger = cls()
        ledger.load_state_dict(state)
        return ledger


def budget_in_force(
    run_budget: float | None, node_budget: float | None
) -> tuple[float | None, str]:
    """The lower of the run's and the node's budget, and whose it is (for messages)."""
    if node_budget is not None and (run_budget is None or node_budget < run_budget):
        return node_budget, "the node's own budget (--budget)"
    return run_budget, "this run's budget (target epsilon)"


def check_round(
    ledger: NodeLedger,
    *,
    noise_multiplier: float,
    plan: StepPlan,
    delta: float,
    accountant: str,
    run_budget: float | None,
    node_budget: float | None,
) -> float:
    """The lifetime epsilon one more round would lead to; raise if it is over budget.

    Raises:
        PrivacyBudgetError: the round would take the lifetime cumulative epsilon
            past the lower of ``run_budget`` and ``node_budget``.
    """
    after = ledger.epsilon_after(noise_multiplier, plan, delta, accountant)
    budget, whose = budget_in_force(run_budget, node_budget)
    if budget is not None and after > budget:
        raise PrivacyBudgetError(
            f"declining round: cumulative epsilon over all runs on this data would reach "
            f"{after:.3f} > {whose} {budget:g} (delta={delta:g}, {accountant}); "
            f"spent so far {ledger.epsilon(delta, accountant):.3f}"
        )
    return after


# ------------------------------------------------------------------ the file


def ledger_path(folder: Path) -> Path:
    """Where the ledger of data folder ``folder`` lives."""
    return Path(folder) / LEDGER_FILE


def read_ledger(folder: Path) -> NodeLedger:
    """The ledger of ``folder``; an empty one if it has none yet.

    Raises:
        LedgerError: the file exists but cannot be read or is not a version-1
            ledger (it is left as it is).
    """
    path = ledger_path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NodeLedger()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise LedgerError(
            f"privacy ledger {path} cannot be read ({reason}); {_NEVER_RESET}"
        ) from None
    try:
        return NodeLedger.from_state_dict(json.loads(text))
    except (ValueError, TypeError) as err:
        raise LedgerError(
            f"privacy ledger {path} is corrupt or not a fedpriv ledger ({err}); {_NEVER_RESET}"
        ) from None


def write_ledger(folder: Path, ledger: NodeLedger) -> None:
    """Save ``ledger`` atomically: the old file stays whole if anything fails.

    Raises:
        LedgerError: the file could not be written (disk full, no permission).
    """
    folder = Path(folder)
    path = ledger_path(folder)
    text = json.dumps(ledger.state_dict(), indent=2, allow_nan=False) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{LEDGER_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise LedgerError(
            f"cannot save privacy ledger {path} ({err.strerror or err}); the node needs to write "
            "into its data folder"
        ) from None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (one round at a time per data folder).

    Two runs training on the same folder at once would each check the budget
    against a ledger missing the other's round. A folder that does not exist
    is not locked (loading its data fails with its own message).
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = -1
    if fd < 0:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def set_node_budget(folder: Path, budget: float) -> NodeLedger:
    """Store the node's own cap in ``folder``'s ledger (creating the file if needed)."""
    with locked(folder):
        ledger = read_ledger(folder)
        ledger.node_budget = _positive("--budget", budget)
        write_ledger(folder, ledger)
    return ledger


# ------------------------------------------------------------------ one run's view


class RunLedger:
    """The node ledger as one round of one run sees it; what the ClientApp trains against.

    Same interface as :class:`client.privacy.PrivacyLedger` (``noise_multiplier``,
    ``check_budget``, ``record``, ``epsilon``), with :meth:`save` writing the file.
    Every epsilon is the lifetime cumulative one, over all runs on this data.
    """

    def __init__(
        self,
        folder: Path,
        *,
        run_id: int,
        server_round: int,
        delta: float,
        accountant: str,
        run_budget: float | None,
        node_budget: float | None,
    ) -> None:
        self.folder = Path(folder)
        self.run_id = int(run_id)
        self.server_round = int(server_round)
        self.delta = delta
        self.accountant = accountant
        self.run_budget = run_budget
        self.ledger = read_ledger(self.folder)
        if node_budget is not None:
            self.ledger.node_budget = _positive("privacy-budget", node_budget)

    @property
    def budget(self) -> float | None:
        """The budget in force: the lower of the run's and the node's."""
        return budget_in_force(self.run_budget, self.ledger.node_budget)[0]

    @property
    def noise_multiplier(self) -> float | None:
        """This run's noise multiplier, once chosen (kept across restarts)."""
        return self.ledger.run_noise.get(self.run_id)

    @noise_multiplier.setter
    def noise_multiplier(self, value: float) -> None:
        self.ledger.run_noise[self.run_id] = float(value)

    def check_budget(self, noise_multiplier: float, plan: StepPlan) -> float:
        return check_round(
            self.ledger,
            noise_multiplier=noise_multiplier,
            plan=plan,
            delta=self.delta,
            accountant=self.accountant,
            run_budget=self.run_budget,
            node_budget=self.ledger.node_budget,
        )

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        self.ledger.record(
            run_id=self.run_id,
            server_round=self.server_round,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
        )

    def epsilon(self) -> float:
        """Lifetime cumulative epsilon of this data, at this run's delta and accountant."""
        return self.ledger.epsilon(self.delta, self.accountant)

    def save(self) -> None:
        write_ledger(self.folder, self.ledger)


def _check_spend(s: Spend) -> None:
    for name in ("run_id", "round", "steps"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if s.run_id < 0 or s.round < 1 or s.steps < 1:
        raise ValueError(
            f"expected run_id >= 0, round >= 1, steps >= 1; got {s.run_id}, {s.round}, {s.steps}"
        )
    _positive("noise_multiplier", s.noise_multiplier)
    rate = _positive("sample_rate", s.sample_rate)
    if rate > 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {rate}")
    if not isinstance(s.time, str):
        raise ValueError(f"time must be a string, got {s.time!r}")


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _exact_fields(obj: dict[str, Any], expected: set[str], where: str) -> None:
    missing, extra = expected - obj.keys(), obj.keys() - expected
    if missing or extra:
        raise ValueError(
            f"{where}: missing fields {sorted(missing) or 'none'}, "
            f"unexpected fields {sorted(extra) or 'none'}"
        )
