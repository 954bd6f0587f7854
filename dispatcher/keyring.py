"""The dispatcher's cached view of the CREDENTIALS bucket.

Upstream logins live in their own KV bucket (only the reconciler writes it, only
dispatchers read it) and never in the snapshot, logs or events. Reading the bucket for
every mail would add a round trip per delivery, so logins are cached for as long as the
bucket's last revision has not moved; that is checked at most once per ``check_every_s``,
so a rotated password reaches the dispatcher within that.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from schemas import snapshot

log = structlog.get_logger("dispatcher.keyring")

KV_TIMEOUT_S = 5.0


class Keyring:
    def __init__(self, kv: KeyValue, *, check_every_s: float = 1.0) -> None:
        self._kv = kv
        self._check_every_s = check_every_s
        self._revision = -1
        self._checked_at = float("-inf")
        self._cache: dict[str, snapshot.Credentials | None] = {}

    async def _revalidate(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._checked_at < self._check_every_s:
            return
        async with asyncio.timeout(KV_TIMEOUT_S):
            status = await self._kv.status()
        self._checked_at = now
        revision = status.stream_info.state.last_seq
        if revision != self._revision:
            self._cache.clear()
            self._revision = revision

    async def get(self, key: str) -> snapshot.Credentials | None:
        """The login stored under ``key``; None when there is none (yet) or it is
        unreadable. Broker trouble raises (nats errors, TimeoutError)."""
        await self._revalidate()
        if key in self._cache:
            return self._cache[key]
        try:
            async with asyncio.timeout(KV_TIMEOUT_S):
                entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None  # not cached: the reconciler may be about to write it
        login: snapshot.Credentials | None = None
        if entry.value is not None:
            try:
                login = snapshot.credentials_decoder.decode(entry.value)
            except msgspec.DecodeError:
                log.error("dispatcher.credentials_invalid", key=key)
        self._cache[key] = login
        return login
