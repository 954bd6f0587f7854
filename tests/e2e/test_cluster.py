"""A 3-node NATS cluster on loopback with 3-replica streams: losing the leaders under load
loses no mail, the relay keeps accepting, and every copy that reached the upstream is on
the record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadkit import relay, scenarios

MESSAGES = 1500
SESSIONS = 40
LARGE_EVERY = 15
"""Every 15th message has a 300 KiB body: the body store is in play (100 of them)."""


async def test_killing_the_leaders_loses_nothing_and_every_delivery_is_on_the_record(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of the node leading the MAIL stream a quarter into 1,500 messages, then
    (that node back) of the node leading the BODIES store: the remaining two elect new
    leaders each time, clients may see 451 meanwhile, every message is then accepted,
    and every one answered 250 is delivered. For every mail the upstream received N
    times, the EVENTS stream (what ``podpost trace`` reads) holds N ``delivered`` events,
    the later ones marked ``redelivered``, and the dispatchers' delivered counter rose by
    N. Once drained, the attempts bucket and the body store hold nothing of any mail (no
    record, no object, no delete marker); the chunks of uploads the kills cut short are
    the sweep's, after which nothing at all is left."""
    figures = await scenarios.cluster_failover(
        tmp_path, messages=MESSAGES, sessions=SESSIONS, leaders=True,
        padding=300 * 1024, large_every=LARGE_EVERY)
    print(figures.line())
    for key, value in vars(figures).items():
        record_property(key, value)
    notes = figures.notes
    assert figures.crashes == []
    assert figures.confirmed == MESSAGES  # kept accepting after the kills
    assert figures.lost == 0
    assert figures.duplicated <= 2 * relay.MAX_CONNECTIONS
    assert notes["trace_mismatches"] == []
    assert notes["duplicates_marked"]
    assert notes["delivered_counted"] == notes["received"]
    left = notes["residue_left"]
    assert (left["records"], left["objects"], left["markers"]) == (0, 0, 0)
    assert notes["residue_after_sweep"] == {
        "records": 0, "objects": 0, "markers": 0, "chunk_sets": 0}
