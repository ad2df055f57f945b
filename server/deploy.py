"""``fedpriv-server start``: a real coordinator on Flower's deployment engine.

It starts a ``flower-superlink`` with TLS, SuperNode authentication and a
state database in the deployment folder (made by ``fedpriv-server init``),
registers the node public keys found there, submits fedpriv's ServerApp with
the run's settings, prints the ServerApp's progress lines, and stops the
SuperLink when the run ends. It returns the run's summary only when Flower
says the run *completed* and the run folder holds its summary: ``flwr run``
itself exits 0 even when the ServerApp failed.

The deployment folder gains::

    state.db        the SuperLink's state (node registrations survive restarts)
    flwr-home/      FLWR_HOME of the `flwr` commands: the connection "fedpriv"
    app/            the app bundle submitted (:mod:`fedpriv.server.bundle`): names only
    logs/           superlink.log, and run-<time>.log (the run's streamed log)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fedpriv.server.app import PROGRESS_PREFIX
from fedpriv.server.bundle import to_toml, write_bundle
from fedpriv.server.certs import Deployment, describe
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import ConfigError, FederationError
from fedpriv.shared_models.plumbing.processes import (
    FlowerProcess,
    flower_env,
    flower_executable,
    last_meaningful,
    wait_for_port,
)

logger = logging.getLogger(__name__)

CONNECTION = "fedpriv"  # the name of the SuperLink connection in flwr-home/config.toml
DATABASE = "state.db"
FLWR_HOME = "flwr-home"
LOGS = "logs"
_RUN_ID = re.compile(r"(?:started run|run_id `?)\s*(\d+)")


@dataclass(frozen=True)
class Coordinator:
    """Where and how the SuperLink listens.

    Args:
        deployment: the folder ``fedpriv-server init`` made.
        host: the address to listen on (``0.0.0.0`` for nodes on other machines).
        port: the one port of every SuperLink API (Fleet, Control, Runtime).
        insecure: plaintext, no node authentication: local experiments only.
        startup_timeout: seconds the SuperLink may take to listen.
    """

    deployment: Path
    host: str = "127.0.0.1"
    port: int = 8000
    insecure: bool = False
    startup_timeout: float = 60.0
    files: Deployment = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port must be in [1, 65535], got {self.port}")
        if not self.deployment.is_dir():
            raise ConfigError(
                f"deployment folder {self.deployment} does not exist; make it with "
                f"fedpriv-server init {self.deployment}"
            )
        files = describe(self.deployment)
        if not self.insecure:
            missing = files.missing_for_superlink()
            if missing:
                raise ConfigError(
                    f"{self.deployment} lacks {', '.join(missing)}: make them with "
                    f"fedpriv-server init {self.deployment} (or pass --insecure for a "
                    "plaintext experiment)"
                )
            if not any(node.public_key for node in files.nodes):
                raise ConfigError(
                    f"{self.deployment}/nodes has no node-K.pub: no node could join; "
                    f"make keys with fedpriv-server init {self.deployment} --nodes N --force"
                )
        object.__setattr__(self, "files", files)

    @property
    def local_address(self) -> str:
        """How processes on this machine reach the SuperLink."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.deployment / FLWR_HOME

    def superlink_args(self) -> list[str]:
        args = [
            flower_executable("flower-superlink"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--database",
            str(self.deployment / DATABASE),
            "--disable-runtime-dependency-installation",
        ]
        if self.insecure:
            return [*args, "--insecure"]
        f = self.files
        return [
            *args,
            "--ssl-ca-certfile",
            str(f.ca_cert),
            "--ssl-certfile",
            str(f.server_cert),
            "--ssl-keyfile",
            str(f.server_key),
            "--enable-supernode-auth",
        ]

    def write_connection(self) -> None:
        """Point the ``flwr`` commands (connection ``fedpriv``) at this SuperLink."""
        self.flwr_home.mkdir(mode=0o700, exist_ok=True)
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f"address = {json.dumps(self.local_address)}",
        ]
        ca = self.files.ca_cert
        if self.insecure or ca is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(ca.resolve()))}")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


ProgressFn = Callable[[str], None]


def start_coordinator(
    cfg: RunConfig, coordinator: Coordinator, run_dir: Path, on_progress: ProgressFn
) -> dict:
    """Start the SuperLink, run the federation ``cfg`` describes, stop the SuperLink.

    ``on_progress`` gets each line worth showing (registrations, the ServerApp's
    per-round lines). Returns the run's summary (``run_dir/summary.json``).

    Raises:
        FederationError: the SuperLink did not start, a key was refused, or the
            run did not complete; the message says which, in one line.
    """
    run_dir = run_dir.resolve()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    logs = coordinator.deployment / LOGS
    logs.mkdir(exist_ok=True)
    env = flower_env(coordinator.flwr_home)
    coordinator.write_connection()
    superlink = FlowerProcess(
        coordinator.superlink_args(), env=env, log_file=logs / "superlink.log"
    )
    try:
        wait_for_port(
            coordinator.local_address.rsplit(":", 1)[0].strip("[]"),
            coordinator.port,
            superlink,
            timeout=coordinator.startup_timeout,
        )
        mode = (
            "INSECURE: plaintext, no node authentication"
            if coordinator.insecure
            else ("TLS, SuperNode authentication on")
        )
        on_progress(
            f"SuperLink listening on {coordinator.host}:{coordinator.port} ({mode}); "
            f"state in {coordinator.deployment / DATABASE}"
        )
        if not coordinator.insecure:
            for line in register_nodes(coordinator, env):
                on_progress(line)
        return _run(cfg, coordinator, env, run_dir, logs, on_progress)
    finally:
        superlink.stop()


def register_nodes(coordinator: Coordinator, env: dict) -> list[str]:
    """Register every ``nodes/node-K.pub`` of the deployment (known keys are kept).

    Raises:
        FederationError: the SuperLink refused a key for another reason.
    """
    flwr = flower_executable("flwr")
    done = []
    for node in coordinator.files.nodes:
        if node.public_key is None:
            continue
        out = subprocess.run(
            [flwr, "supernode", "register", str(node.public_key), CONNECTION, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        reply = _json_of(out.stdout)
        message = str(reply.get("error-message", "")) if reply else out.stdout + out.stderr
        if reply.get("success"):
            node_id = reply.get("node-id", "?")
            done.append(f"registered {node.name} ({node.public_key.name}) as node {node_id}")
        elif "already in use" in message:
            done.append(f"{node.name} ({node.public_key.name}) is registered already")
        else:
            raise FederationError(
                f"the SuperLink refused {node.public_key}: {last_meaningful(message.splitlines())}"
            )
    return done


def _run(
    cfg: RunConfig,
    coordinator: Coordinator,
    env: dict,
    run_dir: Path,
    logs: Path,
    on_progress: ProgressFn,
) -> dict:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    config_file = logs / f"run-{stamp}.toml"
    config_file.write_text(to_toml(cfg.to_run_config()))
    run_id: list[str] = []

    def on_line(line: str) -> None:
        if not run_id and (match := _RUN_ID.search(line)):
            run_id.append(match.group(1))
        if line.startswith(PROGRESS_PREFIX):
            on_progress(line[len(PROGRESS_PREFIX) :])

    flwr = flower_executable("flwr")
    submit = FlowerProcess(
        [
            flwr,
            "run",
            str(write_bundle(coordinator.deployment)),
            CONNECTION,
            "--run-config",
            str(config_file),
            "--stream",
        ],
        env=env,
        log_file=logs / f"run-{stamp}.log",
        on_line=on_line,
    )
    try:
        code = submit.wait()
    finally:
        submit.stop()
    if not run_id:
        raise FederationError(
            f"flwr run exited with code {code} without starting a run: "
            f"{last_meaningful(submit.tail())} (log: {logs / f'run-{stamp}.log'})"
        )
    status = run_status(run_id[0], env)
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    if status != "finished:completed" or summary is None:
        reason = (summary or {}).get("stopped_early") or last_meaningful(submit.tail(60))
        raise FederationError(
            f"run {run_id[0]} ended with status {status or 'unknown'}: {reason} "
            f"(log: {logs / f'run-{stamp}.log'})"
        )
    if summary["rounds_completed"] == 0 and not summary["stopped_early"]:
        failures = [f for row in _rows(run_dir) for f in row.get("failures", [])]
        raise FederationError(
            f"run {run_id[0]} finished but no node trained in any round: "
            f"{failures[0] if failures else 'no node replied'} (run folder {run_dir})"
        )
    summary["flower_run_id"] = run_id[0]
    return summary


def _rows(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def run_status(run_id: str, env: dict) -> str:
    """Flower's status of a run, e.g. ``finished:completed`` ("" if it cannot be read)."""
    out = subprocess.run(
        [flower_executable("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    reply = _json_of(out.stdout)
    for run in reply.get("runs", []):
        if str(run.get("run-id")) == run_id:
            return str(run.get("status", ""))
    return ""


def _json_of(text: str) -> dict:
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
