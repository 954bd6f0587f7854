"""The operator's commands of ``podpost``: ``caught``, ``dlq``, ``queue``, ``trace`` and
``status``. Each is thin: it parses its options and calls `podpost.commands`, which asks
`admin` and prints `podpost.tables`. `podpost.cli` adds these to the one command."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from podpost.cliopts import Json, NatsUrl, load_settings
from runtime import settings as settings_mod

# --- the operator's commands: bodies in podpost.commands -----------------------------------

Ids = Annotated[list[str] | None, typer.Argument(
    help="DEAD stream sequences (the id column) or mail ids.", show_default=False)]
Every = Annotated[bool, typer.Option("--all", help="Every dead letter that passes the filters.")]
UpstreamKey = Annotated[str | None,
                        typer.Option("--upstream", help="Only this upstream (ns/name).")]
PolicyKey = Annotated[str | None, typer.Option("--policy", help="Only this policy (ns/name).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would be done; do nothing.")]

caught_app = typer.Typer(help="Mail kept by the catcher sink.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, show, replay, purge.", no_args_is_help=True)


def _nats(nats_url: str | None) -> settings_mod.Settings:
    return load_settings({"nats": {"url": nats_url}})


@caught_app.command("list")
def caught_list(nats_url: NatsUrl = None, json_: Json = False) -> None:
    """List the mail the catcher kept, oldest first."""
    from podpost.commands import caught

    caught.list_(_nats(nats_url), as_json=json_)


@caught_app.command("show")
def caught_show(
    mail: Annotated[str, typer.Argument(help="CAUGHT stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one caught mail: envelope, headers and text."""
    from podpost.commands import caught

    caught.show(_nats(nats_url), mail, raw=raw, as_json=json_)


@dlq_app.command("list")
def dlq_list(
    nats_url: NatsUrl = None, upstream: UpstreamKey = None, policy: PolicyKey = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only dead letters younger than this (90s, 5m, 2h, 7d).")] = None,
    json_: Json = False,
) -> None:
    """List dead letters, oldest first."""
    from podpost.commands import dlq

    dlq.list_(_nats(nats_url), dlq.Where(upstream=upstream, policy=policy, since=since),
              as_json=json_)


@dlq_app.command("show")
def dlq_show(
    dead: Annotated[str, typer.Argument(help="DEAD stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one dead letter: why it died, its attempts and its envelope."""
    from podpost.commands import dlq

    dlq.show(_nats(nats_url), dead, raw=raw, as_json=json_)


REPLAY_HELP = "\n\n".join([
    "Queue dead letters again, then remove them from the dead-letter queue.",
    "Each replay is published with Nats-Msg-Id <mail id>.replay.<id>, so within the MAIL "
    "stream's duplicate window (an hour) a dead letter is queued once, however often it "
    "is replayed. A replayed dead letter is moved, not copied: it leaves `dlq list`; a "
    "replay that fails again comes back as a new dead letter; `podpost trace` shows the "
    "replay. Replaying an id that was replayed already is only noted.",
    "A body kept in the object store is copied for the replay, and the original is "
    "deleted once nothing refers to it.",
])
PURGE_HELP = ("Delete dead letters for good, with their bodies in the object store (a body "
              "still used by another dead letter or by queued mail is kept).")


@dlq_app.command("replay", help=REPLAY_HELP)
def dlq_replay(
    ids: Ids = None, every: Every = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None,
    to_upstream: Annotated[str | None, typer.Option(
        "--to-upstream", help="Send to this upstream (ns/name) instead.")] = None,
    dry_run: DryRun = False, json_: Json = False,
) -> None:
    from podpost.commands import dlq

    dlq.replay(_nats(nats_url), ids or [], every=every,
               where=dlq.Where(upstream=upstream, policy=policy), to_upstream=to_upstream,
               dry_run=dry_run, as_json=json_)


@dlq_app.command("purge", help=PURGE_HELP)
def dlq_purge(
    ids: Ids = None, every: Every = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="Only dead letters older than this (2h, 7d).")] = None,
    dry_run: DryRun = False, json_: Json = False,
) -> None:
    from podpost.commands import dlq

    dlq.purge(_nats(nats_url), ids or [], every=every,
              where=dlq.Where(upstream=upstream, policy=policy, older_than=older_than),
              dry_run=dry_run, as_json=json_)


# --- the live queue: podpost.commands.queue, admin.queueing ----------------------------------

queue_app = typer.Typer(help="Mail waiting for delivery: list, show, retry now, hold, "
                        "suspend an upstream, move, purge.", no_args_is_help=True)
QueueIds = Annotated[list[str] | None, typer.Argument(
    help="MAIL stream sequences (the id column) or mail ids.", show_default=False)]
QueueAll = Annotated[bool, typer.Option("--all", help="Every queued mail the filters keep.")]
OlderThan = Annotated[str | None, typer.Option(
    "--older-than", help="Only mail received longer ago than this (90s, 2h, 1d).")]
State = Annotated[str | None, typer.Option(
    "--state", help="Only mail in this state: waiting, deferred or held.")]


def _where(upstream: str | None, policy: str | None, older_than: str | None,
           state: str | None) -> Any:
    from podpost.commands import queue

    return queue.Where(upstream=upstream, policy=policy, older_than=older_than, state=state)


@queue_app.command("list")
def queue_list(
    nats_url: NatsUrl = None, upstream: UpstreamKey = None, policy: PolicyKey = None,
    older_than: OlderThan = None, state: State = None, json_: Json = False,
) -> None:
    """List queued mail in stream order: state, attempts, last reply, next attempt."""
    from podpost.commands import queue

    queue.list_(_nats(nats_url), _where(upstream, policy, older_than, state), as_json=json_)


@queue_app.command("show")
def queue_show(
    mail: Annotated[str, typer.Argument(help="MAIL stream sequence (the id column) or mail id.")],
    nats_url: NatsUrl = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the stored message as is.")] = False,
    json_: Json = False,
) -> None:
    """Show one queued mail: its envelope, state and attempts."""
    from podpost.commands import queue

    queue.show(_nats(nats_url), mail, raw=raw, as_json=json_)


@queue_app.command("retry")
def queue_retry(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    json_: Json = False,
) -> None:
    """Make deferred mail due now (a copy is queued and the deferred original removed;
    its attempt count goes on)."""
    from podpost.commands import queue

    queue.move(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, None), to_upstream=None,
               as_json=json_)


@queue_app.command("hold")
def queue_hold(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "",
    json_: Json = False,
) -> None:
    """Hold mail: no dispatcher attempts it until it is released."""
    from podpost.commands import queue

    queue.hold(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, state), reason=reason,
               release=False, as_json=json_)


@queue_app.command("release")
def queue_release(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    json_: Json = False,
) -> None:
    """Release held mail: it is attempted again within seconds."""
    from podpost.commands import queue

    queue.hold(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, None), reason="", release=True,
               as_json=json_)


@queue_app.command("suspend")
def queue_suspend(
    upstream: Annotated[str, typer.Argument(help="The upstream (ns/name).")],
    nats_url: NatsUrl = None,
    for_: Annotated[str | None, typer.Option(
        "--for", help="Resume by itself after this long (30m, 2h); default: until resumed.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the record.")] = "",
    json_: Json = False,
) -> None:
    """Stop every dispatcher replica attempting an upstream; its mail waits (no attempt
    is counted, nothing is dead-lettered for it)."""
    from podpost.commands import queue

    queue.suspend(_nats(nats_url), upstream, for_=for_, reason=reason, as_json=json_)


@queue_app.command("resume")
def queue_resume(
    upstream: Annotated[str, typer.Argument(help="The upstream (ns/name).")],
    nats_url: NatsUrl = None, json_: Json = False,
) -> None:
    """End an upstream's suspension: its mail is attempted again within seconds."""
    from podpost.commands import queue

    queue.resume(_nats(nats_url), upstream, as_json=json_)


@queue_app.command("move")
def queue_move(
    to_upstream: Annotated[str, typer.Option(
        "--to-upstream", help="Send to this upstream (ns/name) instead.")],
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None, json_: Json = False,
) -> None:
    """Move queued mail to another upstream: the copy is stored before the original is
    removed; safe to interrupt and run again."""
    from podpost.commands import queue

    queue.move(_nats(nats_url), ids or [], every=every,
               where=_where(upstream, policy, older_than, state), to_upstream=to_upstream,
               as_json=json_)


@queue_app.command("purge")
def queue_purge(
    ids: QueueIds = None, every: QueueAll = False, nats_url: NatsUrl = None,
    upstream: UpstreamKey = None, policy: PolicyKey = None, older_than: OlderThan = None,
    state: State = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before a bulk purge.")
                   ] = False,
    json_: Json = False,
) -> None:
    """Delete queued mail for good (asks first when more than one mail is chosen)."""
    from podpost.commands import queue

    queue.purge(_nats(nats_url), ids or [], every=every,
                where=_where(upstream, policy, older_than, state), yes=yes, as_json=json_)


def trace(
    mail: Annotated[str, typer.Argument(help="The mail id (from `250 queued as <id>`).")],
    nats_url: NatsUrl = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="Only events younger than this (2h, 1d).")] = None,
    json_: Json = False,
) -> None:
    """A mail's history: accepted, attempted, deferred, delivered, dead, replayed."""
    from podpost.commands import trace as trace_cmd

    trace_cmd.trace(_nats(nats_url), mail, since=since, as_json=json_)


def status(nats_url: NatsUrl = None, json_: Json = False) -> None:
    """Per upstream and policy: queued, in flight, deferred, dead; the snapshot's age."""
    from podpost.commands import status as status_cmd

    status_cmd.status(_nats(nats_url), as_json=json_)

