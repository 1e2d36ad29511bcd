"""`AuditedControlPlane`: the control plane whose admin actions and security events go into the audit
trail (controller.audit), each with its result: enrollments (ok and refused), removals, pre-auth keys
created and revoked, policy changes with their version, key rotations asked, committed and given up,
and admin authentication failures.

It only observes: every method does what `ControlPlane`'s does, then records what happened; a refusal
is recorded and raised again unchanged. What is recorded names keys by id and nodes by id and name,
never a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from controller.audit import ADMIN, AuditTrail
from controller.clock import Clock
from controller.control import ApiError, ControlPlane
from controller.settings import Settings
from controller.store import AuditQuery, Store
from wire.audit import AuditEvent
from wire.models import (
    EnrollRequest,
    EnrollResponse,
    NodeInfo,
    NodeTagsRequest,
    PreAuthKeyInfo,
    PreAuthKeyRequest,
    RemovedNodeInfo,
)
from wire.policy import PolicyInfo, PolicyRollbackRequest, PolicySetRequest
from wire.rotation import KeyReport, KeyReportAnswer, RotationInfo, RotationProgress

T = TypeVar("T")


def _tags(tags: list[str] | None) -> str:
    return "tagged with its role" if tags is None else f"tags {', '.join(tags) or 'none'}"


def _expiry(req: PreAuthKeyRequest) -> str:
    return "never expires" if req.expires_in_s is None else f"expires in {req.expires_in_s} s"


class AuditedControlPlane(ControlPlane):
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        on_maps_changed: Callable[[Iterable[int]], None] = lambda _nodes: None,
        ca_pin: str | None = None,
    ) -> None:
        super().__init__(settings, store, clock, on_maps_changed, ca_pin)
        self.audit = AuditTrail(store, clock, self.db)

    async def audit_events(self, query: AuditQuery) -> list[AuditEvent]:
        return await self.audit.events(query)

    async def _admin(self, action: str, step: Callable[[], Awaitable[T]], node_id: int | None = None) -> T:
        """Run an admin action; record it as refused (with the refusal) or let the caller record it."""
        try:
            return await step()
        except ApiError as e:
            name = self.nodes[node_id].name if node_id in self.nodes else None
            self.audit.record(action, "refused", ADMIN, node_id=node_id, node_name=name, detail=e.detail)
            raise

    # --- security events ---------------------------------------------------------------------------

    def admin_refused(self, reason: str) -> None:
        """A request to an admin route without the admin credential (called by the auth dependency)."""
        self.audit.record("admin.auth", "refused", "anonymous", detail=reason, throttled=True)

    async def enroll(self, req: EnrollRequest, signing_bytes: bytes) -> EnrollResponse:
        actor = f"host {req.hostname}"
        try:
            answer = await super().enroll(req, signing_bytes)
        except ApiError as e:
            self.audit.record("enroll", "refused", actor, detail=e.detail, throttled=True)
            raise
        record = self.nodes[answer.node_id]
        self.audit.record(
            "enroll",
            "ok",
            actor,
            node_id=answer.node_id,
            node_name=answer.name,
            detail=f"address {answer.tunnel_address}, role {record.role}, pre-auth key {record.preauth_key_id}",
        )
        return answer

    # --- admin actions -----------------------------------------------------------------------------

    async def remove_node(self, node_id: int) -> None:
        record = self.nodes.get(node_id)
        await self._admin(
            "node.remove", lambda: super(AuditedControlPlane, self).remove_node(node_id), node_id
        )
        assert record is not None  # a node this replica did not know was refused (404) above
        self.audit.record(
            "node.remove",
            "ok",
            ADMIN,
            node_id=node_id,
            node_name=record.name,
            detail=f"address {record.tunnel_address} removed",
        )

    async def allow_node(self, node_id: int) -> RemovedNodeInfo:
        info = await self._admin("node.allow", lambda: super(AuditedControlPlane, self).allow_node(node_id))
        self.audit.record(
            "node.allow",
            "ok",
            ADMIN,
            node_id=node_id,
            node_name=info.name,
            detail="its keys may enroll again",
        )
        return info

    async def create_preauth_key(self, req: PreAuthKeyRequest) -> PreAuthKeyInfo:
        info = await self._admin(
            "preauth.create", lambda: super(AuditedControlPlane, self).create_preauth_key(req)
        )
        self.audit.record(
            "preauth.create",
            "ok",
            ADMIN,
            detail=f"pre-auth key {info.id}: role {info.role}, {_tags(info.tags)}, "
            f"{'reusable' if info.reusable else 'single-use'}, {_expiry(req)}",
        )
        return info

    async def revoke_preauth_key(self, key_id: int) -> None:
        await self._admin(
            "preauth.revoke", lambda: super(AuditedControlPlane, self).revoke_preauth_key(key_id)
        )
        self.audit.record("preauth.revoke", "ok", ADMIN, detail=f"pre-auth key {key_id} revoked")

    async def set_policy(self, req: PolicySetRequest) -> PolicyInfo:
        actor = _author(req.author)
        try:
            info = await super().set_policy(req)
        except ApiError as e:
            self.audit.record("policy.set", "refused", actor, detail=e.detail)
            raise
        self.audit.record(
            "policy.set",
            "ok",
            actor,
            policy_version=info.version,
            detail=f"version {info.version} from {req.source}",
        )
        return info

    async def rollback_policy(self, req: PolicyRollbackRequest) -> PolicyInfo:
        actor = _author(req.author)
        try:
            info = await super().rollback_policy(req)
        except ApiError as e:
            action = "policy.clear" if req.version == 0 else "policy.rollback"
            self.audit.record(action, "refused", actor, detail=e.detail)
            raise
        if req.version == 0:
            detail = f"version {info.version}: no policy (the full mesh)"
        elif info.action == "clear":
            detail = f"version {req.version} (no policy) restored as version {info.version}"
        else:
            detail = f"version {req.version} restored as version {info.version}"
        action = "policy.clear" if info.action == "clear" else "policy.rollback"
        self.audit.record(action, "ok", actor, policy_version=info.version, detail=detail)
        return info

    async def set_node_tags(self, node_id: int, req: NodeTagsRequest) -> NodeInfo:
        before = self.nodes.get(node_id)
        info = await self._admin(
            "node.tag", lambda: super(AuditedControlPlane, self).set_node_tags(node_id, req), node_id
        )
        was = "its role" if before is None or before.tags is None else ", ".join(before.tags) or "none"
        now = "its role" if req.tags is None else ", ".join(sorted(set(req.tags))) or "none"
        self.audit.record(
            "node.tag", "ok", ADMIN, node_id=node_id, node_name=info.name, detail=f"tags {now} (were {was})"
        )
        return info

    async def rotate(self, node_id: int) -> RotationInfo:
        info = await self._admin(
            "key.rotate", lambda: super(AuditedControlPlane, self).rotate(node_id), node_id
        )
        self.audit.record(
            "key.rotate",
            "ok",
            ADMIN,
            node_id=node_id,
            node_name=info.name,
            detail=f"rotation {info.rotation_id} asked",
        )
        return info

    async def rotate_all(self) -> RotationProgress:
        progress = await self._admin("key.rotate_all", lambda: super(AuditedControlPlane, self).rotate_all())
        self.audit.record("key.rotate_all", "ok", ADMIN, detail=f"{len(progress.nodes)} nodes queued")
        return progress

    async def key_report(self, node_id: int, report: KeyReport) -> KeyReportAnswer:
        name = self.nodes[node_id].name if node_id in self.nodes else None
        before = self.nodes.get(node_id)
        try:
            answer = await super().key_report(node_id, report)
        except ApiError as e:
            if report.phase == "commit":
                self.audit.record(
                    "key.commit", "refused", f"node {name}", node_id=node_id, node_name=name, detail=e.detail
                )
            raise
        after = self.nodes.get(node_id)
        if report.phase == "commit" and after is not None and after is not before:
            self.audit.record(
                "key.commit",
                "ok",
                f"node {name}",
                node_id=node_id,
                node_name=name,
                detail=f"rotation {report.rotation_id}: new WireGuard key {after.wg_public_key}",
            )
        return answer

    async def tick(self) -> None:
        before = {r.node_id: r.rotation_id for r in self.rotations.active()}
        await super().tick()
        for node_id in self.nodes:
            r = self.rotations.get(node_id)
            name = self.nodes[node_id].name
            if node_id in before and not r.active and r.outcome == "timed_out":
                self.audit.record(
                    "key.timeout",
                    "failed",
                    "controller",
                    node_id=node_id,
                    node_name=name,
                    detail=f"rotation {before[node_id]} given up: the node never answered",
                )
            elif node_id not in before and r.active:
                self.audit.record(
                    "key.rotate",
                    "ok",
                    "controller",
                    node_id=node_id,
                    node_name=name,
                    detail=f"rotation {r.rotation_id} asked (schedule or rotate --all queue)",
                )


def _author(author: str) -> str:
    return ADMIN if author == ADMIN else f"{ADMIN} ({' '.join(author.split())[:100]})"
