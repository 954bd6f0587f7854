"""Generated NATS passwords against real nats-servers: the NATS pods read each password
from an environment variable (``password: $NATS_PASSWORD_<ROLE>``), and nats-server parses
that value as config. Many passwords from `podpost nats-config --format secret`, each
Secret's four set as the variables of one server running the rendered config: every
server starts and every role logs in with exactly the string the Secret holds."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import nats
import nats.errors
import pytest
import yaml
from typer.testing import CliRunner

from podpost import cli, natsconfig, natsserver
from schemas import names

SECRETS = 50
"""Secrets generated, four passwords each: 200 passwords. The old generator
(``token_urlsafe``) made 2.26% that nats-server misreads: 200 would all pass 1% of runs."""
AT_ONCE = 8
"""Servers started at the same time (no JetStream: auth is all that is tested)."""
BUS = names.Bus(prefix="podpost")


def _generate(runner: CliRunner, count: int) -> list[dict[str, str]]:
    out = []
    for _ in range(count):
        result = runner.invoke(cli.app, ["nats-config", "--format", "secret"])
        assert result.exit_code == 0, result.output
        data = yaml.safe_load(result.output)["stringData"]
        out.append({role: data[role] for role in natsconfig.ROLES})
    return out


def _conf(runner: CliRunner, path: Path) -> Path:
    """`podpost nats-config` with no password given: every role's reads its variable."""
    result = runner.invoke(cli.app, ["nats-config"],
                           env={natsconfig.password_variable(r): None for r in natsconfig.ROLES})
    assert result.exit_code == 0, result.output
    assert "password: $NATS_PASSWORD_INGRESS," in result.output
    path.write_text(result.output)
    return path


async def _try(conf: Path, passwords: Mapping[str, str]) -> str | None:
    """Start a server with these passwords in its environment and log in as each role;
    None if all went well, else what failed (the server's last words)."""
    env = dict(os.environ)
    env.update({natsconfig.password_variable(r): p for r, p in passwords.items()})
    proc = await asyncio.create_subprocess_exec(
        natsserver.binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", "-1", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    log: list[bytes] = []
    port = None
    try:
        async with asyncio.timeout(10):
            while b"Server is ready" not in (line := await proc.stderr.readline()):
                if not line:
                    return f"{passwords}: exited: {b''.join(log[-3:]).decode()}"
                log.append(line)
                if b"Listening for client connections on" in line:
                    port = int(line.rsplit(b":", 1)[1])
        for role, password in passwords.items():
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}",
                                        user=names.user_name(BUS, role), password=password,
                                        allow_reconnect=False, connect_timeout=5,
                                        max_reconnect_attempts=0)
            except nats.errors.Error as exc:
                return f"{role} {password!r}: login refused: {exc}"
            await nc.close()
        return None
    finally:
        await natsserver.terminate(proc, 5)
        await proc.stderr.read()


async def _try_all(conf: Path, batches: list[dict[str, str]]) -> list[str]:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(passwords: dict[str, str]) -> str | None:
        async with gate:
            return await _try(conf, passwords)

    results = await asyncio.gather(*(one(b) for b in batches))
    return [r for r in results if r is not None]


async def test_every_generated_password_starts_nats_and_logs_in(tmp_path: Path) -> None:
    """200 passwords of 50 generated Secrets: each Secret's four, as the environment of a
    nats-server running the generated config, start it and log in as their role."""
    runner = CliRunner()
    batches = _generate(runner, SECRETS)
    assert len({p for b in batches for p in b.values()}) == SECRETS * len(natsconfig.ROLES)
    failures = await _try_all(_conf(runner, tmp_path / "auth.conf"), batches)
    assert failures == []


@pytest.mark.parametrize("bad", ["-Nq3x", "12-3abc", "2020-01-01x", "true", "1234"])
async def test_a_password_nats_misreads_is_caught_here_and_refused_by_the_generator(
    tmp_path: Path, bad: str,
) -> None:
    """The shapes nats-server misreads from its environment do fail this harness (so the
    test above can fail), and `--format secret` refuses them as a given password."""
    runner = CliRunner()
    conf = _conf(runner, tmp_path / "auth.conf")
    passwords = {role: natsconfig.new_password() for role in natsconfig.ROLES}
    passwords["dispatcher"] = bad
    assert len(await _try_all(conf, [passwords])) == 1
    refused = runner.invoke(cli.app, ["nats-config", "--format", "secret",
                                      "--dispatcher-password", bad])
    assert refused.exit_code == 2
    assert "dispatcher password would not read back" in refused.output
