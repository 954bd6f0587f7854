"""``podpost queue list|show|retry|hold|release|suspend|resume|move|purge``: the mail
waiting in the MAIL stream, and the operator's steering of it.

An ID is a MAIL stream sequence (the ``id`` column: one message) or a mail id (every
queued message of that mail). Bulk actions take IDs, or filters (``--upstream``,
``--policy``, ``--older-than``, ``--state``), or ``--all``: a bare ``queue purge`` does
nothing but say so. An ID that names nothing queued stops the command before anything is
done. How each action works on the bus, and why it is safe to run again, is told in
`admin.queueing`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import msgspec
import typer

from admin import inspecting, queueing
from admin.rules import identifiers, queuedmail
from podpost import tables
from podpost.commands import running
from runtime import bus, mailstore
from runtime import settings as settings_mod
from schemas import names


class Where(msgspec.Struct, frozen=True, kw_only=True):
    """The filter options as typed; checked (`filter`) before anything connects."""

    upstream: str | None = None
    policy: str | None = None
    older_than: str | None = None
    state: str | None = None

    def filter(self) -> queuedmail.Filter:
        older = running.duration("--older-than", self.older_than)
        if self.state is not None and self.state not in queuedmail.STATES:
            raise running.Failure(f"--state: {self.state!r} is none of "
                                  f"{', '.join(queuedmail.STATES)}", running.USAGE)
        return queuedmail.Filter(
            upstream=running.key("--upstream", self.upstream),
            policy=running.key("--policy", self.policy),
            received_before=None if older is None else running.now() - older,
            state=self.state)


class Resumed(msgspec.Struct, frozen=True, kw_only=True):
    upstream: str
    resumed: bool


def _ids(texts: Sequence[str], every: bool, where: queuedmail.Filter
         ) -> identifiers.Ids | None:
    """The IDs, or None for every mail the filters keep; a bulk action needs IDs, a
    filter or ``--all``."""
    if every and texts:
        raise running.Failure("give IDs or --all, not both", running.USAGE)
    if not texts and not every and not where.narrows:
        raise running.Failure("give the IDs of queued mail, a filter (--upstream, --policy, "
                              "--older-than, --state) or --all", running.USAGE)
    return running.ids(list(texts)) if texts else None


def _choose(queue: queueing.Queue, ids: identifiers.Ids | None, where: queuedmail.Filter
            ) -> list[queueing.Queued]:
    """The queued mail named (all for None) that passes the filters, in stream order."""
    found = queue.found
    if ids is not None:
        by_seq = queue.by_seq()
        items, unknown = identifiers.pick([q.item for q in found], ids)
        if unknown:
            raise running.Failure(f"no queued mail with id {', '.join(unknown)}")
        found = [by_seq[item.seq] for item in items]
    return [q for q in found if queuedmail.keep(q.item, where)]


def _report(rows: Sequence[queuedmail.Action], verb: str, *, as_json: bool) -> None:
    if as_json:
        running.emit_json(list(rows))
    else:
        running.show(tables.queue_actions(rows, verb))


def list_(cfg: settings_mod.Settings, where: Where, *, as_json: bool) -> None:
    async def work() -> None:
        chosen = where.filter()
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            queue = await queueing.read(conn, now, upstream=chosen.upstream)
        items = queuedmail.select([q.item for q in queue.found], chosen)
        if as_json:
            running.emit_json(items)
        else:
            running.show(tables.queue(items, now))
        if queue.unreadable:
            running.note(f"note: {queue.unreadable} message(s) on MAIL could not be read")

    running.run(work)


def show(cfg: settings_mod.Settings, mail_id: str, *, raw: bool, as_json: bool) -> None:
    async def work() -> None:
        ids = running.ids([mail_id])
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            queue = await queueing.read(conn, now)
            found = _choose(queue, ids, queuedmail.Filter())
            if raw:
                try:
                    data = await mailstore.body(conn, found[0].envelope)
                except mailstore.BodyMissing as exc:
                    raise running.Failure(str(exc)) from None
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
                return
        if as_json:
            running.emit_json([q.item for q in found] if len(found) > 1 else found[0].item)
            return
        for queued in found:
            running.show(tables.queued_mail(queued.item, queued.envelope, now))

    running.run(work)


def suspend(cfg: settings_mod.Settings, upstream: str, *, for_: str | None, reason: str,
            as_json: bool) -> None:
    async def work() -> None:
        key = running.key("upstream", upstream)
        assert key is not None
        length = running.duration("--for", for_)
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            await _check_upstream(conn, key, "upstream")
            item = await queueing.suspend(conn, key, until=None if length is None else
                                          now + length, reason=reason, now=now)
        if as_json:
            running.emit_json(item)
        else:
            running.show(tables.suspensions([item]))

    running.run(work)


def resume(cfg: settings_mod.Settings, upstream: str, *, as_json: bool) -> None:
    async def work() -> None:
        key = running.key("upstream", upstream)
        assert key is not None
        async with running.connect(cfg.nats) as conn:
            if not await queueing.resume(conn, key, running.now()):
                raise running.Failure(f"upstream {key} is not suspended")
        if as_json:
            running.emit_json(Resumed(upstream=key, resumed=True))
        else:
            running.note(f"resumed {key}")

    running.run(work)


def hold(cfg: settings_mod.Settings, texts: Sequence[str], *, every: bool, where: Where,
         reason: str, release: bool, as_json: bool) -> None:
    async def work() -> None:
        chosen_filter = where.filter()
        ids = _ids(texts, every, chosen_filter)
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            queue = await queueing.read(conn, now, upstream=chosen_filter.upstream)
            chosen = _choose(queue, ids, chosen_filter)
            label = "releasing" if release else "holding"
            with running.progress(len(chosen), label) as advance:
                if release:
                    rows = await queueing.release(conn, queue, chosen, now=now,
                                                  advance=advance)
                else:
                    rows = await queueing.hold(conn, queue, chosen, reason=reason, now=now,
                                               advance=advance)
        _report(rows, "released" if release else "held", as_json=as_json)

    running.run(work)


def move(cfg: settings_mod.Settings, texts: Sequence[str], *, every: bool, where: Where,
         to_upstream: str | None, as_json: bool) -> None:
    """``queue move`` (to ``to_upstream``) and ``queue retry`` (None)."""
    async def work() -> None:
        chosen_filter = where.filter()
        ids = _ids(texts, every, chosen_filter)
        target = running.key("--to-upstream", to_upstream)
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            if target is not None:
                await _check_upstream(conn, target, "--to-upstream")
            queue = await queueing.read(conn, now)
            chosen = _choose(queue, ids, chosen_filter)
            finished = await queueing.finish_interrupted(conn, queue, now)
            done = {row.seq for row in finished}
            chosen = [q for q in chosen if q.item.seq not in done]
            label = "retrying" if target is None else "moving"
            with running.progress(len(chosen), label) as advance:
                rows = await queueing.move(conn, chosen, to_upstream=target, now=now,
                                           advance=advance)
        if finished:
            running.note(f"note: finished {len(finished)} interrupted move(s)")
        _report([*finished, *rows], "retried" if target is None else "moved",
                as_json=as_json)

    running.run(work)


def purge(cfg: settings_mod.Settings, texts: Sequence[str], *, every: bool, where: Where,
          yes: bool, as_json: bool) -> None:
    async def work() -> None:
        chosen_filter = where.filter()
        ids = _ids(texts, every, chosen_filter)
        now = running.now()
        async with running.connect(cfg.nats) as conn:
            queue = await queueing.read(conn, now, upstream=chosen_filter.upstream)
            chosen = _choose(queue, ids, chosen_filter)
            if not chosen:
                running.note("nothing to purge")
                return
            if not yes and (ids is None or len(chosen) > 1):
                await _confirm(f"purge {len(chosen)} queued mails for good?")
            with running.progress(len(chosen), "purging") as advance:
                rows = await queueing.purge(conn, queue, chosen, now=now, advance=advance)
        _report(rows, "purged", as_json=as_json)

    running.run(work)


async def _confirm(question: str) -> None:
    """Ask on a terminal; else read the answer from stdin without asking (a script may
    pipe ``y``). Anything but yes stops the command."""
    def ask() -> bool:
        if sys.stdin.isatty():
            try:
                return typer.confirm(question, err=True)
            except typer.Abort:
                return False
        return sys.stdin.readline().strip().lower() in ("y", "yes")

    if not await asyncio.to_thread(ask):
        raise running.Failure(f"not confirmed: {question.rstrip('?')}? Nothing purged "
                              "(answer y, or add --yes)")


async def _check_upstream(conn: bus.Conn, upstream: str, option: str) -> None:
    """An upstream the dispatchers know (or the catcher), so no mail is sent where it
    would only wait."""
    snap, _ = await inspecting.policy_snapshot(conn)
    if upstream == names.CATCHER or snap is None or upstream in snap.upstreams:
        return
    raise running.Failure(f"{option}: {upstream} is not in the policy snapshot "
                          f"(known: {', '.join(sorted(snap.upstreams)) or 'none'})")

