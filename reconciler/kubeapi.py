"""A thin, raw-JSON client for the few Kubernetes API calls the reconciler makes.

kubernetes-asyncio supplies the connection: kubeconfig or in-cluster configuration, TLS,
and the service-account token it re-reads as it rotates. Its generated models are skipped
on purpose: responses come back as bytes and `reconciler.rules.kubeobjects` decodes the fields we
need with msgspec, which matters with 10,000 pods. Every request but a watch has a
deadline; a watch is bounded by its own ``timeoutSeconds`` plus a margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from reconciler.rules import kubeobjects
from runtime import settings as settings_mod
from schemas import resources

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH = "application/merge-patch+json"
MAX_PAGES = 10_000
PAGE_SIZE = 500
WATCH_MARGIN_S = 15.0
"""A watch may outlive its server-side ``timeoutSeconds`` by this before we cut it."""


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion we asked for is too old; relist."""


TRANSIENT: tuple[type[Exception], ...] = (
    ApiError, aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError)
"""What one request to the API server raises when the next attempt may well succeed (an
error answer, a dropped or slow connection, a truncated body): the one set the watchers,
the Lease and the kubernetes source catch. Where the bus is involved too, a site spells
``(*kubeapi.TRANSIENT, *bus.TRANSIENT)``."""


def _error(status: int, body: bytes) -> ApiError:
    try:
        info = kubeobjects.status_decoder.decode(body)
        reason, message = info.reason, info.message
    except msgspec.DecodeError:
        reason, message = "", body[:200].decode("utf-8", "replace")
    cls = Gone if status == 410 else ApiError
    return cls(status, reason, message)


# --- paths ------------------------------------------------------------------------------


def pods_path(namespace: str | None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def custom_path(plural: str, namespace: str | None = None, name: str | None = None,
                subresource: str | None = None) -> str:
    path = f"/apis/{resources.GROUP}/{resources.VERSION}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def config_map_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/{name}"


def lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


# --- the client -------------------------------------------------------------------------


class Api:
    """Raw requests against one API server, each with a deadline."""

    def __init__(self, api_client: Any, *, timeout_s: float) -> None:
        self._client = api_client
        self.timeout_s = timeout_s

    async def _open(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    body: object = None, content_type: str | None = None,
                    read_timeout_s: float | None = None) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response: aiohttp.ClientResponse = await self._client.call_api(
            path, method,
            query_params=dict(params or {}),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout_s, sock_read=read_timeout_s
            ),
        )
        return response

    async def request(self, method: str, path: str, *,
                      params: Mapping[str, str] | None = None, body: object = None,
                      content_type: str | None = None) -> bytes:
        async with asyncio.timeout(self.timeout_s):
            response = await self._open(method, path, params=params, body=body,
                                        content_type=content_type)
            async with response:
                data = await response.read()
                if not 200 <= response.status < 300:
                    raise _error(response.status, data)
                return data

    async def get(self, path: str) -> bytes | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch(self, path: str, body: dict[str, Any]) -> bytes:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def create(self, path: str, body: dict[str, Any]) -> bytes:
        return await self.request("POST", path, body=body, content_type="application/json")

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[bytes], str]:
        """Every item (raw) and the list's resourceVersion, fetched in pages."""
        items: list[bytes] = []
        token = ""
        version = ""
        for _ in range(MAX_PAGES):
            page_params = {**params, "limit": str(PAGE_SIZE)}
            if token:
                page_params["continue"] = token
            page = kubeobjects.list_decoder.decode(
                await self.request("GET", path, params=page_params)
            )
            items.extend(bytes(raw) for raw in page.items or [])
            version = page.metadata.resource_version or version
            token = page.metadata.continue_
            if not token:
                return items, version
        raise ApiError(0, "TooManyPages", f"{path}: more than {MAX_PAGES} pages")

    @contextlib.asynccontextmanager
    async def watch(self, path: str, params: Mapping[str, str],
                    timeout_s: float) -> AsyncIterator[aiohttp.StreamReader]:
        """Open a watch; yields the stream of its event lines. The server ends it after
        ``timeout_s``; the caller bounds its reading by `watch_deadline` as well."""
        watch_params = {**params, "watch": "true", "allowWatchBookmarks": "true",
                        "timeoutSeconds": str(max(1, int(timeout_s)))}
        async with asyncio.timeout(self.timeout_s):
            response = await self._open("GET", path, params=watch_params,
                                        read_timeout_s=watch_deadline(timeout_s))
        async with response:
            if not 200 <= response.status < 300:
                raise _error(response.status, await response.read())
            yield response.content


def watch_deadline(timeout_s: float) -> float:
    """How long a watch may run before we cut it ourselves."""
    return timeout_s + WATCH_MARGIN_S


# --- configuration ----------------------------------------------------------------------


def identity(cfg: settings_mod.ReconcilerSettings) -> str:
    """This replica's name in the Lease: the setting, else ``<hostname>-<pid>``."""
    return cfg.identity or f"{socket.gethostname()}-{os.getpid()}"


def lease_namespace(cfg: settings_mod.ReconcilerSettings) -> str:
    """The setting; else the service account's namespace (in-cluster); else default."""
    if cfg.lease_namespace:
        return cfg.lease_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


@contextlib.asynccontextmanager
async def connect(cfg: settings_mod.ReconcilerSettings) -> AsyncIterator[Api]:
    """An `Api` for the configured cluster: the kubeconfig file when set, else in-cluster."""
    configuration = k8s_client.Configuration()
    if cfg.kubeconfig:
        await k8s_config.load_kube_config(
            config_file=cfg.kubeconfig, context=cfg.kube_context or None,
            client_configuration=configuration, persist_config=False,
        )
    else:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    api_client = k8s_client.ApiClient(configuration=configuration)
    try:
        yield Api(api_client, timeout_s=cfg.api_timeout_s)
    finally:
        await api_client.close()
