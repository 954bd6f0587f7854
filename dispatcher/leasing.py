"""The installation-wide connection cap of an upstream: one lease per open connection,
held in the RATES bucket and renewed while the connection lives.

Providers count connections per account, not per podpost replica (Mailtrap refuses the
eleventh with ``535 5.7.8 Too many connections per account``), so an `SMTPServer`'s
``maxConnections`` holds for every dispatcher replica together. It is a distributed
semaphore: the slots of upstream U are the keys ``conn.<U token>.<0..cap-1>``; opening a
connection first takes a free slot (a key that is absent, created; or whose lease expired,
replaced naming the revision read: compare-and-swap, so two replicas never both win a
slot), and closing it deletes the key. A lease lasts `LEASE_S`; `Leases.run` renews every
held lease each third of that, like ``in_progress`` keeps a slow message. A SIGKILLed
replica renews nothing, so its slots are free again within `LEASE_S`; a replica that
lost a renewal (its lease expired and was taken) drops it and logs it, and its connection
lives on until it is closed: the cap can be exceeded by one connection for that while,
never for long.

Cost: two KV round trips per connection opened and one per held connection every
`LEASE_S` / 3, nothing per mail. The default cap (``dispatcher.max_connections``, for
servers that set none) stays per replica and costs nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from runtime import bus
from schemas import names

log = structlog.get_logger("dispatcher.leasing")

LEASE_S = 30.0
"""How long a lease lasts unless renewed: how long a crashed replica's slots stay taken."""
POLL_S = 0.2
"""Pause between tries while every slot is taken."""
PREFIX = "conn."


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    upstream: str
    expires_ms: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Lease)


def slot_key(upstream: str, index: int) -> str:
    return f"{PREFIX}{names.key_token(upstream)}.{index}"


def free(value: bytes | None, now_ms: int) -> bool:
    """Whether a stored slot may be taken: empty, unreadable or expired."""
    if not value:
        return True
    try:
        return _decoder.decode(value).expires_ms <= now_ms
    except msgspec.DecodeError:
        return True


class Leases:
    """The slots this replica holds, by key: the revision last written."""

    def __init__(self, kv: KeyValue, *, lease_s: float = LEASE_S, kv_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._kv = kv
        self._lease_s = lease_s
        self._kv_s = kv_s
        self._clock = clock
        self.holder = uuid.uuid4().hex
        self._held: dict[str, tuple[str, int]] = {}
        """key -> (upstream, revision)."""
        self._released: asyncio.Queue[str] = asyncio.Queue()

    def held(self, upstream: str) -> int:
        return sum(1 for up, _ in self._held.values() if up == upstream)

    def _value(self, upstream: str) -> bytes:
        return _encoder.encode(Lease(holder=self.holder, upstream=upstream,
                                     expires_ms=int((self._clock() + self._lease_s) * 1000)))

    async def _try(self, upstream: str, cap: int) -> str | None:
        now_ms = int(self._clock() * 1000)
        for index in range(cap):
            key = slot_key(upstream, index)
            if key in self._held:
                continue
            try:
                async with asyncio.timeout(self._kv_s):
                    try:
                        entry = await self._kv.get(key)
                    except nats.js.errors.KeyNotFoundError:
                        revision = await self._kv.create(key, self._value(upstream))
                    else:
                        if not free(entry.value, now_ms):
                            continue
                        revision = await self._kv.update(key, self._value(upstream),
                                                         last=entry.revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                continue  # another replica took it first
            self._held[key] = (upstream, revision)
            return key
        return None

    async def acquire(self, upstream: str, cap: int, wait_s: float) -> str | None:
        """A slot of ``upstream``'s ``cap``, waiting up to ``wait_s`` for one to be
        freed; None when none was (or the bucket could not be reached)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            try:
                key = await self._try(upstream, cap)
            except bus.TRANSIENT as exc:
                log.warning("dispatcher.lease_failed", upstream=upstream,
                            error=str(exc) or repr(exc))
                key = None
            if key is not None:
                return key
            if asyncio.get_running_loop().time() + POLL_S > deadline:
                return None
            await asyncio.sleep(POLL_S)

    def release(self, key: str | None) -> None:
        """Give a slot back (sync: a connection is closed from sync code too); `run`
        deletes the key."""
        if key is not None and self._held.pop(key, None) is not None:
            self._released.put_nowait(key)

    async def run(self, stop: asyncio.Event) -> None:
        """Delete released slots at once and renew the held ones every third of the lease,
        until ``stop``; on stop, give every slot back."""
        period = self._lease_s / 3
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + period
        while not stop.is_set():
            # Wait for a released slot, the next renewal or the stop, whichever is first:
            # a stop must not wait out the renewal period (it held every stop 10 s).
            released = asyncio.ensure_future(self._released.get())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({released, stopped},
                                   timeout=max(0.0, next_renewal - loop.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                if not released.done():
                    released.cancel()
            if released.done() and not released.cancelled():
                await self._delete(released.result())
                continue
            if stop.is_set():
                break
            await self._renew()
            next_renewal = loop.time() + period
        for key in list(self._held):
            self.release(key)
        while not self._released.empty():
            await self._delete(self._released.get_nowait())

    async def _delete(self, key: str) -> None:
        try:
            async with asyncio.timeout(self._kv_s):
                await self._kv.delete(key)
        except bus.TRANSIENT as exc:  # it expires by itself
            log.warning("dispatcher.lease_release_failed", key=key, error=str(exc) or repr(exc))

    async def _renew(self) -> None:
        for key, (upstream, revision) in list(self._held.items()):
            try:
                async with asyncio.timeout(self._kv_s):
                    new = await self._kv.update(key, self._value(upstream), last=revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                log.warning("dispatcher.lease_lost", key=key, upstream=upstream)
                self._held.pop(key, None)
                continue
            except bus.TRANSIENT as exc:
                log.warning("dispatcher.lease_renewal_failed", key=key,
                            error=str(exc) or repr(exc))
                continue
            if key in self._held:
                self._held[key] = (upstream, new)
