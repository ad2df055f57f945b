"""Update validation, norm-bounded FedAvg and faulty simulated clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedpriv.server.normbounded import NormBoundedFedAvg
from fedpriv.server.validation import validate_reply
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.messages import ARRAYS_KEY, METRICS_KEY, PRIVACY_KEY, TrainReport
from fedpriv.simulations.faults import FaultPlan

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))

GLOBAL = {"conv.weight": np.zeros((4, 1, 3, 3), np.float32), "fc.bias": np.zeros(3, np.float32)}


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _report(**changes) -> TrainReport:
    fields = dict(
        num_examples=50,
        train_loss=0.7,
        epsilon=2.0,
        epsilon_round=1.0,
        delta=1e-5,
        noise_multiplier=1.1,
        sample_rate=0.1,
        steps=10,
        dp_enabled=True,
        partition_id=3,
        accountant="rdp",
    )
    return TrainReport(**{**fields, **changes})


def _reply(arrays: dict[str, np.ndarray], report: TrainReport | None = None) -> Message:
    instruction = Message(
        content=RecordDict({"config": ConfigRecord()}), dst_node_id=5, message_type="train"
    )
    metrics, privacy = (report or _report()).to_records()
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS_KEY: metrics,
            PRIVACY_KEY: privacy,
        }
    )
    return Message(content=content, reply_to=instruction)


def _global() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def _good() -> dict[str, np.ndarray]:
    return {k: v + 0.01 for k, v in GLOBAL.items()}


def _with(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {**_good(), name: value}


BAD = {
    "nan": (_with("fc.bias", np.array([0, np.nan, 0], np.float32)), "non-finite"),
    "inf": (_with("fc.bias", np.array([0, np.inf, 0], np.float32)), "non-finite"),
    "shape": (_with("fc.bias", np.zeros(4, np.float32)), "has shape (4,), expected (3,)"),
    "dtype": (_with("fc.bias", np.zeros(3, np.float64)), "has dtype"),
    "missing": ({"conv.weight": GLOBAL["conv.weight"]}, "missing tensor(s) fc.bias"),
    "extra": ({**_good(), "backdoor": np.zeros(2, np.float32)}, "unexpected tensor(s) backdoor"),
    "norm": (_with("fc.bias", np.full(3, 100, np.float32)), "exceeds the bound 10"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_updates_are_rejected_with_the_reason(kind):
    arrays, reason = BAD[kind]
    verdict = validate_reply(_reply(arrays), _global(), max_update_norm=10.0)
    assert not verdict.accepted
    assert reason in verdict.reason


def test_a_good_update_passes_and_frozen_tensors_may_be_left_out():
    assert validate_reply(_reply(_good()), _global(), max_update_norm=10.0).accepted
    partial = {"fc.bias": GLOBAL["fc.bias"] + 1}
    assert validate_reply(_reply(partial), _global(), may_omit={"conv.weight"}).accepted
    # without a bound any finite norm passes
    assert validate_reply(_reply(BAD["norm"][0]), _global()).accepted


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"num_examples": 0}, "num-examples must be >= 1"),
        ({"train_loss": float("nan")}, "train loss is nan"),
        ({"epsilon": float("nan")}, "epsilon is inf"),  # NaN travels as -1: no finite epsilon
    ],
)
def test_malformed_reports_are_rejected(changes, reason):
    verdict = validate_reply(_reply(_good(), _report(**changes)), _global())
    assert not verdict.accepted and reason in verdict.reason


def test_a_reply_without_its_metrics_is_rejected_not_a_crash():
    reply = _reply(_good())
    del reply.content[METRICS_KEY]
    verdict = validate_reply(reply, _global())
    assert not verdict.accepted and "malformed report" in verdict.reason


def test_norm_bounded_fedavg_clips_each_update_then_averages():
    strategy = NormBoundedFedAvg(norm_bound=1.0, weighted_by_key="num-examples")
    strategy._current = _global()  # what configure_train records
    small = {k: v + 0.01 for k, v in GLOBAL.items()}  # norm 0.01 * sqrt(39) < 1
    big = _with("fc.bias", np.array([300.0, 400.0, 0.0], np.float32))  # norm ~500
    arrays, _ = strategy.aggregate_train(1, [_reply(small), _reply(big)])
    out = {k: arrays[k].numpy() for k in GLOBAL}
    # the big update was scaled to norm 1: mean of the two clipped updates
    big_update = np.concatenate([(big[k] - GLOBAL[k]).ravel() for k in GLOBAL])
    scale = 1.0 / np.linalg.norm(big_update)
    for k in GLOBAL:
        expected = (small[k] - GLOBAL[k] + (big[k] - GLOBAL[k]) * scale) / 2
        assert np.allclose(out[k], expected, atol=1e-6)


def test_fault_plan_parses_and_refuses_bad_specs():
    plan = FaultPlan.parse("nan:1,signflip:2", num_clients=5)
    assert plan.faults == {4: "nan", 3: "signflip", 2: "signflip"}
    for spec, message in [
        ("boom:1", "unknown fault 'boom'"),
        ("nan:x", "needs a whole count"),
        ("nan:0", "count >= 1"),
        ("nan:6", "more faulty clients than --clients 5"),
    ]:
        with pytest.raises(ConfigError, match=message):
            FaultPlan.parse(spec, num_clients=5)


@pytest.mark.slow
def test_nan_wrong_shape_and_huge_updates_are_rejected_and_the_model_still_learns(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            FEDPRIV_SIM, "--out", str(out), "--clients", "6", "--rounds", "4",
            "--local-epochs", "1", "--faults", "nan:1,shape:1,huge:1",
            "--max-update-norm", "100",
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["trained"] for m in metrics] == [3] * 4
    assert [m["rejected"] for m in metrics] == [3] * 4
    for m in metrics:  # each rejection reported with the client and the reason
        reasons = sorted(f.split("update rejected: ")[1] for f in m["failures"])
        assert "(client 3)" in " ".join(m["failures"])
        assert reasons[0].startswith("tensor 'features.0.0.weight' has 144 non-finite")
        assert reasons[1].startswith("tensor 'features.0.0.weight' has shape (15, 1, 3, 3)")
        assert "exceeds the bound 100" in reasons[2]
    accuracy = [m["test_accuracy"] for m in metrics]
    assert accuracy[-1] > accuracy[0] + 0.1  # learns from the three honest clients
    assert "3 trained, 3 rejected" in proc.stderr
    ledger = [json.loads(line) for line in (out / "privacy_ledger.jsonl").read_text().splitlines()]
    # the faulty clients trained before their replies were corrupted: their spend is on record
    assert {r["partition_id"] for r in ledger if not r["update_accepted"]} == {3, 4, 5}


def test_an_update_of_all_zeros_is_rejected_and_does_not_break_clipping():
    verdict = validate_reply(_reply(dict(GLOBAL)), _global())
    assert not verdict.accepted and "all zeros" in verdict.reason
    strategy = NormBoundedFedAvg(norm_bound=1.0, weighted_by_key="num-examples")
    strategy._current = _global()
    arrays, _ = strategy.aggregate_train(1, [_reply(dict(GLOBAL)), _reply(_good())])
    assert np.allclose(arrays["fc.bias"].numpy(), 0.005)  # the mean of 0 and 0.01


def test_robust_rules_are_sized_for_the_replies_they_get():
    from fedpriv.server.strategies import build_strategy, fit_to_replies
    from fedpriv.shared_models.config import RunConfig

    multikrum = build_strategy(RunConfig(num_clients=10, strategy="multikrum"))
    assert multikrum.num_malicious_nodes == 2 and multikrum.num_nodes_to_select == 8
    fit_to_replies(multikrum, 9)  # one reply rejected: keep 7, never an attacker's 8th
    assert multikrum.num_nodes_to_select == 7
    trimmed = build_strategy(RunConfig(num_clients=10, strategy="fedtrimmedavg"))
    for replies in (10, 9, 7, 5):
        fit_to_replies(trimmed, replies)
        assert int(trimmed.beta * replies) == 2  # scipy's trim_mean cuts int(beta * n) per side


@pytest.mark.slow
def test_a_crashing_and_a_hanging_client_are_reported_and_the_round_goes_on(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            FEDPRIV_SIM, "--out", str(out), "--clients", "4", "--rounds", "1",
            "--local-epochs", "1", "--faults", "crash:1,hang:1", "--round-timeout", "30",
        ],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["trained"] == 2 and row["failed"] == 2, row
    failures = " | ".join(row["failures"])
    assert "simulated client crash" in failures and "no reply within 30s" in failures, failures
    assert row["test_accuracy"] > 0.15  # the two honest clients' round was aggregated
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 1
