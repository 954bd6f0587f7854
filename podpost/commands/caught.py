"""``podpost caught list|show``: the mail the catcher sink kept, on the CAUGHT stream.

An ID is a CAUGHT stream sequence (the ``id`` column) or a mail id."""

from __future__ import annotations

import sys

import msgspec

from admin import inspecting
from admin.rules import caughtmail
from podpost import tables
from podpost.commands import running
from runtime import bus, mailstore
from runtime import settings as settings_mod


class Shown(msgspec.Struct, frozen=True, kw_only=True):
    """``caught show --json``: the row of ``caught list`` and the parsed message."""

    item: caughtmail.CaughtItem
    message: caughtmail.MessageView


def list_(cfg: settings_mod.Settings, *, as_json: bool) -> None:
    async def work() -> None:
        async with running.connect(cfg.nats) as conn:
            read = await inspecting.caught(conn)
        items = [kept.item for kept in read.found]
        if as_json:
            running.emit_json(items)
        else:
            running.show(tables.caught_list(items, running.now()))
        if read.unreadable:
            running.note(f"note: {read.unreadable} message(s) on the stream could not be read")

    running.run(work)


def show(cfg: settings_mod.Settings, mail: str, *, raw: bool, as_json: bool) -> None:
    async def work() -> None:
        ids = running.ids([mail])
        async with running.connect(cfg.nats) as conn:
            found, unknown = await inspecting.find_caught(conn, ids)
            if unknown:
                raise running.Failure(f"no caught mail with id {mail}")
            kept = found[-1]  # a mail id caught twice (replayed): the latest
            data = await _body(conn, kept)
        if raw:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        message = caughtmail.read_message(data)
        if as_json:
            running.emit_json(Shown(item=kept.item, message=message))
        else:
            running.show(tables.caught_mail(kept.item, message))

    running.run(work)


async def _body(conn: bus.Conn, kept: inspecting.CaughtMail) -> bytes:
    try:
        return await mailstore.body(conn, kept.caught.envelope)
    except mailstore.BodyMissing as exc:
        raise running.Failure(str(exc)) from None
