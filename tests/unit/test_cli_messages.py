"""What the shell shows: the program's name as the person can type it, one-line argument errors, and
network failures named by their real cause."""

from __future__ import annotations

import socket
import ssl
import threading

import httpx
import pytest

from wgmesh.argparser import OneLineParser
from wgmesh.invocation import command_for
from wgmesh.neterror import describe


@pytest.mark.parametrize(
    ("argv0", "cwd", "path", "expected"),
    [
        # after `make demo`: the venv's program, no wgmesh on PATH
        (".venv/bin/wgmesh", "/src/wgmesh", "/usr/bin:/bin", ".venv/bin/wgmesh"),
        ("/src/wgmesh/.venv/bin/wgmesh", "/src/wgmesh", "/usr/bin:/bin", ".venv/bin/wgmesh"),
        ("/src/wgmesh/.venv/bin/wgmesh", "/tmp", "/usr/bin:/bin", "/src/wgmesh/.venv/bin/wgmesh"),
        # typed as a bare name: found on PATH, so the bare name works again
        ("wgmesh", "/tmp", "/usr/local/bin", "wgmesh"),
        # python -m wgmesh, or a test runner: the installed name
        ("/usr/lib/python3/dist-packages/wgmesh/__main__.py", "/tmp", "/usr/bin", "wgmesh"),
    ],
)
def test_the_program_is_named_as_it_can_be_typed(argv0, cwd, path, expected):
    assert command_for(argv0, cwd, path) == expected


def test_a_program_on_path_is_named_bare(tmp_path):
    program = tmp_path / "bin" / "wgmesh"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert command_for(str(program), "/", str(program.parent)) == "wgmesh"


def test_a_bad_argument_is_one_line_without_the_usage(capsys):
    parser = OneLineParser(prog="wgmesh thing")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("go").add_argument("--count", type=int)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["go", "--count", "many"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "wgmesh thing go: argument --count: invalid int value: 'many' (see --help)\n"


def _wrapped(inner: BaseException) -> httpx.HTTPError:
    """An httpx error as httpx raises it: the real cause a few levels down its chain."""
    middle = OSError("transport failed")
    middle.__context__ = inner
    outer = httpx.ConnectError(str(inner))
    outer.__cause__ = middle
    return outer


def test_a_dns_failure_says_the_name_does_not_resolve():
    error = _wrapped(socket.gaierror(-3, "Temporary failure in name resolution"))
    assert describe(error) == "the name does not resolve (DNS: Temporary failure in name resolution)"


def test_https_to_a_plain_http_server_says_so():
    """A real TLS client against a real plain-HTTP listener on loopback: the SSL error has code 1,
    which os.strerror() reads as 'Operation not permitted'."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(httpx.HTTPError) as info:
            httpx.get(f"https://127.0.0.1:{port}/", timeout=5)
    finally:
        thread.join(5)
        server.close()
    text = describe(info.value)
    assert text.startswith("TLS handshake failed") and "plain http://" in text
    assert "Operation not permitted" not in text


def test_an_untrusted_certificate_is_named():
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    assert (
        describe(_wrapped(error))
        == "the controller's TLS certificate is not trusted (self-signed certificate)"
    )


def test_a_refused_connection_keeps_its_errno_text():
    assert describe(_wrapped(ConnectionRefusedError(111, "Connection refused"))) == "Connection refused"
