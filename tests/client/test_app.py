"""The real Message-API ClientApp, driven in-process round after round."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedpriv.client.app import build_client_app
from fedpriv.client.data import ClientData
from fedpriv.client.ledger_store import STATE_KEY, StateStore
from fedpriv.shared_models.accounting import compute_epsilon, plan_round
from fedpriv.shared_models.config import DPConfig, RunConfig
from fedpriv.shared_models.messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DECLINED_BUDGET,
    EvalReport,
    TrainReport,
    state_dict_from_message,
)
from fedpriv.shared_models.registry import ModelConfig, build_model

MODEL = ModelConfig(name="cnn", num_classes=10, image_size=8)


@pytest.fixture(autouse=True)
def _task_identity():
    # Flower stamps messages with the running task's identity; the simulation
    # runtime sets it, so an in-process test must too.
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _data() -> ClientData:
    from fedpriv.simulations.datasets import load_dataset

    pool = load_dataset("digits").pool
    return ClientData(
        partition_id=3,
        x_train=pool.x[:60],
        y_train=pool.y[:60],
        x_val=pool.x[60:90],
        y_val=pool.y[60:90],
        model_config=MODEL,
    )


def _instruction(kind: str, rnd: int, weights: dict[str, torch.Tensor]) -> Message:
    content = RecordDict(
        {ARRAYS_KEY: ArrayRecord(weights), CONFIG_KEY: ConfigRecord({"server-round": rnd})}
    )
    return Message(content=content, dst_node_id=7, message_type=kind)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _run_rounds(config: RunConfig, rounds: int) -> tuple[list[Message], Context]:
    data = _data()
    app = build_client_app(lambda context, cfg: data, config)
    context = _context()
    torch.manual_seed(0)
    weights = build_model(MODEL).state_dict()
    replies = []
    for rnd in range(1, rounds + 1):
        reply = app(_instruction(MessageType.TRAIN, rnd, weights), context)
        replies.append(reply)
        if not reply.has_error():
            weights = state_dict_from_message(reply)
    return replies, context


def test_cumulative_epsilon_over_rounds_matches_dp_accounting():
    config = RunConfig(rounds=4, batch_size=16, local_epochs=1, dp=DPConfig(target_epsilon=5.0))
    replies, _ = _run_rounds(config, 4)
    reports = [TrainReport.from_content(r.content) for r in replies]
    assert all(r.accountant == "rdp" and r.delta == 1e-5 and r.dp_enabled for r in reports)
    google = RdpAccountant()
    for report in reports:
        # Each round is re-composed with Google's library from what the client says it did.
        google.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    report.sample_rate, dp_accounting.GaussianDpEvent(report.noise_multiplier)
                ),
                report.steps,
            )
        )
        assert report.epsilon == pytest.approx(google.get_epsilon(1e-5), rel=0.01)
    # the whole planned run lands at (just under) the target
    assert 4.9 <= reports[-1].epsilon <= 5.0
    # "this round" is not cumulative
    assert reports[-1].epsilon_round < reports[-1].epsilon
    plan = plan_round(60, 16, 1)
    assert all(r.steps == plan.steps and r.sample_rate == plan.sample_rate for r in reports)


def test_budget_stop_declines_the_round_that_would_overspend():
    plan = plan_round(60, 16, 1)
    two_rounds = compute_epsilon([(1.3, plan.sample_rate, 2 * plan.steps)], 1e-5, "rdp")
    config = RunConfig(
        rounds=10,
        batch_size=16,
        local_epochs=1,
        dp=DPConfig(noise_multiplier=1.3, target_epsilon=two_rounds * 1.001),
    )
    replies, context = _run_rounds(config, 4)
    assert [r.has_error() for r in replies] == [False, False, True, True]
    assert replies[2].error.code == DECLINED_BUDGET
    assert "declining round" in replies[2].error.reason
    assert "budget" in replies[2].error.reason
    spent = TrainReport.from_content(replies[1].content).epsilon
    assert spent <= config.dp.target_epsilon
    # declining spent nothing: the ledger still holds exactly two rounds
    ledger = StateStore(context.state).load()
    assert ledger.history() == [(1.3, plan.sample_rate, 2 * plan.steps)]


def test_no_dp_reports_no_guarantee_and_trains():
    config = RunConfig(rounds=2, dp=DPConfig(enabled=False, target_epsilon=None))
    replies, context = _run_rounds(config, 1)
    report = TrainReport.from_content(replies[0].content)
    assert not report.dp_enabled and report.epsilon == float("inf")
    assert report.accountant == "none"
    assert STATE_KEY not in context.state.config_records


def test_reply_carries_unwrapped_weights_that_changed():
    config = RunConfig(rounds=2, batch_size=16, dp=DPConfig(target_epsilon=8.0))
    replies, _ = _run_rounds(config, 1)
    weights = state_dict_from_message(replies[0])
    torch.manual_seed(0)
    initial = build_model(MODEL).state_dict()
    assert set(weights) == set(initial)  # no Opacus "_module." prefixes
    assert any(not torch.equal(weights[k], initial[k]) for k in initial)


def test_evaluate_reports_held_out_accuracy():
    data = _data()
    app = build_client_app(lambda context, cfg: data, RunConfig())
    torch.manual_seed(0)
    model = build_model(MODEL)
    reply = app(_instruction(MessageType.EVALUATE, 1, model.state_dict()), _context())
    report = EvalReport.from_content(reply.content)
    assert report.num_examples == 30
    assert 0.0 <= report.accuracy <= 1.0 and np.isfinite(report.loss)


def test_update_leaves_out_frozen_tensors():
    config = RunConfig(rounds=2, batch_size=16, freeze="features", dp=DPConfig(target_epsilon=8.0))
    replies, _ = _run_rounds(config, 1)
    sent = set(state_dict_from_message(replies[0]))
    assert sent and not any(key.startswith("features") for key in sent)
    assert any(key.startswith("head") for key in sent)
