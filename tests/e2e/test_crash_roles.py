"""SIGKILL of a podpost process in the middle of a load loses nothing answered 250.

Each test runs real processes (reconciler on the file source, one ingress, two
dispatchers) against a real nats-server and an in-process upstream, sends 2,000 messages
over 40 parallel sessions (each retried, byte for byte, until answered 250), kills one
process with SIGKILL a quarter of the way in, and counts every message at the upstream by
the token in its Subject.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loadkit import relay, scenarios

MESSAGES = 2000
SESSIONS = 40


NOTHING = {"records": 0, "objects": 0, "markers": 0, "chunk_sets": 0}


def _report(figures: relay.Figures, record_property: Callable[[str, object], None]) -> None:
    print(figures.line())
    for key, value in vars(figures).items():
        record_property(key, value)
    # whatever was killed, the sweep leaves nothing of drained mail behind
    assert figures.notes["residue_after_sweep"] == NOTHING


def _no_mail_residue(figures: relay.Figures) -> None:
    """No record, object or delete marker of any mail was left once drained (chunks of
    an upload cut by a kill are the sweep's)."""
    left = figures.notes["residue_left"]
    assert (left["records"], left["objects"], left["markers"]) == (0, 0, 0)


async def test_sigkill_of_the_ingress_loses_nothing_answered_250(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Killed mid-load and restarted on its port: every message answered 250 is delivered
    and none twice (a retry of a message stored before the kill has the same content, so
    JetStream drops it as a duplicate); nothing of any mail is left once drained."""
    figures = await scenarios.crash("ingress", tmp_path, messages=MESSAGES, sessions=SESSIONS)
    _report(figures, record_property)
    assert figures.crashes == []
    assert figures.confirmed == MESSAGES
    assert figures.lost == 0
    assert figures.duplicated == 0
    assert figures.refusals.get("cut", 0) + figures.refusals.get("connect", 0) > 0  # it hurt
    _no_mail_residue(figures)


async def test_sigkill_of_a_dispatcher_loses_nothing_and_duplicates_at_most_its_slots(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """One of two dispatchers killed while delivering: its unacked messages come back after
    ack_wait and are delivered by the others; at most the killed one's in-flight messages
    (its connection cap) can arrive twice: delivered, but killed before the ack. What the
    killed one left of its mail (a record, a body) is removed by the sweep."""
    figures = await scenarios.crash("dispatcher", tmp_path, messages=MESSAGES,
                                    sessions=SESSIONS)
    _report(figures, record_property)
    assert figures.crashes == []
    assert figures.confirmed == MESSAGES
    assert figures.lost == 0
    assert figures.duplicated <= relay.MAX_CONNECTIONS
    assert figures.notes["delivered_at_kill"] < MESSAGES  # killed in the middle


async def test_sigkill_of_the_reconciler_loses_nothing_and_the_relay_goes_on(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Without its reconciler the relay keeps accepting and delivering on the last
    snapshot; the restarted reconciler publishes again; nothing is lost or doubled, and
    nothing of any mail is left once drained."""
    figures = await scenarios.crash("reconciler", tmp_path, messages=MESSAGES,
                                    sessions=SESSIONS)
    _report(figures, record_property)
    assert figures.crashes == []
    assert figures.confirmed == MESSAGES
    assert figures.lost == 0
    assert figures.duplicated == 0
    assert figures.notes["confirmed_while_down"] > 0
    assert not [code for code in figures.refusals if code.startswith("5")]  # never unknown
    _no_mail_residue(figures)


async def test_sigkill_of_the_ingress_with_bodies_in_the_object_store_loses_nothing(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The same with 200 messages of 300 KiB (over the inline limit: the body is stored
    as an object before the envelope is published): nothing answered 250 is lost, none is
    delivered twice, and no body object is left behind once everything is delivered (a
    retry reuses the object a killed attempt stored while its mail is queued, and removes
    the one it stored again for mail delivered meanwhile); only the chunks of an upload
    the kill cut in the middle are left, for the sweep."""
    figures = await scenarios.crash("ingress", tmp_path, messages=200, sessions=SESSIONS,
                                    padding=300 * 1024)
    _report(figures, record_property)
    assert figures.crashes == []
    assert figures.confirmed == 200
    assert figures.lost == 0
    assert figures.duplicated == 0
    assert figures.notes["bodies_left"] == 0
    _no_mail_residue(figures)
