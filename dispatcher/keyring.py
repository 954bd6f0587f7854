"""The dispatcher's cached view of the CREDENTIALS bucket.

Upstream logins live in their own KV bucket (only the reconciler writes it, only
dispatchers read it) and never in the snapshot, logs or events. Reading the bucket for
every mail would add a round trip per delivery, so logins are cached for as long as the
bucket's last revision has not moved; that is checked at most once per ``check_every_s``,
so a rotated password reaches the dispatcher within that. The same bucket carries the
upstreams' CA bundles (``ca.<hash>`` keys, `snapshot.TrustedCA`), read the same way. Each
read has the connection's ``kv_s`` deadline (``conn.deadlines``).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from runtime import settings as settings_mod
from schemas import snapshot

log = structlog.get_logger("dispatcher.keyring")

_V = TypeVar("_V", snapshot.Credentials, snapshot.TrustedCA)


class Keyring:
    def __init__(
        self, kv: KeyValue, *, deadlines: settings_mod.DeadlineSettings,
        check_every_s: float = 1.0,
    ) -> None:
        self._kv = kv
        self._timeout_s = deadlines.kv_s
        self._check_every_s = check_every_s
        self._revision = -1
        self._checked_at = float("-inf")
        self._cache: dict[str, snapshot.Credentials | snapshot.TrustedCA | None] = {}

    async def _revalidate(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._checked_at < self._check_every_s:
            return
        async with asyncio.timeout(self._timeout_s):
            status = await self._kv.status()
        self._checked_at = now
        revision = status.stream_info.state.last_seq
        if revision != self._revision:
            self._cache.clear()
            self._revision = revision

    async def get(self, key: str) -> snapshot.Credentials | None:
        """The login stored under ``key``; None when there is none (yet) or it is
        unreadable. Broker trouble raises (nats errors, TimeoutError)."""
        return await self._read(key, snapshot.credentials_decoder, snapshot.Credentials)

    async def ca(self, key: str) -> snapshot.TrustedCA | None:
        """The CA bundle stored under ``key``, like `get`."""
        return await self._read(key, snapshot.trusted_ca_decoder, snapshot.TrustedCA)

    async def _read(
        self, key: str, decoder: msgspec.json.Decoder[_V], tp: type[_V]
    ) -> _V | None:
        await self._revalidate()
        if key in self._cache:
            cached = self._cache[key]
            return cached if isinstance(cached, tp) else None
        try:
            async with asyncio.timeout(self._timeout_s):
                entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None  # not cached: the reconciler may be about to write it
        value: _V | None = None
        if entry.value is not None:
            try:
                value = decoder.decode(entry.value)
            except msgspec.DecodeError:
                log.error("dispatcher.credentials_invalid", key=key)
        self._cache[key] = value
        return value
