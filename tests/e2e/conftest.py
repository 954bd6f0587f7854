import pytest


@pytest.fixture(autouse=True)
def _guard_tasks(no_pending_tasks: None) -> None:
    """Every async test here must leave no asyncio task behind."""
