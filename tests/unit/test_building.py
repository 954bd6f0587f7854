"""The snapshot builder: resources in, routes, upstreams, credentials and conditions out."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.rules import building, credentials, inventory
from reconciler.rules import inputs as inputs_mod
from schemas import names, resources, snapshot

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PASSWORD = "hunter2-planted-password"


def server(name: str = "relay", namespace: str = "app", **spec: Any) -> resources.SMTPServer:
    return msgspec.convert(
        {"metadata": {"name": name, "namespace": namespace},
         "spec": {"server": "smtp.example.com", **spec}},
        resources.SMTPServer,
    )


def policy(
    name: str,
    namespace: str = "app",
    *,
    selector: dict[str, Any] | None = None,
    sink: dict[str, Any] | None = None,
    **spec: Any,
) -> resources.EmailPolicy:
    return msgspec.convert(
        {"metadata": {"name": name, "namespace": namespace},
         "spec": {"podSelector": selector or {},
                  "sink": sink if sink is not None else {"catcher": {}}, **spec}},
        resources.EmailPolicy,
    )


def smtp_sink(server_name: str = "relay", secret: str | None = None,
              secret_ns: str | None = None, server_ns: str | None = None) -> dict[str, Any]:
    sink: dict[str, Any] = {"server": {"name": server_name}}
    if server_ns:
        sink["server"]["namespace"] = server_ns
    if secret is not None:
        sink["credentials"] = {"name": secret}
        if secret_ns:
            sink["credentials"]["namespace"] = secret_ns
    return {"smtp": sink}


def secret(name: str = "login", namespace: str = "app", *, annotations: dict[str, str] | None
           = None, data: dict[str, str] | None = None,
           string_data: dict[str, str] | None = None) -> resources.Secret:
    if data is None and string_data is None:
        string_data = {"username": "robot", "password": PASSWORD}
    return msgspec.convert(
        {"metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
         "data": data or {}, "stringData": string_data or {}},
        resources.Secret,
    )


def pod(name: str, namespace: str = "app", *networks: str, **labels: str) -> inputs_mod.Endpoint:
    return inputs_mod.Endpoint(source=f"pod:{namespace}/{name}", namespace=namespace,
                             labels=labels, networks=list(networks) or ["10.0.0.1"])


def build(**inputs: Any) -> building.Build:
    return building.build(inputs_mod.Inputs(**inputs), now=NOW, source="test")


def routes(result: building.Build) -> dict[str, str]:
    return {r.network: r.policy for r in result.snapshot.routes}


def condition(result: building.Build, obj: str, kind: str = "Ready") -> resources.Condition:
    [found] = [c for c in result.conditions[obj] if c.type == kind]
    return found


# --- routes -------------------------------------------------------------------------------


def test_each_network_of_a_selected_pod_gets_a_route() -> None:
    """A dual-stack pod gets a /32 and a /128 route to its policy, naming the pod."""
    result = build(policies=[policy("web", selector={"matchLabels": {"app": "web"}})],
                   endpoints=[pod("web-1", "app", "10.1.2.3", "fd00::1", app="web")])
    assert result.snapshot.routes == [
        snapshot.Route(network="10.1.2.3/32", policy="app/web", source="pod:app/web-1"),
        snapshot.Route(network="fd00::1/128", policy="app/web", source="pod:app/web-1"),
    ]


def test_static_cidrs_are_normalized() -> None:
    """Host bits of a CIDR are dropped; invalid networks are skipped, not fatal."""
    static = inputs_mod.Endpoint(source="static:app/office", namespace="app", labels={},
                               networks=["192.168.1.7/24", "not-an-ip", "FD00:0::/64"])
    result = build(policies=[policy("all")], endpoints=[static])
    assert routes(result) == {"192.168.1.0/24": "app/all", "fd00::/64": "app/all"}


def test_unselected_endpoints_get_no_route() -> None:
    """A pod no policy selects, or one in a namespace without policies, is not routed."""
    result = build(policies=[policy("web", selector={"matchLabels": {"app": "web"}})],
                   endpoints=[pod("db", "app", "10.0.0.2", app="db"),
                              pod("web", "other", "10.0.0.3", app="web")])
    assert result.snapshot.routes == []


def test_policy_selects_only_its_own_namespace() -> None:
    """An empty selector selects every pod of the policy's namespace and none elsewhere."""
    result = build(policies=[policy("all", "app")],
                   endpoints=[pod("a", "app", "10.0.0.1"), pod("b", "app", "10.0.0.2", x="y"),
                              pod("c", "other", "10.0.0.3")])
    assert routes(result) == {"10.0.0.1/32": "app/all", "10.0.0.2/32": "app/all"}


# --- default policies and conflicts -------------------------------------------------------


def test_default_policy_takes_only_what_no_other_policy_selects() -> None:
    """A default policy is a fallback: non-default policies win, without a conflict."""
    result = build(
        policies=[policy("web", selector={"matchLabels": {"app": "web"}}),
                  policy("fallback", default=True)],
        endpoints=[pod("web", "app", "10.0.0.1", app="web"),
                   pod("cron", "app", "10.0.0.2", app="cron")],
    )
    assert routes(result) == {"10.0.0.1/32": "app/web", "10.0.0.2/32": "app/fallback"}
    for key in ("app/web", "app/fallback"):
        assert condition(result, f"EmailPolicy:{key}", "Conflict").status == "False"


def test_more_specific_selector_wins_and_both_policies_say_so() -> None:
    """Two policies selecting one pod: more terms win; both carry a Conflict condition
    naming the other policy and the pod."""
    result = build(
        policies=[policy("broad", selector={"matchLabels": {"app": "web"}}),
                  policy("narrow", selector={"matchLabels": {"app": "web", "tier": "fe"}})],
        endpoints=[pod("web-1", "app", "10.0.0.1", app="web", tier="fe"),
                   pod("web-2", "app", "10.0.0.2", app="web")],
    )
    assert routes(result) == {"10.0.0.1/32": "app/narrow", "10.0.0.2/32": "app/broad"}
    broad = condition(result, "EmailPolicy:app/broad", "Conflict")
    narrow = condition(result, "EmailPolicy:app/narrow", "Conflict")
    assert broad.status == narrow.status == "True"
    assert "app/narrow" in broad.message and "pod:app/web-1" in broad.message
    assert "app/broad" in narrow.message and "pod:app/web-1" in narrow.message
    assert "pod:app/web-2" not in broad.message
    assert "app/narrow takes precedence over app/broad" in broad.message
    assert condition(result, "EmailPolicy:app/broad").status == "True"


def test_equal_selectors_tie_break_on_the_smaller_name() -> None:
    """Same number of terms: the lexically smaller key wins, whatever the input order."""
    policies = [policy("zeta", selector={"matchLabels": {"app": "web"}}),
                policy("alpha", selector={"matchExpressions": [
                    {"key": "app", "operator": "Exists"}]})]
    for ordered in (policies, policies[::-1]):
        result = build(policies=ordered, endpoints=[pod("p", "app", "10.0.0.1", app="web")])
        assert routes(result) == {"10.0.0.1/32": "app/alpha"}


def test_two_defaults_conflict_with_each_other() -> None:
    """Defaults only compete among themselves, deterministically, and say so."""
    result = build(policies=[policy("d2", default=True), policy("d1", default=True)],
                   endpoints=[pod("p", "app", "10.0.0.1")])
    assert routes(result) == {"10.0.0.1/32": "app/d1"}
    assert condition(result, "EmailPolicy:app/d2", "Conflict").status == "True"


def test_conflict_message_is_bounded() -> None:
    """A conflict over many pods names a few and counts the rest."""
    pods = [pod(f"p{i:03}", "app", f"10.0.1.{i}") for i in range(50)]
    result = build(policies=[policy("a"), policy("b")], endpoints=pods)
    message = condition(result, "EmailPolicy:app/a", "Conflict").message
    assert "and 45 more" in message
    assert len(message) < 400


# --- resolving sinks, servers and secrets -------------------------------------------------


def test_smtp_policy_resolves_upstream_and_credentials() -> None:
    """An SMTP sink names the server's key and a CREDENTIALS key holding the login."""
    result = build(servers=[server(port=2525, connect="starttls", maxConnections=3,
                                   timeoutSeconds=20)],
                   secrets=[secret()],
                   policies=[policy("web", sink=smtp_sink(secret="login"))])
    view = result.snapshot.policies["app/web"]
    assert view.upstream == "app/relay"
    assert view.credentials == names.key_ident("app/login")
    assert result.credentials == {
        view.credentials: snapshot.Credentials(username="robot", password=PASSWORD)}
    assert result.snapshot.upstreams["app/relay"] == snapshot.UpstreamView(
        key="app/relay", host="smtp.example.com", port=2525, connect="starttls",
        auth_type="PLAIN", max_connections=3, timeout_s=20.0)
    assert condition(result, "SMTPServer:app/relay").status == "True"


def test_server_port_defaults_to_587() -> None:
    """Port defaults to 587, as in kube-mail."""
    view = build(servers=[server(connect="plain")]).snapshot.upstreams["app/relay"]
    assert view.port == 587


@pytest.mark.parametrize(("spec", "mode"), [
    ({}, "ssl"),
    ({"tls": True}, "ssl"),
    ({"tls": False}, "plain"),
    ({"connect": "starttls", "tls": True}, "starttls"),
    ({"connect": "plain", "tls": True}, "plain"),
    ({"connect": "ssl", "tls": False}, "ssl"),
])
def test_deprecated_tls_means_what_it_means_in_kube_mail(
    spec: dict[str, Any], mode: str
) -> None:
    """Without `connect`, `tls` unset or true is implicit TLS and false is plain
    (kube-mail's src/policy/kubernetes.ts); `connect` always wins."""
    view = build(servers=[server(**spec)]).snapshot.upstreams["app/relay"]
    assert view.connect == mode


def test_server_in_another_namespace_is_allowed() -> None:
    """kube-mail lets a policy use a server of another namespace; only Secrets are guarded."""
    result = build(servers=[server("relay", "infra")],
                   policies=[policy("web", sink=smtp_sink(server_ns="infra"))])
    assert result.snapshot.policies["app/web"].upstream == "infra/relay"


def test_catcher_policy_needs_no_server() -> None:
    """The catcher sink points at the built-in catcher upstream, no credentials."""
    view = build(policies=[policy("dev")]).snapshot.policies["app/dev"]
    assert (view.upstream, view.credentials) == (names.CATCHER, None)


@pytest.mark.parametrize(("sink", "inputs", "reason"), [
    ({}, {}, "InvalidSink"),
    ({"catcher": {}, **smtp_sink()}, {"servers": [server()]}, "InvalidSink"),
    (smtp_sink("missing"), {"servers": [server()]}, "ServerNotFound"),
    (smtp_sink(secret="nope"), {"servers": [server()]}, "SecretNotFound"),
    (smtp_sink(secret="login"),
     {"servers": [server()], "secrets": [secret(string_data={"username": "u"})]},
     "SecretInvalid"),
    (smtp_sink(secret="login"),
     {"servers": [server()], "secrets": [secret(data={"username": "dQ==", "password": "!!"})]},
     "SecretInvalid"),
    (smtp_sink(secret="login", secret_ns="vault"),
     {"servers": [server()], "secrets": [secret(namespace="vault")]},
     "CrossNamespaceSecretNotGranted"),
    (smtp_sink(secret="login", secret_ns="vault"),
     {"servers": [server()], "secrets": [secret(
         namespace="vault",
         annotations={credentials.ALLOWED_NAMESPACES_ANNOTATION: "billing, other"})]},
     "CrossNamespaceSecretNotGranted"),
])
def test_unresolvable_policy_is_not_ready_and_left_out(
    sink: dict[str, Any], inputs: dict[str, Any], reason: str
) -> None:
    """A policy that cannot be resolved is not Ready (with the reason), gets no route and
    is not in the snapshot; no credentials are produced for it."""
    result = build(policies=[policy("web", sink=sink)],
                   endpoints=[pod("p", "app", "10.0.0.1")], **inputs)
    ready = condition(result, "EmailPolicy:app/web")
    assert (ready.status, ready.reason) == ("False", reason)
    assert condition(result, "EmailPolicy:app/web", "Conflict").status == "False"
    assert result.snapshot.policies == {}
    assert result.snapshot.routes == []
    assert result.credentials == {}


@pytest.mark.parametrize("granted", ["app", "billing,app", " billing , app ", "*"])
def test_cross_namespace_secret_with_grant(granted: str) -> None:
    """The annotation listing the policy's namespace (or *) grants the Secret."""
    result = build(servers=[server()],
                   secrets=[secret(namespace="vault", annotations={
                       credentials.ALLOWED_NAMESPACES_ANNOTATION: granted})],
                   policies=[policy("web", sink=smtp_sink(secret="login", secret_ns="vault"))])
    assert condition(result, "EmailPolicy:app/web").status == "True"
    assert result.snapshot.policies["app/web"].credentials == "vault__login"
    assert set(result.credentials) == {"vault__login"}


def test_base64_data_and_string_data_precedence() -> None:
    """data is base64; stringData wins over data for the same key, as on the API server."""
    encoded = {k: base64.b64encode(v.encode()).decode()
               for k, v in {"username": "from-data", "password": "pw-data"}.items()}
    result = build(servers=[server()],
                   secrets=[secret(data=encoded, string_data={"username": "from-string"})],
                   policies=[policy("web", sink=smtp_sink(secret="login"))])
    assert list(result.credentials.values()) == [
        snapshot.Credentials(username="from-string", password="pw-data")]


def test_one_credentials_key_per_secret() -> None:
    """Two policies sharing a Secret share one CREDENTIALS key."""
    result = build(servers=[server()], secrets=[secret()],
                   policies=[policy("a", sink=smtp_sink(secret="login")),
                             policy("b", sink=smtp_sink(secret="login"))])
    assert list(result.credentials) == ["app__login"]


def test_credentials_never_reach_the_snapshot() -> None:
    """Neither the password nor the username appear in the encoded snapshot."""
    result = build(servers=[server()], secrets=[secret()],
                   policies=[policy("web", sink=smtp_sink(secret="login"))],
                   endpoints=[pod("p", "app", "10.0.0.1")])
    encoded = snapshot.snapshot_encoder.encode(result.snapshot)
    assert PASSWORD.encode() not in encoded
    assert b"robot" not in encoded
    assert PASSWORD not in repr(result)


# --- policy extras ------------------------------------------------------------------------


def test_policy_extras_reach_the_view() -> None:
    """Rate limit, retry durations, size limit and allowed senders are carried over."""
    result = build(policies=[policy(
        "web", ratelimiting={"maximum": 100, "period": "minute"},
        retry={"minDelay": "90s", "maxDelay": "1h7m", "maxQueueAge": "5d"},
        maxMessageSize=1024, allowedSenders=["a@example.com", "@example.org"])])
    view = result.snapshot.policies["app/web"]
    assert view.ratelimit == snapshot.RateLimit(maximum=100, period_s=60.0)
    assert view.retry == snapshot.RetryOverride(min_delay_s=90.0, max_delay_s=4020.0,
                                                max_age_s=432000.0)
    assert (view.max_message_size, view.allowed_senders) == (
        1024, ["a@example.com", "@example.org"])


def test_ratelimit_period_defaults_to_a_minute() -> None:
    """A ratelimiting without period counts per minute, as kube-mail's
    `period || "minute"` (src/policy/kubernetes.ts)."""
    view = build(policies=[policy("web", ratelimiting={"maximum": 5})]).snapshot.policies
    assert view["app/web"].ratelimit == snapshot.RateLimit(maximum=5, period_s=60.0)


def test_partial_retry_overrides_only_what_it_sets() -> None:
    """Unset retry fields stay None so the dispatcher's global values apply."""
    view = build(policies=[policy("web", retry={"maxQueueAge": "1d"})]).snapshot.policies
    assert view["app/web"].retry == snapshot.RetryOverride(max_age_s=86400.0)


@pytest.mark.parametrize(("extra", "reason"), [
    ({"retry": {"minDelay": "2h", "maxDelay": "1h"}}, "InvalidRetry"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "InvalidSelector"),
])
def test_invalid_extras_make_the_policy_not_ready(extra: dict[str, Any], reason: str) -> None:
    """Contradictory retry bounds or a selector Kubernetes would refuse: not Ready."""
    result = build(policies=[policy("web", **extra)])
    assert condition(result, "EmailPolicy:app/web").reason == reason
    assert result.snapshot.policies == {}


# --- determinism and digest ---------------------------------------------------------------


def _world() -> inputs_mod.Inputs:
    return inputs_mod.Inputs(
        servers=[server("relay"), server("other", "infra")],
        secrets=[secret()],
        policies=[policy("a", selector={"matchLabels": {"app": "a"}},
                         sink=smtp_sink(secret="login")),
                  policy("b", selector={"matchLabels": {"app": "a"}}),
                  policy("c", "other"), policy("d", default=True)],
        endpoints=[pod(f"p{i}", "app" if i % 3 else "other", f"10.0.0.{i}",
                       app="a" if i % 2 else "b") for i in range(30)],
    )


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_output_does_not_depend_on_input_order(rnd: random.Random) -> None:
    """Shuffled inputs build byte-identical snapshots, credentials and conditions."""
    world = _world()
    shuffled = inputs_mod.Inputs(**{
        field: rnd.sample(getattr(world, field), len(getattr(world, field)))
        for field in ("servers", "secrets", "policies", "endpoints")})
    one = building.build(world, now=NOW, source="test")
    two = building.build(shuffled, now=NOW, source="test")
    assert msgspec.json.encode(one) == msgspec.json.encode(two)


def test_digest_ignores_generated_at_and_follows_content() -> None:
    """An unchanged rebuild later has the same digest; a changed route changes it."""
    world = _world()
    first = building.build(world, now=NOW, source="test").snapshot
    later = building.build(world, now=NOW + timedelta(hours=1), source="test").snapshot
    assert first.generated_at != later.generated_at
    assert first.digest == later.digest != ""
    moved = msgspec.structs.replace(world, endpoints=world.endpoints[1:])
    assert building.build(moved, now=NOW, source="test").snapshot.digest != first.digest


def test_digest_is_recomputable_from_the_snapshot() -> None:
    """The digest is the hash of the published content, so readers can check it."""
    snap = building.build(_world(), now=NOW, source="test").snapshot
    assert building.digest(snap) == snap.digest


# --- scale --------------------------------------------------------------------------------


def test_ten_thousand_pods_and_a_thousand_policies_build_every_route() -> None:
    """10,000 pods x 1,000 policies (plus a default per namespace) build one route per pod,
    each to the policy that selects it. How long it takes is bench/snapshot_build.py's to
    print: a timed assertion fails on a busy 2-core machine (it did, at 225 ms)."""
    namespaces = 20
    policies = [policy(f"p{i}", f"ns{i % namespaces}",
                       selector={"matchLabels": {"app": f"app{i}"},
                                 "matchExpressions": [
                                     {"key": "canary", "operator": "DoesNotExist"}]})
                for i in range(1000)]
    policies += [policy("fallback", f"ns{n}", default=True) for n in range(namespaces)]
    endpoints = [
        inputs_mod.Endpoint(source=f"pod:ns{j % 1000 % namespaces}/pod{j}",
                          namespace=f"ns{j % 1000 % namespaces}",
                          labels={"app": f"app{j % 1100}", "hash": f"h{j}"},
                          networks=[f"10.{j >> 16}.{(j >> 8) & 255}.{j & 255}"])
        for j in range(10_000)]
    inputs = inputs_mod.Inputs(policies=policies, endpoints=endpoints)
    result = building.build(inputs, now=NOW, source="test")
    assert len(result.snapshot.routes) == 10_000
    by_network = {route.network: route.policy for route in result.snapshot.routes}
    for j in (0, 999, 1_000, 1_099, 1_100, 9_999):
        app = j % 1100
        namespace = f"ns{j % 1000 % namespaces}"
        want = f"{namespace}/p{app}" if app < 1000 else f"{namespace}/fallback"
        assert by_network[f"10.{j >> 16}.{(j >> 8) & 255}.{j & 255}/32"] == want, j


# --- an upstream's own CA (spec.tlsCA) ----------------------------------------------------

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def config_map(name: str = "company-ca", namespace: str = "app",
               data: dict[str, str] | None = None) -> resources.ConfigMap:
    return msgspec.convert(
        {"metadata": {"name": name, "namespace": namespace},
         "data": {"ca.crt": PEM} if data is None else data},
        resources.ConfigMap)


def test_a_config_map_ca_goes_to_the_credentials_bucket_not_the_snapshot() -> None:
    """tlsCA's PEM becomes one `ca.<hash>` key the upstream names; the snapshot holds
    only the key."""
    result = build(servers=[server(connect="ssl",
                                   tlsCA={"configMapKeyRef": {"name": "company-ca"}})],
                   config_maps=[config_map()], policies=[policy("web", sink=smtp_sink())])
    view = result.snapshot.upstreams["app/relay"]
    assert view.tls_ca == credentials.ca_key(PEM) and view.tls_ca.startswith("ca.")
    assert result.cas == {view.tls_ca: snapshot.TrustedCA(pem=PEM)}
    assert PEM.encode() not in snapshot.encode_snapshot(result.snapshot)
    assert "app/web" in result.snapshot.policies


def test_a_secret_ca_is_read_from_its_key_base64_decoded() -> None:
    """secretKeyRef reads `data[key]` (base64) of a Secret in the server's namespace."""
    encoded = base64.b64encode(PEM.encode()).decode()
    result = build(servers=[server(tlsCA={"secretKeyRef": {"name": "tls", "key": "ca.pem"}})],
                   secrets=[secret("tls", data={"ca.pem": encoded})])
    assert result.cas == {credentials.ca_key(PEM): snapshot.TrustedCA(pem=PEM)}


@pytest.mark.parametrize(("tls_ca", "config_maps", "reason"), [
    ({"configMapKeyRef": {"name": "company-ca"}}, [], "CANotFound"),
    ({"configMapKeyRef": {"name": "company-ca", "key": "other"}}, [config_map()],
     "CANotFound"),
    ({"configMapKeyRef": {"name": "company-ca"}}, [config_map(namespace="elsewhere")],
     "CANotFound"),
    ({"configMapKeyRef": {"name": "company-ca"}}, [config_map(data={"ca.crt": "junk"})],
     "InvalidCA"),
    ({}, [], "InvalidCA"),
    ({"configMapKeyRef": {"name": "a"}, "secretKeyRef": {"name": "b"}}, [], "InvalidCA"),
])
def test_an_unreadable_ca_makes_the_server_and_its_policies_not_ready(
    tls_ca: dict[str, Any], config_maps: list[resources.ConfigMap], reason: str
) -> None:
    """A missing, foreign-namespace or non-PEM CA: the server is not Ready and left out,
    and so is every policy using it (nothing is relayed, as with a missing Secret)."""
    result = build(servers=[server(tlsCA=tls_ca)], config_maps=config_maps,
                   policies=[policy("web", sink=smtp_sink())])
    assert condition(result, "SMTPServer:app/relay").reason == reason
    assert condition(result, "SMTPServer:app/relay").status == "False"
    assert condition(result, "EmailPolicy:app/web").reason == "ServerNotReady"
    assert result.snapshot.upstreams == {} and result.snapshot.policies == {}
    assert result.cas == {}


# --- the ingress's policy fields ----------------------------------------------------------


def test_client_credentials_become_verifiers_and_the_ingress_fields_pass_through() -> None:
    """clientCredentials become the snapshot's logins as PBKDF2 verifiers (the password
    is nowhere in the snapshot, a changed one changes the digest); requireTLS,
    allowPlaintextAuth and rewriteSender reach the policy's view."""
    spec = {"clientCredentials": [{"name": "login"}], "requireTLS": True,
            "allowPlaintextAuth": True, "rewriteSender": "noreply@verified.example"}
    result = build(policies=[policy("remote", **spec)], secrets=[secret()])
    snap = result.snapshot
    view = snap.policies["app/remote"]
    assert (view.require_tls, view.allow_plaintext_auth, view.rewrite_sender) == (
        True, True, "noreply@verified.example")
    login = snap.logins["robot"]
    assert login.policy == "app/remote"
    assert login.verifier == snapshot.login_verifier(PASSWORD, login.salt, login.iterations)
    assert PASSWORD.encode() not in snapshot.snapshot_encoder.encode(snap)
    changed = build(policies=[policy("remote", **spec)], secrets=[secret(
        string_data={"username": "robot", "password": "other"})])
    assert changed.snapshot.digest != snap.digest
    assert inventory.secret_refs([policy("remote", **spec)]) == {"app/login"}


def test_a_username_two_policies_claim_makes_the_later_one_not_ready() -> None:
    """Two policies whose clientCredentials share a username: the first (by key) keeps
    it, the second is not Ready with LoginTaken."""
    refs = {"clientCredentials": [{"name": "login"}]}
    result = build(policies=[policy("a", **refs), policy("b", **refs)], secrets=[secret()])
    assert result.snapshot.logins["robot"].policy == "app/a"
    assert "app/b" not in result.snapshot.policies
    assert condition(result, building.object_key("EmailPolicy", "app/b")).reason == "LoginTaken"
