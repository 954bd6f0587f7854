"""``podpost trace ID``: one mail's history from the EVENTS stream (accepted, attempted,
deferred, delivered, dead, replayed, purged), oldest first."""

from __future__ import annotations

from admin import inspecting
from podpost import tables
from podpost.commands import running
from runtime import settings as settings_mod


def trace(cfg: settings_mod.Settings, mail_id: str, *, since: str | None, as_json: bool
          ) -> None:
    async def work() -> None:
        text = mail_id.strip()
        if not text or not text.isprintable() or " " in text:
            raise running.Failure(f"not a mail id: {mail_id!r}", running.USAGE)
        window = running.duration("--since", since)
        start = None if window is None else running.now() - window
        async with running.connect(cfg.nats) as conn:
            history = await inspecting.history(conn, text, since=start)
        if not history:
            raise running.Failure(f"no events for mail {text} (events are kept 7 days)")
        if as_json:
            running.emit_json(history)
        else:
            running.show(tables.trace(text, history))

    running.run(work)
