"""A node's durable privacy ledger (``fedpriv/client/ledger_store.py``) and the ClientApp on it.

The ledger file in a data folder holds every DP-SGD spend of that data, over
rounds, runs and restarts; its epsilon is checked against Google's
``dp_accounting``, its writes against failures, its refusals against corrupt
files that must stay untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from support.google_dp import dpsgd_epsilon

from fedpriv.client.app import NODE_PRIVACY_BUDGET
from fedpriv.client.app import app as client_app
from fedpriv.client.ledger_store import (
    LEDGER_FILE,
    FileStore,
    LedgerError,
    ledger_path,
    locked,
    read_ledger,
    set_node_budget,
    write_ledger,
)
from fedpriv.shared_models.accounting import compute_epsilon, plan_round
from fedpriv.shared_models.config import DPConfig, RunConfig
from fedpriv.shared_models.data_folder import write_local_data
from fedpriv.shared_models.data_format import DataMeta
from fedpriv.shared_models.errors import ConfigError, PrivacyBudgetError
from fedpriv.shared_models.ledger import PrivacyLedger, check_round
from fedpriv.shared_models.messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DECLINED_BUDGET,
    LEDGER_UNUSABLE,
    TrainReport,
)
from fedpriv.shared_models.registry import ModelConfig, build_model

PLAN = plan_round(40, 8, 1)  # q = 0.2, 5 steps a round
DELTA = 1e-5


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A real client data folder: 40 training examples, 10 held out."""
    rng = np.random.default_rng(0)
    meta = DataMeta(task="image", dataset="digits", num_classes=10, in_channels=1, image_size=8)
    x = rng.random((50, 1, 8, 8), dtype=np.float32)
    y = np.arange(50, dtype=np.int64) % 10
    return write_local_data(tmp_path / "site", x[:40], y[:40], x[40:], y[40:], meta)


def _spend(ledger: PrivacyLedger, run_id: int, rnd: int, sigma: float = 1.1) -> None:
    ledger.record(
        run_id=run_id,
        server_round=rnd,
        noise_multiplier=sigma,
        sample_rate=PLAN.sample_rate,
        steps=PLAN.steps,
    )


def _google_epsilon(history: list[tuple[float, float, int]]) -> float:
    return dpsgd_epsilon(history, DELTA, "rdp")


# ------------------------------------------------------------ the file


def test_round_trip_through_the_file(folder: Path) -> None:
    ledger = PrivacyLedger(node_budget=6.0)
    _spend(ledger, 11, 1)
    _spend(ledger, 11, 2)
    _spend(ledger, 12, 1, sigma=1.4)
    write_ledger(folder, ledger)
    again = read_ledger(folder)
    assert again == ledger
    assert again.run_noise == {11: 1.1, 12: 1.4}
    on_disk = json.loads(ledger_path(folder).read_text())
    assert on_disk["format"] == "fedpriv-privacy-ledger" and on_disk["version"] == 1
    assert [s["round"] for s in on_disk["spends"]] == [1, 2, 1]
    assert PrivacyLedger.from_state_dict(ledger.state_dict()) == ledger
    # nothing but the ledger was added to the folder (no temporary files left)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["fedpriv-data.json", "train.npz", "val.npz", LEDGER_FILE]
    )


def test_a_folder_without_a_ledger_has_spent_nothing(folder: Path) -> None:
    ledger = read_ledger(folder)
    assert ledger.spends == [] and ledger.node_budget is None
    assert ledger.epsilon(DELTA, "rdp") == 0.0
    assert not ledger_path(folder).exists()  # reading creates nothing


def test_a_failed_write_leaves_the_old_file_whole(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = PrivacyLedger()
    _spend(ledger, 1, 1)
    write_ledger(folder, ledger)
    before = ledger_path(folder).read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    _spend(ledger, 1, 2)
    with pytest.raises(LedgerError, match="cannot save privacy ledger .*No space left"):
        write_ledger(folder, ledger)
    assert ledger_path(folder).read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


CORRUPT = {
    "truncated": b'{"format": "fedpriv-privacy-ledger", "version": 1, "spe',
    "not utf-8": b"\xff\xfe\x00garbage",
    "foreign": json.dumps({"format": "something-else", "version": 1}).encode(),
    "newer version": json.dumps(
        {"format": "fedpriv-privacy-ledger", "version": 2, "spends": []}
    ).encode(),
    "negative steps": json.dumps(
        {
            "format": "fedpriv-privacy-ledger",
            "version": 1,
            "node_budget": None,
            "runs": {},
            "spends": [
                {
                    "run_id": 1,
                    "round": 1,
                    "noise_multiplier": 1.0,
                    "sample_rate": 0.1,
                    "steps": -3,
                    "time": "t",
                }
            ],
        }
    ).encode(),  # fmt: skip
    "a list": b"[]",
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_ledger_is_refused_and_left_byte_identical(folder: Path, content: bytes) -> None:
    ledger_path(folder).write_bytes(content)
    with pytest.raises(LedgerError) as info:
        read_ledger(folder)
    message = str(info.value)
    assert "\n" not in message and str(ledger_path(folder)) in message
    assert "never reset" in message and "restore it from a backup" in message
    with pytest.raises(LedgerError):
        set_node_budget(folder, 3.0)  # not overwritten either
    assert ledger_path(folder).read_bytes() == content


# ------------------------------------------------------------ composition and budgets


def test_spends_of_two_runs_compose_like_one_history() -> None:
    ledger = PrivacyLedger()
    _spend(ledger, 101, 1, sigma=1.1)
    _spend(ledger, 101, 2, sigma=1.1)
    _spend(ledger, 202, 1, sigma=0.9)
    _spend(ledger, 202, 2, sigma=0.9)
    _spend(ledger, 101, 3, sigma=1.1)  # runs may interleave: order does not matter
    q, n = PLAN.sample_rate, PLAN.steps
    concatenated = [(1.1, q, 2 * n), (0.9, q, 2 * n), (1.1, q, n)]
    lifetime = ledger.epsilon(DELTA, "rdp")
    assert lifetime == pytest.approx(compute_epsilon(concatenated, DELTA, "rdp"))
    assert lifetime == pytest.approx(_google_epsilon(concatenated), rel=0.01)
    run_a, run_b = ledger.epsilon(DELTA, "rdp", 101), ledger.epsilon(DELTA, "rdp", 202)
    assert run_a == pytest.approx(_google_epsilon([(1.1, q, 3 * n)]), rel=0.01)
    assert max(run_a, run_b) < lifetime < run_a + run_b  # composes, better than adding
    # mechanism-level: any delta and accountant can be asked
    assert ledger.epsilon(1e-6, "rdp") > lifetime
    assert ledger.epsilon(DELTA, "prv") == pytest.approx(
        compute_epsilon(concatenated, DELTA, "prv"), rel=1e-6
    )
    assert [(r.run_id, r.rounds, r.steps) for r in ledger.runs()] == [
        (101, (1, 2, 3), 3 * n),
        (202, (1, 2), 2 * n),
    ]


def test_a_new_process_reads_what_the_last_one_saved(folder: Path) -> None:
    store = FileStore(folder)
    with store.lock():
        first = store.load()
        _spend(first, 7, 1, sigma=1.234)
        store.save(first)
    # a new process: everything it knows comes from the file
    again = FileStore(folder).load()
    assert again.run_noise == {7: 1.234}
    assert again.epsilon(DELTA, "rdp") == pytest.approx(first.epsilon(DELTA, "rdp"))
    assert 8 not in again.run_noise  # a new run picks its own noise, but inherits the spend


def test_the_lock_makes_a_second_round_on_the_same_folder_wait(folder: Path) -> None:
    import threading

    order: list[str] = []
    with locked(folder):
        waiter = threading.Thread(target=lambda: (locked(folder).__enter__(), order.append("b")))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and order == []  # held: the other round waits
        order.append("a")
    waiter.join(timeout=10)
    assert order == ["a", "b"]


def test_a_second_run_is_declined_when_the_lifetime_spend_reaches_its_target() -> None:
    ledger = PrivacyLedger()
    for rnd in (1, 2, 3):
        _spend(ledger, 1, rnd)
    spent = ledger.epsilon(DELTA, "rdp")
    one_more = ledger.epsilon_after(1.1, PLAN, DELTA, "rdp")
    # run 2's own target would allow one round by itself, but not on top of run 1
    alone = compute_epsilon([(1.1, PLAN.sample_rate, PLAN.steps)], DELTA, "rdp")
    target = (spent + one_more) / 2
    assert alone < target
    with pytest.raises(PrivacyBudgetError) as info:
        check_round(
            ledger, noise_multiplier=1.1, plan=PLAN, delta=DELTA, accountant="rdp",
            run_budget=target,
        )  # fmt: skip
    message = str(info.value)
    assert message.startswith("declining round: cumulative epsilon over all runs")
    assert "this run's budget" in message and f"{one_more:.3f}" in message
    assert f"spent so far {spent:.3f}" in message
    assert len(ledger.spends) == 3  # declining spent nothing
    bigger = one_more * 1.01
    assert check_round(
        ledger, noise_multiplier=1.1, plan=PLAN, delta=DELTA, accountant="rdp",
        run_budget=bigger,
    ) == pytest.approx(one_more)  # fmt: skip


def test_the_nodes_own_cap_wins_when_lower_than_the_runs_target() -> None:
    ledger = PrivacyLedger()
    _spend(ledger, 1, 1)
    one_more = ledger.epsilon_after(1.1, PLAN, DELTA, "rdp")

    def check(run_budget: float | None, node_budget: float | None) -> float:
        ledger.node_budget = node_budget
        return check_round(
            ledger, noise_multiplier=1.1, plan=PLAN, delta=DELTA, accountant="rdp",
            run_budget=run_budget,
        )  # fmt: skip

    with pytest.raises(PrivacyBudgetError, match=r"> the node's own budget \(--budget\) "):
        check(100.0, one_more * 0.99)
    # the run's target, when lower, is the one named
    with pytest.raises(PrivacyBudgetError, match="this run's budget"):
        check(one_more * 0.9, one_more * 0.99)
    # a node cap above one more round lets it through, even when the run has no target
    assert check(None, one_more * 1.01) == pytest.approx(one_more)


def test_set_node_budget_is_stored_and_validated(folder: Path) -> None:
    set_node_budget(folder, 3.5)
    assert read_ledger(folder).node_budget == 3.5
    with pytest.raises(ConfigError, match="--budget must be > 0"):
        set_node_budget(folder, -1.0)
    assert read_ledger(folder).node_budget == 3.5


# ------------------------------------------------------------ the ClientApp on a data folder


def _train(folder: Path, run_id: int, rnd: int, cfg: RunConfig, **node_config) -> Message:
    """One train instruction to ``fedpriv.client.app:app`` in a fresh Context (a fresh process)."""
    model = build_model(ModelConfig(name="cnn", num_classes=10, image_size=8))
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(model.state_dict()),
            CONFIG_KEY: ConfigRecord({"server-round": rnd}),
        }
    )
    context = Context(
        run_id=run_id,
        node_id=9,
        node_config={"data-path": str(folder), "device": "cpu", **node_config},
        state=RecordDict(),  # nothing carried over in memory
        run_config=cfg.to_run_config(),
    )
    return client_app(
        Message(content=content, dst_node_id=9, message_type=MessageType.TRAIN), context
    )


def test_the_clientapp_records_to_the_file_and_a_new_process_continues(folder: Path) -> None:
    cfg = RunConfig(rounds=3, batch_size=8, local_epochs=1, dp=DPConfig(target_epsilon=6.0))
    first = _train(folder, 41, 1, cfg)
    assert not first.has_error(), first.error
    saved = read_ledger(folder)
    assert [(s.run_id, s.round) for s in saved.spends] == [(41, 1)]
    r1 = TrainReport.from_content(first.content)
    assert r1.epsilon == pytest.approx(saved.epsilon(DELTA, "rdp"))
    assert saved.run_noise == {41: r1.noise_multiplier}

    second = _train(folder, 41, 2, cfg)  # the node restarted: fresh Context, same folder
    r2 = TrainReport.from_content(second.content)
    assert r2.noise_multiplier == r1.noise_multiplier  # the run's noise, from the file
    assert r2.epsilon > r1.epsilon
    assert r2.epsilon == pytest.approx(read_ledger(folder).epsilon(DELTA, "rdp"))
    assert r2.epsilon == pytest.approx(
        _google_epsilon([(r1.noise_multiplier, r1.sample_rate, r1.steps + r2.steps)]), rel=0.01
    )

    # a node cap below what one more round costs: declined, naming the node's budget,
    # and the file is left byte-identical
    before = ledger_path(folder).read_bytes()
    declined = _train(folder, 41, 3, cfg, **{NODE_PRIVACY_BUDGET: r2.epsilon * 1.001})
    assert declined.has_error() and declined.error.code == DECLINED_BUDGET
    assert "the node's own budget" in declined.error.reason
    assert f"spent so far {r2.epsilon:.3f}" in declined.error.reason
    assert ledger_path(folder).read_bytes() == before

    # another run on the same data starts from the lifetime spend, not from zero: with
    # the cap stored (as fedpriv-client start --budget stores it), a generous run target
    # cannot raise it
    set_node_budget(folder, r2.epsilon * 1.001)
    run2 = _train(folder, 42, 1, dataclasses.replace(cfg, dp=DPConfig(target_epsilon=20.0)))
    assert run2.has_error() and "node's own budget" in run2.error.reason


def test_the_clientapp_refuses_a_corrupt_ledger_and_leaves_it(folder: Path) -> None:
    ledger_path(folder).write_text("{oops")
    cfg = RunConfig(rounds=2, batch_size=8, local_epochs=1, dp=DPConfig(target_epsilon=4.0))
    reply = _train(folder, 5, 1, cfg)
    assert reply.has_error() and reply.error.code == LEDGER_UNUSABLE
    assert reply.error.reason.startswith(f"privacy ledger {ledger_path(folder)} is corrupt")
    assert ledger_path(folder).read_text() == "{oops"
