"""Durations people write ("90s", "1h7m", "5d") parse to seconds; anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0),
    ("5m", 300.0),
    ("1h7m", 4020.0),
    ("5d", 432000.0),
    ("1d2h3m4s", 93784.0),
    ("250ms", 0.25),
    ("1.5h", 5400.0),
    ("0s", 0.0),
    (" 10m ", 600.0),
    ("1m30s", 90.0),
])
def test_parse_table(text: str, seconds: float) -> None:
    """Each term is a number and a unit; the terms add up."""
    assert durations.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "5min", "-5m", "1h 7m", "5M", "1.h",
                                  "h1", "5m!"])
def test_parse_refuses(text: str) -> None:
    """Text that is not all <number><unit> terms is an error naming it."""
    with pytest.raises(durations.InvalidDuration, match="not a duration"):
        durations.parse(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (60, "1m"), (4020, "1h7m"), (432000, "5d"), (93784, "1d2h3m4s"),
])
def test_format_table(seconds: float, text: str) -> None:
    """Whole seconds are written with the largest units first."""
    assert durations.format_seconds(seconds) == text


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_format_then_parse_round_trips(seconds: int) -> None:
    """Whatever format_seconds writes, parse reads back to the same number."""
    assert durations.parse(durations.format_seconds(seconds)) == seconds
