"""The generated per-role NATS users against a real nats-server: each role is refused what
it must not do (the server says so, precisely), and the real roles still relay a mail
end to end, each connected as its own user."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from ingress.rules import routing
from loadkit import inprocess
from loadkit import upstream as upstream_mod
from reconciler import main as reconciler_main
from reconciler import publishing
from reconciler.rules import building
from runtime import bus, policies, settings
from schemas import events, names, snapshot
from tests.support import dispatching as d
from tests.support import ingress as ingress_support
from tests.support.secured import BUS, Secured

CRED_KEY = "mail__relay-login"
DENY_WAIT_S = 0.5
"""How long a refused request waits: the server drops it, so the client times out."""


class Raw(msgspec.Struct):
    """A bare nats-py connection as one role, recording the server's permission errors."""

    nc: Client
    errors: list[str]

    @property
    def js(self) -> Any:
        return self.nc.jetstream(timeout=DENY_WAIT_S)

    async def refused(self, action: Callable[[], Awaitable[object]], violation: str) -> None:
        """``action`` gets no answer, and the server reports exactly this violation
        (nats-py hands the server's ``-ERR`` line to ``error_cb`` lower-cased)."""
        self.errors.clear()
        with pytest.raises(nats.errors.TimeoutError):
            await action()
        await self.nc.flush(timeout=5)
        assert self.errors == [f"nats: permissions violation for {violation}".lower()]


@contextlib.asynccontextmanager
async def raw(secured: Secured, role: str) -> AsyncIterator[Raw]:
    seen: list[str] = []

    async def on_error(exc: Exception) -> None:
        seen.append(str(exc))

    nc = await nats.connect(
        secured.server.url, user=names.user_name(BUS, role),
        password=secured.passwords[role], error_cb=on_error, allow_reconnect=False,
        inbox_prefix=names.inbox_prefix(BUS, role))
    try:
        yield Raw(nc=nc, errors=seen)
    finally:
        await nc.close()


async def _owner_setup(secured: Secured) -> bus.Conn:
    """What the reconciler does first: create the bus, then write POLICY and CREDENTIALS."""
    conn = await bus.open_connection(secured.settings("reconciler"), "reconciler", attempts=1)
    await bus.ensure(conn, names.Retention(), 1)
    creds = await bus.credentials_kv(conn)
    await creds.put(CRED_KEY, msgspec.json.encode(
        snapshot.Credentials(username="robot", password="s3cret")))
    policy = await bus.policy_kv(conn)
    await policy.put(BUS.snapshot_key, snapshot.snapshot_encoder.encode(
        inprocess.SNAPSHOT))
    return conn


async def test_ingress_publishes_mail_and_reads_policy_but_never_credentials(
    secured: Secured,
) -> None:
    """Ingress may queue mail and read the snapshot; every way to read CREDENTIALS (a
    get, a consumer, a subscription to its subjects, another role's inbox) is refused."""
    owner = await _owner_setup(secured)
    cred = BUS.credentials_bucket
    try:
        async with raw(secured, "ingress") as ing:
            ack = await ing.js.publish(BUS.mail_subject("mail/relay", "apps/open"), b"x")
            assert ack.stream == BUS.mail_stream
            policy = await ing.js.key_value(BUS.policy_bucket)
            assert (await policy.get(BUS.snapshot_key)).value is not None

            creds = await ing.js.key_value(cred)  # stream info: metadata, allowed for ensure
            await ing.refused(lambda: creds.get(CRED_KEY),
                              f'Publish to "$JS.API.STREAM.MSG.GET.KV_{cred}"')
            await ing.refused(
                lambda: ing.js.get_msg(f"KV_{cred}", subject=f"$KV.{cred}.{CRED_KEY}",
                                       direct=True),
                f'Publish to "$JS.API.DIRECT.GET.KV_{cred}.$KV.{cred}.{CRED_KEY}"')
            await ing.refused(
                lambda: ing.js.add_consumer(f"KV_{cred}", deliver_subject="steal"),
                f'Publish to "$JS.API.CONSUMER.CREATE.KV_{cred}"')
            await ing.refused(lambda: creds.put(CRED_KEY, b"{}"),
                              f'Publish to "$KV.{cred}.{CRED_KEY}"')
            await ing.refused(lambda: policy.put(BUS.snapshot_key, b"{}"),
                              f'Publish to "$KV.{BUS.policy_bucket}.{BUS.snapshot_key}"')
            await ing.refused(
                lambda: ing.js.add_stream(name="MINE", subjects=["mine.>"]),
                'Publish to "$JS.API.STREAM.CREATE.MINE"')

            # Subscriptions: the live puts of the bucket, and everyone's inboxes.
            for subject in (f"$KV.{cred}.>", "_INBOX.>", names.inbox_prefix(
                    BUS, "dispatcher") + ".>"):
                got: list[bytes] = []

                async def keep(msg: Any, got: list[bytes] = got) -> None:
                    got.append(msg.data)

                ing.errors.clear()
                await ing.nc.subscribe(subject, cb=keep)
                # flush() sends its PING ahead of a still-buffered SUB: wait for the -ERR.
                await d.eventually(lambda: bool(ing.errors), timeout_s=5)
                await ing.nc.flush(timeout=5)
                assert ing.errors == [
                    f'nats: permissions violation for subscription to "{subject}"'.lower()]
                await (await bus.credentials_kv(owner)).put(CRED_KEY, b"rotated")
                await ing.nc.flush(timeout=5)
                assert got == []
        # The server logs each refusal too (the end-to-end test relies on that).
        logged = b"".join(secured.server.log_lines).lower()
        assert f'"$js.api.stream.msg.get.kv_{cred}"'.lower().encode() in logged
        assert b"violation" in logged
    finally:
        await owner.nc.close()


async def test_dispatcher_reads_credentials_but_cannot_write_policy_or_credentials(
    secured: Secured,
) -> None:
    """The dispatcher reads logins and the snapshot; writing either bucket, or changing
    the bus layout, is refused. The reconciler wrote both (in the setup)."""
    owner = await _owner_setup(secured)
    cred, pol = BUS.credentials_bucket, BUS.policy_bucket
    try:
        async with raw(secured, "dispatcher") as disp:
            creds = await disp.js.key_value(cred)
            entry = await creds.get(CRED_KEY)
            assert msgspec.json.decode(entry.value, type=snapshot.Credentials).username == "robot"
            policy = await disp.js.key_value(pol)
            assert (await policy.get(BUS.snapshot_key)).value is not None

            await disp.refused(lambda: creds.put(CRED_KEY, b"{}"),
                               f'Publish to "$KV.{cred}.{CRED_KEY}"')
            await disp.refused(lambda: creds.delete(CRED_KEY),
                               f'Publish to "$KV.{cred}.{CRED_KEY}"')
            await disp.refused(lambda: policy.put(BUS.snapshot_key, b"{}"),
                               f'Publish to "$KV.{pol}.{BUS.snapshot_key}"')
            info = await disp.js.stream_info(BUS.mail_stream)
            info.config.max_msgs = 1
            await disp.refused(lambda: disp.js.update_stream(info.config),
                               f'Publish to "$JS.API.STREAM.UPDATE.{BUS.mail_stream}"')
            await disp.refused(lambda: disp.js.delete_stream(BUS.mail_stream),
                               f'Publish to "$JS.API.STREAM.DELETE.{BUS.mail_stream}"')

        # The owner's writes went through: the values are still the reconciler's.
        creds_kv = await bus.credentials_kv(owner)
        stored = (await creds_kv.get(CRED_KEY)).value
        assert stored is not None
        assert msgspec.json.decode(stored, type=snapshot.Credentials).password == "s3cret"
    finally:
        await owner.nc.close()


async def test_the_admin_steers_the_queue_and_dispatchers_only_suspend(
    secured: Secured,
) -> None:
    """The operator (admin) writes the CONTROL bucket; a dispatcher reads and watches it
    (the change arrives) and may write and delete suspensions (a reply rule's), but
    writing a hold or a move is refused, and the ingress may write nothing."""
    owner = await _owner_setup(secured)
    ctl = BUS.control_bucket
    key = names.suspend_key("mail/relay")
    admin = await bus.open_connection(secured.settings("admin"), "admin", attempts=1)
    try:
        async with raw(secured, "dispatcher") as disp:
            kv = await disp.js.key_value(ctl)
            watcher = await kv.watchall()
            assert await watcher.updates(timeout=5) is None  # the (empty) replay is done
            await (await bus.control_kv(admin)).put(key, b'{"upstream": "mail/relay"}')
            entry = await watcher.updates(timeout=5)
            assert (entry.key, entry.value) == (key, b'{"upstream": "mail/relay"}')
            await watcher.stop()
            assert (await kv.get(key)).value == entry.value
            await kv.put(key, b"{}")
            assert (await kv.get(key)).value == b"{}"
            await kv.delete(key)
            for other in (names.hold_key("m1"), names.moving_key(7)):
                await disp.refused(lambda k=other: kv.put(k, b"{}"),
                                   f'Publish to "$KV.{ctl}.{other}"')
        async with raw(secured, "ingress") as ing:
            await ing.refused(lambda: _put(ing, ctl), f'Publish to "$KV.{ctl}.k"')
    finally:
        await admin.nc.close()
        await owner.nc.close()


async def test_the_reconciler_writes_both_buckets_but_sends_no_mail(secured: Secured) -> None:
    """The reconciler owns POLICY and CREDENTIALS, and nothing of the mail path."""
    owner = await _owner_setup(secured)
    await owner.nc.close()
    async with raw(secured, "reconciler") as rec:
        for bucket, key in ((BUS.policy_bucket, BUS.snapshot_key),
                            (BUS.credentials_bucket, CRED_KEY)):
            kv = await rec.js.key_value(bucket)
            revision = await kv.put(key, b"new")
            assert (await kv.get(key)).revision == revision
        await rec.refused(lambda: rec.js.publish(BUS.mail_subject("mail/relay", "apps/o"), b"x"),
                          f'Publish to "{BUS.mail_subject("mail/relay", "apps/o")}"')
        await rec.refused(lambda: _put(rec, BUS.attempts_bucket),
                          f'Publish to "$KV.{BUS.attempts_bucket}.k"')


async def _put(rec: Raw, bucket: str) -> object:
    kv = await rec.js.key_value(bucket)
    return await kv.put("k", b"v")


async def test_a_wrong_password_is_refused(secured: Secured) -> None:
    """A user must know its own password: the ingress name with the admin's fails."""
    nc = Client()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nc.connect(secured.server.url, user=names.user_name(BUS, "ingress"),
                             password=secured.passwords["admin"], allow_reconnect=False,
                             max_reconnect_attempts=0, connect_timeout=2)
    finally:
        await nc.close()


POLICIES = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {{name: local, namespace: apps, labels: {{app: web}}}}
spec: {{cidrs: ["127.0.0.0/8"]}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: relay, namespace: mail}}
spec: {{server: 127.0.0.1, port: {port}, connect: plain}}
---
apiVersion: v1
kind: Secret
metadata: {{name: login, namespace: mail, annotations: {{podpost.dev/allowed-namespaces: apps}}}}
stringData: {{username: robot, password: {password}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: web, namespace: apps}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ratelimiting: {{maximum: 100, period: minute}}
  sink:
    smtp:
      server: {{name: relay, namespace: mail}}
      credentials: {{name: login, namespace: mail}}
"""


@contextlib.asynccontextmanager
async def _reconciler(cfg: settings.Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler_main.serve(cfg, stop))
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


async def test_each_real_role_does_its_job_as_its_own_user(
    secured: Secured, tmp_path: Path
) -> None:
    """The reconciler (file source) creates the bus and publishes policy and login, the
    ingress queues a mail whose body goes to the object store, the dispatcher takes a
    rate-limit token, logs in upstream with the login, delivers and deletes the body:
    each connected as its own user, and the server logs no permission violation."""
    login = secrets.token_urlsafe(12)
    handler = upstream_mod.AuthHandler(users={"robot": login})
    up = await upstream_mod.start(handler, auth_require_tls=False,
                                  authenticator=handler.authenticate)
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(POLICIES.format(port=up.address[1], password=login))
    body = d.BODY + b"0123456789abcdef\r\n" * 512  # 9 KiB, over the inline limit below
    admin = await bus.open_connection(secured.settings("admin"), "admin", attempts=1)
    try:
        rec_cfg = settings.Settings(nats=secured.settings("reconciler"),
                                    reconciler=settings.ReconcilerSettings(
                                        source="file", file=str(policy_file),
                                        poll_interval_s=0.05, debounce_s=0.05))
        async with _reconciler(rec_cfg):
            await d.eventually(lambda: _has_snapshot(admin))
            ing_cfg = inprocess.make_settings(secured.settings("ingress"),
                                              inline_limit=1024)
            async with (inprocess.running(ing_cfg) as ing,
                        d.recording_events(admin) as seen,
                        d.dispatcher(d.config(secured.settings("dispatcher")))):
                reply = await ingress_support.send(ing, "app@example.org",
                                                   ["you@example.org"], body)
                assert reply.startswith("2.0.0 queued as ")
                received = await handler.wait_for(1)
                await d.eventually(lambda: d.drained(admin))
                await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
                mail_id = reply.removeprefix("2.0.0 queued as ").strip()
                await d.eventually(lambda: _body_gone(admin, mail_id))
                bodies = await admin.js.stream_info(names.obj_stream(BUS.bodies_bucket))
                assert bodies.state.last_seq > 0  # the body was stored, then deleted
                rates = await admin.js.stream_info(names.kv_stream(
                    BUS.rates_bucket))
                assert rates.state.last_seq > 0  # the policy's rate limit was counted
        assert received[0].login == "robot"
        assert received[0].data.endswith(b"0123456789abcdef\r\n" * 512)
        assert [events.kind_of(e) for e in seen if e.mail_id == mail_id][:1] == ["accepted"]
    finally:
        await admin.nc.close()
        await up.close()
    violations = [line for line in secured.server.log_lines
                  if b"violation" in line.lower()]
    assert violations == []


async def _has_snapshot(conn: bus.Conn) -> bool:
    try:
        kv = await bus.policy_kv(conn)  # the reconciler may not have created it yet
        await kv.get(conn.names.snapshot_key)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return False
    return True


async def _body_gone(conn: bus.Conn, name: str) -> bool:
    store = await bus.bodies(conn)
    try:
        await store.get_info(name)
    except nats.js.errors.NotFoundError:
        return True
    return False


async def test_the_reconciler_writes_routes_and_the_ingress_reads_them_as_their_users(
    secured: Secured,
) -> None:
    """The reconciler's user publishes the ROUTES bucket (and compares it, reading it);
    the ingress's user keeps a copy of it, and may not write it."""
    owner = await _owner_setup(secured)
    try:
        snap = snapshot.PolicySnapshot(generated_at=inprocess.SNAPSHOT.generated_at,
                                       policies=inprocess.SNAPSHOT.policies,
                                       routes_bucket=True)
        result = building.Build(snapshot=snap, credentials={}, conditions={})
        route = snapshot.Route(network="10.0.0.1/32", policy="apps/open", source="pod:apps/a")
        marks = publishing.Marks()
        for _ in range(2):  # the second compares the bucket it left (a stale mark)
            marks.routes = None
            await publishing.publish(owner, result, marks=marks, routes=publishing.RouteChanges(
                table={route.network: route}))
        ing_conn = await bus.open_connection(secured.settings("ingress"), "ingress",
                                             attempts=1)
        try:
            table = routing.Table()
            copy = policies.RouteMirror(table)
            assert await copy.refresh(ing_conn) == 1 and copy.loaded and len(table) == 1
        finally:
            await ing_conn.nc.close()
        async with raw(secured, "ingress") as ing:
            routes = await ing.js.key_value(BUS.routes_bucket)
            await ing.refused(lambda: routes.put("10.0.0.2/32", b"{}"),
                              f'Publish to "$KV.{BUS.routes_bucket}.10.0.0.2/32"')
    finally:
        await owner.nc.close()
