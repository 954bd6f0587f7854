"""The Helm chart, rendered twice: by the offline interpreter in `tests.support.helmrender`
and by Helm's own engine (helm-python-sdk), and every object validated with
kubernetes-validate; plus the facts that matter for safety:
non-root read-only pods, the reconciler's RBAC equal to deploy/rbac, NATS users equal to
the generator, settings that podpost accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from podpost import natsconfig
from runtime import settings
from schemas import names
from tests.support import helmrender

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "podpost"
KUBERNETES = ("1.29.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes still common, and the newest kubernetes-validate knows."""

KEDA = {"dispatcher": {"autoscaling": {"keda": {
    "enabled": True,
    "consumers": [{"name": "out__mail__relay__shop__storefront", "lagThreshold": 50}],
    "prometheus": {"serverAddress": "http://prometheus.monitoring:9090"},
}}}}
NARROW = {"rbac": {"clusterWideSecrets": False, "secretNamespaces": ["shop", "billing"]},
          "ingress": {"hostname": "mx.example.org"},
          "dispatcher": {"upstreams": ["mail/relay", "mail/bulk"],
                         "autoscaling": {"hpa": {"enabled": False}}},
          "reconciler": {"podLabelSelector": "podpost.dev/mail=true"}}
NO_NETPOL = {"networkPolicy": {"enabled": False}}
EDGE = {"ingress": {"tls": {"secretName": "podpost-tls", "port": 4650},
                    "auth": {"acceptAny": True}, "proxyProtocolCIDRs": ["10.0.0.0/8", "fd00::/8"]}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {}, "keda": KEDA, "narrow": NARROW, "no-netpol": NO_NETPOL}

CUSTOM = {("keda.sh/v1alpha1", "ScaledObject")}
"""Kinds of CRDs other than Kubernetes' own: checked by hand below."""


@pytest.fixture(scope="module", params=["interpreter", "helm"])
def chart(request: pytest.FixtureRequest) -> helmrender.Chart | helmrender.Real:
    """podpost's own templates (not the NATS subchart's), by either renderer."""
    if request.param == "helm":
        return helmrender.real(CHART, subcharts=False)
    return helmrender.Chart(CHART)


@pytest.fixture(scope="module")
def rendered(chart: helmrender.Chart | helmrender.Real) -> dict[str, list[dict[str, Any]]]:
    return {name: chart.documents(values, release="podpost", namespace="podpost")
            for name, values in VARIANTS.items()}


def _kinds(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


def _pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in docs
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """Every built-in object of every values variant passes kubernetes-validate's strict
    schema (unknown fields are errors) for the oldest and newest Kubernetes we target."""
    docs = rendered[variant]
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            continue
        for version in KUBERNETES:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_default_install_has_every_piece_of_the_issue(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Defaults: three Deployments (2 ingress, HPA-scaled dispatchers, 2 reconcilers), the
    SMTP Service on port 25, per-role ServiceAccounts, PDBs, NetworkPolicies, RBAC."""
    docs = rendered["defaults"]
    assert _kinds(docs) == sorted([
        ("ClusterRole", "podpost-credentials-reader"), ("ClusterRole", "podpost-reconciler"),
        ("ClusterRoleBinding", "podpost-reconciler"),
        ("ClusterRoleBinding", "podpost-reconciler-credentials"),
        ("Deployment", "podpost-dispatcher"), ("Deployment", "podpost-ingress"),
        ("Deployment", "podpost-reconciler"),
        ("HorizontalPodAutoscaler", "podpost-dispatcher"),
        ("NetworkPolicy", "podpost-dispatcher"), ("NetworkPolicy", "podpost-ingress"),
        ("NetworkPolicy", "podpost-nats"), ("NetworkPolicy", "podpost-reconciler"),
        ("PodDisruptionBudget", "podpost-dispatcher"),
        ("PodDisruptionBudget", "podpost-ingress"),
        ("PodDisruptionBudget", "podpost-reconciler"),
        ("Role", "podpost-reconciler-lease"), ("RoleBinding", "podpost-reconciler-lease"),
        ("Service", "podpost"), ("Service", "podpost-metrics"),
        ("ServiceAccount", "podpost-dispatcher"), ("ServiceAccount", "podpost-ingress"),
        ("ServiceAccount", "podpost-reconciler"),
    ])
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service = by_name["Service", "podpost"]
    assert service["spec"]["ports"] == [
        {"name": "smtp", "port": 25, "targetPort": "smtp", "protocol": "TCP"}]
    ingress = by_name["Deployment", "podpost-ingress"]
    assert ingress["spec"]["replicas"] == 2
    assert service["spec"]["selector"] == ingress["spec"]["template"]["metadata"]["labels"]
    assert by_name["Deployment", "podpost-reconciler"]["spec"]["replicas"] == 2
    # The autoscaler owns the dispatcher count.
    assert "replicas" not in by_name["Deployment", "podpost-dispatcher"]["spec"]
    hpa = by_name["HorizontalPodAutoscaler", "podpost-dispatcher"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "podpost-dispatcher"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_runs_non_root_on_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """Each pod template: non-root uid 10001, no privilege escalation, every capability
    dropped, a read-only root filesystem with only /tmp writable; only the reconciler
    gets a service-account token."""
    templates = _pod_templates(rendered[variant])
    assert len(templates) == 3
    for name, template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is name.endswith("-reconciler"), name
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


CA_FILE = "/etc/podpost/ca/ca.crt"
EXTRA_VOLUMES = {
    "extraEnv": [{"name": "PODPOST_DISPATCHER__TLS_CA_FILE", "value": CA_FILE}],
    **{role: {"extraVolumes": [{"name": "company-ca", "configMap": {"name": "company-ca"}}],
              "extraVolumeMounts": [{"name": "company-ca", "mountPath": "/etc/podpost/ca",
                                     "readOnly": True}]}
       for role in ("dispatcher", "ingress", "reconciler")},
}


def test_extra_volumes_bring_a_ca_bundle_into_the_read_only_pods(
    chart: helmrender.Chart | helmrender.Real,
) -> None:
    """`<role>.extraVolumes`/`extraVolumeMounts` add a volume (a ConfigMap with a CA
    bundle) beside /tmp in each pod, and the dispatcher's TLS_CA_FILE setting loads."""
    docs = chart.documents(EXTRA_VOLUMES, release="podpost", namespace="podpost")
    templates = _pod_templates(docs)
    assert len(templates) == 3
    for name, template in templates:
        pod = template["spec"]
        [container] = pod["containers"]
        assert [(m["mountPath"], m.get("readOnly", False)) for m in container["volumeMounts"]
                ] == [("/tmp", False), ("/etc/podpost/ca", True)], name
        assert [v["name"] for v in pod["volumes"]] == ["tmp", "company-ca"], name
        assert pod["volumes"][1]["configMap"] == {"name": "company-ca"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        if container["args"][0] == "dispatcher":
            assert settings.load(_env(container)).dispatcher.tls_ca_file == CA_FILE
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM:
            kubernetes_validate.validate(doc, KUBERNETES[-1], strict=True)


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's PODPOST_* variables; values from Secrets/fields as placeholders."""
    out = {}
    for item in container["env"]:
        out[item["name"]] = (item["value"] if "value" in item
                             else "from-" + next(iter(item["valueFrom"])))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_role_gets_settings_podpost_accepts(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """The chart's PODPOST_* variables load into `Settings` (unknown ones would be
    errors), each role connects as its own NATS user, health serves on the probed port."""
    for _name, template in _pod_templates(rendered[variant]):
        container = template["spec"]["containers"][0]
        role = container["args"][0]
        env = _env(container)
        # Helm prints big numbers from values as float64s (2.62144e+07) unless piped to int.
        assert not [v for v in env.values() if re.fullmatch(r"[\d.]+e[+-]\d+", v)], env
        cfg = settings.load(env)
        assert cfg.nats.user == names.user_name(names.Bus(prefix=cfg.nats.prefix), role)
        password = next(e for e in container["env"] if e["name"] == "PODPOST_NATS__PASSWORD")
        assert password["valueFrom"]["secretKeyRef"] == {"name": "podpost-nats-users",
                                                         "key": role}
        assert cfg.nats.replicas == 3
        assert cfg.health.port == 8080
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["health"] == 8080
        if role == "ingress":
            assert cfg.ingress.port == 2525
            assert env["PODPOST_INGRESS__MAX_MESSAGE_SIZE"] == "26214400"
        if role == "reconciler":
            assert cfg.reconciler.source == "kubernetes"
            assert cfg.reconciler.leader_election is True
            assert cfg.reconciler.lease_name == "podpost-reconciler"
    narrow = {t["spec"]["containers"][0]["args"][0]: settings.load(
        _env(t["spec"]["containers"][0])) for _, t in _pod_templates(rendered["narrow"])}
    assert narrow["dispatcher"].dispatcher.upstreams == ["mail/relay", "mail/bulk"]
    assert narrow["reconciler"].reconciler.pod_label_selector == "podpost.dev/mail=true"
    assert narrow["ingress"].ingress.hostname == "mx.example.org"


def test_ingress_tls_auth_and_proxy_values_reach_the_ingress(
    chart: helmrender.Chart, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """ingress.tls mounts the Secret read-only and points the certificate settings at it,
    opens the implicit-TLS port on the pod, the Service and the NetworkPolicy; auth and
    PROXY values become the ingress's settings (every object still validates); by default
    none of it is there and the ingress listens on IPv4 and IPv6."""
    rendered = {**rendered, "edge": chart.documents(EDGE, release="podpost",
                                                    namespace="podpost")}
    for doc in rendered["edge"]:
        if (doc["apiVersion"], doc["kind"]) not in CUSTOM:
            kubernetes_validate.validate(doc, KUBERNETES[-1], strict=True)

    def ingress_of(variant: str) -> tuple[dict[str, Any], dict[str, Any]]:
        [(_, template)] = [(n, t) for n, t in _pod_templates(rendered[variant])
                           if t["spec"]["containers"][0]["args"][0] == "ingress"]
        return template["spec"], template["spec"]["containers"][0]

    spec, container = ingress_of("edge")
    cfg = settings.load(_env(container)).ingress
    assert (cfg.tls_cert_file, cfg.tls_key_file, cfg.tls_port) == (
        "/etc/podpost/tls/tls.crt", "/etc/podpost/tls/tls.key", 4650)
    assert (cfg.auth_accept_any, cfg.proxy_protocol_cidrs) == (True, ["10.0.0.0/8", "fd00::/8"])
    assert {"name": "tls", "mountPath": "/etc/podpost/tls", "readOnly": True} in container[
        "volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "podpost-tls"}} in spec["volumes"]
    assert {"name": "smtps", "containerPort": 4650, "protocol": "TCP"} in container["ports"]
    [service] = [d for d in rendered["edge"] if d["kind"] == "Service"
                 and d["metadata"]["name"] == "podpost"]
    assert {"name": "smtps", "port": 465, "targetPort": "smtps", "protocol": "TCP"} in service[
        "spec"]["ports"]
    policies = [d for d in rendered["edge"] if d["kind"] == "NetworkPolicy"]
    assert any({"port": 4650, "protocol": "TCP"} in rule.get("ports", []) for p in policies
               for rule in p["spec"].get("ingress", []))
    _, plain = ingress_of("defaults")
    defaults = settings.load(_env(plain)).ingress
    assert (defaults.host, defaults.tls_cert_file, defaults.auth_accept_any) == (
        "0.0.0.0,::", "", False)
    assert "smtps" not in {p["name"] for p in plain["ports"]}


def _rbac(docs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """RBAC objects without labels: what they grant and to whom."""
    out = []
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"):
            out.append((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"),
                        d.get("rules"), d.get("roleRef"), d.get("subjects")))
    return sorted(out, key=repr)


def test_the_reconciler_rbac_is_exactly_deploy_rbac(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Installed as release `podpost` in namespace `podpost`, the chart grants exactly
    what deploy/rbac/reconciler.yaml does (which the kubernetes-source tests prove is
    enough), and its ServiceAccount has the same name."""
    reference = [d for d in yaml.safe_load_all((ROOT / "deploy/rbac/reconciler.yaml")
                                               .read_text()) if d]
    assert _rbac(rendered["defaults"]) == _rbac(reference)
    accounts = {d["metadata"]["name"] for d in rendered["defaults"]
                if d["kind"] == "ServiceAccount"}
    assert {d["metadata"]["name"] for d in reference if d["kind"] == "ServiceAccount"} <= accounts


def test_secrets_can_be_granted_per_namespace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """With clusterWideSecrets off, Secrets are readable only in the listed namespaces."""
    docs = rendered["narrow"]
    bindings = [(d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"])
                for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert sorted(bindings) == [
        ("ClusterRoleBinding", None, "podpost-reconciler"),
        ("RoleBinding", "billing", "podpost-credentials-reader"),
        ("RoleBinding", "podpost", "podpost-reconciler-lease"),
        ("RoleBinding", "shop", "podpost-credentials-reader"),
    ]


def test_keda_scales_dispatchers_on_the_mail_consumers_lag(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """With KEDA: a ScaledObject (and no HPA of ours) targets the dispatcher Deployment,
    with a fallback count, one nats-jetstream trigger per listed consumer of the MAIL
    stream, and the Prometheus trigger on podpost's own lag gauge."""
    docs = rendered["keda"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": "podpost-dispatcher"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 4}
    assert [t["type"] for t in spec["triggers"]] == ["prometheus", "nats-jetstream"]
    prom, jet = spec["triggers"]
    assert set(prom["metadata"]) == {"serverAddress", "query", "threshold"}
    assert "podpost_dispatcher_consumer_pending" in prom["metadata"]["query"]
    assert jet["metadata"] == {
        "natsServerMonitoringEndpoint": "podpost-nats-headless.podpost.svc.cluster.local:8222",
        "account": "$G", "stream": names.Bus(prefix="podpost").mail_stream,
        "consumer": "out__mail__relay__shop__storefront", "lagThreshold": "50"}
    # KEDA reads metadata as strings.
    assert all(isinstance(v, str) for t in spec["triggers"] for v in t["metadata"].values())
    assert names.Bus(prefix="podpost").consumer_name("mail/relay", "shop/storefront") == (
        jet["metadata"]["consumer"])


def test_a_keda_consumer_without_a_name_is_refused(
    chart: helmrender.Chart | helmrender.Real,
) -> None:
    """`required` fails the render, as helm would."""
    values = {"dispatcher": {"autoscaling": {"keda": {"enabled": True,
                                                      "consumers": [{"lagThreshold": 5}]}}}}
    with pytest.raises(helmrender.TemplateError, match="needs a name"):
        chart.documents(values)


def test_network_policies_isolate_every_role_and_nats(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Every podpost pod is selected by a policy denying by default both ways; SMTP in
    reaches only the ingress; only dispatchers may leave on SMTP ports; NATS clients'
    port admits podpost's pods only."""
    docs = rendered["defaults"]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    for role in ("ingress", "dispatcher", "reconciler"):
        spec = policies[f"podpost-{role}"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == role
        in_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
        assert in_ports == ({2525, 8080} if role == "ingress" else {8080})
        out_ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        extra = {"dispatcher": {25, 465, 587, 1025, 2525}, "reconciler": {443, 6443},
                 "ingress": set()}[role]
        assert out_ports == {53, 4222} | extra
    nats_rules = policies["podpost-nats"]["ingress"]
    assert nats_rules[0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "podpost", "app.kubernetes.io/instance": "podpost"}}}]
    assert [r["ports"][0]["port"] for r in nats_rules] == [4222, 6222, 8222]
    assert not [d for d in rendered["no-netpol"] if d["kind"] == "NetworkPolicy"]


def test_the_chart_carries_the_generated_crds() -> None:
    """crds/ holds exactly deploy/crds (generated by `podpost crds`), each a valid CRD
    of kube-mail's group and version, so kube-mail manifests apply unchanged."""
    ours = sorted(p.name for p in (CHART / "crds").iterdir())
    assert ours == sorted(p.name for p in (ROOT / "deploy" / "crds").iterdir())
    for name in ours:
        text = (CHART / "crds" / name).read_text()
        assert text == (ROOT / "deploy" / "crds" / name).read_text(), (
            "regenerated CRDs: cp deploy/crds/*.yaml deploy/helm/podpost/crds/")
        crd = yaml.safe_load(text)
        for version in KUBERNETES:
            kubernetes_validate.validate(crd, version, strict=True)
        assert crd["spec"]["group"] == "kube-mail.helmich.me"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def test_nats_is_a_pinned_jetstream_cluster_with_the_generated_users() -> None:
    """Chart.yaml pins the official NATS chart; values run it as 3 JetStream nodes with
    3-replica podpost streams, and its users equal `podpost nats-config`'s output."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dep,) = meta["dependencies"]
    assert dep["name"] == "nats"
    assert dep["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dep["version"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nats = values["nats"]
    assert nats["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert nats["config"]["jetstream"]["enabled"] is True
    assert values["bus"]["replicas"] == 3
    generated = natsconfig.helm_values(names.Bus(prefix=values["bus"]["prefix"]),
                                     values["natsAuth"]["secretName"])
    assert nats["config"]["merge"] == generated["config"]["merge"]
    assert nats["container"]["env"] == generated["container"]["env"]


def test_the_renderer_is_strict_about_what_it_does_not_know(tmp_path: Path) -> None:
    """The offline renderer fails on unknown functions and missing maps instead of
    printing nothing, so a template it cannot really render never passes quietly."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("name: t\nversion: 0.0.1\n")
    (tmp_path / "values.yaml").write_text("a: {b: 1}\n")
    cases = {"{{ .Values.a.b | sha256sum }}": "not a function",
             "{{ .Values.x.y }}": "nil pointer",
             "{{ .Values.a.c }}": "missing value"}
    for source, error in cases.items():
        (tmp_path / "templates" / "t.yaml").write_text(source)
        with pytest.raises(helmrender.TemplateError, match=error):
            helmrender.Chart(tmp_path).render()
    (tmp_path / "templates" / "t.yaml").write_text(
        '{{- range .Values.l }}\n- {{ . | quote }}{{ end }}\n'
        '{{ with .Values.a }}{{ .b }}{{ end }} {{ default "d" .Values.none }} '
        '{{ if and .Values.a (not .Values.none) }}yes{{ else }}no{{ end }}')
    out = helmrender.Chart(tmp_path).render({"l": ["x", "y"]})["t.yaml"]
    assert out == '\n- "x"\n- "y"\n1 d yes'
