"""The chunked DATA reader gives what aiosmtpd's line-by-line reader gives: the same
message, the same refusals, and it stops right after the final dot, so pipelined
commands behind it are left for the session."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.protocol import read_data
from ingress.rules import dataphase

MAX_LINE = dataphase.MAX_LINE


def reference(stream: bytes, limit: int | None) -> tuple[dataphase.Verdict, bytes, bytes]:
    """aiosmtpd 1.4's smtp_DATA, reduced to its decisions: line by line up to a lone
    dot; a line over 1,001 bytes (CRLF included) is TOO_LONG, more than ``limit`` bytes
    TOO_MUCH, whichever comes first; leading dots removed. Also what is left unread."""
    state, data, count, pos = dataphase.Verdict.OK, [], 0, 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        count += len(line)
        if state is dataphase.Verdict.OK and limit and count > limit:
            state = dataphase.Verdict.TOO_MUCH
        if state is dataphase.Verdict.OK and len(line) > MAX_LINE:
            state = dataphase.Verdict.TOO_LONG
        data.append(line[1:] if line.startswith(b".") else line)
    message = b"".join(data) if state is dataphase.Verdict.OK else b""
    return state, message, stream[pos:]


async def chunked(stream: bytes, limit: int | None, pieces: list[int], buffer: int
                  ) -> tuple[dataphase.Verdict, bytes, bytes]:
    reader = asyncio.StreamReader(limit=buffer)
    rest = stream
    for size in pieces:  # delivered to the reader in arbitrary pieces, like TCP does
        reader.feed_data(rest[:size])
        rest = rest[size:]
    reader.feed_data(rest)
    reader.feed_eof()
    verdict, message = await read_data(reader, limit)
    return verdict, message, await reader.read()


lines = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b".x", b"a.", b"\r", b"\n", b".\n", b"\x00"]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"")),
        st.integers(990, 1010).map(lambda n: b"y" * n),
    ),
    max_size=30,
).filter(lambda ls: all(line != b"." for line in ls))  # a lone dot would end DATA


@settings(max_examples=400, deadline=None)
@given(lines=lines, limit=st.one_of(st.none(), st.integers(1, 3000)),
       pieces=st.lists(st.integers(1, 50), max_size=10), buffer=st.sampled_from([64, 16384]))
def test_the_chunked_reader_agrees_with_aiosmtpd(
    lines: list[bytes], limit: int | None, pieces: list[int], buffer: int
) -> None:
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\nQUIT\r\n"
    want = reference(stream, limit)
    got = asyncio.run(chunked(stream, limit, pieces, buffer))
    if want[0] is not dataphase.Verdict.OK and got[0] is not dataphase.Verdict.OK:
        # Both refuse; which of the two reasons comes first may differ on the line that
        # crosses the limit (aiosmtpd tests size first); the reply is a refusal either way.
        assert got[2] == want[2] == b"QUIT\r\n"
        return
    assert got == want


def test_an_empty_message_and_a_dot_at_the_start() -> None:
    assert asyncio.run(chunked(b".\r\nNOOP\r\n", None, [], 64)) == (
        dataphase.Verdict.OK, b"", b"NOOP\r\n")
    assert asyncio.run(chunked(b"..a\r\n.\r\n", None, [1, 1, 1], 64)) == (
        dataphase.Verdict.OK, b".a\r\n", b"")
    assert asyncio.run(chunked(b"\r\n.\r\n", None, [], 64)) == (
        dataphase.Verdict.OK, b"\r\n", b"")
