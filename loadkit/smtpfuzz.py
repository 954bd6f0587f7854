"""Generated SMTP sessions for fuzzing the ingress: the test
(``tests/integration/test_ingress_fuzz.py``) and ``bench/resilience.py`` replay them.

hypothesis (derandomized, so every run sends the same sessions) writes the session
scripts: malformed and valid commands, lines up to 1 MiB, NUL and 8-bit bytes, DATA with
and without its end, whole transactions with honest or spoofed From:, pauses and silence
past the idle timeout. Every script is replayed in each of four modes: lockstep, pipelined
(everything in one write), slow (a few bytes at a time) and aborted (RST instead of a
goodbye). The scripts are generated first, then replayed many at a time over raw asyncio
streams, so the cost is the sessions, not hypothesis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MIB = 1 << 20
SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.9"]
"""Admitted by OPEN, by STRICT (senders restricted), and by no policy (in
`loadkit.inprocess.SNAPSHOT`)."""
BATCH = 50
"""Scripts per hypothesis example."""
READ_TIMEOUT_S = 15.0
"""A session whose server neither answers nor closes within this is stuck."""

_REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*\r\n")
_QUEUED = re.compile(rb"250 2\.0\.0 queued as ([a-z2-7]+)\r\n")


# -- the generator -------------------------------------------------------------------------

_host = st.one_of(st.sampled_from([b"client.test", b"[127.0.0.1]", b""]),
                  st.binary(max_size=24))
_address = st.one_of(
    st.sampled_from([b"app@example.com", b"app@example.org", b"z@y.test", b"", b"<>",
                     b"postmaster", b"a@b@c", b"\xff\xfe@example.com", b"x\x00y@z.test"]),
    st.binary(max_size=40))
_params = st.lists(st.sampled_from([b"SIZE=100", b"SIZE=999999999999", b"SIZE=-1",
                                    b"BODY=8BITMIME", b"BODY=JUNK", b"SMTPUTF8", b"X=Y",
                                    b"SIZE="]), max_size=3)
_data_line = st.one_of(
    st.sampled_from([b"From: app@example.com", b"From: evil@attacker.test", b"Subject: x",
                     b"", b".", b"..", b".\x00", b"a\x00b\x00", b"\xff\xfe\xfd"]),
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))


MAX_RECIPIENTS = 50
"""The ingress's max_recipients for a fuzz run, so a burst of RCPTs goes over it cheaply."""
_BURSTS = [
    b"NOOP\r\n" * 100,
    b"RSET\r\nMAIL FROM:<app@example.com>\r\n" * 50,
    b"EHLO burst.test\r\nMAIL FROM:<app@example.com>\r\n"
    + b"".join(b"RCPT TO:<r%d@y.test>\r\n" % i for i in range(MAX_RECIPIENTS + 5)),
    b"XYZZY\r\n" * 50,
]


def _line(parts: tuple[bytes, ...]) -> bytes:
    return b"".join(parts) + b"\r\n"


_op = st.one_of(
    st.tuples(st.sampled_from([b"EHLO ", b"HELO ", b"ehlo ", b"LHLO "]), _host).map(_line),
    st.tuples(st.just(b"MAIL FROM:<"), _address, st.just(b"> "),
              _params.map(b" ".join)).map(_line),
    st.tuples(st.sampled_from([b"MAIL FROM:", b"MAIL FROM: ", b"MAIL "]), _address).map(_line),
    st.tuples(st.just(b"RCPT TO:<"), _address, st.just(b">")).map(_line),
    st.tuples(st.sampled_from([b"RCPT TO:", b"RCPT "]), _address).map(_line),
    st.sampled_from([b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"VRFY x\r\n",
                     b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN AGFhAGI=\r\n", b"EXPN x\r\n",
                     b"BDAT 10 LAST\r\n", b"\r\n", b"\x00\x00\x00\r\n", b"DATA\n", b"QUIT"]),
    # a DATA body, ended by "." or not (a client may vanish or keep talking inside DATA)
    st.tuples(st.lists(_data_line, max_size=8), st.booleans()).map(
        lambda t: b"".join(line + b"\r\n" for line in t[0]) + (b".\r\n" if t[1] else b"")),
    # a whole transaction a policy may admit, with a generated body
    st.tuples(st.sampled_from([b"app@example.com", b"app@example.org", b"other@example.net"]),
              st.sampled_from([b"", b"app@example.com", b"evil@attacker.test"]),
              st.lists(_data_line, max_size=6)).map(
        lambda t: b"EHLO client.test\r\nMAIL FROM:<" + t[0] + b">\r\nRCPT TO:<z@y.test>\r\n"
        b"DATA\r\nFrom: " + (t[1] or t[0]) + b"\r\n"
        + b"".join(line + b"\r\n" for line in t[2]) + b".\r\n"),
    st.sampled_from(_BURSTS),  # pipelining abuse: hundreds of commands in one write
    st.binary(max_size=64),  # raw junk, newlines or not
    st.tuples(st.sampled_from([b"A", b"MAIL FROM:<", b"\x00"]),
              st.sampled_from([600, 1100, 70_000, MIB])).map(
        lambda t: b"LONG%d:" % t[1] + t[0]),  # a long line, rendered when sent
    st.sampled_from([b"PAUSE", b"STALL"]),  # a pause, or silence past the idle timeout
)


@dataclass(frozen=True)
class Script:
    source: str
    ops: tuple[bytes, ...]
    mode: str = ""


_script = st.builds(Script, source=st.sampled_from(SOURCES),
                    ops=st.lists(_op, max_size=8).map(tuple))


MODES = ("lockstep", "pipeline", "slow", "abort")
"""How a client sends a script: each op then what the server says so far; all at once
(pipelining); a few bytes at a time; or all at once, then a reset instead of a goodbye."""


def generate(count: int) -> list[Script]:
    """``count`` scripts (a multiple of BATCH), each in every mode: the same on every run."""
    scripts: list[Script] = []

    @settings(max_examples=max(1, count // BATCH), derandomize=True, database=None,
              deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_script, min_size=BATCH, max_size=BATCH))
    def collect(batch: list[Script]) -> None:
        scripts.extend(batch)

    collect()
    return [Script(s.source, s.ops, mode) for s in scripts[:count] for mode in MODES]


# -- the replay ----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the replay saw; ``huge_budget`` 1 MiB lines and ``stall_budget`` silences past
    ``idle_timeout_s`` are really sent, further ones are cut to 70 kB and to a short pause,
    so a run stays at seconds."""

    idle_timeout_s: float
    huge_budget: int = 60
    stall_budget: int = 200
    sessions: int = 0
    huge_lines: int = 0
    stalls: int = 0
    bytes_sent: int = 0
    stuck: list[Script] = field(default_factory=list)
    malformed: list[tuple[Script, bytes]] = field(default_factory=list)
    queued: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    modes: collections.Counter[str] = field(default_factory=collections.Counter)
    connect_failed: int = 0


def _render(op: bytes, tally: Tally) -> bytes:
    if not op.startswith(b"LONG"):
        return op
    digits, _, head = op[4:].partition(b":")
    size = int(digits)
    if size == MIB:
        if tally.huge_lines < tally.huge_budget:
            tally.huge_lines += 1
        else:
            size = 70_000
    return head + b"x" * size + b"\r\n"


async def _read_all(reader: asyncio.StreamReader) -> bytes | None:
    """Everything until the server closes; None when it neither closes nor speaks."""
    chunks = []
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        return None
    except OSError:
        pass
    return b"".join(chunks)


async def replay(port: int, script: Script, tally: Tally) -> None:
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(script.source, 0))
    except OSError:
        tally.connect_failed += 1
        return
    tally.sessions += 1
    tally.modes[script.mode] += 1
    received = b""
    try:
        for op in script.ops:
            if op in (b"PAUSE", b"STALL"):
                stall = op == b"STALL" and tally.stalls < tally.stall_budget
                tally.stalls += stall
                await asyncio.sleep(tally.idle_timeout_s * 1.5 if stall else 0.05)
                continue
            data = _render(op, tally)
            tally.bytes_sent += len(data)
            if script.mode == "slow":
                for start in range(0, min(len(data), 1024), 64):
                    writer.write(data[start:start + 64])
                    await asyncio.sleep(0.002)
                writer.write(data[1024:])
            else:
                writer.write(data)
            if script.mode == "lockstep":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await writer.drain()
                        received += await reader.read(65536)
        if script.mode == "abort":
            writer.transport.abort()
            return
        with contextlib.suppress(OSError):
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
        rest = await _read_all(reader)
        if rest is None:
            tally.stuck.append(script)
            return
        received += rest
    except OSError:  # the server closed first (idle timeout, too much junk, QUIT)
        return
    finally:
        writer.transport.abort()
    _check(script, received, tally)


def _check(script: Script, received: bytes, tally: Tally) -> None:
    """Every byte the server sent is a whole reply line; note what was queued."""
    if _REPLY_LINE.sub(b"", received):
        tally.malformed.append((script, received[:300]))
    for mail_id in _QUEUED.findall(received):
        tally.queued[script.source].add(mail_id.decode())


def session_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks()
            if not t.done() and "_handle_client" in t.get_coro().__qualname__]  # type: ignore[union-attr]


async def run(port: int, scripts: list[Script], tally: Tally, concurrency: int) -> None:
    """Replay ``scripts``, ``concurrency`` sessions at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(script: Script) -> None:
        async with gate:
            await replay(port, script, tally)

    async with asyncio.TaskGroup() as tg:
        for script in scripts:
            tg.create_task(one(script))


def summary(tally: Tally) -> dict[str, object]:
    return {
        "sessions": tally.sessions, "connect_failed": tally.connect_failed,
        "modes": dict(tally.modes), "huge_lines": tally.huge_lines,
        "stalls": min(tally.stalls, tally.stall_budget),
        "mib_sent": round(tally.bytes_sent / MIB, 1), "stuck": len(tally.stuck),
        "malformed": len(tally.malformed),
        "queued": {k: len(v) for k, v in tally.queued.items()},
    }
