"""The dispatcher's DATA skips aiosmtplib's message preparation only when it would change
nothing (`dispatcher.sending.ready_as_is`), with the aiosmtplib state it relies on."""

from __future__ import annotations

import asyncio

import aiosmtplib.protocol
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatcher import sending


def aiosmtplib_prepared(data: bytes) -> bytes:
    """What aiosmtplib's execute_data_command sends before its final ``.<CRLF>``."""
    normalized = aiosmtplib.protocol.normalize_message_line_endings(data)
    return aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", normalized)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"x y"]),
                max_size=30).map(b"".join))
@example(b"Subject: x\r\n\r\nbody\r\n")
@example(b".\r\n")
@example(b"a\r\n.b\r\n")
@example(b"a\n\r\n")
def test_a_message_ready_as_is_is_what_aiosmtplib_would_send(data: bytes) -> None:
    """Whenever the fast path takes a message, aiosmtplib's preparation leaves it as it
    is; so what goes on the wire is the same."""
    if sending.ready_as_is(data):
        assert aiosmtplib_prepared(data) == data


def test_stored_mail_takes_the_fast_path_and_dot_lines_do_not() -> None:
    """A CRLF message takes the fast path; a dot line, a lone LF or CR do not."""
    assert sending.ready_as_is(b"From: a@b\r\nSubject: x\r\n\r\n" + b"line\r\n" * 100)
    for data in (b"a\r\n.dot\r\n", b".a\r\n", b"a\nb\r\n", b"a\rb\r\n", b"no end"):
        assert not sending.ready_as_is(data)


async def test_aiosmtplib_still_has_the_protocol_state_the_fast_path_uses() -> None:
    """SMTPProtocol keeps a command lock, a pending-reply flag, its reply waiter and its
    buffer parser (the pipelined transaction's), and the DATA steps."""
    protocol = aiosmtplib.protocol.SMTPProtocol(loop=asyncio.get_running_loop())
    for name in sending._PIPELINE_STATE:
        assert hasattr(protocol, name), name
    assert callable(protocol.write) and callable(protocol.read_response)
    assert callable(aiosmtplib.protocol.SMTPProtocol.execute_data_command)
