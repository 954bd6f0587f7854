"""The file source: watch one YAML file, build a snapshot whenever it changes, publish it.

This is what ``podpost dev`` and cluster-less installations run. The file is polled (its
mtime, size and a hash of its bytes, so an edit within one mtime tick is seen too) every
``poll_interval_s``; changes arriving within ``debounce_s`` of each other are folded into
one build, so an editor's write-then-rename is not built twice. A file that does not parse
is logged (``reconciler.source_invalid``) and nothing is published: the last good snapshot
stays in force. Building and publishing are the shared `reconciler.cycle`; a publish has
``nats.deadlines.publish_s``. A failed publish (broker down) is retried on the next poll,
and every ``RECHECK_S`` the last good build is published again, which writes only if the
buckets no longer hold it (a broker that lost its store, a login deleted by hand).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import structlog

from reconciler import cycle
from reconciler.rules import building, documents
from reconciler.rules import inputs as inputs_mod
from runtime import bus, waiting
from runtime import settings as settings_mod

log = structlog.get_logger("reconciler.filesource")

RECHECK_S = 30.0
"""How often the last good build is published again (a scheduling interval)."""
MAX_DEBOUNCE_ROUNDS = 20
"""A file rewritten without pause is built after this many debounce rounds anyway."""


class Fingerprint(msgspec.Struct, frozen=True):
    mtime_ns: int
    size: int
    sha256: str


MISSING = Fingerprint(-1, -1, "")


class Read(msgspec.Struct, frozen=True):
    fingerprint: Fingerprint
    text: str | None = None
    error: str | None = None


def read(path: str) -> Read:
    """The file's fingerprint and text, or why it cannot be read. A small local file:
    read synchronously."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            raw = handle.read()
    except FileNotFoundError:
        return Read(MISSING, error=f"{path}: file not found")
    except OSError as exc:
        return Read(MISSING, error=f"{path}: cannot read: {exc.strerror or exc}")
    fingerprint = Fingerprint(stat.st_mtime_ns, len(raw), hashlib.sha256(raw).hexdigest())
    try:
        return Read(fingerprint, text=raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Read(fingerprint, error=f"{path}: not UTF-8 text (byte {exc.start})")


def load(current: Read, *, path: str) -> inputs_mod.Inputs:
    """Parse; `documents.SourceError` when the file cannot be used."""
    if current.text is None:
        raise documents.SourceError(current.error or f"{path}: unreadable")
    return documents.parse(current.text, path=path)


def _report(result: building.Build) -> None:
    """There is no status subresource to write to: say what is not Ready, or in conflict."""
    for obj, conditions in result.conditions.items():
        for condition in conditions:
            bad = (condition.type == "Ready" and condition.status != "True") or (
                condition.type == "Conflict" and condition.status == "True")
            if bad:
                log.warning("reconciler.condition_reported", object=obj, type=condition.type,
                            status=condition.status, reason=condition.reason,
                            message=condition.message)


async def _settled(path: str, first: Read, debounce_s: float, stop: asyncio.Event) -> Read:
    """Re-read after ``debounce_s`` until the file stops changing (bounded)."""
    current = first
    for _ in range(MAX_DEBOUNCE_ROUNDS):
        if await waiting.sleep_or_stop(stop, debounce_s):
            break
        again = read(path)
        if again.fingerprint == current.fingerprint and again.error == current.error:
            break
        current = again
    return current


async def run(
    conn: bus.Conn,
    rcfg: settings_mod.ReconcilerSettings,
    stop: asyncio.Event,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    recheck_s: float = RECHECK_S,
) -> None:
    """Poll, build on change, publish until it succeeds; return when ``stop`` is set."""
    path = rcfg.file
    seen: Read | None = None
    pending: building.Build | None = None
    good: building.Build | None = None
    checked = time.monotonic()
    while not stop.is_set():
        if pending is None and good is not None and time.monotonic() - checked >= recheck_s:
            pending = good
        current = read(path)
        if seen is None or current.fingerprint != seen.fingerprint or current.error != seen.error:
            if seen is not None:
                current = await _settled(path, current, rcfg.debounce_s, stop)
            seen = current
            try:
                pending = cycle.build(functools.partial(load, current, path=path), now=clock(),
                                      source=f"file:{path}")
            except documents.SourceError as exc:
                log.error("reconciler.source_invalid", path=path, error=str(exc))
                pending = None
            else:
                _report(pending)
        if pending is not None and not stop.is_set():
            try:
                await cycle.publish(conn, pending, timeout_s=conn.deadlines.publish_s)
                good, pending, checked = pending, None, time.monotonic()
            except bus.TRANSIENT as exc:
                log.warning("reconciler.publish_failed", error=str(exc) or type(exc).__name__)
        await waiting.sleep_or_stop(stop, rcfg.poll_interval_s)
