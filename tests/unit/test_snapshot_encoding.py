"""The stored form of the policy snapshot: compressed, and still readable when plain."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import snapshot

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def _snap(pods: int) -> snapshot.PolicySnapshot:
    return snapshot.PolicySnapshot(
        generated_at=NOW,
        policies={"ns/p": snapshot.PolicyView(key="ns/p", upstream="ns/s")},
        routes=[snapshot.Route(network=f"10.0.{i >> 8}.{i & 255}/32", policy="ns/p",
                               source=f"pod:ns/app-{i}") for i in range(pods)],
        source="kubernetes",
    )


@given(pods=st.integers(0, 300))
def test_round_trip(pods: int) -> None:
    """What `encode_snapshot` writes, `decode_snapshot` reads back unchanged."""
    snap = _snap(pods)
    assert snapshot.decode_snapshot(snapshot.encode_snapshot(snap)) == snap


def test_plain_json_is_still_read() -> None:
    """A value written as plain JSON (older reconcilers, test helpers) decodes too."""
    snap = _snap(3)
    assert snapshot.decode_snapshot(snapshot.snapshot_encoder.encode(snap)) == snap


def test_ten_thousand_pods_fit_in_a_nats_message() -> None:
    """A 10,000-route snapshot is well under NATS's 1 MiB max payload once compressed."""
    snap = _snap(10_000)
    assert len(snapshot.snapshot_encoder.encode(snap)) > 700_000
    assert len(snapshot.encode_snapshot(snap)) < 256 * 1024


@pytest.mark.parametrize("value", [b"\x78\x01garbage", b"not json", b""])
def test_corrupt_value_is_a_decode_error(value: bytes) -> None:
    """Garbage raises msgspec.DecodeError, which readers already handle."""
    with pytest.raises(msgspec.DecodeError):
        snapshot.decode_snapshot(value)


def test_oversized_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that inflates past the bound is refused rather than exhausting memory."""
    monkeypatch.setattr(snapshot, "MAX_SNAPSHOT_BYTES", 1000)
    with pytest.raises(msgspec.DecodeError, match="larger than"):
        snapshot.decode_snapshot(zlib.compress(b"{" + b" " * 5000 + b"}"))
