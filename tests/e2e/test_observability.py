"""Metrics, health and logs of real ``podpost`` processes.

A reconciler on the file source, an ingress and a dispatcher run as subprocesses with
their health servers on; a real SMTP client sends through them to an in-process aiosmtpd
upstream. The test scrapes each ``/metrics`` and checks the counters against what it sent,
watches every ``/readyz`` turn 503 while the nats-server is down and 200 once it is back,
and reads the JSON logs for the ``mail_id`` of every line about a mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from loadkit import upstream as upstream_mod
from podpost import natsserver
from runtime import metrics
from tests.support import probing

UPSTREAM = "dev/relay"
POLICY = "dev/app"
ROLES = ("reconciler", "ingress", "dispatcher")


def _policies(port: int) -> str:
    return f"""\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {{name: local, namespace: dev, labels: {{app: local}}}}
spec: {{cidrs: ["127.0.0.1/32"]}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: relay, namespace: dev}}
spec: {{server: 127.0.0.1, port: {port}, connect: plain}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: app, namespace: dev}}
spec:
  podSelector: {{matchLabels: {{app: local}}}}
  sink: {{smtp: {{server: {{name: relay}}}}}}
  retry: {{minDelay: 200ms, maxDelay: 500ms, maxQueueAge: 1h}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Role:
    name: str
    health_port: int
    log_path: Path
    proc: asyncio.subprocess.Process

    def log(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _command(role: str) -> list[str]:
    beside = Path(sys.executable).parent / "podpost"
    if beside.exists():
        return [str(beside), role]
    return [sys.executable, "-m", "podpost.cli", role]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, nats_url: str, policy_file: Path, smtp_port: int
                  ) -> AsyncIterator[dict[str, Role]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    env.update(
        PODPOST_NATS_URL=nats_url, PODPOST_LOG__FORMAT="json", PODPOST_LOG__LEVEL="info",
        PODPOST_GRACE_S="2", PODPOST_HEALTH__HOST="127.0.0.1",
        PODPOST_HEALTH__SAMPLE_INTERVAL_S="0.2",
        PODPOST_RECONCILER__FILE=str(policy_file), PODPOST_RECONCILER__POLL_INTERVAL_S="0.1",
        PODPOST_INGRESS__HOST="127.0.0.1", PODPOST_INGRESS__PORT=str(smtp_port),
        PODPOST_INGRESS__HOSTNAME="mx.podpost.test", PODPOST_INGRESS__PUBLISH_TIMEOUT_S="1",
        PODPOST_DISPATCHER__DISCOVERY_INTERVAL_S="0.2",
    )
    roles: dict[str, Role] = {}
    try:
        for name in ROLES:
            port = _free_port()
            log_path = tmp_path / f"{name}.log"
            with log_path.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *_command(name), env={**env, "PODPOST_HEALTH__PORT": str(port)},
                    stdout=out, stderr=asyncio.subprocess.STDOUT)
            roles[name] = Role(name, port, log_path, proc)
        yield roles
    finally:
        await asyncio.gather(*(role.stop() for role in roles.values()))


def _series(name: str, **labels: str) -> str:
    return metrics.series(name, labels.items())


async def _send(port: int, rcpt: str, subject: str, source: str = "127.0.0.1") -> str:
    data = (f"From: app@example.org\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
            f"body of {subject}\r\n").encode()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0),
                             local_hostname="client.test", start_tls=False, timeout=10)
    async with client:
        _, reply = await client.sendmail("app@example.org", [rcpt], data)
    return reply


async def _all_ready(roles: dict[str, Role], status: int) -> bool:
    answers = await asyncio.gather(
        *(probing.status_is(role.health_port, "/readyz", status) for role in roles.values()))
    return all(answers)


async def test_counters_readiness_and_mail_ids_of_real_processes(
    tmp_path: Path, nats_server: natsserver.NatsServer, upstream: upstream_mod.Upstream
) -> None:
    """Four mails accepted (one deferred once, one dead-lettered), one client refused:
    every counter says so; /readyz follows the broker down and up; every log line about
    a mail carries its mail_id."""
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(_policies(upstream.port))
    smtp_port = _free_port()
    async with running(tmp_path, nats_server.url, policy_file, smtp_port) as roles:
        await probing.until(lambda: _all_ready(roles, 200), timeout_s=30)

        # 1. refused: 127.0.0.2 is in no StaticSource
        try:
            await _send(smtp_port, "you@example.org", "stranger", source="127.0.0.2")
            raise AssertionError("a client no policy admits was accepted")
        except aiosmtplib.SMTPSenderRefused as exc:
            assert exc.code == 550
        # 2. deferred once (the upstream answers 451 to the next DATA), then delivered
        upstream.handler.flaky = 1
        assert (await _send(smtp_port, "you@example.org", "flaky")).startswith("2.0.0 queued")
        await upstream.handler.wait_for(1, timeout_s=15)
        # 3. two delivered at once, one refused for good by the upstream (dead-lettered)
        for subject, rcpt in (("one", "a@example.org"), ("two", "b@example.org"),
                              ("dead", "fail-550@example.org")):
            assert (await _send(smtp_port, rcpt, subject)).startswith("2.0.0 queued")
        await upstream.handler.wait_for(3, timeout_s=15)

        dispatched = _series("podpost_dispatcher_dead_total", upstream=UPSTREAM,
                             policy=POLICY, fate="permanent")
        depth = _series("podpost_dispatcher_queue_depth", upstream=UPSTREAM, policy=POLICY)

        async def settled() -> bool:
            scraped = await probing.scrape(roles["dispatcher"].health_port)
            return scraped.get(dispatched) == 1.0 and scraped.get(depth) == 0.0

        await probing.until(settled, timeout_s=15)
        ingress = await probing.scrape(roles["ingress"].health_port)
        dispatcher = await probing.scrape(roles["dispatcher"].health_port)
        reconciler = await probing.scrape(roles["reconciler"].health_port)

        assert ingress[_series("podpost_ingress_accepted_total", policy=POLICY,
                               upstream=UPSTREAM)] == 4.0
        assert ingress[_series("podpost_ingress_rejected_total", reason="no_policy",
                               policy="")] == 1.0
        pair = {"upstream": UPSTREAM, "policy": POLICY}
        assert dispatcher[_series("podpost_dispatcher_delivered_total", **pair)] == 3.0
        assert dispatcher[_series("podpost_dispatcher_deferred_total", **pair)] == 1.0
        assert dispatcher[dispatched] == 1.0
        assert dispatcher[_series("podpost_dispatcher_delivery_latency_seconds_count",
                                  upstream=UPSTREAM)] == 3.0
        assert dispatcher[_series("podpost_dispatcher_consumer_pending", **pair)] == 0.0
        assert reconciler[_series("podpost_reconciler_publishes_total",
                                  outcome="changed")] == 1.0
        assert reconciler[_series("podpost_reconciler_build_duration_seconds")] > 0.0
        revisions = {
            name: scraped[_series("podpost_snapshot_revision", role=name)]
            for name, scraped in (("ingress", ingress), ("dispatcher", dispatcher),
                                  ("reconciler", reconciler))}
        assert len(set(revisions.values())) == 1 and revisions["ingress"] >= 1, revisions
        for name, scraped in (("ingress", ingress), ("dispatcher", dispatcher)):
            assert scraped[_series("podpost_snapshot_loaded", role=name)] == 1.0
            assert scraped[_series("podpost_snapshot_staleness_seconds", role=name)] < 30

        # the broker goes away: nobody is ready; it comes back: everybody is
        await nats_server.stop()
        await probing.until(lambda: _all_ready(roles, 503), timeout_s=15)
        _, reason = await probing.get(roles["ingress"].health_port, "/readyz")
        assert reason == "ingress: not connected to NATS\n"
        assert (await probing.get(roles["dispatcher"].health_port, "/healthz"))[0] == 200
        await nats_server.start()
        await probing.until(lambda: _all_ready(roles, 200), timeout_s=20)

    lines = {name: role.log() for name, role in roles.items()}
    about_a_mail = {"ingress.mail_accepted", "dispatcher.mail_delivered",
                    "dispatcher.delivery_deferred", "dispatcher.mail_dead_lettered"}
    mail_lines = [line for name in ("ingress", "dispatcher") for line in lines[name]
                  if line.get("event") in about_a_mail]
    assert len(mail_lines) == 4 + 3 + 1 + 1
    assert all(line.get("mail_id") for line in mail_lines), mail_lines
    accepted = {line["mail_id"] for line in lines["ingress"]
                if line["event"] == "ingress.mail_accepted"}
    settled_ids = {line["mail_id"] for line in lines["dispatcher"]
                   if line["event"] in ("dispatcher.mail_delivered",
                                        "dispatcher.mail_dead_lettered")}
    assert accepted == settled_ids and len(accepted) == 4
    assert [line.get("mail_id") for line in lines["ingress"]
            if line["event"] == "ingress.mail_rejected"] == [None]
    assert any(line["event"] == "health.listening" for line in lines["reconciler"])


CATCHER_POLICIES = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {name: local, namespace: dev, labels: {app: local}}
spec: {cidrs: ["127.0.0.1/32"]}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {name: app, namespace: dev}
spec:
  podSelector: {matchLabels: {app: local}}
  sink: {catcher: {}}
"""


async def test_podpost_dev_serves_one_health_server_for_every_role(tmp_path: Path) -> None:
    """``podpost dev`` runs the three roles in one process behind one port: ready once
    all are, its /metrics has each role's snapshot and counts a caught mail."""
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(CATCHER_POLICIES)
    smtp_port, health_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
    env.update(PODPOST_LOG__FORMAT="json", PODPOST_GRACE_S="2",
               PODPOST_HEALTH__HOST="127.0.0.1", PODPOST_HEALTH__PORT=str(health_port),
               PODPOST_INGRESS__HOSTNAME="mx.podpost.test",
               PODPOST_DISPATCHER__DISCOVERY_INTERVAL_S="0.2")
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *_command("dev"), "--smtp-port", str(smtp_port), "--nats-port",
            str(_free_port()), "--policies", str(policy_file), "--state-dir",
            str(tmp_path / "state"), env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
    dev = Role("dev", health_port, log_path, proc)
    try:
        await probing.until(lambda: probing.status_is(health_port, "/readyz", 200),
                            timeout_s=30)
        assert (await _send(smtp_port, "you@example.org", "caught")).startswith("2.0.0")
        caught = _series("podpost_dispatcher_delivered_total", upstream="_/catcher",
                         policy=POLICY)

        async def counted() -> bool:
            return (await probing.scrape(health_port)).get(caught) == 1.0

        await probing.until(counted, timeout_s=15)
        scraped = await probing.scrape(health_port)
        assert {role: scraped[_series("podpost_snapshot_loaded", role=role)]
                for role in ROLES} == {role: 1.0 for role in ROLES}
        assert scraped[_series("podpost_ingress_accepted_total", policy=POLICY,
                               upstream="_/catcher")] == 1.0
    finally:
        await dev.stop()
    assert dev.proc.returncode == 0, log_path.read_text()[-2000:]
    assert sum(line["event"] == "health.listening" for line in dev.log()) == 1
