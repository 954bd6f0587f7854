"""List+watch against the Kubernetes API stand-in: resume after a dropped watch, relist
after 410 Gone, never miss a change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import kmock
import pytest

from reconciler import kubeapi, watching
from reconciler.rules import inventory
from runtime import settings
from tests.support import kubeapi as fake


@pytest.fixture
async def cluster() -> AsyncIterator[fake.VersionedEmulator]:
    async with fake.VersionedEmulator() as api, kmock.Server(api):
        fake.declare(api)
        yield api


@pytest.fixture
async def api(cluster: fake.VersionedEmulator, tmp_path: Path) -> AsyncIterator[kubeapi.Api]:
    config = fake.kubeconfig(tmp_path / "kubeconfig", str(cluster.url))
    async with kubeapi.connect(settings.ReconcilerSettings(kubeconfig=str(config))) as client:
        yield client


async def _watching(api: kubeapi.Api, pods: inventory.Pods,
                    body: Callable[[watching.Watcher], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    watcher = watching.Watcher(api, name="pods", path=kubeapi.pods_path(None), params={},
                               sink=pods, on_change=lambda: None, timeout_s=30)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(watcher.run(stop))
        try:
            async with asyncio.timeout(10):
                await watcher.synced.wait()
            await body(watcher)
        finally:
            stop.set()
            task.cancel()


def _watch_versions(cluster: fake.VersionedEmulator) -> list[str]:
    return [r.params.get("resourceVersion", "") for r in cluster.requests
            if r.action == kmock.action.WATCH]


async def test_list_then_watch_sees_every_change(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """Pods present at start are listed; later adds, edits and deletes arrive by watch."""
    await fake.create(cluster, fake.PODS, fake.pod("a", ip="10.0.0.1"))
    pods = inventory.Pods()

    async def body(watcher: watching.Watcher) -> None:
        assert list(pods.records) == ["default/a"]
        await fake.create(cluster, fake.PODS, fake.pod("b", ip="10.0.0.2"))
        await fake.patch(cluster, fake.PODS, "default", "a",
                         {"metadata": {"labels": {"tier": "web"}}})
        await fake.delete(cluster, fake.PODS, "default", "b")
        await fake.until(lambda: pods.records.get("default/a") is not None
                     and pods.records["default/a"].labels.get("tier") == "web"
                     and "default/b" not in pods.records)
        assert watcher.lists == 1

    await _watching(api, pods, body)


async def test_dropped_watch_resumes_from_the_last_version(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """After the stream is cut, the next watch asks for the last version seen, gets what
    happened in between, and no relist is needed."""
    pods = inventory.Pods()

    async def body(watcher: watching.Watcher) -> None:
        await fake.create(cluster, fake.PODS, fake.pod("a", ip="10.0.0.1"))
        await fake.until(lambda: "default/a" in pods.records)
        seen = watcher.version
        cluster.drop_watches()
        await fake.create(cluster, fake.PODS, fake.pod("b", ip="10.0.0.2"))
        await fake.delete(cluster, fake.PODS, "default", "a")
        await fake.until(lambda: list(pods.records) == ["default/b"])
        await fake.until(lambda: len(_watch_versions(cluster)) >= 2)
        assert _watch_versions(cluster)[1] == seen
        assert watcher.lists == 1

    await _watching(api, pods, body)


async def test_gone_relists_and_drops_what_was_deleted_meanwhile(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """When the resume version was compacted away (410), the collection is listed again
    and a pod deleted during the gap disappears."""
    await fake.create(cluster, fake.PODS, fake.pod("a", ip="10.0.0.1"))
    await fake.create(cluster, fake.PODS, fake.pod("b", ip="10.0.0.2"))
    pods = inventory.Pods()

    async def body(watcher: watching.Watcher) -> None:
        assert sorted(pods.records) == ["default/a", "default/b"]
        cluster.compact(fake.PODS)
        cluster.drop_watches()
        await fake.delete(cluster, fake.PODS, "default", "a")
        cluster.compact(fake.PODS)
        await fake.until(lambda: watcher.lists == 2, within=5)
        await fake.until(lambda: list(pods.records) == ["default/b"])
        await fake.create(cluster, fake.PODS, fake.pod("c", ip="10.0.0.3"))
        await fake.until(lambda: sorted(pods.records) == ["default/b", "default/c"])

    await _watching(api, pods, body)


async def test_watch_ending_on_its_own_resumes(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """A watch that reaches its timeout is reopened from its version, without a relist."""
    pods = inventory.Pods()
    stop = asyncio.Event()
    watcher = watching.Watcher(api, name="pods", path=kubeapi.pods_path(None), params={},
                               sink=pods, on_change=lambda: None, timeout_s=1)
    kubeapi_margin = kubeapi.WATCH_MARGIN_S
    kubeapi.WATCH_MARGIN_S = 0.2
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(watcher.run(stop))
            await fake.until(lambda: watcher.watches >= 3, within=6)
            await fake.create(cluster, fake.PODS, fake.pod("a", ip="10.0.0.1"))
            await fake.until(lambda: "default/a" in pods.records)
            stop.set()
            task.cancel()
    finally:
        kubeapi.WATCH_MARGIN_S = kubeapi_margin
    assert watcher.lists == 1
