"""List, then watch, one Kubernetes collection, without ever missing a change.

The informer pattern, reduced to what podpost needs: a paged LIST gives every object and a
resourceVersion; a WATCH from that version streams each later change. When the stream ends
(server timeout, dropped connection, our own deadline) the next WATCH resumes from the last
version seen (bookmarks keep it fresh). When the server answers 410 Gone the version has
been compacted away, so the collection is listed again and the relist *replaces* what we
hold: objects deleted in the gap disappear too. Failures are retried with stamina's
jittered backoff; every change that matters to the builder calls ``on_change``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import msgspec
import stamina
import structlog

from reconciler import kubeapi
from reconciler.rules import kubeobjects

log = structlog.get_logger("reconciler.watching")

class Sink(Protocol):
    """Where a collection's objects go (`reconciler.rules.inventory`); both say if anything that
    matters changed."""

    def apply(self, kind: str, raw: bytes) -> bool: ...

    def replace(self, raws: Iterable[bytes]) -> bool: ...


class _Versioned(msgspec.Struct, frozen=True):
    metadata: kubeobjects.ListMeta = kubeobjects.ListMeta()


_versioned = msgspec.json.Decoder(_Versioned)


class Watcher:
    """One collection kept in sync; ``synced`` is set once the first LIST has landed."""

    def __init__(self, api: kubeapi.Api, *, name: str, path: str, params: Mapping[str, str],
                 sink: Sink, on_change: Callable[[], None], timeout_s: float) -> None:
        self.api = api
        self.name = name
        self.path = path
        self.params = dict(params)
        self.sink = sink
        self.on_change = on_change
        self.timeout_s = timeout_s
        self.synced = asyncio.Event()
        self.version: str | None = None
        """Where the next watch resumes; None: list first."""
        self.lists = 0
        self.watches = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the collection in sync until ``stop`` (or cancellation)."""
        while not stop.is_set():
            async for attempt in stamina.retry_context(
                on=kubeapi.TRANSIENT, attempts=None, timeout=None,
                wait_initial=0.2, wait_max=10.0, wait_jitter=0.5,
            ):
                with attempt:
                    await self._session(stop)

    async def _session(self, stop: asyncio.Event) -> None:
        """One LIST if needed, then one WATCH until its stream ends."""
        try:
            if self.version is None:
                await self._relist()
            await self._watch(stop)
        except kubeapi.Gone as exc:
            log.info("reconciler.watch_expired", collection=self.name,
                     resource_version=self.version, reason=exc.message)
            self.version = None

    async def _relist(self) -> None:
        items, version = await self.api.list(self.path, self.params)
        self.lists += 1
        changed = self.sink.replace(items)
        self.version = version
        log.info("reconciler.collection_listed", collection=self.name, items=len(items),
                 resource_version=version)
        self.synced.set()
        if changed:
            self.on_change()

    async def _watch(self, stop: asyncio.Event) -> None:
        assert self.version is not None
        params = {**self.params, "resourceVersion": self.version}
        self.watches += 1
        async with self.api.watch(self.path, params, self.timeout_s) as stream:
            try:
                async with asyncio.timeout(kubeapi.watch_deadline(self.timeout_s)):
                    while not stop.is_set() and (line := await stream.readline()):
                        if line.strip():
                            self._handle(line)
            except TimeoutError:
                pass  # our own deadline on a stream the server did not end: resume
        log.debug("reconciler.watch_ended", collection=self.name,
                  resource_version=self.version)

    def _handle(self, line: bytes) -> None:
        event = kubeobjects.event_decoder.decode(line)
        if event.type == "ERROR":
            status = kubeobjects.status_decoder.decode(event.object)
            cls = kubeapi.Gone if status.code == 410 else kubeapi.ApiError
            raise cls(status.code, status.reason, status.message)
        version = _versioned.decode(event.object).metadata.resource_version
        if event.type != "BOOKMARK":
            try:
                changed = self.sink.apply(event.type, bytes(event.object))
            except msgspec.ValidationError as exc:
                log.warning("reconciler.object_skipped", collection=self.name,
                            event_type=event.type, error=str(exc))
                changed = False
            if changed:
                self.on_change()
        if version:
            self.version = version
