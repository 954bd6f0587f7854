"""Durations as people write them ("90s", "5m", "1h7m", "5d"), parsed to seconds.

One parser for every human-written duration: the EmailPolicy ``retry`` fields (the same
grammar as ``resources.Duration``) and the CLI's ``--since``. Pure: no I/O.
"""

from __future__ import annotations

import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TERM = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+$")


class InvalidDuration(ValueError):
    """Text that is not a sequence of <number><unit> terms."""


def parse(text: str) -> float:
    """``"1h7m"`` -> ``4020.0``: the sum of every <number><unit> term, in seconds.

    Units: ms, s, m, h, d. Surrounding whitespace is ignored; anything else is an error."""
    stripped = text.strip()
    if not _WHOLE.match(stripped):
        raise InvalidDuration(
            f"not a duration: {text!r} (write e.g. 90s, 5m, 1h7m or 5d; units ms, s, m, h, d)"
        )
    return sum(float(number) * UNITS[unit] for number, unit in _TERM.findall(stripped))


def format_seconds(seconds: float) -> str:
    """The inverse for display: ``4020`` -> ``"1h7m"``; whole seconds, ``0s`` for zero."""
    remaining = max(0, round(seconds))
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
