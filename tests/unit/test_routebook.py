"""The incremental build (`routebook`) against the full one, over random event sequences."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hypothesis.strategies as st
import msgspec
from hypothesis import HealthCheck, given, settings

from reconciler.rules import building, inventory, routebook, statuses
from schemas import resources
from tests.support import kubeapi as fake

NOW = datetime(2024, 5, 1, tzinfo=UTC)
NAMESPACES = ("default", "shop")
IPS = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1")
LABELS = st.fixed_dictionaries({}, optional={"app": st.sampled_from(["web", "api"]),
                                             "tier": st.sampled_from(["a", "b"])})


def _raw(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)


@st.composite
def pod_event(draw: st.DrawFn) -> tuple[str, str, bytes]:
    doc = fake.pod(draw(st.sampled_from(["p1", "p2", "p3", "p4"])),
                   namespace=draw(st.sampled_from(NAMESPACES)), labels=draw(LABELS),
                   ip=None, ips=draw(st.lists(st.sampled_from(IPS), max_size=2)),
                   phase=draw(st.sampled_from(["Running", "Pending", "Succeeded"])),
                   created=draw(st.sampled_from(["2024-01-01T00:00:00Z",
                                                 "2024-02-01T00:00:00Z"])))
    if draw(st.booleans()):
        doc["metadata"]["deletionTimestamp"] = "2024-03-01T00:00:00Z"
    return "pod", draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED"])), _raw(doc)


@st.composite
def policy_event(draw: st.DrawFn) -> tuple[str, str, bytes]:
    doc = fake.policy(draw(st.sampled_from(["web", "all", "fallback"])),
                      namespace=draw(st.sampled_from(NAMESPACES)),
                      server_name=draw(st.sampled_from(["smtp", "gone"])),
                      server_namespace="default",
                      labels=draw(st.none() | LABELS),
                      credentials=draw(st.sampled_from([None, "login"])),
                      default=draw(st.booleans()))
    if draw(st.booleans()):
        doc["spec"]["podSelector"] = {"matchExpressions": [
            {"key": "tier", "operator": draw(st.sampled_from(["In", "NotIn", "Exists"])),
             "values": [] if draw(st.booleans()) else ["a"]}]}
    if draw(st.integers(0, 5)) == 0:
        doc["spec"]["sink"] = {"catcher": {}}
    if draw(st.booleans()):
        doc["spec"]["clientCredentials"] = [{"name": "client"}]
    return "policy", draw(st.sampled_from(["ADDED", "MODIFIED", "DELETED"])), _raw(doc)


@st.composite
def other_event(draw: st.DrawFn) -> tuple[str, str, bytes]:
    kind = draw(st.sampled_from(["server", "secret", "relist"]))
    if kind == "server":
        doc = fake.server("smtp", port=draw(st.sampled_from([25, 587])))
        return kind, draw(st.sampled_from(["ADDED", "DELETED"])), _raw(doc)
    if kind == "secret":  # a login, or a client's (whose username two policies may claim)
        return kind, draw(st.sampled_from(["put", "gone"])), _raw(fake.secret(
            draw(st.sampled_from(["login", "client"])),
            namespace=draw(st.sampled_from(NAMESPACES)),
            username=draw(st.sampled_from(["app", "other"])),
            password=draw(st.sampled_from(["one", "two"]))))
    return kind, "relist", b""


EVENTS = st.lists(st.one_of(pod_event(), pod_event(), policy_event(), other_event()),
                  max_size=30)


def _apply(inv: inventory.Inventory, event: tuple[str, str, bytes]) -> None:
    kind, verb, raw = event
    if kind == "pod":
        inv.pods.apply(verb, raw)
    elif kind == "policy":
        inv.policies.apply(verb, raw)
    elif kind == "server":
        inv.servers.apply(verb, raw)
    elif kind == "secret":
        secret = msgspec.json.decode(raw, type=resources.Secret)
        name = f"{secret.metadata.namespace}/{secret.metadata.name}"
        inv.secrets.put(name, secret if verb == "put" else None)
    else:  # a relist that lost every other pod
        kept = sorted(inv.pods.records)[::2]
        inv.pods.replace(_raw(fake.pod(k.split("/")[1], namespace=k.split("/")[0],
                                       labels=inv.pods.records[k].labels, ip=None,
                                       ips=[n.split("/")[0] for n in inv.pods.records[k].networks]))
                         for k in kept)


def _full(inv: inventory.Inventory) -> building.Build:
    return building.build(inv.inputs(), now=NOW, source="kubernetes")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, st.integers(1, 4))
def test_incremental_build_equals_full_build(events: list[tuple[str, str, bytes]],
                                             every: int) -> None:
    """After any sequence of pod, policy, server, Secret events and relists, synced every
    few events, the route book's build is the full build of the same inventory: snapshot
    (routes included), credentials, conditions, CA bundles; and its matched pods are the
    statuses' count over the full snapshot."""
    inv = inventory.Inventory()
    inv.servers.apply("ADDED", _raw(fake.server("smtp")))
    book = routebook.RouteBook(source="kubernetes", snapshot_routes_max=1_000)
    for step, event in enumerate(events):
        _apply(inv, event)
        if step % every:
            continue
        book.sync(inv)
        full, mine = _full(inv), book.build(now=NOW)
        assert msgspec.structs.replace(mine.snapshot, routes_bucket=False) == full.snapshot
        assert (mine.credentials, mine.conditions, mine.cas) == (
            full.credentials, full.conditions, full.cas)
        assert book.matched == statuses.matched_pods(full.snapshot)


@settings(max_examples=200, deadline=None)
@given(EVENTS, EVENTS)
def test_changes_name_every_route_that_changed(first: list[tuple[str, str, bytes]],
                                               then: list[tuple[str, str, bytes]]) -> None:
    """Between two syncs, every network whose route differs is among the changed routes,
    so writing only those keeps the ROUTES bucket equal to the full build's routes."""
    inv = inventory.Inventory()
    inv.servers.apply("ADDED", _raw(fake.server("smtp")))
    book = routebook.RouteBook(source="kubernetes", snapshot_routes_max=0)
    for event in first:
        _apply(inv, event)
    book.sync(inv)
    assert book.take_changes().everything
    before = dict(book.routes)
    for event in then:
        _apply(inv, event)
    book.sync(inv)
    changes = book.take_changes()
    differ = {n for n in before.keys() | book.routes.keys()
              if before.get(n) != book.routes.get(n)}
    assert differ <= changes.routes and not changes.everything
    assert book.routes == {r.network: r for r in _full(inv).snapshot.routes}
    assert book.build(now=NOW).snapshot.routes == []


def test_a_client_login_goes_to_the_first_policy_also_incrementally() -> None:
    """Two policies claiming one clientCredentials username: the later one (key order) is
    not Ready (LoginTaken), and takes the login once the first is deleted; the book
    follows the full build at each step."""
    inv = inventory.Inventory()
    inv.servers.apply("ADDED", _raw(fake.server("smtp")))
    book = routebook.RouteBook(source="kubernetes", snapshot_routes_max=1_000)
    docs = []
    for name in ("a", "b"):
        doc = fake.policy(name, server_name="smtp", server_namespace="default")
        doc["spec"]["clientCredentials"] = [{"name": "client"}]
        docs.append(doc)
    _apply(inv, ("secret", "put", _raw(fake.secret("client", username="app"))))
    steps = [("policy", "ADDED", _raw(docs[1])), ("policy", "ADDED", _raw(docs[0])),
             ("policy", "DELETED", _raw(docs[0]))]
    reasons = []
    for event in steps:
        _apply(inv, event)
        book.sync(inv)
        full, mine = _full(inv), book.build(now=NOW)
        assert msgspec.structs.replace(mine.snapshot, routes_bucket=False) == full.snapshot
        assert mine.conditions == full.conditions
        reasons.append(full.conditions["EmailPolicy:default/b"][1].reason)
    assert reasons == ["Resolved", "LoginTaken", "Resolved"]
