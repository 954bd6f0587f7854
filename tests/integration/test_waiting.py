"""`waiting.sleep_or_stop`: the one pause every loop uses, cut short by a stop."""

from __future__ import annotations

import asyncio

from runtime import waiting


async def test_a_stop_set_before_or_during_the_sleep_ends_it_with_true() -> None:
    """Already set: True at once; set while sleeping: True, long before the sleep ends."""
    stop = asyncio.Event()
    stop.set()
    assert await waiting.sleep_or_stop(stop, 30.0) is True
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stop.set)
    async with asyncio.timeout(10.0):
        assert await waiting.sleep_or_stop(stop, 30.0) is True


async def test_without_a_stop_it_sleeps_and_returns_false() -> None:
    """No stop: the whole (short) sleep, then False; a zero sleep returns at once."""
    stop = asyncio.Event()
    assert await waiting.sleep_or_stop(stop, 0.01) is False
    assert await waiting.sleep_or_stop(stop, 0.0) is False
    assert not stop.is_set()
