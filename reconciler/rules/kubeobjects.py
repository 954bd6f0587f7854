"""Kubernetes API objects, decoded lean, and pods turned into the builder's endpoints.

A cluster holds thousands of pods; kubernetes-asyncio's generated models are slow to build
and heavy to keep. The kubernetes source therefore asks for raw JSON and decodes only the
fields podpost needs, with msgspec, straight into these Structs. Pure: no I/O, no clock.

The rule that turns pods into client identities lives here too: only Pending and Running
pods that have an address count (``status.podIPs``, dual-stack, else ``status.podIP``);
host-network pods share their node's address and never identify anyone; when one address
is claimed by two pods (an IP reused while the old pod is still terminating) the live one
wins: Running over Pending, not terminating over terminating, then the newest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec

from reconciler.rules import inputs as inputs_mod

LIVE_PHASES = frozenset({"Pending", "Running"})


class ObjectMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    namespace: str = ""
    labels: dict[str, str] = {}
    resource_version: str = ""
    creation_timestamp: str = ""
    """RFC 3339 in UTC (``2024-05-01T10:00:00Z``): such strings sort chronologically."""
    deletion_timestamp: str | None = None
    generation: int | None = None


class PodIP(msgspec.Struct, frozen=True):
    ip: str


class PodSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    host_network: bool = False


class PodStatus(msgspec.Struct, frozen=True, kw_only=True,
                rename={"pod_ip": "podIP", "pod_ips": "podIPs"}):
    phase: str = ""
    pod_ip: str | None = None
    pod_ips: list[PodIP] = []


class Pod(msgspec.Struct, frozen=True, kw_only=True):
    metadata: ObjectMeta
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


class Head(msgspec.Struct, frozen=True, kw_only=True):
    """Any object, metadata only: enough to key it and to keep its resourceVersion."""

    metadata: ObjectMeta
    status: dict[str, object] | None = None


class ListMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    resource_version: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class RawList(msgspec.Struct, frozen=True, kw_only=True):
    """A LIST response; items stay raw so one bad object cannot spoil the others."""

    metadata: ListMeta = ListMeta()
    items: list[msgspec.Raw] | None = None


class WatchEvent(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    object: msgspec.Raw


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """The API's error object (``kind: Status``), in an ERROR watch event or a reply."""

    code: int = 0
    reason: str = ""
    message: str = ""


pod_decoder = msgspec.json.Decoder(Pod)
head_decoder = msgspec.json.Decoder(Head)
list_decoder = msgspec.json.Decoder(RawList)
event_decoder = msgspec.json.Decoder(WatchEvent)
status_decoder = msgspec.json.Decoder(Status)


def key(meta: ObjectMeta) -> str:
    return f"{meta.namespace}/{meta.name}"


class PodRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What podpost keeps of one pod: who it is, its addresses, and how alive it is. Not
    tracked by the garbage collector (it holds no container that could refer back)."""

    namespace: str
    name: str
    labels: dict[str, str]
    networks: tuple[str, ...]
    """Each address as a host network: ``10.1.2.3/32``, ``fd00::5/128``."""
    running: bool
    terminating: bool
    created: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def host_network(ip: str) -> str | None:
    """``10.1.2.3`` -> ``10.1.2.3/32``; ``fd00:0::5`` -> ``fd00::5/128``; junk -> None."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    return f"{address}/{address.max_prefixlen}"


def pod_record(pod: Pod) -> PodRecord | None:
    """The pod as a client identity, or None when it cannot send mail from its own IP."""
    if pod.status.phase not in LIVE_PHASES or pod.spec.host_network:
        return None
    ips = [entry.ip for entry in pod.status.pod_ips] or (
        [pod.status.pod_ip] if pod.status.pod_ip else []
    )
    networks = tuple(dict.fromkeys(n for n in map(host_network, ips) if n is not None))
    if not networks:
        return None
    meta = pod.metadata
    return PodRecord(
        namespace=meta.namespace,
        name=meta.name,
        labels=dict(meta.labels),
        networks=networks,
        running=pod.status.phase == "Running",
        terminating=meta.deletion_timestamp is not None,
        created=meta.creation_timestamp,
    )


def liveness(record: PodRecord) -> tuple[bool, bool, str, str]:
    """Larger is more alive; the key breaks exact ties so the choice is deterministic."""
    return (record.running, not record.terminating, record.created, record.key)


def endpoints(records: Iterable[PodRecord]) -> list[inputs_mod.Endpoint]:
    """One endpoint per pod, each network given to the most alive pod that claims it.

    A pod whose every address was claimed by a livelier pod is left out."""
    owner: dict[str, PodRecord] = {}
    for record in records:
        for network in record.networks:
            held = owner.get(network)
            if held is None or liveness(record) > liveness(held):
                owner[network] = record
    kept: dict[str, list[str]] = {}
    by_key: dict[str, PodRecord] = {}
    for network, record in owner.items():
        kept.setdefault(record.key, []).append(network)
        by_key[record.key] = record
    return [
        inputs_mod.Endpoint(
            source=f"pod:{pod_key}",
            namespace=by_key[pod_key].namespace,
            labels=by_key[pod_key].labels,
            networks=sorted(kept[pod_key]),
        )
        for pod_key in sorted(kept)
    ]
