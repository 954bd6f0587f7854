"""What every operator command shares: a connection that fails fast, one-line errors
instead of tracebacks, and where output goes.

Tables and ``--json`` go to stdout; errors, notes and progress bars to stderr, so a script
can pipe ``--json`` and still see why something failed. A command reports a problem by
raising `Failure`; `run` prints it as one line and exits non-zero (2 for a usage error
such as a bad duration, 1 otherwise). An operator command never waits for a broker that is
not there: it tries each server twice within `CONNECT_TIMEOUT_S`, then says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import nats.js.errors
import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from admin.rules import identifiers
from runtime import bus, logs
from runtime import settings as settings_mod
from schemas import durations, names

CONNECT_TIMEOUT_S = 2
"""Seconds one connection attempt to one server may take."""
USAGE = 2
"""Exit code of a usage error (typer's own for bad options)."""
WIDE = 200
"""Table width when stdout is not a terminal (a pipe, a file): wide rather than folded."""

err = Console(stderr=True, soft_wrap=True, highlight=False)


class Failure(Exception):
    """Something the operator must hear about in one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, WIDE))
    return console


def show(renderable: RenderableType) -> None:
    out().print(renderable)


def emit_json(value: Any) -> None:
    """The same Structs the tables show, as indented JSON on stdout."""
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
    sys.stdout.flush()


def note(message: str) -> None:
    err.print(message, markup=False)


def now() -> datetime:
    return datetime.now(UTC)


def duration(option: str, text: str | None) -> timedelta | None:
    """A ``--since``/``--older-than`` value; a bad one is a usage error."""
    if text is None:
        return None
    try:
        return timedelta(seconds=durations.parse(text))
    except durations.InvalidDuration as exc:
        raise Failure(f"{option}: {exc}", USAGE) from None


def key(option: str, text: str | None) -> str | None:
    """A ``--upstream``/``--policy`` value: a ``<namespace>/<name>`` resource key."""
    if text is None:
        return None
    try:
        names.split_key(text)
    except names.InvalidKey as exc:
        raise Failure(f"{option}: {exc}", USAGE) from None
    return text


def ids(texts: list[str]) -> identifiers.Ids:
    try:
        return identifiers.parse_ids(texts)
    except ValueError as exc:
        raise Failure(str(exc), USAGE) from None


@contextlib.asynccontextmanager
async def connect(cfg: settings_mod.NatsSettings) -> AsyncIterator[bus.Conn]:
    """One connection for the command, without reconnects: an unreachable broker is an
    error within a few seconds, never a hang."""
    options = bus.connect_options(cfg, "podpost-cli")

    async def quiet(exc: Exception) -> None:
        """nats-py logs every failed attempt with a traceback; the command says it once."""

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2 * max(1, len(options["servers"]))
                                   + 1.0):
            nc = await nats.connect(
                connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=False,
                reconnect_time_wait=0.1,  # between the two tries
                max_reconnect_attempts=1, error_cb=quiet, **options)
    except bus.TRANSIENT as exc:
        reason = str(exc) or type(exc).__name__
        raise Failure(f"cannot reach NATS at {cfg.url}: {reason}") from None
    conn = bus.conn_for(nc, cfg)
    try:
        yield conn
        with contextlib.suppress(*bus.TRANSIENT):  # events are core publishes:
            async with asyncio.timeout(conn.deadlines.close_s):  # make sure they left
                await nc.flush()
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(conn.deadlines.close_s):
                await nc.close()


def run(work: Callable[[], Coroutine[Any, Any, int | None]]) -> None:
    """Run a command body; a `Failure` or a broker error becomes one line on stderr and a
    non-zero exit, never a traceback."""
    logs.configure(settings_mod.LogSettings(level="error"), stream=sys.stderr)
    try:
        code = asyncio.run(work())
    except Failure as exc:
        note(f"error: {exc}")
        raise typer.Exit(exc.code) from None
    except nats.js.errors.NotFoundError as exc:
        note(f"error: not found on the bus: {exc.description or exc} (is podpost set up on "
             "this NATS, with this prefix?)")
        raise typer.Exit(1) from None
    except nats.js.errors.ServiceUnavailableError:
        note("error: JetStream is not available on this NATS server")
        raise typer.Exit(1) from None
    except nats.js.errors.APIError as exc:
        note(f"error: JetStream refused: {exc.description or exc}")
        raise typer.Exit(1) from None
    except BrokenPipeError:  # `podpost dlq list --json | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except bus.TRANSIENT as exc:
        note(f"error: NATS: {str(exc) or type(exc).__name__}")
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(code)


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr for bulk work (only on a terminal, only for more than one
    item); yields the function that advances it by one."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=err, transient=True, disable=total < 2 or not err.is_terminal)
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
