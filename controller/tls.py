"""The controller's TLS material: a CA made on first start and the server certificate it issues, or the
operator's own certificate and key files; and the CA pin that pre-auth keys carry.

Layout of STATE_DIR/tls (the directory is 0700, every file 0600):

    ca.key, ca.crt          the controller CA (ECDSA P-256, 20 years), made once. Its pin (SHA-256 of its
                            SubjectPublicKeyInfo) is in every pre-auth key, so it never changes. The
                            database keeps the same CA (`shared`): the first controller to start puts its
                            CA there, every replica after it takes that one, so one pin holds for all.
    server.key, server.crt  issued by the CA at every start, for the names the controller is reached at
                            (the listen address, `tls_san`, this host's names and addresses, loopback)

Rules:
- The CA signs controller server certificates only, nothing else.
- A state directory whose CA is not the one the database keeps is refused (its agents pinned another
  CA): the operator removes the directory's tls/ to take the database's, or points at its own database.
- Operator files (`tls_cert` + `tls_key`) replace all of this; keys then carry no pin and agents verify
  the controller with the system CAs or their --ca-file.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.store import ensure_private_dir, write_private_file
from wire.preauth import ca_pin_of_pem

TLS_DIR = "tls"  # under the state directory
CA_LIFETIME = timedelta(days=20 * 365)
SERVER_LIFETIME = timedelta(days=365)
_SIOCGIFADDR = 0x8915


class TlsError(Exception):
    """The TLS files cannot be made or used; one line saying which file and why."""


@dataclass(frozen=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    ca_pem: bytes | None  # the managed CA's certificate (served at /v1/tls/ca); None with operator files

    @property
    def ca_pin(self) -> str | None:
        return None if self.ca_pem is None else ca_pin_of_pem(self.ca_pem)


class SharedCa(Protocol):
    """Where replicas find the CA they share (the store)."""

    def share_tls_ca(self, key_pem: str, cert_pem: str) -> tuple[str, str]: ...


def operator_tls(cert_file: Path, key_file: Path) -> ServerTls:
    """The operator's certificate chain and key, checked to load together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as e:
        raise TlsError(f"TLS file {e.filename} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot use TLS certificate {cert_file} with key {key_file}: {e}") from None
    return ServerTls(cert_file, key_file, None)


def managed_tls(
    tls_dir: Path, names: Sequence[str], now: datetime, shared: SharedCa | None = None
) -> ServerTls:
    """The CA (in `tls_dir`, and the one `shared` keeps; made when neither has one) and a fresh server
    certificate for `names`."""
    ensure_private_dir(tls_dir)
    ca_key_file, ca_cert_file = tls_dir / "ca.key", tls_dir / "ca.crt"
    local = ca_cert_file.exists() and ca_key_file.exists()
    if local:
        ca_key, ca_cert = _load(ca_key_file, ca_cert_file)
    elif ca_cert_file.exists() or ca_key_file.exists():
        missing = ca_key_file if ca_cert_file.exists() else ca_cert_file
        raise TlsError(f"{missing} is missing: restore it (agents pinned this CA) or remove {tls_dir}")
    else:
        ca_key, ca_cert = _new_ca(now)
    if shared is not None:
        mine = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
        key_pem, cert_pem = shared.share_tls_ca(_key_pem(ca_key).decode(), mine)
        if cert_pem != mine:
            if local:
                raise TlsError(
                    f"{ca_cert_file} is not the CA the database keeps (another controller made that one): "
                    f"agents pinned one of them; remove {tls_dir} to serve with the database's"
                )
            ca_key, ca_cert = _parse(key_pem.encode(), cert_pem.encode(), "the database's CA")
    if not local:
        write_private_file(ca_key_file, _key_pem(ca_key).decode())
        write_private_file(ca_cert_file, ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(ca_key, ca_cert, server_key.public_key(), names, now)
    chain = server_cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    write_private_file(tls_dir / "server.key", _key_pem(server_key).decode())
    write_private_file(tls_dir / "server.crt", chain.decode())
    return ServerTls(
        tls_dir / "server.crt", tls_dir / "server.key", ca_cert.public_bytes(serialization.Encoding.PEM)
    )


def server_names(listen_host: str, extra: Iterable[str]) -> list[str]:
    """Names the server certificate covers: the listen address (every local address for a wildcard),
    the configured extra names, this host's names, and loopback."""
    names: list[str] = [*extra]
    if listen_host in ("0.0.0.0", "::", ""):
        names += _local_addresses()
    else:
        names.append(listen_host)
    host = socket.gethostname()
    names += [host, socket.getfqdn(host), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def _local_addresses() -> list[str]:
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):  # no IPv4 address on this interface
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
                found.append(socket.inet_ntoa(reply[20:24]))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            raw = line.split()[0]
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return [a for a in found if not ipaddress.ip_address(a).is_link_local]


def _new_ca(now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wgmesh controller CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + CA_LIFETIME)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    names: Sequence[str],
    now: datetime,
) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wgmesh controller")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load(key_file: Path, cert_file: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key_pem, cert_pem = key_file.read_bytes(), cert_file.read_bytes()
    except OSError as e:
        raise TlsError(f"CA file {e.filename} cannot be read: {e.strerror or e}") from None
    return _parse(key_pem, cert_pem, f"{key_file} and {cert_file}")


def _parse(key_pem: bytes, cert_pem: bytes, what: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsError(f"CA key of {what} cannot be read: {e}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise TlsError(f"CA certificate of {what} cannot be read: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != _spki(cert.public_key()):
        raise TlsError(f"CA key of {what}: the key does not belong to the certificate")
    return key, cert
