"""The reconciler's file source against a real nats-server: the file's policies reach the
POLICY bucket, edits are republished, bad edits are refused, logins come and go."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import structlog

from reconciler import filesource, main, publishing
from reconciler.rules import building
from reconciler.rules import inputs as inputs_mod
from runtime import bus, settings
from schemas import snapshot

PASSWORD = "planted-Pa55word-never-logged"

STATIC = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {name: local, namespace: dev, labels: {app: local}}
spec: {cidrs: ["127.0.0.0/8", "::1/128"]}
"""
CATCHER_POLICY = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {name: app, namespace: dev}
spec:
  podSelector: {matchLabels: {app: local}}
  sink: {catcher: {}}
"""
SERVER = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {name: relay, namespace: dev}
spec: {server: 127.0.0.1, port: 2525, connect: plain}
"""
SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: login, namespace: dev}}
stringData: {{username: robot, password: {PASSWORD}}}
"""
SMTP_POLICY = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {name: app, namespace: dev}
spec:
  podSelector: {matchLabels: {app: local}}
  sink:
    smtp:
      server: {name: relay}
      credentials: {name: login}
"""


def write(path: Path, *docs: str) -> None:
    """Write atomically, as editors do, so the poller never sees half a file."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text("---\n".join(docs))
    scratch.replace(path)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    write(path, STATIC, CATCHER_POLICY)
    return path


def _settings(nats_settings: settings.NatsSettings, path: Path, **reconciler: Any
              ) -> settings.Settings:
    options: dict[str, Any] = {"poll_interval_s": 0.05, "debounce_s": 0.05, **reconciler}
    return settings.Settings(
        nats=nats_settings,
        reconciler=settings.ReconcilerSettings(source="file", file=str(path), **options),
    )


@contextlib.asynccontextmanager
async def running(cfg: settings.Settings) -> AsyncIterator[None]:
    """The reconciler role for the life of the block; stopped and awaited on exit."""
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(main.serve(cfg, stop))
        try:
            yield
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await task


async def stored(conn: bus.Conn) -> tuple[snapshot.PolicySnapshot, int] | None:
    kv = await bus.policy_kv(conn)
    try:
        entry = await kv.get(conn.names.snapshot_key)
    except nats.js.errors.KeyNotFoundError:
        return None
    assert entry.value is not None and entry.revision is not None
    return snapshot.decode_snapshot(entry.value), entry.revision


async def wait_for(
    conn: bus.Conn,
    accept: Callable[[snapshot.PolicySnapshot, int], bool],
    timeout_s: float = 3.0,
) -> tuple[snapshot.PolicySnapshot, int]:
    """Poll the POLICY bucket until a snapshot is accepted (bounded in time)."""
    async with asyncio.timeout(timeout_s):
        while True:
            found = await stored(conn)
            if found is not None and accept(*found):
                return found
            await asyncio.sleep(0.02)


def count(logs: list[MutableMapping[str, Any]], event: str) -> int:
    return sum(e["event"] == event for e in logs)


async def until(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait for ``check`` to hold, polling (bounded in count and so in time)."""
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout_s} s")


async def credential_keys(conn: bus.Conn) -> dict[str, snapshot.Credentials]:
    kv = await bus.credentials_kv(conn)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    out = {}
    for key in keys:
        entry = await kv.get(key)
        assert entry.value is not None
        out[key] = snapshot.credentials_decoder.decode(entry.value)
    return out


async def test_snapshot_from_the_file_is_published_with_a_revision(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """On start the file's policies and routes are in the POLICY bucket, and the publish
    is logged with its revision."""
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(nats_settings, policy_file)):
            snap, revision = await wait_for(conn, lambda s, r: True)
    assert revision >= 1
    assert snap.source == f"file:{policy_file}"
    assert {r.network: r.policy for r in snap.routes} == {
        "127.0.0.0/8": "dev/app", "::1/128": "dev/app"}
    assert snap.policies["dev/app"].upstream == "_/catcher"
    published = [e for e in logs if e["event"] == "reconciler.snapshot_published"]
    assert [(e["revision"], e["policies"], e["routes"]) for e in published] == [(revision, 1, 2)]


async def test_an_edit_is_republished_within_two_seconds(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """With the default poll interval and debounce, an edited file is live within ~2 s,
    under a new revision."""
    cfg = _settings(nats_settings, policy_file, poll_interval_s=1.0, debounce_s=0.2)
    async with running(cfg):
        _, first = await wait_for(conn, lambda s, r: True)
        write(policy_file, STATIC.replace("127.0.0.0/8", "10.9.0.0/16"), CATCHER_POLICY)
        started = time.monotonic()
        _, second = await wait_for(
            conn, lambda s, r: any(x.network == "10.9.0.0/16" for x in s.routes), 2.5)
        assert time.monotonic() - started < 2.5
    assert second > first


async def test_an_unchanged_rewrite_is_not_republished(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """Rewriting the same policies (new mtime, same content) keeps the revision."""
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(nats_settings, policy_file)):
            _, first = await wait_for(conn, lambda s, r: True)
            write(policy_file, STATIC, "# a comment changes the bytes\n" + CATCHER_POLICY)
            await until(lambda: count(logs, "reconciler.snapshot_built") == 2)
            await asyncio.sleep(0.2)
            found = await stored(conn)
    assert found is not None and found[1] == first
    assert sum(e["event"] == "reconciler.snapshot_published" for e in logs) == 1


async def test_invalid_file_keeps_the_last_snapshot_and_logs_why(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """Broken YAML or an unknown field publishes nothing and logs source_invalid naming
    the problem; fixing the file publishes again."""
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(nats_settings, policy_file)):
            good, revision = await wait_for(conn, lambda s, r: True)

            write(policy_file, STATIC, "kind: [unclosed\n")
            await until(lambda: count(logs, "reconciler.source_invalid") == 1)
            write(policy_file, STATIC, CATCHER_POLICY.replace("podSelector", "podSelectr"))
            await until(lambda: count(logs, "reconciler.source_invalid") == 2)
            await asyncio.sleep(0.2)
            assert await stored(conn) == (good, revision)

            write(policy_file, STATIC.replace("::1/128", "fd00::/8"), CATCHER_POLICY)
            await wait_for(conn, lambda s, r: r > revision)
    errors = [e for e in logs if e["event"] == "reconciler.source_invalid"]
    assert errors[0]["error"].startswith(f"{policy_file}: invalid YAML at line 7")
    assert errors[1]["error"] == (
        f'{policy_file}: document 2 (EmailPolicy dev/app): unknown field "podSelectr" at spec')
    assert all(e["log_level"] == "error" for e in errors)


async def test_credentials_follow_the_references_and_never_reach_logs(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """A referenced Secret's login lands in the CREDENTIALS bucket, not in the snapshot;
    it is deleted when no policy references it; no log line carries the password."""
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(nats_settings, policy_file)):
            write(policy_file, STATIC, SERVER, SECRET, SMTP_POLICY)
            snap, revision = await wait_for(
                conn, lambda s, r: "dev/app" in s.policies
                and s.policies["dev/app"].credentials is not None)
            assert await credential_keys(conn) == {
                "dev__login": snapshot.Credentials(username="robot", password=PASSWORD)}
            assert PASSWORD.encode() not in snapshot.snapshot_encoder.encode(snap)

            write(policy_file, STATIC, SERVER, SECRET, CATCHER_POLICY)
            await wait_for(conn, lambda s, r: r > revision)
            assert await credential_keys(conn) == {}
    assert logs, "the reconciler logged nothing at all"
    assert PASSWORD not in repr(logs)
    events = {e["event"] for e in logs}
    assert {"reconciler.snapshot_published", "reconciler.credentials_published"} <= events


async def test_publish_compares_with_the_buckets_not_with_memory(conn: bus.Conn) -> None:
    """A fresh publisher (a restart, a new leader) republishes nothing unchanged, but a
    rotated password is written although the snapshot stays the same."""
    def result(password: str) -> building.Build:
        snap = building.build(inputs_mod.Inputs(), now=datetime.now(UTC), source="test").snapshot
        return building.Build(snapshot=snap, conditions={}, credentials={
            "dev__login": snapshot.Credentials(username="robot", password=password)})

    first = await publishing.publish(conn, result("one"))
    again = await publishing.publish(conn, result("one"))
    rotated = await publishing.publish(conn, result("two"))
    assert (first.snapshot_changed, again.snapshot_changed, rotated.snapshot_changed) == (
        True, False, False)
    assert first.revision == again.revision == rotated.revision
    assert (first.credentials_put, again.credentials_put, rotated.credentials_put) == (
        ["dev__login"], [], ["dev__login"])
    assert (await credential_keys(conn))["dev__login"].password == "two"


async def test_lost_state_is_restored_from_the_last_good_build(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """A snapshot or login that vanished from the buckets (a broker that lost its store)
    is written again on the periodic recheck, without a file change."""
    write(policy_file, STATIC, SERVER, SECRET, SMTP_POLICY)
    cfg = _settings(nats_settings, policy_file)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(filesource.run(conn, cfg.reconciler, stop, recheck_s=0.2))
        try:
            _, first = await wait_for(conn, lambda s, r: True)
            await (await bus.policy_kv(conn)).purge(conn.names.snapshot_key)
            await (await bus.credentials_kv(conn)).purge("dev__login")
            snap, _ = await wait_for(conn, lambda s, r: r > first)
            assert "dev/app" in snap.policies
            # logins are written before the snapshot that names them
            assert set(await credential_keys(conn)) == {"dev__login"}
        finally:
            stop.set()
        async with asyncio.timeout(5):
            await task


async def test_rapid_writes_fold_into_one_build(
    conn: bus.Conn, nats_settings: settings.NatsSettings, policy_file: Path
) -> None:
    """Writes within the debounce window are built once, from the last of them."""
    cfg = _settings(nats_settings, policy_file, debounce_s=0.3)
    with structlog.testing.capture_logs() as logs:
        async with running(cfg):
            _, first = await wait_for(conn, lambda s, r: True)
            for network in ("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"):
                write(policy_file, STATIC.replace("::1/128", network), CATCHER_POLICY)
                await asyncio.sleep(0.05)
            snap, _ = await wait_for(conn, lambda s, r: r > first)
            await asyncio.sleep(0.4)
    assert "10.3.0.0/16" in {r.network for r in snap.routes}
    assert count(logs, "reconciler.snapshot_built") == 2
    assert count(logs, "reconciler.snapshot_published") == 2


async def test_missing_file_is_reported_then_picked_up(
    conn: bus.Conn, nats_settings: settings.NatsSettings, tmp_path: Path
) -> None:
    """A file that does not exist yet is logged as invalid, and used once it appears."""
    path = tmp_path / "later.yaml"
    with structlog.testing.capture_logs() as logs:
        async with running(_settings(nats_settings, path)):
            await until(lambda: count(logs, "reconciler.source_invalid") == 1)
            assert await stored(conn) is None
            write(path, STATIC, CATCHER_POLICY)
            await wait_for(conn, lambda s, r: "dev/app" in s.policies)
    [invalid] = [e for e in logs if e["event"] == "reconciler.source_invalid"]
    assert invalid["error"] == f"{path}: file not found"
