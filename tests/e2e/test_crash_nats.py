"""nats-server killed and restarted under load: clients are told 451 while it is down and
retry; nothing answered 250 is lost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadkit import relay, scenarios

MESSAGES = 2000
SESSIONS = 40


async def test_nats_server_killed_and_restarted_under_load_loses_nothing(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of nats-server a quarter into 2,000 messages, restart on the same port and
    store after at least 2 s: while it is down clients get 451 4.3.0 (never 250); after
    it every message is accepted, and every one answered 250 is delivered. A message can
    arrive twice only when a dispatcher delivered it but its ack died with the server, so
    duplicates are bounded by the dispatchers' in-flight slots; each copy is a delivered
    event and counted. No record, object or
    delete marker of any mail is left once drained, and nothing after the sweep (chunks
    of an upload the kill cut short)."""
    figures = await scenarios.crash("nats", tmp_path, messages=MESSAGES, sessions=SESSIONS)
    print(figures.line())
    for key, value in vars(figures).items():
        record_property(key, value)
    assert figures.crashes == []
    assert figures.refusals.get("451", 0) > 0
    # a 250 heard while the broker was down can only be one acked just before the kill
    assert figures.notes["confirmed_while_down"] <= SESSIONS
    assert not [code for code in figures.refusals if code.startswith("5")]
    assert figures.confirmed == MESSAGES
    assert figures.lost == 0
    assert figures.duplicated <= 2 * relay.MAX_CONNECTIONS
    # every copy that reached the upstream is a stored delivered event and was counted
    assert figures.notes["trace_mismatches"] == []
    assert figures.notes["delivered_counted"] == figures.notes["received"]
    left = figures.notes["residue_left"]
    assert (left["records"], left["objects"], left["markers"]) == (0, 0, 0)
    assert not any(figures.notes["residue_after_sweep"].values())
