"""Read what the operator commands show: dead letters, caught mail, a mail's events and
the counts behind ``podpost status``.

Dead letters, caught mail and their bodies are read by `runtime.mailstore` (the web
console reads them too); other streams with `runtime.scanning`, a scan that never disturbs
the durable consumers, bounded in count and time. What is read is folded into rows by
`admin.rules`. Bodies: `mailstore.body`; replay and purge: `runtime.requeueing`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

import msgspec

from admin.rules import caughtmail, deadletters, identifiers, statusreport, timeline
from runtime import bus, mailstore, scanning
from schemas import events, mail, names, rates
from schemas import snapshot as snapshot_mod

# --- dead letters and caught mail ---------------------------------------------------------


@dataclass(frozen=True)
class Dead(mailstore.Kept[mail.DeadLetter]):
    """A dead letter with its ``dlq list`` row; `runtime.requeueing` replays and purges it."""

    item: deadletters.DeadItem

    @property
    def letter(self) -> mail.DeadLetter:
        return self.value


def _dead(kept: mailstore.Kept[mail.DeadLetter]) -> Dead:
    return Dead(kept.seq, kept.value, deadletters.dead_item(kept.seq, kept.value))


async def dead_letters(
    conn: bus.Conn, *, upstream: str | None = None, since: datetime | None = None,
    start_seq: int | None = None,
) -> mailstore.Read[Dead]:
    """Dead letters, for one upstream or all (`mailstore.dead_letters`), with their rows."""
    read = await mailstore.dead_letters(conn, upstream=upstream, since=since,
                                        start_seq=start_seq)
    return mailstore.Read([_dead(kept) for kept in read.found], read.unreadable, read.last_seq)


async def dead_letter(conn: bus.Conn, seq: int) -> Dead | None:
    """One dead letter by DEAD sequence; None when it is not there (or not a dead letter)."""
    kept = await mailstore.dead_letter(conn, seq)
    return None if kept is None else _dead(kept)


async def find_dead(conn: bus.Conn, ids: identifiers.Ids) -> tuple[list[Dead], list[str]]:
    """The dead letters named by ``ids`` and the ids that named nothing. Sequences are
    read one by one; a mail id needs a scan of the stream."""
    if ids.mail_ids:
        every = (await dead_letters(conn)).found
    else:
        every = [dead for seq in ids.seqs if (dead := await dead_letter(conn, seq)) is not None]
    by_seq = {dead.item.seq: dead for dead in every}
    items, unknown = identifiers.pick([dead.item for dead in every], ids)
    return [by_seq[item.seq] for item in items], unknown


@dataclass(frozen=True)
class CaughtMail:
    item: caughtmail.CaughtItem
    caught: mail.Caught


async def caught(conn: bus.Conn, *, with_subjects: bool = True) -> mailstore.Read[CaughtMail]:
    """Every mail the catcher kept (the Subject is read from inline bodies only)."""
    read = await mailstore.caught(conn)

    def make(kept: mailstore.Kept[mail.Caught]) -> CaughtMail:
        body = kept.value.envelope.body
        subject = caughtmail.subject_of(body) if with_subjects and body is not None else ""
        return CaughtMail(caughtmail.caught_item(kept.seq, kept.value, subject), kept.value)

    return mailstore.Read([make(kept) for kept in read.found], read.unreadable, read.last_seq)


async def find_caught(conn: bus.Conn, ids: identifiers.Ids) -> tuple[list[CaughtMail], list[str]]:
    every = (await caught(conn)).found
    by_seq = {kept.item.seq: kept for kept in every}
    items, unknown = identifiers.pick([kept.item for kept in every], ids)
    return [by_seq[item.seq] for item in items], unknown


# --- trace ----------------------------------------------------------------------------------


class _MailIdOnly(msgspec.Struct):
    mail_id: str = ""


_mail_id_decoder = msgspec.json.Decoder(_MailIdOnly)


async def history(conn: bus.Conn, mail_id: str, *, since: datetime | None = None
                  ) -> list[events.AnyEvent]:
    """Every event of one mail, oldest first (`timeline.ordered`: by time, not by arrival),
    with its upstreams' suspensions and resumptions while it was queued
    (`timeline.with_upstreams`). Events are published per kind, not per mail, so this
    scans the stream; only the mail id of each event is decoded until one matches."""
    stored = await scanning.scan(conn, conn.names.events_stream, conn.names.events_filter(),
                        start_time=since)
    found: list[events.AnyEvent] = []
    upstream_events: list[events.AnyEvent] = []
    for msg in stored:
        try:
            of = _mail_id_decoder.decode(msg.data).mail_id
            if of == mail_id:
                found.append(events.event_decoder.decode(msg.data))
            elif not of and msg.subject.rpartition(".")[2] in events.UPSTREAM_KINDS:
                upstream_events.append(events.event_decoder.decode(msg.data))
        except msgspec.DecodeError:
            continue  # an event kind this version does not know
    return timeline.with_upstreams(timeline.ordered(found), upstream_events)


async def dead_letter_fates(conn: bus.Conn) -> list[events.Replayed | events.Purged]:
    """The `Replayed` and `Purged` events still kept, in order: what became of dead
    letters that are gone from DEAD. Only those two event subjects are read."""
    found: list[events.Replayed | events.Purged] = []
    for kind in ("replayed", "purged"):
        stored = await scanning.scan(conn, conn.names.events_stream, conn.names.event_subject(kind))
        for msg in stored:
            try:
                event = events.event_decoder.decode(msg.data)
            except msgspec.DecodeError:
                continue
            if isinstance(event, events.Replayed | events.Purged):
                found.append(event)
    return sorted(found, key=lambda event: event.at)


# --- status ---------------------------------------------------------------------------------


async def _consumer_loads(conn: bus.Conn) -> list[statusreport.ConsumerLoad]:
    loads: list[statusreport.ConsumerLoad] = []
    for info in await bus.consumer_infos(conn):
        subjects = [info.config.filter_subject] if info.config.filter_subject else []
        subjects += info.config.filter_subjects or []
        loads.extend(statusreport.ConsumerLoad(filter_subject=subject,
                                               ack_pending=info.num_ack_pending or 0)
                     for subject in subjects[:1])
    return loads


async def _attempt_records(conn: bus.Conn) -> tuple[list[mail.AttemptRecord], int]:
    bucket = conn.names.attempts_bucket
    stored = await scanning.scan(conn, names.kv_stream(bucket), names.kv_filter(bucket),
                        last_per_subject=True)
    records: list[mail.AttemptRecord] = []
    bad = 0
    for msg in stored:
        if msg.headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            continue
        try:
            records.append(mail.attempt_decoder.decode(msg.data))
        except msgspec.DecodeError:
            bad += 1
    return records, bad


async def _rate_values(conn: bus.Conn) -> list[tuple[str, bytes]]:
    """(key, value) of every live entry of the RATES bucket."""
    bucket = conn.names.rates_bucket
    stored = await scanning.scan(conn, names.kv_stream(bucket), names.kv_filter(bucket),
                        last_per_subject=True)
    prefix = names.kv_filter(bucket)[:-1]
    return [(msg.subject.removeprefix(prefix), msg.data) for msg in stored
            if msg.headers.get("KV-Operation") not in ("DEL", "PURGE") and msg.data]


async def rate_used(conn: bus.Conn, now: datetime) -> dict[str, int]:
    """Messages sent per policy in its current rate-limit window (RATES bucket): the
    window's ``sent``, not its ``used``, which also holds the tokens dispatchers reserved
    for fetches still waiting for mail."""
    windows: list[rates.RateWindow] = []
    for key, value in await _rate_values(conn):
        if key.startswith(rates.QUOTA):
            continue
        with contextlib.suppress(msgspec.DecodeError):
            windows.append(rates.window_decoder.decode(value))
    now_ms = int(now.timestamp() * 1000)
    return {policy: w.sent for policy, w in rates.current(windows, now_ms).items()}


async def quota_used(conn: bus.Conn, now: datetime) -> list[rates.QuotaWindow]:
    """The provider accounts' current quota windows (RATES bucket, ``quota.*`` keys)."""
    windows: list[rates.QuotaWindow] = []
    for key, value in await _rate_values(conn):
        if key.startswith(rates.QUOTA):
            with contextlib.suppress(msgspec.DecodeError):
                windows.append(rates.quota_decoder.decode(value))
    return rates.current_quotas(windows, int(now.timestamp() * 1000))


async def policy_snapshot(conn: bus.Conn) -> tuple[snapshot_mod.PolicySnapshot | None, int]:
    stored = await bus.read_snapshot(conn)
    return stored.snapshot, stored.revision


async def status(conn: bus.Conn, now: datetime) -> statusreport.StatusReport:
    bus_names = conn.names
    queued = await mailstore.subject_counts(conn, bus_names.mail_stream, bus_names.mail_filter())
    dead = await mailstore.subject_counts(conn, bus_names.dead_stream, bus_names.dead_filter())
    consumers = await _consumer_loads(conn)
    records, bad = await _attempt_records(conn)
    snap, revision = await policy_snapshot(conn)
    used = await rate_used(conn, now)
    quota_windows = await quota_used(conn, now)
    report = statusreport.status_report(bus_names, now=now, queued=queued, consumers=consumers,
                                        attempts=records, dead=dead, snap=snap, revision=revision,
                                        rate_used=used, quota_windows=quota_windows)
    return msgspec.structs.replace(report, unreadable_attempts=bad)
