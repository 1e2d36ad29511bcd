"""The pre-auth key format with its CA pin, and the controller's CA and server certificate: each as a
user of it would notice (the enrollment nonces, kept in the store, are in tests/component)."""

from __future__ import annotations

import hashlib
import ssl
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from controller.settings import SettingsError, load_settings
from controller.tls import TlsError, managed_tls, operator_tls
from wire.preauth import PreAuthKey, PreAuthKeyError, ca_pin_of_pem, parse_preauth_key

PIN = "ab" * 32
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_key_with_a_pin_round_trips_and_never_shows_its_secret():
    key = parse_preauth_key(f"  wgm_pak_s3cr3t-_x.{PIN.upper()}\n")
    assert key == PreAuthKey("wgm_pak_s3cr3t-_x", PIN)
    assert key.text() == f"wgm_pak_s3cr3t-_x.{PIN}"
    assert "s3cr3t" not in repr(key)
    assert parse_preauth_key("wgm_pak_s3cr3t").ca_pin is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("pak_123456789", "expected wgm_pak_..."),
        ("wgm_pak_has space", "expected wgm_pak_..."),
        ("wgm_pak_123456.deadbeef", "64 hex digits"),
        (f"wgm_pak_123456.{'g' * 64}", "64 hex digits"),
        (f"wgm_pak_123456.{PIN}.{PIN}", "64 hex digits"),
    ],
)
def test_a_malformed_key_is_one_line_saying_what_is_wrong(text, message):
    with pytest.raises(PreAuthKeyError) as e:
        parse_preauth_key(text)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(65537, 2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ec", "rsa", "ed25519"],
)
def test_the_pin_of_an_operators_ca_is_the_sha256_of_its_public_key_info(key):
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "c" * 64),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o"),
        ]
    )
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
        .sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # what `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum` prints
    assert ca_pin_of_pem(b"a bundle's comment\n" + pem + pem) == hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        b"-----BEGIN CERTIFICATE-----\nMIIB!\n-----END CERTIFICATE-----",
    ],
)
def test_a_file_without_a_certificate_has_no_pin(pem):
    with pytest.raises(ValueError):
        ca_pin_of_pem(pem)


def test_the_managed_ca_is_made_once_kept_0600_and_signs_a_server_certificate_for_the_names(tmp_path):
    first = managed_tls(tmp_path / "tls", ["198.18.0.1", "controller.example"], datetime.now(UTC))
    again = managed_tls(tmp_path / "tls", ["198.18.0.1"], datetime.now(UTC))
    assert first.ca_pin == again.ca_pin == ca_pin_of_pem(first.ca_pem or b"")
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for name in ("ca.key", "ca.crt", "server.key", "server.crt"):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == 0o600
    client = ssl.create_default_context(cadata=(first.ca_pem or b"").decode())
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(first.cert_file, first.key_file)
    assert _handshake(client, server, "198.18.0.1") is None  # the names of the latest start
    assert "mismatch" in (_handshake(client, server, "controller.example") or "")
    assert operator_tls(first.cert_file, first.key_file).ca_pin is None


def test_half_a_ca_or_unusable_operator_files_are_one_line(tmp_path):
    managed_tls(tmp_path / "tls", ["x"], NOW)
    (tmp_path / "tls" / "ca.key").unlink()
    with pytest.raises(TlsError, match=r"ca.key is missing: restore it \(agents pinned this CA\)"):
        managed_tls(tmp_path / "tls", ["x"], NOW)
    with pytest.raises(TlsError, match="does not exist"):
        operator_tls(tmp_path / "nope.crt", tmp_path / "nope.key")


def test_tls_settings_go_together_and_say_which_is_missing(tmp_path):
    with pytest.raises(SettingsError, match="--tls-cert: tls_cert and tls_key go together"):
        load_settings({"tls_cert": "/x.crt", "state_dir": str(tmp_path)}, {})
    s = load_settings({"tls_san": "a.example, 203.0.113.7", "state_dir": str(tmp_path)}, {})
    assert s.tls_san == ("a.example", "203.0.113.7") and s.scheme == "https"
    with pytest.raises(SettingsError, match="WGMESH_INSECURE_HTTP: expected true or false"):
        load_settings({"state_dir": str(tmp_path)}, {"WGMESH_INSECURE_HTTP": "perhaps"})


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> str | None:
    """None when a TLS handshake for `name` succeeds, else the client's verify message."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as e:
                return str(e.verify_message)
            except ssl.SSLError:
                if side is s:
                    continue
                raise
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        try:
            c.do_handshake()
            return None
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLCertVerificationError as e:
            return str(e.verify_message)
    raise AssertionError("no handshake")


def test_what_the_server_presents_follows_the_settings(tmp_path):
    from controller.cli import server_tls

    managed = server_tls(load_settings({"state_dir": str(tmp_path / "a"), "listen": "127.0.0.1:1"}, {}))
    assert managed is not None and managed.ca_pin is not None
    assert server_tls(load_settings({"state_dir": str(tmp_path / "b"), "insecure_http": True}, {})) is None
    files = load_settings(
        {
            "state_dir": str(tmp_path / "c"),
            "tls_cert": str(managed.cert_file),
            "tls_key": str(managed.key_file),
        },
        {},
    )
    own = server_tls(files)
    assert own is not None and own.ca_pin is None and own.cert_file == managed.cert_file
    with pytest.raises(SettingsError, match="contradict"):
        load_settings(
            {**{"state_dir": str(tmp_path)}, "tls_cert": "x", "tls_key": "y", "insecure_http": True}, {}
        )


def test_a_host_enrolled_before_https_adopts_the_ca_file_once_and_keeps_it(tmp_path):
    from agent.enrollment import trusted_verify
    from agent.settings import AgentSettings
    from agent.trust import CA_FILE_NAME

    made = managed_tls(tmp_path / "tls", ["controller"], datetime.now(UTC))
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    assert trusted_verify(AgentSettings(state_dir=state)) is True  # nothing stored: the system CAs
    adopted = trusted_verify(AgentSettings(state_dir=state, ca_file=made.cert_file.parent / "ca.crt"))
    assert isinstance(adopted, ssl.SSLContext)
    assert (state / CA_FILE_NAME).read_bytes() == made.ca_pem
    assert isinstance(trusted_verify(AgentSettings(state_dir=state)), ssl.SSLContext)  # kept


def test_a_certificate_without_the_urls_name_says_how_to_fix_it():
    from wgmesh.neterror import describe

    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "Hostname mismatch, certificate is not valid for 'c.example'."
    assert describe(error) == (
        "the controller's TLS certificate is not trusted (Hostname mismatch, certificate is not valid for "
        "'c.example'.; give the controller that name with --tls-san, or use a name it has)"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("S3cretPW", "must start with sqlite:/// or postgresql://, got something else"),
        ("mysql://u:S3cretPW@db/x", "must start with sqlite:/// or postgresql://, got 'mysql'"),
        ("postgresql://u:S3cretPW@db:fivefour/x", "the port of the database URL is not a number"),
        ("postgresql://u:S3cr@tPW@db/x", "write an '@' in the user name or password as %40"),
    ],
)
def test_a_database_url_that_cannot_work_is_one_line_without_its_password(tmp_path, url, message):
    with pytest.raises(SettingsError) as e:
        load_settings({"state_dir": str(tmp_path)}, {"WGMESH_DB": url})
    line = str(e.value)
    assert line.startswith("WGMESH_DB: ") and message in line and "\n" not in line
    assert "S3cr" not in line and "tPW" not in line


def test_database_urls_libpq_takes_are_taken(tmp_path):
    for url, kept in (
        ("postgres://u:p%40ss@db:5433/x", "postgresql://u:p%40ss@db:5433/x"),
        ("postgresql:///x?host=/run/postgresql", "postgresql:///x?host=/run/postgresql"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ):
        assert load_settings({"state_dir": str(tmp_path)}, {"WGMESH_DB": url}).database_url == kept
