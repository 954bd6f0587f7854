"""How long ``podpost queue list`` takes over a large queue.

Starts a nats-server, queues ``--mails`` envelopes (default 10,000) over two upstreams and
several policies, gives a tenth of them an attempt record (deferred mail) and holds a
few, with no dispatcher running (so the queue stays as it is), then times:

- ``read``: `admin.queueing.read` in this process (the MAIL walk by sequence, the
  ATTEMPTS and CONTROL scans, the rows), best of ``--rounds``;
- ``cli``: the real ``podpost queue list --json`` end to end (process start, imports,
  read, JSON on stdout), best of ``--rounds``.

    .venv/bin/python bench/queue_list.py --mails 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from admin import queueing
from podpost import natsserver
from runtime import bus, settings
from schemas import control, mail, names

PODPOST = str(Path(sys.executable).parent / "podpost")
BODY = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: bench\r\n\r\nhello\r\n"


async def fill(conn: bus.Conn, count: int) -> None:
    """``count`` envelopes, published in pipelined batches; every tenth with a record."""
    attempts = await bus.attempts_kv(conn)
    ctl = await bus.control_kv(conn)
    now = datetime.now(UTC)
    batch: list[asyncio.Future[object]] = []
    for i in range(count):
        upstream = "mail/a" if i % 2 else "mail/b"
        env = mail.Envelope(
            id=uuid.uuid4().hex, policy=f"apps/p{i % 5}", upstream=upstream,
            mail_from="a@example.org", rcpt_to=[f"u{i}@example.org"],
            received_at=now - timedelta(seconds=count - i), size=len(BODY), body=BODY)
        batch.append(asyncio.ensure_future(conn.js.publish(
            conn.names.mail_subject(upstream, env.policy), mail.envelope_encoder.encode(env),
            headers={"Nats-Msg-Id": env.id})))
        if i % 10 == 0:
            record = mail.AttemptRecord(attempts=1, policy=env.policy, upstream=upstream,
                                        next_attempt_at=now + timedelta(minutes=5),
                                        last_code=451, last_reply="later")
            batch.append(asyncio.ensure_future(
                attempts.put(env.id, msgspec.json.encode(record))))
        if i % 1000 == 0:
            batch.append(asyncio.ensure_future(ctl.put(names.hold_key(env.id),
                control.encoder.encode(control.Hold(mail_id=env.id, since=now)))))
        if len(batch) >= 500:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)


async def main(mails: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with natsserver.running(Path(tmp) / "nats") as server:
            cfg = settings.NatsSettings(url=server.url)
            async with bus.connect(cfg, "bench", attempts=3) as conn:
                started = time.perf_counter()
                await fill(conn, mails)
                print(f"queued {mails} mails in {time.perf_counter() - started:.1f} s")
                best = float("inf")
                for _ in range(rounds):
                    started = time.perf_counter()
                    queue = await queueing.read(conn, datetime.now(UTC))
                    best = min(best, time.perf_counter() - started)
                assert len(queue.found) == mails, len(queue.found)
                states: dict[str, int] = {}
                for queued in queue.found:
                    states[queued.item.state] = states.get(queued.item.state, 0) + 1
                print(f"read: {mails} rows in {best:.2f} s (best of {rounds}); {states}")
                env = {k: v for k, v in os.environ.items() if not k.startswith("PODPOST_")}
                env["PODPOST_NATS_URL"] = server.url
                best = float("inf")
                size = 0
                for _ in range(rounds):
                    started = time.perf_counter()
                    proc = await asyncio.create_subprocess_exec(
                        PODPOST, "queue", "list", "--json", env=env,
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                    out, err = await proc.communicate()
                    best = min(best, time.perf_counter() - started)
                    assert proc.returncode == 0, err.decode()
                    size = len(out)
                print(f"cli: podpost queue list --json over {mails} mails in {best:.2f} s "
                      f"(best of {rounds}, {size / 1e6:.1f} MB of JSON)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.mails, args.rounds))
