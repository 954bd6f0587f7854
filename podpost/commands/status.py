"""``podpost status``: per upstream and policy, what is queued, in flight, deferred and
dead, each upstream's oldest mail and whether it is suspended, and how old the policy
snapshot is.

`gather` is the one place that collects the figures, so a new section (say, the rate
limiter's window usage per policy) is added there and shows in the table and the JSON.
"""

from __future__ import annotations

from datetime import datetime

from admin import inspecting, queueing
from admin.rules import statusreport
from podpost import tables
from podpost.commands import running
from runtime import bus
from runtime import settings as settings_mod


async def gather(conn: bus.Conn, now: datetime) -> statusreport.StatusReport:
    """Every figure ``status`` shows."""
    report = await inspecting.status(conn, now)
    steer = await queueing.steering(conn)
    oldest = await queueing.oldest_received(
        conn, [row.upstream for row in report.upstreams if row.queued])
    return statusreport.with_queue(report, list(steer.suspended.values()), oldest)


def status(cfg: settings_mod.Settings, *, as_json: bool) -> None:
    async def work() -> None:
        async with running.connect(cfg.nats) as conn:
            report = await gather(conn, running.now())
        if as_json:
            running.emit_json(report)
        else:
            running.show(tables.status(report))
        if report.unreadable_attempts:
            running.note(f"note: {report.unreadable_attempts} attempt record(s) could not "
                         "be read")

    running.run(work)
