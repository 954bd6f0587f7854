"""The operator's steering as this dispatcher knows it: the CONTROL bucket, watched and
kept in memory, and the one question a trip asks of it: may this mail be tried now?

``podpost queue suspend|hold|move|retry`` write the CONTROL bucket (`schemas.control`);
every replica watches it (a KV watch: an ordered push consumer that first replays the
current entries, then streams each change), so a suspend reaches every replica within the
watch's latency, milliseconds. A mail that may not be tried is a *hold* for the trip
(`delivery`): a short ``nak`` that counts no attempt, writes nothing and never
dead-letters the mail, whatever its age (docs: README, "Operating the queue").

Why the hold is a nak of ``dispatcher.hold_delay_s`` (5 s) and not longer: a nak's delay
cannot be shortened from outside JetStream, so the delay is how late a ``resume`` or
``release`` can take effect. A suspension with an end (``--for``) is held no longer than
until that end.

Until the first full read of the bucket, nothing is tried (`UNLOADED_DELAY_S`): a
dispatcher that starts while an upstream is suspended must not attempt it once. A watch
that fails (broker away) keeps the last state and is re-created; a watch is also
re-created every `REWATCH_S`, rebuilding the state from scratch, so one that went silent
during a broker restart cannot leave a replica stale for long.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import msgspec
import nats.errors
import structlog
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from dispatcher.rules import classify
from runtime import bus, waiting
from schemas import control, mail, names

log = structlog.get_logger("dispatcher.control")

HOLD_DELAY_S = 5.0
"""The nak delay of a held or suspended mail (``dispatcher.hold_delay_s``): a resume or
release takes effect within this long. Each held mail comes back this often (a fetch, a
decode, a nak: cheap)."""
UNLOADED_DELAY_S = 1.0
"""The nak delay before the control state was read once."""
WATCH_POLL_S = 1.0
"""How long one wait for a change lasts: it bounds how late a stop is noticed."""
REWATCH_S = 60.0
"""A watch is re-created (and the state re-read) this often."""
RETRY_S = 2.0
"""Pause after a failed watch."""


class Blocked(NamedTuple):
    """Why a mail may not be tried now, and when to look again."""

    reason: str
    delay_s: float


def hold(blocked: Blocked, env: mail.Envelope) -> classify.Decision:
    """The trip's decision for a blocked mail: wait ``delay_s``, no attempt counted, and
    no expiry check (unlike `classify.hold`): a held mail is never dead-lettered for its
    age while it is held; past its max age, its first failed attempt after the release
    dead-letters it (README, "Operating the queue")."""
    return classify.Decision(attempt=0, verdicts=[classify.Verdict(
        fate=classify.Fate.RETRY, rcpts=list(env.rcpt_to), delay_s=blocked.delay_s,
        reason=blocked.reason)])


@dataclass
class State:
    """The CONTROL bucket's entries, by kind. Pure: `apply` and `blocked` do no I/O and
    take ``now`` explicitly."""

    suspended: dict[str, control.Suspension] = field(default_factory=dict)
    held: dict[str, control.Hold] = field(default_factory=dict)
    moving: dict[int, control.Moving] = field(default_factory=dict)
    delay_s: float = HOLD_DELAY_S
    """How long a blocked mail waits before it is looked at again."""

    def apply(self, key: str, value: bytes | None) -> bool:
        """One entry stored (``value``) or deleted (None); False when the key or value is
        not one this version understands (it is then ignored)."""
        try:
            if key.startswith(names.SUSPEND):
                if value is None:
                    self.suspended = {up: s for up, s in self.suspended.items()
                                      if names.suspend_key(up) != key}
                    return True
                suspension = control.suspension_decoder.decode(value)
                self.suspended[suspension.upstream] = suspension
            elif key.startswith(names.HOLD):
                mail_id = key.removeprefix(names.HOLD)
                if value is None:
                    self.held.pop(mail_id, None)
                else:
                    self.held[mail_id] = control.hold_decoder.decode(value)
            elif key.startswith(names.MOVING):
                seq = int(key.removeprefix(names.MOVING))
                if value is None:
                    self.moving.pop(seq, None)
                else:
                    self.moving[seq] = control.moving_decoder.decode(value)
            else:
                return False
        except (msgspec.DecodeError, ValueError):
            return False
        return True

    def suspended_at(self, upstream: str, now: datetime) -> bool:
        """Whether ``upstream`` is suspended at ``now``."""
        suspension = self.suspended.get(upstream)
        return suspension is not None and (suspension.until is None or suspension.until > now)

    def blocked(self, mail_id: str, upstream: str, seq: int, now: datetime) -> Blocked | None:
        """Why the MAIL message ``seq`` (mail ``mail_id`` for ``upstream``) may not be
        tried at ``now``; None when it may."""
        moving = self.moving.get(seq)
        if moving is not None:
            return Blocked(f"being moved to {moving.to_upstream}", self.delay_s)
        hold = self.held.get(mail_id)
        if hold is not None:
            return Blocked("held" + (f": {hold.reason}" if hold.reason else ""), self.delay_s)
        suspension = self.suspended.get(upstream)
        if suspension is None:
            return None
        reason = "upstream suspended" + (f": {suspension.reason}" if suspension.reason else "")
        if suspension.until is None:
            return Blocked(reason, self.delay_s)
        left = (suspension.until - now).total_seconds()
        if left <= 0:
            return None
        return Blocked(reason, min(self.delay_s, left))


class Control:
    """The state of the CONTROL bucket, kept current by `run`."""

    def __init__(self, delay_s: float = HOLD_DELAY_S) -> None:
        self.delay_s = delay_s
        self.state = State(delay_s=delay_s)
        self.loaded = asyncio.Event()
        """Set once the bucket was read in full."""

    def blocked(self, mail_id: str, upstream: str, seq: int, now: datetime) -> Blocked | None:
        if not self.loaded.is_set():
            return Blocked("the control state is not read yet", UNLOADED_DELAY_S)
        return self.state.blocked(mail_id, upstream, seq, now)

    def suspended(self, upstream: str, now: datetime) -> bool:
        """Whether ``upstream`` is suspended now (unknown before the first read: yes)."""
        return not self.loaded.is_set() or self.state.suspended_at(upstream, now)

    async def suspend(self, conn: bus.Conn, upstream: str, for_s: float, reason: str,
                      now: datetime) -> bool:
        """A reply rule suspends ``upstream`` for ``for_s``: write the suspension to
        CONTROL (every replica's watch sees it) and apply it here at once. An operator's
        suspension that lasts as long or longer is left alone. False when it could not be
        written (it still holds in this replica until ``until``)."""
        until = now + timedelta(seconds=for_s)
        seen = self.state.suspended.get(upstream)
        if seen is not None and (seen.until is None or seen.until >= until):
            return True
        entry = control.Suspension(upstream=upstream, since=now, until=until,
                                   reason=reason, by="dispatcher")
        self.state.suspended[upstream] = entry
        try:
            async with asyncio.timeout(conn.deadlines.kv_s):
                kv = await bus.control_kv(conn)
                await kv.put(names.suspend_key(upstream), control.encoder.encode(entry))
        except bus.TRANSIENT as exc:
            log.warning("dispatcher.suspend_failed", upstream=upstream,
                        error=str(exc) or repr(exc))
            return False
        log.warning("dispatcher.upstream_suspended", upstream=upstream, until=until.isoformat(),
                    reason=reason)
        return True

    def probe(self) -> str | None:
        """For ``/readyz``: not ready until the control state was read."""
        return None if self.loaded.is_set() else "control state not loaded"

    async def run(self, conn: bus.Conn, stop: asyncio.Event) -> None:
        """Watch the CONTROL bucket until ``stop``."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(conn.deadlines.api_s):
                    kv = await bus.control_kv(conn)
                await self._watch(kv, stop, asyncio.get_running_loop().time() + REWATCH_S)
            except bus.TRANSIENT as exc:
                log.warning("dispatcher.control_watch_failed", error=str(exc) or repr(exc))
                await waiting.sleep_or_stop(stop, RETRY_S)

    async def _watch(self, kv: KeyValue, stop: asyncio.Event, until: float) -> None:
        """One watch: read every entry into a fresh state, swap it in at the end of the
        replay (the watcher's None marker), then apply each change as it comes."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WATCH_POLL_S * 5):
            watcher = await kv.watchall()
        fresh: State | None = State(delay_s=self.delay_s)
        try:
            while not stop.is_set() and loop.time() < until:
                try:
                    entry = await watcher.updates(timeout=WATCH_POLL_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # the replay of the current entries is complete
                    if fresh is not None:
                        self.state, fresh = fresh, None
                        if not self.loaded.is_set():
                            log.info("dispatcher.control_loaded",
                                     suspended=sorted(self.state.suspended),
                                     held=len(self.state.held))
                        self.loaded.set()
                    continue
                if not isinstance(entry, KeyValue.Entry):  # the watcher was stopped
                    return
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                target = fresh if fresh is not None else self.state
                if not target.apply(entry.key, None if deleted else entry.value):
                    log.warning("dispatcher.control_entry_ignored", key=entry.key)
                elif fresh is None:
                    log.info("dispatcher.control_changed", key=entry.key, deleted=deleted)
        finally:
            with contextlib.suppress(*bus.TRANSIENT):
                await watcher.stop()  # type: ignore[no-untyped-call]
