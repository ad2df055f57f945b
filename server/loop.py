"""The federated round loop, over any Flower strategy.

Flower's ``Strategy.start()`` runs the same loop but offers no hook between
rounds; ours calls ``on_round`` with a :class:`RoundRecord` after every round
(progress on screen, the run folder's metrics and privacy ledger), reads each
client's :class:`~fedpriv.shared_models.messages.TrainReport`, and ends the run
cleanly when every sampled client declined because its budget is spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpriv.server.client_dp import ClientLevelLedger, clipping_norm
from fedpriv.server.strategies import fit_to_replies
from fedpriv.server.validation import Verdict, validate_reply
from fedpriv.shared_models.errors import PrivacyBudgetError
from fedpriv.shared_models.messages import (
    DECLINED_BUDGET,
    EVAL_ACCURACY,
    EVAL_LOSS,
    PARTITION_ID,
    TrainReport,
)

logger = logging.getLogger(__name__)

CentralEvaluateFn = Callable[[int, ArrayRecord], MetricRecord]


@dataclass
class RoundRecord:
    """What happened in one round. Epsilons are cumulative per client.

    ``epsilon_max``/``epsilon_mean`` are the example-level epsilons, over
    every client that has trained so far (a client's spend does not fall when
    it sits a round out); ``None`` without example-level DP.
    ``client_epsilon`` is the federation's client-level epsilon after this
    round (cumulative), ``client_clipping_norm`` the clipping norm the round
    used; both ``None`` without client-level DP.
    """

    round: int
    seconds: float
    sampled: int
    trained: int
    declined: int
    failed: int
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    client_eval_loss: float | None
    client_eval_accuracy: float | None
    epsilon_max: float | None
    epsilon_mean: float | None
    client_epsilon: float | None = None
    client_clipping_norm: float | None = None
    rejected: int = 0
    rejected_clients: list[int] = field(default_factory=list)
    reports: list[TrainReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, object]:
        """The record without per-client detail, for ``metrics.jsonl``."""
        row = {k: v for k, v in vars(self).items() if k not in ("reports", "failures")}
        row["failures"] = self.failures
        return row


@dataclass
class LoopResult:
    """The final weights and every round's record.

    ``stopped_early`` says why the run ended before its last round; ``failed``
    is true when that reason is a failure (too few nodes), not a clean stop
    (a privacy budget spent).
    """

    arrays: ArrayRecord
    rounds: list[RoundRecord]
    stopped_early: str | None = None
    failed: bool = False


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, *, poll: float = 1.0) -> int:
    """Wait up to ``timeout`` seconds for ``wanted`` connected nodes; return how many there are.

    Flower's own sampling waits for its minimum forever; this bounds the wait.
    """
    deadline = time.monotonic() + timeout
    last_logged = -1
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected >= wanted or time.monotonic() >= deadline:
            return connected
        if connected != last_logged:
            logger.info("waiting for nodes: %d of %d connected", connected, wanted)
            last_logged = connected
        time.sleep(poll)


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    *,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    timeout: float,
    expected_nodes: int = 0,
    min_nodes: int = 0,
    evaluate_fn: CentralEvaluateFn | None = None,
    on_round: Callable[[RoundRecord, ArrayRecord, dict[int, float]], None] | None = None,
    client_ledger: ClientLevelLedger | None = None,
    train_config: ConfigRecord | None = None,
    frozen_prefixes: tuple[str, ...] = (),
    max_update_norm: float | None = None,
    start_round: int = 1,
    latest_epsilon: dict[int, float] | None = None,
) -> LoopResult:
    """Run ``num_rounds`` rounds of train, federated evaluate, central evaluate.

    Before round 1 it waits up to ``timeout`` seconds for ``expected_nodes``
    connected nodes; before every round it needs at least ``min_nodes``. A
    round that cannot get them within ``timeout`` ends the run (``failed``).

    With client-level DP (``strategy`` is a Flower DP wrapper and
    ``client_ledger`` its ledger), a round that would take the federation past
    its client-level budget is not started: the run ends cleanly. Each
    aggregate is noised for the number of clients that replied, and counted
    as one release.

    Every train reply is validated first (:mod:`fedpriv.server.validation`): one with
    the wrong tensors, shapes or dtypes, non-finite values, an update norm
    above ``max_update_norm`` or a malformed report is rejected, reported with
    its node and reason, and not aggregated. Frozen tensors (names starting
    with ``frozen_prefixes``) may be left out of a reply.

    ``on_round(record, arrays, latest_epsilon)`` is called after every round
    with the new global weights and each client's latest cumulative epsilon
    (what a checkpoint needs). A resumed run starts at ``start_round`` with
    ``initial_arrays`` and ``latest_epsilon`` from its checkpoint; its
    returned ``rounds`` are only the rounds run now.
    """
    arrays = initial_arrays
    latest_epsilon = dict(latest_epsilon or {})
    records: list[RoundRecord] = []
    for rnd in range(start_round, num_rounds + 1):
        wanted = max(expected_nodes, min_nodes) if rnd == start_round else min_nodes
        connected = wait_for_nodes(grid, wanted, timeout) if wanted else wanted
        if connected < min_nodes:
            reason = (
                f"round {rnd} could not start: {connected} node(s) connected after waiting "
                f"{timeout:g}s (round timeout), at least {min_nodes} needed (min-nodes)"
            )
            logger.error("%s; ending the run after %d round(s)", reason, rnd - 1)
            return LoopResult(arrays=arrays, rounds=records, stopped_early=reason, failed=True)
        if client_ledger is not None:
            try:
                client_ledger.check_budget()
            except PrivacyBudgetError as err:
                reason = f"round {rnd} not started: {err}"
                logger.warning("%s; ending the run after %d round(s)", reason, rnd - 1)
                return LoopResult(arrays=arrays, rounds=records, stopped_early=reason)
        start = time.monotonic()
        clip = clipping_norm(strategy)
        config = ConfigRecord(dict(train_config)) if train_config is not None else ConfigRecord()
        messages = list(strategy.configure_train(rnd, arrays, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        ok = [m for m in replies if not m.has_error()]
        declined = [m for m in replies if m.has_error() and m.error.code == DECLINED_BUDGET]
        failed = [m for m in replies if m.has_error() and m.error.code != DECLINED_BUDGET]
        # A reply the SuperLink made up (node unavailable) comes from the SuperLink, not the
        # node: name the node the instruction went to.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        failures = [_describe_error(m, sent_to) for m in failed]
        silent = set(sent_to) - {m.metadata.reply_to_message_id for m in replies}
        failures += [f"node {sent_to[i]}: no reply within {timeout:g}s" for i in sorted(silent)]
        frozen = {k for k in arrays if k.startswith(frozen_prefixes)} if frozen_prefixes else set()
        verdicts = [
            validate_reply(m, arrays, may_omit=frozen, max_update_norm=max_update_norm) for m in ok
        ]
        rejected = [v for v in verdicts if not v.accepted]
        for verdict in rejected:
            failures.append(_describe_rejection(verdict, sent_to))
            logger.warning("round %d: %s", rnd, failures[-1])
        ok = [v.reply for v in verdicts if v.accepted]
        reports = [v.report for v in verdicts if v.report is not None]  # spent, even if rejected
        rejected_clients = [v.report.partition_id for v in rejected if v.report is not None]
        fit_to_replies(strategy, len(ok))
        new_arrays, train_metrics = strategy.aggregate_train(rnd, ok) if ok else (None, None)
        if new_arrays is not None:
            # Clients leave frozen tensors out of their updates: keep those as they are.
            arrays = _same_dtypes(ArrayRecord({**arrays, **new_arrays}), arrays)
            if client_ledger is not None:
                client_ledger.record_release(rnd)
        for report in reports:
            if report.dp_enabled:
                latest_epsilon[report.partition_id] = report.epsilon
        evaluate_messages = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid))
        eval_metrics = None
        if evaluate_messages:
            eval_replies = grid.send_and_receive(evaluate_messages, timeout=timeout)
            eval_metrics = strategy.aggregate_evaluate(rnd, eval_replies)
        central = evaluate_fn(rnd, arrays) if evaluate_fn else None
        record = RoundRecord(
            round=rnd,
            seconds=time.monotonic() - start,
            sampled=len(messages),
            trained=len(ok),
            declined=len(declined),
            failed=len(messages) - len(ok) - len(declined) - len(rejected),
            rejected=len(rejected),
            rejected_clients=rejected_clients,
            train_loss=_get(train_metrics, "train-loss"),
            test_loss=_get(central, "loss"),
            test_accuracy=_get(central, "accuracy"),
            client_eval_loss=_get(eval_metrics, EVAL_LOSS),
            client_eval_accuracy=_get(eval_metrics, EVAL_ACCURACY),
            epsilon_max=max(latest_epsilon.values()) if latest_epsilon else None,
            epsilon_mean=(
                sum(latest_epsilon.values()) / len(latest_epsilon) if latest_epsilon else None
            ),
            client_epsilon=client_ledger.epsilon() if client_ledger is not None else None,
            client_clipping_norm=clip if client_ledger is not None else None,
            reports=reports,
            failures=failures,
        )
        records.append(record)
        if on_round is not None:
            on_round(record, arrays, latest_epsilon)
        if messages and len(declined) == len(messages):
            reason = f"every sampled client declined round {rnd}: their privacy budgets are spent"
            logger.warning("%s; ending the run after %d completed round(s)", reason, rnd - 1)
            return LoopResult(arrays=arrays, rounds=records, stopped_early=reason)
    return LoopResult(arrays=arrays, rounds=records)


def _same_dtypes(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """``new`` with each tensor in ``old``'s dtype (Flower's FedOpt strategies return float64)."""
    out = {}
    for name, array in new.items():
        if array.dtype != old[name].dtype:
            array = Array(array.numpy().astype(old[name].numpy().dtype))
        out[name] = array
    return ArrayRecord(out)


def _get(metrics: MetricRecord | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    value = float(metrics[key])  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def _describe_rejection(verdict: Verdict, sent_to: dict[str, int]) -> str:
    msg = verdict.reply
    node = sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
    metrics = next(iter(msg.content.metric_records.values()), None)
    client = metrics.get(PARTITION_ID) if metrics is not None else None
    who = f"node {node}" + (f" (client {int(client)})" if isinstance(client, (int, float)) else "")
    return f"{who}: update rejected: {verdict.reason}"


def _describe_error(msg: Message, sent_to: dict[str, int]) -> str:
    reason = (msg.error.reason or "").strip().splitlines()
    node = sent_to.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
    return f"node {node}: {reason[-1] if reason else 'error'}"
