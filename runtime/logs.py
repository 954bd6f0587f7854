"""Logs are events with fields: JSON lines in production, a console renderer on a TTY.

aiosmtpd (``mail.log``), nats and asyncio log through the stdlib; they go through the same
renderer so one process writes one format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

from runtime import settings as settings_mod

_encoder = msgspec.json.Encoder()


def _dumps(obj: Any, **_ignored: Any) -> str:
    """msgspec behind structlog's JSONRenderer, which passes ``default=`` we don't need."""
    try:
        return _encoder.encode(obj).decode()
    except TypeError:
        return _encoder.encode({k: str(v) for k, v in obj.items()}).decode()


def configure(cfg: settings_mod.LogSettings, *, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    out = stream or sys.stdout
    level = getattr(logging, cfg.level.upper())
    console = cfg.format == "console" or (cfg.format == "auto" and out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _bytes_to_str,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command at INFO; keep its warnings and errors only.
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING))


def _bytes_to_str(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rendered = event
    for key, value in rendered.items():
        if isinstance(value, bytes):
            rendered[key] = value.decode("utf-8", "replace")
    return rendered
