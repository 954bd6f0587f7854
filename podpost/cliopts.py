"""What every ``podpost`` command shares: one-line errors on a stderr that never wraps,
settings from ``PODPOST_*`` variables and flags, the ``--nats-url`` and ``--json`` options."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from runtime import settings as settings_mod

err = Console(stderr=True, soft_wrap=True, highlight=False)

NatsUrl = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="PODPOST_NATS_URL",
                 help="NATS server URL(s), comma-separated."),
]

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def load_settings(overrides: dict[str, Any] | None = None) -> settings_mod.Settings:
    """Settings from PODPOST_* variables and flags; a bad variable is a one-line error."""
    try:
        return settings_mod.load(os.environ, overrides)
    except settings_mod.SettingsError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def error(message: str) -> None:
    """One line on stderr: ``error: <message>`` (the message is never read as markup)."""
    err.print(f"[red]error:[/red] {escape(message)}")
