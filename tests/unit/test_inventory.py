"""The cluster mirror: events and relists change it, and it says when a rebuild is due."""

from __future__ import annotations

from typing import Any

import msgspec

from reconciler.rules import inventory
from schemas import resources
from tests.support import kubeapi as fake


def _raw(doc: dict[str, Any], version: str = "1", status: dict[str, Any] | None = None) -> bytes:
    doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": version}}
    if status is not None:
        doc["status"] = status
    return msgspec.json.encode(doc)


def test_pod_events_change_the_records() -> None:
    """ADDED, MODIFIED (labels) and DELETED each count as a change; a resync does not."""
    pods = inventory.Pods()
    assert pods.apply("ADDED", _raw(fake.pod("a", labels={"app": "x"})))
    assert not pods.apply("MODIFIED", _raw(fake.pod("a", labels={"app": "x"}), version="2"))
    assert pods.apply("MODIFIED", _raw(fake.pod("a", labels={"app": "y"}), version="3"))
    assert pods.records["default/a"].labels == {"app": "y"}
    assert pods.apply("DELETED", _raw(fake.pod("a"), version="4"))
    assert pods.records == {}


def test_finished_pod_leaves_the_records() -> None:
    """A pod that turns Succeeded is removed, as if deleted."""
    pods = inventory.Pods()
    pods.apply("ADDED", _raw(fake.pod("a")))
    assert pods.apply("MODIFIED", _raw(fake.pod("a", phase="Succeeded")))
    assert "default/a" not in pods.records


def test_relist_drops_what_was_deleted_in_the_gap() -> None:
    """A relist replaces the pods: one deleted while the watch was down disappears."""
    pods = inventory.Pods()
    pods.replace([_raw(fake.pod("a", ip="10.0.0.1")), _raw(fake.pod("b", ip="10.0.0.2"))])
    assert pods.replace([_raw(fake.pod("b", ip="10.0.0.2"))])
    assert list(pods.records) == ["default/b"]
    assert not pods.replace([_raw(fake.pod("b", ip="10.0.0.2"))])


def test_status_echo_is_not_a_change() -> None:
    """Our own status patch, echoed by the watch, updates `observed` but asks no rebuild."""
    policies = inventory.Resources(resources.EmailPolicy)
    doc = fake.policy("p", labels={"app": "x"})
    assert policies.apply("ADDED", _raw(doc))
    assert not policies.apply("MODIFIED", _raw(doc, "2", status={"matchedPods": 3}))
    assert policies.observed["default/p"].status == {"matchedPods": 3}
    changed = fake.policy("p", labels={"app": "y"})
    assert policies.apply("MODIFIED", _raw(changed, "3"))


def test_undecodable_resource_is_kept_aside() -> None:
    """A policy that does not decode is not offered to the builder but is remembered."""
    policies = inventory.Resources(resources.EmailPolicy)
    bad = {"apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "EmailPolicy",
           "metadata": {"name": "bad", "namespace": "default"}, "spec": {"sink": {"smtp": {}}}}
    assert policies.apply("ADDED", _raw(bad))
    assert policies.items == {} and "default/bad" in policies.invalid
    assert "server" in policies.invalid["default/bad"].error
    assert policies.apply("MODIFIED", _raw(fake.policy("bad"), "2"))
    assert policies.invalid == {} and "default/bad" in policies.items


def test_resource_relist_removes_missing() -> None:
    """A relist of servers forgets servers (and their observed status) that are gone."""
    servers = inventory.Resources(resources.SMTPServer)
    servers.replace([_raw(fake.server("a")), _raw(fake.server("b"))])
    assert servers.replace([_raw(fake.server("b"))])
    assert list(servers.items) == ["default/b"] and list(servers.observed) == ["default/b"]


def test_secret_refs_default_to_the_policy_namespace() -> None:
    """credentials without namespace mean the policy's own namespace."""
    docs = [fake.policy("a", namespace="shop", credentials="login"),
            fake.policy("b", credentials="login", credentials_namespace="mail"),
            fake.policy("c")]
    policies = [msgspec.convert(doc, resources.EmailPolicy) for doc in docs]
    assert inventory.secret_refs(policies) == {"shop/login", "mail/login"}


def test_secret_changes_and_forgetting() -> None:
    """A Secret's data or grant annotation changing counts; unreferenced ones are dropped."""
    secrets = inventory.Secrets()
    first = msgspec.convert(fake.secret("s"), resources.Secret)
    assert not secrets.put("default/s", None) and "default/s" in secrets.known
    assert secrets.put("default/s", first)
    assert not secrets.put("default/s", first)
    granted = msgspec.convert(fake.secret("s", allowed="shop"), resources.Secret)
    assert secrets.put("default/s", granted)
    assert secrets.forget(set())
    assert secrets.items == {} and secrets.known == set()


def test_a_servers_tls_ca_is_referenced_in_its_own_namespace() -> None:
    """tlsCA names a ConfigMap or a Secret of the SMTPServer's namespace."""
    docs = [fake.server("a", namespace="mail"), fake.server("b", namespace="shop"),
            fake.server("c")]
    docs[0]["spec"]["tlsCA"] = {"configMapKeyRef": {"name": "ca"}}
    docs[1]["spec"]["tlsCA"] = {"secretKeyRef": {"name": "tls", "key": "ca.pem"}}
    servers = [msgspec.convert(doc, resources.SMTPServer) for doc in docs]
    assert inventory.config_map_refs(servers) == {"mail/ca"}
    assert inventory.secret_refs([], servers) == {"shop/tls"}
