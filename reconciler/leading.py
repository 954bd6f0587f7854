"""Hold (or wait for) the reconciler's Lease, so only one replica publishes at a time.

The decisions are `reconciler.rules.leases`; this is the loop that reads and writes the Lease
every ``lease_retry_s``. `Leader.remaining` is how long this replica may still act as the
leader: the time since its last *successful* renewal, counted on the monotonic clock,
subtracted from the renew deadline. Publishing is bounded by it, and a standby only takes
over after the full (longer) lease duration, so the two never overlap while clocks run at
the same rate. On a clean shutdown the Lease is released for an immediate hand-over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from reconciler import kubeapi
from reconciler.rules import leases
from runtime import waiting

log = structlog.get_logger("reconciler.leading")

class Leader:
    """This replica's standing in the election."""

    def __init__(self, api: kubeapi.Api, *, name: str, namespace: str, identity: str,
                 duration_s: float, renew_deadline_s: float, retry_s: float,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if enabled and not 0 < renew_deadline_s < duration_s:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration_s = duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.enabled = enabled
        self._clock = clock
        self._observation: leases.Observation | None = None
        self._renewed_at: float | None = None
        self.elected = asyncio.Event()
        """Set while this replica leads; cleared when it stops."""

    def remaining(self) -> float:
        """Seconds this replica may still act as the leader (0 when it is not one)."""
        if not self.enabled:
            return float("inf")
        if self._renewed_at is None:
            return 0.0
        return max(0.0, self._renewed_at + self.renew_deadline_s - self._clock())

    @property
    def leading(self) -> bool:
        return self.remaining() > 0

    async def run(self, stop: asyncio.Event, on_elected: Callable[[], None]) -> None:
        """Campaign and renew until ``stop``; ``on_elected`` runs on each election."""
        if not self.enabled:
            self.elected.set()
            on_elected()
            await stop.wait()
            return
        while not stop.is_set():
            try:
                await self._tick(on_elected)
            except kubeapi.TRANSIENT as exc:
                log.warning("reconciler.lease_failed", lease=self.name,
                            error=str(exc) or type(exc).__name__)
            if self.elected.is_set() and not self.leading:
                self._lose("renew deadline passed")
            await waiting.sleep_or_stop(stop, self.retry_s)

    async def _tick(self, on_elected: Callable[[], None]) -> None:
        path = kubeapi.lease_path(self.namespace, self.name)
        raw = await self.api.get(path)
        now = self._clock()
        observation = None
        if raw is not None:
            observation = leases.observe(self._observation, leases.lease_decoder.decode(raw),
                                         now=now)
        self._observation = observation
        action = leases.decide(observation, identity=self.identity, now=now,
                               default_duration_s=self.duration_s)
        if action == "follow":
            if self.elected.is_set():
                self._lose(f"held by {observation.holder if observation else '?'}")
            return
        started = self._clock()
        wall = datetime.now(UTC)
        try:
            if action == "create":
                written = await self.api.create(
                    kubeapi.lease_path(self.namespace),
                    leases.create_body(name=self.name, namespace=self.namespace,
                                       identity=self.identity, duration_s=self.duration_s,
                                       now=wall),
                )
            else:
                assert observation is not None
                written = await self.api.patch(path, leases.write_patch(
                    observation, action, identity=self.identity,
                    duration_s=self.duration_s, now=wall,
                ))
        except kubeapi.ApiError as exc:
            if exc.status == 409:  # another replica wrote first; read again next tick
                log.info("reconciler.lease_contended", lease=self.name, action=action)
                return
            raise
        self._observation = leases.observe(None, leases.lease_decoder.decode(written),
                                           now=started)
        self._renewed_at = started
        if not self.elected.is_set():
            self.elected.set()
            log.info("reconciler.leader_elected", lease=self.name, identity=self.identity,
                     action=action)
            on_elected()

    def _lose(self, why: str) -> None:
        self.elected.clear()
        self._renewed_at = None
        log.warning("reconciler.leadership_lost", lease=self.name, identity=self.identity,
                    reason=why)

    async def release(self) -> None:
        """Hand the Lease over on a clean shutdown (best effort: it expires anyway)."""
        if not self.enabled or not self.leading or self._observation is None:
            return
        patch = leases.release_patch(self._observation, now=datetime.now(UTC))
        self.elected.clear()
        self._renewed_at = None
        try:
            await self.api.patch(kubeapi.lease_path(self.namespace, self.name), patch)
            log.info("reconciler.lease_released", lease=self.name, identity=self.identity)
        except kubeapi.TRANSIENT as exc:
            log.warning("reconciler.lease_release_failed", lease=self.name,
                        error=str(exc) or type(exc).__name__)
