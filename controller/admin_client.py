"""The admin side of the API from a shell: which controller and credential to use, a small httpx client,
and plain-text tables. Used by `wgmesh controller token ...` and `wgmesh nodes ...`.

Where things come from (first wins):
- controller URL: --controller, WGMESH_CONTROLLER, https://127.0.0.1:8420; one URL or several
  replicas' URLs separated by commas, or a name with several addresses (agent.targets). A call that
  cannot connect, or that a replica refuses with 503 (it lost its database; nothing changed), goes
  to the next replica; any other failure is reported, never repeated (a write may have happened).
- admin credential: --admin-credential, WGMESH_ADMIN_CREDENTIAL, STATE_DIR/admin-credential with
  STATE_DIR from --state-dir, WGMESH_STATE_DIR or the controller's default state directory.
- trust for https: --ca-file, WGMESH_CA_FILE, the controller's own CA in STATE_DIR/tls/ca.crt when it
  is there (the admin commands run on the controller host), else the system CAs.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter

from agent.targets import Targets, split_urls
from controller.credentials import CredentialError, admin_credential_path, read_admin_credential
from controller.settings import DEFAULT_CONTROLLER_URL, default_state_dir
from controller.tls import TLS_DIR
from wgmesh.neterror import describe
from wire import api
from wire.audit import ACTOR_HEADER, MAX_ACTOR, AuditEvent, clean_actor
from wire.models import NodeInfo, NodeTagsRequest, PreAuthKeyInfo, PreAuthKeyRequest, RemovedNodeInfo
from wire.policy import (
    PolicyCheckResult,
    PolicyError,
    PolicyInfo,
    PolicyRollbackRequest,
    PolicySetRequest,
    PolicyState,
    PolicyTestRequest,
    PolicyTestResult,
    parse_policy,
)
from wire.rotation import RotationInfo, RotationProgress
from wire.ui import UiTicket

TIMEOUT_S = 10.0


class AdminError(Exception):
    """A one-line reason an admin command failed."""


def admin_user(given: str | None = None) -> str:
    """Who runs the admin command, for the audit trail: `given`, else USER@HOST (printable ASCII)."""
    if not given:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "admin"
        given = f"{user}@{socket.gethostname()}"
    return clean_actor(given[:MAX_ACTOR]) or "admin"


@dataclass(frozen=True)
class AdminTarget:
    url: str
    credential: str
    ca_file: Path | None = None  # None: the system CAs


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller", metavar="URL", help=f"controller URL (default {DEFAULT_CONTROLLER_URL})"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--state-dir", metavar="DIR", help="read the admin credential from DIR/admin-credential"
    )
    group.add_argument("--admin-credential", metavar="CRED", help="the admin credential itself")
    parser.add_argument(
        "--ca-file", metavar="FILE", help="CA to verify the controller with (default: STATE_DIR/tls/ca.crt)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def resolve_target(args: argparse.Namespace, env: Mapping[str, str]) -> AdminTarget:
    urls = split_urls(args.controller or env.get("WGMESH_CONTROLLER") or DEFAULT_CONTROLLER_URL)
    for one in urls:
        if not one.startswith(("http://", "https://")):
            raise AdminError(f"controller URL must start with http:// or https://, got {one!r}")
    if not urls:
        raise AdminError("controller URL: none given")
    url = ",".join(urls)
    credential = args.admin_credential or (None if args.state_dir else env.get("WGMESH_ADMIN_CREDENTIAL"))
    state_dir = Path(args.state_dir or env.get("WGMESH_STATE_DIR") or default_state_dir(env))
    if not credential:
        try:
            credential = read_admin_credential(admin_credential_path(state_dir))
        except CredentialError as e:
            raise AdminError(f"{e}; pass --admin-credential or --state-dir") from None
    given = getattr(args, "ca_file", None) or env.get("WGMESH_CA_FILE")
    if given:
        if not Path(given).is_file():
            raise AdminError(f"CA file {given} does not exist")
        return AdminTarget(url, credential.strip(), Path(given))
    ca_file = state_dir / TLS_DIR / "ca.crt"
    return AdminTarget(url, credential.strip(), ca_file if ca_file.is_file() else None)


class AdminClient:
    def __init__(self, target: AdminTarget, transport: httpx.BaseTransport | None = None) -> None:
        self.target = target
        self.targets = Targets(target.url, resolve=transport is None)
        verify: ssl.SSLContext | bool = True
        if target.ca_file is not None and "https://" in target.url:
            verify = ssl.create_default_context(cafile=str(target.ca_file))
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {target.credential}", ACTOR_HEADER: admin_user()},
            timeout=TIMEOUT_S,
            transport=transport,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        problems = []
        for replica in self.targets.order():
            headers = {"Host": replica.host_header} if replica.host_header else {}
            extensions = {"sni_hostname": replica.sni_hostname} if replica.sni_hostname else None
            try:
                response = self._http.request(
                    method,
                    replica.url + path,
                    json=body,
                    params=params,
                    headers=headers,
                    extensions=extensions,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                problems.append(f"cannot reach the controller at {replica.label}: {describe(e)}")
                self.targets.failed(replica)
                continue
            except httpx.HTTPError as e:
                raise AdminError(f"cannot reach the controller at {replica.label}: {describe(e)}") from None
            if response.status_code == 503:
                problems.append(f"the controller at {replica.label} is unavailable: {_detail(response)}")
                self.targets.failed(replica)
                continue
            break
        else:
            raise AdminError("; ".join(problems))
        if response.status_code >= 400:
            raise AdminError(f"controller refused ({response.status_code}): {_detail(response)}")
        return response

    def create_key(self, req: PreAuthKeyRequest) -> PreAuthKeyInfo:
        r = self._call("POST", api.PREAUTH_KEYS, req.model_dump(mode="json"))
        return PreAuthKeyInfo.model_validate_json(r.content)

    def keys(self) -> list[PreAuthKeyInfo]:
        return TypeAdapter(list[PreAuthKeyInfo]).validate_json(self._call("GET", api.PREAUTH_KEYS).content)

    def revoke_key(self, key_id: int) -> None:
        self._call("DELETE", f"{api.PREAUTH_KEYS}/{key_id}")

    def nodes(self) -> list[NodeInfo]:
        return TypeAdapter(list[NodeInfo]).validate_json(self._call("GET", api.NODES).content)

    def node(self, node_id: int) -> NodeInfo:
        return NodeInfo.model_validate_json(self._call("GET", f"{api.NODES}/{node_id}").content)

    def remove_node(self, node_id: int) -> None:
        self._call("DELETE", f"{api.NODES}/{node_id}")

    def removed_nodes(self) -> list[RemovedNodeInfo]:
        r = self._call("GET", api.REMOVED_NODES)
        return TypeAdapter(list[RemovedNodeInfo]).validate_json(r.content)

    def allow_node(self, node_id: int) -> None:
        self._call("DELETE", f"{api.REMOVED_NODES}/{node_id}")

    def set_tags(self, node_id: int, req: NodeTagsRequest) -> NodeInfo:
        r = self._call("PUT", f"{api.NODES}/{node_id}/tags", req.model_dump())
        return NodeInfo.model_validate_json(r.content)

    def policy_tags_entry(self, name: str) -> list[str] | None:
        """The tags the policy in force gives the node `name` by name; None: it gives none."""
        state = self.policy()
        if state.policy is None or state.policy.text is None:
            return None
        try:
            doc = parse_policy(state.policy.text)
        except PolicyError:
            return None
        return doc.tags.get(name)

    def policy(self) -> PolicyState:
        return PolicyState.model_validate_json(self._call("GET", api.POLICY).content)

    def set_policy(self, req: PolicySetRequest) -> PolicyInfo:
        return PolicyInfo.model_validate_json(self._call("PUT", api.POLICY, req.model_dump()).content)

    def check_policy(self, req: PolicySetRequest) -> PolicyCheckResult:
        r = self._call("POST", api.POLICY + "/check", req.model_dump())
        return PolicyCheckResult.model_validate_json(r.content)

    def test_policy(self, req: PolicyTestRequest) -> PolicyTestResult:
        r = self._call("POST", api.POLICY + "/test", req.model_dump())
        return PolicyTestResult.model_validate_json(r.content)

    def policy_history(self) -> list[PolicyInfo]:
        r = self._call("GET", api.POLICY + "/history")
        return TypeAdapter(list[PolicyInfo]).validate_json(r.content)

    def rollback_policy(self, req: PolicyRollbackRequest) -> PolicyInfo:
        r = self._call("POST", api.POLICY + "/rollback", req.model_dump())
        return PolicyInfo.model_validate_json(r.content)

    def audit(
        self,
        since: datetime | None = None,
        node: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        params = {"since": since.isoformat() if since else None, "node": node, "action": action}
        params["limit"] = None if limit is None else str(limit)
        r = self._call("GET", api.AUDIT, params={k: v for k, v in params.items() if v is not None})
        return TypeAdapter(list[AuditEvent]).validate_json(r.content)

    def rotate(self, node_id: int) -> RotationInfo:
        return RotationInfo.model_validate_json(self._call("POST", f"{api.NODES}/{node_id}/rotate").content)

    def rotate_all(self) -> RotationProgress:
        return RotationProgress.model_validate_json(self._call("POST", api.ROTATE_ALL).content)

    def rotations(self) -> RotationProgress:
        return RotationProgress.model_validate_json(self._call("GET", api.ROTATIONS).content)

    def ui_link(self) -> tuple[str, UiTicket]:
        """A single-use login link to the topology page: (full URL on the replica that made it, ticket)."""
        r = self._call("POST", api.UI_TICKETS)
        ticket = UiTicket.model_validate_json(r.content)
        base = f"{r.request.url.scheme}://{r.request.headers.get('host') or r.request.url.netloc.decode()}"
        return base + ticket.path, ticket


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason_phrase


def when(t: datetime | None, never: str = "never") -> str:
    return never if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")
