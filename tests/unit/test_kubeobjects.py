"""Pods as client identities: which pods count, which addresses, who wins a reused IP."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.rules import kubeobjects


def _pod(name: str = "p", *, phase: str = "Running", ip: str | None = "10.0.0.1",
         ips: list[str] | None = None, host_network: bool = False,
         deleting: bool = False, created: str = "2024-01-01T00:00:00Z",
         labels: dict[str, str] | None = None, namespace: str = "ns") -> kubeobjects.Pod:
    doc: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name},
                     "creationTimestamp": created},
        "spec": {"hostNetwork": host_network, "containers": [{"name": "c"}]},
        "status": {"phase": phase},
    }
    if deleting:
        doc["metadata"]["deletionTimestamp"] = "2024-01-02T00:00:00Z"
    if ip is not None:
        doc["status"]["podIP"] = ip
    if ips is not None:
        doc["status"]["podIPs"] = [{"ip": one} for one in ips]
    return kubeobjects.pod_decoder.decode(msgspec.json.encode(doc))


@pytest.mark.parametrize(
    ("pod", "networks"),
    [
        (_pod(), ("10.0.0.1/32",)),
        (_pod(phase="Pending"), ("10.0.0.1/32",)),
        (_pod(phase="Succeeded"), None),
        (_pod(phase="Failed"), None),
        (_pod(phase="Unknown"), None),
        (_pod(phase="Pending", ip=None), None),
        (_pod(host_network=True), None),
        (_pod(ips=["10.0.0.1", "fd00:0:0::7"]), ("10.0.0.1/32", "fd00::7/128")),
        (_pod(ip="10.0.0.1", ips=["fd00::7", "10.0.0.1"]), ("fd00::7/128", "10.0.0.1/32")),
        (_pod(ip="not-an-ip"), None),
        (_pod(ips=[]), ("10.0.0.1/32",)),
    ],
)
def test_pod_record_networks(pod: kubeobjects.Pod, networks: tuple[str, ...] | None) -> None:
    """Pending and Running pods with an address count; podIPs wins over podIP."""
    record = kubeobjects.pod_record(pod)
    assert (record.networks if record else None) == networks


def test_extra_pod_fields_are_ignored() -> None:
    """A real API pod (many more fields) decodes into the lean Struct."""
    doc = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "a", "namespace": "b", "uid": "x", "managedFields": [{}],
                        "ownerReferences": [{"kind": "ReplicaSet"}]},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": "Running", "podIP": "10.1.1.1", "hostIP": "192.168.0.1",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    record = kubeobjects.pod_record(kubeobjects.pod_decoder.decode(msgspec.json.encode(doc)))
    assert record is not None and record.key == "b/a" and record.networks == ("10.1.1.1/32",)


def _record(pod: kubeobjects.Pod) -> kubeobjects.PodRecord:
    record = kubeobjects.pod_record(pod)
    assert record is not None
    return record


@pytest.mark.parametrize(
    ("old", "new", "winner"),
    [
        (_pod("old", deleting=True), _pod("new", created="2024-01-02T00:00:00Z"), "new"),
        (_pod("old", phase="Running"), _pod("new", phase="Pending",
                                            created="2024-01-03T00:00:00Z"), "old"),
        (_pod("old"), _pod("new", created="2024-01-02T00:00:00Z"), "new"),
        (_pod("old", created="2024-01-05T00:00:00Z", deleting=True),
         _pod("new", created="2024-01-02T00:00:00Z"), "new"),
    ],
)
def test_reused_ip_goes_to_the_live_pod(
    old: kubeobjects.Pod, new: kubeobjects.Pod, winner: str
) -> None:
    """Running beats Pending, not terminating beats terminating, then the newest wins."""
    for order in ([old, new], [new, old]):
        endpoints = kubeobjects.endpoints(_record(p) for p in order)
        assert [e.source for e in endpoints] == [f"pod:ns/{winner}"]
        assert endpoints[0].networks == ["10.0.0.1/32"]


def test_pod_keeps_its_other_addresses_when_one_is_taken() -> None:
    """A dual-stack pod that loses its IPv4 to a livelier pod keeps its IPv6."""
    old = _pod("old", ips=["10.0.0.1", "fd00::1"], deleting=True)
    new = _pod("new", ip="10.0.0.1", created="2024-02-01T00:00:00Z")
    endpoints = {e.source: e.networks for e in kubeobjects.endpoints([_record(old),
                                                                      _record(new)])}
    assert endpoints == {"pod:ns/old": ["fd00::1/128"], "pod:ns/new": ["10.0.0.1/32"]}


def test_endpoint_carries_namespace_and_labels() -> None:
    """The endpoint names the pod, its namespace and its labels, for the selector match."""
    (endpoint,) = kubeobjects.endpoints([_record(_pod("a", labels={"x": "y"},
                                                      namespace="shop"))])
    assert (endpoint.source, endpoint.namespace, endpoint.labels) == (
        "pod:shop/a", "shop", {"x": "y"})


_octet = st.integers(1, 3)
_pods = st.lists(
    st.builds(
        lambda i, ip, phase, deleting, day: _pod(
            f"p{i}", ip=f"10.0.0.{ip}", phase=phase, deleting=deleting,
            created=f"2024-01-{day:02d}T00:00:00Z"),
        st.integers(0, 50), _octet, st.sampled_from(["Running", "Pending"]), st.booleans(),
        st.integers(1, 28),
    ),
    max_size=12,
    unique_by=lambda p: p.metadata.name,
)


@given(pods=_pods)
def test_every_address_has_exactly_one_owner(pods: list[kubeobjects.Pod]) -> None:
    """No network is ever given to two pods, and the result ignores input order."""
    records = [_record(p) for p in pods]
    endpoints = kubeobjects.endpoints(records)
    networks = [n for e in endpoints for n in e.networks]
    assert len(networks) == len(set(networks))
    assert set(networks) == {n for r in records for n in r.networks}
    assert kubeobjects.endpoints(reversed(records)) == endpoints
