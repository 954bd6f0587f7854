from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import secured as secured_mod


@pytest.fixture(autouse=True)
def _guard_tasks(no_pending_tasks: None) -> None:
    """Every async test here must leave no asyncio task behind."""


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[secured_mod.Secured]:
    """A nats-server running the generated authorization block, fresh passwords per test."""
    async with secured_mod.running(tmp_path) as server:
        yield server
