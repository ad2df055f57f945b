"""What travels between the ServerApp and the ClientApps, and under which keys.

Both sides use only these constants and helpers, so a key cannot be spelled
two ways. Weights travel as one ``ArrayRecord`` (a model ``state_dict``);
metrics as one ``MetricRecord``; the accountant's name (a string, which a
``MetricRecord`` cannot hold) as a ``ConfigRecord``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)

from fedpriv.shared_models.errors import FedprivError

if TYPE_CHECKING:
    import torch

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PRIVACY_KEY = "privacy"

# Config sent by the server with every instruction (Flower adds "server-round").
SERVER_ROUND = "server-round"
# Train config under client-side client-level DP: "fixed" or "adaptive" clipping by the
# client (Flower's wrapper adds the clipping norm itself).
CLIENT_CLIP_MODE = "fedpriv-client-clip"

# Metric keys. NUM_EXAMPLES is what the strategies weight by; CLIENT_WEIGHT (always 1)
# under client-level DP, whose noise is calibrated to an unweighted mean.
NUM_EXAMPLES = "num-examples"
CLIENT_WEIGHT = "client-weight"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"  # cumulative over every round this client took part in
EPSILON_ROUND = "epsilon-round"  # this round alone: NOT cumulative
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
DP_ENABLED = "dp-enabled"
PARTITION_ID = "partition-id"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
ACCOUNTANT = "accountant"

# Error code of a reply in which a client declines a round (its budget would
# be exceeded). Flower's own codes are small integers.
DECLINED_BUDGET = 4001
# Error code of a reply from a node whose privacy ledger file cannot be read or saved
# (it refuses to train rather than start a fresh ledger).
LEDGER_UNUSABLE = 4002


_R = TypeVar("_R")


class MessageFormatError(FedprivError):
    """A message does not carry the records this module defines."""


@dataclass(frozen=True)
class TrainReport:
    """One client's account of one round of local training.

    ``epsilon`` is cumulative over every round the client has taken part in
    (for a node with a ledger file, over every run on its data);
    ``epsilon_round`` is this round alone. Both are at ``delta`` under the
    named ``accountant``, for example-level DP of the client's own records.
    Without DP both are ``inf`` and ``dp_enabled`` is 0.
    """

    num_examples: int
    train_loss: float
    epsilon: float
    epsilon_round: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    dp_enabled: bool
    partition_id: int
    accountant: str

    def to_records(self) -> tuple[MetricRecord, ConfigRecord]:
        metrics: dict[str, MetricRecordValues] = {
            NUM_EXAMPLES: self.num_examples,
            CLIENT_WEIGHT: 1,
            TRAIN_LOSS: self.train_loss,
            EPSILON: _finite_or_neg1(self.epsilon),
            EPSILON_ROUND: _finite_or_neg1(self.epsilon_round),
            DELTA: self.delta,
            NOISE_MULTIPLIER: self.noise_multiplier,
            SAMPLE_RATE: self.sample_rate,
            STEPS: self.steps,
            DP_ENABLED: int(self.dp_enabled),
            PARTITION_ID: self.partition_id,
        }
        return MetricRecord(metrics), ConfigRecord({ACCOUNTANT: self.accountant})

    @classmethod
    def from_content(cls, content: RecordDict) -> TrainReport:
        metrics = _get(content, METRICS_KEY, MetricRecord)
        privacy = _get(content, PRIVACY_KEY, ConfigRecord)
        try:
            return cls(
                num_examples=int(metrics[NUM_EXAMPLES]),  # type: ignore[arg-type]
                train_loss=float(metrics[TRAIN_LOSS]),  # type: ignore[arg-type]
                epsilon=_neg1_to_inf(metrics[EPSILON]),
                epsilon_round=_neg1_to_inf(metrics[EPSILON_ROUND]),
                delta=float(metrics[DELTA]),  # type: ignore[arg-type]
                noise_multiplier=float(metrics[NOISE_MULTIPLIER]),  # type: ignore[arg-type]
                sample_rate=float(metrics[SAMPLE_RATE]),  # type: ignore[arg-type]
                steps=int(metrics[STEPS]),  # type: ignore[arg-type]
                dp_enabled=bool(metrics[DP_ENABLED]),
                partition_id=int(metrics[PARTITION_ID]),  # type: ignore[arg-type]
                accountant=str(privacy[ACCOUNTANT]),
            )
        except KeyError as err:
            raise MessageFormatError(f"train reply lacks metric {err}") from None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EvalReport:
    """A client's loss and accuracy on its own held-out split."""

    num_examples: int
    loss: float
    accuracy: float

    def to_record(self) -> MetricRecord:
        return MetricRecord(
            {
                NUM_EXAMPLES: self.num_examples,
                CLIENT_WEIGHT: 1,
                EVAL_LOSS: self.loss,
                EVAL_ACCURACY: self.accuracy,
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> EvalReport:
        metrics = _get(content, METRICS_KEY, MetricRecord)
        try:
            return cls(
                num_examples=int(metrics[NUM_EXAMPLES]),  # type: ignore[arg-type]
                loss=float(metrics[EVAL_LOSS]),  # type: ignore[arg-type]
                accuracy=float(metrics[EVAL_ACCURACY]),  # type: ignore[arg-type]
            )
        except KeyError as err:
            raise MessageFormatError(f"evaluate reply lacks metric {err}") from None


def train_reply(msg: Message, state_dict: dict[str, torch.Tensor], report: TrainReport) -> Message:
    """Build the reply to a train instruction: new weights plus the report."""
    metrics, privacy = report.to_records()
    content = RecordDict(
        {ARRAYS_KEY: ArrayRecord(state_dict), METRICS_KEY: metrics, PRIVACY_KEY: privacy}
    )
    return Message(content=content, reply_to=msg)


def evaluate_reply(msg: Message, report: EvalReport) -> Message:
    """Build the reply to an evaluate instruction."""
    return Message(content=RecordDict({METRICS_KEY: report.to_record()}), reply_to=msg)


def state_dict_from_message(msg: Message) -> dict[str, torch.Tensor]:
    """The model weights an instruction or reply carries."""
    return _get(msg.content, ARRAYS_KEY, ArrayRecord).to_torch_state_dict()


def server_round(msg: Message) -> int:
    """The round number the server put in an instruction's config."""
    config = _get(msg.content, CONFIG_KEY, ConfigRecord)
    return int(config.get(SERVER_ROUND, 0))  # type: ignore[arg-type]


def _get(content: RecordDict, key: str, kind: type[_R]) -> _R:
    record = content.get(key)
    if not isinstance(record, kind):
        raise MessageFormatError(
            f"expected a {kind.__name__} under '{key}', got {type(record).__name__}"
        )
    return record


def _finite_or_neg1(value: float) -> float:
    # MetricRecord values are plain numbers; "no guarantee" (inf) travels as -1.
    return value if math.isfinite(value) else -1.0


def _neg1_to_inf(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    return math.inf if number < 0 else number
