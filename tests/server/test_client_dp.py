"""Client-level DP: Flower's wrappers as fedpriv runs them, the federation's accountant,
the planner, and budgets that run out mid-run.

Every epsilon is checked against Google's dp-accounting, computed independently.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedpriv.client.clipping_mod import client_clipping_mod
from fedpriv.server.client_dp import (
    ClientLevelLedger,
    train_config,
    wrap_client_dp,
)
from fedpriv.server.strategies import fit_to_replies
from fedpriv.shared_models.accounting import client_level_epsilon, client_level_noise
from fedpriv.shared_models.config import ClientDPConfig, DPConfig, RunConfig
from fedpriv.shared_models.errors import ConfigError, PrivacyBudgetError
from fedpriv.shared_models.messages import ARRAYS_KEY, CLIENT_CLIP_MODE, CLIENT_WEIGHT, CONFIG_KEY
from fedpriv.simulations.plan import make_plan

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))


def google_gaussian(z: float, releases: int, delta: float, method: str) -> float:
    """Epsilon of ``releases`` Gaussian mechanisms (no sampling) with dp-accounting."""
    accountant = RdpAccountant() if method == "rdp" else PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), releases)
    return accountant.get_epsilon(delta)


def google_dpsgd(z: float, q: float, steps: int, delta: float, method: str) -> float:
    accountant = RdpAccountant() if method == "rdp" else PLDAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


# -- the federation's accountant --


@pytest.mark.parametrize(
    ("z", "releases", "delta"), [(1.0, 1, 1e-5), (0.8, 20, 1e-5), (3.0, 100, 1e-6)]
)
def test_client_level_epsilon_matches_google_rdp(z, releases, delta):
    ours = client_level_epsilon(z, releases, delta=delta, accountant="rdp")
    assert ours == pytest.approx(google_gaussian(z, releases, delta, "rdp"), rel=0.01)


@pytest.mark.parametrize(("z", "releases"), [(1.0, 5), (2.0, 50)])
def test_client_level_epsilon_prv_matches_google_pld(z, releases):
    ours = client_level_epsilon(z, releases, delta=1e-5, accountant="prv")
    assert ours == pytest.approx(google_gaussian(z, releases, 1e-5, "pld"), rel=0.01)


def test_noise_from_budget_round_trips_through_google():
    z = client_level_noise(3.0, 20, delta=1e-5, accountant="rdp")
    theirs = google_gaussian(z, 20, 1e-5, "rdp")
    assert theirs <= 3.0 * 1.01 and theirs >= 3.0 * 0.98  # spends (just under) the budget


def test_ledger_is_cumulative_and_stops_at_the_budget():
    cfg = ClientDPConfig(mode="server-fixed", noise_multiplier=2.0, target_epsilon=3.5)
    ledger = ClientLevelLedger.for_run(cfg, DPConfig(), rounds=10)
    spent = []
    while True:
        try:
            ledger.check_budget()
        except PrivacyBudgetError as err:
            assert "client-level budget ε=3.5 is spent" in str(err)
            break
        ledger.record_release(1)
        spent.append(ledger.epsilon())
    assert len(spent) == 2  # 3.189 after two releases, 4.011 after three
    assert spent == sorted(spent) and spent[-1] <= 3.5
    assert spent[-1] == pytest.approx(google_gaussian(2.0, 2, 1e-5, "rdp"), rel=0.01)
    again = ClientLevelLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert again == ledger


def test_config_refuses_what_the_noise_calibration_does_not_cover():
    on = ClientDPConfig(mode="server-fixed", target_epsilon=3.0)
    with pytest.raises(ConfigError, match="needs --strategy fedavg"):
        RunConfig(strategy="fedmedian", client_dp=on)
    with pytest.raises(ConfigError, match="--freeze"):
        RunConfig(freeze="conv1", client_dp=on)
    with pytest.raises(ConfigError, match="needs --client-epsilon"):
        ClientDPConfig(mode="client-adaptive")
    with pytest.raises(ConfigError, match="unknown client-level DP mode"):
        ClientDPConfig(mode="central")
    # the flat run config (pyproject / flwr run) round-trips, 0.0 meaning "not set"
    cfg = RunConfig(client_dp=on)
    flat = cfg.to_run_config()
    assert flat["client-noise"] == 0.0 and flat["client-epsilon"] == 3.0
    assert RunConfig.from_run_config(flat) == cfg


# -- the wrappers, as the round loop drives them --


@pytest.fixture
def _task_identity():
    """Messages can be made outside a running app once Flower's task identity is set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _reply(update: np.ndarray) -> Message:
    instruction = Message(
        content=RecordDict({CONFIG_KEY: ConfigRecord()}), dst_node_id=5, message_type="train"
    )
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({"w": Array(update)}),
            "metrics": MetricRecord({CLIENT_WEIGHT: 1, "num-examples": 10}),
        }
    )
    return Message(content=content, reply_to=instruction)


def _fedavg() -> FedAvg:
    return FedAvg(weighted_by_key=CLIENT_WEIGHT, arrayrecord_key=ARRAYS_KEY)


@pytest.mark.usefixtures("_task_identity")
def test_server_side_clipping_and_noise_have_the_calibrated_std():
    """Each update is clipped to C; the mean gets N(0, (z C / m)^2) noise per coordinate."""
    dim, clip, z = 200_000, 0.5, 1.3
    cfg = ClientDPConfig(mode="server-fixed", noise_multiplier=z, clipping_norm=clip)
    strategy = wrap_client_dp(_fedavg(), cfg, z, num_clients=10)
    current = np.zeros(dim, dtype=np.float64)
    strategy.current_arrays = ArrayRecord({"w": Array(current)})  # what configure_train records
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=dim) * scale for scale in (0.0001, 1.0, 5.0)]  # tiny, big, huge
    replies = [_reply(u) for u in updates]
    fit_to_replies(strategy, len(replies))  # noise for the 3 clients that replied
    arrays, _ = strategy.aggregate_train(1, replies)
    out = arrays["w"].numpy()
    clipped = [u * min(1.0, clip / np.linalg.norm(u)) for u in updates]
    expected_mean = np.mean(clipped, axis=0)
    noise = out - expected_mean
    assert abs(noise.mean()) < 5 * (z * clip / 3) / math.sqrt(dim)
    assert noise.std() == pytest.approx(z * clip / 3, rel=0.01)


@pytest.mark.usefixtures("_task_identity")
def test_adaptive_clipping_moves_the_norm_towards_the_quantile():
    z = 1.0
    cfg = ClientDPConfig(
        mode="server-adaptive", noise_multiplier=z, clipping_norm=0.01, clip_learning_rate=0.5
    )
    strategy = wrap_client_dp(_fedavg(), cfg, z, num_clients=50)
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(10))})
    rng = np.random.default_rng(1)
    norms = []
    for rnd in range(1, 15):
        replies = [_reply(rng.normal(size=10)) for _ in range(50)]  # norms about 3
        fit_to_replies(strategy, 50)
        strategy.aggregate_train(rnd, replies)
        norms.append(strategy.clipping_norm)
    assert norms[0] < norms[5] < norms[-1]  # grows from 0.01 towards the median norm
    # the update noise is the part of z left after the noisy clipped-count: z_update > z
    assert strategy.noise_multiplier == pytest.approx((z**-2 - (2 * z) ** -2) ** -0.5)


@pytest.mark.usefixtures("_task_identity")
def test_client_side_mod_clips_the_update_before_it_leaves():
    clip = 0.25
    sent = ArrayRecord({"w": Array(np.ones(100))})
    config = train_config(ClientDPConfig(mode="client-fixed", noise_multiplier=1.0))
    assert config[CLIENT_CLIP_MODE] == "fixed"
    config["clipping_norm"] = clip  # what Flower's client-side wrapper adds
    msg = Message(
        content=RecordDict({ARRAYS_KEY: sent, CONFIG_KEY: ConfigRecord(dict(config))}),
        dst_node_id=1,
        message_type="train",
    )
    update = np.linspace(-3, 3, 100)

    def train(m: Message, _: Context) -> Message:
        arrays = ArrayRecord({"w": Array(np.ones(100) + update)})
        return Message(RecordDict({ARRAYS_KEY: arrays}), reply_to=m)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = client_clipping_mod(msg, context, train)
    delta = out.content[ARRAYS_KEY]["w"].numpy() - 1.0
    assert np.linalg.norm(delta) == pytest.approx(clip)
    assert np.allclose(delta / np.linalg.norm(delta), update / np.linalg.norm(update))
    # without client-side clipping the update passes untouched
    plain = Message(
        content=RecordDict({ARRAYS_KEY: sent, CONFIG_KEY: ConfigRecord({})}),
        dst_node_id=1,
        message_type="train",
    )
    untouched = client_clipping_mod(plain, context, train)
    assert np.allclose(untouched.content[ARRAYS_KEY]["w"].numpy() - 1.0, update)


# -- the planner uses the training code; its figures against Google --


def test_planner_figures_match_google():
    plan = make_plan(
        examples=360,
        batch_size=32,
        local_epochs=2,
        rounds=6,
        participation=0.5,
        delta=1e-5,
        accountant="rdp",
        target_epsilon=4.0,
        clients=200,
        client_epsilon=2.0,
    )
    q, steps = plan.sample_rate, plan.steps_per_round
    assert q == 1 / 12 and steps == 24  # ceil(360 / 32) = 12 batches an epoch, 2 epochs
    for row in plan.rows:
        every = google_dpsgd(plan.noise_multiplier, q, steps * row.round, 1e-5, "rdp")
        assert row.epsilon_every_round == pytest.approx(every, rel=0.01)
        taken = math.ceil(0.5 * row.round)
        expected = google_dpsgd(plan.noise_multiplier, q, steps * taken, 1e-5, "rdp")
        assert row.epsilon_expected == pytest.approx(expected, rel=0.01)
        client = google_gaussian(plan.client_noise_multiplier, row.round, 1e-5, "rdp")
        assert row.client_level_epsilon == pytest.approx(client, rel=0.01)
    assert plan.rows[-1].epsilon_every_round <= 4.0 and plan.rows[-1].client_level_epsilon <= 2.0
    assert plan.clients_per_round == 100


def test_planner_command_prints_noise_and_epsilon_per_round():
    proc = subprocess.run(
        [FEDPRIV_SIM, "plan", "--examples", "115", "--rounds", "3", "--noise-multiplier", "1.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "noise multiplier 1.0000" in proc.stdout and "δ=1e-05, RDP" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    plan = make_plan(
        examples=115,
        batch_size=32,
        local_epochs=2,
        rounds=3,
        participation=1.0,
        delta=1e-5,
        accountant="rdp",
        noise_multiplier=1.0,
    )
    assert [float(r[1]) for r in rows] == [round(r.epsilon_every_round, 3) for r in plan.rows]
    bad = subprocess.run(
        [FEDPRIV_SIM, "plan", "--examples", "115", "--target-epsilon", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "--target-epsilon must be > 0" in bad.stderr


# -- end to end: real simulations (Ray, Opacus, digits) --


def _sim(out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    proc = subprocess.run(
        [FEDPRIV_SIM, "--out", str(out), "--clients", "4", "--local-epochs", "1", *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ledger = [json.loads(line) for line in (out / "privacy_ledger.jsonl").read_text().splitlines()]
    assert {"model.safetensors", "accuracy_epsilon.png", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    return proc, summary, ledger


@pytest.mark.slow
def test_client_budgets_run_out_mid_run_and_the_run_ends_cleanly(tmp_path):
    """Noise 1.0: 4.443 after two rounds, 5.111 after three; the budget is 4.8."""
    proc, summary, ledger = _sim(
        tmp_path / "run", "--rounds", "5", "--noise-multiplier", "1.0", "--target-epsilon", "4.8"
    )
    assert summary["rounds_completed"] == 2
    assert "every sampled client declined round 3" in summary["stopped_early"]
    assert not summary["failed"]
    assert ledger and all(r["epsilon"] <= 4.8 for r in ledger)  # nobody spent past its budget
    assert {r["round"] for r in ledger} == {1, 2}
    assert "declined" in proc.stderr


@pytest.mark.slow
def test_both_guarantees_and_the_federation_budget_running_out(tmp_path):
    """Example-level DP-SGD and client-level DP (client-side adaptive clipping) in one run.

    Client-level noise 2.0: ε 3.189 after two releases, 4.011 after three; the federation's
    budget is 3.5, so round 3 is not started and the run ends cleanly with everything saved.
    """
    proc, summary, ledger = _sim(
        tmp_path / "run",
        "--rounds", "5", "--target-epsilon", "6",
        "--client-dp", "client-adaptive", "--client-noise", "2.0", "--client-epsilon", "3.5",
        "--client-clip", "0.05",
    )  # fmt: skip
    assert summary["rounds_completed"] == 2 and not summary["failed"]
    assert "round 3 not started" in summary["stopped_early"]
    assert "client-level budget ε=3.5 is spent" in summary["stopped_early"]
    assert "client-level budget" in proc.stderr
    client_rows = [r for r in ledger if r["guarantee"] == "client-level"]
    assert [r["round"] for r in client_rows] == [1, 2]
    for row in client_rows:  # every federation epsilon, against Google; never past the budget
        theirs = google_gaussian(2.0, row["round"], 1e-5, "rdp")
        assert row["epsilon"] == pytest.approx(theirs, rel=0.01) and row["epsilon"] <= 3.5
        assert row["clients"] == 4 and row["mode"] == "client-adaptive"
    clips = [r["clipping_norm"] for r in client_rows]
    # adaptive: the norm moves with the noisy count of unclipped updates (noised with std 2:
    # with every update clipped it grows with probability 0.84 per round, so only its moving
    # is certain here)
    assert clips[0] == 0.05 and clips[1] != clips[0]
    example_rows = [r for r in ledger if r["guarantee"] == "example-level"]
    assert len(example_rows) == 8 and max(r["epsilon"] for r in example_rows) <= 6.0
    client = summary["privacy"]["client_level"]
    assert client["epsilon"] == pytest.approx(client_rows[-1]["epsilon"])
    assert client["releases"] == 2 and "RDP" in client["accountant"]
    lines = [line for line in proc.stderr.splitlines() if re.match(r"round \d+/5:", line)]
    assert len(lines) == 2
    label = "[client-level, cumulative, δ=1e-05, RDP, no sampling amplification]"
    assert all(label in line for line in lines)
    assert all("[example-level, cumulative, δ=1e-05, RDP]" in line for line in lines)
