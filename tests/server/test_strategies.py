"""Server-side aggregation against hand-computed results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedpriv.server.strategies import aggregate_train_metrics, build_strategy
from fedpriv.shared_models.config import STRATEGIES, RunConfig
from fedpriv.shared_models.messages import (
    ARRAYS_KEY,
    EPSILON,
    EPSILON_ROUND,
    METRICS_KEY,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _reply(weights: dict[str, np.ndarray], examples: int, loss: float, eps: float) -> Message:
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}), dst_node_id=5, message_type="train"
    )
    metrics = MetricRecord(
        {NUM_EXAMPLES: examples, TRAIN_LOSS: loss, EPSILON: eps, EPSILON_ROUND: eps / 2}
    )
    arrays = ArrayRecord({k: torch.tensor(v) for k, v in weights.items()})  # a state_dict
    content = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: metrics})
    return Message(content=content, reply_to=instruction)


def test_fedavg_is_the_example_weighted_mean():
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([0.0, 10.0])}
    b = {"w": np.array([[5.0, 6.0], [7.0, 8.0]]), "b": np.array([4.0, -2.0])}
    c = {"w": np.array([[0.0, 0.0], [0.0, 0.0]]), "b": np.array([1.0, 1.0])}
    replies = [_reply(a, 10, 1.0, 2.0), _reply(b, 30, 2.0, 3.0), _reply(c, 60, 4.0, 1.0)]
    arrays, metrics = build_strategy(RunConfig(num_clients=3)).aggregate_train(1, replies)
    result = arrays.to_numpy_ndarrays()
    keys = list(arrays.keys())
    assert keys == ["w", "b"]
    # by hand: 0.1 * a + 0.3 * b + 0.6 * c
    expected = {
        "w": np.array([[0.1 + 1.5, 0.2 + 1.8], [0.3 + 2.1, 0.4 + 2.4]]),
        "b": np.array([0.0 + 1.2 + 0.6, 1.0 - 0.6 + 0.6]),
    }
    for key, value in zip(keys, result, strict=True):
        np.testing.assert_allclose(value, expected[key], rtol=1e-12)
    assert metrics[NUM_EXAMPLES] == 100
    assert metrics[TRAIN_LOSS] == pytest.approx(0.1 * 1.0 + 0.3 * 2.0 + 0.6 * 4.0)
    assert metrics["epsilon-max"] == 3.0
    assert metrics["epsilon-mean"] == pytest.approx(2.0)
    assert metrics["epsilon-round-max"] == 1.5


def test_train_metrics_without_dp_say_so():
    replies = [_reply({"w": np.zeros(2)}, 5, 1.0, -1.0), _reply({"w": np.ones(2)}, 5, 3.0, -1.0)]
    metrics = aggregate_train_metrics([m.content for m in replies], NUM_EXAMPLES)
    assert metrics["epsilon-max"] == -1.0 and metrics[TRAIN_LOSS] == pytest.approx(2.0)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_named_strategy_builds_and_waits_for_the_population(name):
    strategy = build_strategy(RunConfig(strategy=name, num_clients=7, fraction_train=0.5))
    assert strategy.min_available_nodes == 7
    assert strategy.min_train_nodes == 3
    assert strategy.weighted_by_key == NUM_EXAMPLES


def test_median_strategy_takes_the_coordinate_median():
    replies = [
        _reply({"w": np.array([v, -v])}, n, 1.0, 1.0) for v, n in [(1.0, 1), (5.0, 100), (2.0, 1)]
    ]
    arrays, _ = build_strategy(RunConfig(strategy="fedmedian", num_clients=3)).aggregate_train(
        1, replies
    )
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], [2.0, -2.0])
