"""One typed, frozen settings object per process, built once from ``PODPOST_*`` variables.

``__`` separates levels: ``PODPOST_NATS__URL`` sets ``settings.nats.url``. A few flat
aliases that the command line documents (``PODPOST_NATS_URL``) map onto the tree. Unknown
variables are errors that name the variable, so a typo never becomes a silent default.
Nothing but this module reads ``os.environ``, and only when asked to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from schemas import snapshot

DEV_POLICY = str(Path(__file__).resolve().with_name("data") / "dev.yaml")
"""The dev policy file shipped inside the package (package data): every client on this
machine gets a catcher policy. ``podpost dev`` and the file source read it by default, so
neither depends on the current directory."""


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DeadlineSettings(_Section, frozen=True, kw_only=True):
    """How long one network call to the bus may take: the one home of these deadlines,
    carried by every `runtime.bus.Conn` as ``conn.deadlines``. A deadline ends a call the
    broker does not answer (a restart, a lost leader); the caller then retries or leaves
    the message to be redelivered, so a short one costs a retry, never a mail."""

    api_s: float = 10.0
    """A JetStream API request (stream and consumer info, message get and delete)."""
    kv_s: float = 5.0
    """A key-value get, put or delete."""
    publish_s: float = 10.0
    """Publishing what replaces or copies a message (a dead letter, caught mail, a replay)
    until its PubAck. The ingress's own deadline is ``ingress.publish_timeout_s``."""
    ack_s: float = 5.0
    """The server's confirmation of an ack (``ack_sync``)."""
    body_s: float = 60.0
    """Reading or writing one body (up to 25 MiB) in the BODIES object store."""
    close_s: float = 5.0
    """Draining and closing a connection on the way out."""


class NatsSettings(_Section, frozen=True, kw_only=True):
    url: str = "nats://127.0.0.1:4222"
    """Comma-separated server URLs. The default is the embedded server of ``podpost dev``."""
    prefix: str = "podpost"
    """Prefix of every stream, subject and bucket, so installations can share an account."""
    replicas: int = 1
    """Replicas of every stream and bucket: 1 on one machine, 3 in production (ack after
    quorum; see the durability note in the README)."""
    connect_timeout_s: float = 5.0
    """How long one connection attempt may take before the next server is tried."""
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    """An NKey/JWT credentials file, when the server runs with accounts."""
    name: str = ""
    """Client name shown in the server's monitoring; the role's name when empty."""
    deadlines: DeadlineSettings = DeadlineSettings()
    """Network deadlines of bus calls (``PODPOST_NATS__DEADLINES__API_S`` ...)."""


class IngressSettings(_Section, frozen=True, kw_only=True):
    host: str = "0.0.0.0,::"
    """Addresses to listen on, comma-separated: IPv4 and IPv6 by default. An address
    family the machine lacks (no IPv6 in the pod) is skipped with a warning, as long as
    one address binds."""
    port: int = 2525
    """Unprivileged by default; the Service maps port 25 onto it."""
    tls_cert_file: str = ""
    """PEM certificate chain for STARTTLS (and ``tls_port``), e.g. a mounted cert-manager
    Secret's ``tls.crt``; empty: no TLS. Re-read when it changes (``tls_reload_s``)."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file`` (``tls.key``)."""
    tls_port: int = 0
    """A second port speaking implicit TLS (SMTPS, as port 465 does); 0: none. Needs the
    certificate."""
    tls_reload_s: float = 10.0
    """How often the certificate and key files are checked for a change; a changed pair
    serves the next handshakes, open sessions keep theirs."""
    auth_accept_any: bool = False
    """Offer AUTH and accept any login that is not one of a policy's
    ``clientCredentials``: for apps that insist on logging in; they are still identified
    by their pod address."""
    auth_plaintext: bool = False
    """Offer AUTH before TLS too (``auth_accept_any``'s logins); a policy's
    ``clientCredentials`` are offered without TLS only when it sets
    ``allowPlaintextAuth``."""
    auth_failure_delay_s: float = 1.0
    """The answer to a failed login waits this long, doubled for each further failure from
    the same address within 15 minutes (at most 30 s); after 10 the address is refused
    unchecked until then."""
    proxy_protocol_cidrs: list[str] = []
    """Peers (load balancers) whose connections start with a PROXY protocol v1 or v2
    header; the client's address is then the header's. Other peers are served as they
    are, and a header from them is not believed."""
    proxy_timeout_s: float = 5.0
    """How long a trusted peer may take to send its PROXY header."""
    hostname: str = ""
    """Name used in the banner and the Received: header; the machine's FQDN when empty."""
    max_message_size: int = 25 * 1024 * 1024
    """Bytes, advertised with SIZE; a policy may set a lower one. 25 MiB like most providers."""
    inline_limit: int = 256 * 1024
    """Bodies larger than this go to the Object Store; well under NATS's 1 MiB max payload."""
    max_recipients: int = 1000
    """Per transaction, like Postfix's smtpd_recipient_limit."""
    publish_timeout_s: float = 5.0
    """How long to wait for JetStream's PubAck before answering 451."""
    idle_timeout_s: float = 300.0
    """A client silent this long is disconnected (Postfix's smtpd_timeout)."""
    max_sessions: int = 2000
    """Concurrent SMTP sessions per ingress; more are refused with 421."""
    listen_backlog: int = 1024
    """Connections the kernel queues while the ingress is busy. Beyond it a client's SYN is
    dropped and retried a second later; asyncio's default of 100 made a burst of new
    connections wait that second."""
    gc_freeze: bool = True
    """Once listening, move every object alive then (modules, settings, the snapshot) out
    of the garbage collector's sight (``gc.freeze``): its full collections otherwise walk
    them all, each a pause of tens of milliseconds that every client waiting then adds
    to its reply. Off only to measure the difference."""
    gc_threshold0: int = 700
    """Allocations between two young-generation collections (Python's default 700)."""
    binary_envelopes: bool = True
    """Publish envelopes as MessagePack, the body raw (a third smaller than JSON's base64).
    Readers of both forms came first; turn it off while dispatchers or admins older than
    that still read the MAIL stream."""


class DispatcherSettings(_Section, frozen=True, kw_only=True):
    upstreams: list[str] = []
    """Upstream keys (``ns/name``) this dispatcher serves; empty: all of them."""
    max_connections: int = 10
    """Default cap on concurrent connections per upstream (per replica) when the
    SMTPServer does not set one; ten suits providers like Mailtrap."""
    batch: int = 50
    """Messages fetched at once per consumer."""
    gather_s: float = 0.01
    """After a fetch that found fewer messages than it asked for (the consumer has caught
    up), wait this long before the next one, so mail arriving at a steady trickle is
    fetched a few at a time rather than one pull request (or two) per mail. Adds at most
    this to a mail's delivery, never to its acceptance; 0 fetches again at once."""
    gc_freeze: bool = True
    """Once started, move every object alive then out of the garbage collector's sight
    (``gc.freeze``, as ``ingress.gc_freeze``): its full collections then walk only what
    the deliveries made. Off only to measure the difference."""
    ack_wait_s: float = 15.0
    """A message not acked within this is redelivered (the dispatcher holding it died or
    froze). It bounds how long a killed dispatcher's mail waits, not how long a delivery
    may take: a held message is kept alive with ``in_progress`` every third of it, so a
    slow 25 MiB delivery keeps its lease."""
    smtp_timeout_s: float = 60.0
    """Deadline for each SMTP command to an upstream."""
    idle_connection_s: float = 30.0
    """Pooled upstream connections unused this long are closed."""
    tls_ca_file: str | None = None
    """Path of an extra PEM CA bundle (e.g. a company CA) trusted for upstream TLS, on top
    of the system's CAs; unset: the system's CAs only."""
    tls_verify: bool = True
    """Verify upstream certificates and host names. Turning it off accepts any certificate
    (a man in the middle too); only for a lab relay with a throwaway certificate."""
    discovery_interval_s: float = 2.0
    """How often the set of (upstream, policy) consumers is re-derived."""
    retry: snapshot.RetryPolicy = snapshot.RetryPolicy()
    """The global retry schedule (``PODPOST_DISPATCHER__RETRY__MIN_DELAY_S``, ``..MAX_DELAY_S``,
    ``..MAX_AGE_S``); a policy's ``spec.retry`` overrides it field by field."""
    rate_window_scale: float = 1.0
    """Multiplies rate-limit periods; tests shrink a minute to seconds with it."""
    hold_delay_s: float = 5.0
    """Seconds a held mail, or one of a suspended upstream, waits before it is looked at
    again (a nak's delay cannot be shortened): how late a ``podpost queue resume`` or
    ``release`` takes effect at most. Each held mail comes back this often."""
    sweep_interval_s: float = 900.0
    """How often each replica sweeps the attempt records and body objects no mail refers
    to any more (residue of crashes and lost acks); 0 turns the sweep off."""
    sweep_grace_s: float = 7200.0
    """A record or body younger than this is never swept: twice the MAIL stream's
    duplicate window, within which a client's retry may still reuse an object."""


class ReconcilerSettings(_Section, frozen=True, kw_only=True):
    source: Literal["file", "kubernetes"] = "file"
    file: str = DEV_POLICY
    """The policy file of the file source; by default the dev policy shipped with podpost
    (`DEV_POLICY`), wherever podpost runs from."""
    poll_interval_s: float = 1.0
    """How often the file source checks the file for changes."""
    debounce_s: float = 0.2
    """Changes within this are folded into one snapshot."""
    namespace: str | None = None
    """kubernetes source: watch only this namespace (all when unset)."""
    pod_label_selector: str | None = None
    """kubernetes source: watch only pods matching this label selector."""
    snapshot_routes_max: int = 10_000
    """kubernetes source: the routes go to the ROUTES bucket, and into the POLICY snapshot
    too while there are at most this many, for readers older than the bucket (a rolling
    upgrade). Every pod change then republishes the whole snapshot (about 90 KB at 10,000
    routes), so set 0 once every ingress reads the bucket; up to ~100,000 still fit in
    NATS's 1 MiB max payload."""
    kubeconfig: str = ""
    """kubernetes source: path of a kubeconfig file; empty: the pod's service account
    (in-cluster configuration), which is how it runs in production."""
    kube_context: str = ""
    """kubernetes source: kubeconfig context to use; empty: the file's current context."""
    secret_refresh_s: float = 30.0
    """kubernetes source: seconds between re-reads of the referenced Secrets, by name. The
    reconciler only needs ``get`` on Secrets (no list/watch), so a rotated password reaches
    dispatchers within this; a new reference is read at once."""
    watch_timeout_s: float = 300.0
    """kubernetes source: each watch request ends after this many seconds and resumes from
    its last resourceVersion; shorter than load balancers' idle cuts."""
    api_timeout_s: float = 10.0
    """kubernetes source: deadline of every non-watch API request."""
    status_concurrency: int = 8
    """kubernetes source: status PATCHes (and Secret reads) in flight at once; a first sync
    may write one per policy."""
    leader_election: bool = True
    """kubernetes source: only the holder of the Lease publishes and writes statuses, so
    replicas never fight; turn off only when exactly one replica runs."""
    lease_name: str = "podpost-reconciler"
    """kubernetes source: name of the coordination.k8s.io/v1 Lease."""
    lease_namespace: str = ""
    """kubernetes source: namespace of the Lease; empty: the service account's namespace
    (in-cluster), else ``default``."""
    identity: str = ""
    """kubernetes source: this replica's name in the Lease; empty: ``<hostname>-<pid>``
    (the hostname is the pod name in a cluster)."""
    lease_duration_s: float = 15.0
    """kubernetes source: a standby takes over after the Lease went unrenewed this long
    (client-go's default)."""
    lease_renew_deadline_s: float = 10.0
    """kubernetes source: a leader that could not renew for this long stops publishing;
    must be shorter than lease_duration_s (client-go's default)."""
    lease_retry_s: float = 2.0
    """kubernetes source: how often the Lease is renewed or tried (client-go's default)."""


class LogSettings(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    """auto: console on a TTY, JSON otherwise."""


class HealthSettings(_Section, frozen=True, kw_only=True):
    host: str = "0.0.0.0"
    port: int = 0
    """Serves /healthz, /readyz and /metrics (one server per process); 0 turns it off.
    Off by default so several podpost processes on one machine never fight over a port;
    the Helm chart sets it (8080)."""
    sample_interval_s: float = 5.0
    """How often a dispatcher reads its consumers' lag for /metrics (one broker request);
    Prometheus scrapes every 15-30 s, so 5 s is fresh enough. Only while the port is set."""


class ConsoleSettings(_Section, frozen=True, kw_only=True):
    """The web console (``podpost console``): caught mail, the queue and dead letters."""

    host: str = "127.0.0.1"
    """Loopback by default: the console shows mail; expose it on purpose (the Helm chart
    sets 0.0.0.0 behind its Service)."""
    port: int = 8025
    """Mailpit's web port, so people who catch mail find it where they expect."""
    token: str | None = None
    """Bearer token that actions (release, delete, replay, purge) need; unset: the console
    is read-only. In a cluster it comes from a Secret."""
    max_rows: int = 1000
    """At most this many rows per list, newest first; a search narrows them."""


class Settings(_Section, frozen=True, kw_only=True):
    nats: NatsSettings = NatsSettings()
    ingress: IngressSettings = IngressSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    log: LogSettings = LogSettings()
    health: HealthSettings = HealthSettings()
    console: ConsoleSettings = ConsoleSettings()
    grace_s: float = 10.0
    """On SIGTERM, how long to drain before cancelling what is left."""


class SettingsError(ValueError):
    """A bad ``PODPOST_*`` variable, named as the user wrote it."""


PREFIX = "PODPOST_"
ALIASES = {"PODPOST_NATS_URL": "PODPOST_NATS__URL"}
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]*)`")


def _list_paths(tp: Any = Settings, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of every list field, whose variables are comma-separated."""
    out: set[tuple[str, ...]] = set()
    info = msgspec.inspect.type_info(tp)
    if isinstance(info, msgspec.inspect.StructType):
        for field in info.fields:
            ftype = field.type
            if isinstance(ftype, msgspec.inspect.ListType):
                out.add((*path, field.name))
            elif isinstance(ftype, msgspec.inspect.StructType):
                out |= _list_paths(ftype.cls, (*path, field.name))
    return out


def _to_variable(dotted: str) -> str:
    return PREFIX + dotted.replace(".", "__").upper()


def tree_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``PODPOST_A__B=v`` -> ``{"a": {"b": "v"}}``; lists split on commas."""
    lists = _list_paths()
    tree: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(PREFIX):
            continue
        name = ALIASES.get(name, name)
        path = tuple(part.lower() for part in name[len(PREFIX):].split("__"))
        if not all(path):
            raise SettingsError(f"{name}: empty level in the variable name")
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{name}: {part} is a value, not a section")
            node = child
        parsed: Any = value
        if path in lists:
            parsed = [item.strip() for item in value.split(",") if item.strip()]
        node[path[-1]] = parsed
    return tree


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` (command-line flags) over ``base``; ``None`` means unset."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            out[key] = merge(out.get(key, {}) if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def load(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from variables, then flags. Errors name the variable."""
    tree = merge(tree_from_env(environ), overrides or {})
    try:
        return msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_RE.search(message)
        unknown = _UNKNOWN_RE.search(message)
        if match or unknown:
            parts = [match.group(1).split("[")[0]] if match and match.group(1) else []
            if unknown:
                parts.append(unknown.group(1))
            variable = _to_variable(".".join(parts))
            reason = message.split(" - at `")[0]
            raise SettingsError(f"{variable}: {reason}") from None
        raise SettingsError(message) from None
