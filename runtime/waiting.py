"""Waiting that a stop cuts short: the one helper every loop of every role uses to pause.

A loop that polls, retries or re-checks sleeps with `sleep_or_stop`, so a stop is noticed at
once and no loop writes its own "wait for the event or the timeout" again."""

from __future__ import annotations

import asyncio


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once when ``stop`` is (or becomes) set."""
    if stop.is_set():
        return True
    if seconds <= 0:
        return False
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
