"""How the operator names stored mail: stream sequences and mail ids, as ``dlq`` and
``caught`` take them, and which listed items they pick.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import msgspec


class Listed(Protocol):
    """A row an id can name: a dead letter's or a caught mail's."""

    @property
    def seq(self) -> int: ...

    @property
    def mail_id(self) -> str: ...


T = TypeVar("T", bound=Listed)


class Ids(msgspec.Struct, frozen=True, kw_only=True):
    """IDs as the operator typed them: stream sequences and mail ids."""

    seqs: tuple[int, ...] = ()
    mail_ids: tuple[str, ...] = ()


MAX_SEQ_DIGITS = 20
"""A stream sequence is a uint64: at most 20 digits. Longer digit strings are mail ids."""


def parse_ids(texts: Iterable[str]) -> Ids:
    """Digits are a stream sequence (``42``); anything else is a mail id. Ingress mail ids
    are 26 base32 characters and never all digits; a longer all-digit id (a hex id that
    happens to hold no letter) cannot be a sequence, so it is a mail id too."""
    seqs: list[int] = []
    mail_ids: list[str] = []
    for raw in texts:
        text = raw.strip()
        if not text:
            raise ValueError("empty id")
        if text.isdigit() and text.isascii() and len(text) <= MAX_SEQ_DIGITS:
            if int(text) == 0:
                raise ValueError("id 0: stream sequences start at 1")
            seqs.append(int(text))
        elif text.isascii() and text.isprintable() and " " not in text:
            mail_ids.append(text)
        else:
            raise ValueError(f"not an id: {raw!r} (a stream sequence or a mail id)")
    return Ids(seqs=tuple(dict.fromkeys(seqs)), mail_ids=tuple(dict.fromkeys(mail_ids)))


def pick(items: Sequence[T], ids: Ids) -> tuple[list[T], list[str]]:
    """The items named by ``ids`` (every match of a mail id), in stream order, and the ids
    that named nothing."""
    by_seq = {item.seq: item for item in items}
    chosen: dict[int, T] = {}
    unknown: list[str] = []
    for seq in ids.seqs:
        if seq in by_seq:
            chosen[seq] = by_seq[seq]
        else:
            unknown.append(str(seq))
    for mail_id in ids.mail_ids:
        matches = [item for item in items if item.mail_id == mail_id]
        if not matches:
            unknown.append(mail_id)
        chosen.update((item.seq, item) for item in matches)
    return [chosen[seq] for seq in sorted(chosen)], unknown
