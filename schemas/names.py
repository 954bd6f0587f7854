"""Names on the bus: streams, subjects, buckets and how resource keys become subject tokens.

Every name carries an installation prefix so several podpost installations can share one
NATS account. A resource key is ``<namespace>/<name>``; in a subject it becomes the two
tokens ``<namespace>.<name>`` with the dots of the name written as ``_`` (Kubernetes names
never hold ``_``, so the mapping cannot collide).
"""

from __future__ import annotations

import re

import msgspec

CATCHER = "_/catcher"
"""The upstream key of the built-in catcher sink. ``_`` is no valid namespace, so no
SMTPServer can ever take this key."""

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class InvalidKey(ValueError):
    """A resource key that is not ``<namespace>/<name>``."""


def split_key(key: str) -> tuple[str, str]:
    namespace, sep, name = key.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise InvalidKey(f"not a <namespace>/<name> key: {key!r}")
    return namespace, name


def key_token(key: str) -> str:
    """``ns/my.name`` -> ``ns.my_name``: a resource key as two subject tokens."""
    namespace, name = split_key(key)
    return f"{namespace}.{name.replace('.', '_')}"


def token_key(token: str) -> str:
    """The inverse of `key_token`."""
    namespace, _, name = token.partition(".")
    return f"{namespace}/{name.replace('_', '.')}"


def key_ident(key: str) -> str:
    """A key as one name usable for consumers and KV keys: ``ns/my.name`` -> ``ns__my_name``."""
    namespace, name = split_key(key)
    return f"{namespace}__{name.replace('.', '_')}"


def route_key(network: str) -> str:
    """A route's ROUTES bucket key: its normalized network with the colons of an IPv6
    address written as ``-`` (a KV key admits ``-/_=.`` and alphanumerics; an address never
    holds ``-``): ``10.0.0.7/32``, ``fd00--5/128``."""
    return network.replace(":", "-")


def route_network(key: str) -> str:
    """The inverse of `route_key`."""
    return key.replace("-", ":")


class Bus(msgspec.Struct, frozen=True, kw_only=True):
    """Every stream, subject and bucket name of one installation."""

    prefix: str = "podpost"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"bus prefix {self.prefix!r} must be lower-case letters, digits and '-', "
                "starting with a letter, at most 31 characters"
            )

    @property
    def _upper(self) -> str:
        return self.prefix.upper().replace("-", "_")

    # streams
    @property
    def mail_stream(self) -> str:
        return f"{self._upper}_MAIL"

    @property
    def dead_stream(self) -> str:
        return f"{self._upper}_DEAD"

    @property
    def events_stream(self) -> str:
        return f"{self._upper}_EVENTS"

    @property
    def caught_stream(self) -> str:
        return f"{self._upper}_CAUGHT"

    # buckets
    @property
    def policy_bucket(self) -> str:
        return f"{self._upper}_POLICY"

    @property
    def credentials_bucket(self) -> str:
        return f"{self._upper}_CREDENTIALS"

    @property
    def attempts_bucket(self) -> str:
        return f"{self._upper}_ATTEMPTS"

    @property
    def bodies_bucket(self) -> str:
        return f"{self._upper}_BODIES"

    @property
    def rates_bucket(self) -> str:
        """Per-policy rate-limit counters, one key per window (`schemas.rates`)."""
        return f"{self._upper}_RATES"

    @property
    def control_bucket(self) -> str:
        """The operator's steering (`schemas.control`): suspended upstreams, held mails,
        moves under way; written by ``podpost queue``, watched by every dispatcher."""
        return f"{self._upper}_CONTROL"

    @property
    def routes_bucket(self) -> str:
        """The routes (client network -> policy), one key per network (`route_key`)."""
        return f"{self._upper}_ROUTES"

    snapshot_key: str = "snapshot"

    @property
    def owned_streams(self) -> tuple[str, ...]:
        """Every JetStream stream of one installation, buckets and object store included."""
        return (
            self.mail_stream, self.dead_stream, self.events_stream, self.caught_stream,
            kv_stream(self.policy_bucket), kv_stream(self.credentials_bucket),
            kv_stream(self.attempts_bucket), kv_stream(self.rates_bucket),
            obj_stream(self.bodies_bucket), kv_stream(self.control_bucket),
            kv_stream(self.routes_bucket),
        )

    # subjects
    def mail_subject(self, upstream: str, policy: str) -> str:
        return f"{self.prefix}.mail.out.{key_token(upstream)}.{key_token(policy)}"

    def mail_filter(self, upstream: str | None = None) -> str:
        if upstream is None:
            return f"{self.prefix}.mail.out.>"
        return f"{self.prefix}.mail.out.{key_token(upstream)}.>"

    def parse_mail_subject(self, subject: str) -> tuple[str, str]:
        """``<prefix>.mail.out.<up-ns>.<up>.<pol-ns>.<pol>`` -> (upstream key, policy key)."""
        parts = subject.split(".")
        if len(parts) != 7 or parts[:3] != [self.prefix, "mail", "out"]:
            raise InvalidKey(f"not a mail subject: {subject!r}")
        return token_key(".".join(parts[3:5])), token_key(".".join(parts[5:7]))

    def parse_mail_filter(self, subject: str) -> tuple[str, str | None]:
        """The inverse of `mail_subject` and `mail_filter` of one upstream: (upstream key,
        policy key) of a MAIL subject, (upstream key, None) of ``<prefix>.mail.out.<up>.>``."""
        parts = subject.split(".")
        if len(parts) == 6 and parts[:3] == [self.prefix, "mail", "out"] and parts[5] == ">":
            return token_key(".".join(parts[3:5])), None
        return self.parse_mail_subject(subject)

    def dead_subject(self, upstream: str) -> str:
        return f"{self.prefix}.mail.dead.{key_token(upstream)}"

    def dead_filter(self, upstream: str | None = None) -> str:
        if upstream is None:
            return f"{self.prefix}.mail.dead.>"
        return self.dead_subject(upstream)

    def parse_dead_subject(self, subject: str) -> str:
        """The inverse of `dead_subject`: ``<prefix>.mail.dead.<ns>.<name>`` -> ``ns/name``."""
        parts = subject.split(".")
        if len(parts) != 5 or parts[:3] != [self.prefix, "mail", "dead"]:
            raise InvalidKey(f"not a dead-letter subject: {subject!r}")
        return token_key(".".join(parts[3:5]))

    def event_subject(self, kind: str) -> str:
        return f"{self.prefix}.mail.events.{kind}"

    def events_filter(self) -> str:
        return f"{self.prefix}.mail.events.>"

    def caught_subject(self, policy: str) -> str:
        return f"{self.prefix}.mail.caught.{key_token(policy)}"

    def caught_filter(self, namespace: str | None = None) -> str:
        """Caught mail of every policy, or of the policies of one namespace."""
        if namespace is None:
            return f"{self.prefix}.mail.caught.>"
        return f"{self.prefix}.mail.caught.{namespace}.*"

    def consumer_name(self, upstream: str, policy: str) -> str:
        """The durable consumer for one (upstream, policy) pair, shared by all dispatchers."""
        return f"out__{key_ident(upstream)}__{key_ident(policy)}"


SUSPEND = "suspend."
HOLD = "hold."
MOVING = "moving."
"""The key prefixes of the CONTROL bucket, one per kind of entry (`schemas.control`)."""
_MAIL_ID_RE = re.compile(r"^[A-Za-z0-9_=-]{1,200}$")


def suspend_key(upstream: str) -> str:
    """``suspend.mail__relay``: the CONTROL key of an upstream's suspension."""
    return SUSPEND + key_ident(upstream)


def hold_key(mail_id: str) -> str:
    """``hold.<mail id>``: the CONTROL key of a held mail (ingress mail ids are base32,
    the ATTEMPTS bucket keys by them too)."""
    if not _MAIL_ID_RE.match(mail_id):
        raise InvalidKey(f"not a mail id usable as a key: {mail_id!r}")
    return HOLD + mail_id


def moving_key(seq: int) -> str:
    """``moving.<MAIL sequence>``: the CONTROL key of a move under way."""
    return f"{MOVING}{seq}"


def kv_stream(bucket: str) -> str:
    """The stream JetStream keeps a KV bucket in."""
    return f"KV_{bucket}"


def kv_filter(bucket: str) -> str:
    """Every key of a KV bucket, as the subjects of its stream (``$KV.<bucket>.>``)."""
    return f"$KV.{bucket}.>"


def obj_stream(bucket: str) -> str:
    """The stream JetStream keeps an object store in."""
    return f"OBJ_{bucket}"


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """How long each store keeps its data; the defaults are docs/architecture.md's ("The bus")."""

    dead_days: float = 30.0
    events_days: float = 7.0
    caught_days: float = 7.0
    caught_max_msgs: int = 10_000
    duplicate_window_s: float = 3600.0
    """A client retries a refused transaction minutes later; an hour of dedupe covers it."""
    bodies_days: float = 35.0
    """Bodies are deleted on delivery and purge; this TTL only collects what a crash left
    behind. It must outlive the max queue age (5 days) and the DEAD retention (30 days)."""
    attempts_days: float = 35.0
    rates_ttl_s: float = 2 * 3600.0
    """Rate-limit counters vanish this long after their last write: two windows of the
    longest period (an hour), so the current and the previous window are always there."""


_ROLE_RE = re.compile(r"^[a-z][a-z0-9-]*$")


def inbox_prefix(bus: Bus, role: str) -> str:
    """The reply-subject prefix of one role's connections: ``_INBOX.<prefix>.<role>``.

    nats-py appends ``.<unique>`` to it for every request and push consumer."""
    token = role if _ROLE_RE.match(role) else "client"
    return f"_INBOX.{bus.prefix}.{token}"


def user_name(bus: Bus, role: str) -> str:
    """``podpost-ingress``: the NATS user of a role."""
    return f"{bus.prefix}-{role}"
