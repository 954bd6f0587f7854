"""The reconciler's mirror of the cluster: what the watches have told it so far.

Each watched collection (pods, EmailPolicies, SMTPServers) and the referenced Secrets and
ConfigMaps (credentials, an SMTPServer's ``tlsCA``) are kept here, decoded, keyed
``<namespace>/<name>``. Events and relists are applied with methods that say whether
anything the builder reads actually changed, so a status update (our own, echoed back by
the watch) or an unchanged resync does not cause a rebuild. `Inventory.inputs` hands the
builder one consistent view. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

import msgspec

from reconciler.rules import inputs as inputs_mod
from reconciler.rules import kubeobjects
from schemas import resources

T = TypeVar("T", resources.EmailPolicy, resources.SMTPServer)
R = TypeVar("R", resources.Secret, resources.ConfigMap)


class Invalid(msgspec.Struct, frozen=True, kw_only=True):
    """An object the API holds but podpost cannot decode (stored before the CRD validated
    it, or written against another schema). It is left out and its status says why."""

    generation: int | None
    error: str


class Observed(msgspec.Struct, frozen=True, kw_only=True):
    """What the API last showed of one custom resource's status, to patch only changes."""

    generation: int | None
    status: dict[str, object] | None


class Pods:
    """Pods as client identities; a pod that cannot send (no IP, finished) is simply absent."""

    def __init__(self) -> None:
        self.records: dict[str, kubeobjects.PodRecord] = {}
        self.dirty: set[str] = set()
        """Keys of pods added, changed or removed since the incremental build last took
        them (`reconciler.rules.routebook`)."""

    def apply(self, kind: str, raw: bytes) -> bool:
        pod = kubeobjects.pod_decoder.decode(raw)
        name = kubeobjects.key(pod.metadata)
        record = None if kind == "DELETED" else kubeobjects.pod_record(pod)
        return self._put(name, record)

    def _put(self, name: str, record: kubeobjects.PodRecord | None) -> bool:
        if record is None:
            if self.records.pop(name, None) is None:
                return False
            self.dirty.add(name)
            return True
        if self.records.get(name) == record:
            return False
        self.records[name] = record
        self.dirty.add(name)
        return True

    def replace(self, raws: Iterable[bytes]) -> bool:
        """A relist: the listed pods are all there is."""
        fresh: dict[str, kubeobjects.PodRecord] = {}
        for raw in raws:
            pod = kubeobjects.pod_decoder.decode(raw)
            record = kubeobjects.pod_record(pod)
            if record is not None:
                fresh[record.key] = record
        changed = fresh != self.records
        if changed:
            self.dirty.update(key for key in self.records.keys() | fresh.keys()
                              if self.records.get(key) != fresh.get(key))
        self.records = fresh
        return changed


class Resources(Generic[T]):
    """One kind of custom resource: the decoded objects, the undecodable ones, and what
    their status currently says."""

    def __init__(self, tp: type[T]) -> None:
        self.kind: str = tp.__name__
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(tp)
        self.items: dict[str, T] = {}
        self.invalid: dict[str, Invalid] = {}
        self.observed: dict[str, Observed] = {}
        self.dirty: set[str] = set()
        """Keys whose essence changed since the incremental build last took them."""

    def _decode(self, raw: bytes) -> tuple[str, T | Invalid, Observed]:
        head = kubeobjects.head_decoder.decode(raw)
        name = kubeobjects.key(head.metadata)
        observed = Observed(generation=head.metadata.generation, status=head.status)
        try:
            return name, self._decoder.decode(raw), observed
        except msgspec.ValidationError as exc:
            return name, Invalid(generation=head.metadata.generation, error=str(exc)), observed

    def _put(self, name: str, value: T | Invalid | None) -> bool:
        before = self.items.get(name) or self.invalid.get(name)
        self.items.pop(name, None)
        self.invalid.pop(name, None)
        if isinstance(value, Invalid):
            self.invalid[name] = value
        elif value is not None:
            self.items[name] = value
        if _essence(before) == _essence(value):
            return False
        self.dirty.add(name)
        return True

    def apply(self, kind: str, raw: bytes) -> bool:
        name, value, observed = self._decode(raw)
        if kind == "DELETED":
            self.observed.pop(name, None)
            return self._put(name, None)
        self.observed[name] = observed
        return self._put(name, value)

    def replace(self, raws: Iterable[bytes]) -> bool:
        decoded = [self._decode(raw) for raw in raws]
        changed = False
        fresh = {name for name, _, _ in decoded}
        for name in [n for n in (*self.items, *self.invalid) if n not in fresh]:
            changed |= self._put(name, None)
        self.observed = {}
        for name, value, observed in decoded:
            self.observed[name] = observed
            changed |= self._put(name, value)
        return changed


def _essence(value: object) -> object:
    """What the builder reads of an object: its spec (and name), not its status or
    resourceVersion, so our own status patches do not trigger a rebuild."""
    if isinstance(value, (resources.EmailPolicy, resources.SMTPServer)):
        return (value.metadata.namespace, value.metadata.name, value.spec)
    return value


class Referenced(Generic[R]):
    """Only the Secrets (or ConfigMaps) resources reference, fetched by name. ``known``
    holds every name fetched at least once (found or not), so a new reference is read
    before a build."""

    def __init__(self) -> None:
        self.items: dict[str, R] = {}
        self.known: set[str] = set()

    def put(self, name: str, secret: R | None) -> bool:
        self.known.add(name)
        before = self.items.get(name)
        if secret is None:
            self.items.pop(name, None)
        else:
            self.items[name] = secret
        return _secret_essence(before) != _secret_essence(secret)

    def forget(self, keep: set[str]) -> bool:
        """Drop Secrets no policy references any more (they must not linger in memory)."""
        gone = [name for name in self.known if name not in keep]
        changed = False
        for name in gone:
            self.known.discard(name)
            changed |= self.items.pop(name, None) is not None
        return changed


Secrets = Referenced[resources.Secret]
ConfigMaps = Referenced[resources.ConfigMap]


def _secret_essence(secret: resources.Secret | resources.ConfigMap | None) -> object:
    if secret is None:
        return None
    if isinstance(secret, resources.ConfigMap):
        return secret.data
    return (secret.data, secret.string_data, secret.metadata.annotations)


def secret_refs(
    policies: Iterable[resources.EmailPolicy],
    servers: Iterable[resources.SMTPServer] = (),
) -> set[str]:
    """``ns/name`` of every Secret a policy names as credentials or clientCredentials, or
    a server as tlsCA."""
    refs: set[str] = set()
    for policy in policies:
        smtp = policy.spec.sink.smtp
        if smtp is not None and smtp.credentials is not None:
            namespace = smtp.credentials.namespace or policy.metadata.namespace
            refs.add(f"{namespace}/{smtp.credentials.name}")
        for ref in policy.spec.client_credentials:
            refs.add(f"{ref.namespace or policy.metadata.namespace}/{ref.name}")
    for server in servers:
        ca = server.spec.tls_ca
        if ca is not None and ca.secret_key_ref is not None:
            refs.add(f"{server.metadata.namespace}/{ca.secret_key_ref.name}")
    return refs


def config_map_refs(servers: Iterable[resources.SMTPServer]) -> set[str]:
    """``ns/name`` of every ConfigMap a server names as tlsCA."""
    return {f"{server.metadata.namespace}/{ca.config_map_key_ref.name}"
            for server in servers
            if (ca := server.spec.tls_ca) is not None and ca.config_map_key_ref is not None}


class Inventory:
    """Everything the kubernetes source knows; `inputs` is the builder's view of it."""

    def __init__(self) -> None:
        self.pods = Pods()
        self.policies: Resources[resources.EmailPolicy] = Resources(resources.EmailPolicy)
        self.servers: Resources[resources.SMTPServer] = Resources(resources.SMTPServer)
        self.secrets = Secrets()
        self.config_maps = ConfigMaps()

    def secret_refs(self) -> set[str]:
        return secret_refs(self.policies.items.values(), self.servers.items.values())

    def config_map_refs(self) -> set[str]:
        return config_map_refs(self.servers.items.values())

    def inputs(self) -> inputs_mod.Inputs:
        return inputs_mod.Inputs(
            servers=[self.servers.items[k] for k in sorted(self.servers.items)],
            policies=[self.policies.items[k] for k in sorted(self.policies.items)],
            secrets=[self.secrets.items[k] for k in sorted(self.secrets.items)],
            config_maps=[self.config_maps.items[k] for k in sorted(self.config_maps.items)],
            endpoints=kubeobjects.endpoints(self.pods.records.values()),
        )
