"""The embedded nats-server (``podpost dev``, the benchmarks, the tests) runs its Go
scheduler on one thread unless told otherwise: a ``GOMAXPROCS`` of the caller's wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from podpost import natsserver


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
async def test_the_server_gets_one_go_thread_unless_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str | None, expected: str,
) -> None:
    if given is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", given)
    server = natsserver.NatsServer(store_dir=tmp_path / "nats")
    await server.start()
    try:
        assert server.proc is not None
        assert _environ(server.proc.pid).get("GOMAXPROCS") == expected
    finally:
        await server.stop()
