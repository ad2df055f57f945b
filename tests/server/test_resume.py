"""Round checkpoints and resume: what is saved, what is refused, and a killed run that continues."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedpriv.server.client_dp import ServerSideAdaptiveClipping
from fedpriv.server.round_checkpoint import (
    CheckpointError,
    RoundState,
    list_checkpoints,
    load_latest,
    load_round,
    restore_rng,
    restore_strategy_state,
    rng_state,
    save_round,
    strategy_state,
)

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))
RUN = {"model": "cnn", "rounds": 5}
MODEL = {"family": "cnn", "classes": 10}


def _state(rnd: int, **changes) -> RoundState:
    fields = dict(
        round=rnd,
        arrays=ArrayRecord({"w": Array(np.full((2, 3), rnd, np.float32))}),
        run_config=RUN,
        model_config=MODEL,
        strategy_arrays={"m_t/w": np.ones((2, 3))},
        strategy_scalars={"clipping_norm": 0.5},
        client_ledger={"noise_multiplier": 1.0, "delta": 1e-5, "accountant": "rdp",
                       "budget": None, "releases": rnd},
        latest_epsilon={0: 1.5, 3: 2.5},
        rng=rng_state(),
        metrics_rows=[{"round": r} for r in range(1, rnd + 1)],
        ledger_rows=[{"round": r, "epsilon": r / 2} for r in range(1, rnd + 1)],
    )  # fmt: skip
    return RoundState(**{**fields, **changes})


def test_round_trip_and_only_the_newest_k_are_kept(tmp_path):
    for rnd in range(1, 6):
        save_round(tmp_path, _state(rnd), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "round-00003.safetensors",
        "round-00004.safetensors",
        "round-00005.safetensors",
    ]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    state = load_latest(tmp_path, run_config=RUN, model_config=MODEL)
    assert state.round == 5
    assert np.array_equal(state.arrays["w"].numpy(), np.full((2, 3), 5, np.float32))
    assert state.latest_epsilon == {0: 1.5, 3: 2.5}
    assert state.client_ledger["releases"] == 5
    assert [r["round"] for r in state.metrics_rows] == [1, 2, 3, 4, 5]


def test_strategy_state_survives_fedadam_fedavgm_and_adaptive_clipping():
    adam = FedAdam()
    adam.m_t = {"w": np.arange(3.0)}
    adam.v_t = {"w": np.arange(3.0) ** 2}
    arrays, scalars = strategy_state(adam)
    fresh = FedAdam()
    restore_strategy_state(fresh, arrays, scalars)
    assert np.array_equal(fresh.m_t["w"], adam.m_t["w"])
    assert np.array_equal(fresh.v_t["w"], adam.v_t["w"])

    avgm = FedAvgM(server_momentum=0.9)
    avgm.momentum_vector = [np.ones(2), np.zeros(3)]
    fresh_m = FedAvgM(server_momentum=0.9)
    restore_strategy_state(fresh_m, *strategy_state(avgm))
    assert [v.tolist() for v in fresh_m.momentum_vector] == [[1.0, 1.0], [0.0, 0.0, 0.0]]

    wrapped = ServerSideAdaptiveClipping(FedAdam(), 1.0, 4, clipped_count_stddev=1.0)
    wrapped.clipping_norm = 0.37
    wrapped.strategy.m_t = {"w": np.ones(1)}
    fresh_w = ServerSideAdaptiveClipping(FedAdam(), 1.0, 4, clipped_count_stddev=1.0)
    restore_strategy_state(fresh_w, *strategy_state(wrapped))
    assert fresh_w.clipping_norm == 0.37 and fresh_w.strategy.m_t["w"].tolist() == [1.0]


def test_random_number_states_are_restored():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = json.loads(json.dumps(rng_state()))  # it must survive JSON
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_a_corrupt_checkpoint_is_refused_and_left_as_it_is(tmp_path):
    path = save_round(tmp_path, _state(2), keep=3)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*Move it aside"):
        load_round(path)
    assert path.read_bytes() == bytes(data)
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_latest(tmp_path, run_config=RUN, model_config=MODEL)


def test_a_checkpoint_of_another_run_or_model_is_refused(tmp_path):
    save_round(tmp_path, _state(2), keep=3)
    with pytest.raises(CheckpointError, match="other settings.*rounds: 5 there, 9 here"):
        load_latest(tmp_path, run_config={**RUN, "rounds": 9}, model_config=MODEL)
    with pytest.raises(CheckpointError, match="another model"):
        load_latest(tmp_path, run_config=RUN, model_config={**MODEL, "classes": 3})
    with pytest.raises(CheckpointError, match="no round checkpoints"):
        load_latest(tmp_path / "empty", run_config=RUN, model_config=MODEL)


# -- the command line --


def _sim(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FEDPRIV_SIM, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )


def test_resume_refuses_new_settings_and_missing_folders(tmp_path):
    proc = _sim("--resume", str(tmp_path), "--rounds", "3", timeout=120)
    assert proc.returncode == 1
    assert "--resume continues a run with its own settings: leave out --rounds" in proc.stderr
    proc = _sim("--resume", str(tmp_path / "nowhere"), timeout=120)
    assert proc.returncode == 1 and "is not a run folder to resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_killed_simulation_resumes_without_redoing_rounds_or_resetting_epsilon(tmp_path):
    out = tmp_path / "run"
    log = tmp_path / "first.log"
    with open(log, "w") as fh:
        first = subprocess.Popen(
            # A fixed noise (no budget): a round cut short by the kill, whose clients had
            # already recorded their spend, runs again and spends again, and no budget runs out.
            [FEDPRIV_SIM, "--out", str(out), "--clients", "4", "--rounds", "5",
             "--local-epochs", "1", "--strategy", "fedadam", "--noise-multiplier", "1.2"],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        )  # fmt: skip
    deadline = time.monotonic() + 300
    while "round 2/5" not in log.read_text():
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the whole session: fedpriv-sim and Ray
    first.wait()
    done = [p.name for p in list_checkpoints(out)]
    last_done = int(done[-1][6:11])
    assert 2 <= last_done < 5 and not (out / "summary.json").exists()
    before = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    second = _sim("--resume", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"round {last_done + 1} of 5 next" in second.stderr
    assert "round 1/5" not in second.stderr and f"round {last_done}/5" not in second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 5 and summary["resumed_after_round"] == last_done
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]  # each round exactly once
    # the rounds checkpointed before the kill were not redone: their rows are unchanged
    assert rows[:last_done] == before[:last_done]
    # the privacy ledger carried over: every client's cumulative epsilon keeps growing, in the
    # coordinator's ledger and in the clients' own ledger files
    ledger_files = sorted((out / "node-ledgers").glob("client-*/privacy-ledger.json"))
    assert len(ledger_files) == 4
    for path in ledger_files:
        spends = json.loads(path.read_text())["spends"]
        assert len(spends) >= 5 and len({s["run_id"] for s in spends}) == 2  # two Flower runs
    ledger = [json.loads(line) for line in (out / "privacy_ledger.jsonl").read_text().splitlines()]
    by_client: dict[int, list[float]] = {}
    for row in ledger:
        by_client.setdefault(row["partition_id"], []).append(row["epsilon"])
    assert len(by_client) == 4
    for eps in by_client.values():
        assert len(eps) == 5 and all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


def test_a_corrupt_checkpoint_stops_resume_before_anything_starts(tmp_path, capsys):
    from fedpriv.shared_models.config import RunConfig
    from fedpriv.shared_models.plumbing.atomic import atomic_write_json as write_json_atomic
    from fedpriv.simulations.apps import load_central_data
    from fedpriv.simulations.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = RunConfig(num_clients=4, rounds=5)
    model = load_central_data(cfg).model_config.to_dict()
    write_json_atomic(run / "config.json", {"run": cfg.to_run_config(), "model": model})
    bad = run / "checkpoints" / "round-00002.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    files = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(SystemExit) as info:
        main(["--resume", str(run)])
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert "round-00002.safetensors" in err and "left as it is" in err, err
    assert sorted(p.name for p in run.rglob("*")) == files  # nothing written, nothing started
    assert bad.read_bytes() == b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"
