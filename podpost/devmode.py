"""``podpost dev``: an embedded nats-server and every role in one process.

The store lives under ``.podpost/`` in the current directory (``--state-dir`` moves it), so
queued mail survives a restart of ``podpost dev`` from there. The policies come from the dev
policy shipped in the package unless ``--policies`` names another file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import structlog
from rich.console import Console

from podpost import natsserver, process
from runtime import logs
from runtime import settings as settings_mod

log = structlog.get_logger("podpost.dev")


async def _run(cfg: settings_mod.Settings, nats_port: int, state_dir: Path) -> None:
    from dispatcher import main as dispatcher_main
    from ingress import main as ingress_main
    from reconciler import main as reconciler_main

    async with natsserver.running(state_dir / "nats", port=nats_port) as server:
        cfg = msgspec.structs.replace(
            cfg, nats=msgspec.structs.replace(cfg.nats, url=server.url)
        )
        Console(stderr=True).print(
            f"[bold]podpost dev[/bold]: SMTP on [cyan]{cfg.ingress.host}:{cfg.ingress.port}"
            f"[/cyan], NATS on [cyan]{server.url}[/cyan], policies from "
            f"[cyan]{cfg.reconciler.file}[/cyan]. Ctrl-C stops it.\n"
            f"  see caught mail: [green]PODPOST_NATS_URL={server.url} podpost caught list"
            "[/green]"
        )
        await process.supervise(cfg, {
            "reconciler": reconciler_main.serve,
            "ingress": ingress_main.serve,
            "dispatcher": dispatcher_main.serve,
        })


def run(cfg: settings_mod.Settings, *, nats_port: int, state_dir: Path) -> None:
    logs.configure(cfg.log)
    asyncio.run(_run(cfg, nats_port, state_dir))
