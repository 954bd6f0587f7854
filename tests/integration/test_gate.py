"""The per-upstream slot gate of a dispatcher serves waiting workers in order, so a worker
that gives its slots back and asks again at once cannot starve another policy's worker."""

from __future__ import annotations

import asyncio

from dispatcher import worker


async def test_a_released_slot_goes_to_the_worker_already_waiting() -> None:
    """A holds every slot; B waits; A releases and asks again at once: B gets them, A
    waits its turn and gets nothing until B gives back."""
    gate = worker.Gate()
    assert await gate.reserve(2, 2, 1.0) == 2
    b = asyncio.create_task(gate.reserve(2, 2, 5.0))
    await asyncio.sleep(0)  # B is queued
    gate.release(2)
    a = asyncio.create_task(gate.reserve(2, 2, 0.2))
    assert await b == 2
    assert await a == 0  # timed out behind B, which holds both
    gate.release(2)
    assert await gate.reserve(2, 1, 1.0) == 1


async def test_leftover_slots_pass_to_the_next_waiter() -> None:
    """A waiter that takes fewer slots than were freed wakes the next one."""
    gate = worker.Gate()
    assert await gate.reserve(3, 3, 1.0) == 3
    first = asyncio.create_task(gate.reserve(3, 1, 5.0))
    second = asyncio.create_task(gate.reserve(3, 2, 5.0))
    await asyncio.sleep(0)
    gate.release(3)
    assert await first == 1
    assert await second == 2
    assert gate.used == 3


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    """A woken waiter cancelled before it took its slots hands the turn to the next."""
    gate = worker.Gate()
    assert await gate.reserve(1, 1, 1.0) == 1
    gone = asyncio.create_task(gate.reserve(1, 1, 5.0))
    waiting = asyncio.create_task(gate.reserve(1, 1, 5.0))
    await asyncio.sleep(0)
    gate.release(1)  # wakes `gone`...
    gone.cancel()  # ...which never takes it
    assert await waiting == 1
    assert gone.cancelled()
