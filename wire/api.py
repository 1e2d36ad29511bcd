"""HTTP paths and the authentication scheme of protocol version 1, named once for both sides.

Every node call carries `Authorization: Bearer <node_credential>` (from EnrollResponse); every admin
call carries `Authorization: Bearer <admin credential>`.
"""

HEALTH = "/v1/health"  # GET -> {"status": "ok", "protocol_version": 2}
TLS_CA = "/v1/tls/ca"  # GET -> the controller CA certificate (PEM; no auth; 404 with operator certificates)
ENROLL_NONCE = "/v1/enroll/nonce"  # POST -> EnrollNonce (no auth): the challenge an EnrollRequest signs
ENROLL = "/v1/enroll"  # POST EnrollRequest -> EnrollResponse (no auth: the pre-auth key is the auth)
# GET ?since=SERIAL&timeout=SECONDS (node) -> 200 NetMap, or 204 when nothing newer.
# With &delta=1: 200 NetMapUpdate, i.e. a NetMapDelta (kind "delta") from `since` when the controller
# still holds map `since`, else the full NetMap (kind "full").
NETMAP = "/v1/netmap"
LINKS = "/v1/links"  # POST LinkReport (node) -> 204
# GET (admin) -> list[NodeInfo]; /v1/nodes/{id}: GET NodeInfo, DELETE -> 204;
# /v1/nodes/{id}/tags: PUT NodeTagsRequest -> NodeInfo
NODES = "/v1/nodes"
# GET (admin) -> list[RemovedNodeInfo]: removed nodes, whose keys enrollment refuses and whose credential
# is answered 410; /v1/removed-nodes/{id}: DELETE -> 204 allows its keys to enroll again.
REMOVED_NODES = "/v1/removed-nodes"
PREAUTH_KEYS = "/v1/preauth-keys"  # POST PreAuthKeyRequest -> PreAuthKeyInfo with key; GET list; DELETE /{id}
# GET (admin) -> PolicyState; PUT PolicySetRequest -> PolicyInfo (422 naming every problem: refused
# whole). POST /check PolicySetRequest -> PolicyCheckResult; POST /test PolicyTestRequest ->
# PolicyTestResult; GET /history -> list[PolicyInfo]; POST /rollback PolicyRollbackRequest -> PolicyInfo
# (version 0: a clear, no policy).
POLICY = "/v1/policy"
# GET ?since=ISO&node=ID|NAME&action=A&limit=N (admin) -> list[wire.audit.AuditEvent], oldest first
AUDIT = "/v1/audit"
TOPOLOGY = "/v1/topology"  # GET (admin) -> Topology; ?format=dot -> text/vnd.graphviz

# Key rotation (wire.rotation): POST KEY (node) KeyReport -> KeyReportAnswer;
# POST /v1/nodes/{id}/rotate (admin) -> RotationInfo; POST ROTATE_ALL (admin) -> RotationProgress;
# GET ROTATIONS (admin) -> RotationProgress. A refusal is 404 (no such node) or 409 (already rotating).
KEY = "/v1/key"
ROTATE_ALL = "/v1/nodes/rotate-all"
ROTATIONS = "/v1/rotations"

# GET (admin) -> Prometheus text format (controller.metrics); also served without a credential on
# `serve --metrics-listen HOST:PORT`, and by an agent started with --metrics-listen.
METRICS = "/metrics"

# POST (admin) -> UiTicket: a single-use login link to the topology page at /ui/ (controller.ui).
UI_TICKETS = "/v1/ui/tickets"

NETMAP_MAX_TIMEOUT_S = 300
