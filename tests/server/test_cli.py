"""Bad input to ``fedpriv-server start``: one error line, a non-zero exit, before any
Flower process starts; and the loud ``--insecure`` warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.folders import make_site

from fedpriv.server import deploy as server_deploy
from fedpriv.server.cli import main as server_main


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("site"))


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

    monkeypatch.setattr(server_deploy, "start_coordinator", fake_start)
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
