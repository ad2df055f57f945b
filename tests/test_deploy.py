"""A real deployment on 127.0.0.1: ``fedpriv-server start`` and ``fedpriv-client start``.

Every process here is real: the coordinator command starts a ``flower-superlink``
with TLS, SuperNode authentication and a state database; each client command
starts a ``flower-supernode`` training with Opacus on its own data folder
(written by ``fedpriv-client export-demo-data``). Nothing is faked.

* ``test_three_node_deployment``: while the coordinator waits for its nodes, four
  nodes that must be refused try to join (no key, an unregistered key, a CA they
  do not trust, plaintext); then three good nodes join and a DP run of three
  rounds completes and learns. The coordinator is then started a second time on
  the same folder: its registrations come from the state database and the same
  node processes, still running, reconnect by themselves and train one more run.
* ``test_a_node_killed_mid_run_does_not_stop_the_federation``: one of three nodes
  is SIGKILLed during the run; later rounds aggregate the other two.
* ``test_too_few_nodes_fails_with_a_clear_message``: no node ever connects.
* ``test_bad_data_folder_exits_before_connecting``: nothing listens; the client
  still fails at once, on its data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared_models.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROUNDS = 3


def _exe(name: str) -> str:
    path = BIN / name
    if not path.exists():  # pragma: no cover - the package is installed with pip install -e
        pytest.skip(f"{name} is not installed beside {sys.executable}")
    return str(path)


class Procs:
    """Processes started by a test, each in its own process group, all killed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "HOME": str(root / "home"),  # no ~/.flwr of the machine's user is touched
        }

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(args),
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait(timeout=30)

    def wait_for(self, name: str, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(name))
            if match:
                return match
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"{name}: no {pattern!r} within {timeout:g}s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log ---\n{self.log(name)[-3000:]}" for name in self.procs)

    def close(self) -> None:
        """SIGTERM first, so that each command stops the Flower processes it started."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deployment folder with 3 node keys, and digits split into 3 client folders."""
    root = tmp_path_factory.mktemp("site")
    for cmd in (
        [_exe("fedpriv-server"), "init", str(root / "dep"), "--nodes", "3"],
        [_exe("fedpriv-client"), "export-demo-data", "--clients", "3", str(root / "data")],
    ):
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    # A second deployment: its CA is one our nodes must not trust, its key one we never registered.
    subprocess.run(
        [_exe("fedpriv-server"), "init", str(root / "other"), "--nodes", "1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return root


def _server(
    procs: Procs, site: Path, name: str, port: int, out: Path, *extra: str, dep: Path | None = None
) -> None:
    procs.start(
        name,
        _exe("fedpriv-server"),
        "start",
        str(dep or site / "dep"),
        "--test-data",
        str(site / "data" / "server-test"),
        "--port",
        str(port),
        "--out",
        str(out),
        "--target-epsilon",
        "8",
        *extra,
    )


def _node(procs: Procs, site: Path, name: str, port: int, k: int, *override: str) -> None:
    args = {
        "--server": f"127.0.0.1:{port}",
        "--data": str(site / "data" / f"client-{k - 1}"),
        "--ca": str(site / "dep" / "ca.crt"),
        "--key": str(site / "dep" / "nodes" / f"node-{k}.key"),
        "--flwr-home": str(procs.root / f"flwr-{name}"),
        "--device": "cpu",
    }
    extra: list[str] = []
    for item in override:
        flag, _, value = item.partition("=")
        if value:
            args[flag] = value
        elif flag.startswith("no"):
            args.pop(flag[2:], None)
        else:
            extra.append(flag)
    procs.start(
        name, _exe("fedpriv-client"), "start", *[x for kv in args.items() for x in kv], *extra
    )


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _finish(procs: Procs, name: str, timeout: float) -> int:
    try:
        return procs.procs[name].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not finish in {timeout:g}s\n{procs.logs()}")


def test_three_node_deployment(procs: Procs, site: Path, tmp_path: Path) -> None:
    port = free_port()
    run1 = tmp_path / "run1"
    _server(procs, site, "server", port, run1, "--nodes", "3", "--rounds", str(ROUNDS))
    procs.wait_for("server", r"run folder: ", timeout=180)  # the ServerApp waits for 3 nodes
    assert "registered node-3" in procs.log("server")

    # -- refusals: each of these nodes must exit non-zero without joining
    # fedpriv-client will not start without a key; Flower's own SuperNode shows the server side.
    procs.start(
        "no-key",
        _exe("flower-supernode"),
        "--superlink",
        f"127.0.0.1:{port}",
        "--root-certificates",
        str(site / "dep" / "ca.crt"),
        "--port",
        str(free_port()),
    )
    assert _finish(procs, "no-key", timeout=120) == 1, procs.logs()
    assert "All SuperNodes must be registered" in procs.log("no-key"), procs.log("no-key")
    refused = {
        "unregistered-key": [f"--key={site / 'other' / 'nodes' / 'node-1.key'}"],
        "untrusted-ca": [f"--ca={site / 'other' / 'ca.crt'}"],
        # A plaintext client gets no answer and retries; --max-wait makes it give up.
        "plaintext": ["no--key", "no--ca", "--insecure", "--max-wait=15"],
    }
    for name, override in refused.items():
        _node(procs, site, name, port, 1, *override)
    reasons = {}
    for name in refused:
        code = _finish(procs, name, timeout=120)
        assert code == 1, f"{name} exited {code}\n{procs.logs()}"
        last = procs.log(name).strip().splitlines()[-1]
        assert last.startswith("fedpriv-client: error:"), last
        reasons[name] = last
    assert "Failed to activate SuperNode" in reasons["unregistered-key"]
    assert "CERTIFICATE_VERIFY_FAILED" in reasons["untrusted-ca"]
    assert "Server disconnected" in reasons["plaintext"] or "305" in reasons["plaintext"]
    assert "round 1/" not in procs.log("server")  # no refused node took part in anything

    # -- three good nodes: the run completes and learns
    for k in (1, 2, 3):
        _node(procs, site, f"node-{k}", port, k)
    code = _finish(procs, "server", timeout=900)
    out = procs.log("server")
    assert code == 0, procs.logs()
    assert re.search(rf"run \d+ completed: {ROUNDS} round\(s\)", out), out
    rows = _metrics(run1)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["trained"] == 3 and r["failed"] == 0 for r in rows), rows
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.05, rows
    assert rows[-1]["test_accuracy"] > 0.5, rows
    eps = [r["epsilon_max"] for r in rows]
    assert eps == sorted(eps) and 0 < eps[-1] <= 8.0, eps  # cumulative, within budget
    ledger = [json.loads(x) for x in (run1 / "privacy_ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 3 * ROUNDS
    summary = json.loads((run1 / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS and not summary["failed"]
    assert (run1 / "model.safetensors").stat().st_size > 0
    for k in (1, 2, 3):
        assert procs.procs[f"node-{k}"].poll() is None, f"node-{k} exited\n{procs.logs()}"

    # -- restart the coordinator: registrations persist, the running nodes reconnect
    run2 = tmp_path / "run2"
    _server(procs, site, "server-again", port, run2, "--nodes", "3", "--rounds", "1")
    code = _finish(procs, "server-again", timeout=600)
    again = procs.log("server-again")
    assert code == 0, procs.logs()
    assert again.count("is registered already") == 3, again
    assert _metrics(run2)[0]["trained"] == 3


def test_a_node_killed_mid_run_does_not_stop_the_federation(
    procs: Procs, site: Path, tmp_path: Path
) -> None:
    port = free_port()
    run = tmp_path / "run"
    # A coordinator of its own: a fresh state database, no node still "online" from another test.
    dep = tmp_path / "dep"
    shutil.copytree(
        site / "dep", dep, ignore=shutil.ignore_patterns("state.db*", "logs", "flwr-home")
    )
    _server(
        procs, site, "server", port, run,
        "--nodes", "3", "--min-nodes", "2", "--rounds", "3", "--round-timeout", "180", dep=dep,
    )  # fmt: skip
    procs.wait_for("server", r"run folder: ", timeout=180)
    for k in (1, 2, 3):
        _node(procs, site, f"node-{k}", port, k)
    procs.wait_for("server", r"round 1/3", timeout=600)
    procs.kill("node-3")  # the node and its Flower processes, as if its machine died
    code = _finish(procs, "server", timeout=900)
    assert code == 0, procs.logs()
    rows = _metrics(run)
    assert len(rows) == 3 and rows[0]["trained"] == 3
    assert rows[-1]["trained"] == 2, rows
    failures = [f for r in rows for f in r["failures"]]
    assert rows[1]["trained"] + rows[2]["trained"] <= 5
    assert all("node" in f for f in failures), failures
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"], rows


def test_too_few_nodes_fails_with_a_clear_message(procs: Procs, site: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _server(
        procs, site, "server", free_port(), run,
        "--nodes", "2", "--rounds", "2", "--round-timeout", "5",
    )  # fmt: skip
    code = _finish(procs, "server", timeout=300)
    last = procs.log("server").strip().splitlines()[-1]
    assert code == 1, procs.logs()
    assert last.startswith("fedpriv-server: error: run ") and "ended with status" in last, last
    assert "0 node(s) connected after waiting 5s" in last, last
    summary = json.loads((run / "summary.json").read_text())  # saved before failing
    assert summary["failed"] is True and summary["rounds_completed"] == 0


def test_bad_data_folder_exits_before_connecting(procs: Procs, site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "fedpriv-data.json").write_text("{not json")
    started = time.monotonic()
    _node(procs, site, "bad-data", free_port(), 1, f"--data={bad}")
    code = _finish(procs, "bad-data", timeout=120)
    lines = procs.log("bad-data").strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("fedpriv-client: error:"), lines
    assert "fedpriv-data.json" in lines[0]
    assert time.monotonic() - started < 60
