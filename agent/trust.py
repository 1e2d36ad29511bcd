"""How the agent trusts its controller over HTTPS: the CA pinned at enrollment, or the system CAs.

STATE_DIR/controller-ca.pem holds the CA the agent trusts for its controller. It is written at
enrollment, from one of:
- the pin in the pre-auth key (wire/preauth.py): the agent fetches the controller's CA from
  `GET /v1/tls/ca` on a TLS connection it does not verify yet (it sends nothing secret there), and keeps
  it only when the SHA-256 of its SubjectPublicKeyInfo is the pin (kubeadm's join does the same);
- `--ca-file FILE`, when the controller presents a certificate of the operator's own CA.
Later starts trust only that file. Without it (a key without pin, no --ca-file) the system CAs apply.

Rules:
- Every connection that carries a secret verifies the controller's chain and its name against the URL.
- A pin that does not match stores nothing and is one line naming both fingerprints.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from agent.targets import split_urls
from keys.store import write_private_file
from wgmesh.neterror import describe
from wire import api
from wire.preauth import ca_pin_of_pem

CA_FILE_NAME = "controller-ca.pem"
FETCH_TIMEOUT_S = 10.0


class TrustError(RuntimeError):
    """The controller cannot be trusted, or its CA not stored; one line saying why."""


def ca_path(state_dir: Path) -> Path:
    return state_dir / CA_FILE_NAME


def verify_for(state_dir: Path) -> ssl.SSLContext | bool:
    """What httpx verifies the controller with: the stored CA, else the system CAs (True)."""
    path = ca_path(state_dir)
    if not path.exists():
        return True
    try:
        return context_for(path.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as e:
        raise TrustError(f"{path}: cannot be used as the controller's CA ({e})") from None


def context_for(pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only the CA in `pem`, with hostname checks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def adopt_ca_file(ca_file: Path, state_dir: Path) -> ssl.SSLContext:
    """Trust the operator's CA file from now on (copied into the state directory)."""
    try:
        pem = ca_file.read_bytes()
        context = context_for(pem)
    except FileNotFoundError:
        raise TrustError(f"--ca-file {ca_file}: no such file") from None
    except (OSError, ssl.SSLError, ValueError, UnicodeDecodeError) as e:
        raise TrustError(f"--ca-file {ca_file}: not a PEM CA certificate ({e})") from None
    write_private_file(ca_path(state_dir), pem.decode("ascii"))
    return context


async def pin_controller_ca(
    url: str, pin: str, state_dir: Path, transport: httpx.AsyncBaseTransport | None = None
) -> ssl.SSLContext:
    """Fetch the controller's CA, check it against `pin`, store it; the context that trusts it.
    `url` may name several replicas (comma-separated): they share one CA, so the first that answers
    gives it."""
    urls = split_urls(url)
    for one in urls:
        if not one.startswith("https://"):
            raise TrustError(f"the pre-auth key pins the controller's CA, but {one} is not https://")
    problems: list[str] = []
    for url in urls:
        # Not verified: the CA is checked against the pin below, and no secret is sent on this connection.
        async with httpx.AsyncClient(
            base_url=url, verify=False, transport=transport, timeout=FETCH_TIMEOUT_S
        ) as client:
            try:
                response = await client.get(api.TLS_CA)
            except httpx.HTTPError as e:
                problems.append(f"cannot fetch the controller's CA from {url}{api.TLS_CA}: {describe(e)}")
                continue
        break
    else:
        raise TrustError("; ".join(problems))
    if response.status_code != 200:
        raise TrustError(
            f"{url}{api.TLS_CA} answered {response.status_code}: the controller has no managed CA "
            "(use a key without pin and --ca-file, or the system CAs)"
        )
    pem = response.content
    try:
        found = ca_pin_of_pem(pem)
    except ValueError:
        raise TrustError(f"{url}{api.TLS_CA} did not send a PEM certificate") from None
    if found != pin:
        raise TrustError(
            f"the controller's CA has pin {found}, the pre-auth key expects {pin}: "
            "not the controller that made the key (or someone in between); nothing was stored"
        )
    try:
        context = context_for(pem)
    except (ssl.SSLError, ValueError) as e:
        raise TrustError(f"{url}{api.TLS_CA}: the pinned CA cannot be used ({e})") from None
    write_private_file(ca_path(state_dir), pem.decode("ascii"))
    return context
