"""CPU and memory of a relay's processes during a benchmark run, and the printed tables.

Postfix is a tree of short-lived programs under its ``master``: a ``smtpd`` exits after
100 connections, and its CPU then shows only in the master's ``cutime``/``cstime``. So a
run counts each process's CPU since the run began, plus what the master reaped during the
run (less what those processes had used before it), reported as ``(exited)``. Memory is
sampled: the peak, over the run, of each program's summed RSS.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, _, rest = text.partition(" (")[2].rpartition(") ")
    return [name, *rest.split()]


def cpu_s(pid: int) -> tuple[float, float]:
    """(own CPU seconds, reaped children's CPU seconds) of a process; NaN when gone."""
    fields = _stat(pid)
    if fields is None:
        return float("nan"), float("nan")
    # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 1-based
    own = (int(fields[12]) + int(fields[13])) / TICK
    reaped = (int(fields[14]) + int(fields[15])) / TICK
    return own, reaped


def rss_mib(pid: int) -> float:
    fields = _stat(pid)
    return int(fields[22]) * PAGE_MIB if fields is not None else 0.0


def children(parent: int) -> dict[str, list[int]]:
    """Live child processes of ``parent`` by program name."""
    groups: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[2]) == parent:
                groups.setdefault(fields[0], []).append(int(entry))
    return groups


def postfix_version() -> str:
    done = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True)
    return done.stdout.strip()


@dataclass
class Run:
    messages: int
    seconds: float
    cpu: dict[str, float]
    rss: dict[str, float]
    procs: dict[str, int]
    accepted_s: float
    """Until the client was done (every mail answered)."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass
class Watch:
    """CPU before and after, RSS sampled in between, of the processes ``pids()`` names."""

    pids: Callable[[], dict[str, list[int]]]
    interval_s: float = 0.5
    before: dict[int, float] = field(default_factory=dict)
    reaped_before: dict[int, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    procs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for group in self.pids().values():
            for pid in group:
                self.before[pid], self.reaped_before[pid] = cpu_s(pid)

    def sample(self) -> None:
        for name, group in self.pids().items():
            total = sum(rss_mib(pid) for pid in group)
            self.rss[name] = max(self.rss.get(name, 0.0), total)
            self.procs[name] = max(self.procs.get(name, 0), len(group))

    async def sample_until_cancelled(self) -> None:
        for _ in range(100_000):  # bounded: 14 hours at 0.5 s
            self.sample()
            await asyncio.sleep(self.interval_s)

    def finish(self, messages: int, seconds: float, accepted_s: float) -> Run:
        self.sample()
        cpu: dict[str, float] = {}
        alive: set[int] = set()
        exited = 0.0
        for name, group in self.pids().items():
            for pid in group:
                own, reaped = cpu_s(pid)
                alive.add(pid)
                cpu[name] = cpu.get(name, 0.0) + own - self.before.get(pid, 0.0)
                exited += reaped - self.reaped_before.get(pid, reaped)
        exited -= sum(used for pid, used in self.before.items() if pid not in alive)
        if exited > 0.005:
            cpu["(exited)"] = exited
        return Run(messages, seconds, cpu, dict(self.rss), dict(self.procs), accepted_s)


class Busy:
    """How busy the machine's CPUs were since this was made (all of them, from
    ``/proc/stat``: the client and the sink count too)."""

    def __init__(self) -> None:
        self._before = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle, iowait
        return sum(values) - idle, sum(values)

    def since(self) -> float:
        busy, total = self._ticks()
        return (busy - self._before[0]) / max(1, total - self._before[1])


STEPS = ("banner", "EHLO", "MAIL", "RCPT", "DATA", "message")
"""The paced client's steps, each from its command (or the connect) to the reply."""


@dataclass
class Paced:
    """One paced-client run: its rate, a row per mail (accept latency, then `STEPS`), the
    relay's CPU seconds over it per process group and how busy the machine was."""

    rate: float
    rows: list[list[float]]
    cpu: dict[str, float]
    busy: float

    def quantile(self, column: int, q: float) -> float:
        ordered = sorted(row[column] for row in self.rows)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


Cell = tuple[str, int, int, str]
"""(mode, size, sessions, relay)."""


def _cells(results: dict[Cell, list[Run]]) -> list[tuple[str, int, int]]:
    return list(dict.fromkeys((mode, size, sessions) for mode, size, sessions, _ in results))


def _per_process(per: dict[str, float]) -> str:
    """CPU seconds per 1,000 mails of each process group, the largest first."""
    return ", ".join(f"{g} {v:.2f}" for g, v in
                     sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01)


def report(results: dict[Cell, list[Run]], latency: dict[tuple[int, str], Paced]) -> None:
    """Print the tables (markdown) of a whole benchmark."""
    mode_name = {"new": "new connection per mail", "keep": "one connection per session (-d)"}
    print("\n| mode | size | sessions | Postfix msgs/s | podpost msgs/s | podpost / Postfix |")
    print("|---|---|---|---|---|---|")
    for mode, size, sessions in _cells(results):
        pf = results.get((mode, size, sessions, "postfix"), [])
        pp = results.get((mode, size, sessions, "podpost"), [])
        pf_mean = statistics.mean(r.rate for r in pf) if pf else float("nan")
        pp_mean = statistics.mean(r.rate for r in pp) if pp else float("nan")
        runs = lambda rs: " / ".join(f"{r.rate:.0f}" for r in rs)  # noqa: E731
        print(f"| {mode_name[mode]} | {size // 1024} KiB | {sessions} | {pf_mean:.0f} "
              f"({runs(pf)}) | {pp_mean:.0f} ({runs(pp)}) | **{pp_mean / pf_mean:.2f}x** |")
    print("\nCPU seconds per 1,000 mails, per process (mean over the runs of a cell):\n")
    print("| mode | size | sessions | relay | total | per process |")
    print("|---|---|---|---|---|---|")
    for mode, size, sessions in _cells(results):
        for name in ("postfix", "podpost"):
            runs_ = results.get((mode, size, sessions, name), [])
            if not runs_:
                continue
            groups = sorted({g for r in runs_ for g in r.cpu})
            per = {g: statistics.mean(r.cpu.get(g, 0.0) * 1000 / r.messages for r in runs_)
                   for g in groups}
            print(f"| {mode} | {size // 1024} KiB | {sessions} | {name} | "
                  f"{sum(per.values()):.2f} | {_per_process(per)} |")
    print("\nPeak RSS MiB per program (summed over its processes; count in brackets):\n")
    print("| relay | per program |")
    print("|---|---|")
    for name in ("postfix", "podpost"):
        peak: dict[str, float] = {}
        count: dict[str, int] = {}
        for (_, _, _, relay_name), runs_ in results.items():
            if relay_name == name:
                for r in runs_:
                    for g, v in r.rss.items():
                        peak[g] = max(peak.get(g, 0.0), v)
                        count[g] = max(count.get(g, 0), r.procs.get(g, 0))
        print(f"| {name} | " + ", ".join(
            f"{g} {v:.0f} ({count[g]})" for g, v in sorted(peak.items(), key=lambda kv: -kv[1]))
            + " |")
    if latency:
        print("\nAccept latency of a paced client (new connection per mail, connect to 250) "
              "at half the maximum rate, how busy the machine's CPUs were meanwhile, and "
              "the relay's CPU per mail then:\n")
        print("| size | relay | rate msgs/s | mails | p50 ms | p99 ms | CPUs busy | relay CPU "
              "ms per mail |")
        print("|---|---|---|---|---|---|---|---|")
        for (size, name), paced in latency.items():
            count = max(1, len(paced.rows))
            per = {g: v * 1000 / count for g, v in paced.cpu.items()}
            print(f"| {size // 1024} KiB | {name} | {paced.rate:.0f} | {len(paced.rows)} | "
                  f"{paced.quantile(0, 0.5):.1f} | {paced.quantile(0, 0.99):.1f} | "
                  f"{100 * paced.busy:.0f}% | {sum(per.values()):.2f}: {_per_process(per)} |")
        print("\nWhere the paced client's time went, per step (ms from the command to its "
              "reply), p50 / p99:\n")
        print("| size | relay | " + " | ".join(STEPS) + " |")
        print("|---|---|" + "---|" * len(STEPS))
        for (size, name), paced in latency.items():
            cells = " | ".join(f"{paced.quantile(k, 0.5):.1f} / {paced.quantile(k, 0.99):.1f}"
                               for k in range(1, len(STEPS) + 1))
            print(f"| {size // 1024} KiB | {name} | {cells} |")
