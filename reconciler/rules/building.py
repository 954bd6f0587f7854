"""The snapshot builder: resources in, one `PolicySnapshot` plus credentials and status
conditions out. Both sources (the YAML file and the Kubernetes API) feed it the same
`reconciler.rules.inputs.Inputs`, so a policy means the same thing wherever it comes from.

Rules (the resources of docs/architecture.md "One mail's trip", the reconciler's side):

- A policy's upstream is ``spec.sink.smtp.server`` (namespace defaulting to the policy's)
  or the built-in catcher; exactly one of the two. A policy that cannot be resolved (bad
  sink, missing server, missing or refused Secret, bad selector) is not Ready and is left
  out of the snapshot: its clients get no route, so nothing is relayed for them.
- Logins and CA bundles come from Secrets and ConfigMaps as `reconciler.rules.credentials`
  reads them (a cross-namespace Secret needs a grant); each becomes one CREDENTIALS key
  that the snapshot only names. A CA bundle is not part of the snapshot every ingress
  reads (a bundle may be large); the upstream names its key, so a changed bundle changes
  the snapshot. A server whose CA cannot be read is not Ready, nor are the policies that
  use it (as with a missing Secret: nothing relayed).
- A policy selects endpoints of its own namespace only. Default policies are fallbacks:
  they are candidates only for endpoints that no non-default policy selects (and their own
  selector, usually empty, must still match).
- Several candidates for one endpoint: the one with the most selector terms wins, then the
  lexically smallest key. Every candidate gets a ``Conflict`` condition naming the others
  and the endpoints; a policy without conflicts gets ``Conflict`` False, so the condition
  clears.

Pure: no I/O, ``now`` is passed in, output sorted so equal inputs give equal bytes.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections import defaultdict
from datetime import datetime
from typing import TypeVar

import msgspec

from reconciler.rules import credentials, matching, providers
from reconciler.rules import inputs as inputs_mod
from schemas import durations, names, resources, snapshot

PERIOD_S = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
MAX_CONFLICT_ENDPOINTS = 5
"""A Conflict message names at most this many endpoints, then says how many more."""


_Snapshot = snapshot.PolicySnapshot
_Credentials = snapshot.Credentials
_TrustedCA = snapshot.TrustedCA
"""Aliases: inside `Build` the field ``snapshot`` shadows the module."""


class Build(msgspec.Struct, frozen=True, kw_only=True):
    snapshot: _Snapshot
    credentials: dict[str, _Credentials]
    """CREDENTIALS bucket key -> login. Never logged, never in the snapshot."""
    conditions: dict[str, list[resources.Condition]]
    """``EmailPolicy:<ns>/<name>`` or ``SMTPServer:<ns>/<name>`` -> status conditions."""
    cas: dict[str, _TrustedCA] = {}
    """CREDENTIALS bucket key (``ca.<hash>``) -> an upstream's CA bundle."""


def object_key(kind: str, key: str) -> str:
    """The `Build.conditions` key of one object: ``EmailPolicy:ns/name``."""
    return f"{kind}:{key}"


_Unresolved = credentials.Unresolved
"""An object that cannot go into the snapshot, with its Ready condition's reason; raised
here and by `credentials`."""


def _ready(reason: str, message: str) -> resources.Condition:
    return resources.Condition(type="Ready", status="True", reason=reason, message=message)


def _not_ready(reason: str, message: str) -> resources.Condition:
    return resources.Condition(type="Ready", status="False", reason=reason, message=message)


# --- upstreams ----------------------------------------------------------------------------


def upstream_view(
    server: resources.SMTPServer, tls_ca: str | None = None
) -> snapshot.UpstreamView:
    spec = server.spec
    return snapshot.UpstreamView(
        key=inputs_mod.resource_key(server.metadata),
        host=spec.server,
        port=spec.port,
        connect=resources.connect_mode(spec),
        auth_type=spec.auth_type,
        max_connections=spec.max_connections,
        timeout_s=spec.timeout_seconds,
        tls_ca=tls_ca,
        quotas=[providers.quota(i, q) for i, q in enumerate(spec.quotas)],
        reply_rules=[providers.reply_rule(i, r) for i, r in enumerate(spec.reply_rules)],
    )


# --- policies -----------------------------------------------------------------------------


def _retry(spec: resources.RetrySpec | None) -> snapshot.RetryOverride | None:
    if spec is None:
        return None
    try:
        override = snapshot.RetryOverride(
            min_delay_s=None if spec.min_delay is None else durations.parse(spec.min_delay),
            max_delay_s=None if spec.max_delay is None else durations.parse(spec.max_delay),
            max_age_s=None if spec.max_queue_age is None else durations.parse(spec.max_queue_age),
        )
    except durations.InvalidDuration as exc:
        raise _Unresolved("InvalidRetry", f"spec.retry: {exc}") from exc
    if (
        override.min_delay_s is not None
        and override.max_delay_s is not None
        and override.min_delay_s > override.max_delay_s
    ):
        raise _Unresolved("InvalidRetry", "spec.retry: minDelay is longer than maxDelay")
    return override


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    view: snapshot.PolicyView
    selector: matching.Selector
    default: bool
    login: tuple[str, snapshot.Credentials] | None
    client_logins: dict[str, snapshot.ClientLogin] = {}
    """The policy's clientCredentials by username, as verifiers."""
    fallback_logins: list[tuple[str, snapshot.Credentials]] = []


def resolve(
    policy: resources.EmailPolicy,
    servers: dict[str, resources.SMTPServer],
    secrets: dict[str, resources.Secret],
    broken: dict[str, _Unresolved],
) -> Resolved:
    key = inputs_mod.resource_key(policy.metadata)
    spec = policy.spec
    smtp, catcher = spec.sink.smtp, spec.sink.catcher
    if (smtp is None) == (catcher is None):
        raise _Unresolved("InvalidSink", "spec.sink needs exactly one of smtp or catcher")
    login = None
    if smtp is not None:
        upstream = f"{smtp.server.namespace or policy.metadata.namespace}/{smtp.server.name}"
        if upstream not in servers:
            raise _Unresolved("ServerNotFound", f"SMTPServer {upstream} not found")
        if upstream in broken:
            raise _Unresolved("ServerNotReady", f"SMTPServer {upstream} is not Ready: "
                              f"{broken[upstream].message}")
        if smtp.credentials is not None:
            login = credentials.policy_login(policy, smtp.credentials, secrets)
        fallbacks, fallback_logins = providers.fallbacks(policy, smtp, servers, secrets, broken)
        failover_after_s = durations.parse(smtp.failover_after)
    else:
        upstream = names.CATCHER
        fallbacks, fallback_logins, failover_after_s = [], [], 600.0
    try:
        selector = matching.compile_selector(spec.pod_selector)
    except matching.InvalidSelector as exc:
        raise _Unresolved("InvalidSelector", f"spec.podSelector: {exc}") from exc
    limit = spec.ratelimiting
    view = snapshot.PolicyView(
        key=key,
        upstream=upstream,
        credentials=None if login is None else login[0],
        allowed_senders=list(spec.allowed_senders),
        max_message_size=spec.max_message_size,
        ratelimit=None if limit is None else snapshot.RateLimit(
            maximum=limit.maximum, period_s=PERIOD_S[limit.period]),
        retry=_retry(spec.retry),
        require_tls=spec.require_tls,
        allow_plaintext_auth=spec.allow_plaintext_auth,
        rewrite_sender=spec.rewrite_sender,
        fallbacks=fallbacks,
        failover_after_s=failover_after_s,
    )
    client_logins: dict[str, snapshot.ClientLogin] = {}
    for ref in spec.client_credentials:
        _, creds = credentials.policy_login(policy, ref, secrets)
        salt = snapshot.login_salt(key, creds.username)
        client_logins[creds.username] = snapshot.ClientLogin(
            policy=key, salt=salt, iterations=snapshot.LOGIN_ITERATIONS,
            verifier=snapshot.login_verifier(creds.password, salt, snapshot.LOGIN_ITERATIONS))
    return Resolved(view=view, selector=selector, default=spec.default, login=login,
                    client_logins=client_logins, fallback_logins=fallback_logins)


# --- matching endpoints to policies -------------------------------------------------------


class NamespaceIndex:
    """The resolved policies of one namespace, indexed by a label pair they require."""

    def __init__(self, policies: list[Resolved]) -> None:
        self.indexed: dict[tuple[str, str], list[Resolved]] = defaultdict(list)
        self.unindexed: list[Resolved] = []
        for policy in policies:
            terms = matching.index_terms(policy.selector)
            if terms is None:
                self.unindexed.append(policy)
            else:
                for term in terms:
                    self.indexed[term].append(policy)

    def candidates(self, labels: dict[str, str]) -> list[Resolved]:
        """The policies selecting these labels; default ones only when no other does."""
        found = [p for p in self.unindexed if matching.matches(p.selector, labels)]
        for term in labels.items():
            found.extend(
                p for p in self.indexed.get(term, ()) if matching.matches(p.selector, labels)
            )
        regular = [p for p in found if not p.default]
        return regular or found


def rank(policy: Resolved) -> tuple[int, str]:
    """Smaller wins: more selector terms first, then the smaller key."""
    return (-policy.selector.terms, policy.view.key)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
"""A bare IPv4 address already written canonically (no leading zeros): the common case."""


@functools.lru_cache(maxsize=1 << 16)
def network(text: str) -> str | None:
    """A pod IP or CIDR as a normalized network (``10.0.0.7`` -> ``10.0.0.7/32``), or None.

    Cached: consecutive builds see mostly the same pods, and parsing dominates the build."""
    text = text.strip()
    if _CANONICAL_V4.match(text):
        return f"{text}/32"
    try:
        if "/" not in text:
            address = ipaddress.ip_address(text)
            return f"{address}/{address.max_prefixlen}"
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def _precedence(one: Resolved, other: Resolved) -> str:
    first, second = sorted((one, other), key=rank)
    why = (
        "more selector terms" if first.selector.terms != second.selector.terms
        else "same number of selector terms, smaller name"
    )
    return f"{first.view.key} takes precedence over {second.view.key} ({why})"


def conflict_condition(
    key: str, others: dict[str, set[str]], resolved: dict[str, Resolved]
) -> resources.Condition:
    """One sentence per other policy: what both select and which one wins."""
    parts = []
    for other in sorted(others):
        endpoints = sorted(others[other])
        shown = ", ".join(endpoints[:MAX_CONFLICT_ENDPOINTS])
        if len(endpoints) > MAX_CONFLICT_ENDPOINTS:
            shown += f" and {len(endpoints) - MAX_CONFLICT_ENDPOINTS} more"
        parts.append(f"{other} also selects {shown}: "
                     f"{_precedence(resolved[key], resolved[other])}")
    return resources.Condition(
        type="Conflict", status="True", reason="OverlappingSelectors",
        message="; ".join(parts),
    )


def _route(
    resolved: dict[str, Resolved], endpoints: list[inputs_mod.Endpoint]
) -> tuple[list[snapshot.Route], dict[str, dict[str, set[str]]]]:
    """Routes, and conflicts: policy -> other policy -> sources of endpoints both select."""
    by_namespace: dict[str, list[Resolved]] = defaultdict(list)
    for policy in resolved.values():
        by_namespace[names.split_key(policy.view.key)[0]].append(policy)
    indexes = {ns: NamespaceIndex(policies) for ns, policies in by_namespace.items()}
    routes: list[snapshot.Route] = []
    conflicts: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for endpoint in endpoints:
        index = indexes.get(endpoint.namespace)
        if index is None:
            continue
        candidates = index.candidates(endpoint.labels)
        if not candidates:
            continue
        chosen = min(candidates, key=rank)
        if len(candidates) > 1:
            keys = {c.view.key for c in candidates}
            for key in keys:
                for other in keys - {key}:
                    conflicts[key][other].add(endpoint.source)
        for text in endpoint.networks:
            normalized = network(text)
            if normalized is not None:
                routes.append(snapshot.Route(
                    network=normalized, policy=chosen.view.key, source=endpoint.source))
    routes.sort(key=lambda r: (r.network, r.source, r.policy))
    return routes, conflicts


_Keyed = TypeVar("_Keyed", resources.SMTPServer, resources.Secret, resources.EmailPolicy,
                 resources.ConfigMap)


# --- the parts of a build, shared with the incremental one (`routebook`) -----------------


def resolve_upstreams(
    servers: dict[str, resources.SMTPServer],
    secrets: dict[str, resources.Secret],
    config_maps: dict[str, resources.ConfigMap],
) -> tuple[dict[str, snapshot.UpstreamView], dict[str, snapshot.TrustedCA],
           dict[str, _Unresolved]]:
    """The upstreams, their CA bundles, and the servers that cannot be used (and why)."""
    upstreams: dict[str, snapshot.UpstreamView] = {}
    cas: dict[str, snapshot.TrustedCA] = {}
    broken: dict[str, _Unresolved] = {}
    for key, server in servers.items():
        try:
            ca = credentials.server_ca(server, secrets, config_maps)
            view = upstream_view(server, None if ca is None else ca[0])
        except _Unresolved as exc:
            broken[key] = exc
            continue
        if ca is not None:
            cas[ca[0]] = ca[1]
        upstreams[key] = view
    return upstreams, cas, broken


def unresolved_conditions(exc: _Unresolved) -> list[resources.Condition]:
    """The conditions of a policy left out of the snapshot."""
    return [
        resources.Condition(type="Conflict", status="False", reason="NotReady",
                            message="a policy that is not Ready selects nothing"),
        _not_ready(exc.reason, exc.message),
    ]


def policy_conditions(
    key: str, others: dict[str, set[str]] | None, resolved: dict[str, Resolved]
) -> list[resources.Condition]:
    """The conditions of a policy in the snapshot: its conflicts (other policy -> sources
    of endpoints both select), then Ready."""
    ready = _ready("Resolved", f"delivers to {resolved[key].view.upstream}")
    if others:
        conflict = conflict_condition(key, others, resolved)
    else:
        conflict = resources.Condition(
            type="Conflict", status="False", reason="NoConflict",
            message="no other policy selects the same endpoints",
        )
    return [conflict, ready]


def server_conditions(
    servers: dict[str, resources.SMTPServer], broken: dict[str, _Unresolved],
    resolved: dict[str, Resolved],
) -> dict[str, list[resources.Condition]]:
    """Every SMTPServer's Ready condition, counting the ready policies using it."""
    users: dict[str, int] = defaultdict(int)
    for item in resolved.values():
        users[item.view.upstream] += 1
    conditions: dict[str, list[resources.Condition]] = {}
    for key in servers:
        if key in broken:
            conditions[object_key("SMTPServer", key)] = [
                _not_ready(broken[key].reason, broken[key].message)]
            continue
        used = users.get(key, 0)
        conditions[object_key("SMTPServer", key)] = [_ready(
            "Resolved", f"used by {used} ready polic{'y' if used == 1 else 'ies'}")]
    return conditions


def by_key(items: list[_Keyed]) -> dict[str, _Keyed]:
    """Key -> item, in key order; a later duplicate replaces an earlier one."""
    found = {inputs_mod.resource_key(item.metadata): item for item in items}
    return {key: found[key] for key in sorted(found)}


# --- the build ----------------------------------------------------------------------------

_digest_encoder = msgspec.json.Encoder(order="deterministic")


def digest(snap: snapshot.PolicySnapshot) -> str:
    """A hash of everything but ``generated_at`` and ``digest`` itself."""
    content: tuple[object, ...] = (snap.policies, snap.upstreams, snap.routes, snap.source)
    if snap.logins:  # a changed password is a changed snapshot; none keeps old digests
        content += (snap.logins,)
    return hashlib.sha256(_digest_encoder.encode(content)).hexdigest()


def build(inputs: inputs_mod.Inputs, *, now: datetime, source: str) -> Build:
    servers = by_key(inputs.servers)
    secrets = by_key(inputs.secrets)
    policies = by_key(inputs.policies)
    config_maps = by_key(inputs.config_maps)
    conditions: dict[str, list[resources.Condition]] = {}

    upstreams, cas, broken = resolve_upstreams(servers, secrets, config_maps)

    resolved: dict[str, Resolved] = {}
    logins: dict[str, snapshot.Credentials] = {}
    client_logins: dict[str, snapshot.ClientLogin] = {}
    for key, policy in policies.items():
        try:
            item = resolve(policy, servers, secrets, broken)
            taken = sorted(set(item.client_logins) & set(client_logins))
            if taken:
                raise _Unresolved("LoginTaken", f"clientCredentials username {taken[0]!r} is "
                                  f"already the login of {client_logins[taken[0]].policy}")
        except _Unresolved as exc:
            conditions[object_key("EmailPolicy", key)] = unresolved_conditions(exc)
            continue
        resolved[key] = item
        client_logins.update(item.client_logins)
        if item.login is not None:
            logins[item.login[0]] = item.login[1]
        logins.update(item.fallback_logins)

    endpoints = sorted(inputs.endpoints, key=lambda e: e.source)
    routes, conflicts = _route(resolved, endpoints)
    for key in resolved:
        conditions[object_key("EmailPolicy", key)] = policy_conditions(
            key, conflicts.get(key), resolved)
    conditions.update(server_conditions(servers, broken, resolved))

    snap = snapshot.PolicySnapshot(
        generated_at=now,
        policies={key: item.view for key, item in resolved.items()},
        upstreams=upstreams,
        routes=routes,
        logins=dict(sorted(client_logins.items())),
        source=source,
    )
    snap = msgspec.structs.replace(snap, digest=digest(snap))
    return Build(
        snapshot=snap,
        credentials=dict(sorted(logins.items())),
        conditions=dict(sorted(conditions.items())),
        cas=dict(sorted(cas.items())),
    )

