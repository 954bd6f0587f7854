"""``podpost status`` counts, and how every operator command fails: one line on stderr,
a non-zero exit, no traceback, and no hang when no broker answers."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import msgspec
import nats.js.errors

from dispatcher import consumers
from loadkit import upstream as upstream_mod
from runtime import bus, settings
from schemas import mail, rates, snapshot
from tests.support import cli
from tests.support import dispatching as d

UP = "mail/up"
POLICY = "apps/web"
OTHER = "apps/batch"


async def test_status_counts_queued_in_flight_deferred_and_dead(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """Three queued mails of which one is held by a consumer (in flight) and one waits
    for its next attempt (deferred), and two dead letters, are counted per upstream and
    policy next to the snapshot's revision."""
    web = d.policy_view(POLICY, UP)
    batch = d.policy_view(OTHER, UP)
    revision = await d.publish_snapshot(conn, [web, batch], [d.upstream_view(UP, upstream)])
    envs = [d.envelope(web, ["a@example.org"]), d.envelope(web, ["b@example.org"]),
            d.envelope(batch, ["c@example.org"])]
    for env in envs:
        await d.queue(conn, env)
    sub = await consumers.subscribe(conn, consumers.Pair(UP, POLICY),
                                    settings.DispatcherSettings())
    try:
        [held] = await sub.fetch(1, timeout=5)  # delivered to "a dispatcher", not acked
        record = mail.AttemptRecord(attempts=1, policy=OTHER, upstream=UP,
                                    next_attempt_at=datetime.now(UTC) + timedelta(hours=1))
        attempts = await bus.attempts_kv(conn)
        await attempts.put(mail.attempts_key(envs[2]), msgspec.json.encode(record))
        for env in envs[:2]:
            letter = mail.DeadLetter(envelope=env, fate="permanent", code=550,
                                     dead_at=datetime.now(UTC))
            await conn.js.publish(conn.names.dead_subject(UP), msgspec.json.encode(letter))

        report = (await cli.podpost(nats_settings.url, "status", "--json")).json()
        assert report["snapshot"]["revision"] == revision
        assert 0 <= report["snapshot"]["age_s"] < 60
        [row] = report["upstreams"]
        assert (row["upstream"], row["queued"], row["in_flight"], row["deferred"],
                row["dead"]) == (UP, 3, 1, 1, 2)
        assert [(p["policy"], p["queued"], p["in_flight"], p["deferred"])
                for p in row["policies"]] == [(OTHER, 1, None, 1), (POLICY, 2, 1, 0)]

        table = await cli.podpost(nats_settings.url, "status")
        assert table.code == 0, table.err
        assert f"revision {revision}" in table.out
        [line] = [line for line in table.out.splitlines() if UP in line]
        cells = [cell.strip() for cell in line.split("│")]
        assert cells[1:6] == [UP, "3", "1", "1", "2"]
        await held.ack()
    finally:
        await sub.unsubscribe()


async def _window(conn: bus.Conn, policy: str) -> rates.RateWindow | None:
    """The policy's newest rate window in the RATES bucket, if any."""
    kv = await bus.rates_kv(conn)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return None
    mine = sorted((start, key) for key in keys
                  for pol, start in [rates.parse_window_key(key)] if pol == policy)
    if not mine:
        return None
    entry = await kv.get(mine[-1][1])
    return rates.window_decoder.decode(entry.value or b"")


async def _rate_used(url: str) -> int | None:
    [row] = (await cli.podpost(url, "status", "--json")).json()["upstreams"]
    [pol] = row["policies"]
    used: int | None = pol["ratelimit"]["used"]
    return used


async def test_status_rate_use_counts_sent_mail_not_reserved_tokens(
    conn: bus.Conn, nats_settings: settings.NatsSettings, upstream: upstream_mod.Upstream
) -> None:
    """A dispatcher waiting for a rate-limited policy's mail holds tokens of its window;
    ``status`` shows the policy has used none of it, and one once one mail went out."""
    limit = snapshot.RateLimit(maximum=50, period_s=3600.0)
    web = d.policy_view(POLICY, UP, ratelimit=limit)
    await d.publish_snapshot(conn, [web], [d.upstream_view(UP, upstream)])
    # windows of 1000 hours, so none ends while the test runs
    async with d.dispatcher(d.config(nats_settings, rate_window_scale=1000.0)):

        async def reserved() -> bool:
            window = await _window(conn, POLICY)
            return window is not None and window.used > 0

        await d.eventually(reserved)  # the idle worker's fetch holds a token
        assert await _rate_used(nats_settings.url) == 0
        await d.queue(conn, d.envelope(web, ["a@example.org"]))
        await upstream.handler.wait_for(1)
        assert await _rate_used(nats_settings.url) == 1
        table = await cli.podpost(nats_settings.url, "status")
        assert "1/50 per 1h" in table.out, table.out


async def test_bad_input_is_one_line_and_a_non_zero_exit(
    conn: bus.Conn, nats_settings: settings.NatsSettings
) -> None:
    """Unknown ids, bad durations, bad keys and contradictory arguments each give one
    clear line on stderr; usage errors exit 2, the rest 1; nothing is done."""
    url = nats_settings.url
    env = d.envelope(d.policy_view(POLICY, UP), ["a@example.org"])
    letter = mail.DeadLetter(envelope=env, fate="permanent", dead_at=datetime.now(UTC))
    await conn.js.publish(conn.names.dead_subject(UP), msgspec.json.encode(letter))

    cases = [
        (("dlq", "show", "99"), 1, "no dead letter with id 99"),
        (("dlq", "replay", "1", "99", "nosuchmail"), 1, "no dead letter with id 99, nosuchmail"),
        (("dlq", "purge", "1", "--all"), 2, "give IDs or --all, not both"),
        (("dlq", "list", "--since", "5parsecs"), 2, "--since: not a duration: '5parsecs'"),
        (("dlq", "purge", "--all", "--older-than", "1y"), 2, "--older-than: not a duration"),
        (("dlq", "list", "--upstream", "nope"), 2, "--upstream: not a <namespace>/<name> key"),
        (("trace", "nosuchmail"), 1, "no events for mail nosuchmail"),
        (("caught", "show", "5"), 1, "no caught mail with id 5"),
    ]
    for args, code, message in cases:
        result = await cli.podpost(url, *args)
        assert message in cli.one_line_error(result), args
        assert result.code == code, (args, result.code)
    assert len(await d.dead_letters(conn)) == 1  # the replay with a bad id did nothing
    assert await d.queued(conn) == 0


async def test_no_broker_is_an_error_within_seconds() -> None:
    """A NATS URL where something listens but never speaks (the worst case: nothing
    refuses the connection) gives one line and exit 1, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = await cli.podpost(f"nats://127.0.0.1:{port}", "dlq", "list", timeout_s=20)
    assert f"cannot reach NATS at nats://127.0.0.1:{port}" in cli.one_line_error(result)
    assert result.code == 1


async def test_usage_and_settings_errors_are_one_line_on_a_narrow_pipe() -> None:
    """A missing argument, an unknown option or command, a bad option value and a
    misspelt PODPOST_ variable each give one ``error:`` line and exit 2, even with stderr
    a pipe 80 columns wide (no box, no wrapping); the usage errors say where help is."""
    narrow = {"COLUMNS": "80"}
    cases = [
        (("trace",), "Missing argument", "Try 'podpost trace --help'."),
        (("status", "--bogus"), "No such option: --bogus", "Try 'podpost status --help'."),
        (("dlq", "lst"), "No such command 'lst'", "Try 'podpost dlq --help'."),
        (("dev", "--smtp-port", "many"), "Invalid value for '--smtp-port'",
         "Try 'podpost dev --help'."),
    ]
    for args, message, hint in cases:
        result = await cli.podpost("nats://127.0.0.1:1", *args, env=narrow)
        line = cli.one_line_error(result)
        assert message in line and line.endswith(hint), (args, line)
        assert result.code == 2, (args, result.code)
    typo = await cli.podpost("nats://127.0.0.1:1", "dispatcher",
                             env={**narrow, "PODPOST_DISPATCHER__MAX_CONECTIONS": "3"})
    assert cli.one_line_error(typo) == (
        "error: PODPOST_DISPATCHER__MAX_CONECTIONS: Object contains unknown field "
        "`max_conections`")
    assert typo.code == 2
