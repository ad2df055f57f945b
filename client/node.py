"""``fedpriv-client start``: one client node of a real federation.

Everything that can be checked on this machine is checked before anything
connects: the data folder (format, classes, counts), the CA certificate, the
node's private key and the device. Then it runs a ``flower-supernode`` whose
ClientApp (``fedpriv.client.app:app``) trains on that folder: the folder is passed as
``--node-config 'data-path="..."'`` (and ``privacy-budget=EPS``, the node's own cap
on its lifetime epsilon, with ``--budget``). The folder's privacy ledger
(:mod:`fedpriv.client.node_ledger`) is read up front: a corrupt one stops the node
before it connects. Flower's SuperNode reconnects by itself
when the SuperLink restarts (no retry limit); this module passes its output
on and turns a refusal (exit code 305: unknown key, untrusted certificate) into
one line.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedpriv.client.app import NODE_DATA_PATH, NODE_DEVICE, NODE_PRIVACY_BUDGET
from fedpriv.client.ledger_store import ledger_path, read_ledger, set_node_budget
from fedpriv.shared_models.config import DEVICES
from fedpriv.shared_models.data_folder import DataSummary, check_data
from fedpriv.shared_models.errors import ConfigError, DataError, FederationError
from fedpriv.shared_models.evaluation import resolve_device
from fedpriv.shared_models.ledger import PrivacyLedger
from fedpriv.shared_models.plumbing.processes import (
    FlowerProcess,
    flower_env,
    flower_executable,
    free_port,
    last_meaningful,
)

logger = logging.getLogger(__name__)

#: What Flower's SuperNode says when the SuperLink will not activate its key: not
#: registered, or still online there (a crashed node, until 2 heartbeats of 30 s are missed).
ACTIVATION_REFUSED = "Failed to activate SuperNode"


@dataclass(frozen=True)
class NodeSettings:
    """One node: where the SuperLink is, what it trusts, who it is, what it trains on.

    Args:
        server: the SuperLink as ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6).
        data: this node's data folder (role ``client``).
        ca: the deployment's CA certificate (``ca.crt``); ``None`` with ``insecure``.
        key: this node's private key (``node-K.key``); ``None`` with ``insecure``.
        device: ``auto`` (the GPU when there is one), ``cpu`` or ``cuda``.
        insecure: plaintext, no node key: only against an ``--insecure`` coordinator.
        runtime_port: the SuperNode's local API port (0: a free one).
        flwr_home: the SuperNode's ``FLWR_HOME`` (installed apps); ``None``: Flower's default.
        max_wait: seconds to keep trying to reach the SuperLink before giving up (0: forever).
        budget: the node's own cap on the lifetime cumulative epsilon of its data,
            over all runs (``None``: the cap stored in its ledger, if any). Stored in
            the ledger; the node enforces the lower of it and each run's target.
    """

    server: str
    data: Path
    ca: Path | None = None
    key: Path | None = None
    device: str = "auto"
    insecure: bool = False
    runtime_port: int = 0
    flwr_home: Path | None = None
    max_wait: float = 0.0
    budget: float | None = None


def check_node(settings: NodeSettings) -> DataSummary:
    """Check everything local before connecting; return the data folder's summary.

    Raises:
        DataError: the data folder is invalid or is not a client's.
        ConfigError: a bad address, certificate, key or device.
    """
    _split_address(settings.server)
    if not (0 <= settings.max_wait < float("inf")):
        raise ConfigError(f"--max-wait must be >= 0 seconds, got {settings.max_wait}")
    summary = check_data(settings.data)
    if summary.role != "client":
        raise DataError(
            f"{settings.data} holds the coordinator's test set (role {summary.role!r}), not a "
            "client's data; point --data at a client folder"
        )
    if '"' in str(settings.data.resolve()):
        raise ConfigError(f"the data folder's path may not contain '\"': {settings.data}")
    if settings.budget is not None and not (math.isfinite(settings.budget) and settings.budget > 0):
        raise ConfigError(f"--budget must be a positive epsilon, got {settings.budget}")
    read_ledger(settings.data)  # a corrupt ledger stops the node here
    if not os.access(settings.data, os.W_OK):
        raise ConfigError(
            f"the node keeps its privacy ledger in its data folder, but {settings.data} is not "
            "writable; give this user write access to it"
        )
    if settings.device not in DEVICES:
        raise ConfigError(
            f"unknown device '{settings.device}'; choose one of: {', '.join(DEVICES)}"
        )
    resolve_device(settings.device)  # --device cuda without a GPU fails here
    if settings.insecure:
        if settings.ca is not None or settings.key is not None:
            raise ConfigError("--insecure cannot be combined with --ca/--key")
        return summary
    if settings.ca is None or settings.key is None:
        raise ConfigError(
            "--ca CA.crt and --key NODE.key are required (copy them from the coordinator's "
            "deployment folder); --insecure only for a plaintext experiment"
        )
    _check_ca(settings.ca)
    _check_key(settings.key)
    return summary


def open_ledger(settings: NodeSettings) -> PrivacyLedger:
    """The data folder's ledger, with ``settings.budget`` stored in it when given."""
    if settings.budget is not None:
        ledger = set_node_budget(settings.data, settings.budget)
        logger.info("node budget %g stored in %s", settings.budget, ledger_path(settings.data))
        return ledger
    return read_ledger(settings.data)


def node_args(settings: NodeSettings) -> list[str]:
    """The ``flower-supernode`` command line for these settings."""
    port = settings.runtime_port or free_port()
    node_config = f'{NODE_DATA_PATH}="{settings.data.resolve()}" {NODE_DEVICE}="{settings.device}"'
    if settings.budget is not None:
        node_config += f" {NODE_PRIVACY_BUDGET}={float(settings.budget)!r}"
    args = [
        flower_executable("flower-supernode"),
        "--superlink",
        settings.server,
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]
    if settings.max_wait:
        args += ["--max-wait-time", f"{settings.max_wait:g}"]
    if settings.insecure:
        return [*args, "--insecure"]
    assert settings.ca is not None and settings.key is not None  # check_node
    return [
        *args,
        "--root-certificates",
        str(settings.ca.resolve()),
        "--auth-supernode-private-key",
        str(settings.key.resolve()),
    ]


def run_node(settings: NodeSettings, on_line: Callable[[str], None]) -> None:
    """Run the SuperNode until it exits or this process is stopped.

    Raises:
        FederationError: the SuperNode exited with an error (refused, unreachable).
    """
    env = flower_env(settings.flwr_home)
    node = FlowerProcess(node_args(settings), env=env, on_line=on_line, own_group=False)
    try:
        code = node.wait()
    finally:
        node.stop()
    if code != 0:
        reason = last_meaningful(node.tail())
        if ACTIVATION_REFUSED in reason:
            reason += (
                " (is this node's key registered with the coordinator? A node restarted after "
                "a crash is let in again only once it has missed 2 heartbeats, about 60 s: "
                "start it again then)"
            )
        raise FederationError(f"the node stopped (flower-supernode exit code {code}): {reason}")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--server must be HOST:PORT (e.g. 10.0.0.5:8000), got {address!r}")
    return host, int(port)


def _check_ca(path: Path) -> None:
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"CA certificate {path} not found; copy ca.crt from the coordinator"
        ) from None
    except ValueError:
        raise ConfigError(
            f"{path} is not a PEM certificate; pass the deployment's ca.crt"
        ) from None


def _check_key(path: Path) -> None:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"node key {path} not found; copy this node's node-K.key") from None
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path} is not an unencrypted OpenSSH private key; pass this node's node-K.key "
            "(not the .pub, not the CA or server key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"{path} is not an elliptic-curve key as Flower's node authentication needs"
        )
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        logger.warning("%s can be read by other users (mode %o); chmod 600 it", path, mode)
