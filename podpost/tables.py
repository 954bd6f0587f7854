"""Rich tables for people, built from the Structs the operator commands report.

Pure: data in, a renderable out; no console, no clock (``now`` is passed in). Every cell
that holds data from the bus is a `Text`, so a reply like ``550 [no such user]`` is shown
as written and never read as rich markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from admin.rules import caughtmail, deadletters, queuedmail, statusreport
from runtime import requeueing
from schemas import durations, events, mail

NONE = "-"


def when(at: datetime | None) -> str:
    """A time as UTC, to the second: ``2026-11-23 02:40:07Z``."""
    if at is None:
        return NONE
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(now: datetime, at: datetime | None) -> str:
    """How long ago, in the two largest units: ``3h12m``."""
    if at is None:
        return NONE
    seconds = (now - at).total_seconds()
    if seconds < 0:
        return "in " + _short(-seconds)
    return _short(seconds)


def _short(seconds: float) -> str:
    text = durations.format_seconds(seconds)
    units = [i for i, ch in enumerate(text) if ch.isalpha()]
    return text if len(units) <= 2 else text[: units[1] + 1]


def _cell(value: object) -> Text:
    return Text(NONE if value is None or value == "" else str(value))


def _rcpts(rcpt_to: Sequence[str]) -> Text:
    if not rcpt_to:
        return Text(NONE)
    more = f" +{len(rcpt_to) - 1}" if len(rcpt_to) > 1 else ""
    return Text(rcpt_to[0] + more)


def dead_letters(items: Sequence[deadletters.DeadItem], now: datetime) -> Table:
    table = Table(title=f"{len(items)} dead letter{'' if len(items) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "dead", "upstream", "policy", "fate", "code", "tries",
                 "from", "to", "reason"):
        table.add_column(name, justify="right" if name in ("id", "code", "tries") else "left",
                         overflow="fold")
    for item in items:
        table.add_row(
            _cell(item.seq), _cell(item.mail_id), Text(ago(now, item.dead_at) + " ago"),
            _cell(item.upstream), _cell(item.policy), _cell(item.fate), _cell(item.code),
            _cell(item.attempts), _cell(item.mail_from), _rcpts(item.rcpt_to),
            _cell(item.reason or item.reply),
        )
    return table


def _fields(title: str, rows: Sequence[tuple[str, object]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None,
                  padding=(0, 2, 0, 0))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else _cell(value))
    return table


def _body_location(env: mail.Envelope) -> str:
    if env.body is not None:
        return f"inline, {len(env.body)} bytes"
    if env.body_ref is not None:
        return f"object store {env.body_ref.name!r}, {env.body_ref.size} bytes"
    return "none"


def dead_letter(item: deadletters.DeadItem, letter: mail.DeadLetter, now: datetime) -> Table:
    """Everything about one dead letter, one field per line."""
    env = letter.envelope
    return _fields(f"dead letter {item.seq}", [
        ("mail id", env.id),
        ("fate", letter.fate),
        ("reason", letter.reason),
        ("code", letter.code),
        ("reply", letter.reply),
        ("attempts", letter.attempts),
        ("first attempt", when(letter.first_attempt_at)),
        ("last attempt", when(letter.last_attempt_at)),
        ("dead at", f"{when(letter.dead_at)} ({ago(now, letter.dead_at)} ago)"),
        ("upstream", env.upstream),
        ("policy", env.policy),
        ("from", env.mail_from),
        ("to", ", ".join(env.rcpt_to)),
        ("received", when(env.received_at)),
        ("client", " ".join(filter(None, [env.client_ip, env.source]))),
        ("helo", env.helo),
        ("size", f"{env.size} bytes"),
        ("body", _body_location(env)),
        ("replay of", env.replay_of),
    ])


def caught_list(items: Sequence[caughtmail.CaughtItem], now: datetime) -> Table:
    table = Table(title=f"{len(items)} caught mail{'' if len(items) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "caught", "policy", "from", "to", "subject", "size"):
        table.add_column(name, justify="right" if name in ("id", "size") else "left",
                         overflow="fold")
    for item in items:
        table.add_row(
            _cell(item.seq), _cell(item.mail_id), Text(ago(now, item.caught_at) + " ago"),
            _cell(item.policy), _cell(item.mail_from), _rcpts(item.rcpt_to),
            _cell(item.subject), _cell(item.size),
        )
    return table


def caught_mail(item: caughtmail.CaughtItem, message: caughtmail.MessageView) -> RenderableType:
    """The envelope, the message headers, then the text body as written."""
    envelope = _fields(f"caught mail {item.seq}", [
        ("mail id", item.mail_id),
        ("policy", item.policy),
        ("caught at", when(item.caught_at)),
        ("from", item.mail_from),
        ("to", ", ".join(item.rcpt_to)),
        ("size", f"{item.size} bytes"),
    ])
    headers = Table(title="headers", title_justify="left", show_header=False, box=None,
                    padding=(0, 2, 0, 0))
    headers.add_column("name", style="bold", no_wrap=True)
    headers.add_column("value", overflow="fold")
    for name, value in message.headers:
        headers.add_row(Text(name + ":"), Text(value))
    return Group(envelope, Text(""), headers, Text(""), Text(message.text))


def _detail(event: events.AnyEvent) -> str:
    match event:
        case events.Accepted():
            extra = ", duplicate" if event.duplicate else ""
            return f"{event.rcpt_count} rcpt, {event.size} bytes from {event.client_ip}{extra}"
        case events.Rejected():
            return f"stage {event.stage}, client {event.client_ip}"
        case events.Attempted():
            return f"attempt {event.attempt}, {event.rcpt_count} rcpt"
        case events.Deferred():
            return (f"attempt {event.attempt}, retry in "
                    f"{durations.format_seconds(event.retry_in_s)}; {', '.join(event.rcpt_to)}")
        case events.Delivered():
            return f"attempt {event.attempt}; {', '.join(event.rcpt_to)}"
        case events.Dead():
            return f"fate {event.fate}; {', '.join(event.rcpt_to)}"
        case events.Replayed():
            to = f" to {event.to_upstream}" if event.to_upstream else ""
            return f"dead letter {event.dead_seq}{to}"
        case events.Purged():
            return f"dead letter {event.dead_seq}"
        case events.Held():
            return event.reason
        case events.Suspended():
            until = f"until {when(event.until)}" if event.until else "until resumed"
            return f"{until}{'; ' + event.reason if event.reason else ''}"
        case events.Moved():
            if event.retry:
                return f"retry now: message {event.from_seq} -> {event.to_seq}"
            return f"to {event.to_upstream}: message {event.from_seq} -> {event.to_seq}"
        case events.Removed():
            return f"message {event.seq} purged from the queue"
    return ""


def trace(mail_id: str, history: Sequence[events.AnyEvent]) -> Table:
    """A mail's events, oldest first (as `inspecting.history` returns them)."""
    table = Table(title=f"mail {mail_id}: {len(history)} events", title_justify="left")
    for name in ("time", "kind", "upstream", "policy", "code", "reply", "detail"):
        table.add_column(name, overflow="fold", justify="right" if name == "code" else "left")
    for event in history:
        code = getattr(event, "code", None)
        reply = getattr(event, "reply", "")
        table.add_row(
            Text(when(event.at)), Text(events.kind_of(event), style="bold"),
            _cell(event.upstream), _cell(event.policy), _cell(code), _cell(reply),
            Text(_detail(event)),
        )
    return table


def _rate(rate: statusreport.RateUsage | None) -> str:
    if rate is None:
        return NONE
    used = NONE if rate.used is None else str(rate.used)
    return f"{used}/{rate.maximum} per {durations.format_seconds(rate.period_s)}"


_PERIOD_WORD = {"minute": "this minute", "hour": "this hour", "day": "today",
                "month": "this month"}


def _quotas(quotas: Sequence[statusreport.QuotaUsage]) -> str:
    """``112/300 today``; with several logins, each one's, named."""
    logins = {q.credentials for q in quotas}
    parts = []
    for q in quotas:
        used = NONE if q.used is None else str(q.used)
        unit = "" if q.count == "messages" else " rcpts"
        who = f"{q.credentials or '(no login)'}: " if len(logins) > 1 else ""
        parts.append(f"{who}{used}/{q.maximum}{unit} {_PERIOD_WORD.get(q.period, q.period)}")
    return ", ".join(parts)


def status(report: statusreport.StatusReport) -> Table:
    """One line per upstream, its policies indented underneath."""
    snap = report.snapshot
    if snap is None:
        caption = "no policy snapshot published yet"
    else:
        caption = (f"policy snapshot revision {snap.revision}, "
                   f"{_short(snap.age_s)} old ({when(snap.generated_at)})")
    table = Table(title="podpost status", title_justify="left", caption=caption,
                  caption_justify="left")
    table.add_column("upstream / policy", overflow="fold")
    for name in ("queued", "in flight", "deferred", "dead"):
        table.add_column(name, justify="right")
    table.add_column("rate limit / quota", justify="right")
    table.add_column("oldest", justify="right")
    for up in report.upstreams:
        label = Text(up.upstream, style="bold")
        if not up.known:
            label.append(" (not in snapshot)", style="yellow")
        if up.suspended:
            until = f" until {when(up.suspended_until)}" if up.suspended_until else ""
            label.append(f" (suspended{until})", style="red")
        table.add_row(label, str(up.queued), str(up.in_flight), str(up.deferred),
                      str(up.dead), _quotas(up.quotas),
                      NONE if up.oldest_age_s is None else _short(up.oldest_age_s))
        for pol in up.policies:
            table.add_row(
                Text("  " + pol.policy), str(pol.queued),
                NONE if pol.in_flight is None else str(pol.in_flight), str(pol.deferred),
                NONE if pol.dead is None else str(pol.dead), _rate(pol.ratelimit), "",
            )
    if not report.upstreams:
        table.add_row(Text("(nothing known yet)", style="dim"), "", "", "", "", "", "")
    return table


def replays(rows: Sequence[requeueing.Replay], *, dry_run: bool) -> Table:
    verb = "would replay" if dry_run else "replayed"
    table = Table(title=f"{verb} {len(rows)} dead letter{'' if len(rows) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "policy", "upstream", "to", "outcome"):
        table.add_column(name, overflow="fold", justify="right" if name == "id" else "left")
    for row in rows:
        route = row.to_upstream if row.to_upstream == row.from_upstream else (
            f"{row.from_upstream} -> {row.to_upstream}")
        table.add_row(_cell(row.seq), _cell(row.mail_id), _cell(row.policy), Text(route),
                      _rcpts(row.rcpt_to), _cell(row.outcome))
    return table


def purges(rows: Sequence[requeueing.Purge], *, dry_run: bool) -> Table:
    verb = "would purge" if dry_run else "purged"
    table = Table(title=f"{verb} {len(rows)} dead letter{'' if len(rows) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "outcome", "body"):
        table.add_column(name, overflow="fold", justify="right" if name == "id" else "left")
    for row in rows:
        table.add_row(_cell(row.seq), _cell(row.mail_id), _cell(row.outcome), _cell(row.body))
    return table


# --- the live queue (``podpost queue``) -------------------------------------------------------


def _state(item: queuedmail.QueuedItem) -> Text:
    if item.state != queuedmail.HELD:
        return Text(item.state)
    return Text(f"held ({item.held_by})", style="yellow")


def queue(items: Sequence[queuedmail.QueuedItem], now: datetime) -> Table:
    table = Table(title=f"{len(items)} queued mail{'' if len(items) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "policy", "upstream", "from", "to", "size", "age", "state",
                 "tries", "last reply", "next attempt"):
        table.add_column(name, overflow="fold",
                         justify="right" if name in ("id", "size", "tries") else "left")
    for item in items:
        reply = " ".join(str(x) for x in (item.last_code, item.last_reply) if x)
        next_at = item.next_attempt_at
        table.add_row(
            _cell(item.seq), _cell(item.mail_id), _cell(item.policy), _cell(item.upstream),
            _cell(item.mail_from), _rcpts(item.rcpt_to), _cell(item.size),
            Text(_short(item.age_s)), _state(item), _cell(item.attempts), _cell(reply),
            Text(NONE if next_at is None else f"{when(next_at)} ({ago(now, next_at)})"),
        )
    return table


def queued_mail(item: queuedmail.QueuedItem, env: mail.Envelope, now: datetime) -> Table:
    """Everything about one queued mail, one field per line."""
    return _fields(f"queued mail {item.seq}", [
        ("mail id", item.mail_id),
        ("state", _state(item)),
        ("held", item.held_reason),
        ("upstream", item.upstream),
        ("policy", item.policy),
        ("from", item.mail_from),
        ("to", ", ".join(item.rcpt_to)),
        ("received", f"{when(item.received_at)} ({_short(item.age_s)} ago)"),
        ("attempts", item.attempts),
        ("last attempt", when(item.last_attempt_at)),
        ("last reply", " ".join(str(x) for x in (item.last_code, item.last_reply) if x)),
        ("next attempt", when(item.next_attempt_at)),
        ("client", " ".join(filter(None, [env.client_ip, env.source]))),
        ("helo", env.helo),
        ("size", f"{env.size} bytes"),
        ("body", _body_location(env)),
        ("replay of", env.replay_of),
        ("moved from", env.moved_from),
    ])


def queue_actions(rows: Sequence[queuedmail.Action], verb: str) -> Table:
    table = Table(title=f"{verb} {len(rows)} mail{'' if len(rows) == 1 else 's'}",
                  title_justify="left")
    for name in ("id", "mail id", "policy", "upstream", "outcome", "new id"):
        table.add_column(name, overflow="fold", justify="right" if "id" == name else "left")
    for row in rows:
        route = row.upstream if row.to_upstream in (None, row.upstream) else (
            f"{row.upstream} -> {row.to_upstream}")
        table.add_row(_cell(row.seq), _cell(row.mail_id), _cell(row.policy), Text(route),
                      _cell(row.outcome), _cell(row.to_seq))
    return table


def suspensions(items: Sequence[queuedmail.SuspensionItem]) -> Table:
    table = Table(title=f"{len(items)} suspended upstream{'' if len(items) == 1 else 's'}",
                  title_justify="left")
    for name in ("upstream", "since", "until", "reason"):
        table.add_column(name, overflow="fold")
    for item in items:
        until = "resumed by hand" if item.until is None else when(item.until)
        if not item.active:
            until += " (over)"
        table.add_row(_cell(item.upstream), Text(when(item.since)), Text(until),
                      _cell(item.reason))
    return table
