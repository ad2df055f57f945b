"""Update validation: what a client's reply must be before it may be aggregated.

Every train reply is checked against the global model it answers:

- its report parses (the metrics every reply carries, finite and in range);
- its weights have exactly the global model's tensor names (frozen tensors may be
  left out), the same shapes and the same dtypes;
- every value is finite;
- the update (reply minus global weights) is not all zeros, and has an L2 norm
  within the configured bound, when there is one.

A reply that fails is rejected with the reason, reported by the round loop with
the client it came from, and never aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message

from fedpriv.shared_models.messages import ARRAYS_KEY, MessageFormatError, TrainReport


@dataclass(frozen=True)
class Verdict:
    """A reply's validation result: its report (when it parses) and why it was rejected, if it was.

    A rejected update whose report parses still counts for privacy: the client
    spent what it reports, whatever the coordinator does with its weights.
    """

    reply: Message
    report: TrainReport | None
    reason: str | None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def validate_reply(
    reply: Message,
    global_arrays: ArrayRecord,
    *,
    may_omit: Iterable[str] = (),
    max_update_norm: float | None = None,
) -> Verdict:
    """Check one train reply against ``global_arrays`` (the weights it was sent).

    Args:
        reply: a train reply without an error.
        global_arrays: the global weights of this round, by tensor name.
        may_omit: tensor names a client may leave out (frozen ones).
        max_update_norm: bound on the L2 norm of the whole update; ``None``: none.
    """
    try:
        report = TrainReport.from_content(reply.content)
    except (MessageFormatError, TypeError, ValueError) as err:
        return Verdict(reply, None, f"malformed report: {err}")
    reason = _report_problem(report)
    if reason is None:
        reason = _arrays_problem(reply, global_arrays, set(may_omit), max_update_norm)
    return Verdict(reply, report, reason)


def _report_problem(report: TrainReport) -> str | None:
    if report.num_examples < 1:
        return f"malformed report: num-examples must be >= 1, got {report.num_examples}"
    if not math.isfinite(report.train_loss):
        return f"malformed report: train loss is {report.train_loss}"
    if report.dp_enabled and not (math.isfinite(report.epsilon) and report.epsilon >= 0):
        return f"malformed report: epsilon is {report.epsilon}"
    return None


def _arrays_problem(
    reply: Message,
    global_arrays: ArrayRecord,
    may_omit: set[str],
    max_update_norm: float | None,
) -> str | None:
    records = reply.content.array_records
    if ARRAYS_KEY not in records or len(records) != 1:
        return f"expected one weights record '{ARRAYS_KEY}', got {sorted(records)}"
    arrays = records[ARRAYS_KEY]
    unexpected = sorted(set(arrays) - set(global_arrays))
    if unexpected:
        return f"unexpected tensor(s) {', '.join(unexpected[:3])}"
    missing = sorted(set(global_arrays) - set(arrays) - may_omit)
    if missing:
        return f"missing tensor(s) {', '.join(missing[:3])}"
    squared = 0.0
    for name, array in arrays.items():
        expected = global_arrays[name]
        if tuple(array.shape) != tuple(expected.shape):
            return (
                f"tensor '{name}' has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
            )
        if array.dtype != expected.dtype:
            return f"tensor '{name}' has dtype {array.dtype}, expected {expected.dtype}"
        try:
            values = array.numpy()
        except Exception as err:  # noqa: BLE001 - undecodable bytes from a client
            return f"tensor '{name}' cannot be decoded: {err}"
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"tensor '{name}' has {bad} non-finite value(s) (NaN or inf)"
        if values.dtype.kind in "fc":
            diff = values.astype(np.float64) - expected.numpy().astype(np.float64)
            squared += float(np.sum(diff * diff))
    norm = math.sqrt(squared)
    if norm == 0.0 and any(a.numpy().dtype.kind in "fc" for a in arrays.values()):
        # Clipping (client-level DP, norm-bounded FedAvg) divides by the norm.
        return "the update is all zeros: the global weights were sent back untrained"
    if max_update_norm is not None:
        if not norm <= max_update_norm:
            return (
                f"update norm {norm:.4g} exceeds the bound {max_update_norm:g} (--max-update-norm)"
            )
    return None
