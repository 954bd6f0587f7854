"""The dispatcher's global retry schedule as the environment sets it (`runtime.settings`)."""

from __future__ import annotations

import pytest

from runtime import settings
from schemas import snapshot


def test_retry_variables_set_the_global_retry_policy() -> None:
    """``PODPOST_DISPATCHER__RETRY__*`` set the fields of the one retry type, the rest keep
    Postfix's defaults."""
    cfg = settings.load({"PODPOST_DISPATCHER__RETRY__MIN_DELAY_S": "60",
                         "PODPOST_DISPATCHER__RETRY__MAX_AGE_S": "3600"})
    assert cfg.dispatcher.retry == snapshot.RetryPolicy(min_delay_s=60.0, max_delay_s=4020.0,
                                                        max_age_s=3600.0)


def test_a_misspelt_retry_variable_is_an_error_naming_it() -> None:
    """An unknown field under ``PODPOST_DISPATCHER__RETRY__`` is refused with its name."""
    with pytest.raises(settings.SettingsError, match=r"PODPOST_DISPATCHER__RETRY__MAX_AGE\b"):
        settings.load({"PODPOST_DISPATCHER__RETRY__MAX_AGE": "3600"})
