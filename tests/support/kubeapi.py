"""A Kubernetes API stand-in for the reconciler's tests: kmock's emulator, plus versions.

kmock's `KubernetesEmulator` stores objects, serves LIST/GET/POST/PATCH/DELETE and
streams watch events, but knows no resourceVersion: every watch starts over with the full
state. A real API server does not, and the reconciler's resume-and-relist logic is only
tested if the stand-in behaves like one. This subclass therefore

- stamps a global, increasing ``metadata.resourceVersion`` on every write;
- keeps a log of events per resource, and serves ``watch?resourceVersion=N`` by replaying
  the events after N, then streaming live; N older than the log (see `compact`) gets an
  ERROR event with code 410, as etcd compaction causes;
- reports the current version in LIST responses and honours ``fieldSelector`` on
  ``metadata.name``/``metadata.namespace`` and equality ``labelSelector``s;
- refuses a merge patch whose ``metadata.resourceVersion`` is stale with 409, the
  optimistic concurrency the Lease relies on;
- can cut every open watch stream (`drop_watches`), as a load balancer would.

Only kmock's public names are imported (``kmock.Bus``, ``kmock.Request``, ``kmock.resource``,
its error classes). kmock has no public extension point for serving, though: the subclass
overrides the emulator's own underscore hooks (``_handle``, ``_serve_list``,
``_serve_watch``, ``_render_error``) and reads or replaces its underscore state
(``_buses``, ``_requests``, ...), so a kmock release may need this module changed.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import kmock

PODS = "v1/pods"
SECRETS = "v1/secrets"
CONFIGMAPS = "v1/configmaps"
LEASES = "coordination.k8s.io/v1/leases"
POLICIES = "kube-mail.helmich.me/v1alpha1/emailpolicies"
SERVERS = "kube-mail.helmich.me/v1alpha1/smtpservers"


_CONFLICT = kmock.KubernetesError(
    status=409, reason="Conflict",
    message="the object has been modified; please apply your changes to the latest version "
            "and try again")
"""What a real API server answers a write with a stale ``metadata.resourceVersion``."""


class _Dropped(Exception):
    """Ends one watch stream abruptly (a dropped connection)."""


@attrs.define(eq=False)
class _StampingBus(kmock.Bus[Any]):
    owner: Any = None
    resource: Any = None

    async def put(self, *items: Any) -> None:
        for item in items:
            if isinstance(item, dict) and "object" in item:
                self.owner._stamp(self.resource, item)
        await super().put(*items)


class _Buses(dict[Any, _StampingBus]):
    def __init__(self, owner: VersionedEmulator) -> None:
        super().__init__()
        self.owner = owner

    def __missing__(self, resource: Any) -> _StampingBus:
        bus = _StampingBus(owner=self.owner, resource=resource)
        self[resource] = bus
        return bus


def _labels_match(selector: str, labels: Mapping[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.strip()) != value.strip().lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class VersionedEmulator(kmock.KubernetesEmulator):
    history_limit: int = 10_000
    version: int = attrs.field(default=0, init=False)
    _log: dict[Any, list[tuple[int, dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    _compacted: dict[Any, int] = attrs.field(factory=dict, init=False)
    _cuts: list[asyncio.Event] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = _Buses(self)

    @property
    def requests(self) -> list[kmock.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    # --- versions -----------------------------------------------------------------------

    def _stamp(self, resource: Any, event: dict[str, Any]) -> None:
        self.version += 1
        obj = event["object"]
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        event["object"] = copy.deepcopy(obj)
        log = self._log.setdefault(resource, [])
        log.append((self.version, event))
        if len(log) > self.history_limit:
            dropped, _ = log.pop(0)
            self._compacted[resource] = dropped

    def compact(self, resource: str) -> None:
        """Forget every event so far: a watch resuming from an older version gets 410."""
        res = kmock.resource(resource)
        self._compacted[res] = self.version
        self._log[res] = []

    def drop_watches(self) -> None:
        """Cut every open watch stream, as a dropped connection would."""
        for cut in self._cuts:
            cut.set()

    # --- serving ------------------------------------------------------------------------

    @staticmethod
    def _selected(request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        for term in filter(None, request.params.get("fieldSelector", "").split(",")):
            field, _, value = term.partition("=")
            wanted = {"metadata.name": meta.get("name"),
                      "metadata.namespace": meta.get("namespace")}.get(field)
            if wanted != value.lstrip("="):
                return False
        return _labels_match(request.params.get("labelSelector", ""), meta.get("labels", {}))

    async def _handle(self, request: kmock.Request) -> Any:
        if (request.action == kmock.action.UPDATE and request.name is not None
                and isinstance(request.data, dict)):
            wanted = (request.data.get("metadata") or {}).get("resourceVersion")
            key = (request.resource, request.namespace, request.name)
            if wanted and key in self.objects and not self.objects[key].deleted:
                have = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
                if have != wanted:
                    return await self._render_error(_CONFLICT)
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        items = [
            obj.raw for (resource, _, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted
            and self._selected(request, obj.raw)
        ]
        return {"metadata": {"resourceVersion": str(self.version)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        since = request.params.get("resourceVersion", "")
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        cut = asyncio.Event()
        self._cuts.append(cut)
        marker = await bus.mark()
        try:
            if not since.isdigit() or since == "0":
                last = self.version
                for (resource, _, _), obj in list(self.objects.items()):
                    if resource == request.resource and not obj.deleted \
                            and self._selected(request, obj.raw):
                        yield {"type": "ADDED", "object": obj.raw}
            else:
                last = int(since)
                if last < self._compacted.get(request.resource, 0):
                    yield {"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "code": 410, "reason": "Expired",
                        "message": f"too old resource version: {last}",
                    }}
                    return
                for version, event in list(self._log.get(request.resource, [])):
                    if version > last and self._selected(request, event["object"]):
                        last = version
                        yield event
            async for event in self._live(bus, marker, cut):
                version = int(event["object"]["metadata"]["resourceVersion"])
                if version > last and self._selected(request, event["object"]):
                    last = version
                    yield event
        except _Dropped:
            return
        finally:
            self._cuts.remove(cut)
            await bus.unmark(marker)

    @staticmethod
    async def _live(bus: _StampingBus, marker: Any, cut: asyncio.Event
                    ) -> AsyncIterator[dict[str, Any]]:
        """The bus's events until ``cut`` is set."""
        stream = bus.stream(since=marker).__aiter__()
        cutting = asyncio.ensure_future(cut.wait())
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({step, cutting},
                                             return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    raise _Dropped
                yield step.result()
        finally:
            for pending in (step, cutting):
                if pending is not None and not pending.done():
                    pending.cancel()
            await asyncio.gather(*(f for f in (step, cutting) if f is not None),
                                 return_exceptions=True)
            await stream.aclose()


# --- helpers for tests ------------------------------------------------------------------


async def until(check: Callable[[], bool], *, within: float = 3.0, step: float = 0.01) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (bounded in count)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in range(int(within / step) + 1):
        if check():
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(step)
    assert check(), f"condition not met within {within}s"


def declare(api: VersionedEmulator) -> None:
    """The resources a cluster with podpost's CRDs serves."""
    api.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True)
    api.resources[SECRETS] = kmock.ResourceInfo(kind="Secret", namespaced=True)
    api.resources[LEASES] = kmock.ResourceInfo(kind="Lease", namespaced=True)
    api.resources[POLICIES] = kmock.ResourceInfo(kind="EmailPolicy", namespaced=True,
                                                 subresources={"status"})
    api.resources[SERVERS] = kmock.ResourceInfo(kind="SMTPServer", namespaced=True,
                                                subresources={"status"})


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: test, user: {token: test-token}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: test}}]\n"
        "current-context: kmock\n",
        encoding="utf-8",
    )
    return path


def collection(resource: str, namespace: str) -> str:
    group_version, _, plural = resource.rpartition("/")
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


async def _call(api: VersionedEmulator, method: str, path: str,
                body: Any = None) -> dict[str, Any]:
    async with api.request(method, path, json=body) as response:
        data: dict[str, Any] = await response.json()
        assert response.status < 300, (method, path, response.status, data)
        return data


async def create(api: VersionedEmulator, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    return await _call(api, "POST", collection(resource, obj["metadata"]["namespace"]), obj)


async def patch(api: VersionedEmulator, resource: str, namespace: str, name: str,
                body: dict[str, Any]) -> dict[str, Any]:
    return await _call(api, "PATCH", f"{collection(resource, namespace)}/{name}", body)


async def delete(api: VersionedEmulator, resource: str, namespace: str, name: str) -> None:
    await _call(api, "DELETE", f"{collection(resource, namespace)}/{name}")


def pod(name: str, *, namespace: str = "default", labels: dict[str, str] | None = None,
        ip: str | None = "10.0.0.1", ips: list[str] | None = None, phase: str = "Running",
        created: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
    if ips is not None:
        status["podIPs"] = [{"ip": one} for one in ips]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                         "creationTimestamp": created},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
            "status": status}


def server(name: str, *, namespace: str = "default", host: str = "smtp.example",
           port: int = 587) -> dict[str, Any]:
    return {"apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "SMTPServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"server": host, "port": port}}


def policy(name: str, *, namespace: str = "default", server_name: str = "smtp",
           server_namespace: str | None = None, labels: dict[str, str] | None = None,
           credentials: str | None = None, credentials_namespace: str | None = None,
           default: bool = False) -> dict[str, Any]:
    smtp: dict[str, Any] = {"server": {"name": server_name}}
    if server_namespace:
        smtp["server"]["namespace"] = server_namespace
    if credentials:
        smtp["credentials"] = {"name": credentials}
        if credentials_namespace:
            smtp["credentials"]["namespace"] = credentials_namespace
    spec: dict[str, Any] = {"sink": {"smtp": smtp}}
    if labels is not None:
        spec["podSelector"] = {"matchLabels": labels}
    if default:
        spec["default"] = True
    return {"apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "EmailPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def config_map(name: str, data: dict[str, str], *, namespace: str = "default"
               ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}


def secret(name: str, *, namespace: str = "default", username: str = "user",
           password: str = "secret", allowed: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if allowed is not None:
        meta["annotations"] = {"podpost.dev/allowed-namespaces": allowed}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "stringData": {"username": username, "password": password}}
