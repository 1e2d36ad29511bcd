"""wire: the protocol models shared by agent and controller. Pydantic models only; no I/O.

PROTOCOL_VERSION history (one integer, bumped on any incompatible change):
  1 (2026-11-24): enrollment, bearer node credential, network map with long-poll serial, link reports,
                  admin views of nodes, pre-auth keys and topology.
  1 (2026-11-24, additive): `GET /v1/netmap?delta=1` may answer a NetMapDelta (kind "delta") against
                  the serial named in `since`; NetMap gains `kind` ("full", absent: full). Clients that
                  do not send delta=1 get the same answers as before, so the version stays 1.
  1 (2026-12-01, additive): key rotation (wire.rotation). SelfNode gains `key_rotation` (absent: no
                  rotation asked), NodeInfo gains `key_created_at` and `rotation`; new routes
                  POST /v1/key, POST /v1/nodes/{id}/rotate, POST /v1/nodes/rotate-all, GET /v1/rotations;
                  agents exchange RotationNotice/RotationAck datagrams on UDP ROTATION_PORT over the
                  tunnel. A node that never reports a key is never rotated, so the version stays 1.
  2 (2026-12-01): the control plane is HTTPS; `GET /v1/tls/ca` serves the controller CA whose pin the
                  pre-auth key carries (wire/preauth.py). Enrollment is challenged: `POST
                  /v1/enroll/nonce` answers an EnrollNonce, and EnrollRequest gains the required
                  `nonce`, covered by the identity signature (enroll_signing_bytes "wgmesh-enroll-v2");
                  each nonce enrolls once, so a replayed request is refused. Version-1 enrollments
                  are refused with a 400 naming both versions.  2 (2026-12-02, additive, admin only): GET /v1/audit (wire.audit); pre-auth keys and nodes carry
                  tags (PreAuthKeyRequest.tags, absent: the role), PUT /v1/nodes/{id}/tags; a policy
                  rollback to version 0 is a clear (PolicyInfo.action "clear": no policy).
"""

PROTOCOL_VERSION = 2
