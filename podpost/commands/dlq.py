"""``podpost dlq list|show|replay|purge``: the dead letters on the DEAD stream.

An ID is a DEAD stream sequence (the ``id`` column: one dead letter) or a mail id (every
dead letter of that mail). ``replay`` and ``purge`` check every ID before they act: an ID
that names nothing stops the command before anything is done, unless the events say the
dead letter was already replayed (or purged), which is only noted, so running the same
command twice is safe. What they do, step by step, is told in `runtime.requeueing`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime

import msgspec

from admin import inspecting
from admin.rules import deadletters, identifiers
from podpost import tables
from podpost.commands import running
from runtime import bus, mailstore, requeueing
from runtime import settings as settings_mod
from schemas import events, mail, names


class Where(msgspec.Struct, frozen=True, kw_only=True):
    """The filter options as typed; checked (`filter`) before anything connects."""

    upstream: str | None = None
    policy: str | None = None
    since: str | None = None
    older_than: str | None = None

    def filter(self, now: datetime) -> deadletters.Filter:
        since = running.duration("--since", self.since)
        older = running.duration("--older-than", self.older_than)
        return deadletters.Filter(
            upstream=running.key("--upstream", self.upstream),
            policy=running.key("--policy", self.policy),
            dead_since=None if since is None else now - since,
            dead_before=None if older is None else now - older,
        )


def list_(cfg: settings_mod.Settings, where: Where, *, as_json: bool) -> None:
    async def work() -> None:
        now = running.now()
        chosen = where.filter(now)
        async with running.connect(cfg.nats) as conn:
            read = await inspecting.dead_letters(conn, upstream=chosen.upstream,
                                                 since=chosen.dead_since)
        items = deadletters.select([dead.item for dead in read.found], chosen)
        if as_json:
            running.emit_json(items)
        else:
            running.show(tables.dead_letters(items, now))
        if read.unreadable:
            running.note(f"note: {read.unreadable} message(s) on DEAD could not be read")

    running.run(work)


def show(cfg: settings_mod.Settings, dead_id: str, *, raw: bool, as_json: bool) -> None:
    async def work() -> None:
        ids = running.ids([dead_id])
        async with running.connect(cfg.nats) as conn:
            found, unknown = await inspecting.find_dead(conn, ids)
            if unknown:
                raise running.Failure(await _gone(conn, unknown))
            if raw:
                data = await _body(conn, found[0].letter)
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
                return
        if as_json:
            running.emit_json([dead.letter for dead in found] if len(found) > 1
                              else found[0].letter)
            return
        now = running.now()
        for dead in found:
            running.show(tables.dead_letter(dead.item, dead.letter, now))

    running.run(work)


def replay(
    cfg: settings_mod.Settings, dead_ids: Sequence[str], *, every: bool, where: Where,
    to_upstream: str | None, dry_run: bool, as_json: bool,
) -> None:
    async def work() -> int:
        ids = _ids(dead_ids, every)
        now = running.now()
        chosen_filter = where.filter(now)
        target = running.key("--to-upstream", to_upstream)
        async with running.connect(cfg.nats) as conn:
            if target is not None:
                await _check_upstream(conn, target)
            chosen = await _choose(conn, ids, chosen_filter, done="replayed")
            if not chosen:
                running.note("nothing to replay")
                return 0
            with running.progress(len(chosen), "replaying") as advance:
                rows = await requeueing.replay(conn, chosen, to_upstream=target,
                                              dry_run=dry_run, now=now, advance=advance)
        if as_json:
            running.emit_json(rows)
        else:
            running.show(tables.replays(rows, dry_run=dry_run))
        missing = [str(row.seq) for row in rows if row.outcome == requeueing.BODY_MISSING]
        if missing:
            running.note(f"error: dead letter(s) {', '.join(missing)} kept: the body is "
                         "gone, so there is nothing to replay; purge them")
            return 1
        return 0

    running.run(work)


def purge(
    cfg: settings_mod.Settings, dead_ids: Sequence[str], *, every: bool, where: Where,
    dry_run: bool, as_json: bool,
) -> None:
    async def work() -> None:
        ids = _ids(dead_ids, every)
        now = running.now()
        chosen_filter = where.filter(now)
        async with running.connect(cfg.nats) as conn:
            chosen = await _choose(conn, ids, chosen_filter, done="purged")
            if not chosen:
                running.note("nothing to purge")
                return
            with running.progress(len(chosen), "purging") as advance:
                rows = await requeueing.purge(conn, chosen, dry_run=dry_run, now=now,
                                           advance=advance)
        if as_json:
            running.emit_json(rows)
        else:
            running.show(tables.purges(rows, dry_run=dry_run))

    running.run(work)


def _ids(dead_ids: Sequence[str], every: bool) -> identifiers.Ids | None:
    """The IDs, or None for ``--all``; exactly one of the two must be given."""
    if every and dead_ids:
        raise running.Failure("give IDs or --all, not both", running.USAGE)
    if not every and not dead_ids:
        raise running.Failure("give the IDs of the dead letters, or --all", running.USAGE)
    return None if every else running.ids(list(dead_ids))


async def _choose(conn: bus.Conn, ids: identifiers.Ids | None, where: deadletters.Filter, *,
                  done: str) -> list[inspecting.Dead]:
    """The dead letters named (all of them for None) that pass the filter, in stream
    order. An ID naming nothing is an error before anything is done, unless its dead
    letter was ``done`` already (``replayed``/``purged``): that is only noted."""
    if ids is None:
        read = await inspecting.dead_letters(conn, upstream=where.upstream,
                                             since=where.dead_since)
        found = read.found
    else:
        found, unknown = await inspecting.find_dead(conn, ids)
        if unknown:
            message = await _gone(conn, unknown, done=done)
            if message:
                raise running.Failure(message)
    return [dead for dead in found if deadletters.keep(dead.item, where)]


async def _gone(conn: bus.Conn, unknown: Sequence[str], *, done: str = "") -> str:
    """Why the IDs in ``unknown`` name no dead letter, as one line for the error; "" when
    each one's dead letter was ``done`` already, which is noted on stderr instead."""
    fates = await inspecting.dead_letter_fates(conn)
    nothing: list[str] = []
    told: list[str] = []
    for text in unknown:
        event = _fate_of(fates, text)
        if event is None:
            nothing.append(text)
            continue
        what = "replayed" if isinstance(event, events.Replayed) else "purged"
        said = f"dead letter {text} was {what} at {tables.when(event.at)}"
        if what == done:
            running.note(f"note: {said} already")
        else:
            told.append(said)
    parts = [f"no dead letter with id {', '.join(nothing)}"] if nothing else []
    return "; ".join(parts + told)


def _fate_of(fates: Sequence[events.Replayed | events.Purged], text: str
             ) -> events.Replayed | events.Purged | None:
    """The latest replay or purge of the dead letter (sequence) or mail (mail id)."""
    latest = None
    seq = int(text) if text.isdigit() and len(text) <= identifiers.MAX_SEQ_DIGITS else None
    for event in fates:
        if event.dead_seq == seq or event.mail_id == text:
            latest = event
    return latest


async def _check_upstream(conn: bus.Conn, upstream: str) -> None:
    """A re-route must name an upstream the dispatchers know, or the mail would wait."""
    snap, _ = await inspecting.policy_snapshot(conn)
    if upstream == names.CATCHER or snap is None or upstream in snap.upstreams:
        return
    raise running.Failure(f"--to-upstream: {upstream} is not in the policy snapshot "
                          f"(known: {', '.join(sorted(snap.upstreams)) or 'none'})")


async def _body(conn: bus.Conn, letter: mail.DeadLetter) -> bytes:
    try:
        return await mailstore.body(conn, letter.envelope)
    except mailstore.BodyMissing as exc:
        raise running.Failure(str(exc)) from None
