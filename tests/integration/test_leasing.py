"""The installation-wide connection cap's leases against a real nats-server: racing
replicas never hold more slots than the cap, a released slot is free at once, a
crashed replica's slots free themselves when their lease runs out, and renewals keep a
live replica's slots."""

from __future__ import annotations

import asyncio

from dispatcher import leasing
from runtime import bus


async def _leases(conn: bus.Conn, lease_s: float = 30.0) -> leasing.Leases:
    return leasing.Leases(await bus.rates_kv(conn), lease_s=lease_s)


async def test_racing_replicas_share_the_cap(conn: bus.Conn) -> None:
    """Three replicas asking for 3 slots each of a cap of 4 get 4 in all."""
    replicas = [await _leases(conn) for _ in range(3)]
    got = await asyncio.gather(*(r.acquire("mail/up", 4, 0.0) for r in replicas
                                 for _ in range(3)))
    assert sum(1 for key in got if key is not None) == 4
    assert sum(r.held("mail/up") for r in replicas) == 4


async def test_a_released_slot_is_free_and_a_crashed_ones_expires(conn: bus.Conn) -> None:
    """A slot given back (and deleted by ``run``) is taken at once by another replica;
    the slot of a replica that stopped renewing (SIGKILLed) is free once its lease ran
    out, and not before."""
    stop = asyncio.Event()
    one = await _leases(conn)
    crashed = await _leases(conn, lease_s=1.0)
    other = await _leases(conn)
    runner = asyncio.create_task(one.run(stop))
    try:
        key = await one.acquire("mail/up", 2, 0.0)
        assert await crashed.acquire("mail/up", 2, 0.0) is not None  # never renewed
        assert await other.acquire("mail/up", 2, 0.0) is None  # both taken
        one.release(key)
        assert await other.acquire("mail/up", 2, 5.0) == key  # freed by run's delete
        assert await other.acquire("mail/up", 2, 5.0) is not None  # the crashed one's
    finally:
        stop.set()
        await runner


async def test_renewals_keep_a_live_replicas_slots(conn: bus.Conn) -> None:
    """A replica whose ``run`` renews its leases keeps its slot past the lease length."""
    stop = asyncio.Event()
    live = await _leases(conn, lease_s=0.6)
    other = await _leases(conn)
    runner = asyncio.create_task(live.run(stop))
    try:
        assert await live.acquire("mail/up", 1, 0.0) is not None
        assert await other.acquire("mail/up", 1, 1.5) is None  # 2.5 leases long
        assert live.held("mail/up") == 1
    finally:
        stop.set()
        await runner
    assert await other.acquire("mail/up", 1, 2.0) is not None  # given back on stop
