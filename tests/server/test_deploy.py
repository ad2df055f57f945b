"""The deployment's parts, each on its own: data sources, settings, checks, processes.

The real processes end to end are in ``test_deploy.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.config import parse_config_args

from fedpriv.client.app import app as client_app
from fedpriv.client.app import load_node_data
from fedpriv.client.node import NodeSettings, check_node, node_args
from fedpriv.server.bundle import to_toml
from fedpriv.server.central_data import CentralData, load_central_data
from fedpriv.server.certs import init_deployment
from fedpriv.server.deploy import Coordinator
from fedpriv.server.federation import run_federation
from fedpriv.server.loop import run_rounds
from fedpriv.shared_models.config import DPConfig, RunConfig
from fedpriv.shared_models.data_folder import write_local_data, write_test_data
from fedpriv.shared_models.data_format import DataMeta
from fedpriv.shared_models.errors import ConfigError, DataError, FederationError
from fedpriv.shared_models.messages import ARRAYS_KEY, CONFIG_KEY, TrainReport
from fedpriv.shared_models.plumbing.processes import FlowerProcess, last_meaningful
from fedpriv.shared_models.registry import ModelConfig, build_model

META = DataMeta(task="image", dataset="digits", num_classes=10, in_channels=1, image_size=8)


@pytest.fixture(autouse=True)
def _task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % 10
    return x, y


@pytest.fixture
def client_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "site", *_arrays(40, 0), *_arrays(10, 1), META)


@pytest.fixture
def test_folder(tmp_path: Path) -> Path:
    return write_test_data(tmp_path / "server-test", *_arrays(30, 2), META)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dep") / "deploy"
    init_deployment(root, hosts=[], nodes=1, force=False)
    return root


# ------------------------------------------------------------ data sources


def _context(node_config: dict) -> Context:
    return Context(
        run_id=1, node_id=2**40 + 5, node_config=node_config, state=RecordDict(), run_config={}
    )


def test_a_node_with_data_path_loads_its_folder(client_folder: Path) -> None:
    cfg = RunConfig()
    data = load_node_data(_context({"data-path": str(client_folder)}), cfg)
    assert len(data.x_train) == 40 and len(data.x_val) == 10
    assert data.partition_id == (2**40 + 5) % 2**31  # the node id, as a report can carry it
    named = load_node_data(_context({"data-path": str(client_folder), "partition-id": 4}), cfg)
    assert named.partition_id == 4


def test_a_node_refuses_the_coordinators_folder(test_folder: Path) -> None:
    with pytest.raises(DataError, match="coordinator's test set"):
        load_node_data(_context({"data-path": str(test_folder)}), RunConfig())


def test_the_flower_clientapp_trains_on_the_data_path(client_folder: Path) -> None:
    """``fedpriv.client.app:app`` (what a deployed SuperNode runs) with a real DP round."""
    model = build_model(ModelConfig(name="cnn", num_classes=10, image_size=8))
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(model.state_dict()),
            CONFIG_KEY: ConfigRecord({"server-round": 1}),
        }
    )
    run_config = RunConfig(rounds=2, dp=DPConfig(target_epsilon=4.0)).to_run_config()
    context = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(client_folder), "device": "cpu"},
        state=RecordDict(),
        run_config=run_config,
    )
    reply = client_app(
        Message(content=content, dst_node_id=9, message_type=MessageType.TRAIN), context
    )
    assert not reply.has_error(), reply.error
    report = TrainReport.from_content(reply.content)
    assert report.num_examples == 40 and report.partition_id == 9
    assert 0 < report.epsilon <= 4.0


def test_the_serverapp_tests_on_the_test_data_folder(
    test_folder: Path, client_folder: Path
) -> None:
    central = load_central_data(RunConfig(test_data=str(test_folder)))
    assert central.x_test.shape == (30, 1, 8, 8)
    assert central.model_config.num_classes == 10
    with pytest.raises(DataError, match="not the coordinator's test set"):
        load_central_data(RunConfig(test_data=str(client_folder)))
    with pytest.raises(ConfigError, match="text dataset"):
        load_central_data(RunConfig(model="lstm", test_data=str(test_folder)))


# ------------------------------------------------------------ too few nodes


class _EmptyGrid:
    """A grid where no node ever connects."""

    def get_node_ids(self) -> list[int]:
        return []


def test_a_round_without_enough_nodes_ends_the_run_as_failed() -> None:
    arrays = ArrayRecord(
        build_model(ModelConfig(name="cnn", num_classes=10, image_size=8)).state_dict()
    )
    from fedpriv.server.strategies import build_strategy

    started = time.monotonic()
    result = run_rounds(
        build_strategy(RunConfig(num_clients=3)),
        _EmptyGrid(),  # type: ignore[arg-type]
        initial_arrays=arrays,
        num_rounds=2,
        timeout=1.0,
        expected_nodes=3,
        min_nodes=2,
    )
    assert time.monotonic() - started < 10
    assert result.failed and result.rounds == []
    assert "0 node(s) connected after waiting 1s" in result.stopped_early
    assert "at least 2 needed" in result.stopped_early


def test_a_failed_federation_saves_its_summary_then_raises(tmp_path: Path) -> None:
    cfg = RunConfig(num_clients=2, rounds=2, round_timeout=1.0)
    x, y = _arrays(20, 3)
    central = CentralData(ModelConfig(name="cnn", num_classes=10, image_size=8), x, y)
    with pytest.raises(FederationError, match="round 1 could not start"):
        run_federation(_EmptyGrid(), cfg, central, tmp_path / "run")  # type: ignore[arg-type]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["failed"] is True and summary["rounds_completed"] == 0
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_min_nodes_must_fit_the_population() -> None:
    assert RunConfig(num_clients=3).min_available_nodes == 3
    assert RunConfig(num_clients=3, min_nodes=2).min_available_nodes == 2
    with pytest.raises(ConfigError, match="min-nodes"):
        RunConfig(num_clients=3, min_nodes=4)
    with pytest.raises(ConfigError, match="min-nodes"):
        RunConfig(num_clients=3, min_nodes=-1)


# ------------------------------------------------------------ coordinator settings


def test_run_settings_survive_the_toml_file_flwr_reads(tmp_path: Path) -> None:
    cfg = RunConfig(
        rounds=3,
        test_data='/data/with space/"quoted"',
        run_dir="/runs/x",
        min_nodes=2,
        num_clients=3,
        dp=DPConfig(target_epsilon=2.5, delta=1e-6, accountant="prv"),
    )
    file = tmp_path / "run.toml"
    file.write_text(to_toml(cfg.to_run_config()))
    parsed = parse_config_args([str(file)])  # exactly what `flwr run --run-config FILE` does
    assert RunConfig.from_run_config(parsed) == cfg
    no_dp = RunConfig(dp=DPConfig(enabled=False, target_epsilon=None))
    file.write_text(to_toml(no_dp.to_run_config()))
    assert RunConfig.from_run_config(parse_config_args([str(file)])) == no_dp


def test_coordinator_is_secure_by_default(deployment: Path) -> None:
    args = Coordinator(deployment, port=9999).superlink_args()
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in args
    assert "--insecure" not in args
    assert args[args.index("--database") + 1] == str(deployment / "state.db")
    insecure = Coordinator(deployment, insecure=True).superlink_args()
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_coordinator_refuses_a_folder_without_certificates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Coordinator(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="lacks ca.crt, server.crt, server.key"):
        Coordinator(tmp_path / "empty")
    Coordinator(tmp_path / "empty", insecure=True)  # plaintext needs no files
    with pytest.raises(ConfigError, match="port"):
        Coordinator(tmp_path / "empty", insecure=True, port=70000)


def test_coordinator_reaches_itself_on_loopback(deployment: Path) -> None:
    assert Coordinator(deployment, host="0.0.0.0", port=8001).local_address == "127.0.0.1:8001"
    assert Coordinator(deployment, host="::", port=8001).local_address == "[::1]:8001"


# ------------------------------------------------------------ node checks


def _node(deployment: Path, data: Path, **kw) -> NodeSettings:
    base = dict(
        server="127.0.0.1:8000",
        data=data,
        ca=deployment / "ca.crt",
        key=deployment / "nodes" / "node-1.key",
        device="cpu",
    )
    return NodeSettings(**{**base, **kw})


def test_a_good_node_passes_its_checks(deployment: Path, client_folder: Path) -> None:
    summary = check_node(_node(deployment, client_folder))
    assert summary.splits[0].examples == 40
    args = node_args(_node(deployment, client_folder, max_wait=30))
    config = args[args.index("--node-config") + 1]
    assert parse_config_args([config]) == {
        "data-path": str(client_folder.resolve()),
        "device": "cpu",
    }
    assert "--root-certificates" in args and "--auth-supernode-private-key" in args
    assert args[args.index("--max-wait-time") + 1] == "30"
    capped = node_args(_node(deployment, client_folder, budget=2.5))
    config = capped[capped.index("--node-config") + 1]
    assert parse_config_args([config])["privacy-budget"] == 2.5  # a float, as the app reads it


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server": "nohostport"}, "--server must be HOST:PORT"),
        ({"server": "host:99999"}, "--server must be HOST:PORT"),
        ({"ca": None}, "--ca CA.crt and --key NODE.key are required"),
        ({"key": None}, "--ca CA.crt and --key NODE.key are required"),
        ({"ca": Path("/nonexistent/ca.crt")}, "not found"),
        ({"key": "PUB"}, "not an unencrypted OpenSSH private key"),
        ({"key": "CACERT"}, "not an unencrypted OpenSSH private key"),
        ({"ca": "KEY"}, "not a PEM certificate"),
        ({"device": "tpu"}, "unknown device"),
        ({"insecure": True}, "--insecure cannot be combined"),
        ({"max_wait": -1.0}, "--max-wait"),
        ({"budget": 0.0}, "--budget must be a positive epsilon"),
        ({"budget": float("inf")}, "--budget must be a positive epsilon"),
    ],
)
def test_node_checks_refuse_bad_settings(
    deployment: Path, client_folder: Path, change: dict, message: str
) -> None:
    paths = {
        "PUB": deployment / "nodes" / "node-1.pub",
        "CACERT": deployment / "ca.crt",
        "KEY": deployment / "nodes" / "node-1.key",
    }
    change = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises(ConfigError, match=message):
        check_node(_node(deployment, client_folder, **change))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU"
)
def test_node_without_gpu_refuses_cuda(deployment: Path, client_folder: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_node(_node(deployment, client_folder, device="cuda"))


def test_node_refuses_the_coordinators_folder(deployment: Path, test_folder: Path) -> None:
    with pytest.raises(DataError, match="coordinator's test set"):
        check_node(_node(deployment, test_folder))


def test_a_corrupt_privacy_ledger_stops_the_node_before_it_connects(
    deployment: Path, client_folder: Path
) -> None:
    ledger = client_folder / "privacy-ledger.json"
    ledger.write_text('{"format": "fedpriv-privacy-ledger", "version": 1}')
    with pytest.raises(DataError, match="privacy-ledger.json is corrupt.*never reset"):
        check_node(_node(deployment, client_folder))
    assert ledger.read_text() == '{"format": "fedpriv-privacy-ledger", "version": 1}'


def test_a_node_budget_is_stored_in_the_ledger(deployment: Path, client_folder: Path) -> None:
    from fedpriv.client.node import open_ledger

    assert open_ledger(_node(deployment, client_folder)).node_budget is None  # nothing written
    assert not (client_folder / "privacy-ledger.json").exists()
    assert open_ledger(_node(deployment, client_folder, budget=3.0)).node_budget == 3.0
    # a later start without --budget keeps it; a new --budget replaces it
    assert open_ledger(_node(deployment, client_folder)).node_budget == 3.0
    assert open_ledger(_node(deployment, client_folder, budget=5.0)).node_budget == 5.0


# ------------------------------------------------------------ processes


def test_last_meaningful_line_of_a_refusal() -> None:
    lines = [
        "\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode",
        "\x1b[91mERROR \x1b[0m:     Exit Code: 305",
        "Failed to initialize the connection to the SuperLink.",
        "[code: 2004] Failed to activate SuperNode.",
        "The SuperNode could not establish a connection to the SuperLink.",
        "INFO:     Shutting down",
    ]
    text = last_meaningful(lines)
    assert text.startswith("ERROR :     Exit Code: 305") or "Exit Code: 305" in text
    assert "Failed to activate SuperNode" in text and "\x1b" not in text
    assert last_meaningful(["all fine", "done"]) == "done"
    assert last_meaningful([]) == "(no output)"


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; sleep 300"
    lines: list[str] = []
    proc = FlowerProcess(["sh", "-c", script], env=os.environ, on_line=lines.append)
    deadline = time.monotonic() + 10
    while not pids.exists() or not pids.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pids.read_text())
    proc.stop(grace=2)
    assert proc.poll() is not None
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(grandchild, 0)


def test_output_reaches_the_callback_and_the_log(tmp_path: Path) -> None:
    lines: list[str] = []
    log = tmp_path / "p.log"
    proc = FlowerProcess(
        [sys.executable, "-c", "print('a'); import sys; print('b', file=sys.stderr)"],
        env=os.environ,
        log_file=log,
        on_line=lines.append,
    )
    assert proc.wait(timeout=30) == 0
    proc.stop()
    assert sorted(lines) == ["a", "b"] and sorted(log.read_text().split()) == ["a", "b"]
    assert proc.tail() == lines


def test_sigterm_becomes_system_exit() -> None:
    from fedpriv.shared_models.plumbing.processes import exit_on_termination

    old = signal.getsignal(signal.SIGTERM)
    try:
        exit_on_termination()
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert info.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_child_dies_with_its_parent_even_by_sigkill(tmp_path: Path) -> None:
    """A SuperLink must not outlive a SIGKILLed fedpriv-server (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "child"
    parent = (
        "import os, sys, time\n"
        "from fedpriv.shared_models.plumbing.processes import FlowerProcess\n"
        "p = FlowerProcess(['sleep', '300'], env=os.environ)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    os.kill(child, 0)  # alive
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a zombie until init reaps it counts as gone once /proc says so
        stat = Path(f"/proc/{child}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break
        assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
        time.sleep(0.1)


def test_a_node_whose_data_does_not_fit_the_global_model_says_so(client_folder: Path) -> None:
    """Coordinator and node disagree on the task (5 vs 10 classes): one clear reason."""
    from fedpriv.shared_models.messages import MessageFormatError

    five = build_model(ModelConfig(name="cnn", num_classes=5, image_size=8))
    content = RecordDict(
        {ARRAYS_KEY: ArrayRecord(five.state_dict()), CONFIG_KEY: ConfigRecord({"server-round": 1})}
    )
    context = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(client_folder), "device": "cpu"},
        state=RecordDict(),
        run_config=RunConfig().to_run_config(),
    )
    msg = Message(content=content, dst_node_id=9, message_type=MessageType.TRAIN)
    with pytest.raises(MessageFormatError, match="does not fit this node's data.*size mismatch"):
        client_app(msg, context)
