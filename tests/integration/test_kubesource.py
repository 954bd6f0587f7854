"""The kubernetes source end to end: a Kubernetes API stand-in (kmock) in, the real
nats-server's POLICY and CREDENTIALS buckets out, statuses written back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import kmock
import msgspec
import nats.js.errors
import pytest
import yaml

from loadkit import inprocess
from reconciler import kubeapi, kubesource
from reconciler.rules import credentials
from runtime import bus, settings
from schemas import snapshot
from tests.support import ingress as ingress_support
from tests.support import kubeapi as fake

ROOT = Path(__file__).resolve().parents[2]
WITHIN_S = 1.0
"""Every change must reach the published snapshot this fast."""


@pytest.fixture
async def cluster() -> AsyncIterator[fake.VersionedEmulator]:
    async with fake.VersionedEmulator() as api, kmock.Server(api):
        fake.declare(api)
        yield api


@pytest.fixture
def cfg(cluster: fake.VersionedEmulator, nats_settings: settings.NatsSettings,
        tmp_path: Path) -> settings.Settings:
    config = fake.kubeconfig(tmp_path / "kubeconfig", str(cluster.url))
    return settings.Settings(
        nats=nats_settings,
        reconciler=settings.ReconcilerSettings(
            source="kubernetes", kubeconfig=str(config), debounce_s=0.05,
            secret_refresh_s=0.3, watch_timeout_s=30, lease_namespace="podpost",
            identity="replica-a", lease_duration_s=1.5, lease_renew_deadline_s=1.0,
            lease_retry_s=0.1,
        ),
    )


class Running:
    """One kubernetes source running in the test's loop, owned by the fixture."""

    def __init__(self, cfg: settings.Settings, conn: bus.Conn) -> None:
        self.stop = asyncio.Event()
        self.source: kubesource.KubeSource | None = None
        self.task = asyncio.create_task(self._run(cfg, conn))

    async def _run(self, cfg: settings.Settings, conn: bus.Conn) -> None:
        async with kubeapi.connect(cfg.reconciler) as api:
            self.source = kubesource.KubeSource(cfg, conn, api)
            await self.source.run(self.stop)

    @property
    def builds(self) -> int:
        return 0 if self.source is None else self.source.builds

    async def close(self) -> None:
        self.stop.set()
        async with asyncio.timeout(10):
            await self.task


@pytest.fixture
async def start(cfg: settings.Settings, conn: bus.Conn
                ) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def starter(**overrides: Any) -> Running:
        rcfg = msgspec.structs.replace(cfg.reconciler, **overrides)
        source = Running(msgspec.structs.replace(cfg, reconciler=rcfg), conn)
        running.append(source)
        return source

    try:
        yield starter
    finally:
        for source in running:
            if not source.task.done():
                await source.close()


async def _snapshot(conn: bus.Conn) -> snapshot.PolicySnapshot | None:
    kv = await bus.policy_kv(conn)
    try:
        entry = await kv.get(conn.names.snapshot_key)
    except nats.js.errors.KeyNotFoundError:
        return None
    assert entry.value is not None
    return snapshot.decode_snapshot(entry.value)


async def eventually(conn: bus.Conn, check: Callable[[snapshot.PolicySnapshot], bool],
                     within: float = WITHIN_S) -> snapshot.PolicySnapshot:
    """The published snapshot, once it satisfies ``check``; fails after ``within``."""
    started = time.monotonic()
    last: snapshot.PolicySnapshot | None = None
    for _ in range(int(within / 0.02) + 1):
        last = await _snapshot(conn)
        if last is not None and check(last):
            return last
        if time.monotonic() - started > within:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"snapshot not as expected within {within}s: {last}")


def _routes(snap: snapshot.PolicySnapshot) -> dict[str, str]:
    return {route.network: route.policy for route in snap.routes}


async def _credential(conn: bus.Conn, key: str) -> snapshot.Credentials | None:
    kv = await bus.credentials_kv(conn)
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return None if entry.value is None else snapshot.credentials_decoder.decode(entry.value)


async def _credential_is(conn: bus.Conn, key: str, password: str | None) -> None:
    for _ in range(int(WITHIN_S / 0.02)):
        found = await _credential(conn, key)
        if (found.password if found else None) == password:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"credentials {key} did not become {password!r}")


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


async def _ca_is(conn: bus.Conn, key: str, pem: str) -> None:
    kv = await bus.credentials_kv(conn)
    for _ in range(int(WITHIN_S / 0.02)):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is not None and entry.value is not None \
                and snapshot.trusted_ca_decoder.decode(entry.value).pem == pem:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"CA {key} did not become {pem!r}")


def _status(cluster: fake.VersionedEmulator, plural: str, key: str) -> dict[str, Any]:
    namespace, name = key.split("/")
    for (resource, ns, obj_name), obj in cluster.objects.items():
        if resource.plural == plural and (ns, obj_name) == (namespace, name) \
                and not obj.deleted:
            status: dict[str, Any] = obj.raw.get("status") or {}
            return status
    raise KeyError(key)


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition["type"] == kind:
            found: dict[str, Any] = condition
            return found
    return {}


def _status_patches(cluster: fake.VersionedEmulator) -> list[kmock.Request]:
    return [r for r in cluster.requests
            if r.method == kmock.method.PATCH and r.subresource == "status"]


async def _basics(cluster: fake.VersionedEmulator) -> None:
    await fake.create(cluster, fake.SERVERS, fake.server("smtp"))
    await fake.create(cluster, fake.PODS, fake.pod("a", labels={"app": "web"}, ip="10.0.0.1"))
    await fake.create(cluster, fake.POLICIES, fake.policy("web", labels={"app": "web"}))


async def test_policies_servers_and_pods_reach_the_snapshot(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """Creating, editing and deleting pods, policies and servers is published within 1 s."""
    await _basics(cluster)
    start()
    snap = await eventually(conn, lambda s: _routes(s) == {"10.0.0.1/32": "default/web"},
                            within=5.0)
    assert snap.source == "kubernetes" and snap.upstreams["default/smtp"].port == 587

    await fake.patch(cluster, fake.SERVERS, "default", "smtp", {"spec": {"port": 2525}})
    await eventually(conn, lambda s: s.upstreams["default/smtp"].port == 2525)

    await fake.create(cluster, fake.PODS, fake.pod("b", labels={"app": "web"}, ip="10.0.0.2",
                                                   phase="Pending"))
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.1/32": "default/web",
                                                    "10.0.0.2/32": "default/web"})
    await fake.delete(cluster, fake.PODS, "default", "a")
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.2/32": "default/web"})

    await fake.patch(cluster, fake.POLICIES, "default", "web",
                     {"spec": {"podSelector": {"matchLabels": {"app": "api"}}}})
    await eventually(conn, lambda s: s.routes == [] and "default/web" in s.policies)
    await fake.delete(cluster, fake.POLICIES, "default", "web")
    await eventually(conn, lambda s: s.policies == {})
    await fake.delete(cluster, fake.SERVERS, "default", "smtp")
    await eventually(conn, lambda s: s.upstreams == {})


async def test_pod_whose_labels_change_loses_its_route(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """A pod relabelled out of its policy's selector stops getting a Route (so the ingress
    refuses it), within 1 s; relabelled back, it gets it again."""
    await _basics(cluster)
    start()
    await eventually(conn, lambda s: "10.0.0.1/32" in _routes(s), within=5.0)
    await fake.patch(cluster, fake.PODS, "default", "a",
                     {"metadata": {"labels": {"app": "batch"}}})
    await eventually(conn, lambda s: "10.0.0.1/32" not in _routes(s))
    await fake.patch(cluster, fake.PODS, "default", "a", {"metadata": {"labels": {"app": "web"}}})
    await eventually(conn, lambda s: _routes(s).get("10.0.0.1/32") == "default/web")


async def test_default_policy_catches_pods_no_other_policy_selects(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """spec.default: pods of the namespace that no other policy selects get the fallback."""
    await _basics(cluster)
    await fake.create(cluster, fake.POLICIES, fake.policy("fallback", default=True))
    await fake.create(cluster, fake.PODS, fake.pod("x", labels={"app": "cron"}, ip="10.0.0.7"))
    await fake.create(cluster, fake.PODS, fake.pod("y", namespace="other", ip="10.0.0.8"))
    start()
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.1/32": "default/web",
                                                    "10.0.0.7/32": "default/fallback"},
                     within=5.0)


async def test_namespace_and_label_scope(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """With a namespace and a pod label selector set, only those pods and that namespace's
    resources are watched."""
    for namespace in ("default", "shop"):
        await fake.create(cluster, fake.SERVERS, fake.server("smtp", namespace=namespace))
        await fake.create(cluster, fake.POLICIES, fake.policy("all", namespace=namespace))
    await fake.create(cluster, fake.PODS, fake.pod("a", namespace="shop", ip="10.0.1.1",
                                                   labels={"mail": "yes"}))
    await fake.create(cluster, fake.PODS, fake.pod("b", namespace="shop", ip="10.0.1.2"))
    await fake.create(cluster, fake.PODS, fake.pod("c", ip="10.0.0.3", labels={"mail": "yes"}))
    start(namespace="shop", pod_label_selector="mail=yes")
    snap = await eventually(conn, lambda s: _routes(s) == {"10.0.1.1/32": "shop/all"},
                            within=5.0)
    assert list(snap.policies) == ["shop/all"] and list(snap.upstreams) == ["shop/smtp"]
    paths = {r.url.path for r in cluster.requests if r.action == kmock.action.LIST}
    assert paths == {"/api/v1/namespaces/shop/pods",
                     "/apis/kube-mail.helmich.me/v1alpha1/namespaces/shop/emailpolicies",
                     "/apis/kube-mail.helmich.me/v1alpha1/namespaces/shop/smtpservers"}


async def test_dual_stack_and_reused_addresses(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """Both addresses of a dual-stack pod are routed; an address reused by a new pod while
    the old one terminates goes to the new pod."""
    await fake.create(cluster, fake.SERVERS, fake.server("smtp"))
    await fake.create(cluster, fake.POLICIES, fake.policy("web", labels={"app": "web"}))
    await fake.create(cluster, fake.POLICIES, fake.policy("api", labels={"app": "api"}))
    await fake.create(cluster, fake.PODS, fake.pod("old", labels={"app": "web"},
                                                   ips=["10.0.0.9", "fd00::9"]))
    start()
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.9/32": "default/web",
                                                    "fd00::9/128": "default/web"}, within=5.0)
    # terminating (graceful shutdown); the finalizer keeps kmock from removing it at once
    await fake.patch(cluster, fake.PODS, "default", "old", {"metadata": {
        "deletionTimestamp": "2024-06-01T00:00:00Z", "finalizers": ["test/keep"]}})
    await fake.create(cluster, fake.PODS, fake.pod("new", labels={"app": "api"}, ip="10.0.0.9",
                                                   created="2024-06-01T00:00:01Z"))
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.9/32": "default/api",
                                                    "fd00::9/128": "default/web"})


async def test_secrets_are_read_and_refreshed(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """A missing Secret keeps its policy out; creating, changing and deleting the Secret
    reaches the snapshot and the CREDENTIALS bucket within 1 s."""
    await fake.create(cluster, fake.SERVERS, fake.server("smtp"))
    await fake.create(cluster, fake.PODS, fake.pod("a", labels={"app": "web"}))
    await fake.create(cluster, fake.POLICIES,
                      fake.policy("web", labels={"app": "web"}, credentials="login"))
    start()
    await eventually(conn, lambda s: s.policies == {} and "default/smtp" in s.upstreams,
                     within=5.0)
    await fake.until(lambda: _condition(_status(cluster, "emailpolicies", "default/web"),
                                        "Ready").get("reason") == "SecretNotFound")

    await fake.create(cluster, fake.SECRETS, fake.secret("login", password="one"))
    snap = await eventually(conn, lambda s: "default/web" in s.policies)
    key = snap.policies["default/web"].credentials
    assert key == "default__login"
    await _credential_is(conn, key, "one")

    await fake.patch(cluster, fake.SECRETS, "default", "login",
                     {"stringData": {"password": "two"}})
    await _credential_is(conn, key, "two")

    await fake.delete(cluster, fake.SECRETS, "default", "login")
    await eventually(conn, lambda s: s.policies == {})
    await _credential_is(conn, key, None)


async def test_cross_namespace_secret_needs_a_grant(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """A Secret in another namespace is refused (and the status says so) until its
    allowed-namespaces annotation names the policy's namespace."""
    await fake.create(cluster, fake.SERVERS, fake.server("smtp", namespace="mail"))
    await fake.create(cluster, fake.SECRETS, fake.secret("login", namespace="mail"))
    await fake.create(cluster, fake.POLICIES, fake.policy(
        "shop", namespace="shop", server_name="smtp", server_namespace="mail",
        credentials="login", credentials_namespace="mail"))
    start()
    await fake.until(lambda: _condition(_status(cluster, "emailpolicies", "shop/shop"),
                                        "Ready").get("reason") == "CrossNamespaceSecretNotGranted",
                     within=5.0)
    snap = await _snapshot(conn)
    assert snap is not None and snap.policies == {}
    await fake.patch(cluster, fake.SECRETS, "mail", "login", {"metadata": {"annotations": {
        "podpost.dev/allowed-namespaces": "billing, shop"}}})
    await eventually(conn, lambda s: "shop/shop" in s.policies)
    await fake.until(lambda: _condition(_status(cluster, "emailpolicies", "shop/shop"),
                                        "Ready").get("status") == "True")


async def test_statuses_are_written_once_and_say_who_wins(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """Ready, Conflict and matchedPods are patched onto the status subresource; an
    unchanged status is not patched again; an unreadable policy says why."""
    await _basics(cluster)
    await fake.create(cluster, fake.POLICIES, fake.policy(
        "web-canary", labels={"app": "web", "track": "canary"}))
    await fake.create(cluster, fake.PODS, fake.pod(
        "c", labels={"app": "web", "track": "canary"}, ip="10.0.0.3"))
    bad = fake.policy("broken")
    bad["spec"]["sink"] = {"smtp": {}}
    await fake.create(cluster, fake.POLICIES, bad)
    start()
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.1/32": "default/web",
                                                    "10.0.0.3/32": "default/web-canary"},
                     within=5.0)
    await fake.until(lambda: len(_status_patches(cluster)) >= 4)

    web = _status(cluster, "emailpolicies", "default/web")
    canary = _status(cluster, "emailpolicies", "default/web-canary")
    assert _condition(web, "Ready")["status"] == "True" and web["matchedPods"] == 1
    assert canary["matchedPods"] == 1
    assert _condition(web, "Conflict")["status"] == "True"
    assert _condition(canary, "Conflict")["status"] == "True"
    assert "default/web-canary takes precedence" in _condition(web, "Conflict")["message"]
    broken = _status(cluster, "emailpolicies", "default/broken")
    assert (_condition(broken, "Ready")["status"], _condition(broken, "Ready")["reason"]) == (
        "False", "InvalidSpec")
    server = _status(cluster, "smtpservers", "default/smtp")
    assert _condition(server, "Ready")["status"] == "True"
    assert {r.url.path for r in _status_patches(cluster)} == {
        "/apis/kube-mail.helmich.me/v1alpha1/namespaces/default/emailpolicies/web/status",
        "/apis/kube-mail.helmich.me/v1alpha1/namespaces/default/emailpolicies/web-canary/status",
        "/apis/kube-mail.helmich.me/v1alpha1/namespaces/default/emailpolicies/broken/status",
        "/apis/kube-mail.helmich.me/v1alpha1/namespaces/default/smtpservers/smtp/status",
    }
    assert all(r.headers.get("Content-Type") == "application/merge-patch+json"
               for r in _status_patches(cluster))

    patched = len(_status_patches(cluster))
    await fake.create(cluster, fake.PODS, fake.pod("z", namespace="other", ip="10.9.9.9"))
    await fake.create(cluster, fake.PODS, fake.pod("d", labels={"app": "web"}, ip="10.0.0.4"))
    await eventually(conn, lambda s: "10.0.0.4/32" in _routes(s))
    await fake.until(lambda: _status(cluster, "emailpolicies", "default/web")
                     .get("matchedPods") == 2)
    await asyncio.sleep(0.3)
    assert len(_status_patches(cluster)) == patched + 1  # only web's count changed


async def test_dropped_watches_resume_and_gone_relists(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """After every watch is cut, changes still arrive within 1 s; after 410 Gone a relist
    also removes what was deleted in the gap."""
    await _basics(cluster)
    start()
    await eventually(conn, lambda s: "10.0.0.1/32" in _routes(s), within=5.0)
    cluster.drop_watches()
    await fake.create(cluster, fake.PODS, fake.pod("b", labels={"app": "web"}, ip="10.0.0.2"))
    await eventually(conn, lambda s: "10.0.0.2/32" in _routes(s))

    cluster.compact(fake.PODS)
    cluster.drop_watches()
    await fake.delete(cluster, fake.PODS, "default", "a")
    cluster.compact(fake.PODS)
    await eventually(conn, lambda s: _routes(s) == {"10.0.0.2/32": "default/web"}, within=3.0)
    watches = [r for r in cluster.requests
               if r.action == kmock.action.WATCH and r.url.path == "/api/v1/pods"]
    lists = [r for r in cluster.requests
             if r.action == kmock.action.LIST and r.url.path == "/api/v1/pods"]
    assert len(watches) >= 3 and len(lists) >= 2


async def test_only_the_leader_publishes(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running],
    cfg: settings.Settings,
) -> None:
    """Of two replicas only the Lease holder builds and publishes; when it stops, the other
    takes over at once (released Lease) and keeps the snapshot current."""
    await _basics(cluster)
    first = start(identity="replica-a")
    await eventually(conn, lambda s: "10.0.0.1/32" in _routes(s), within=5.0)
    second = start(identity="replica-b")
    await fake.create(cluster, fake.PODS, fake.pod("b", labels={"app": "web"}, ip="10.0.0.2"))
    await eventually(conn, lambda s: "10.0.0.2/32" in _routes(s))
    await asyncio.sleep(0.5)
    lease = [obj.raw for (res, _, _), obj in cluster.objects.items()
             if res.plural == "leases"]
    assert [item["spec"]["holderIdentity"] for item in lease] == ["replica-a"]
    assert first.builds >= 2 and second.builds == 0
    await first.close()
    await fake.create(cluster, fake.PODS, fake.pod("c", labels={"app": "web"}, ip="10.0.0.3"))
    await eventually(conn, lambda s: "10.0.0.3/32" in _routes(s), within=2.0)
    assert second.builds >= 1 and not second.task.done()


def _rules() -> list[dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "rbac" / "reconciler.yaml").read_text())
    rules: list[dict[str, Any]] = []
    for doc in docs:
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            rules.extend(doc["rules"])
    return rules


def _verb(request: kmock.Request) -> str:
    if request.action == kmock.action.WATCH:
        return "watch"
    if request.method == kmock.method.GET:
        return "get" if request.name else "list"
    return {"PATCH": "patch", "POST": "create", "DELETE": "delete"}[request.method.value]


async def test_a_servers_ca_config_map_is_read_and_refreshed(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """A server's tlsCA ConfigMap: missing, the server and its policy are left out (and
    the server's status says CANotFound); created or changed, its PEM reaches the
    CREDENTIALS bucket under the key the upstream names."""
    await _basics(cluster)
    await fake.patch(cluster, fake.SERVERS, "default", "smtp", {"spec": {
        "tlsCA": {"configMapKeyRef": {"name": "ca"}}}})
    start()
    await fake.until(lambda: _condition(_status(cluster, "smtpservers", "default/smtp"),
                                        "Ready").get("reason") == "CANotFound")
    await eventually(conn, lambda s: s.upstreams == {} and s.policies == {}, within=5.0)

    await fake.create(cluster, fake.CONFIGMAPS, fake.config_map("ca", {"ca.crt": PEM}))
    snap = await eventually(conn, lambda s: "default/web" in s.policies)
    key = snap.upstreams["default/smtp"].tls_ca
    assert key == credentials.ca_key(PEM)
    await _ca_is(conn, key, PEM)

    rotated = PEM.replace("MIIB", "MIIC")
    await fake.patch(cluster, fake.CONFIGMAPS, "default", "ca", {"data": {"ca.crt": rotated}})
    snap = await eventually(conn, lambda s: "default/smtp" in s.upstreams
                            and s.upstreams["default/smtp"].tls_ca != key)
    await _ca_is(conn, credentials.ca_key(rotated), rotated)


async def test_reconciler_needs_only_the_documented_rbac(
    cluster: fake.VersionedEmulator, conn: bus.Conn, start: Callable[..., Running]
) -> None:
    """Every API request the reconciler makes is allowed by deploy/rbac/reconciler.yaml,
    and every verb granted there is used: the RBAC is sufficient and minimal."""
    await _basics(cluster)
    await fake.create(cluster, fake.SECRETS, fake.secret("login"))
    await fake.create(cluster, fake.CONFIGMAPS, fake.config_map("ca", {"ca.crt": PEM}))
    await fake.patch(cluster, fake.POLICIES, "default", "web", {"spec": {"sink": {"smtp": {
        "credentials": {"name": "login"}}}}})
    await fake.patch(cluster, fake.SERVERS, "default", "smtp", {"spec": {
        "tlsCA": {"configMapKeyRef": {"name": "ca"}}}})
    source = start()
    await eventually(conn, lambda s: "default/web" in s.policies
                     and s.upstreams["default/smtp"].tls_ca is not None, within=5.0)
    await fake.until(lambda: len(_status_patches(cluster)) >= 2)
    await asyncio.sleep(0.3)  # a few Lease renewals
    await source.close()
    used: set[tuple[str, str, str, str | None]] = set()
    for request in cluster.requests:
        if request.resource is None or request.headers.get("User-Agent", "").startswith("kmock"):
            continue  # the test's own requests
        resource = request.resource.plural or ""
        if request.subresource:
            resource += f"/{request.subresource}"
        used.add((request.resource.group or "", resource, _verb(request), request.name))
    rules = _rules()

    def allowed(group: str, resource: str, verb: str, name: str | None) -> bool:
        return any(group in rule["apiGroups"] and resource in rule["resources"]
                   and verb in rule["verbs"]
                   and (not rule.get("resourceNames") or name in rule["resourceNames"])
                   for rule in rules)

    assert used and all(allowed(*request) for request in used), sorted(
        r for r in used if not allowed(*r))
    granted = {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    exercised = {(group, resource, verb) for group, resource, verb, _ in used}
    assert granted == exercised, (granted - exercised, exercised - granted)


async def test_reconciler_role_runs_the_kubernetes_source(
    cluster: fake.VersionedEmulator, conn: bus.Conn, cfg: settings.Settings
) -> None:
    """`podpost reconciler` with source=kubernetes (reconciler.main.serve) connects to the
    bus and the cluster itself, publishes, and returns when stopped."""
    from reconciler import main

    await _basics(cluster)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(main.serve(cfg, stop))
        await eventually(conn, lambda s: "10.0.0.1/32" in _routes(s), within=5.0)
        stop.set()
        async with asyncio.timeout(5):
            await task


async def test_the_ingress_follows_a_pods_labels(
    cluster: fake.VersionedEmulator, conn: bus.Conn, nats_settings: settings.NatsSettings,
    start: Callable[..., Running],
) -> None:
    """The whole chain on a pod's address: the ingress accepts mail from a pod its
    policy selects, and refuses it with 550 once the pod's labels no longer match."""
    await fake.create(cluster, fake.SERVERS, fake.server("smtp"))
    await fake.create(cluster, fake.PODS, fake.pod("a", labels={"app": "web"}, ip="127.0.0.7"))
    await fake.create(cluster, fake.POLICIES, fake.policy("web", labels={"app": "web"}))
    start()
    await eventually(conn, lambda s: "127.0.0.7/32" in _routes(s), within=5.0)
    cfg = inprocess.make_settings(nats_settings)
    data = b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
    async with inprocess.running(cfg) as ingress:
        reply = ""
        for _ in range(50):  # the ingress polls the snapshot: it may need a moment
            with contextlib.suppress(aiosmtplib.SMTPResponseException):
                reply = await ingress_support.send(ingress, "app@example.com", ["z@y.test"],
                                                   data, source="127.0.0.7")
                break
            await asyncio.sleep(0.1)
        assert reply.startswith("2.0.0 queued as ")
        await fake.patch(cluster, fake.PODS, "default", "a",
                         {"metadata": {"labels": {"app": "batch"}}})
        await eventually(conn, lambda s: "127.0.0.7/32" not in _routes(s))
        refused: aiosmtplib.SMTPResponseException | None = None
        queued = {reply.rsplit(" ", 1)[1]}
        for attempt in range(50):  # accepted until the ingress has polled the new snapshot
            try:
                reply = await ingress_support.send(
                    ingress, "app@example.com", ["z@y.test"], data + b"%d\r\n" % attempt,
                    source="127.0.0.7")
                queued.add(reply.rsplit(" ", 1)[1])
            except aiosmtplib.SMTPResponseException as exc:
                refused = exc
                break
            await asyncio.sleep(0.1)
        assert refused is not None and refused.code == 550, refused
        assert "127.0.0.7" in refused.message
    stored = await ingress_support.stored(conn)
    assert sorted(env.id for _, env in stored) == sorted(queued)  # the refused one is not
