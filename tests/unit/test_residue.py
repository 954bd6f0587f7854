"""The sweep's decision: what is residue of the ATTEMPTS bucket and the BODIES store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.rules import residue

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
OLD = NOW - timedelta(hours=3)
YOUNG = NOW - timedelta(minutes=5)
GRACE = 7200.0
LIVE = residue.Live(keys=frozenset({"live"}), bodies=frozenset({"live", "dead-letter"}))


def test_records_nobody_names_are_residue_once_older_than_the_grace() -> None:
    """A record is residue when no MAIL message names its key and it is older than the
    grace; a live one or a young one stays."""
    records = [residue.Record("live", 1, OLD), residue.Record("gone", 2, OLD),
               residue.Record("gone-young", 3, YOUNG)]
    found = residue.residue(records, [], [], LIVE, now=NOW, grace_s=GRACE)
    assert [r.key for r in found.records] == ["gone"]


def test_bodies_named_by_mail_or_a_dead_letter_stay_and_markers_go() -> None:
    """An object named by mail or a dead letter stays; one nobody names and every delete
    marker go once older than the grace; nothing young goes."""
    bodies = [residue.Body("live", "n1", False, OLD),
              residue.Body("dead-letter", "n2", False, OLD),
              residue.Body("gone", "n3", False, OLD),
              residue.Body("live", "n4", True, OLD),
              residue.Body("gone-young", "n5", False, YOUNG),
              residue.Body("marker-young", "", True, YOUNG)]
    found = residue.residue([], bodies, [], LIVE, now=NOW, grace_s=GRACE)
    assert [(b.name, b.nuid) for b in found.bodies] == [("gone", "n3"), ("live", "n4")]


def test_chunks_no_live_meta_names_are_residue_once_older_than_the_grace() -> None:
    """Chunks of a cut upload (no meta names them) go when old; the chunks of a live
    object, and young chunks (an upload going on), stay."""
    bodies = [residue.Body("live", "n1", False, OLD), residue.Body("x", "n2", True, OLD)]
    chunks = [residue.Chunks("n1", OLD), residue.Chunks("n2", OLD),
              residue.Chunks("cut", OLD), residue.Chunks("uploading", YOUNG)]
    found = residue.residue([], bodies, chunks, LIVE, now=NOW, grace_s=GRACE)
    assert [c.nuid for c in found.chunks] == ["n2", "cut"]


@given(st.lists(st.tuples(st.sampled_from(["live", "gone", "other"]),
                          st.integers(min_value=0, max_value=10_000))))
def test_nothing_live_or_younger_than_the_grace_is_ever_residue(
    rows: list[tuple[str, int]],
) -> None:
    """Whatever is listed, no record live mail names and none younger than the grace is
    residue."""
    records = [residue.Record(key, i, NOW - timedelta(seconds=age))
               for i, (key, age) in enumerate(rows)]
    found = residue.residue(records, [], [], LIVE, now=NOW, grace_s=GRACE / 2)
    for record in found.records:
        assert record.key not in LIVE.keys
        assert (NOW - record.written_at).total_seconds() >= GRACE / 2
