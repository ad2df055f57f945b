"""``fedpriv-server init``: the CA, the SuperLink certificate and the node keys.

Certificates are checked with cryptography's RFC 5280 verifier, node keys with Flower's
own loaders, and once against a real ``flower-superlink`` serving TLS on loopback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from fedpriv.server import certs
from fedpriv.server.certs import (
    CA_VALID_DAYS,
    SERVER_VALID_DAYS,
    describe,
    init_deployment,
    normalize_hosts,
)
from fedpriv.server.cli import main
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.plumbing.processes import free_port

HOSTS = ["superlink.example.org", "10.0.0.5", "[fd00::7]"]


def _init_cli(*args: str) -> None:
    """Run ``fedpriv-server`` in-process; returns only on exit code 0."""
    try:
        main(list(args))
    except SystemExit as exit_:
        assert exit_.code == 0, f"fedpriv-server {' '.join(args)} exited {exit_.code}"


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``fedpriv-server`` expecting failure; returns (exit code, the one stderr line)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("fedpriv-server: error: "), lines[0]
    assert "Traceback" not in err
    return int(info.value.code or 0), lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy") / "dep"
    args = ["init", str(root), "--nodes", "3"]
    for host in HOSTS:
        args += ["--host", host]
    _init_cli(*args)
    return root


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# ---------------------------------------------------------------- certificates


def test_layout_and_describe(deployment: Path) -> None:
    d = describe(deployment)
    assert d.ca_cert == deployment / "ca.crt" and d.ca_key == deployment / "ca.key"
    assert d.server_cert == deployment / "server.crt"
    assert d.server_key == deployment / "server.key"
    assert [n.name for n in d.nodes] == ["node-1", "node-2", "node-3"]
    assert all(n.private_key and n.public_key for n in d.nodes)
    assert d.missing_for_superlink() == []
    empty = describe(deployment / "nope")
    assert empty.nodes == () and empty.ca_cert is None
    assert empty.missing_for_superlink() == ["ca.crt", "server.crt", "server.key"]


def test_server_certificate_verifies_against_the_ca_for_every_name(deployment: Path) -> None:
    ca, server = _load(deployment / "ca.crt"), _load(deployment / "server.crt")
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    store = Store([ca])
    for name in ["superlink.example.org", "localhost"]:
        verifier = PolicyBuilder().store(store).build_server_verifier(DNSName(name))
        chain = verifier.verify(server, [])
        assert chain[-1] == ca
    for address in ["10.0.0.5", "fd00::7", "127.0.0.1", "::1"]:
        ip = IPAddress(ipaddress.ip_address(address))
        PolicyBuilder().store(store).build_server_verifier(ip).verify(server, [])
    # A name the certificate does not cover is refused by the same verifier.
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(store).build_server_verifier(DNSName("evil.example")).verify(
            server, []
        )


def test_certificate_contents(deployment: Path) -> None:
    ca, server = _load(deployment / "ca.crt"), _load(deployment / "server.crt")
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"superlink.example.org", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ["10.0.0.5", "fd00::7", "127.0.0.1", "::1"]
    }
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign

    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    now = dt.datetime.now(dt.UTC)
    assert server.not_valid_before_utc <= now <= server.not_valid_after_utc
    server_days = (server.not_valid_after_utc - now).days
    ca_days = (ca.not_valid_after_utc - now).days
    assert SERVER_VALID_DAYS - 1 <= server_days <= SERVER_VALID_DAYS
    assert CA_VALID_DAYS - 1 <= ca_days <= CA_VALID_DAYS


# ---------------------------------------------------------------- node keys


def test_node_keys_load_with_flowers_own_loaders(deployment: Path) -> None:
    for node in describe(deployment).nodes:
        assert node.private_key is not None and node.public_key is not None
        # Exactly what `flower-supernode --auth-supernode-private-key` does.
        args = argparse.Namespace(
            auth_supernode_private_key=str(node.private_key), auth_supernode_public_key=None
        )
        keys = _try_setup_client_authentication(args)
        assert keys is not None
        private, public = keys
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        # Exactly what `flwr supernode register node-K.pub` sends to the SuperLink.
        assert try_load_public_key(node.public_key) == public_key_to_bytes(public)
    pubs = {n.public_key.read_bytes() for n in describe(deployment).nodes if n.public_key}
    assert len(pubs) == 3, "every node gets its own key"


def test_private_keys_are_0600_and_folders_0700(deployment: Path) -> None:
    d = describe(deployment)
    secret = [d.ca_key, d.server_key, *(n.private_key for n in d.nodes)]
    for path in secret:
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [d.ca_cert, d.server_cert, *(n.public_key for n in d.nodes)]:
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0, f"{path} is writable by others"
    assert stat.S_IMODE(deployment.stat().st_mode) == 0o700
    assert stat.S_IMODE((deployment / "nodes").stat().st_mode) == 0o700
    assert not list(deployment.rglob(".*.tmp")), "no temporary files left"


# ---------------------------------------------------------------- overwriting


def test_second_init_refuses_and_leaves_files_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dep"
    _init_cli("init", str(root), "--nodes", "2")
    before = _snapshot(root)
    code, line = _fails(capsys, "init", str(root), "--nodes", "2")
    assert code == 1
    assert str(root / "ca.crt") in line and "--force" in line
    assert _snapshot(root) == before


def test_one_existing_node_file_blocks_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dep"
    (root / "nodes").mkdir(parents=True)
    (root / "nodes" / "node-3.pub").write_text("mine\n")
    code, line = _fails(capsys, "init", str(root), "--nodes", "3")
    assert code == 1 and "node-3.pub" in line
    assert _snapshot(root) == {"nodes/node-3.pub": b"mine\n"}, "nothing else was written"


def test_force_replaces_every_file(tmp_path: Path) -> None:
    root = tmp_path / "dep"
    _init_cli("init", str(root), "--nodes", "2")
    before = _snapshot(root)
    _init_cli("init", str(root), "--nodes", "2", "--force", "--host", "10.1.2.3")
    after = _snapshot(root)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)
    _load(root / "server.crt").verify_directly_issued_by(_load(root / "ca.crt"))
    assert stat.S_IMODE((root / "nodes" / "node-1.key").stat().st_mode) == 0o600


def test_force_with_fewer_nodes_names_the_stale_keys(tmp_path: Path) -> None:
    root = tmp_path / "dep"
    init_deployment(root, nodes=3)
    result = init_deployment(root, nodes=1, force=True)
    assert [n.name for n in result.stale_nodes] == ["node-2", "node-3"]


# ---------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "host", ["bad host!", "", "https://x.org", "x.org:8000", "10.0.0.300", "a_b.org", "-a.org"]
)
def test_bad_host_is_one_line_and_writes_nothing(
    host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dep"
    code, line = _fails(capsys, "init", str(root), "--host", host)
    assert code == 1 and "--host" in line and "neither an IP address nor a DNS name" in line
    assert not root.exists()


@pytest.mark.parametrize("nodes", ["0", "-1"])
def test_bad_node_count_is_one_line(
    nodes: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dep"
    code, line = _fails(capsys, "init", str(root), "--nodes", nodes)
    assert code == 1 and f"--nodes must be between 1 and 10000, got {nodes}" in line
    assert not root.exists()


def test_hosts_are_normalised() -> None:
    hosts = normalize_hosts(["SuperLink.Example.org.", "[::1]", "10.0.0.5", "10.0.0.5"])
    assert hosts == ("superlink.example.org", "::1", "10.0.0.5", "localhost", "127.0.0.1")
    with pytest.raises(ConfigError):
        normalize_hosts(["a" * 64 + ".org"])


def test_unwritable_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, line = _fails(capsys, "init", str(blocker / "dep"))
    assert code == 1 and "Not a directory" in line


def test_a_failed_write_removes_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = certs.atomic_write
    calls = []

    def disk_full_on_the_fifth(path: Path, data: bytes, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certs, "atomic_write", disk_full_on_the_fifth)
    root = tmp_path / "dep"
    code, line = _fails(capsys, "init", str(root))
    assert code == 1 and "No space left on device" in line
    assert _snapshot(root) == {}, "the four files written before the failure were removed"


@pytest.mark.parametrize(
    "args", [["init"], ["init", "d", "--nodes", "two"], ["bogus"], ["init", "d", "--what"]]
)
def test_malformed_command_line_exits_2(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _fails(capsys, *args)
    assert code == 2


def test_success_output_says_what_to_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dep"
    _init_cli("init", str(root), "--nodes", "1")
    out = capsys.readouterr().out
    for name in ["ca.crt", "ca.key", "server.crt", "server.key", "nodes/node-1.key"]:
        assert str(root / name) in out
    assert f"{root / 'ca.crt'}  and  {root / 'nodes' / 'node-K.key'}" in out


# ---------------------------------------------------------------- a real SuperLink


@pytest.fixture
def superlink(deployment: Path, tmp_path: Path) -> Iterator[int]:
    """A ``flower-superlink`` serving TLS with the deployment's certificate; yields its port."""
    exe = shutil.which("flower-superlink", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("flower-superlink is not installed beside this interpreter")
    port = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    cmd = [
        exe,
        "--ssl-ca-certfile", str(deployment / "ca.crt"),
        "--ssl-certfile", str(deployment / "server.crt"),
        "--ssl-keyfile", str(deployment / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--database", str(tmp_path / "state.db"),
    ]  # fmt: skip
    log = (tmp_path / "superlink.log").open("wb")
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: it starts a SuperExec child
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"flower-superlink exited {proc.returncode}:\n{_log(tmp_path)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"flower-superlink did not listen in 20 s:\n{_log(tmp_path)}")
                time.sleep(0.2)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _log(tmp_path: Path) -> str:
    return (tmp_path / "superlink.log").read_text(errors="replace")[-4000:]


def _handshake(port: int, context: ssl.SSLContext, name: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=name) as tls:
            return str(tls.version())


@pytest.mark.e2e
def test_real_superlink_serves_our_certificate(deployment: Path, superlink: int) -> None:
    ours = ssl.create_default_context(cafile=str(deployment / "ca.crt"))
    assert _handshake(superlink, ours, "localhost").startswith("TLS")

    system = ssl.create_default_context()  # the system trust store, without our CA
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(superlink, system, "localhost")

    with pytest.raises(ssl.SSLCertVerificationError):  # a name the certificate lacks
        _handshake(superlink, ours, "evil.example")
