"""The incremental build: the kubernetes source's `building.build`, kept up to date one
event at a time.

A full build costs time in the number of pods, and a cluster of 150,000 pods changes all
the time. The route book keeps what a build computes, indexed so that each change touches
only what it can affect:

- a pod event recomputes the owners of that pod's addresses (an address claimed by two
  pods goes to the livelier one, `kubeobjects.endpoints`' rule) and then the route of each
  pod whose addresses changed hands;
- a policy event re-resolves that policy; if what it resolves to changed, every pod of its
  namespace (policies select pods of their own namespace only) is routed again;
- a server, Secret or ConfigMap change re-resolves every policy (they are few, and such
  changes rare), and routes again the namespaces whose policies came out different.

The result is the full build's, byte for byte (a property test replays random event
sequences against `building.build` of the same inventory): the same policies, upstreams,
credentials, CA bundles and conditions, and the same routes, which the book holds keyed by
network (`routes`). It also says what changed since the last time it was asked
(`take_changes`): the route keys to write to the ROUTES bucket, and the objects whose
status may have to be patched. ``snapshot_routes_max`` bounds the routes the snapshot still
carries for readers older than the ROUTES bucket (docs/kubernetes.md, "Scale"). Pure: no
I/O, ``now`` is passed in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

import msgspec

from reconciler.rules import building, inventory, kubeobjects
from schemas import names, resources, snapshot


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    """What changed since the previous `RouteBook.take_changes`."""

    routes: frozenset[str]
    """Networks whose route was added, changed or removed."""
    objects: frozenset[str]
    """``Kind:ns/name`` of objects whose conditions or matched pods may have changed."""
    everything: bool
    """The book was (re)built from scratch: every route and object may have changed."""


class _Pod(msgspec.Struct, frozen=True, gc=False):
    """One routed pod: its policy (None: none selects it), the other candidates (empty
    without a conflict) and the networks it got routes for."""

    policy: str | None
    candidates: frozenset[str]
    networks: tuple[str, ...]


class RouteBook:
    """The build of one `inventory.Inventory`, updated by `sync`."""

    def __init__(self, *, source: str, snapshot_routes_max: int) -> None:
        self.source = source
        self.snapshot_routes_max = snapshot_routes_max
        self.routes: dict[str, snapshot.Route] = {}
        """Network -> route: the ROUTES bucket's content."""
        self.matched: dict[str, int] = {}
        """Policy key -> pods routed to it (a status's ``matchedPods``)."""
        self._servers: dict[str, resources.SMTPServer] | None = None
        self._secrets: dict[str, resources.Secret] = {}
        self._config_maps: dict[str, resources.ConfigMap] = {}
        self._upstreams: dict[str, snapshot.UpstreamView] = {}
        self._cas: dict[str, snapshot.TrustedCA] = {}
        self._broken: dict[str, building._Unresolved] = {}
        self._policies: dict[str, resources.EmailPolicy] = {}
        self._resolved: dict[str, building.Resolved] = {}
        self._unresolved: dict[str, building._Unresolved] = {}
        self._candidates: dict[str, building.Resolved] = {}
        """Each policy resolved on its own; `_settle` decides who keeps its logins."""
        self._failed: dict[str, building._Unresolved] = {}
        self._with_logins: set[str] = set()
        self._decided: dict[str, building._Unresolved] = {}
        self._indexes: dict[str, building.NamespaceIndex] = {}
        self._by_namespace: dict[str, set[str]] = defaultdict(set)
        # pods -> endpoints
        self._records: dict[str, kubeobjects.PodRecord] = {}
        self._claims: dict[str, set[str]] = defaultdict(set)
        self._owner: dict[str, str] = {}
        self._kept: dict[str, set[str]] = defaultdict(set)
        self._in_namespace: dict[str, set[str]] = defaultdict(set)
        # endpoints -> routes
        self._routed: dict[str, _Pod] = {}
        self._conflicts: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._conditions: dict[str, list[resources.Condition]] = {}
        # what changed
        self._changed_routes: set[str] = set()
        self._changed_objects: set[str] = set()
        self._everything = True
        self._build: building.Build | None = None

    # --- events in ------------------------------------------------------------------------

    def sync(self, inv: inventory.Inventory) -> None:
        """Take in everything ``inv`` marked dirty since the last sync (and clear it)."""
        dirty_pods, inv.pods.dirty = inv.pods.dirty, set()
        dirty_policies, inv.policies.dirty = inv.policies.dirty, set()
        inv.servers.dirty = set()
        servers, secrets = inv.servers.items, inv.secrets.items
        config_maps = inv.config_maps.items
        namespaces: set[str] = set()
        if (self._servers != servers or self._secrets != secrets
                or self._config_maps != config_maps):
            self._servers, self._secrets = dict(servers), dict(secrets)
            self._config_maps = dict(config_maps)
            self._upstreams, self._cas, self._broken = building.resolve_upstreams(
                building.by_key(list(servers.values())), building.by_key(list(secrets.values())),
                building.by_key(list(config_maps.values())))
            dirty_policies = set(self._policies) | set(inv.policies.items)
            self._build = None
        for key in dirty_policies:
            self._resolve(key, inv.policies.items.get(key))
        settled = self._settle(dirty_policies)
        for key in settled:
            namespaces |= self._outcome(key)
        dirty_policies = settled
        for namespace in namespaces:
            policies = [self._resolved[k] for k in sorted(self._by_namespace[namespace])]
            if policies:
                self._indexes[namespace] = building.NamespaceIndex(policies)
            else:
                self._indexes.pop(namespace, None)
        pods = self._own(dirty_pods, inv.pods.records)
        for namespace in namespaces:
            pods |= self._in_namespace.get(namespace, set())
        for pod in pods:
            self._route(pod)
        if dirty_policies or self._build is None:
            for key in dirty_policies | self._partners(dirty_policies):
                self._condition(key)
            wanted = building.server_conditions(self._servers or {}, self._broken,
                                                self._resolved)
            for name in [k for k in self._conditions if k.startswith("SMTPServer:")]:
                if name not in wanted:
                    del self._conditions[name]
                    self._changed_objects.add(name)
            for name, conditions in wanted.items():
                if self._conditions.get(name) != conditions:
                    self._conditions[name] = conditions
                    self._changed_objects.add(name)
            self._build = None

    def _resolve(self, key: str, policy: resources.EmailPolicy | None) -> None:
        """Resolve one policy on its own (before the logins of all are settled)."""
        self._candidates.pop(key, None)
        self._failed.pop(key, None)
        if policy is None:
            self._policies.pop(key, None)
            return
        self._policies[key] = policy
        try:
            self._candidates[key] = building.resolve(
                policy, self._servers or {}, self._secrets, self._broken)
        except building._Unresolved as exc:
            self._failed[key] = exc

    def _settle(self, dirty: set[str]) -> set[str]:
        """Decide the dirty policies; the policies whose outcome may have changed. A
        clientCredentials username belongs to the first policy in key order that claims it
        (`building.build`), so when a policy with client logins changes, every such policy
        is decided again, in key order."""
        touched = bool(dirty & self._with_logins)
        for key in dirty:
            item = self._candidates.get(key)
            if item is not None and item.client_logins:
                self._with_logins.add(key)
            else:
                self._with_logins.discard(key)
        touched |= bool(dirty & self._with_logins)
        self._decided = {}
        if not touched:
            return dirty
        claimed: dict[str, snapshot.ClientLogin] = {}
        for key in sorted(self._with_logins):
            item = self._candidates[key]
            taken = sorted(set(item.client_logins) & set(claimed))
            if taken:
                self._decided[key] = building._Unresolved(
                    "LoginTaken", f"clientCredentials username {taken[0]!r} is already the "
                    f"login of {claimed[taken[0]].policy}")
            else:
                claimed.update(item.client_logins)
        return dirty | self._with_logins

    def _outcome(self, key: str) -> set[str]:
        """Apply one policy's outcome; the namespace whose routing it changes, if any."""
        before = self._resolved.pop(key, None)
        self._unresolved.pop(key, None)
        failed = self._decided.get(key) or self._failed.get(key)
        if failed is not None:
            self._unresolved[key] = failed
        elif key in self._candidates:
            self._resolved[key] = self._candidates[key]
        after = self._resolved.get(key)
        namespace = names.split_key(key)[0]
        if after is None:
            self._by_namespace[namespace].discard(key)
        else:
            self._by_namespace[namespace].add(key)
        if before == after or (
                before is not None and after is not None
                and before.selector == after.selector and before.default == after.default):
            return set()  # the same pods, the same rank: the routes (naming the key) stay
        return {namespace}

    def _own(self, dirty: Iterable[str], records: dict[str, kubeobjects.PodRecord]) -> set[str]:
        """Apply pod changes to the address owners; the pods whose endpoint changed."""
        touched: set[str] = set()
        networks: set[str] = set()
        for key in dirty:
            old, new = self._records.get(key), records.get(key)
            if old is not None:
                for net in old.networks:
                    self._claims[net].discard(key)
                networks.update(old.networks)
                self._in_namespace[old.namespace].discard(key)
            if new is None:
                self._records.pop(key, None)
            else:
                self._records[key] = new
                for net in new.networks:
                    self._claims[net].add(key)
                networks.update(new.networks)
            touched.add(key)
        for net in networks:
            claims = self._claims.get(net)
            held = self._owner.get(net)
            owner = max(claims, key=lambda k: kubeobjects.liveness(self._records[k])) \
                if claims else None
            if not claims:
                self._claims.pop(net, None)
            if owner == held:
                continue
            if held is not None:
                self._kept[held].discard(net)
                touched.add(held)
            if owner is None:
                self._owner.pop(net, None)
            else:
                self._owner[net] = owner
                self._kept[owner].add(net)
                touched.add(owner)
        for key in touched:
            record = self._records.get(key)
            if record is not None and self._kept.get(key):
                self._in_namespace[record.namespace].add(key)
            elif record is not None:
                self._in_namespace[record.namespace].discard(key)
            if not self._kept.get(key):
                self._kept.pop(key, None)
        return touched

    def _route(self, pod: str) -> None:
        """Route one pod again: its routes, its matched count, its conflicts."""
        source = f"pod:{pod}"
        before = self._routed.get(pod)
        record = self._records.get(pod)
        kept = self._kept.get(pod)
        after = None
        if record is not None and kept:
            index = self._indexes.get(record.namespace)
            candidates = index.candidates(record.labels) if index is not None else []
            if candidates:
                chosen = min(candidates, key=building.rank)
                # A pod's networks are canonical already (`kubeobjects.host_network`), so
                # `building.network` would give each back unchanged: not parsed again.
                networks = tuple(sorted(kept))
                keys = frozenset(c.view.key for c in candidates)
                after = _Pod(chosen.view.key, keys if len(keys) > 1 else frozenset(), networks)
        if before == after:
            return
        if before is not None:
            del self._routed[pod]
            for net in before.networks:
                held = self.routes.get(net)
                if held is not None and held.source == source:  # not yet another pod's
                    del self.routes[net]
                    self._changed_routes.add(net)
            if before.networks and before.policy is not None:
                self._count(before.policy, -1)
            self._conflict(before.candidates, source, add=False)
        if after is not None:
            self._routed[pod] = after
            assert after.policy is not None
            for net in after.networks:
                self.routes[net] = snapshot.Route(network=net, policy=after.policy,
                                                  source=source)
                self._changed_routes.add(net)
            if after.networks:
                self._count(after.policy, +1)
            self._conflict(after.candidates, source, add=True)
        if before is None or after is None or before.candidates != after.candidates:
            self._build = None

    def _count(self, policy: str, delta: int) -> None:
        count = self.matched.get(policy, 0) + delta
        if count:
            self.matched[policy] = count
        else:
            self.matched.pop(policy, None)
        self._changed_objects.add(building.object_key("EmailPolicy", policy))

    def _conflict(self, keys: frozenset[str], source: str, *, add: bool) -> None:
        for key in keys:
            for other in keys - {key}:
                shared = self._conflicts[key][other]
                if add:
                    shared.add(source)
                else:
                    shared.discard(source)
                    if not shared:
                        del self._conflicts[key][other]
                        if not self._conflicts[key]:
                            del self._conflicts[key]
            self._condition(key)

    def _partners(self, keys: Iterable[str]) -> set[str]:
        """Policies in conflict with any of ``keys``: their messages name them."""
        return {other for key in keys for other in self._conflicts.get(key, {})}

    def _condition(self, key: str) -> None:
        name = building.object_key("EmailPolicy", key)
        if key in self._resolved:
            others = self._conflicts.get(key)
            wanted = building.policy_conditions(
                key, {o: s for o, s in others.items()} if others else None, self._resolved)
        elif key in self._unresolved:
            wanted = building.unresolved_conditions(self._unresolved[key])
        else:
            if self._conditions.pop(name, None) is not None:
                self._changed_objects.add(name)
            return
        if self._conditions.get(name) != wanted:
            self._conditions[name] = wanted
            self._changed_objects.add(name)
            self._build = None

    # --- results out ------------------------------------------------------------------------

    def build(self, *, now: datetime, full_routes: bool = False) -> building.Build:
        """The build, as `building.build` gives it; the snapshot carries its routes only
        while there are at most ``snapshot_routes_max`` (or with ``full_routes``), and
        says they are in the ROUTES bucket."""
        with_routes = full_routes or len(self.routes) <= self.snapshot_routes_max
        if with_routes:
            self._build = None  # the routes are part of it: no reuse
        if self._build is None:
            routes = sorted(self.routes.values(), key=lambda r: (r.network, r.source, r.policy)
                            ) if with_routes else []
            client_logins: dict[str, snapshot.ClientLogin] = {}
            for key in self._with_logins:
                if key in self._resolved:
                    client_logins.update(self._resolved[key].client_logins)
            snap = snapshot.PolicySnapshot(
                generated_at=now,
                policies={key: item.view for key, item in sorted(self._resolved.items())},
                upstreams=dict(self._upstreams), routes=routes,
                logins=dict(sorted(client_logins.items())), source=self.source,
                routes_bucket=True,
            )
            snap = msgspec.structs.replace(snap, digest=building.digest(snap))
            logins = dict(item.login for item in self._resolved.values()
                          if item.login is not None)
            self._build = building.Build(
                snapshot=snap, credentials=dict(sorted(logins.items())),
                conditions=dict(sorted(self._conditions.items())),
                cas=dict(sorted(self._cas.items())),
            )
            if with_routes:
                built, self._build = self._build, None
                return built
        return self._build

    def take_changes(self) -> Changes:
        """What changed since the last call, and forget it."""
        changes = Changes(routes=frozenset(self._changed_routes),
                          objects=frozenset(self._changed_objects),
                          everything=self._everything)
        self._changed_routes, self._changed_objects = set(), set()
        self._everything = False
        return changes
