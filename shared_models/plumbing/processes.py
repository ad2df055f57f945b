"""How the deployment commands run Flower's own processes.

``fedpriv-server start`` runs ``flower-superlink`` and ``flwr``;
``fedpriv-client start`` runs ``flower-supernode``. Both need the same few
things: find the executable beside this Python, give it a quiet environment,
start it in its own process group (the SuperLink and SuperNode spawn
``flower-superexec`` and app processes of their own), pass its output on line
by line, and stop the whole group.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fedpriv.shared_models.errors import ConfigError, FederationError

logger = logging.getLogger(__name__)

#: Environment every Flower process of fedpriv gets: no telemetry, no update check,
#: and no per-run ``uv sync`` (it would pull a CUDA torch onto a CPU machine).
FLOWER_ENV: dict[str, str] = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_executable(name: str) -> str:
    """The path of a Flower command (``flower-superlink``, ``flwr``, ...).

    Looked up beside this interpreter first (a virtualenv that is not
    activated), then on ``PATH``.

    Raises:
        ConfigError: it is not installed.
    """
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found beside {sys.executable} or on PATH; install flwr")
    return found


def flower_env(flwr_home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict:
    """This process's environment plus :data:`FLOWER_ENV` (and ``FLWR_HOME``)."""
    env = {**os.environ, **FLOWER_ENV, **(extra or {})}
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


LineFn = Callable[[str], None]


class FlowerProcess:
    """A child process in its own process group, its output passed to ``on_line``.

    Args:
        args: the command line.
        env: its environment.
        log_file: every output line is appended here too (optional).
        on_line: called with each output line (without its newline), from a
            reader thread.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log_file: Path | None = None,
        on_line: LineFn | None = None,
        own_group: bool = True,
    ) -> None:
        self.args = list(args)
        self.own_group = own_group
        self._log = log_file.open("a", encoding="utf-8") if log_file is not None else None
        self._on_line = on_line
        self._lines: list[str] = []
        self.proc = subprocess.Popen(
            self.args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group: stop() reaches its children. Without one it shares
            # ours, so whoever stops our group (a terminal's Ctrl-C, a supervisor) stops it too.
            start_new_session=own_group,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self._lines.append(line)
            del self._lines[:-200]  # keep the tail only
            if self._log is not None:
                self._log.write(raw)
                self._log.flush()
            if self._on_line is not None:
                self._on_line(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and its output to be read; return its exit code."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout=5)
        return code

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` output lines."""
        return self._lines[-n:]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process (its group, if it has one), then SIGKILL after ``grace`` s."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not self._alive():
                break
            try:
                if self.own_group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._alive():
                time.sleep(0.1)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass
        self._reader.join(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _alive(self) -> bool:
        if self.proc.poll() is None:
            return True
        return self.own_group and _group_alive(self.proc.pid)

    def __enter__(self) -> FlowerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when we die, even by SIGKILL.

    Without this a SuperLink outlives a killed ``fedpriv-server`` (it is in its own
    process group, out of reach of whoever killed ours).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group reused the id
        return False
    return True


def exit_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` so ``finally`` blocks stop our children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, process: FlowerProcess, *, timeout: float) -> None:
    """Wait until ``process`` accepts TCP connections on ``host:port``.

    Raises:
        FederationError: it exited first (its last output line says why), or it
            did not listen within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    name = Path(process.args[0]).name
    while True:
        if process.poll() is not None:
            raise FederationError(
                f"{name} exited with code {process.poll()} before listening on {host}:{port}: "
                f"{last_meaningful(process.tail())}"
            )
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise FederationError(f"{name} did not listen on {host}:{port} within {timeout:g}s")
        time.sleep(0.2)


def last_meaningful(lines: Sequence[str]) -> str:
    """The most telling line of a Flower process's output: its last error, if any."""
    text = [_plain(line) for line in lines if line.strip()]
    for marker in ("Exit Code", "ERROR", "Error", "error"):
        hits = [i for i, line in enumerate(text) if marker in line]
        if hits:
            i = hits[-1]
            # Flower prints "Exit Code: 305" and then the reason on the next lines.
            if marker == "Exit Code":
                return " ".join(text[i : i + 4])
            return text[i]
    return text[-1] if text else "(no output)"


def _plain(line: str) -> str:
    """Drop ANSI colour codes and surrounding space."""
    out, skip = [], False
    for ch in line:
        if ch == "\x1b":
            skip = True
        elif skip and ch == "m":
            skip = False
        elif not skip:
            out.append(ch)
    return "".join(out).strip()
