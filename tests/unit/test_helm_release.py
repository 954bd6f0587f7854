"""The chart as a real install sees it: rendered by Helm's own engine with the vendored NATS
subchart (where the offline interpreter cannot tell), for release names, prefixes and
Secret names other than the defaults; KEDA, NetworkPolicy and Pod Security as a careful
new user meets them; Chart.lock and NOTES.txt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from podpost import natsconfig
from runtime import settings
from schemas import names
from tests.support import helmrender, podsecurity

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "podpost"
CUSTOM = {"ScaledObject", "CiliumNetworkPolicy", "PodMonitor"}


@pytest.fixture(scope="module")
def helm() -> helmrender.Real:
    return helmrender.real(CHART)


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _check_wiring(docs: list[dict[str, Any]], release: str) -> None:
    """podpost's URL, KEDA endpoint and NetworkPolicies name what the NATS chart made."""
    services = _by_kind(docs, "Service")
    [nats_set] = _by_kind(docs, "StatefulSet").values()
    nats_labels = nats_set["spec"]["template"]["metadata"]["labels"]
    deployments = _by_kind(docs, "Deployment")
    for deployment in deployments.values():
        host = _env(deployment)["PODPOST_NATS__URL"].removeprefix("nats://").split(":")[0]
        assert _matches(services[host]["spec"]["selector"], nats_labels), host
    for scaled in _by_kind(docs, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] == "nats-jetstream":
                endpoint = trigger["metadata"]["natsServerMonitoringEndpoint"]
                assert endpoint.split(".")[0] == nats_set["spec"]["serviceName"]
                assert endpoint.split(".")[0] in services
    policies = _by_kind(docs, "NetworkPolicy")
    nats_policy = next(p for p in policies.values()
                       if _matches(p["spec"]["podSelector"]["matchLabels"], nats_labels))
    assert nats_policy["metadata"]["name"].startswith(release)
    dispatcher = next(p for n, p in policies.items() if n.endswith("-dispatcher"))
    to_nats = [r for r in dispatcher["spec"]["egress"] if r["ports"][0]["port"] == 4222]
    assert _matches(to_nats[0]["to"][0]["podSelector"]["matchLabels"], nats_labels)


KEDA_ON = {"dispatcher": {"autoscaling": {"keda": {
    "enabled": True, "consumers": [{"name": "out__mail__relay__shop__storefront"}]}}}}


@pytest.mark.parametrize(("release", "values"), [
    ("podpost", KEDA_ON), ("mail", {}),
    ("nats-relay", {"nats": {"fullnameOverride": "nats-relay-bus"}, **KEDA_ON}),
    ("relay", {"nats": {"nameOverride": "bus"}, **KEDA_ON}),
])
def test_podpost_finds_the_nats_the_chart_installs_under_any_name(
    helm: helmrender.Real, release: str, values: dict[str, Any],
) -> None:
    """Whatever the NATS chart names its Services and labels its pods (release name,
    nameOverride, fullnameOverride), podpost's URL, KEDA's endpoint and the policies
    follow; every object, NATS's included, validates strictly."""
    docs = helm.documents(values, release=release, namespace="mail")
    _check_wiring(docs, release)
    for doc in docs:
        if doc["kind"] not in CUSTOM:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("engine", ["interpreter", "helm"])
def test_a_release_named_nats_relay_gets_a_clear_error_not_two_services(engine: str) -> None:
    """Release `nats-relay`: the NATS chart would name its Service `nats-relay`, as
    podpost's SMTP Service is named; the render fails and says how to fix it."""
    chart = helmrender.real(CHART) if engine == "helm" else helmrender.Chart(CHART)
    with pytest.raises(helmrender.TemplateError, match=r"set nats\.fullnameOverride"):
        chart.documents({}, release="nats-relay", namespace="mail")


@pytest.mark.parametrize("engine", ["interpreter", "helm"])
def test_keda_enabled_with_defaults_fails_with_what_to_set(engine: str) -> None:
    """keda.enabled=true alone would render a ScaledObject without triggers, which KEDA
    refuses: the render fails naming the two ways to give it one."""
    chart = helmrender.real(CHART) if engine == "helm" else helmrender.Chart(CHART)
    with pytest.raises(helmrender.TemplateError,
                       match=r"keda\.prometheus\.serverAddress.*keda\.consumers"):
        chart.documents({"dispatcher": {"autoscaling": {"keda": {"enabled": True}}}})


def test_a_custom_prefix_and_secret_install_consistently_from_chart_values(
    helm: helmrender.Real,
) -> None:
    """With `podpost nats-config --format chart-values` for prefix `mail-a` and Secret
    `relay-nats`, the NATS pods read every password from that Secret, its config holds
    the users podpost's roles connect as, and the roles' settings load."""
    bus = names.Bus(prefix="mail-a")
    values = yaml.safe_load(natsconfig.render(bus, "chart-values", {}, secret_name="relay-nats"))
    docs = helm.documents(values, release="podpost", namespace="mail")
    [nats_set] = _by_kind(docs, "StatefulSet").values()
    nats_env = {e["name"]: e for e in nats_set["spec"]["template"]["spec"]["containers"][0]["env"]}
    conf = next(iter(_by_kind(docs, "ConfigMap").values()))["data"]["nats.conf"]
    for role in natsconfig.ROLES:
        ref = nats_env[natsconfig.password_variable(role)]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "relay-nats", "key": role}
        assert f'"user": "{names.user_name(bus, role)}"' in conf
    for name, deployment in _by_kind(docs, "Deployment").items():
        env = _env(deployment)
        assert env["PODPOST_NATS__PASSWORD"]["secretKeyRef"]["name"] == "relay-nats"
        role = name.removeprefix("podpost-")
        loaded = settings.load({k: v for k, v in env.items() if isinstance(v, str)})
        assert loaded.nats.user == names.user_name(bus, role)
        assert loaded.nats.prefix == "mail-a"
    assert '"stream": "MAIL_A_MAIL"' not in conf  # streams are the reconciler's, not NATS's


@pytest.mark.parametrize("engine", ["interpreter", "helm"])
@pytest.mark.parametrize(("values", "error"), [
    ({"bus": {"prefix": "mail-a"}}, 'no user "mail-a-ingress"'),
    ({"natsAuth": {"secretName": "relay-nats"}}, 'reads NATS_PASSWORD_INGRESS from Secret'),
])
def test_changing_prefix_or_secret_alone_fails_with_the_command_that_fixes_it(
    engine: str, values: dict[str, Any], error: str,
) -> None:
    """`bus.prefix` or `natsAuth.secretName` changed without the NATS users: the render
    fails, naming the mismatch and the `nats-config --format chart-values` to run."""
    chart = helmrender.real(CHART) if engine == "helm" else helmrender.Chart(CHART)
    with pytest.raises(helmrender.TemplateError, match=error) as caught:
        chart.documents(values)
    assert "podpost nats-config --format chart-values" in str(caught.value)


@pytest.mark.parametrize("engine", ["interpreter", "helm"])
def test_the_mailhog_example_upstream_is_reachable_through_the_policies(engine: str) -> None:
    """The example SMTPServer `mailhog` (in-cluster, port 1025) is allowed by the
    dispatchers' egress policy: its port, and in-cluster pods as peers."""
    chart = helmrender.real(CHART) if engine == "helm" else helmrender.Chart(CHART)
    examples = yaml.safe_load_all((ROOT / "deploy/examples/kube-mail/smtpservers.yaml")
                                  .read_text())
    [mailhog] = [d for d in examples if d and d["metadata"]["name"] == "mailhog"]
    port, host = mailhog["spec"]["port"], mailhog["spec"]["server"]
    assert host.endswith(".svc.cluster.local")
    docs = chart.documents({})
    policy = _by_kind(docs, "NetworkPolicy")["podpost-dispatcher"]["spec"]
    allowed = [r for r in policy["egress"] if any(p["port"] == port for p in r["ports"])]
    assert allowed and {"namespaceSelector": {}} in allowed[0]["to"]
    anyport = chart.documents({"dispatcher": {"egress": {"ports": []}}})
    rules = _by_kind(anyport, "NetworkPolicy")["podpost-dispatcher"]["spec"]["egress"]
    assert [r for r in rules if "ports" not in r]  # empty list: any port


def test_on_cilium_the_reconciler_may_reach_the_api_server(helm: helmrender.Real) -> None:
    """networkPolicy.cilium renders a CiliumNetworkPolicy for the reconciler's pods to the
    kube-apiserver entity on the API server's ports; DNS peers are configurable."""
    node_local = {"ipBlock": {"cidr": "169.254.20.10/32"}}
    docs = helm.documents({"networkPolicy": {"cilium": True, "dns": {"to": [node_local]}}})
    [cnp] = _by_kind(docs, "CiliumNetworkPolicy").values()
    assert cnp["spec"]["endpointSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "reconciler")
    assert cnp["spec"]["egress"] == [{"toEntities": ["kube-apiserver"], "toPorts": [{"ports": [
        {"port": "443", "protocol": "TCP"}, {"port": "6443", "protocol": "TCP"}]}]}]
    for policy in _by_kind(docs, "NetworkPolicy").values():
        if "egress" in policy["spec"]:
            assert policy["spec"]["egress"][0]["to"] == [node_local]


@pytest.mark.parametrize("values", [{}, KEDA_ON, {"networkPolicy": {"enabled": False}}])
def test_every_pod_nats_included_is_admitted_under_restricted_pod_security(
    helm: helmrender.Real, values: dict[str, Any],
) -> None:
    """Each pod template of the install (podpost's three and the NATS StatefulSet's
    server and reloader) passes the restricted profile: non-root, no escalation, all
    capabilities dropped, RuntimeDefault seccomp, allowed volumes only; NATS has
    resources."""
    docs = helm.documents(values, release="podpost", namespace="mail")
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert sorted(d["kind"] for d in workloads) == ["Deployment"] * 3 + ["StatefulSet"]
    for workload in workloads:
        template = workload["spec"]["template"]
        found = podsecurity.violations(template["spec"], template["metadata"].get(
            "annotations"))
        assert found == [], workload["metadata"]["name"]
    [nats_set] = _by_kind(docs, "StatefulSet").values()
    pod = nats_set["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    for container in pod["containers"]:
        assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_restricted_check_refuses_what_the_profile_refuses() -> None:
    """The checker is not lenient: a root pod with a hostPath, escalation and no seccomp
    gets each of those named."""
    spec = {"securityContext": {"runAsUser": 0}, "volumes": [{"name": "h", "hostPath": {}}],
            "containers": [{"name": "c", "securityContext": {"capabilities": {
                "add": ["NET_ADMIN"]}}}]}
    assert podsecurity.violations(spec) == [
        "volume h is ['hostPath']", "c: allowPrivilegeEscalation is not false",
        "c: capabilities do not drop ALL", "c: adds capabilities ['NET_ADMIN']",
        "c: runAsNonRoot is not true", "c: runAsUser is 0", "c: seccompProfile is None"]


def test_notes_say_what_to_do_next(helm: helmrender.Real) -> None:
    """NOTES.txt names the Secret to create (with the command), the NATS StatefulSet and
    Deployments to watch, and the SMTP address applications use."""
    notes = helm.render({"natsAuth": {"secretName": "podpost-nats-users"}}, release="podpost",
                        namespace="mail")["podpost/templates/NOTES.txt"]
    assert ("podpost nats-config --format secret --secret-name podpost-nats-users "
            "--prefix podpost --namespace mail | kubectl apply -f -") in notes
    assert "rollout status statefulset/podpost-nats" in notes
    assert "rollout status deployment/podpost-reconciler" in notes
    assert "podpost.mail.svc.cluster.local:25" in notes
    assert "networkPolicy.cilium=true" in notes


def _hash_req(req: list[dict[str, Any]], lock: list[dict[str, Any]]) -> str:
    """Helm's `resolver.HashReq`: sha256 of the JSON of [requirements, locked], each a
    chart.Dependency (its json tags and omitempty rules)."""
    def dependency(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": d["name"]}
        if d.get("version"):
            out["version"] = d["version"]
        out["repository"] = d.get("repository", "")
        out.update({k: d[k] for k in ("condition", "tags", "enabled", "import-values",
                                       "alias") if d.get(k)})
        return out

    data = json.dumps([[dependency(d) for d in req], [dependency(d) for d in lock]],
                      separators=(",", ":"))
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def test_chart_lock_pins_the_vendored_nats_chart_with_helms_digest() -> None:
    """Chart.lock locks exactly Chart.yaml's dependency, at the version vendored in
    charts/nats, with the digest Helm computes (checked against Helm's own test vector),
    so `helm dependency build` does not call it out of sync."""
    alpine = {"name": "alpine", "version": "0.1.0", "repository": "http://localhost:8879/charts"}
    assert _hash_req([alpine], [alpine]) == (
        "sha256:fb239e836325c5fa14b29d1540a13b7d3ba13151b67fe719f820e0ef6d66aaaf")
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lock = yaml.safe_load((CHART / "Chart.lock").read_text())
    assert lock["dependencies"] == [{k: d[k] for k in ("name", "repository", "version")}
                                    for d in meta["dependencies"]]
    assert lock["digest"] == _hash_req(meta["dependencies"], lock["dependencies"])
    vendored = yaml.safe_load((CHART / "charts" / "nats" / "Chart.yaml").read_text())
    assert (vendored["name"], vendored["version"]) == ("nats", lock["dependencies"][0]["version"])
    assert vendored["appVersion"] == "2.11.6"
