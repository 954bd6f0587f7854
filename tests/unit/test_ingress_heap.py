"""The ingress freezes its start-up heap once listening (``ingress.gc_freeze``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ingress import main
from runtime import settings as settings_mod


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_settling_freezes_what_is_alive(thresholds: None) -> None:
    """With gc_freeze on, the objects alive at listening leave the collector's generations."""
    gc.unfreeze()
    kept = [object() for _ in range(10)]
    main._settle_heap(settings_mod.IngressSettings())
    assert gc.get_freeze_count() > 0
    assert kept


def test_settling_can_be_turned_off(thresholds: None) -> None:
    """With gc_freeze off nothing is frozen, and the young threshold is the setting's."""
    gc.unfreeze()
    main._settle_heap(settings_mod.IngressSettings(gc_freeze=False, gc_threshold0=1234))
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] == 1234
