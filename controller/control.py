"""The control plane: every operation the API offers, on the mesh model and the store, without HTTP.

Rules:
- State changes happen in the order: check everything (raise `ApiError`, nothing changed) -> store
  transaction -> in-memory mesh -> persist the map serials -> wake the agents whose map changed.
  A crash between the store write and the serials is repaired at start-up (digests are compared).
- The store is never called on the event loop: every call goes through `self.db` (controller.store's
  `StoreCalls`, worker threads with a deadline), so a slow or lost database never holds up health,
  held long-polls or map renders. Operations that call the store are coroutines; those that change
  the view (a write, catching up) hold `self.lock` from their first read to their last change of the
  view, so they are serialized as they were when the whole plane ran on the loop. The view itself
  changes only on the loop, between awaits, so readers (polls, renders) always see it whole.
- A node is identified by its identity key: re-enrolling with the same identity key (proved by the
  signature) returns the same node with a fresh credential; the old credential stops working.
- Replicas: the plane's view is the store at mesh version `version`. Before a write it catches up
  (`sync`); a write that decides on the view (enroll, remove) names that version and, when another
  replica wrote first, catches up and decides again. `apply` takes the changes other replicas made,
  fed by controller.replication. While the database is unreachable the plane refuses writes (503)
  and says so in `health`, rather than serving a map it cannot keep current.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Literal

from controller.clock import Clock
from controller.credentials import (
    NODE_PREFIX,
    PREAUTH_PREFIX,
    credential_hash,
    ensure_admin_credential,
    new_secret,
    same_hash,
)
from controller.ipam import AddressHold, AddressHolds, AddressPool, PoolExhausted, unique_name
from controller.mesh import MapState, Mesh, MeshChange, edge
from controller.netmap import NodeCard
from controller.nonces import EnrollNonces
from controller.rotation import NodeRotation, RotationBook, RotationRefused
from controller.settings import Settings
from controller.store import (
    CLOSE_S,
    ChangeBatch,
    KeyRefused,
    NodeRecord,
    NodeWrite,
    PolicyRecord,
    PreAuthKeyRecord,
    RemovedNodeRecord,
    Snapshot,
    StaleVersion,
    Store,
    StoreCalls,
    StoreConflict,
    StoreUnavailable,
    key_refusal,
)
from wire import PROTOCOL_VERSION, api
from wire.models import (
    EnrollNonce,
    EnrollRequest,
    EnrollResponse,
    LinkReport,
    NodeInfo,
    NodeTagsRequest,
    PreAuthKeyInfo,
    PreAuthKeyRequest,
    RemovedNodeInfo,
    Topology,
)
from wire.policy import (
    PolicyCheckResult,
    PolicyDocument,
    PolicyError,
    PolicyInfo,
    PolicyRollbackRequest,
    PolicySetRequest,
    PolicyState,
    PolicyTestRequest,
    PolicyTestResult,
    Subject,
    decide,
    parse_policy,
    parse_port_spec,
    tags_of,
)
from wire.preauth import PreAuthKey, PreAuthKeyError, parse_preauth_key
from wire.rotation import KeyReport, KeyReportAnswer, RotationInfo, RotationProgress

log = logging.getLogger("wgmesh.controller")

LAST_SEEN_WRITE_EVERY = timedelta(seconds=60)
WRITE_ATTEMPTS = 8
"""How often a write decided on a stale view is decided again before giving up (503)."""


class ApiError(Exception):
    """A refused request: HTTP status and one line saying what is wrong."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def database_unreachable(problem: object) -> ApiError:
    """The 503 of a replica that cannot reach its database (`problem`: what went wrong)."""
    return ApiError(503, f"this controller cannot reach its database: {problem}")


def card_of(
    record: NodeRecord, policy: PolicyDocument | None = None, key_rotation: int | None = None
) -> NodeCard:
    """The node's card; under a policy it carries the node's tags (its key's role, or the policy's); a key
    rotation asked of the node goes in its own map."""
    tags = () if policy is None else tuple(sorted(tags_of(policy, record.name, record.own_tags)))
    return NodeCard(
        tags=tags,
        node_id=record.node_id,
        name=record.name,
        role=record.role,
        wg_public_key=record.wg_public_key,
        identity_public_key=record.identity_public_key,
        tunnel_address=record.tunnel_address,
        endpoints=record.endpoints,
        listen_port=record.listen_port,
        key_rotation=key_rotation,
    )


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        on_maps_changed: Callable[[Iterable[int]], None] = lambda _nodes: None,
        ca_pin: str | None = None,
    ) -> None:
        self.settings = settings
        self.ca_pin = ca_pin  # carried in every pre-auth key made here (None: operator certificates)
        self.store = store
        self.db = StoreCalls()
        self.lock = asyncio.Lock()
        """Held by whatever changes the view from the store (writes, catching up), across its awaits."""
        self.nonces = EnrollNonces(store)
        self.clock = clock
        self._wake = on_maps_changed
        self.changes = 0
        """Moves whenever what the plane shows may have changed: nodes, their keys and rotations, links
        and routes (not polls): what watchers such as the topology page wait for, instead of looking."""
        self.polls = 0
        """Moves with every poll (a node's `last_seen`)."""
        admin, _created = ensure_admin_credential(settings.state_dir)
        self._admin_hash = credential_hash(admin)
        self.pool = AddressPool(settings.mesh_cidr)
        self._unavailable: str | None = None
        self._policy_held: dict[int, int] = {}  # node -> policy version its agent last reported
        self._flagged: set[int] = set()  # nodes whose implausible link reports were logged (once each)
        # Start-up, before anything is served: the store is called directly.
        snapshot = store.load()
        store.save_rotations(self._load(snapshot, snapshot.maps))
        store.save_maps(self.mesh.initial.maps)
        self._last_seen = {n.node_id: n.last_seen for n in snapshot.nodes if n.last_seen}
        self._seen_written = dict(self._last_seen)
        # Bookkeeping that polls make, written by `tick` in one transaction each (one per poll would
        # cost thousands of transactions when every agent acknowledges a removal at once).
        self._seen_due: set[int] = set()  # nodes whose last_seen is due to be written
        self._releases: dict[int, int] = {}  # holder -> the serial it acknowledged (holds to release)
        self._seen_stored: dict[int, datetime] = {}  # last seen as the store had it (other replicas' polls)

    def _load(self, snapshot: Snapshot, maps: dict[int, MapState]) -> list[NodeRotation]:
        """Take `snapshot` as the view; the rotation records it lacks (for the caller to write)."""
        self.version = snapshot.version
        self.nodes: dict[int, NodeRecord] = {n.node_id: n for n in snapshot.nodes}
        self._by_credential = {n.credential_hash: n.node_id for n in snapshot.nodes}
        self._by_identity = {n.identity_public_key: n.node_id for n in snapshot.nodes}
        # node id -> (its record, the policy document, its NodeInfo's validated fixed part)
        self._infos: dict[int, tuple[NodeRecord, PolicyDocument | None, NodeInfo]] = {}
        self.holds = AddressHolds(snapshot.holds)
        self.policy: PolicyRecord | None = snapshot.policy
        self._doc = _doc_of(snapshot.policy)
        self.rotations = RotationBook(r for r in snapshot.rotations if r.node_id in self.nodes)
        undated = [
            r
            for n in snapshot.nodes
            if n.node_id not in self.rotations.records
            for r in self.rotations.enrolled(n.node_id, n.enrolled_at)
        ]
        self.mesh = Mesh(
            self.settings.mesh_cidr,
            self.settings.policy,
            self.settings.persistent_keepalive_s,
            (card_of(n, self._doc, self.rotations.requested_of(n.node_id)) for n in snapshot.nodes),
            snapshot.links,
            maps,
            version=snapshot.version,
            access=self._access(),
            samples=snapshot.samples,
        )
        self._highest_id = max([*self.nodes, getattr(self, "_highest_id", 0)])
        return undated

    # --- replicas ----------------------------------------------------------------------------------

    @property
    def unavailable(self) -> str | None:
        """Why the database cannot be used now (None: it can). Set by controller.replication; while
        set, writes are refused and store calls under way or asked for end at once (503)."""
        return self._unavailable

    @unavailable.setter
    def unavailable(self, problem: str | None) -> None:
        if problem != self._unavailable:
            self._unavailable = problem
            self.db.outage(problem)

    def health(self) -> str | None:
        """None when this replica can serve; else one line saying why not."""
        return self.unavailable

    async def sync(self) -> None:
        """Catch up with what other replicas wrote (a query; ApiError 503 when the database is away).
        The caller holds `self.lock`."""
        try:
            batch = await self.db(self.store.changes_since, self.version)
            await self.apply(batch)
        except StoreUnavailable as e:
            # Health is the follower's to judge (it also sees the database come back).
            raise database_unreachable(e) from None

    async def apply(self, batch: ChangeBatch | None) -> None:
        """Take a batch of others' changes read after `self.version` (None: the log no longer reaches
        back that far: reload everything). A batch read from an older version is ignored. The caller
        holds `self.lock`."""
        if batch is None:
            await self._resync()
            return
        self._apply_batch(batch)

    def _apply_batch(self, batch: ChangeBatch) -> None:
        if batch.since != self.version or batch.version <= self.version:
            return
        self.mesh.version = batch.version
        maps: dict[int, MapState] = {}
        wake: list[int] = []
        for node_id in batch.removed:
            record = self.nodes.pop(node_id, None)
            if record is None:
                continue
            self._forget(record)
            self.rotations.forget(node_id)
            maps.update(self.mesh.remove(node_id).maps)
            wake.append(node_id)
        for record in batch.nodes:
            maps.update(self._take(record))
        for rotation in batch.rotations:
            if rotation.node_id in self.nodes:
                self.rotations.take(rotation)
                maps.update(self.mesh.upsert(self._card(rotation.node_id)).maps)
        maps.update(self.mesh.set_links(batch.links, batch.samples).maps)
        if batch.policy is not None and batch.policy != self.policy:
            self.policy = batch.policy
            self._doc = _doc_of(batch.policy)
            cards = [self._card(n) for n in self.nodes]
            maps.update(self.mesh.set_policy(self._access(), cards).maps)
        self.holds = AddressHolds(batch.holds)
        self.version = batch.version
        # The replica that made the change keeps the serials (every replica gives them the same):
        # writing them again here would cost each replica a row per node per change.
        self._changed([*maps, *wake])

    async def _resync(self) -> None:
        snapshot = await self.db(self.store.load)
        before = {n: self.mesh.map_state(n) for n in self.nodes}
        self.db.background(self.store.save_rotations, self._load(snapshot, before))
        changed = [n for n in before if n not in self.nodes or self.mesh.map_state(n) != before[n]]
        self._persist_maps(self.mesh.initial.maps)
        self._changed([*changed, *self.mesh.initial.maps])

    def _take(self, record: NodeRecord) -> dict[int, MapState]:
        """Make `record` (new or changed) part of the view; the maps that changed."""
        existing = self.nodes.get(record.node_id)
        if existing is not None:
            self._by_credential.pop(existing.credential_hash, None)
        self.nodes[record.node_id] = record
        self._highest_id = max(self._highest_id, record.node_id)
        self._by_credential[record.credential_hash] = record.node_id
        self._by_identity[record.identity_public_key] = record.node_id
        return self.mesh.upsert(self._card(record.node_id)).maps

    def _forget(self, record: NodeRecord) -> None:
        self._by_credential.pop(record.credential_hash, None)
        self._by_identity.pop(record.identity_public_key, None)
        self._last_seen.pop(record.node_id, None)
        self._seen_written.pop(record.node_id, None)
        self._seen_due.discard(record.node_id)
        self._releases.pop(record.node_id, None)
        self._policy_held.pop(record.node_id, None)
        self._flagged.discard(record.node_id)
        self._infos.pop(record.node_id, None)
        self.holds.drop_holder(record.node_id)

    def _writable(self) -> None:
        if self.unavailable is not None:
            raise database_unreachable(self.unavailable)

    def _persist_maps(self, maps: dict[int, MapState]) -> None:
        # Serials are a convenience across restarts; losing one write costs agents a full map.
        if maps:
            self.db.background(self.store.save_maps, dict(maps))

    # --- authentication ----------------------------------------------------------------------------

    def known_node(self, credential: str) -> int | None:
        """The node with this credential in the view as it is (no catching up)."""
        return self._by_credential.get(credential_hash(credential))

    async def node_of(self, credential: str) -> int | None:
        """The node with this credential; one it does not know yet may have enrolled through another
        replica a moment ago, so a miss catches up once before answering."""
        hashed = credential_hash(credential)
        node = self._by_credential.get(hashed)
        if node is None and self.unavailable is None:
            with contextlib.suppress(ApiError):
                async with self.lock:
                    await self.sync()
            node = self._by_credential.get(hashed)
        return node

    async def removed_node_of(self, credential: str) -> RemovedNodeInfo | None:
        """The removed node whose credential this was (asked only of a credential no node has)."""
        try:
            record = await self.db(self.store.removed_by_credential, credential_hash(credential))
        except StoreUnavailable:
            return None
        return None if record is None else _removed_info(record)

    def is_admin(self, credential: str) -> bool:
        return same_hash(credential_hash(credential), self._admin_hash)

    # --- enrollment --------------------------------------------------------------------------------

    async def enroll_nonce(self) -> EnrollNonce:
        self._writable()
        nonce = await self.db(self.nonces.issue, self.clock.now())
        return EnrollNonce(nonce=nonce, expires_in_s=int(self.nonces.ttl.total_seconds()))

    async def enroll(self, req: EnrollRequest, signing_bytes: bytes) -> EnrollResponse:
        await self._check_preauth_key(req)
        if req.protocol_version != PROTOCOL_VERSION:
            raise ApiError(
                400,
                f"protocol version {req.protocol_version} is not supported; this controller speaks {PROTOCOL_VERSION}",
            )
        try:
            signature = base64.b64decode(req.signature, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(403, "signature: not valid base64, so it does not verify") from None
        if len(signature) != 64 or not req.identity_public_key.verify(signature, signing_bytes):
            raise ApiError(
                403,
                "signature does not verify against identity_public_key "
                "(sign wire.models.enroll_signing_bytes(request) with the identity private key)",
            )
        try:
            taken = await self.db(self.nonces.take, req.nonce, self.clock.now())
        except StoreUnavailable as e:
            raise database_unreachable(e) from None
        if not taken:
            raise ApiError(
                403,
                "enrollment nonce is unknown, already used or expired: "
                f"sign a fresh one from POST {api.ENROLL_NONCE}",
            )
        identity = req.identity_public_key.base64()
        wg_key = req.wg_public_key.base64()
        credential = new_secret(NODE_PREFIX)
        async with self.lock:
            record = await self._enroll(req, identity, wg_key, credential)
        return EnrollResponse(
            node_id=record.node_id,
            name=record.name,
            tunnel_address=record.tunnel_address,
            mesh_cidr=self.settings.mesh_cidr,
            node_credential=credential,
        )

    async def _enroll(self, req: EnrollRequest, identity: str, wg_key: str, credential: str) -> NodeRecord:
        self._writable()
        now = self.clock.now()
        for _attempt in range(WRITE_ATTEMPTS):
            await self.sync()
            write = self._enroll_write(req, identity, wg_key, credential)
            book = self.rotations.copy()  # the node's key is as old as now, in the same transaction
            try:
                record = await self.db(
                    self.store.enroll,
                    credential_hash(_secret_of(req.preauth_key)),
                    write,
                    now,
                    at_version=self.version,
                    rotations=functools.partial(book.enrolled, now=now),
                )
            except StaleVersion:
                continue
            except KeyRefused as e:
                raise ApiError(403, str(e)) from None
            except StoreConflict as e:
                raise ApiError(409, str(e)) from None
            except StoreUnavailable as e:
                raise database_unreachable(e) from None
            break
        else:
            raise ApiError(503, "the mesh changed on every attempt to enroll; try again")
        self.version += 1
        self.mesh.version = self.version
        self.rotations = book
        self._apply(MeshChange(maps=self._take(record)))
        return record

    async def _check_preauth_key(self, req: EnrollRequest) -> None:
        """The pre-auth key is the enrollment's credential: it is checked before anything else, so a
        caller without a usable key learns nothing about the mesh (the store checks it again, and
        uses it, atomically)."""
        try:
            key = await self.db(self.store.find_preauth_key, credential_hash(_secret_of(req.preauth_key)))
        except StoreUnavailable as e:
            raise database_unreachable(e) from None
        if key is None:
            raise ApiError(401, "unknown pre-auth key")
        refusal = key_refusal(key, self.clock.now())
        if refusal is None and not key.reusable and key.used_count > 0:
            existing = self.nodes.get(self._by_identity.get(req.identity_public_key.base64(), 0))
            if existing is None or existing.preauth_key_id != key.id:
                refusal = f"single-use pre-auth key {key.id} was already used"
        if refusal is not None:
            raise ApiError(403, refusal)

    def _enroll_write(self, req: EnrollRequest, identity: str, wg_key: str, credential: str) -> NodeWrite:
        """The node row this enrollment writes, decided on the current view (ApiError when it cannot)."""
        existing = self.nodes.get(self._by_identity.get(identity, 0))
        for other in self.nodes.values():
            if other.wg_public_key == wg_key and other is not existing:
                raise ApiError(
                    409, f"WireGuard public key already belongs to node {other.node_id} ({other.name})"
                )
        if existing is not None and existing.hostname == req.hostname:
            name = existing.name
        else:
            taken = {n.name for n in self.nodes.values() if n is not existing}
            name = unique_name(req.hostname, taken)
        if existing is not None:
            address = existing.tunnel_address
        else:
            taken_addresses = {n.tunnel_address for n in self.nodes.values()} | self.holds.held()
            try:
                address = self.pool.first_free(taken_addresses)
            except PoolExhausted as e:
                raise ApiError(409, str(e)) from None
        return NodeWrite(
            node_id=existing.node_id if existing else None,
            name=name,
            hostname=req.hostname,
            wg_public_key=wg_key,
            identity_public_key=identity,
            tunnel_address=address,
            endpoints=tuple(dict.fromkeys(req.endpoints)),
            listen_port=req.listen_port,
            credential_hash=credential_hash(credential),
        )

    # --- maps and measurements ---------------------------------------------------------------------

    def has_node(self, node_id: int) -> bool:
        return node_id in self.nodes

    def serial(self, node_id: int) -> int:
        return self.mesh.serial(node_id)

    def netmap_json(self, node_id: int) -> bytes:
        return self.mesh.render(node_id)

    def netmap_update_json(self, node_id: int, since: int) -> bytes:
        """For a node holding map `since` that asked for deltas: a NetMapDelta, or the full map."""
        return self.mesh.render_update(node_id, since)

    def polled(self, node_id: int, since: int, policy_version: int | None = None) -> None:
        """The node asked for maps newer than `since`: it is alive and holds map `since` (and enforces
        `policy_version`, when it says)."""
        if policy_version is not None:
            self._policy_held[node_id] = policy_version
        now = self.clock.now()
        self._last_seen[node_id] = now
        self.polls += 1
        if self.unavailable is not None:
            return
        written = self._seen_written.get(node_id)
        if written is None or now - written >= LAST_SEEN_WRITE_EVERY:
            self._seen_due.add(node_id)
        if 0 < since <= self.mesh.serial(node_id) and self.holds.acknowledge(node_id, since):
            self._releases[node_id] = max(since, self._releases.get(node_id, 0))

    async def write_bookkeeping(self) -> None:
        """Write what polls noted (last seen, acknowledged holds). Bookkeeping only: a failed write is
        tried again next time, and holding an address longer than needed is always safe."""
        if self._releases:
            released, self._releases = self._releases, {}
            try:
                await self.db(self.store.release_holds, released)
            except StoreUnavailable:
                for h, serial in released.items():
                    self._releases[h] = max(serial, self._releases.get(h, 0))
                return
        due = {n: self._last_seen[n] for n in self._seen_due if n in self._last_seen}
        self._seen_due.clear()
        if due:
            try:
                await self.db(self.store.touch, due)
            except StoreUnavailable:
                self._seen_due.update(due)
                return
            self._seen_written.update(due)

    async def report(self, node_id: int, report: LinkReport) -> None:
        # A report that does not fit the mesh (its own id, a peer twice, a node that never existed) is
        # 409: well formed, as the document says, but in conflict with who the caller and its peers are.
        seen: set[int] = set()
        for m in report.measurements:
            if m.peer_id == node_id:
                raise ApiError(409, f"measurements: peer_id {m.peer_id} is the reporting node itself")
            if m.peer_id in seen:
                raise ApiError(409, f"measurements: peer_id {m.peer_id} appears more than once")
            seen.add(m.peer_id)
        # Ids are never reused: an id below the highest one known belonged to a node that was removed,
        # which an agent may still measure until its next map arrives. Those are skipped; an id that
        # never existed is a mistake.
        unknown = sorted(p for p in seen - self.nodes.keys() if p > self._highest_id)
        if unknown:
            raise ApiError(
                409, f"measurements: unknown peer ids {', '.join(map(str, unknown[:10]))} (no such nodes)"
            )
        async with self.lock:
            await self._report(node_id, report)

    async def _report(self, node_id: int, report: LinkReport) -> None:
        self._writable()
        await self.sync()
        current = [m for m in report.measurements if m.peer_id in self.nodes]
        if node_id not in self.nodes:
            return  # removed through another replica meanwhile
        self.mesh.version = self.version + 1
        change = self.mesh.report(node_id, current, self.clock.now())
        if change.flags and node_id not in self._flagged:
            self._flagged.add(node_id)
            flag = change.flags[0]
            log.warning(
                "node %d (%s) sent an implausible link report about node %d: %s; it cannot lower a "
                "link's weight (counted in `wgmesh nodes show`, logged once per node)",
                node_id,
                self.nodes[node_id].name,
                flag.peer,
                flag.reason,
            )
        if change.links or change.samples:
            try:
                written = await self.db(self.store.save_links, change.links, change.samples)
            except StoreUnavailable as e:
                raise database_unreachable(e) from None
            # Another replica's change may have come first: then catching up takes this one too.
            if written == self.version + 1:
                self.version = written
        self._persist_maps(change.maps)
        self._changed(change.maps)

    # --- admin -------------------------------------------------------------------------------------

    def node_info(self, node_id: int) -> NodeInfo:
        if node_id not in self.nodes:
            raise ApiError(404, f"no node {node_id}")
        record = self.nodes[node_id]
        kept = self._infos.get(node_id)
        if kept is None or kept[0] is not record or kept[1] is not self._doc:
            # validated once per record and policy; what moves is put in without validation
            card = card_of(record, self._doc)
            fixed = {
                f.name: getattr(card, f.name) for f in dataclasses.fields(card) if f.name != "key_rotation"
            }
            fixed["tags"] = sorted(tags_of(self._doc, record.name, record.own_tags))
            kept = (record, self._doc, NodeInfo(**fixed, **self._node_state(node_id)))
            self._infos[node_id] = kept
        return kept[2].model_copy(update=self._node_state(node_id))

    def _node_state(self, node_id: int) -> dict[str, Any]:
        """The NodeInfo fields that change without the node's record changing."""
        record = self.nodes[node_id]
        rotation = self.rotations.get(node_id)
        return {
            "enrolled_at": record.enrolled_at,
            "last_seen": _latest(self._last_seen.get(node_id), self._seen_stored.get(node_id)),
            "serial": self.mesh.serial(node_id),
            "key_created_at": rotation.key_created_at,
            "rotation": rotation.state,
            "policy_version": self._policy_held.get(node_id),
            "policy_version_sent": self.mesh.policy_version(node_id),
            "implausible_link_reports": self.mesh.implausible_reports(node_id),
        }

    def node_infos(self) -> list[NodeInfo]:
        return [self.node_info(n) for n in sorted(self.nodes)]

    async def caught_up(self, last_seen: bool = False) -> None:
        """Catch up with what the other replicas wrote, before an admin read: any replica shows what
        was written anywhere before the read (a database away leaves the view as it is); `last_seen`:
        and when each node was seen by any replica (as written: within LAST_SEEN_WRITE_EVERY)."""
        if self.unavailable is not None:
            return
        with contextlib.suppress(ApiError):
            async with self.lock:
                await self.sync()
        if last_seen:
            with contextlib.suppress(StoreUnavailable):
                self._seen_stored = await self.db(self.store.last_seen)

    async def remove_node(self, node_id: int) -> None:
        async with self.lock:
            await self._remove_node(node_id)

    async def _remove_node(self, node_id: int) -> None:
        self._writable()
        for _attempt in range(WRITE_ATTEMPTS):
            await self.sync()
            record = self.nodes.get(node_id)
            if record is None:
                raise ApiError(404, f"no node {node_id}")
            # Every other node holds the address until it acknowledges a map without it: the first
            # such map has at least the serial this removal's version gives.
            holds = [
                AddressHold(record.tunnel_address, n, self.version + 1) for n in self.nodes if n != node_id
            ]
            book = self.rotations.copy()
            moved_on = book.removed(node_id, self.clock.now())
            try:
                gone = await self.db(
                    self.store.remove_node,
                    node_id,
                    holds,
                    self.clock.now(),
                    at_version=self.version,
                    rotations=moved_on,
                )
            except StaleVersion:
                continue
            except StoreUnavailable as e:
                raise database_unreachable(e) from None
            if not gone:
                raise ApiError(404, f"no node {node_id}")
            break
        else:
            raise ApiError(503, "the mesh changed on every attempt to remove the node; try again")
        self.version += 1
        self.mesh.version = self.version
        del self.nodes[node_id]
        self._forget(record)
        change = self.mesh.remove(node_id)
        for h in holds:
            self.holds.hold(h.address, {h.holder: h.min_serial})
        self.rotations = book
        for r in moved_on:  # a running `rotate --all` asks the next node
            if r.node_id in self.nodes:
                change.maps.update(self.mesh.upsert(self._card(r.node_id)).maps)
        self._apply(change, also_wake=[node_id])

    async def set_node_tags(self, node_id: int, req: NodeTagsRequest) -> NodeInfo:
        """An admin's tags for the node; maps change where the policy in force now says otherwise."""
        async with self.lock:
            self._writable()
            await self.sync()
            if node_id not in self.nodes:
                raise ApiError(404, f"no node {node_id}")
            try:
                record = await self.db(self.store.set_tags, node_id, req.tags)
                version = await self.db(self.store.version)
            except KeyError:
                raise ApiError(404, f"no node {node_id}") from None
            except StoreUnavailable as e:
                raise database_unreachable(e) from None
            self.mesh.version = self.version + 1
            if version == self.version + 1:
                self.version += 1  # else another replica's change came first: catching up takes both
            self._apply(MeshChange(maps=self._take(record)))
            return self.node_info(node_id)

    async def removed_nodes(self) -> list[RemovedNodeInfo]:
        return [_removed_info(r) for r in await self.db(self.store.removed_nodes)]

    async def allow_node(self, node_id: int) -> RemovedNodeInfo:
        """Let a removed node's keys enroll again (it comes back as a new node). 404: not removed."""
        self._writable()
        try:
            record = await self.db(self.store.allow_removed, node_id)
        except StoreUnavailable as e:
            raise database_unreachable(e) from None
        if record is None:
            raise ApiError(404, f"no removed node {node_id}")
        return _removed_info(record)

    # --- key rotation ------------------------------------------------------------------------------

    async def rotate(self, node_id: int) -> RotationInfo:
        """Ask one node to rotate its key (through its map). 404 unknown node; 409 already rotating."""
        if node_id not in self.nodes:
            raise ApiError(404, f"no node {node_id}")
        neighbours = [n for n in self.nodes if n != node_id]  # every node's map holds every other one
        now = self.clock.now()
        await self._rotation_step(lambda book: book.request(node_id, neighbours, now))
        return self.rotation_info(node_id)

    async def rotate_all(self) -> RotationProgress:
        """Queue every node and rotate them one at a time. 409 while any rotation runs."""
        now = self.clock.now()
        await self._rotation_step(lambda book: book.request_all(sorted(self.nodes), now))
        return self.rotation_progress()

    def rotation_info(self, node_id: int) -> RotationInfo:
        r = self.rotations.get(node_id)
        return RotationInfo(
            node_id=node_id,
            name=self.nodes[node_id].name,
            state=r.state,
            rotation_id=r.rotation_id,
            key_created_at=r.key_created_at,
            requested_at=r.requested_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            queue_position=r.queue_position,
        )

    def rotation_progress(self) -> RotationProgress:
        return RotationProgress(
            campaign_running=self.rotations.campaign_running(),
            nodes=[self.rotation_info(n) for n in sorted(self.nodes)],
        )

    async def key_report(self, node_id: int, report: KeyReport) -> KeyReportAnswer:
        """The node's new key: kept as pending ("prepare") or recorded and pushed ("commit")."""
        key = report.wg_public_key.base64()
        for other in self.nodes.values():
            if other.wg_public_key == key and other.node_id != node_id:
                raise ApiError(409, f"WireGuard public key already belongs to node {other.node_id}")
        now = self.clock.now()
        if report.phase == "prepare":
            await self._rotation_step(lambda book: book.prepare(node_id, report.rotation_id, key))
        else:
            await self._rotation_step(
                lambda book: book.commit(node_id, report.rotation_id, key, now), new_key=(node_id, key)
            )
        return KeyReportAnswer(
            rotation_id=report.rotation_id, phase=report.phase, serial=self.mesh.serial(node_id)
        )

    async def tick(self) -> None:
        """Periodic: write the polls' bookkeeping; give up rotations of nodes that never answered;
        start the scheduled one."""
        await self.write_bookkeeping()
        now = self.clock.now()
        interval = self.settings.key_rotation_interval_s

        def step(book: RotationBook) -> list[NodeRotation]:
            changed = book.tick(now)
            if interval:
                changed += book.due(sorted(self.nodes), now, timedelta(seconds=interval))
            return changed

        # Every replica ticks; the version check lets one of them decide. A database away: next tick.
        with contextlib.suppress(ApiError, StoreUnavailable):
            await self._rotation_step(step)

    async def create_preauth_key(self, req: PreAuthKeyRequest) -> PreAuthKeyInfo:
        key = new_secret(PREAUTH_PREFIX)
        now = self.clock.now()
        expires = None if req.expires_in_s is None else now + timedelta(seconds=req.expires_in_s)
        record = await self.db(
            self.store.create_preauth_key,
            credential_hash(key),
            req.role,
            req.reusable,
            now,
            expires,
            req.tags,
        )
        return _key_info(record, PreAuthKey(key, self.ca_pin).text())

    async def preauth_keys(self) -> list[PreAuthKeyInfo]:
        return [_key_info(r) for r in await self.db(self.store.list_preauth_keys)]

    async def revoke_preauth_key(self, key_id: int) -> None:
        if await self.db(self.store.revoke_preauth_key, key_id) is None:
            raise ApiError(404, f"no pre-auth key {key_id}")

    def topology(self, source: int | None = None) -> Callable[[], bytes]:
        """The topology as it is now: nodes and links, with `source`'s routes when named (404: no such
        node). What it needs is taken now, in O(nodes + links); the JSON is made by the function this
        returns, which touches nothing of the plane and may run in another thread."""
        if source is not None and source not in self.nodes:
            raise ApiError(404, f"no node {source}")
        nodes = self.node_infos()
        edges = self.mesh.edge_rows()
        unmeasured = self.mesh.unmeasured_links(len(edges))
        routes = {} if source is None else {source: self.mesh.routes_of(source)}

        def render() -> bytes:
            return (
                Topology.model_construct(
                    nodes=nodes,
                    edges=[edge(e) for e in edges],
                    routes=routes,
                    unmeasured_links=unmeasured,
                )
                .model_dump_json()
                .encode()
            )

        return render

    def topology_dot(self) -> Callable[[], str]:
        """The Graphviz text of the topology: what it needs is taken now, the text is made by the
        function this returns (safe in another thread)."""
        used = self.mesh.link_use()
        nodes = [
            (n, self.nodes[n].name, self.nodes[n].tunnel_address, self.mesh.forwards(n))
            for n in sorted(self.nodes)
        ]
        edges = [(a, b, weight, rtt, used(a, b)) for a, b, weight, rtt, _loss in self.mesh.edge_rows()]

        def render() -> str:
            lines = ["graph wgmesh {", "  node [shape=box];"]
            for n, name, address, forwards in nodes:
                relay = ", peripheries=2" if forwards else ""
                lines.append(f'  n{n} [label="{name}\\n{address}"{relay}];')
            for a, b, weight, rtt, bold in edges:
                label = f"{weight:g}" if rtt is None else f"{rtt:g} ms"
                lines.append(f'  n{a} -- n{b} [label="{label}", style={"bold" if bold else "dashed"}];')
            lines.append("}")
            return "\n".join(lines) + "\n"

        return render

    # --- policy ------------------------------------------------------------------------------------

    def _access(self) -> tuple[PolicyDocument, int] | None:
        return None if self._doc is None or self.policy is None else (self._doc, self.policy.version)

    def policy_state(self) -> PolicyState:
        return PolicyState(policy=None if self.policy is None else _policy_info(self.policy, with_text=True))

    def check_policy(self, req: PolicySetRequest) -> PolicyCheckResult:
        try:
            parse_policy(req.text, req.source)
        except PolicyError as e:
            return PolicyCheckResult(ok=False, problems=e.problems)
        return PolicyCheckResult(ok=True)

    async def set_policy(self, req: PolicySetRequest) -> PolicyInfo:
        """A new version; a document with any problem is refused whole and the one in force stays."""
        try:
            doc = parse_policy(req.text, req.source)
        except PolicyError as e:
            raise ApiError(422, "policy refused, the one in force stays: " + "; ".join(e.problems)) from None
        return await self._put_policy(doc, req.text, req.author, "set", None)

    async def rollback_policy(self, req: PolicyRollbackRequest) -> PolicyInfo:
        """Version `req.version` again, as a new version; 0 (or a version that was a clear): no policy."""
        if req.version == 0:
            return await self._put_policy(None, "", req.author, "clear", 0)
        old = next((r for r in await self.db(self.store.policy_history) if r.version == req.version), None)
        if old is None:
            raise ApiError(404, f"no policy version {req.version}")
        if old.action == "clear":
            return await self._put_policy(None, "", req.author, "clear", old.version)
        return await self._put_policy(
            parse_policy(old.text, f"version {old.version}"), old.text, req.author, "rollback", old.version
        )

    async def policy_history(self) -> list[PolicyInfo]:
        return [_policy_info(r, with_text=False) for r in await self.db(self.store.policy_history)]

    def test_policy(self, req: PolicyTestRequest) -> PolicyTestResult:
        src, dst = self._policy_subject(req.source), self._policy_subject(req.destination)
        protocol = port = None
        if req.port is not None:
            text = req.port if "/" in req.port or not req.port.isdigit() else f"tcp/{req.port}"
            try:
                spec = parse_port_spec(text)
            except ValueError as e:
                raise ApiError(422, f"port: {e}") from None
            if spec.protocol == "any" or (spec.protocol in ("tcp", "udp") and spec.first != spec.last):
                raise ApiError(422, f"port: {req.port!r}: name one port ('8000', 'udp/53') or 'icmp'")
            protocol, port = spec.protocol, (spec.first or None)
        decision = decide(self._doc, src, dst, protocol, port)
        return PolicyTestResult(
            allowed=decision.allowed,
            rule=decision.rule,
            version=None if self._access() is None or self.policy is None else self.policy.version,
        )

    def _policy_subject(self, name_or_id: str) -> Subject:
        record = next((r for r in self.nodes.values() if r.name == name_or_id), None)
        if record is None and name_or_id.isascii() and name_or_id.isdigit():  # not '³'
            record = self.nodes.get(int(name_or_id))
        if record is None:
            raise ApiError(404, f"no node named {name_or_id!r}")
        return Subject(record.name, tags_of(self._doc, record.name, record.own_tags))

    async def _put_policy(
        self, doc: PolicyDocument | None, text: str, author: str, action: str, restored: int | None
    ) -> PolicyInfo:
        """Store a new version (`doc` None: a clear, no policy) and put it in force."""
        async with self.lock:
            self._writable()
            await self.sync()
            record = await self.db(self.store.add_policy, text, author, action, restored, self.clock.now())
            version = await self.db(self.store.version)
            self.mesh.version = self.version + 1
            if version == self.version + 1:
                self.version += 1  # else another replica's change came first: catching up takes both
            self.policy, self._doc = record, doc
            cards = [card_of(n, doc, self.rotations.requested_of(n.node_id)) for n in self.nodes.values()]
            self._apply(self.mesh.set_policy(self._access(), cards))
            return _policy_info(record, with_text=False)

    def close(self) -> None:
        """Write what is left of the bookkeeping and close the store (at shutdown: this blocks, at most
        about 2 * CLOSE_S; a database that does not answer is left behind, in daemon threads)."""
        self.db.close()
        releases = dict(self._releases)
        pending = {n: t for n, t in self._last_seen.items() if t and self._seen_written.get(n) != t}

        def last_writes() -> None:
            with contextlib.suppress(StoreUnavailable):
                if self.unavailable is None:
                    if releases:
                        self.store.release_holds(releases)
                    self.store.touch(pending)
            self.store.close()

        done = threading.Thread(target=last_writes, name="wgmesh-store-close", daemon=True)
        done.start()
        done.join(CLOSE_S)
        if done.is_alive():
            log.warning(
                "the database did not answer within %g s at shutdown: last bookkeeping not written", CLOSE_S
            )

    # --- internals ---------------------------------------------------------------------------------

    def _card(self, node_id: int) -> NodeCard:
        return card_of(self.nodes[node_id], self._doc, self.rotations.requested_of(node_id))

    async def _rotation_step(
        self, step: Callable[[RotationBook], list[NodeRotation]], new_key: tuple[int, str] | None = None
    ) -> None:
        """Decide on a copy of the rotation book and keep it only if its records commit at the version
        this view is at (else catch up and decide again), so a decision is made once across replicas;
        then give each changed node's map its rotation request. A refusal is given only on a view
        that has caught up (another replica may have moved the rotation on a moment ago). `new_key`:
        a commit, whose node key is written in the same transaction."""
        async with self.lock:
            await self._rotation_step_locked(step, new_key)

    async def _rotation_step_locked(
        self, step: Callable[[RotationBook], list[NodeRotation]], new_key: tuple[int, str] | None
    ) -> None:
        self._writable()
        synced = False
        for _attempt in range(WRITE_ATTEMPTS):
            book = self.rotations.copy()
            try:
                changed = step(book)
            except RotationRefused as e:
                if synced:
                    raise ApiError(e.status, e.detail) from None
                await self.sync()
                synced = True
                continue
            if not changed:
                return
            try:
                if new_key is not None:
                    record = await self.db(self.store.record_key, *new_key, changed, at_version=self.version)
                    version = self.version + 1
                else:
                    version = await self.db(self.store.save_rotations, changed, at_version=self.version)
            except StaleVersion:
                await self.sync()
                synced = True
                continue
            except StoreConflict as e:
                raise ApiError(409, str(e)) from None
            except KeyError:
                raise ApiError(404, f"no node {new_key[0] if new_key else '?'}") from None
            break
        else:
            raise ApiError(503, "the mesh changed on every attempt to record the rotation; try again")
        self.rotations = book
        if version != self.version:
            self.version = self.mesh.version = version
        if new_key is not None:
            self.nodes[record.node_id] = record
        for r in changed:
            if r.node_id in self.nodes:
                self._apply(self.mesh.upsert(self._card(r.node_id)))

    def _changed(self, nodes: Iterable[int]) -> None:
        """The view changed (maps of `nodes` among it): tell the watchers, wake those nodes' agents."""
        self.changes += 1
        self._wake(nodes)

    def _apply(self, change: MeshChange, also_wake: Iterable[int] = ()) -> None:
        """A change this replica already committed: persist the serials, wake the agents."""
        self._persist_maps(change.maps)
        self._changed([*change.maps, *also_wake])


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _doc_of(record: PolicyRecord | None) -> PolicyDocument | None:
    """The document a stored version puts in force; None: none (never set, or cleared)."""
    if record is None or record.action == "clear":
        return None
    return parse_policy(record.text, "stored policy")


def _policy_info(r: PolicyRecord, with_text: bool) -> PolicyInfo:
    action: Literal["set", "rollback", "clear"] = (
        "rollback" if r.action == "rollback" else "clear" if r.action == "clear" else "set"
    )
    return PolicyInfo(
        version=r.version,
        created_at=r.created_at,
        author=r.author,
        action=action,
        restored=r.restored,
        text=r.text if with_text and action != "clear" else None,
    )


def _removed_info(r: RemovedNodeRecord) -> RemovedNodeInfo:
    return RemovedNodeInfo.model_validate(
        {
            "node_id": r.node_id,
            "name": r.name,
            "wg_public_key": r.wg_public_key,
            "identity_public_key": r.identity_public_key,
            "removed_at": r.removed_at,
        }
    )


def _secret_of(preauth_key: str) -> str:
    """The part of a pre-auth key the store knows (its hash): the text before a CA pin."""
    try:
        return parse_preauth_key(preauth_key).secret
    except PreAuthKeyError:
        return preauth_key  # not a key this controller made: refused by the store like any unknown key


def _key_info(r: PreAuthKeyRecord, key: str | None = None) -> PreAuthKeyInfo:
    return PreAuthKeyInfo(
        id=r.id,
        role=r.role,
        reusable=r.reusable,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked=r.revoked,
        used_count=r.used_count,
        tags=None if r.tags is None else list(r.tags),
        key=key,
    )
