"""The deployment folder: a private CA, the SuperLink's TLS certificate and the node keys.

``fedpriv-server init DIR`` writes::

    DIR/ca.crt          CA certificate: every site trusts it (``--root-certificates``)
    DIR/ca.key          CA private key (0600): stays with the operator, off the network
    DIR/server.crt      SuperLink certificate, signed by the CA (``--ssl-certfile``)
    DIR/server.key      SuperLink private key (0600) (``--ssl-keyfile``)
    DIR/nodes/node-K.key  SuperNode K's private key (0600) (``--auth-supernode-private-key``)
    DIR/nodes/node-K.pub  SuperNode K's public key (``flwr supernode register``)

Every key is ECDSA on NIST P-384 (signatures with SHA-384). The SuperLink serves TLS
through uvicorn (Python's ``ssl``, i.e. OpenSSL) and its clients verify with httpx
(also OpenSSL), both of which take ECDSA and RSA certificates alike; P-384 is chosen
because it is the curve Flower itself mandates for node keys (one algorithm to audit),
its keys are made in milliseconds where RSA-3072 takes about a second, and it gives
192-bit security against RSA-3072's 128.

Node keys are in OpenSSH format because that is what Flower 1.41 reads: ``flower-supernode
--auth-supernode-private-key`` loads the file with ``load_ssh_private_key(data, None)``
(unencrypted, EC only) and ``flwr supernode register`` with ``load_ssh_public_key``
(EC on a NIST curve only).

Files are written atomically (temporary file, then rename) and private keys are created
with mode 0600, so they are never readable by others, even for an instant. Existing files
are never replaced unless ``force=True``; without it every target is checked before
anything is written.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpriv.shared_models.errors import ConfigError, FedprivError
from fedpriv.shared_models.plumbing.atomic import atomic_write

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
NODES_DIR = "nodes"

CA_VALID_DAYS = 5 * 365
SERVER_VALID_DAYS = 365
MAX_NODES = 10_000
# The SuperLink's name on loopback: a node or `flwr` on the same machine connects to these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

_CURVE = ec.SECP384R1
_HASH = hashes.SHA384
# RFC 1123 host name label: letters, digits and inner hyphens, 1-63 characters.
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_NODE_KEY = re.compile(r"^node-([1-9][0-9]*)\.(key|pub)$")


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's key pair on disk; a path is ``None`` where that file is missing."""

    name: str
    private_key: Path | None
    public_key: Path | None


@dataclass(frozen=True)
class Deployment:
    """What a deployment folder holds; a path is ``None`` where that file is missing."""

    directory: Path
    ca_cert: Path | None
    ca_key: Path | None
    server_cert: Path | None
    server_key: Path | None
    nodes: tuple[NodeKeys, ...]

    def missing_for_superlink(self) -> list[str]:
        """File names the SuperLink needs for TLS that are absent (empty when ready)."""
        wanted = {CA_CERT: self.ca_cert, SERVER_CERT: self.server_cert, SERVER_KEY: self.server_key}
        return [name for name, path in wanted.items() if path is None]


@dataclass(frozen=True)
class InitResult:
    """The files ``init`` wrote, and the names the server certificate covers."""

    deployment: Deployment
    hosts: tuple[str, ...]
    server_not_after: dt.datetime
    ca_not_after: dt.datetime
    written: tuple[Path, ...]
    stale_nodes: tuple[NodeKeys, ...]


def describe(directory: str | os.PathLike[str]) -> Deployment:
    """Return which deployment files exist in ``directory`` (nothing is read or checked).

    Nodes are listed in number order, including ones with only one of their two files.
    """
    root = Path(directory)

    def existing(path: Path) -> Path | None:
        return path if path.is_file() else None

    found: dict[int, dict[str, Path]] = {}
    nodes_dir = root / NODES_DIR
    if nodes_dir.is_dir():
        for path in nodes_dir.iterdir():
            match = _NODE_KEY.match(path.name)
            if match and path.is_file():
                found.setdefault(int(match.group(1)), {})[match.group(2)] = path
    nodes = tuple(
        NodeKeys(name=f"node-{k}", private_key=found[k].get("key"), public_key=found[k].get("pub"))
        for k in sorted(found)
    )
    return Deployment(
        directory=root,
        ca_cert=existing(root / CA_CERT),
        ca_key=existing(root / CA_KEY),
        server_cert=existing(root / SERVER_CERT),
        server_key=existing(root / SERVER_KEY),
        nodes=nodes,
    )


def normalize_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """The names the server certificate covers: ``hosts`` plus loopback, deduplicated.

    Each host is a DNS name (RFC 1123: letters, digits, '-' and '.') or an IPv4/IPv6
    address (IPv6 optionally in brackets). Raises :class:`ConfigError` on anything else.
    """
    out: list[str] = []
    for raw in [*hosts, *LOOPBACK_HOSTS]:
        name = _normalize_host(raw)
        if name not in out:
            out.append(name)
    return tuple(out)


def _normalize_host(raw: str) -> str:
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if (
        name
        and len(name) <= 253
        and all(_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()  # "10.0.0.300" is a mistyped address, not a name
    ):
        return name
    raise ConfigError(
        f"--host {raw!r} is neither an IP address nor a DNS name: expected e.g. "
        "superlink.example.org, 10.0.0.5 or ::1 (letters, digits, '-' and '.'; no port, "
        "no scheme)"
    )


def init_deployment(
    directory: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = (),
    nodes: int = 2,
    force: bool = False,
) -> InitResult:
    """Write a new CA, a SuperLink certificate for ``hosts`` and ``nodes`` node key pairs.

    ``hosts`` are the names and addresses nodes use to reach the SuperLink; localhost,
    127.0.0.1 and ::1 are always added. ``nodes`` must be in 1..10000. Raises
    :class:`ConfigError` for a bad host or node count and :class:`FedprivError` naming
    the first existing file when ``force`` is false (nothing is written then);
    :class:`OSError` when the system refuses to write.
    """
    if isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes must be between 1 and {MAX_NODES}, got {nodes}")
    names = normalize_hosts(hosts)
    root = Path(directory)
    node_paths = [
        (root / NODES_DIR / f"node-{k}.key", root / NODES_DIR / f"node-{k}.pub")
        for k in range(1, nodes + 1)
    ]
    targets = [root / CA_CERT, root / CA_KEY, root / SERVER_CERT, root / SERVER_KEY]
    targets += [path for pair in node_paths for path in pair]
    if not force:
        for path in targets:
            if path.exists() or path.is_symlink():
                raise FedprivError(
                    f"{path} already exists: refusing to overwrite it (nothing was written); "
                    "pass --force to replace the whole deployment, or choose another folder"
                )

    # Everything is made in memory first, so a failure here leaves the disk untouched.
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca_key = ec.generate_private_key(_CURVE())
    ca_cert = _ca_certificate(ca_key, now)
    server_key = ec.generate_private_key(_CURVE())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, names, now)
    files: list[tuple[Path, bytes, bool]] = [
        (root / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), False),
        (root / CA_KEY, _pem_private(ca_key), True),
        (root / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM), False),
        (root / SERVER_KEY, _pem_private(server_key), True),
    ]
    for k, (key_path, pub_path) in enumerate(node_paths, start=1):
        private, public = node_key_pair(comment=f"fedpriv-node-{k}")
        files += [(key_path, private, True), (pub_path, public, False)]

    _make_private_dir(root)
    _make_private_dir(root / NODES_DIR)
    written: list[Path] = []
    try:
        for path, data, secret in files:
            atomic_write(path, data, mode=0o600 if secret else 0o644, replace=force)
            written.append(path)
    except BaseException:
        if not force:  # leave no half deployment behind; with --force the old one is gone
            for path in written:
                path.unlink(missing_ok=True)
        raise

    deployment = describe(root)
    stale = tuple(node for node in deployment.nodes if int(node.name.split("-")[1]) > nodes)
    return InitResult(
        deployment=deployment,
        hosts=names,
        server_not_after=server_cert.not_valid_after_utc,
        ca_not_after=ca_cert.not_valid_after_utc,
        written=tuple(written),
        stale_nodes=stale,
    )


def node_key_pair(*, comment: str = "") -> tuple[bytes, bytes]:
    """A new SuperNode key pair: (OpenSSH private key, OpenSSH public key line), P-384.

    The private key is unencrypted, as ``flower-supernode`` loads it without a password.
    """
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + (f" {comment}" if comment else "").encode() + b"\n"


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpriv"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedpriv deployment CA {now:%Y-%m-%d}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    now: dt.datetime,
) -> x509.Certificate:
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpriv"),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, _HASH())
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8 PEM: what uvicorn/OpenSSL load for --ssl-keyfile.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) as 0700 if missing; an existing folder keeps its mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
