"""Snapshot build and publish at cluster scale: 10,000 pods and 1,000 policies by default.

The cluster is synthetic but shaped like a real one: namespaces with a handful of apps,
each app a Deployment's worth of pods carrying the usual labels, one EmailPolicy per app
(some with ``matchExpressions``), a default policy per namespace, SMTPServers in one
namespace and one credentials Secret per namespace. Pods enter as the JSON the API server
sends, through the same decoding and inventory the kubernetes source uses, so "ingest" is
what a full relist costs. Then it times the build (pods -> endpoints -> snapshot), the
first publish to a real nats-server (snapshot and credentials) and a second publish after
one pod changed, and prints the snapshot's size against NATS's 1 MiB max payload.

    .venv/bin/python bench/snapshot_build.py [--pods 10000] [--policies 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from podpost import natsserver  # noqa: E402
from reconciler import publishing  # noqa: E402
from reconciler.rules import building, inventory  # noqa: E402
from runtime import bus, settings  # noqa: E402
from schemas import snapshot  # noqa: E402

MAX_PAYLOAD = 1024 * 1024
APPS_PER_NAMESPACE = 10
SERVERS = 10


def cluster(pods: int, policies: int) -> tuple[list[bytes], list[bytes], list[bytes],
                                               list[bytes]]:
    """Raw API JSON for pods, policies, servers and Secrets."""
    namespaces = max(1, policies // APPS_PER_NAMESPACE)
    per_app = max(1, pods // policies)
    encode = msgspec.json.encode
    pod_docs: list[bytes] = []
    policy_docs: list[bytes] = []
    for index in range(policies):
        ns, app = f"team-{index // APPS_PER_NAMESPACE:03d}", f"app-{index:04d}"
        selector: dict[str, Any] = {"matchLabels": {"app.kubernetes.io/name": app}}
        if index % 4 == 0:
            selector["matchExpressions"] = [
                {"key": "tier", "operator": "In", "values": ["web", "worker"]}]
        policy_docs.append(encode({
            "apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "EmailPolicy",
            "metadata": {"name": app, "namespace": ns, "generation": 1},
            "spec": {"podSelector": selector,
                     "ratelimiting": {"maximum": 100, "period": "hour"},
                     "sink": {"smtp": {"server": {"name": f"relay-{index % SERVERS}",
                                                  "namespace": "mail"},
                                       "credentials": {"name": "smtp-login"}}}},
        }))
        for replica in range(per_app):
            n = index * per_app + replica
            if n >= pods:
                break
            pod_docs.append(encode({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": f"{app}-7d4b9c8f6-{replica:05d}", "namespace": ns,
                    "uid": f"00000000-0000-0000-0000-{n:012d}",
                    "creationTimestamp": "2024-05-01T10:00:00Z",
                    "labels": {"app.kubernetes.io/name": app, "tier": "web",
                               "pod-template-hash": "7d4b9c8f6"},
                },
                "spec": {"nodeName": f"node-{n % 50}",
                         "containers": [{"name": "app", "image": "registry/app:1.2.3"}]},
                "status": {"phase": "Running", "podIP": f"10.{n >> 16 & 255}.{n >> 8 & 255}."
                           f"{n & 255}", "podIPs": [{"ip": f"10.{n >> 16 & 255}."
                                                          f"{n >> 8 & 255}.{n & 255}"}]},
            }))
    for n in range(namespaces):
        policy_docs.append(encode({
            "apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "EmailPolicy",
            "metadata": {"name": "fallback", "namespace": f"team-{n:03d}"},
            "spec": {"default": True, "sink": {"catcher": {}}},
        }))
    server_docs = [encode({
        "apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "SMTPServer",
        "metadata": {"name": f"relay-{i}", "namespace": "mail"},
        "spec": {"server": f"relay-{i}.example.com", "port": 587, "connect": "starttls"},
    }) for i in range(SERVERS)]
    secret_docs = [encode({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "smtp-login", "namespace": f"team-{n:03d}"},
        "data": {"username": "dXNlcg==", "password": "c2VjcmV0"},
    }) for n in range(namespaces)]
    return pod_docs, policy_docs, server_docs, secret_docs


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


async def main(pods: int, policies: int, rounds: int) -> None:
    pod_docs, policy_docs, server_docs, secret_docs = cluster(pods, policies)
    mirror = inventory.Inventory()
    started = time.perf_counter()
    mirror.pods.replace(pod_docs)
    mirror.policies.replace(policy_docs)
    mirror.servers.replace(server_docs)
    for raw in secret_docs:
        secret = msgspec.json.decode(raw, type=building.resources.Secret)
        mirror.secrets.put(f"{secret.metadata.namespace}/{secret.metadata.name}", secret)
    ingest = time.perf_counter() - started

    builds: list[float] = []
    result = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = building.build(mirror.inputs(), now=datetime.now(UTC), source="kubernetes")
        builds.append(time.perf_counter() - started)
    assert result is not None
    encoded = snapshot.snapshot_encoder.encode(result.snapshot)
    stored = snapshot.encode_snapshot(result.snapshot)

    with tempfile.TemporaryDirectory() as store:
        async with natsserver.running(Path(store)) as server:
            cfg = settings.NatsSettings(url=server.url)
            async with bus.connect(cfg, "bench", attempts=3) as conn:
                published = await _publish(conn, result)
                changed = msgspec.json.encode({**msgspec.json.decode(pod_docs[0]),
                                               "status": {"phase": "Succeeded"}})
                mirror.pods.apply("MODIFIED", changed)
                again = building.build(mirror.inputs(), now=datetime.now(UTC),
                                       source="kubernetes")
                republished = await _publish(conn, again)
                read = await _read_back(conn, again.snapshot)

    snap = result.snapshot
    print(f"cluster:   {len(pod_docs)} pods, {len(mirror.policies.items)} policies "
          f"({len(policy_docs) - policies} of them namespace defaults), "
          f"{len(server_docs)} servers, {len(secret_docs)} secrets")
    print(f"snapshot:  {len(snap.routes)} routes, {len(snap.policies)} policies, "
          f"{len(result.credentials)} credentials")
    print(f"ingest:    {ms(ingest)}  (decode {len(pod_docs)} pods + resources, as a relist)")
    print(f"build:     {ms(statistics.median(builds))}  median of {rounds} "
          f"(min {ms(min(builds)).strip()}, max {ms(max(builds)).strip()})")
    print(f"publish:   {published}  (first: snapshot + credentials)")
    print(f"publish:   {republished}  (after one pod changed)")
    print(f"read:      {read}")
    size = len(stored)
    verdict = "fits" if size <= MAX_PAYLOAD else "EXCEEDS"
    print(f"size:      {size:,} bytes stored = {size / MAX_PAYLOAD:.3f} MiB ({verdict} the 1 MiB "
          f"max payload); JSON before zlib {len(encoded):,} bytes, "
          f"{len(encoded) / max(1, len(snap.routes)):.0f} bytes per route")
    for name, (encoded_size, seconds) in alternatives(snap).items():
        print(f"  as {name:<28} {encoded_size:>9,} bytes  {ms(seconds)} to encode")


async def _publish(conn: bus.Conn, result: building.Build) -> str:
    started = time.perf_counter()
    try:
        done = await publishing.publish(conn, result)
    except nats.errors.MaxPayloadError:
        return f"{ms(time.perf_counter() - started)}  FAILED: over the server's max payload"
    return (f"{ms(time.perf_counter() - started)}  revision {done.revision}, "
            f"{len(done.credentials_put)} credentials written")


async def _read_back(conn: bus.Conn, snap: snapshot.PolicySnapshot) -> str:
    """What every ingress and dispatcher does on a change: fetch and decode the value."""
    kv = await bus.policy_kv(conn)
    started = time.perf_counter()
    entry = await kv.get(conn.names.snapshot_key)
    assert entry.value is not None and snapshot.decode_snapshot(entry.value) == snap
    return f"{ms(time.perf_counter() - started)}  (a reader fetches and decodes it)"


def alternatives(snap: snapshot.PolicySnapshot) -> dict[str, tuple[int, float]]:
    """Sizes of candidate compact encodings, for the proposal in docs/kubernetes.md."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    for route in snap.routes:
        grouped.setdefault(route.policy, []).append((route.network, route.source))
    compact = {"generated_at": snap.generated_at, "policies": snap.policies,
               "upstreams": snap.upstreams, "routes": grouped, "source": snap.source,
               "digest": snap.digest}
    out: dict[str, tuple[int, float]] = {}
    for name, build in (
        ("JSON, zlib level 1", lambda: zlib.compress(
            snapshot.snapshot_encoder.encode(snap), 1)),
        ("routes grouped per policy", lambda: msgspec.json.encode(compact)),
        ("grouped, zlib level 1", lambda: zlib.compress(msgspec.json.encode(compact), 1)),
        ("msgpack, zlib level 1", lambda: zlib.compress(msgspec.msgpack.encode(snap), 1)),
    ):
        started = time.perf_counter()
        size = len(build())
        out[name] = (size, time.perf_counter() - started)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.pods, args.policies, args.rounds))
