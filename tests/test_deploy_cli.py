"""Bad input to ``fedpriv-server start`` and ``fedpriv-client start``: one error line,
a non-zero exit, before any Flower process starts; and the loud ``--insecure`` warning.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import server.deploy
from client.cli import main as client_main
from client.local_data import DataMeta, write_local_data, write_test_data
from client.node_ledger import NodeLedger, read_ledger, write_ledger
from server.certs import init_deployment
from server.cli import main as server_main

META = DataMeta(task="image", dataset="digits", num_classes=10, in_channels=1, image_size=8)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    init_deployment(root / "dep", hosts=[], nodes=1, force=False)
    (root / "empty").mkdir()
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    y = np.arange(20, dtype=np.int64) % 10
    write_local_data(root / "client", x, y, x[:5], y[:5], META)
    write_test_data(root / "test", x, y, META)
    (root / "used").mkdir()
    (root / "used" / "keep.txt").write_text("earlier results")
    write_local_data(root / "corrupt", x, y, x[:5], y[:5], META)
    (root / "corrupt" / "privacy-ledger.json").write_text("{truncated")
    return root


@pytest.fixture(autouse=True)
def no_processes(monkeypatch: pytest.MonkeyPatch) -> list:
    """Any call that would start the SuperLink is recorded instead."""
    calls: list = []

    def fake_start(cfg, coordinator, run_dir, on_progress):
        calls.append((cfg, coordinator, run_dir))
        return {
            "flower_run_id": "1",
            "rounds_completed": cfg.rounds,
            "test_accuracy": 0.5,
            "privacy": {"epsilon_max": None, "epsilon_mean": None, "delta": None},
        }

    monkeypatch.setattr(server.deploy, "start_coordinator", fake_start)
    return calls


SERVER_CASES = [
    (
        ["{s}/nowhere", "--test-data", "{s}/test"],
        "does not exist; make it with fedpriv-server init",
    ),
    (["{s}/empty", "--test-data", "{s}/test"], "lacks ca.crt, server.crt, server.key"),
    (["{s}/dep", "--test-data", "{s}/missing"], "data folder {s}/missing does not exist"),
    (["{s}/dep", "--test-data", "{s}/client"], "is a client's data folder"),
    (["{s}/dep", "--test-data", "{s}/test", "--model", "lstm"], "needs a text dataset"),
    (
        ["{s}/dep", "--test-data", "{s}/test", "--out", "{s}/used"],
        "already exists and is not empty",
    ),
    (["{s}/dep", "--test-data", "{s}/test", "--min-nodes", "5"], "min-nodes must be in"),
    (["{s}/dep", "--test-data", "{s}/test", "--port", "0"], "port must be in [1, 65535]"),
    (["{s}/dep", "--test-data", "{s}/test", "--target-epsilon", "-2"], "target epsilon must be"),
    (["{s}/dep", "--test-data", "{s}/test", "--no-dp", "--target-epsilon", "2"], "--no-dp cannot"),
    (["{s}/dep", "--test-data", "{s}/test", "--strategy", "fedprox"], "unknown strategy"),
    (["{s}/dep", "--test-data", "{s}/test", "--init-checkpoint", "{s}/none.st"], "none.st"),
]


@pytest.mark.parametrize(("args", "needle"), SERVER_CASES)
def test_server_start_refuses_bad_input(site, args, needle, capsys, no_processes):
    with pytest.raises(SystemExit) as info:
        server_main(["start", *[a.format(s=site) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert len(err) == 1 and err[0].startswith("fedpriv-server: error:"), err
    assert needle.format(s=site) in err[0], err[0]
    assert no_processes == []  # nothing was started
    assert (site / "used" / "keep.txt").read_text() == "earlier results"


def test_server_start_without_test_data_is_an_error(site, capsys):
    with pytest.raises(SystemExit) as info:
        server_main(["start", str(site / "dep")])
    assert info.value.code == 1  # required unless --resume: checked after parsing
    assert "--test-data is required" in capsys.readouterr().err


def test_insecure_says_so_loudly(site, tmp_path, capsys, no_processes):
    server_main(
        ["start", str(site / "empty"), "--insecure", "--test-data", str(site / "test"),
         "--out", str(tmp_path / "run"), "--nodes", "3", "--min-nodes", "2"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "WARNING: --insecure: no TLS and no node authentication" in captured.err
    ((cfg, coordinator, run_dir),) = no_processes
    assert coordinator.insecure and "--insecure" in coordinator.superlink_args()
    assert cfg.num_clients == 3 and cfg.min_nodes == 2 and cfg.dataset == "digits"
    assert cfg.test_data == str((site / "test").resolve())
    assert "run 1 completed" in captured.out


CLIENT_CASES = [
    (["--data", "{s}/missing"], "data folder {s}/missing does not exist"),
    (["--data", "{s}/test"], "holds the coordinator's test set"),
    (["--data", "{s}/empty"], "fedpriv-data.json"),
    (["--server", "localhost"], "--server must be HOST:PORT"),
    (["--key", "{s}/dep/nodes/node-1.pub"], "not an unencrypted OpenSSH private key"),
    (["--ca", "{s}/dep/nodes/node-1.key"], "not a PEM certificate"),
    (["--ca", "{s}/nope.crt"], "not found"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--max-wait", "-5"], "--max-wait must be >= 0"),
    (["--budget", "-1"], "--budget must be a positive epsilon"),
    (["--data", "{s}/corrupt"], "privacy ledger {s}/corrupt/privacy-ledger.json is corrupt"),
]


@pytest.mark.parametrize(("override", "needle"), CLIENT_CASES)
def test_client_start_refuses_bad_input(site, override, needle, capsys, monkeypatch):
    import client.node

    started = []
    monkeypatch.setattr(client.node, "run_node", lambda *a, **k: started.append(a))
    args = {
        "--server": "127.0.0.1:8000",
        "--data": "{s}/client",
        "--ca": "{s}/dep/ca.crt",
        "--key": "{s}/dep/nodes/node-1.key",
    }
    args.update(dict(zip(override[::2], override[1::2], strict=True)))
    with pytest.raises(SystemExit) as info:
        client_main(["start", *[v.format(s=site) for kv in args.items() for v in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert len(err) == 1 and err[0].startswith("fedpriv-client: error:"), err
    assert needle.format(s=site) in err[0], err[0]
    assert started == []


def test_client_start_stores_the_nodes_budget_and_passes_it_on(site, tmp_path, monkeypatch):
    import client.node

    started: list = []
    monkeypatch.setattr(client.node, "run_node", lambda settings, on_line: started.append(settings))
    data = tmp_path / "client"
    shutil.copytree(site / "client", data)
    client_main(
        ["start", "--server", "127.0.0.1:8000", "--data", str(data), "--budget", "3",
         "--ca", str(site / "dep" / "ca.crt"), "--key", str(site / "dep" / "nodes" / "node-1.key")]
    )  # fmt: skip
    (settings,) = started
    assert settings.budget == 3.0
    args = client.node.node_args(settings)
    assert "privacy-budget=3.0" in args[args.index("--node-config") + 1]
    assert read_ledger(data).node_budget == 3.0


def _spent_folder(site: Path, tmp_path: Path) -> Path:
    data = tmp_path / "spent"
    shutil.copytree(site / "client", data)
    ledger = NodeLedger(node_budget=5.0)
    for run_id, rounds, sigma in ((111, (1, 2, 3), 1.1), (222, (1, 3), 0.9)):
        for rnd in rounds:
            ledger.record(
                run_id=run_id, server_round=rnd, noise_multiplier=sigma, sample_rate=0.25, steps=4
            )
    write_ledger(data, ledger)
    return data


def test_client_budget_shows_lifetime_and_per_run_spend(site, tmp_path, capsys):
    data = _spent_folder(site, tmp_path)
    ledger = read_ledger(data)
    client_main(["budget", "--data", str(data)])
    out = capsys.readouterr().out
    lifetime = ledger.epsilon(1e-5, "rdp")
    assert f"lifetime cumulative ε = {lifetime:.3f} over all 2 run(s)" in out
    assert "example-level, at δ=1e-05, rdp accountant" in out
    assert "node's own budget (--budget): ε = 5 over all runs" in out
    for run_id, summary in ((111, "3 round(s) (rounds 1-3), 12 steps"), (222, "rounds 1, 3")):
        alone = ledger.epsilon(1e-5, "rdp", run_id)
        assert alone < lifetime
        line = next(x for x in out.splitlines() if f"run {run_id}:" in x)
        assert summary in line and f"ε of this run alone = {alone:.3f}" in line, line
    client_main(["budget", "--data", str(data), "--delta", "1e-6", "--accountant", "prv"])
    out = capsys.readouterr().out
    assert f"= {ledger.epsilon(1e-6, 'prv'):.3f} over all 2" in out and "δ=1e-06, prv" in out


def test_client_budget_when_nothing_is_spent(site, capsys):
    client_main(["budget", "--data", str(site / "client")])
    out = capsys.readouterr().out
    assert "no privacy spent yet" in out and "none set" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["budget", "--data", "{s}/missing"], "data folder {s}/missing does not exist"),
        (["budget", "--data", "{s}/corrupt"], "{s}/corrupt/privacy-ledger.json is corrupt"),
        (["budget", "--data", "{s}/client", "--delta", "2"], "--delta must be in (0, 1)"),
        (["budget", "--data", "{s}/client", "--accountant", "gdp"], "unknown accountant"),
        (["check-data", "{s}/corrupt"], "{s}/corrupt/privacy-ledger.json is corrupt"),
    ],
)
def test_client_budget_and_check_data_refuse_in_one_line(site, args, needle, capsys):
    with pytest.raises(SystemExit) as info:
        client_main([a.format(s=site) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert len(err) == 1 and err[0].startswith("fedpriv-client: error:"), err
    assert needle.format(s=site) in err[0], err[0]
    assert (site / "corrupt" / "privacy-ledger.json").read_text() == "{truncated"


def test_check_data_reports_the_ledger(site, tmp_path, capsys):
    client_main(["check-data", str(_spent_folder(site, tmp_path))])
    out = capsys.readouterr().out
    assert "privacy ledger: 5 round(s) in 2 run(s) so far" in out
    assert "node's own budget ε = 5" in out
