"""A nats-server running the generated per-role authorization, and each role's settings."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from podpost import natsconfig, natsserver
from runtime import settings
from schemas import names

BUS = names.Bus(prefix="podpost")


class Secured(msgspec.Struct):
    server: natsserver.NatsServer
    passwords: dict[str, str]

    def settings(self, role: str) -> settings.NatsSettings:
        return settings.NatsSettings(url=self.server.url, prefix=BUS.prefix,
                                     user=names.user_name(BUS, role),
                                     password=self.passwords[role])


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Secured]:
    """The generated authorization block, fresh passwords per call."""
    passwords = {role: secrets.token_urlsafe(16) for role in natsconfig.ROLES}
    config = tmp_path / "auth.conf"
    config.write_text(natsconfig.server_config(
        BUS, {r: natsconfig.Literal(p) for r, p in passwords.items()}))
    async with natsserver.running(tmp_path / "nats", config_file=config) as server:
        yield Secured(server=server, passwords=passwords)
