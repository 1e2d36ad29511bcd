"""deploy/: every Kubernetes manifest the kustomization lists is valid against the Kubernetes schemas
(kubernetes-validate, strict), and the commands the units and manifests run are accepted by wgmesh's
own parsers, so a renamed flag cannot break a deployment unnoticed."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agent.cli import build_parser as agent_parser
from controller.cli import _parser as controller_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBE = DEPLOY / "kubernetes"


def kustomization() -> dict:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]
    return docs


def test_the_kustomization_lists_every_manifest():
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def by_kind(kind: str) -> dict:
    return next(d for d in resources() if d["kind"] == kind)


def test_the_controller_is_probed_on_health_and_keeps_its_state_on_a_volume():
    spec = by_kind("StatefulSet")["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/health"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == container["volumeMounts"][0]["name"]
    assert container["args"][0] == "controller"  # the image's entry point is wgmesh
    controller_parser("wgmesh controller").parse_args(container["args"][1:])


def test_the_agent_runs_on_the_host_network_with_net_admin_tun_and_a_secret_key():
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["hostNetwork"] is True
    assert "NET_ADMIN" in container["securityContext"]["capabilities"]["add"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tun"]["hostPath"]["path"] == "/dev/net/tun"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/wgmesh"
    assert volumes["preauth-key"]["secret"]["defaultMode"] == 0o400
    assert container["args"][0] == "agent"
    args = agent_parser("wgmesh agent").parse_args(container["args"][1:])
    assert str(args.token_file).startswith("/etc/wgmesh/secret/") and not hasattr(args, "token")


@pytest.mark.parametrize("role", ["agent", "controller"])
def test_each_unit_runs_a_command_wgmesh_accepts(role):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / f"wgmesh-{role}.service").read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "on-failure"
    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == ["/opt/wgmesh/bin/wgmesh", role]
    parser = agent_parser("wgmesh agent") if role == "agent" else controller_parser("wgmesh controller")
    parser.parse_args(argv[2:])


def test_systemd_does_not_restart_an_agent_whose_node_was_removed():
    """The agent of a removed node exits EXIT_REMOVED after taking its peers down; restarting it would
    only say so again, every RestartSec, forever."""
    from agent.core import EXIT_REMOVED

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((DEPLOY / "systemd" / "wgmesh-agent.service").read_text())
    assert unit["Service"]["RestartPreventExitStatus"].split() == [str(EXIT_REMOVED)]
