"""Resilience figures: the scenarios of the crash, cluster, fuzz and idle tests at a larger
scale, each printed as one line of figures (lost, duplicated, refusals, crashes, RSS).

- ``kill-ingress``, ``kill-dispatcher``, ``kill-reconciler``, ``kill-nats``: SIGKILL that
  process a quarter into a load of ``--messages`` over ``--sessions`` parallel sessions
  (nats-server is restarted on its port and store, the others are started again);
- ``kill-ingress-large``, ``kill-dispatcher-large``, ``kill-nats-large``: the same with
  a twentieth of the messages, 300 KiB each, so every body goes through the object store;
- ``kill-cluster-node``: a 3-node loopback cluster with 3-replica streams, the MAIL
  stream's leader SIGKILLed under load;
- ``kill-cluster-leaders``: the same, then (that node back) the BODIES store's leader, with
  a 300 KiB body on every 15th message;

Every load run also reports what is on the record (``trace_mismatches``: mails whose
delivered events differ from the copies the upstream got; ``delivered_counted`` against
``received``) and the residue (``residue_left`` once drained, ``residue_after_sweep``).
- ``fuzz``: ``--fuzz-scripts`` generated scripts, each in four client modes, against an
  in-process ingress, 200 sessions at a time;
- ``idle``: ``--idle`` silent connections against an ``podpost ingress`` process: its RSS,
  a mail among them, and how long until the idle timeout closed them all.

Example (the figures of the issue)::

    .venv/bin/python bench/resilience.py --messages 10000 --sessions 100
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from loadkit import inprocess, relay, scenarios, smtpfuzz  # noqa: E402
from loadkit import upstream as upstream_mod  # noqa: E402
from podpost import natsserver  # noqa: E402
from runtime import bus, settings  # noqa: E402


async def fuzz(dir: Path, scripts: int) -> dict[str, Any]:
    async with natsserver.running(dir / "nats") as server:
        nats = settings.NatsSettings(url=server.url)
        async with bus.connect(nats, "bench", attempts=3) as conn:
            await inprocess.put_snapshot(conn)
            cfg = inprocess.make_settings(nats, idle_timeout_s=1.0, max_sessions=400,
                                          max_recipients=smtpfuzz.MAX_RECIPIENTS)
            started = time.monotonic()
            sessions = smtpfuzz.generate(scripts)
            generated_s = time.monotonic() - started
            tally = smtpfuzz.Tally(idle_timeout_s=1.0, huge_budget=200, stall_budget=500)
            with structlog.testing.capture_logs() as logs:
                async with inprocess.running(cfg) as ing:
                    rss_start = relay.rss_mib()
                    began = time.monotonic()
                    await smtpfuzz.run(ing.port, sessions, tally, 200)
                    replay_s = time.monotonic() - began
                    rss_end = relay.rss_mib()
                    left = len(smtpfuzz.session_tasks())
                    alive = not ing.task.done()
            failures = sum(1 for e in logs if e["event"] in (
                "ingress.session_failed", "ingress.command_failed"))
    return {**smtpfuzz.summary(tally), "unhandled_errors": failures, "crashed": not alive,
            "session_tasks_left": left, "generate_s": round(generated_s, 1),
            "replay_s": round(replay_s, 1), "sessions_per_s": round(len(sessions) / replay_s),
            "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_end, 1),
            "peak_rss_mib_process": round(relay.peak_rss_mib(os.getpid()), 1)}


async def idle(dir: Path, count: int, idle_timeout_s: float = 10.0) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count * 2 + 1000)), hard))
    async with natsserver.running(dir / "nats") as server:
        up = await upstream_mod.start()
        try:
            async with relay.running(
                dir / "relay", server.url, up, dispatchers=0,
                PODPOST_INGRESS__IDLE_TIMEOUT_S=str(idle_timeout_s),
                PODPOST_INGRESS__MAX_SESSIONS=str(count + 100),
            ) as running:
                await _until_queued(running.port)
                pid = running.ingress.proc.pid if running.ingress.proc else 0
                rss_before = relay.rss_mib(pid)
                gate = asyncio.Semaphore(200)

                async def connect() -> relay.Client | None:
                    async with gate:
                        return await relay.Client.open(running.port)

                started = time.monotonic()
                clients = [c for c in await asyncio.gather(*(connect() for _ in range(count)))
                           if c is not None]
                opened_s = time.monotonic() - started
                rss_open = relay.rss_mib(pid)
                began = time.monotonic()
                probe = await relay.Client.open(running.port)
                code = await probe.send(relay.message("idle-probe", 1)) if probe else 0
                mail_s = time.monotonic() - began
                if probe is not None:
                    await probe.close()

                async def closed(client: relay.Client) -> bool:
                    try:
                        async with asyncio.timeout(idle_timeout_s + 30):
                            return await client.reader.read() == b""
                    except TimeoutError:
                        return False
                    finally:
                        await client.close()

                results = await asyncio.gather(*(closed(c) for c in clients))
                closed_s = time.monotonic() - started
                return {"idle": count, "opened": len(clients), "opened_s": round(opened_s, 1),
                        "mail_code_among_idle": code, "mail_s": round(mail_s, 3),
                        "timed_out": sum(results), "all_closed_after_s": round(closed_s, 1),
                        "idle_timeout_s": idle_timeout_s,
                        "ingress_rss_mib_before": round(rss_before, 1),
                        "ingress_rss_mib_open": round(rss_open, 1),
                        "ingress_kib_per_idle": round((rss_open - rss_before) * 1024 / count, 1),
                        "crashes": running.crashed()}
        finally:
            await up.close()


async def _until_queued(port: int, timeout_s: float = 40.0) -> None:
    async with asyncio.timeout(timeout_s):
        for index in range(10_000):
            client = await relay.Client.open(port)
            if client is not None:
                try:
                    if await client.send(relay.message("ready", index)) == 250:
                        return
                finally:
                    await client.close()
            await asyncio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    # figures only: the in-process ingress of the fuzz run logs warnings and up, the
    # stdlib loggers (asyncio, aiosmtpd) errors only
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="podpost-resilience-"))
    load = {"messages": args.messages, "sessions": args.sessions}
    runs: dict[str, Callable[[Path], Awaitable[Any]]] = {
        "kill-ingress": lambda d: scenarios.crash("ingress", d, **load),
        "kill-dispatcher": lambda d: scenarios.crash("dispatcher", d, **load),
        "kill-reconciler": lambda d: scenarios.crash("reconciler", d, **load),
        "kill-nats": lambda d: scenarios.crash("nats", d, **load),
        "kill-ingress-large": lambda d: scenarios.crash(
            "ingress", d, messages=max(100, args.messages // 20), sessions=args.sessions // 2,
            padding=300 * 1024),
        "kill-dispatcher-large": lambda d: scenarios.crash(
            "dispatcher", d, messages=max(100, args.messages // 20),
            sessions=args.sessions // 2, padding=300 * 1024),
        "kill-nats-large": lambda d: scenarios.crash(
            "nats", d, messages=max(100, args.messages // 20), sessions=args.sessions // 2,
            padding=300 * 1024),
        "kill-cluster-node": lambda d: scenarios.cluster_failover(d, **load),
        "kill-cluster-leaders": lambda d: scenarios.cluster_failover(
            d, **load, leaders=True, padding=300 * 1024, large_every=15),
        "fuzz": lambda d: fuzz(d, args.fuzz_scripts),
        "idle": lambda d: idle(d, args.idle),
    }
    only = args.only.split(",") if args.only else list(runs)
    print(f"# podpost resilience, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"messages={args.messages} sessions={args.sessions} "
          f"fuzz_sessions={args.fuzz_scripts * len(smtpfuzz.MODES)} idle={args.idle}",
          flush=True)
    for name in only:
        started = time.monotonic()
        result = await runs[name](tmp / name)
        line = result.line() if isinstance(result, relay.Figures) else " ".join(
            f"{k}={v}" for k, v in result.items())
        print(f"{name} ({time.monotonic() - started:.0f} s): {line}", flush=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--fuzz-scripts", type=int, default=10_000,
                        help="generated scripts; each is replayed in 4 modes")
    parser.add_argument("--idle", type=int, default=5_000)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
