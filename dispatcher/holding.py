"""A message this dispatcher holds, known by its stream sequence, and the lease on it.

JetStream hands a message out again when it heard nothing of it for ``ack_wait_s``: the
process holding it was frozen (SIGSTOP, a long GC or CPU starvation), or the broker
restarted and lost the in-progress marks. The second hand-out may come back to the very
process that still works on the first. Keyed by reply subject (unique per hand-out) the
two looked like two messages and the mail went out twice; keyed by stream sequence they
are one: the newer handle replaces the older (acks, naks and keepalives go to the newest
hand-out), and no second trip starts (`Held.renew`).

The lease is this process's right to talk to the upstream about the message: it runs for
``ack_wait_s`` from the last moment the server was told (the fetch, or an ``in_progress``
sent while the link was up). Once it has run out the server has, or will, hand the
message to someone else, so a trip that has not reached the upstream yet gives up
(`Held.leased`); a keepalive cannot revive it, only a new hand-out can.
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

LEASE_SHARE = 0.8
"""The part of ``ack_wait_s`` a lease is trusted for: the server's clock starts when our
last word reached it, a moment after we sent it."""


class Held:
    """One held message: the newest handle JetStream gave for it and its lease."""

    def __init__(self, msg: Msg, now: float, ack_wait_s: float, link_changes: int = 0) -> None:
        self.msg = msg
        self.link_changes = link_changes
        """`bus.Link.changes` when it was fetched: a change since means the broker may have
        forgotten this hand-out (a restarted nats-server writes consumer state lazily)."""
        self._renewed = asyncio.Event()
        self.seq: int = msg.metadata.sequence.stream
        self.fetched_at = now
        self.told_at = now
        """When the server last heard of this message from us (fetch or in_progress)."""
        self.handouts = 1
        self.ack_wait_s = ack_wait_s
        self._acked = False

    def renew(self, msg: Msg, now: float) -> None:
        """JetStream handed the message out again while we hold it: keep the newer handle,
        start a fresh lease, and no second trip."""
        self.msg = msg
        self.told_at = now
        self.handouts += 1
        self._renewed.set()

    async def wait_renewed(self, seen: int, timeout_s: float) -> bool:
        """Until a hand-out newer than the ``seen``-th arrived, at most ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.handouts <= seen:
                    self._renewed.clear()
                    await self._renewed.wait()
        except TimeoutError:
            return False
        return True

    def leased(self, now: float) -> bool:
        """Whether this process still alone holds the message (see the module docstring)."""
        return now - self.told_at < self.ack_wait_s * LEASE_SHARE

    def kept_alive(self, now: float) -> None:
        """An ``in_progress`` went out on a live link."""
        self.told_at = now

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def metadata(self) -> Msg.Metadata:
        return self.msg.metadata

    @property
    def is_acked(self) -> bool:
        return self._acked or self.msg.is_acked

    async def ack(self) -> None:
        await self.msg.ack()
        self._acked = True

    async def ack_sync(self, timeout_s: float) -> None:
        await self.msg.ack_sync(timeout=timeout_s)
        self._acked = True

    async def nak(self, delay: float | None = None) -> None:
        await self.msg.nak(delay=delay)
        self._acked = True

    async def term(self) -> None:
        await self.msg.term()
        self._acked = True

    async def in_progress(self) -> None:
        await self.msg.in_progress()
