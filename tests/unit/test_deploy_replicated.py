"""deploy/kubernetes/replicated: the base with its StatefulSet swapped for a Deployment of several
controller replicas on PostgreSQL; the Deployment is valid, reads the database URL from a Secret (never
from its arguments), runs a command wgmesh accepts, and is taken out of the Service when unhealthy."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from controller.cli import _parser as controller_parser

REPLICATED = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "replicated"


def test_the_overlay_keeps_the_base_and_replaces_the_single_controller():
    k = yaml.safe_load((REPLICATED / "kustomization.yaml").read_text())
    assert k["resources"] == ["..", "controller.yaml"]
    deleted = yaml.safe_load(k["patches"][0]["patch"])
    assert deleted["$patch"] == "delete" and deleted["kind"] == "StatefulSet"


def test_the_replicated_controller_reads_its_database_url_from_a_secret():
    docs = [d for d in yaml.safe_load_all((REPLICATED / "controller.yaml").read_text()) if d]
    (deployment,) = docs
    kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] >= 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["WGMESH_DB"]["valueFrom"]["secretKeyRef"] == {"name": "wgmesh-controller-db", "key": "url"}
    args = controller_parser("wgmesh controller").parse_args(container["args"][1:])
    assert args.db is None  # the URL (and its password) never in the arguments
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health"
