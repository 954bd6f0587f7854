"""The mail id is derived from sender, recipients and DATA, so a retry is queued once."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.rules import mailid

BASE = ("app@example.com", ["a@x.test", "b@x.test"], b"Subject: hi\r\n\r\nbody\r\n")


def test_the_id_is_26_lower_case_base32_characters_and_stable() -> None:
    """The same transaction always gets the same id, in the documented shape."""
    first = mailid.compute(*BASE)
    assert re.fullmatch(r"[a-z2-7]{26}", first)
    assert mailid.compute(*BASE) == first


def test_the_order_of_recipients_is_irrelevant() -> None:
    """Recipients are sorted before hashing."""
    sender, rcpts, data = BASE
    assert mailid.compute(sender, list(reversed(rcpts)), data) == mailid.compute(*BASE)


@pytest.mark.parametrize(
    ("sender", "rcpts", "data"),
    [
        ("other@example.com", BASE[1], BASE[2]),
        (BASE[0], ["a@x.test"], BASE[2]),
        (BASE[0], ["a@x.test", "b@x.test", "c@x.test"], BASE[2]),
        (BASE[0], BASE[1], b"Subject: hi\r\n\r\nbody!\r\n"),
        (BASE[0], BASE[1], b""),
        # bytes cannot move between parts unnoticed (length prefixes)
        ("app@example.co", ["ma@x.test", "b@x.test"], BASE[2]),
        (BASE[0], ["a@x.test", "b@x.testS"], b"ubject: hi\r\n\r\nbody\r\n"),
    ],
)
def test_any_change_of_content_changes_the_id(
    sender: str, rcpts: list[str], data: bytes
) -> None:
    """Another sender, recipient set or body is another mail."""
    assert mailid.compute(sender, rcpts, data) != mailid.compute(*BASE)


_address = st.emails()


@given(_address, st.lists(_address, min_size=1, max_size=6), st.binary(max_size=200),
       st.randoms(use_true_random=False))
def test_any_permutation_of_recipients_gives_the_same_id(
    sender: str, rcpts: list[str], data: bytes, rnd: random.Random
) -> None:
    """Property: shuffling the recipients never changes the id."""
    shuffled = list(rcpts)
    rnd.shuffle(shuffled)
    assert mailid.compute(sender, shuffled, data) == mailid.compute(sender, rcpts, data)


@given(_address, st.lists(_address, min_size=1, max_size=3), st.binary(max_size=200),
       st.binary(min_size=1, max_size=20))
def test_appending_to_the_data_changes_the_id(
    sender: str, rcpts: list[str], data: bytes, extra: bytes
) -> None:
    """Property: a longer body is a different mail."""
    assert mailid.compute(sender, rcpts, data + extra) != mailid.compute(sender, rcpts, data)
