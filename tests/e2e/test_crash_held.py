"""Mail a dispatcher holds while something breaks: the dispatcher frozen past the ack wait,
the broker restarted while deliveries are in flight, the dispatcher SIGKILLed. The
upstream's gate holds every DATA reply, so the break lands while the mail is mid-trip;
each message carries a token, counted at the upstream."""

from __future__ import annotations

import asyncio
from pathlib import Path

from loadkit import jetstream, relay
from loadkit import upstream as upstream_mod
from podpost import natsserver
from tests.support import dispatching

MAILS = 6


async def _send(port: int, tag: str, count: int) -> None:
    """``count`` mails, each answered 250 (bounded)."""
    async with asyncio.timeout(30):
        for index in range(count):
            while True:
                client = await relay.Client.open(port)
                if client is not None:
                    try:
                        if await client.send(relay.message(tag, index)) == 250:
                            break
                    except (relay.Cut, OSError):
                        pass
                    finally:
                        await client.close()
                await asyncio.sleep(0.1)


async def _drained(up: upstream_mod.Upstream, tag: str, nats_url: str, timeout_s: float
                   ) -> dict[int, int]:
    """Until every token arrived and the MAIL stream is empty; how often each arrived."""
    load = relay.Load(0, MAILS, tag=tag)
    load.confirmed = set(range(MAILS))
    async with asyncio.timeout(timeout_s):
        counts = await relay.all_delivered(up, load, nats_url, timeout_s=timeout_s)
    return dict(counts)


async def test_a_dispatcher_frozen_past_the_ack_wait_delivers_each_held_mail_once(
    tmp_path: Path,
) -> None:
    """SIGSTOP of the only dispatcher while it holds mail in the upstream's DATA phase,
    for longer than the ack wait: JetStream hands the messages out again to the same
    process when it wakes up; they join the trips still in flight instead of starting
    new ones, so each mail reaches the upstream once, and nothing is left behind."""
    up = await upstream_mod.start()
    try:
        async with natsserver.running(tmp_path / "nats") as server, relay.running(
            tmp_path / "relay", server.url, up, dispatchers=1,
            PODPOST_DISPATCHER__ACK_WAIT_S="2") as running:
            await relay.wait_ready(running)
            up.handler.close_gate()
            await _send(running.port, "frozen", MAILS)
            await dispatching.eventually(lambda: up.handler.waiting >= MAILS, 30)
            victim = running.dispatchers()[0]
            victim.freeze()
            await asyncio.sleep(4.0)  # twice the ack wait: every held message expires
            up.handler.open_gate()
            victim.thaw()
            counts = await _drained(up, "frozen", server.url, 60)
            assert counts == dict.fromkeys(range(MAILS), 1)
            assert jetstream.clean(await jetstream.until_clean(server.url))
            assert running.crashed() == []
    finally:
        await up.close()


async def test_a_broker_restart_mid_delivery_delivers_each_held_mail_once(
    tmp_path: Path,
) -> None:
    """nats-server SIGKILLed while the only dispatcher's deliveries wait for the
    upstream's reply, the upstream answering while it is down, restarted after more than
    the ack wait: the restarted server hands the messages out again at once, to the
    process that still holds them; their acks go to the newest hand-out, so each mail
    reaches the upstream once, and the attempt records and bodies are all removed."""
    up = await upstream_mod.start()
    try:
        async with natsserver.running(tmp_path / "nats") as server, relay.running(
            tmp_path / "relay", server.url, up, dispatchers=1,
            PODPOST_DISPATCHER__ACK_WAIT_S="2") as running:
            await relay.wait_ready(running)
            up.handler.close_gate()
            await _send(running.port, "restart", MAILS)
            await dispatching.eventually(lambda: up.handler.waiting >= MAILS, 30)
            await server.kill()
            up.handler.open_gate()
            await asyncio.sleep(3.0)  # longer than the ack wait
            await server.start()
            counts = await _drained(up, "restart", server.url, 60)
            assert counts == dict.fromkeys(range(MAILS), 1)
            assert jetstream.clean(await jetstream.until_clean(server.url))
            assert running.crashed() == []
    finally:
        await up.close()


async def test_mail_held_by_a_killed_dispatcher_is_delivered_by_another_within_30_s(
    tmp_path: Path,
) -> None:
    """With the default ack wait, mail a SIGKILLed dispatcher held mid-delivery is
    handed to the other dispatcher and reaches the upstream within 30 s of the kill
    (it waited the whole 120 s ack wait before)."""
    up = await upstream_mod.start()
    try:
        async with natsserver.running(tmp_path / "nats") as server, relay.running(
            tmp_path / "relay", server.url, up, dispatchers=1) as running:
            await relay.wait_ready(running)
            up.handler.close_gate()
            await _send(running.port, "held", MAILS)
            await dispatching.eventually(lambda: up.handler.waiting >= MAILS, 30)
            await running.add_dispatcher()
            await running.dispatchers()[0].kill()
            # its upstream sessions died with it
            await dispatching.eventually(lambda: up.handler.waiting == 0, 10)
            up.handler.open_gate()
            counts = await _drained(up, "held", server.url, 30)
            assert counts == dict.fromkeys(range(MAILS), 1)
    finally:
        await up.close()
