"""The README's demo, as a user runs it: ``podpost dev`` from the repository, a mail sent
with Python's smtplib to the SMTP port, then ``podpost caught list`` and ``caught show``;
Ctrl-C stops everything, and the caught mail is still there after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx

from tests.support import cli

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` and their names, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:]
            state, ppid = rest.split()[:2]
            if int(ppid) == pid and state != "Z":
                found[int(stat.parent.name)] = name
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _send(port: int, subject: str) -> tuple[int, bytes]:
    """What the README shows: smtplib, no login; the reply to the end of DATA."""
    msg = EmailMessage()
    msg["From"] = "app@example.com"
    msg["To"] = "someone@example.org"
    msg["Subject"] = subject
    msg.set_content("Hello from podpost dev.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo("demo.local")
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.org")
        return smtp.data(msg.as_bytes())


async def _send_when_ready(port: int, subject: str) -> tuple[int, bytes]:
    """Send once the relay answers 250: before the first snapshot it says 451, as it
    should; bounded to 30 s."""
    reply: tuple[int, bytes] = (0, b"not tried")
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                reply = await asyncio.to_thread(_send, port, subject)
                if reply[0] == 250:
                    return reply
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _dev(state: Path | None, smtp_port: int, nats_port: int, log: Path, *,
               cwd: Path = REPO, console_port: int = 0
               ) -> AsyncIterator[asyncio.subprocess.Process]:
    """``podpost dev`` with its default policy file, run in ``cwd``, stopped with SIGINT;
    ``state`` None: no ``--state-dir`` (the default, ``.podpost/`` in ``cwd``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    env.update(PODPOST_GRACE_S="2", PODPOST_DISPATCHER__DISCOVERY_INTERVAL_S="0.2")
    where = [] if state is None else ["--state-dir", str(state)]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            str(cli.PODPOST), "dev", "--smtp-port", str(smtp_port), "--nats-port",
            str(nats_port), "--console-port", str(console_port), *where, cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _caught(nats_url: str, subject: str) -> list[dict[str, object]]:
    """The caught mail with ``subject``, once ``podpost caught list`` shows it (15 s)."""
    async with asyncio.timeout(15):
        while True:
            listed = await cli.podpost(nats_url, "caught", "list", "--json")
            if listed.code == 0:  # else the embedded nats-server is not up yet
                mine = [row for row in listed.json() if subject in str(row)]
                if mine:
                    return mine
            await asyncio.sleep(0.2)


async def _console_lists(url: str, subject: str) -> None:
    """The web console's API lists the caught mail (within 15 s)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        response = await client.get("/api/caught", params={"subject": subject, "wait_s": 15})
    assert response.status_code == 200, response.text
    assert [row["subject"] for row in response.json()["rows"]] == [subject]


async def test_the_readme_demo_works_and_survives_a_restart(tmp_path: Path) -> None:
    """The README's demo; `podpost dev` also starts the web console and prints its URL."""
    smtp_port, nats_port, console_port = _free_port(), _free_port(), _free_port()
    state, log = tmp_path / "state", tmp_path / "dev.log"
    nats_url = f"nats://127.0.0.1:{nats_port}"
    async with _dev(state, smtp_port, nats_port, log, console_port=console_port) as proc:
        code, text = await _send_when_ready(smtp_port, "hello podpost")
        assert code == 250 and text.startswith(b"2.0.0 queued as "), text
        mail_id = text.decode().rsplit(" ", 1)[1]
        [row] = await _caught(nats_url, "hello podpost")
        assert mail_id in str(row.values())
        table = await cli.podpost(nats_url, "caught", "list")
        assert table.code == 0 and "someone@example.org" in table.out, table.err
        shown = await cli.podpost(nats_url, "caught", "show", mail_id)
        assert shown.code == 0, shown.err
        assert "hello podpost" in shown.out and "Hello from podpost dev." in shown.out
        raw = await cli.podpost(nats_url, "caught", "show", mail_id, "--raw")
        assert raw.code == 0 and "Subject: hello podpost" in raw.out, raw.err
        console_url = f"http://127.0.0.1:{console_port}"
        assert f"web console: {console_url}" in log.read_text()
        await _console_lists(console_url, "hello podpost")
        servers = [pid for pid, name in _children(proc.pid).items() if "nats-server" in name]
        assert len(servers) == 1, _children(proc.pid)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert not _alive(servers[0])  # Ctrl-C stopped all of it, the nats-server too
    async with _dev(state, smtp_port, nats_port, log) as proc:
        [again] = await _caught(nats_url, "hello podpost")
        assert again == row  # kept in the store under --state-dir across the restart
    assert proc.returncode == 0, log.read_text()[-3000:]


async def test_dev_runs_from_any_directory_with_the_packaged_policy(tmp_path: Path) -> None:
    """``podpost dev`` started in an empty directory (no checkout around it) uses the dev
    policy shipped in the package, relays a mail into the catcher, and keeps its store in
    ``.podpost/`` of that directory."""
    smtp_port, nats_port = _free_port(), _free_port()
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    log = tmp_path / "dev.log"
    async with _dev(None, smtp_port, nats_port, log, cwd=empty) as proc:
        try:
            code, text = await _send_when_ready(smtp_port, "from anywhere")
        except TimeoutError:
            raise AssertionError(log.read_text()[-3000:]) from None
        assert code == 250 and text.startswith(b"2.0.0 queued as "), text
        mail_id = text.decode().rsplit(" ", 1)[1]
        [row] = await _caught(f"nats://127.0.0.1:{nats_port}", "from anywhere")
        assert mail_id in str(row.values())
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert (empty / ".podpost" / "nats").is_dir()
