"""Policy at Kubernetes' scale: 10,000 to 150,000 pods and 10,000 policies.

The cluster is synthetic but shaped like a real one: namespaces with a handful of apps,
each app a Deployment's worth of pods carrying the usual labels, one EmailPolicy per app
(some with ``matchExpressions``), a default policy per namespace, SMTPServers in one
namespace and one credentials Secret per namespace. Pods enter as the JSON the API server
sends, through the same decoding and inventory the kubernetes source uses.

For each size it prints one row of docs/kubernetes.md's "Scale" table:

- full relist: decoding every object as a relist does, then the incremental build from
  nothing (`reconciler.cycle.build_incremental`), which is what a restarted reconciler
  does; wall time and the process's CPU time (the machine is shared);
- a pod change (a pod restarted with a new address) until an ingress's copy of the ROUTES
  bucket holds it, p50/p99 over ``--changes`` changes: the reconciler's debounce, its cycle
  (sync, build, publish to a real nats-server) and the reader's 0.25 s poll, in one process;
- the reconciler's cost per change (the cycle without the debounce; wall time, and the
  process's CPU time, which a busy shared machine does not inflate) and the bytes of route
  values it publishes;
- the memory the routes take in an ingress (`routing.Table`, measured with tracemalloc
  after a full read of the bucket), and how long that full read takes.

Routes are published with ``snapshot_routes_max=0``: the configuration once every reader
knows the ROUTES bucket (docs/kubernetes.md, "Rolling upgrade").

    .venv/bin/python bench/snapshot_build.py [--pods 10000 100000 150000] [--policies 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingress.rules import routing  # noqa: E402
from podpost import natsserver  # noqa: E402
from reconciler import cycle, publishing  # noqa: E402
from reconciler.rules import inventory, routebook  # noqa: E402
from runtime import bus, policies, settings  # noqa: E402
from schemas import resources  # noqa: E402

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


POLL_S = 0.25
"""The ingress's poll interval (`runtime.policies.SnapshotHolder.run`)."""
DEBOUNCE_S = settings.ReconcilerSettings().debounce_s


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _moved(raw: bytes, ip: str) -> bytes:
    """The pod restarted elsewhere: the same pod with another address."""
    doc = msgspec.json.decode(raw)
    doc["status"] = {**doc["status"], "podIP": ip, "podIPs": [{"ip": ip}]}
    return msgspec.json.encode(doc)


async def row(pods: int, policies_n: int, changes: int) -> dict[str, str]:
    pod_docs, policy_docs, server_docs, secret_docs = cluster(pods, policies_n)
    mirror = inventory.Inventory()
    book = routebook.RouteBook(source="kubernetes", snapshot_routes_max=0)
    started = time.perf_counter()
    mirror.pods.replace(pod_docs)
    mirror.policies.replace(policy_docs)
    mirror.servers.replace(server_docs)
    for raw in secret_docs:
        secret = msgspec.json.decode(raw, type=resources.Secret)
        mirror.secrets.put(f"{secret.metadata.namespace}/{secret.metadata.name}", secret)
    ingest = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    result = cycle.build_incremental(book, mirror, now=datetime.now(UTC))
    relist, relist_cpu = time.perf_counter() - started, time.process_time() - cpu
    book.take_changes()
    assert len(book.routes) == pods, (len(book.routes), pods)

    with tempfile.TemporaryDirectory() as store:
        async with natsserver.running(Path(store)) as server:
            cfg = settings.NatsSettings(url=server.url)
            async with bus.connect(cfg, "bench", attempts=3) as conn, \
                    bus.connect(cfg, "bench-ingress", attempts=3) as reader:
                marks = publishing.Marks()
                started = time.perf_counter()
                await publishing.publish(conn, result, marks=marks,
                                         routes=publishing.RouteChanges(table=book.routes))
                first_publish = time.perf_counter() - started

                started = time.perf_counter()
                await policies.RouteMirror(routing.Table()).refresh(reader)
                full_read = time.perf_counter() - started
                tracemalloc.start()
                before = tracemalloc.take_snapshot()
                table = routing.Table()
                copy = policies.RouteMirror(table)
                await copy.refresh(reader)
                held = tracemalloc.take_snapshot().compare_to(before, "filename")
                tracemalloc.stop()
                memory = sum(stat.size_diff for stat in held)
                assert copy.loaded and len(table) == pods

                stop = asyncio.Event()

                async def poll() -> None:
                    while not stop.is_set():
                        await copy.refresh(reader)
                        await asyncio.sleep(POLL_S)

                visible: list[float] = []
                costs: list[float] = []
                cpu_costs: list[float] = []
                sent: list[int] = []
                poller = asyncio.create_task(poll())
                try:
                    for n in range(changes):
                        index = (n * 7919) % len(pod_docs)
                        ip = f"10.200.{n >> 8 & 255}.{n & 255}"
                        address = routing.parse_ip(ip)
                        assert address is not None
                        t0 = time.perf_counter()
                        mirror.pods.apply("MODIFIED", _moved(pod_docs[index], ip))
                        await asyncio.sleep(DEBOUNCE_S)
                        t1, c1 = time.perf_counter(), time.process_time()
                        built = cycle.build_incremental(book, mirror, now=datetime.now(UTC))
                        moved = book.take_changes()
                        marks.pending |= moved.routes
                        done = await publishing.publish(
                            conn, built, marks=marks,
                            routes=publishing.RouteChanges(table=book.routes, changed=()))
                        costs.append(time.perf_counter() - t1)
                        cpu_costs.append(time.process_time() - c1)
                        sent.append(done.routes_bytes)
                        assert not done.routes_resynced and not done.snapshot_changed
                        for _ in range(2000):
                            if address in table.index.hosts:
                                break
                            await asyncio.sleep(0.002)
                        visible.append(time.perf_counter() - t0)
                        pod_docs[index] = _moved(pod_docs[index], ip)
                finally:
                    stop.set()
                    await poller

    return {
        "pods": f"{pods:,} / {len(mirror.policies.items):,}",
        "relist": f"{relist:.2f} s ({relist_cpu:.2f} s CPU; + {ingest:.2f} s decoding)",
        "visible": f"{_pct(visible, 0.5) * 1000:.0f} / {_pct(visible, 0.99) * 1000:.0f} ms",
        "cost": f"{_pct(costs, 0.5) * 1000:.1f} / {_pct(costs, 0.99) * 1000:.1f} ms "
                f"(CPU {_pct(cpu_costs, 0.5) * 1000:.1f} / {_pct(cpu_costs, 0.99) * 1000:.1f})",
        "bytes": f"{statistics.mean(sent):.0f} B",
        "memory": f"{memory / 2**20:.1f} MiB",
        "read": f"{full_read:.2f} s",
        "first": f"{first_publish:.1f} s",
    }


async def main(sizes: list[int], policies_n: int, changes: int) -> None:
    rows = [await row(pods, policies_n, changes) for pods in sizes]
    heads = ("pods / policies", "full relist build", "pod change visible p50/p99",
             "reconciler per change p50/p99", "published per change",
             "ingress routes memory", "ingress full read", "first publish")
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for r in rows:
        print("| " + " | ".join(r[k] for k in ("pods", "relist", "visible", "cost", "bytes",
                                               "memory", "read", "first")) + " |")


if __name__ == "__main__":
    # What is measured is the work, not a terminal printing a log line per change.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[10_000, 100_000, 150_000])
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.pods, args.policies, args.changes))
