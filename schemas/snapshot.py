"""The policy snapshot: everything ingress and dispatchers need, resolved and flat.

The reconciler builds it from resources (pure) and publishes it to the POLICY bucket; the
KV revision is the snapshot's revision. Credentials are never in here: a policy names the
CREDENTIALS key to read, and only dispatchers may read that bucket.
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime
from typing import Literal

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A retry schedule: the dispatcher's global one (``settings.dispatcher.retry``, from
    ``PODPOST_DISPATCHER__RETRY__*``) and, overridden by a policy's `RetryOverride`, the
    effective one of a mail. Delay = the mail's age clamped to [min_delay_s, max_delay_s];
    dead past max_age_s. The defaults are Postfix's (minimal_backoff_time,
    maximal_backoff_time, maximal_queue_lifetime). Human input (settings), never on the
    bus: unknown fields are refused, so a misspelt variable is an error."""

    min_delay_s: float = 300.0
    max_delay_s: float = 4020.0
    max_age_s: float = 5 * 86400.0


class RetryOverride(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's ``spec.retry``: each field set overrides the dispatcher's global one."""

    min_delay_s: float | None = None
    max_delay_s: float | None = None
    max_age_s: float | None = None


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    maximum: int
    period_s: float


class Fallback(msgspec.Struct, frozen=True, kw_only=True):
    """A policy's fallback upstream and the CREDENTIALS key of its login."""

    upstream: str
    credentials: str | None = None


class PolicyView(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    """``<namespace>/<name>`` of the EmailPolicy."""
    upstream: str
    """``<namespace>/<name>`` of the SMTPServer, or `names.CATCHER`."""
    credentials: str | None = None
    """CREDENTIALS bucket key holding this policy's login, when it has one."""
    allowed_senders: list[str] = []
    max_message_size: int | None = None
    ratelimit: RateLimit | None = None
    retry: RetryOverride | None = None
    require_tls: bool = False
    """Mail is admitted only over TLS (STARTTLS or the implicit-TLS port)."""
    allow_plaintext_auth: bool = False
    """The policy's client logins may be used before TLS."""
    rewrite_sender: str | None = None
    """The provider's verified address that replaces the envelope sender and ``From:``."""
    fallbacks: list[Fallback] = []
    """Upstreams to fail over to, in order (`dispatcher.rules.failover`)."""
    failover_after_s: float = 600.0
    """How long an upstream fails transiently before its mail moves to the next one."""


QuotaPeriod = Literal["minute", "hour", "day", "month"]
ReplyAction = Literal["retry", "wait", "suspend", "dead"]


class Quota(msgspec.Struct, frozen=True, kw_only=True):
    """A provider account's quota (`resources.Quota`): ``maximum`` messages or recipients
    per calendar ``period`` in ``time_zone`` (None: UTC)."""

    maximum: int
    period: QuotaPeriod
    count: Literal["messages", "recipients"] = "messages"
    time_zone: str | None = None


class ReplyRule(msgspec.Struct, frozen=True, kw_only=True):
    """A server's reply rule (`resources.ReplyRule`); the regex was compiled once by the
    reconciler, so it is valid."""

    match: str
    action: ReplyAction
    for_s: float | None = None


class UpstreamView(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    host: str
    port: int
    connect: Literal["plain", "ssl", "starttls"] = "plain"
    auth_type: str = "PLAIN"
    max_connections: int | None = None
    timeout_s: float | None = None
    tls_ca: str | None = None
    """CREDENTIALS bucket key of the CA bundle (`TrustedCA`) to trust besides the system's;
    named by the bundle's hash, so a changed bundle is a changed snapshot."""
    quotas: list[Quota] = []
    """Per provider account: this upstream with one policy's credentials."""
    reply_rules: list[ReplyRule] = []
    """Tried in order before the presets (`dispatcher.rules.replyrules`)."""


class Route(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A client network (a pod's /32 or /128, or a static CIDR) and the policy it gets.
    Not tracked by the garbage collector (three strings cannot form a cycle): a reader
    holds 150,000 of them."""

    network: str
    policy: str
    source: str
    """Who the address belongs to: ``pod:<ns>/<name>`` or ``static:<ns>/<name>``."""


class ClientLogin(msgspec.Struct, frozen=True, kw_only=True):
    """A login a client may give the ingress (a policy's ``clientCredentials``): not the
    password, a PBKDF2-SHA256 verifier of it (`login_verifier`), since every ingress reads
    the snapshot."""

    policy: str
    salt: str
    """Hex; derived from policy and username, so an unchanged Secret is an unchanged
    snapshot."""
    iterations: int
    verifier: str
    """Hex PBKDF2-SHA256 of the password."""


LOGIN_ITERATIONS = 20_000
"""PBKDF2 rounds of a client login's verifier: about 10 ms per check or build, against
offline guessing by someone who reads the POLICY bucket; failed logins are slowed down
online besides."""


def login_verifier(password: str, salt: str, iterations: int) -> str:
    """The verifier the reconciler stores and the ingress recomputes to check a login."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes.fromhex(salt),
                               iterations).hex()


def login_salt(policy: str, username: str) -> str:
    return hashlib.sha256(f"podpost-login\0{policy}\0{username}".encode()).hexdigest()[:32]


class PolicySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    generated_at: datetime
    policies: dict[str, PolicyView] = {}
    upstreams: dict[str, UpstreamView] = {}
    routes: list[Route] = []
    logins: dict[str, ClientLogin] = {}
    """Client logins by username: a client that logs in with one gets its policy."""
    source: str = ""
    """Where it was built from: ``file:<path>`` or ``kubernetes``."""
    digest: str = ""
    """A hash of the content, so an unchanged rebuild is not published again."""
    routes_bucket: bool = False
    """The routes are in the ROUTES bucket (one key per network, `route_encoder`): a
    reader that keeps a copy of that bucket looks clients up there. ``routes`` then holds
    them too only while they are few (for readers older than the bucket); an old
    reconciler leaves this False, and ``routes`` is the whole table."""


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password, not even by accident
        return f"Credentials(username={self.username!r}, password=<redacted>)"


class TrustedCA(msgspec.Struct, frozen=True, kw_only=True):
    """A CREDENTIALS bucket value next to the logins: an upstream's CA bundle. Not secret,
    but kept out of the snapshot every ingress reads: a bundle may be hundreds of KB."""

    pem: str


snapshot_encoder = msgspec.json.Encoder()
snapshot_decoder = msgspec.json.Decoder(PolicySnapshot)
route_encoder = msgspec.json.Encoder()
route_decoder = msgspec.json.Decoder(Route)
"""A ROUTES bucket value: one `Route`, keyed by `schemas.names.route_key` of its network."""
credentials_decoder = msgspec.json.Decoder(Credentials)
trusted_ca_decoder = msgspec.json.Decoder(TrustedCA)


# --- the stored form ----------------------------------------------------------------------

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
"""Bound on a stored snapshot's decompressed size (10,000 pods make about 1.3 MB)."""


def encode_snapshot(snap: PolicySnapshot) -> bytes:
    """The POLICY bucket value: the JSON, zlib-compressed (level 1). A 10,000-pod snapshot
    is ~1.3 MB of JSON, over NATS's default 1 MiB max payload; compressed it is ~90 KB,
    and every ingress and dispatcher replica fetches it on each change."""
    return zlib.compress(snapshot_encoder.encode(snap), 1)


def snapshot_json(value: bytes) -> bytes:
    """The JSON of a stored snapshot, compressed or not: plain JSON starts with ``{``, a
    zlib stream never does, so old plain values stay readable. Raises
    `msgspec.DecodeError` for a corrupt or oversized value, like a bad JSON would."""
    if value[:1] == b"{":
        return value
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(value, MAX_SNAPSHOT_BYTES)
    except zlib.error as exc:
        raise msgspec.DecodeError(f"snapshot is neither JSON nor zlib: {exc}") from exc
    if inflater.unconsumed_tail:
        raise msgspec.DecodeError(f"snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes")
    return data


def decode_snapshot(value: bytes) -> PolicySnapshot:
    """A stored snapshot, as written by `encode_snapshot` or as plain JSON."""
    return snapshot_decoder.decode(snapshot_json(value))
