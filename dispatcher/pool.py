"""Pooled SMTP sessions per upstream, so a busy upstream is not re-dialled, re-TLS'd and
re-authenticated for every mail, and never gets more connections than it allows.

The whole API the worker needs::

    async with pool.Pool(cfg.dispatcher) as smtp_pool:    # close() on exit
        tg.create_task(smtp_pool.run(stop))               # closes idle sessions on time
        outcome = await smtp_pool.deliver(upstream_view, creds, mail_from, rcpts, data)

`Pool.deliver` never raises for SMTP trouble: it returns an `outcome.Outcome` (with
``elapsed_s`` set), as `sending` does.

- **Keys.** Idle sessions are kept per upstream key *and* login (a hash of username and
  password) *and* the upstream's address (host, port, connect mode, authType), so two
  logins never share a session and a snapshot that moved the upstream gets new ones.
- **Cap.** At most ``UpstreamView.max_connections`` (else ``cfg.max_connections``) open
  sessions per upstream, idle ones included. A delivery waits for a slot (a semaphore);
  waiting is not an error. When the upstream is at its cap and the idle session belongs
  to another login, that one is closed to make room. A changed cap applies to deliveries
  that start after the change.
- **Reuse.** The most recently used idle session is taken first, so surplus ones age out.
  A session the upstream closed while idle is noticed and replaced; if one dies under us
  before DATA, the mail is tried once more on a newly opened session: the upstream has
  none of it, so this cannot duplicate it. After DATA started nothing is retried here.
- **The installation's cap.** For an upstream whose `SMTPServer` sets ``maxConnections``
  each new session first takes a lease on one of its slots across every replica
  (`leasing`), waiting up to `LEASE_WAIT_S` for one; none free is the outcome ``busy``
  (the trip holds the mail: no attempt). Closing the session gives the lease back, and
  such a session is closed once idle for `CAPPED_IDLE_S`, so an idle replica does not sit
  on slots a busy one needs.
- **Idle.** Sessions idle longer than ``cfg.idle_connection_s`` are closed when the next
  delivery looks at that upstream, and by `Pool.run` for upstreams nobody is using.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import msgspec
import structlog

from dispatcher import leasing, sending
from dispatcher.rules.outcome import Outcome
from runtime import settings, waiting
from schemas import snapshot

log = structlog.get_logger("dispatcher.pool")

_Identity = tuple[str, int, str, str, str, str]
"""(host, port, connect, authType, CA key, login hash): what an open session is bound to."""

LEASE_WAIT_S = 5.0
"""How long a new session waits for a slot of the installation's cap."""
CAPPED_IDLE_S = 1.0
"""Idle time after which a session holding a slot of the installation's cap is closed."""
MAX_CA_CONTEXTS = 64
"""Bound on cached per-CA TLS contexts (a rotated bundle gets a new key; old ones go)."""


def _identity(upstream: snapshot.UpstreamView, creds: snapshot.Credentials | None) -> _Identity:
    login = "" if creds is None else hashlib.sha256(
        f"{creds.username}\0{creds.password}".encode()).hexdigest()
    return (upstream.host, upstream.port, upstream.connect, upstream.auth_type.upper(),
            upstream.tls_ca or "", login)


def _take(
    state: _Upstream, matches: Callable[[_Identity, sending.Connection], bool]
) -> list[sending.Connection]:
    """Remove the idle sessions that match, and uncount them."""
    taken = [conn for ident, conn in state.idle if matches(ident, conn)]
    state.idle = [(ident, conn) for ident, conn in state.idle if conn not in taken]
    state.open -= len(taken)
    return taken


@dataclass(eq=False)
class _Upstream:
    """The sessions of one upstream: a slot per delivery, idle sessions to reuse."""

    cap: int
    slots: asyncio.Semaphore
    open: int = 0
    """Sessions open: in use plus idle. Never above ``cap`` (see `Pool._checkout`)."""
    idle: list[tuple[_Identity, sending.Connection]] = field(default_factory=list)
    """Most recently used last."""
    idle_s: float = float("inf")
    """Idle sessions are closed after this long, at most ``cfg.idle_connection_s``."""


class Pool:
    """SMTP sessions per upstream; see the module docstring for the rules."""

    def __init__(
        self,
        cfg: settings.DispatcherSettings,
        *,
        tls: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        leases: leasing.Leases | None = None,
    ) -> None:
        self._cfg = cfg
        self._leases = leases
        self._lease_of: dict[int, str] = {}
        """id(connection) -> its slot in the installation's cap."""
        self._tls = tls if tls is not None else sending.tls_context(cfg)
        self._ca_contexts: dict[str, ssl.SSLContext] = {}
        self._hostname = local_hostname
        self._upstreams: dict[str, _Upstream] = {}
        self._closed = False

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def open_connections(self, upstream_key: str) -> int:
        """Sessions open to an upstream now, in use or idle (for metrics and tests)."""
        state = self._upstreams.get(upstream_key)
        return 0 if state is None else state.open

    async def deliver(
        self,
        upstream: snapshot.UpstreamView,
        creds: snapshot.Credentials | None,
        mail_from: str,
        rcpts: Sequence[str],
        data: bytes,
        *,
        ca: snapshot.TrustedCA | None = None,
    ) -> Outcome:
        """Send one mail to ``upstream`` over a pooled session logged in with ``creds``;
        ``ca`` is the bundle ``upstream.tls_ca`` names, trusted besides the system's."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = self._state(upstream)
        async with state.slots:
            result = await self._deliver(state, upstream, creds, mail_from, rcpts, data, ca)
        return msgspec.structs.replace(result, elapsed_s=loop.time() - started)

    async def _deliver(
        self, state: _Upstream, upstream: snapshot.UpstreamView,
        creds: snapshot.Credentials | None, mail_from: str, rcpts: Sequence[str], data: bytes,
        ca: snapshot.TrustedCA | None,
    ) -> Outcome:
        timeout_s = upstream.timeout_s or self._cfg.smtp_timeout_s
        ident = _identity(upstream, creds)
        result = Outcome(failure="connect", reply="no attempt made")
        for attempt in range(2):  # a pooled session dead before DATA: one retry, fresh
            conn = await self._checkout(state, ident, reuse=attempt == 0)
            reused = conn is not None
            if conn is None:
                opened = await self._open(state, upstream, creds, timeout_s, ca)
                if isinstance(opened, Outcome):
                    return opened
                conn = opened
            finished = False
            try:
                result = await sending.send(conn, mail_from, rcpts, data, timeout_s=timeout_s)
                finished = True
            finally:
                self._checkin(state, ident, conn, reusable=finished)
            if not (reused and sending.dead_before_data(conn, result)):
                return result
            log.info("dispatcher.connection_replaced", upstream=upstream.key,
                     smtp_code=result.code, reason=result.reply)
        return result

    def _state(self, upstream: snapshot.UpstreamView) -> _Upstream:
        cap = max(1, upstream.max_connections or self._cfg.max_connections)
        state = self._upstreams.get(upstream.key)
        if state is None:
            state = _Upstream(cap=cap, slots=asyncio.Semaphore(cap))
            if self._leases is not None and upstream.max_connections:
                state.idle_s = min(state.idle_s, CAPPED_IDLE_S)
            self._upstreams[upstream.key] = state
        elif state.cap != cap:  # holders of the old semaphore release into it
            state.cap, state.slots = cap, asyncio.Semaphore(cap)
        return state

    async def _checkout(
        self, state: _Upstream, ident: _Identity, *, reuse: bool = True
    ) -> sending.Connection | None:
        """An idle session for ``ident`` (if ``reuse``), or None with room made (``open``
        counted) for a new one. The caller holds a slot, so at most ``cap - 1`` sessions
        are in use and at the cap there is always an idle one to close."""
        now = asyncio.get_running_loop().time()
        drop = [(conn, "idle") for conn in self._expire(state, now)]
        drop += [(conn, "moved") for conn in
                 _take(state, lambda i, _: i[:5] != ident[:5])]  # the snapshot moved it
        found: sending.Connection | None = None
        for index in range(len(state.idle) - 1, -1, -1):
            if reuse and state.idle[index][0] == ident:
                found = state.idle.pop(index)[1]
                break
        if found is None:
            while state.open >= state.cap and state.idle:
                drop.append((state.idle.pop(0)[1], "evicted"))
                state.open -= 1
            state.open += 1
        closed = False
        try:
            await self._close_all(drop)
            closed = True
        finally:
            if not closed:  # cancelled: give back what we took
                if found is None:
                    state.open -= 1
                else:
                    self._checkin(state, ident, found, reusable=True)
        return found

    def _context(
        self, upstream: snapshot.UpstreamView, ca: snapshot.TrustedCA | None
    ) -> ssl.SSLContext:
        """The TLS context for ``upstream``: the shared one, or one that also trusts the
        upstream's own CA bundle, built once per bundle. Raises ssl.SSLError for a bad one."""
        if upstream.tls_ca is None or ca is None:
            return self._tls
        context = self._ca_contexts.get(upstream.tls_ca)
        if context is None:
            context = sending.tls_context(self._cfg, cadata=ca.pem)
            if len(self._ca_contexts) >= MAX_CA_CONTEXTS:
                self._ca_contexts.clear()
            self._ca_contexts[upstream.tls_ca] = context
        return context

    async def _open(
        self, state: _Upstream, upstream: snapshot.UpstreamView,
        creds: snapshot.Credentials | None, timeout_s: float, ca: snapshot.TrustedCA | None,
    ) -> sending.Connection | Outcome:
        """Connect for a slot `_checkout` counted; gives the count back on failure."""
        opened: sending.Connection | Outcome | None = None
        lease: str | None = None
        try:
            try:
                tls = self._context(upstream, ca)
            except ssl.SSLError as exc:
                opened = Outcome(failure="tls", reply=f"tlsCA {upstream.tls_ca}: {exc}")
                return opened
            if self._leases is not None and upstream.max_connections:
                lease = await self._leases.acquire(upstream.key, upstream.max_connections,
                                                   min(timeout_s, LEASE_WAIT_S))
                if lease is None:
                    opened = Outcome(failure="busy", reply=(
                        f"all {upstream.max_connections} connections of the installation "
                        "to this upstream are in use"))
                    return opened
            opened = await sending.connect(
                upstream, creds, tls=tls, timeout_s=timeout_s,
                local_hostname=await self._local_hostname(),
            )
        finally:
            if not isinstance(opened, sending.Connection):
                state.open -= 1
                if self._leases is not None:
                    self._leases.release(lease)
            elif lease is not None:
                self._lease_of[id(opened)] = lease
        if isinstance(opened, sending.Connection):
            log.info("dispatcher.connection_opened", upstream=upstream.key,
                     host=upstream.host, port=upstream.port, connect=upstream.connect)
        return opened

    def _checkin(
        self, state: _Upstream, ident: _Identity, conn: sending.Connection, *, reusable: bool
    ) -> None:
        """Back to the idle list, or closed (without QUIT: it is broken, or we are being
        cancelled). Synchronous, so it also runs when the delivery is cancelled."""
        if reusable and conn.alive and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            state.idle.append((ident, conn))
            return
        state.open -= 1
        reason = "closed" if self._closed else ("broken" if reusable else "abandoned")
        conn.smtp.close()
        self._unlease(conn)
        log.info("dispatcher.connection_closed", upstream=conn.upstream.key, reason=reason,
                 transactions=conn.transactions)

    def _expire(self, state: _Upstream, now: float) -> list[sending.Connection]:
        limit = min(self._cfg.idle_connection_s, state.idle_s)
        return _take(state, lambda _, c: not c.alive or now - c.idle_since > limit)

    async def reap(self) -> int:
        """Close every session idle longer than ``idle_connection_s``; how many."""
        now = asyncio.get_running_loop().time()
        drop = [(conn, "idle") for state in self._upstreams.values()
                for conn in self._expire(state, now)]
        await self._close_all(drop)
        return len(drop)

    async def run(self, stop: asyncio.Event) -> None:
        """Reap idle sessions until ``stop`` is set (a task in the worker's TaskGroup);
        it does not close the pool: `close` (or leaving ``async with``) does."""
        idle_s = self._cfg.idle_connection_s
        if self._leases is not None:
            idle_s = min(idle_s, CAPPED_IDLE_S)
        interval = min(max(idle_s / 2, 0.05), 5.0)
        while not stop.is_set():
            await waiting.sleep_or_stop(stop, interval)
            await self.reap()

    async def close(self) -> None:
        """Close every idle session now (QUIT, bounded) and any in use when it is handed
        back. Deliveries after this still work, unpooled."""
        self._closed = True
        drop: list[tuple[sending.Connection, str]] = []
        for state in self._upstreams.values():
            drop += [(conn, "shutdown") for _, conn in state.idle]
            state.open -= len(state.idle)
            state.idle = []
        await self._close_all(drop)

    async def _close_all(self, drop: list[tuple[sending.Connection, str]]) -> None:
        if not drop:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for conn, _ in drop:
                    tg.create_task(sending.close(conn))
        finally:
            for conn, _ in drop:
                self._unlease(conn)
        for conn, reason in drop:
            log.info("dispatcher.connection_closed", upstream=conn.upstream.key,
                     reason=reason, transactions=conn.transactions)

    def _unlease(self, conn: sending.Connection) -> None:
        """A closed session gives its slot of the installation's cap back."""
        lease = self._lease_of.pop(id(conn), None)
        if lease is not None and self._leases is not None:
            self._leases.release(lease)

    async def _local_hostname(self) -> str:
        """The name we EHLO with: this machine's FQDN, looked up once (it may block on
        DNS, hence the thread and the deadline; the short host name if it is slow)."""
        if self._hostname is None:
            try:
                async with asyncio.timeout(2.0):
                    self._hostname = await asyncio.to_thread(socket.getfqdn)
            except TimeoutError:
                self._hostname = socket.gethostname()
        return self._hostname
