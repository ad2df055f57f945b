"""The privacy ledger: every DP spend some data has had, and the epsilon it adds up to.

One class for every ledger fedpriv keeps. A client keeps one per data folder
(a deployed node in its data folder, a simulated node in the run folder or in
Flower's ``context.state``: see :mod:`fedpriv.client.ledger_store`); the
coordinator keeps one for the federation's client-level releases
(:mod:`fedpriv.server.client_dp`). The history is mechanism-level (noise
multiplier, sampling rate, steps), so any delta and accountant can be asked:
the cumulative epsilon is the composition of *all* spends
(:func:`fedpriv.shared_models.accounting.compute_epsilon`).

Its JSON form (``state_dict``), format version 1::

    {"format": "fedpriv-privacy-ledger", "version": 1,
     "node_budget": 6.0,       # the owner's own cap on the lifetime epsilon, or null
     "runs": {"8123456789": {"noise_multiplier": 1.07}},   # chosen in the first
                                                          # round of that Flower run
     "spends": [{"run_id": 8123456789, "round": 1, "noise_multiplier": 1.07,
                 "sample_rate": 0.0112, "steps": 89, "time": "2026-01-01T12:00:00+00:00"}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedpriv.shared_models.accounting import History, StepPlan, compute_epsilon, merged_history
from fedpriv.shared_models.checks import check_positive
from fedpriv.shared_models.errors import PrivacyBudgetError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PrivacyLedger", "RunSpend", "Spend", "check_round"]

FORMAT_NAME = "fedpriv-privacy-ledger"
FORMAT_VERSION = 1
_TOP_FIELDS = {"format", "version", "node_budget", "runs", "spends"}
_SPEND_FIELDS = {"run_id", "round", "noise_multiplier", "sample_rate", "steps", "time"}


@dataclass(frozen=True)
class Spend:
    """One round of DP training (or one released aggregate) on this data.

    Attributes:
        run_id: the Flower run id.
        round: the server round (>= 1).
        noise_multiplier: Gaussian noise std as a multiple of the clipping bound (> 0).
        sample_rate: Poisson sampling rate of each step, in (0, 1].
        steps: mechanism invocations (DP-SGD steps; 1 for a release), >= 1.
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
    """What one run spent: its rounds and steps (see :meth:`PrivacyLedger.runs`)."""

    run_id: int
    rounds: tuple[int, ...]
    steps: int


@dataclass
class PrivacyLedger:
    """Every spend of one data folder (or one federation), each run's noise, the owner's cap.

    Args:
        spends: in the order they were recorded.
        run_noise: Flower run id -> the noise multiplier chosen in the first
            round of that run (a node restarted mid-run keeps it).
        node_budget: the data owner's cap on the lifetime cumulative epsilon
            (``None``: none); a coordinator cannot raise it.
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
        """Add a round that was actually spent (``steps == 0`` records nothing)."""
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
        """The JSON object of the ledger (format version 1)."""
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
            node_budget = check_positive("node_budget", node_budget)
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
            run_noise[int(key)] = check_positive(
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
    def from_state_dict(cls, state: Any) -> PrivacyLedger:
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
    ledger: PrivacyLedger,
    *,
    noise_multiplier: float,
    plan: StepPlan,
    delta: float,
    accountant: str,
    run_budget: float | None,
) -> float:
    """The lifetime epsilon one more round would lead to; raise if it is over budget.

    Raises:
        PrivacyBudgetError: the round would take the lifetime cumulative epsilon
            past the lower of ``run_budget`` and the ledger's ``node_budget``.
    """
    after = ledger.epsilon_after(noise_multiplier, plan, delta, accountant)
    budget, whose = budget_in_force(run_budget, ledger.node_budget)
    if budget is not None and after > budget:
        raise PrivacyBudgetError(
            f"declining round: cumulative epsilon over all runs on this data would reach "
            f"{after:.3f} > {whose} {budget:g} (delta={delta:g}, {accountant}); "
            f"spent so far {ledger.epsilon(delta, accountant):.3f}"
        )
    return after


def _check_spend(s: Spend) -> None:
    for name in ("run_id", "round", "steps"):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if s.run_id < 0 or s.round < 1 or s.steps < 1:
        raise ValueError(
            f"expected run_id >= 0, round >= 1, steps >= 1; got {s.run_id}, {s.round}, {s.steps}"
        )
    check_positive("noise_multiplier", s.noise_multiplier)
    rate = check_positive("sample_rate", s.sample_rate)
    if rate > 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {rate}")
    if not isinstance(s.time, str):
        raise ValueError(f"time must be a string, got {s.time!r}")


def _exact_fields(obj: dict[str, Any], expected: set[str], where: str) -> None:
    missing, extra = expected - obj.keys(), obj.keys() - expected
    if missing or extra:
        raise ValueError(
            f"{where}: missing fields {sorted(missing) or 'none'}, "
            f"unexpected fields {sorted(extra) or 'none'}"
        )
