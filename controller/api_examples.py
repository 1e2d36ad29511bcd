"""Examples shown in the OpenAPI document: one per request body and per successful response."""

from __future__ import annotations

from typing import Any

_WG = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
_WG2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
_ID = "Ao3g4vWMx1zqiUQ3aQ2pl2yQyqgmpkWu0pqHcQ5nbDc="
_ID2 = "2TBuEPmP5CQj6NhT6jwz4z1Xi7bGXhQvO8v0bXa7eBs="

ENROLL_REQUEST: dict[str, Any] = {
    "a new host": {
        "summary": "A host joins with a pre-auth key",
        "value": {
            "preauth_key": "wgm_pak_k3JX9w0yq1v8c2mZ4nQpL6tR0sUaVbWcXdYeZf1g2h3",
            "nonce": "q8V4m2Lr0cTz6YxN1bWs3A",
            "hostname": "web-1",
            "wg_public_key": _WG,
            "identity_public_key": _ID,
            "endpoints": ["198.18.0.2:51820"],
            "listen_port": 51820,
            "protocol_version": 2,
            # base64 Ed25519 signature over enroll_signing_bytes(request)
            "signature": "H3xH5N59iiOZaJwyeGkrFI9I0VsIxEpcmOe7VWa7xGCfOjutwHzGe/bmV1lRkQJbidInQxx63FxVdQ1dH8Qp+w==",
        },
    }
}

TLS_CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIU...(the controller CA, base64 DER)...\n-----END CERTIFICATE-----\n"

ENROLL_NONCE: dict[str, Any] = {"nonce": "q8V4m2Lr0cTz6YxN1bWs3A", "expires_in_s": 120}

ENROLL_RESPONSE: dict[str, Any] = {
    "node_id": 1,
    "name": "web-1",
    "tunnel_address": "100.64.0.1",
    "mesh_cidr": "100.64.0.0/10",
    "node_credential": "wgm_node_Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5",
    "protocol_version": 2,
}

NETMAP: dict[str, Any] = {
    "serial": 7,
    "node": {
        "node_id": 1,
        "name": "web-1",
        "role": "node",
        "tunnel_address": "100.64.0.1",
        "mesh_cidr": "100.64.0.0/10",
        "listen_port": 51820,
    },
    "peers": [
        {
            "node_id": 2,
            "name": "db-1",
            "role": "node",
            "wg_public_key": _WG2,
            "identity_public_key": _ID2,
            "tunnel_address": "100.64.0.2",
            "endpoints": ["198.18.0.3:51820"],
            "allowed_ips": ["100.64.0.2/32", "100.64.0.3/32"],
            "persistent_keepalive": 25,
        }
    ],
    "routes": [
        {"destination": 2, "destination_address": "100.64.0.2", "via": 2, "cost": 31.2},
        {"destination": 3, "destination_address": "100.64.0.3", "via": 2, "cost": 62.9},
    ],
    "forward": False,
    "protocol_version": 2,
}

NETMAP_DELTA: dict[str, Any] = {
    "kind": "delta",
    "serial": 7,
    "base_serial": 6,
    "node": NETMAP["node"],
    "forward": False,
    "peers_upserted": [NETMAP["peers"][0]],
    "peers_removed": [4],
    "routes_upserted": [NETMAP["routes"][1]],
    "routes_removed": [4],
    "protocol_version": 2,
}

LINK_REPORT: dict[str, Any] = {
    "direct links": {
        "summary": "One direct link measured, one peer currently relayed",
        "value": {
            "measurements": [
                {"peer_id": 2, "rtt_ms": 1.4, "loss": 0.0, "handshake_age_s": 12.0},
                {"peer_id": 3, "rtt_ms": None, "loss": None, "handshake_age_s": 412.0},
            ]
        },
    }
}

PREAUTH_REQUEST: dict[str, Any] = {
    "single use": {
        "summary": "One host, within an hour",
        "value": {"role": "node", "reusable": False, "expires_in_s": 3600},
    },
    "fleet": {
        "summary": "Many hosts, never expires",
        "value": {"role": "node", "reusable": True, "expires_in_s": None},
    },
}

PREAUTH_INFO: dict[str, Any] = {
    "id": 3,
    "role": "node",
    "reusable": False,
    "created_at": "2026-11-24T10:00:00Z",
    "expires_at": "2026-11-24T11:00:00Z",
    "revoked": False,
    "used_count": 0,
    "key": "wgm_pak_k3JX9w0yq1v8c2mZ4nQpL6tR0sUaVbWcXdYeZf1g2h3.9c1f0e6d3b2a4f5e8d7c6b5a49382716f5e4d3c2b1a09f8e7d6c5b4a3928170f",
}

REMOVED_NODE_INFO: dict[str, Any] = {
    "node_id": 7,
    "name": "old-host",
    "wg_public_key": _WG,
    "identity_public_key": _ID,
    "removed_at": "2026-01-02T03:04:05Z",
}

NODE_INFO: dict[str, Any] = {
    "node_id": 1,
    "name": "web-1",
    "role": "node",
    "wg_public_key": _WG,
    "identity_public_key": _ID,
    "tunnel_address": "100.64.0.1",
    "endpoints": ["198.18.0.2:51820"],
    "listen_port": 51820,
    "enrolled_at": "2026-11-24T10:00:00Z",
    "last_seen": "2026-11-24T10:05:00Z",
    "serial": 7,
    "key_created_at": "2026-11-24T10:00:00Z",
    "rotation": "idle",
}

KEY_REPORT: dict[str, Any] = {
    "prepare": {
        "summary": "the new key is made; about to switch",
        "value": {"rotation_id": 4, "phase": "prepare", "wg_public_key": _WG},
    },
    "commit": {
        "summary": "switched: record the key and push every peer's map",
        "value": {"rotation_id": 4, "phase": "commit", "wg_public_key": _WG},
    },
}

KEY_REPORT_ANSWER: dict[str, Any] = {"rotation_id": 4, "phase": "commit", "serial": 12}

ROTATION_INFO: dict[str, Any] = {
    "node_id": 1,
    "name": "web-1",
    "state": "requested",
    "rotation_id": 4,
    "key_created_at": "2026-11-24T10:00:00Z",
    "requested_at": "2026-12-01T10:00:00Z",
    "finished_at": None,
    "outcome": None,
    "queue_position": None,
}

ROTATION_PROGRESS: dict[str, Any] = {"campaign_running": False, "nodes": [ROTATION_INFO]}

TOPOLOGY: dict[str, Any] = {
    "nodes": [NODE_INFO],
    "edges": [{"a": 1, "b": 2, "weight": 11.2, "rtt_ms": 11.2, "loss": 0.0}],
    "routes": {"1": [{"destination": 2, "destination_address": "100.64.0.2", "via": 2, "cost": 31.2}]},
    "unmeasured_links": 0,
}

TOPOLOGY_DOT = 'graph wgmesh {\n  node [shape=box];\n  n1 [label="web-1\\n100.64.0.1"];\n  n2 [label="db-1\\n100.64.0.2"];\n  n1 -- n2 [label="11.2 ms", style=bold];\n}\n'


def error(detail: str) -> dict[str, Any]:
    return {"application/json": {"example": {"detail": detail}}}
