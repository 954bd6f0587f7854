"""A 3-node NATS cluster on loopback with 3-replica streams: losing a node under load
loses no mail and the relay keeps accepting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadkit import relay, scenarios

MESSAGES = 2000
SESSIONS = 40


async def test_killing_the_mail_stream_leader_loses_nothing_and_the_relay_keeps_accepting(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of the node leading the MAIL stream a quarter into 2,000 messages: the
    remaining two elect a new leader (quorum 2 of 3), clients may see 451 or a reconnect
    meanwhile, every message is then accepted, and every one answered 250 is delivered.
    Duplicates are bounded by the dispatchers' in-flight slots (acks lost with the node)."""
    figures = await scenarios.cluster_failover(tmp_path, messages=MESSAGES, sessions=SESSIONS)
    print(figures.line())
    for key, value in vars(figures).items():
        record_property(key, value)
    assert figures.crashes == []
    assert figures.confirmed == MESSAGES  # kept accepting after the kill
    assert figures.notes["confirmed_at_kill"] < MESSAGES
    assert figures.lost == 0
    assert figures.duplicated <= 2 * relay.MAX_CONNECTIONS
