"""``podpost queue`` through its real entry point, against a real nats-server, real aiosmtpd
upstreams and two real ``podpost dispatcher`` processes: a suspension honoured by both
replicas, hold and release, retry-now of a deferred mail, purge with its question, a move
SIGKILLed midway and run again, ``--json`` and one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from admin import queueing
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import events, names, snapshot
from tests.support import cli, processes
from tests.support import dispatching as d

UP = "mail/up"
OTHER = "mail/other"
POLICY = "apps/web"
SLOW = snapshot.RetryOverride(min_delay_s=3600.0, max_delay_s=3600.0, max_age_s=86400.0)
"""A deferred mail waits an hour: only a retry-now can deliver it within the test."""


@dataclass
class Switch(upstream_mod.Handler):
    """An upstream that answers every recipient 451 while ``broken``."""

    broken: bool = False

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.broken:
            return "451 4.7.1 try again later (test upstream is broken)"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def two_dispatchers(nats_url: str, logs: Path
                    ) -> contextlib.AbstractAsyncContextManager[list[Path]]:
    """Two ``podpost dispatcher`` processes with info-level JSON logs."""
    return processes.dispatchers(2, nats_url, logs, PODPOST_LOG__LEVEL="info",
                                 PODPOST_DISPATCHER__ACK_WAIT_S="10",
                                 PODPOST_DISPATCHER__HOLD_DELAY_S="1")


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def held_in(path: Path, reason: str, mail_id: str | None = None) -> bool:
    """The dispatcher of this log held a mail (``mail_id``, or any) for ``reason``."""
    return any(line.get("event") == "dispatcher.delivery_held"
               and reason in line.get("reason", "")
               and (mail_id is None or line.get("mail_id") == mail_id)
               for line in log_lines(path))


async def queue_json(url: str, *args: str) -> Any:
    return (await cli.podpost(url, "queue", *args, "--json")).json()


async def test_a_suspension_is_honoured_by_both_replicas_and_a_held_mail_waits_for_release(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """With ``mail/up`` suspended, both dispatcher processes hold its mail (no attempt,
    nothing sent, nothing dead-lettered although it outlives its max queue age); list and
    status show it; after ``resume`` everything is delivered but the one mail held by
    id, which goes only when released; trace shows the suspension and the hold."""
    up = await upstream_mod.start()
    url = nats_settings.url
    try:
        policy = d.policy_view(POLICY, UP)  # FAST: max queue age 3 s
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, up, max_connections=1)])
        async with two_dispatchers(url, tmp_path) as logs, d.recording_events(conn) as seen:
            await d.queue(conn, d.envelope(policy, ["probe@example.org"]))
            await up.handler.wait_for(1)  # the dispatchers are up

            suspended = await queue_json(url, "suspend", UP, "--reason", "provider blocked")
            assert (suspended["upstream"], suspended["reason"], suspended["until"]) == (
                UP, "provider blocked", None)
            envs = [d.envelope(policy, [f"u{i}@example.org"]) for i in range(20)]
            for env in envs:
                await d.queue(conn, env)
            await d.eventually(lambda: all(held_in(p, "upstream suspended") for p in logs),
                               timeout_s=30)
            assert len(up.handler.messages) == 1

            listed = await queue_json(url, "list", "--state", "held")
            assert sorted(row["mail_id"] for row in listed) == sorted(e.id for e in envs)
            assert {(row["held_by"], row["held_reason"], row["attempts"]) for row in listed
                    } == {("suspended", "provider blocked", 0)}
            status = (await cli.podpost(url, "status", "--json")).json()
            (row,) = [r for r in status["upstreams"] if r["upstream"] == UP]
            assert row["suspended"] and row["suspended_reason"] == "provider blocked"
            assert row["queued"] == 20 and row["oldest_at"] is not None
            table = await cli.podpost(url, "status")
            assert "(suspended)" in table.out

            kept = envs[0]
            held = await queue_json(url, "hold", kept.id, "--reason", "looks odd")
            assert [(r["mail_id"], r["outcome"]) for r in held] == [(kept.id, "held")]
            await d.eventually(lambda: _older_than(conn, 3.5))  # past the max queue age

            assert (await cli.podpost(url, "queue", "resume", UP)).code == 0
            await up.handler.wait_for(20)
            await d.eventually(lambda: any(held_in(p, "held: looks odd", kept.id)
                                           for p in logs), timeout_s=20)
            assert kept.id not in {m.rcpt_to[0] for m in up.handler.messages}
            assert [r["state"] for r in await queue_json(url, "list")] == ["held"]

            released = await queue_json(url, "release", kept.id)
            assert [r["outcome"] for r in released] == ["released"]
            await up.handler.wait_for(21)
            await d.eventually(lambda: d.drained(conn))
            assert await d.dead_letters(conn) == []
            assert not d.of_kind(seen, events.Dead)
            trace = (await cli.podpost(url, "trace", kept.id, "--json")).json()
        kinds = [event["kind"] for event in trace]
        for kind in ("suspended", "held", "resumed", "released", "delivered"):
            assert kind in kinds, kinds
        assert kinds.index("held") < kinds.index("resumed") < kinds.index("released")
        assert sorted(m.rcpt_to[0] for m in up.handler.messages) == sorted(
            ["probe@example.org"] + [e.rcpt_to[0] for e in envs])
    finally:
        await up.close()


async def _older_than(conn: bus.Conn, seconds: float) -> bool:
    """Every queued mail was received more than ``seconds`` ago."""
    queue = await queueing.read(conn, datetime.now(UTC))
    return bool(queue.found) and all(q.item.age_s > seconds for q in queue.found)


async def test_retry_now_delivers_a_deferred_mail_at_once_and_purge_asks_first(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """Three mails deferred by a 451 for an hour are listed with their attempt and reply;
    once the upstream is fixed, ``retry ID`` delivers that one at once (its attempt count
    goes on) while the others stay deferred; a bulk ``purge`` refuses without an answer
    or with "n", purges with ``--yes``; errors are one line."""
    switch = Switch(broken=True)
    up = await upstream_mod.start(switch)
    url = nats_settings.url
    try:
        policy = d.policy_view(POLICY, UP, retry=SLOW)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, up)])
        envs = [d.envelope(policy, [f"r{i}@example.org"]) for i in range(3)]
        async with two_dispatchers(url, tmp_path), d.recording_events(conn) as seen:
            for env in envs:
                await d.queue(conn, env)
            await d.eventually(lambda: len(d.of_kind(seen, events.Deferred)) == 3, 30)
            listed = await queue_json(url, "list", "--state", "deferred")
            assert sorted(row["mail_id"] for row in listed) == sorted(e.id for e in envs)
            assert {(row["attempts"], row["last_code"]) for row in listed} == {(1, 451)}
            assert all(row["next_attempt_at"] and "try again" in row["last_reply"]
                       for row in listed)
            shown = await cli.podpost(url, "queue", "show", envs[0].id)
            assert shown.code == 0 and "451" in shown.out and "deferred" in shown.out
            assert (await cli.podpost(url, "queue", "show", envs[0].id, "--raw")
                    ).stdout == d.BODY

            switch.broken = False
            seq = next(row["id"] for row in listed if row["mail_id"] == envs[0].id)
            retried = await queue_json(url, "retry", str(seq))
            assert [(r["mail_id"], r["outcome"]) for r in retried] == [(envs[0].id, "moved")]
            received = await switch.wait_for(1)
            assert received[0].rcpt_to == envs[0].rcpt_to
            await d.eventually(lambda: any(
                isinstance(e, events.Delivered) and e.mail_id == envs[0].id for e in seen))
            delivered = [e for e in d.of_kind(seen, events.Delivered) if e.mail_id == envs[0].id]
            assert delivered[0].attempt == 2  # the record of the deferred original went on

            left = (await queueing.read(conn, datetime.now(UTC))).found
            assert sorted(q.item.mail_id for q in left) == sorted(e.id for e in envs[1:])
            refused = await cli.podpost(url, "queue", "purge", "--state", "deferred")
            assert "not confirmed" in cli.one_line_error(refused)
            said_no = await cli.podpost(url, "queue", "purge", "--all", stdin=b"n\n")
            assert "not confirmed" in said_no.err
            assert await d.queued(conn) == 2
            purged = await queue_json(url, "purge", "--all", "--yes")
            assert sorted(r["outcome"] for r in purged) == ["purged", "purged"]
            assert await d.queued(conn) == 0
            trace = (await cli.podpost(url, "trace", envs[1].id, "--json")).json()
            assert trace[-1]["kind"] == "removed"
            retrace = await cli.podpost(url, "trace", envs[0].id)
            assert "retry now" in retrace.out

            errors = {
                ("queue", "show", "999999"): "no queued mail with id 999999",
                ("queue", "purge"): "give the IDs of queued mail",
                ("queue", "list", "--state", "stuck"): "--state",
                ("queue", "list", "--older-than", "soon"): "--older-than",
                ("queue", "suspend", "mail/nope"): "not in the policy snapshot",
                ("queue", "resume", UP): "is not suspended",
                ("queue", "move", "1", "--to-upstream", "bad key"): "--to-upstream",
            }
            results = await asyncio.gather(*(cli.podpost(url, *args) for args in errors))
            for (args, text), result in zip(errors.items(), results, strict=True):
                line = cli.one_line_error(result)
                assert text in line, (args, line)
        assert len(switch.messages) == 1
    finally:
        await up.close()


async def test_a_move_killed_midway_then_run_again_loses_and_duplicates_nothing(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """300 mails wait on a suspended upstream; ``queue move --upstream A --to-upstream B``
    is SIGKILLed while it moves them, then run again: B receives every mail exactly once,
    A none, nothing is left in MAIL, no move is left under way, nothing is dead."""
    old = await upstream_mod.start()
    new = await upstream_mod.start()
    url = nats_settings.url
    count = 300
    try:
        policy = d.policy_view(POLICY, UP)
        await d.publish_snapshot(conn, [policy], [d.upstream_view(UP, old),
                                                  d.upstream_view(OTHER, new)])
        assert (await cli.podpost(url, "queue", "suspend", UP)).code == 0
        envs = [d.envelope(policy, [f"m{i}@example.org"]) for i in range(count)]
        for env in envs:
            await d.queue(conn, env)
        async with two_dispatchers(url, tmp_path), d.recording_events(conn) as seen:
            proc = await asyncio.create_subprocess_exec(
                processes.PODPOST, "queue", "move", "--upstream", UP, "--to-upstream", OTHER,
                env=cli.environment(url), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                await d.eventually(lambda: len(d.of_kind(seen, events.Moved)) >= 30, 30)
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            assert proc.returncode == -signal.SIGKILL
            assert await d.queued(conn) > 0  # it was killed midway

            again = await cli.podpost(url, "queue", "move", "--upstream", UP,
                                      "--to-upstream", OTHER, "--json", timeout_s=60)
            assert again.code == 0, again.err
            await new.handler.wait_for(count, timeout_s=60)
            await d.eventually(lambda: d.drained(conn), 30)
            await asyncio.sleep(0.5)  # a duplicate would show up now
            steering = await _steering_keys(conn)
        assert sorted(m.rcpt_to[0] for m in new.handler.messages) == sorted(
            e.rcpt_to[0] for e in envs)
        assert old.handler.messages == []
        assert [k for k in steering if k.startswith(names.MOVING)] == []
        assert await d.dead_letters(conn) == []
    finally:
        await old.close()
        await new.close()


async def _steering_keys(conn: bus.Conn) -> list[str]:
    steer = await queueing.steering(conn)
    return ([names.moving_key(seq) for seq in steer.moving]
            + [names.hold_key(m) for m in steer.held])
