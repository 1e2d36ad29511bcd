"""Admin reads from the lab's controller (nodes, topology), made from inside the underlay namespace
with the admin credential the controller keeps in the lab directory."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from lab.command import LabError
from lab.instance import Lab
from lab.underlay_http import request
from wire.api import NODES, TOPOLOGY
from wire.models import NodeInfo, Topology


def _admin_get(lab: Lab, path: str) -> bytes:
    """GET `path` on the controller with the admin credential, from inside the underlay."""
    try:
        credential = lab.layout.admin_credential_path.read_text().strip()
    except FileNotFoundError:
        raise LabError(
            f"no admin credential at {lab.layout.admin_credential_path}: is the controller up?"
        ) from None
    problems: list[str] = []
    for replica in lab.replicas:  # the first that answers, as an admin command does
        try:
            reply = request(
                lab.layout.underlay_namespace,
                "GET",
                f"{replica.url}{path}",
                bearer=credential,
                ca_file=lab.layout.controller_ca_path,
            )
        except OSError as e:
            problems.append(f"{replica.url}: {e}")
            continue
        if reply.status < 500:
            break
        problems.append(f"{replica.url}: answered {reply.status}")
    else:
        raise LabError(f"no controller answers: {'; '.join(problems)}")
    if reply.status != 200:
        raise LabError(f"GET {path} answered {reply.status}: {reply.body[:200].decode(errors='replace')}")
    return reply.body


def read_topology(lab: Lab, with_routes: bool = False) -> Topology:
    """GET /v1/topology: the controller's nodes and measured links; with `with_routes`, also every
    node's chosen routes (one GET ?source= per node: a lab has a handful)."""
    topo = _topology(lab, TOPOLOGY)
    if with_routes:
        for node in topo.nodes:
            topo.routes.update(_topology(lab, f"{TOPOLOGY}?source={node.node_id}").routes)
    return topo


def _topology(lab: Lab, path: str) -> Topology:
    body = _admin_get(lab, path)
    try:
        return Topology.model_validate_json(body)
    except ValidationError as e:
        raise LabError(
            f"GET {TOPOLOGY} returned something else than a topology: {e.errors()[0]['msg']}"
        ) from None


_NODE_LIST = TypeAdapter(list[NodeInfo])


def read_nodes(lab: Lab) -> list[NodeInfo]:
    """GET /v1/nodes: the enrolled nodes."""
    body = _admin_get(lab, NODES)
    try:
        return _NODE_LIST.validate_json(body)
    except ValidationError as e:
        raise LabError(
            f"GET {NODES} returned something else than a node list: {e.errors()[0]['msg']}"
        ) from None


def node_id(lab: Lab, name: str) -> int:
    """The controller's id of the node enrolled as host `name`."""
    for node in read_nodes(lab):
        if node.name == name:
            return node.node_id
    raise LabError(f"the controller has no node named {name!r}")
