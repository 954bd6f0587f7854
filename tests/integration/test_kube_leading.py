"""Leader election against the Kubernetes API stand-in: one leader at a time, hand-over on
release, take-over only after the Lease expired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from reconciler import kubeapi, leading
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


def _leader(api: kubeapi.Api, identity: str, **overrides: float) -> leading.Leader:
    options = {"duration_s": 1.5, "renew_deadline_s": 1.0, "retry_s": 0.1, **overrides}
    return leading.Leader(api, name="podpost-reconciler", namespace="podpost",
                          identity=identity, **options)


def _holder(cluster: fake.VersionedEmulator) -> str | None:
    for (_, namespace, name), obj in cluster.objects.items():
        if (namespace, name) == ("podpost", "podpost-reconciler") and not obj.deleted:
            holder: str | None = obj.raw["spec"].get("holderIdentity")
            return holder
    return None


async def test_one_of_two_replicas_leads_and_hands_over_on_release(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """Two replicas never lead at once; a released Lease goes to the standby at once."""
    a, b = _leader(api, "a"), _leader(api, "b", duration_s=30.0, renew_deadline_s=20.0)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    both: list[tuple[bool, bool]] = []
    elections: list[str] = []
    async with asyncio.TaskGroup() as tg:
        task_a = tg.create_task(a.run(stop_a, lambda: elections.append("a")))
        await fake.until(lambda: a.leading)
        tg.create_task(b.run(stop_b, lambda: elections.append("b")))
        for _ in range(15):  # b watches a renew for a while
            both.append((a.leading, b.leading))
            await asyncio.sleep(0.1)
        stop_a.set()
        await task_a
        await a.release()
        await fake.until(lambda: b.leading, within=0.5)
        assert _holder(cluster) == "b"
        both.append((a.leading, b.leading))
        stop_b.set()
    assert elections == ["a", "b"]
    assert all(pair == (True, False) for pair in both[:-1]) and both[-1] == (False, True)


async def test_standby_takes_over_only_after_expiry(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """A leader that dies without releasing is replaced once its Lease went unrenewed for
    the lease duration, and not before."""
    a, b = _leader(api, "a"), _leader(api, "b")
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task_a = tg.create_task(a.run(stop_a, lambda: None))
        await fake.until(lambda: a.leading)
        tg.create_task(b.run(stop_b, lambda: None))
        await asyncio.sleep(0.3)
        task_a.cancel()  # a dies: no release
        died = asyncio.get_running_loop().time()
        await fake.until(lambda: b.leading, within=4.0)
        waited = asyncio.get_running_loop().time() - died
        stop_b.set()
    assert waited >= 1.5 - 0.35  # b saw a's last renewal at most one retry before it died
    assert _holder(cluster) == "b"


async def test_leader_that_cannot_renew_steps_down(
    cluster: fake.VersionedEmulator, api: kubeapi.Api
) -> None:
    """When renewals fail (API unreachable), the leader stops leading at its renew deadline,
    before anyone else may take over."""
    a = _leader(api, "a")
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(a.run(stop, lambda: None))
        await fake.until(lambda: a.leading)
        cluster[kmock.resource(fake.LEASES)] << 503
        lost = asyncio.get_running_loop().time()
        await fake.until(lambda: not a.leading, within=3.0)
        stepped_down = asyncio.get_running_loop().time() - lost
        await fake.until(lambda: not a.elected.is_set(), within=1.0)
        stop.set()
    assert stepped_down <= 1.0 + 0.2


async def test_disabled_election_always_leads(api: kubeapi.Api) -> None:
    """With leader election off (one replica), the replica leads at once."""
    leader = leading.Leader(api, name="x", namespace="y", identity="me", duration_s=15,
                            renew_deadline_s=10, retry_s=2, enabled=False)
    stop = asyncio.Event()
    elected: list[bool] = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(leader.run(stop, lambda: elected.append(True)))
        await fake.until(lambda: bool(elected))
        stop.set()
    assert leader.leading and leader.remaining() == float("inf")
