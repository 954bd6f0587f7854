"""The kubernetes source: watch the cluster, build the snapshot, publish it, write statuses.

Pods, EmailPolicies and SMTPServers are listed and watched (`reconciler.watching`) into
one `reconciler.rules.inventory.Inventory`; the Secrets that policies reference (and the Secrets
and ConfigMaps that SMTPServers name as ``tlsCA``) are read by name only (the reconciler
needs ``get`` on them, never list or watch) when first referenced and every
``secret_refresh_s`` after. Changes are debounced into one build-and-publish cycle
(`reconciler.cycle`, shared with the file source), which only the Lease holder
(`reconciler.leading`) runs, publishing within what is left of its lease, and whose
conditions it turns into status patches. Nothing is built before every collection has
been listed once, so a half-known cluster is never published.

The build is incremental (`reconciler.rules.routebook`): each cycle takes in only what the
watches marked changed, publishes only the route keys that changed to the ROUTES bucket,
and plans statuses only for the objects whose conditions or matched pods changed (every
object on the first cycle, and after leadership came back).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import structlog

from reconciler import cycle, kubeapi, leading, publishing, watching
from reconciler.rules import inventory, kubeobjects, routebook, statuses
from runtime import bus, health, waiting
from runtime import settings as settings_mod
from schemas import resources

log = structlog.get_logger("reconciler.kubesource")

SOURCE = "kubernetes"
CYCLE_FAILURES = (*kubeapi.TRANSIENT, *bus.TRANSIENT)
"""What can fail a build-and-publish cycle (the API server, the broker); it is retried."""
RETRY_AFTER_FAILURE_S = 1.0
secret_decoder = msgspec.json.Decoder(resources.Secret)
config_map_decoder = msgspec.json.Decoder(resources.ConfigMap)


class _Stopping(Exception):
    """Raised inside the task group once ``stop`` is set, to cancel the siblings."""


async def _wait(event: asyncio.Event, stop: asyncio.Event, timeout_s: float | None) -> None:
    """Until ``event`` or ``stop`` is set, or ``timeout_s`` passed."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


def _only(observed: dict[str, inventory.Observed], kind: str, due: set[str] | None
          ) -> dict[str, inventory.Observed]:
    """The objects of one kind whose status is due (all when ``due`` is None)."""
    if due is None:
        return observed
    return {key: seen for key, seen in observed.items() if f"{kind}:{key}" in due}


class KubeSource:
    """One running kubernetes source: the inventory, its watchers, the Lease, the loop."""

    def __init__(self, cfg: settings_mod.Settings, conn: bus.Conn, api: kubeapi.Api) -> None:
        self.cfg = cfg
        self.rcfg = cfg.reconciler
        self.conn = conn
        self.api = api
        self.inventory = inventory.Inventory()
        self.book = routebook.RouteBook(source=SOURCE,
                                        snapshot_routes_max=self.rcfg.snapshot_routes_max)
        self.marks = publishing.Marks()
        self._statuses_due: set[str] | None = None
        """Objects whose status to plan at the next publish; None: all of them."""
        self.changed = asyncio.Event()
        self.builds = 0
        namespace = self.rcfg.namespace or None
        pod_params: dict[str, str] = {}
        if self.rcfg.pod_label_selector:
            pod_params["labelSelector"] = self.rcfg.pod_label_selector

        def watcher(name: str, path: str, sink: watching.Sink,
                    params: dict[str, str] | None = None) -> watching.Watcher:
            return watching.Watcher(api, name=name, path=path, params=params or {}, sink=sink,
                                    on_change=self.changed.set,
                                    timeout_s=self.rcfg.watch_timeout_s)

        self.watchers = [
            watcher("pods", kubeapi.pods_path(namespace), self.inventory.pods, pod_params),
            watcher("emailpolicies", kubeapi.custom_path("emailpolicies", namespace),
                    self.inventory.policies),
            watcher("smtpservers", kubeapi.custom_path("smtpservers", namespace),
                    self.inventory.servers),
        ]
        self.leader = leading.Leader(
            api,
            name=self.rcfg.lease_name,
            namespace=kubeapi.lease_namespace(self.rcfg),
            identity=kubeapi.identity(self.rcfg),
            duration_s=self.rcfg.lease_duration_s,
            renew_deadline_s=self.rcfg.lease_renew_deadline_s,
            retry_s=self.rcfg.lease_retry_s,
            enabled=self.rcfg.leader_election,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; then give the Lease up so a standby takes over at once."""
        try:
            async with asyncio.TaskGroup() as tg:
                for watcher in self.watchers:
                    tg.create_task(watcher.run(stop), name=f"watch-{watcher.name}")
                tg.create_task(self.leader.run(stop, self.changed.set), name="lease")
                tg.create_task(self._refresh_secrets(stop), name="secrets")
                tg.create_task(self._reconcile(stop), name="reconcile")
                await stop.wait()
                raise _Stopping
        except* _Stopping:
            pass
        async with asyncio.timeout(self.rcfg.api_timeout_s):
            await self.leader.release()
        log.info("reconciler.source_stopped", source=SOURCE, builds=self.builds)

    # --- the loop -----------------------------------------------------------------------

    async def _reconcile(self, stop: asyncio.Event) -> None:
        for watcher in self.watchers:
            await _wait(watcher.synced, stop, None)
            if stop.is_set():
                return
        log.info("reconciler.cluster_synced", pods=len(self.inventory.pods.records),
                 policies=len(self.inventory.policies.items),
                 servers=len(self.inventory.servers.items))
        self.changed.set()
        while not stop.is_set():
            await _wait(self.changed, stop, None)
            if await waiting.sleep_or_stop(stop, self.rcfg.debounce_s):
                return
            self.changed.clear()
            if not self.leader.leading:
                self.marks = publishing.Marks()  # another leader writes: compare on return
                self._statuses_due = None
                continue
            failed = False
            try:
                await self.cycle()
            except* CYCLE_FAILURES as group:
                failed = True
                log.warning("reconciler.cycle_failed",
                            error="; ".join(str(e) or type(e).__name__ for e in group.exceptions))
            if failed:
                await waiting.sleep_or_stop(stop, RETRY_AFTER_FAILURE_S)
                self.changed.set()

    async def cycle(self) -> None:
        """Read new Secret references, build, publish (leader only), write statuses."""
        refs = self.inventory.secret_refs()
        self.inventory.secrets.forget(refs)
        await self._fetch_secrets(sorted(refs - self.inventory.secrets.known), strict=True)
        cm_refs = self.inventory.config_map_refs()
        self.inventory.config_maps.forget(cm_refs)
        await self._fetch_secrets(sorted(cm_refs - self.inventory.config_maps.known),
                                  strict=True, config_maps=True)
        now = datetime.now(UTC)
        result = cycle.build_incremental(self.book, self.inventory, now=now)
        changes = self.book.take_changes()
        if changes.everything or self._statuses_due is None:
            self._statuses_due = None
        else:
            self._statuses_due |= changes.objects
        self.marks.pending |= changes.routes  # written by the next publish that succeeds
        self.builds += 1
        remaining = self.leader.remaining()
        if remaining <= 0:
            log.warning("reconciler.publish_skipped", reason="not the leader")
            return
        routes = publishing.RouteChanges(
            table=self.book.routes, changed=None if changes.everything else ())
        await cycle.publish(self.conn, result, routes=routes, marks=self.marks,
                            timeout_s=min(remaining, self.rcfg.api_timeout_s * 3))
        if not self.leader.leading:
            return  # lost the Lease while publishing: the new leader writes statuses
        due, self._statuses_due = self._statuses_due, set()
        patches = statuses.plan(
            result.conditions, result.snapshot,
            observed={"EmailPolicy": _only(self.inventory.policies.observed, "EmailPolicy", due),
                      "SMTPServer": _only(self.inventory.servers.observed, "SMTPServer", due)},
            invalid={"EmailPolicy": self.inventory.policies.invalid,
                     "SMTPServer": self.inventory.servers.invalid},
            now=now, matched=self.book.matched,
        )
        await self._write_statuses(patches)

    # --- Secrets ------------------------------------------------------------------------

    async def _fetch_secrets(
        self, names: list[str], *, strict: bool, config_maps: bool = False
    ) -> bool:
        """GET each Secret (or ConfigMap) by name; True when any changed. ``strict``: a
        failed read fails the cycle (rather than building as if the object were missing)."""
        limit = asyncio.Semaphore(self.rcfg.status_concurrency)
        changed = False

        async def fetch(name: str) -> None:
            nonlocal changed
            namespace, _, secret = name.partition("/")
            path = (kubeapi.config_map_path if config_maps else kubeapi.secret_path)(
                namespace, secret)
            async with limit:
                try:
                    raw = await self.api.get(path)
                except kubeapi.ApiError as exc:
                    if exc.status != 403:
                        raise
                    log.warning("reconciler.secret_forbidden", secret=name,
                                kind="ConfigMap" if config_maps else "Secret")
                    raw = None
            if config_maps:
                cm = None if raw is None else config_map_decoder.decode(raw)
                changed |= self.inventory.config_maps.put(name, cm)
            else:
                value = None if raw is None else secret_decoder.decode(raw)
                changed |= self.inventory.secrets.put(name, value)

        async def guarded(name: str) -> None:
            try:
                await fetch(name)
            except kubeapi.TRANSIENT as exc:
                if strict:
                    raise
                log.warning("reconciler.secret_fetch_failed", secret=name,
                            error=str(exc) or type(exc).__name__)

        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(guarded(name))
        return changed

    async def _refresh_secrets(self, stop: asyncio.Event) -> None:
        """Re-read every referenced Secret and ConfigMap periodically (rotated passwords
        and CA bundles)."""
        while not stop.is_set():
            if await waiting.sleep_or_stop(stop, self.rcfg.secret_refresh_s):
                return
            if not self.leader.leading:
                continue
            refs = sorted(self.inventory.secret_refs())
            cm_refs = sorted(self.inventory.config_map_refs())
            changed = await self._fetch_secrets(refs, strict=False)
            changed |= await self._fetch_secrets(cm_refs, strict=False, config_maps=True)
            if changed:
                log.info("reconciler.secrets_changed", secrets=len(refs),
                         config_maps=len(cm_refs))
                self.changed.set()

    # --- statuses -----------------------------------------------------------------------

    def _retry_status(self, patch: statuses.Patch) -> None:
        """Plan this object's status again at the next cycle (a patch failed)."""
        if self._statuses_due is not None:
            self._statuses_due.add(f"{patch.kind}:{patch.namespace}/{patch.name}")

    async def _write_statuses(self, patches: list[statuses.Patch]) -> None:
        limit = asyncio.Semaphore(self.rcfg.status_concurrency)

        async def write(patch: statuses.Patch) -> None:
            path = kubeapi.custom_path(patch.plural, patch.namespace, patch.name, "status")
            async with limit:
                try:
                    raw = await self.api.patch(path, patch.body)
                except kubeapi.ApiError as exc:
                    if exc.status != 404:  # deleted meanwhile: nothing to say
                        log.warning("reconciler.status_failed", kind=patch.kind,
                                    resource=f"{patch.namespace}/{patch.name}",
                                    error=str(exc))
                        self._retry_status(patch)
                    return
            head = kubeobjects.head_decoder.decode(raw)
            store = (self.inventory.policies if patch.kind == "EmailPolicy"
                     else self.inventory.servers)
            key = f"{patch.namespace}/{patch.name}"
            if key in store.observed:
                store.observed[key] = inventory.Observed(
                    generation=head.metadata.generation, status=head.status)
            log.debug("reconciler.status_patched", kind=patch.kind, resource=key)

        async def guarded(patch: statuses.Patch) -> None:
            try:
                await write(patch)
            except kubeapi.TRANSIENT as exc:
                self._retry_status(patch)
                log.warning("reconciler.status_failed", kind=patch.kind,
                            resource=f"{patch.namespace}/{patch.name}",
                            error=str(exc) or type(exc).__name__)

        async with asyncio.TaskGroup() as tg:
            for patch in patches:
                tg.create_task(guarded(patch))
        if patches:
            log.info("reconciler.statuses_written", patches=len(patches))


async def run(cfg: settings_mod.Settings, conn: bus.Conn, stop: asyncio.Event) -> None:
    """The kubernetes source on an open bus connection, until ``stop``."""
    async with kubeapi.connect(cfg.reconciler) as api:
        await KubeSource(cfg, conn, api).run(stop)


async def serve(cfg: settings_mod.Settings, stop: asyncio.Event) -> None:
    """The reconciler with the kubernetes source: connect, run until ``stop``."""
    async with bus.connect(cfg.nats, "reconciler") as conn:
        with health.readiness.registered("reconciler", health.connected(conn.nc)):
            await run(cfg, conn, stop)
