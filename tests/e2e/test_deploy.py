"""A real deployment on 127.0.0.1: ``fedpriv-server start`` and ``fedpriv-client start``.

Every process here is real: the coordinator command starts a ``flower-superlink``
with TLS, SuperNode authentication and a state database; each client command
starts a ``flower-supernode`` training with Opacus on its own data folder
(written by ``fedpriv-sim export-demo-data``). Nothing is faked.

* ``test_three_node_deployment``: while the coordinator waits for its nodes, four
  nodes that must be refused try to join (no key, an unregistered key, a CA they
  do not trust, plaintext); then three good nodes join a DP run of three rounds.
  In round 2 every coordinator process (the command, the SuperLink, the
  ServerApp) is SIGKILLed; ``fedpriv-server start --resume`` on the same folder
  (its registrations come from the state database) continues the run from its
  last round checkpoint with the node processes that kept running: the same
  round numbers, no round redone, the nodes' privacy ledgers carried on, and the
  model learns.
* ``test_a_node_killed_mid_run_rejoins_with_its_privacy_ledger``: one of three
  nodes is SIGKILLed after round 1; round 2 aggregates the other two; the node is
  restarted on the same folder and key and trains round 3, its cumulative epsilon
  going on from the ledger it saved before it was killed.
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

from fedpriv.client.ledger_store import read_ledger
from fedpriv.shared_models.plumbing.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROUNDS = 3
DELTA = 1e-5  # fedpriv-server start's default


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
        [_exe("fedpriv-sim"), "export-demo-data", "--clients", "3", str(root / "data")],
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
    procs: Procs,
    site: Path,
    name: str,
    port: int,
    out: Path,
    *extra: str,
    dep: Path | None = None,
    target: bool = True,
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
        *(["--target-epsilon", "8"] if target else []),
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


def _wait_in_file(folder: Path, pattern: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in f.read_text(errors="replace") for f in folder.glob(pattern)):
            return
        time.sleep(0.5)
    pytest.fail(f"no {text!r} in {folder / pattern} within {timeout:g}s")


def test_three_node_deployment(procs: Procs, site: Path, tmp_path: Path) -> None:
    port = free_port()
    run1 = tmp_path / "run1"
    # A fixed noise and no budget: the round the kill interrupts still runs to its end on the
    # nodes, which record its spend (conservative), and it runs again after the resume.
    _server(
        procs, site, "server", port, run1, "--nodes", "3", "--rounds", str(ROUNDS),
        "--noise-multiplier", "1.5", target=False,
    )  # fmt: skip
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

    # -- three good nodes join; in round 2 the whole coordinator is killed
    for k in (1, 2, 3):
        _node(procs, site, f"node-{k}", port, k)
    procs.wait_for("server", r"round 1/", timeout=900)
    victims = _coordinator_pids(site / "dep", procs.procs["server"].pid)
    assert len(victims) >= 3, victims  # fedpriv-server, flower-superlink, the ServerApp, ...
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    procs.procs["server"].wait(timeout=30)
    time.sleep(1)
    assert not [p for p in victims if _alive(p)], victims
    last = int(sorted(p.name for p in (run1 / "checkpoints").iterdir())[-1][6:11])
    assert 1 <= last < ROUNDS and not (run1 / "summary.json").exists()
    before = _metrics(run1)
    spent = [read_ledger(site / "data" / f"client-{k}").epsilon(DELTA, "rdp") for k in range(3)]
    assert all(e > 0 for e in spent), spent

    # -- resume: registrations persist, the running nodes reconnect, the run completes
    procs.start(
        "server-resumed", _exe("fedpriv-server"), "start", str(site / "dep"),
        "--resume", str(run1), "--port", str(port),
    )  # fmt: skip
    code = _finish(procs, "server-resumed", timeout=900)
    out = procs.log("server-resumed")
    assert code == 0, procs.logs()
    assert out.count("is registered already") == 3, out
    assert f"round {last + 1} of {ROUNDS} next" in out, out
    assert "round 1/" not in out and f"round {last}/" not in out, out  # nothing redone
    assert re.search(rf"run \d+ completed: {ROUNDS} round\(s\)", out), out
    rows = _metrics(run1)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert rows[:last] == before[:last]
    assert all(r["trained"] == 3 and r["failed"] == 0 for r in rows), rows
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.05, rows
    assert rows[-1]["test_accuracy"] > 0.5, rows
    summary = json.loads((run1 / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS and summary["resumed_after_round"] == last
    assert not summary["failed"] and (run1 / "model.safetensors").stat().st_size > 0
    # privacy carried over: every node's cumulative epsilon only grew (in the coordinator's
    # ledger and in the node's own file, which also holds the round the kill interrupted)
    ledger = [json.loads(x) for x in (run1 / "privacy_ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 3 * ROUNDS
    by_node: dict[int, list[float]] = {}
    for row in ledger:
        by_node.setdefault(row["partition_id"], []).append(row["epsilon"])
    assert all(e == sorted(e) and len(set(e)) == ROUNDS for e in by_node.values()), by_node
    files = [read_ledger(site / "data" / f"client-{k}") for k in range(3)]
    for k, f in enumerate(files):
        print(
            f"node-{k + 1}: ε {spent[k]:.3f} at the kill, {f.epsilon(DELTA, 'rdp'):.3f} at the end"
        )
        assert f.epsilon(DELTA, "rdp") > spent[k]
        assert len({s.run_id for s in f.spends}) == 2  # the killed run's and the resumed one's
    # The file holds at least what the node last reported: the interrupted round's spend may
    # land in it late (that round's training outlives the coordinator), never be lost.
    finals = sorted(r["epsilon"] for r in ledger if r["round"] == ROUNDS)
    in_files = sorted(f.epsilon(DELTA, "rdp") for f in files)
    assert all(f >= r - 1e-9 for f, r in zip(in_files, finals, strict=True)), (in_files, finals)
    for k in (1, 2, 3):
        assert procs.procs[f"node-{k}"].poll() is None, f"node-{k} exited\n{procs.logs()}"


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in (Path(f"/proc/{pid}") / "status").read_text().lower()
    except OSError:
        return False


def test_a_node_killed_mid_run_rejoins_with_its_privacy_ledger(
    procs: Procs, site: Path, tmp_path: Path
) -> None:
    """SIGKILL a node after round 1, restart it on the same folder and key: it trains again,
    and its epsilon goes on from the ledger in its data folder instead of starting at zero."""
    port = free_port()
    run = tmp_path / "run"
    # A coordinator of its own: a fresh state database, no node still "online" from another test.
    dep = tmp_path / "dep"
    shutil.copytree(
        site / "dep", dep, ignore=shutil.ignore_patterns("state.db*", "logs", "flwr-home")
    )
    # Data folders of its own: ledgers without the spends of other tests.
    data = tmp_path / "data"
    shutil.copytree(site / "data", data, ignore=shutil.ignore_patterns("privacy-ledger.json"))
    folder3 = data / "client-2"
    # --min-nodes 3: round 2 trains without the killed node, then the run waits for it
    _server(
        procs, site, "server", port, run,
        "--nodes", "3", "--min-nodes", "3", "--rounds", "3", "--round-timeout", "180", dep=dep,
    )  # fmt: skip
    node3 = int(procs.wait_for("server", r"registered node-3 \S+ as node (\d+)", 180).group(1))
    procs.wait_for("server", r"run folder: ", timeout=180)
    for k in (1, 2, 3):
        _node(procs, site, f"node-{k}", port, k, f"--data={data / f'client-{k - 1}'}")
    procs.wait_for("server", r"round 1/3", timeout=600)
    procs.kill("node-3")  # the node and its Flower processes, as if its machine died
    killed = read_ledger(folder3)
    eps_killed = killed.epsilon(DELTA, "rdp")
    assert [s.round for s in killed.spends] == [1] and eps_killed > 0, killed
    # Flower's SuperLink lets a node with the same key in again only once it has missed two
    # heartbeats (about 60 s), which is also when round 2 gets its "node unavailable" reply;
    # then Flower's sampling for round 2's evaluation waits for a third node.
    _wait_in_file(dep / "logs", "run-*.log", "Waiting for nodes to connect: 2 connected", 600)
    _node(procs, site, "node-3-again", port, 3, f"--data={folder3}")  # same folder, same key
    code = _finish(procs, "server", timeout=900)
    assert code == 0, procs.logs()
    rows = _metrics(run)
    assert [r["trained"] for r in rows] == [3, 2, 3], rows
    assert rows[1]["failed"] == 1 and "node" in rows[1]["failures"][0], rows
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"], rows

    # node-3 in the coordinator's ledger: it trained again after the restart, and its
    # cumulative epsilon went on from the saved one (never down, strictly up)
    ledger_rows = [json.loads(x) for x in (run / "privacy_ledger.jsonl").read_text().splitlines()]
    mine = [(r["round"], r["epsilon"]) for r in ledger_rows if r["partition_id"] == node3 % 2**31]
    print(f"node-3 epsilon before the kill {eps_killed:.3f}; per round {mine}")
    assert [r for r, _ in mine] == [1, 3], f"node-3 did not rejoin for round 3\n{procs.logs()}"
    assert mine[0][1] == pytest.approx(eps_killed)
    assert mine[1][1] > eps_killed  # went on from the saved spend, not from zero
    # the node's own file agrees: every round it reported, all in this run, with one noise
    final = read_ledger(folder3)
    run_id = int(procs.wait_for("server", r"run (\d+) completed", timeout=5).group(1))
    recorded = [s.round for s in final.spends]
    print(f"node-3 ledger file: rounds {recorded}, ε {final.epsilon(DELTA, 'rdp'):.3f}")
    assert {s.run_id for s in final.spends} == {run_id} and set(final.run_noise) == {run_id}
    assert final.run_noise == killed.run_noise  # the restarted node kept the run's noise
    # (a round it trained whose reply never counted would be in the file too: conservative)
    assert {1, 3} <= set(recorded) and final.epsilon(DELTA, "rdp") >= mine[1][1] - 1e-9


def _coordinator_pids(dep: Path, root_pid: int) -> list[int]:
    """The coordinator's processes: the command, its SuperLink (found by its database) and
    everything they started (the ServerApp, ``flwr run``)."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdlines[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    roots = {root_pid} | {
        pid for pid, cmd in cmdlines.items() if "flower-superlink" in cmd and str(dep) in cmd
    }
    found = set(roots)
    while True:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            return sorted(found)
        found |= more


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
