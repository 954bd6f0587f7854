"""Per-role NATS users and their subject permissions, computed from the bus names.

Every role gets its own NATS user that may publish and subscribe to exactly what its job
needs, so a compromised ingress (the one role every pod can talk to) cannot read upstream
logins, and only the reconciler can change what policy and credentials say:

- ``ingress``: publish mail, store big bodies (and remove one a retry stored again after
  its mail was delivered), emit events, read the POLICY snapshot and the ROUTES bucket,
  read a MAIL message by sequence (is a duplicate's original still queued?).
- ``dispatcher``: consume MAIL, publish dead letters, caught mail and events, read POLICY
  and CREDENTIALS, read and write its own ATTEMPTS and RATES buckets, read and delete bodies,
  watch the operator's CONTROL bucket and write only its ``suspend.*`` keys (a reply
  rule suspends an upstream for every replica; holds and moves stay the operator's).
- ``reconciler``: owns the bus layout (the only role that may create or update streams and
  buckets) and is the only writer of POLICY, ROUTES and CREDENTIALS.
- ``admin``: everything; for the operator's commands (``dlq``, ``queue``, ``trace``,
  ``status``); the only writer of CONTROL.

Permissions name JetStream API subjects per stream (never ``$JS.API.>``), since one
``$JS.API.DIRECT.GET.KV_<credentials>`` would hand the logins to anyone. Replies come
back on a per-role inbox prefix (`inbox_prefix`), and each role may only subscribe to its
own: with the shared ``_INBOX.>`` a role could read the replies to another role's
requests, credentials included.

Passwords reach nats-server through its environment (``password: $NATS_PASSWORD_<ROLE>``),
and nats-server parses a variable's value *as config*, not as text: a value starting with
``-``, or shaped like a number or a date (``12-...``, ``2020-01-01x``), or ``true``, fails
the whole config or becomes something other than the string the roles send. Quoting does
not help (``"$VAR"`` is the literal text ``$VAR``). So generated passwords are letters and
digits starting with a letter (`new_password`), the one shape that always reads back as the
same string, and `render` refuses a given password of any other shape for the Secret.

Pure: this module builds data and text; `podpost nats-config` prints it.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import yaml

from schemas import names

ROLES = ("ingress", "dispatcher", "reconciler", "admin")
"""Every NATS user the generator writes; ``admin`` is the operator's, not a process's."""

API = "$JS.API"

PASSWORD_LENGTH = 32
"""Characters of a generated password: 32 of 62 symbols, about 190 bits."""

_FIRST = string.ascii_letters
_REST = string.ascii_letters + string.digits
_ENV_SAFE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BOOLEANS = frozenset({"true", "false", "yes", "no", "on", "off"})
"""Words nats-server reads as booleans, in any case."""


def new_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password that nats-server reads back unchanged from its environment: a
    letter, then letters and digits (see the module docstring)."""
    return secrets.choice(_FIRST) + "".join(secrets.choice(_REST) for _ in range(length - 1))


def env_safe(password: str) -> bool:
    """Whether nats-server, reading ``password`` from an environment variable, gets
    exactly this string (never a number, a date, a boolean or a parse error)."""
    return _ENV_SAFE.fullmatch(password) is not None and password.lower() not in _BOOLEANS


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """One user's allow and deny lists; a deny always wins over an allow."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


class User(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    user: str
    permissions: Permissions


def password_variable(role: str) -> str:
    """The environment variable nats-server reads a role's password from. Not
    ``PODPOST_*``: podpost refuses unknown variables of its own prefix."""
    return f"NATS_PASSWORD_{role.upper()}"


# --- building blocks: the subjects one kind of access needs ---------------------------

def _info(streams: Iterable[str]) -> list[str]:
    """Stream info: what ``bus.ensure`` and ``kv.status()`` ask for; metadata only."""
    return [f"{API}.STREAM.INFO.{s}" for s in streams]


def _manage(streams: Iterable[str]) -> list[str]:
    """Create and update, by name: the bus owner's, and nothing wider."""
    out: list[str] = []
    for s in streams:
        out += [f"{API}.STREAM.CREATE.{s}", f"{API}.STREAM.UPDATE.{s}"]
    return out


def _get(stream: str) -> list[str]:
    """Reading stored messages one by one (``kv.get``, object info), direct or not."""
    return [f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.STREAM.MSG.GET.{stream}"]


def _consume(stream: str) -> list[str]:
    """Ephemeral ordered consumers (``kv.keys()``, object reads) and their flow control."""
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DELETE.{stream}.>", f"{API}.CONSUMER.INFO.{stream}.>",
            f"$JS.FC.{stream}.>"]


def _kv_read(bucket: str) -> list[str]:
    return _get(names.kv_stream(bucket))


def _kv_key_write(bucket: str, prefix: str) -> str:
    """Put and delete of the keys starting with ``prefix`` (``suspend.``) only."""
    return f"$KV.{bucket}.{prefix}>"


def _kv_write(bucket: str) -> list[str]:
    """Put, delete and purge are all publishes to ``$KV.<bucket>.<key>``."""
    return [names.kv_filter(bucket)]


def _kv_keys(bucket: str) -> list[str]:
    return _consume(names.kv_stream(bucket))


def _obj_put(bucket: str) -> list[str]:
    """Chunks and meta; a put first looks for an older object (a get) and purges what a
    failed put left (a purge)."""
    stream = names.obj_stream(bucket)
    return [f"$O.{bucket}.C.>", f"$O.{bucket}.M.>", f"{API}.STREAM.PURGE.{stream}",
            *_get(stream)]


def _obj_read(bucket: str) -> list[str]:
    """Object reads subscribe an ordered consumer found by subject (STREAM.NAMES)."""
    stream = names.obj_stream(bucket)
    return [*_get(stream), *_consume(stream), f"{API}.STREAM.NAMES"]


def _durable_pull(stream: str) -> list[str]:
    """Shared durable pull consumers: create, bind, fetch, ack/nak/term/in-progress."""
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.>", f"{API}.CONSUMER.INFO.{stream}.>",
            f"{API}.CONSUMER.LIST.{stream}", f"{API}.CONSUMER.NAMES.{stream}",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.>", f"$JS.ACK.{stream}.>"]


def _dedupe(subjects: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(subjects))


def _secret_reads(bus: names.Bus) -> list[str]:
    """Every way to read the CREDENTIALS bucket's values."""
    bucket = bus.credentials_bucket
    return [*_kv_read(bucket), *_kv_keys(bucket)]


# --- the roles ------------------------------------------------------------------------

def permissions(bus: names.Bus, role: str) -> Permissions:
    """The allow and deny lists of one role."""
    ensure = _info(bus.owned_streams)
    inbox = names.inbox_prefix(bus, role) + ".>"
    credentials = bus.credentials_bucket
    policy = bus.policy_bucket
    if role == "ingress":
        return Permissions(
            publish_allow=_dedupe([
                *ensure,
                bus.mail_filter(),
                bus.events_filter(),
                *_kv_read(policy),
                *_kv_keys(bus.routes_bucket),
                *_obj_put(bus.bodies_bucket),
                # is a duplicate's original still queued? (its re-stored body may go)
                f"{API}.STREAM.MSG.GET.{bus.mail_stream}",
            ]),
            subscribe_allow=(inbox,),
            # Belt and braces: these are outside the allow list anyway.
            publish_deny=_dedupe([*_secret_reads(bus), *_kv_write(credentials),
                                  *_kv_write(policy), *_kv_write(bus.routes_bucket)]),
            subscribe_deny=tuple(_kv_write(credentials)),
        )
    if role == "dispatcher":
        rates = bus.rates_bucket
        return Permissions(
            publish_allow=_dedupe([
                *ensure,
                *_durable_pull(bus.mail_stream),
                bus.dead_filter(),
                bus.caught_filter(),
                bus.events_filter(),
                *_kv_read(policy),
                *_kv_read(credentials),
                *_kv_read(bus.attempts_bucket), *_kv_write(bus.attempts_bucket),
                *_kv_keys(bus.attempts_bucket),
                *_kv_read(rates), *_kv_write(rates), *_kv_keys(rates),
                *_obj_read(bus.bodies_bucket), *_obj_put(bus.bodies_bucket),
                *_kv_read(bus.control_bucket), *_kv_keys(bus.control_bucket),
                # the sweep: MAIL read by sequence, DEAD and CAUGHT scanned for body refs
                *_get(bus.mail_stream), *_consume(bus.dead_stream),
                *_consume(bus.caught_stream),
                _kv_key_write(bus.control_bucket, names.SUSPEND),
            ]),
            subscribe_allow=(inbox,),
            publish_deny=_dedupe([*_kv_write(credentials), *_kv_write(policy),
                                  _kv_key_write(bus.control_bucket, names.HOLD),
                                  _kv_key_write(bus.control_bucket, names.MOVING),
                                  *_manage(bus.owned_streams)]),
        )
    if role == "reconciler":
        return Permissions(
            publish_allow=_dedupe([
                *ensure,
                *_manage(bus.owned_streams),
                *_kv_read(policy), *_kv_write(policy), *_kv_keys(policy),
                *_kv_read(credentials), *_kv_write(credentials), *_kv_keys(credentials),
                *_kv_keys(bus.routes_bucket), *_kv_write(bus.routes_bucket),
                bus.events_filter(),
            ]),
            subscribe_allow=(inbox,),
        )
    if role == "admin":
        return Permissions(publish_allow=(">",), subscribe_allow=(">",))
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")


def users(bus: names.Bus, roles: Iterable[str] = ROLES) -> list[User]:
    return [User(role=r, user=names.user_name(bus, r), permissions=permissions(bus, r))
            for r in roles]


# --- output ---------------------------------------------------------------------------

def _permission_tree(perms: Permissions) -> dict[str, Any]:
    def side(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
        out = {"allow": list(allow)}
        if deny:
            out["deny"] = list(deny)
        return out

    return {"publish": side(perms.publish_allow, perms.publish_deny),
            "subscribe": side(perms.subscribe_allow, perms.subscribe_deny)}


class Literal(msgspec.Struct, frozen=True):
    """A password given as text; written quoted."""

    text: str


class Variable(msgspec.Struct, frozen=True):
    """A password nats-server reads from its environment; written as ``$NAME``."""

    name: str


Password = Literal | Variable


def server_config(bus: names.Bus, passwords: Mapping[str, Password],
                  roles: Iterable[str] = ROLES) -> str:
    """The ``authorization { users: [...] }`` block of a nats-server config file.

    Subjects are quoted (``"$JS.API..."`` is text, an unquoted ``$X`` is a variable)."""
    lines = [f"# podpost NATS users for prefix {bus.prefix!r}; generated by podpost nats-config",
             "authorization {", "  users: ["]
    for user in users(bus, roles):
        password = passwords.get(user.role, Variable(password_variable(user.role)))
        written = (json.dumps(password.text) if isinstance(password, Literal)
                   else f"${password.name}")
        lines.append(f"    {{user: {json.dumps(user.user)}, password: {written},")
        lines.append(f"     permissions: {json.dumps(_permission_tree(user.permissions))}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def helm_values(bus: names.Bus, secret_name: str, roles: Iterable[str] = ROLES
                ) -> dict[str, Any]:
    """Values for the official NATS chart (1.x): the users under ``config.merge`` with
    each password as ``<< $VAR >>`` (written unquoted by the chart), and the variables
    taken from keys of one Secret (``container.env``)."""
    chosen = list(roles)
    return {
        "config": {"merge": {"authorization": {"users": [
            {"user": u.user, "password": f"<< ${password_variable(u.role)} >>",
             "permissions": _permission_tree(u.permissions)}
            for u in users(bus, chosen)
        ]}}},
        "container": {"env": {
            password_variable(role): {"valueFrom": {"secretKeyRef": {
                "name": secret_name, "key": role}}}
            for role in chosen
        }},
    }


def secret_manifest(bus: names.Bus, secret_name: str, namespace: str | None,
                    passwords: Mapping[str, str]) -> dict[str, Any]:
    """A v1 Secret holding one password per role (keys = role names) and the user
    names, for both the NATS pods and podpost's."""
    metadata: dict[str, Any] = {"name": secret_name,
                                "labels": {"app.kubernetes.io/part-of": "podpost"}}
    if namespace:
        metadata["namespace"] = namespace
    data = dict(passwords)
    data.update({f"{role}-user": names.user_name(bus, role) for role in passwords})
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "stringData": data}


def chart_values(bus: names.Bus, secret_name: str) -> dict[str, Any]:
    """A values file for podpost's own chart: the prefix, the Secret's name and the NATS
    subchart's users and password variables, consistent by construction."""
    return {"bus": {"prefix": bus.prefix}, "natsAuth": {"secretName": secret_name},
            "nats": helm_values(bus, secret_name)}


FORMATS = ("conf", "helm-values", "chart-values", "secret")


def render(bus: names.Bus, fmt: str, passwords: Mapping[str, str], *,
           secret_name: str = "podpost-nats-users", namespace: str | None = None) -> str:
    """What ``podpost nats-config`` prints.

    - ``conf``: the nats-server block; a role without a given password reads it from
      ``$NATS_PASSWORD_<ROLE>`` in the server's environment.
    - ``helm-values``: the values for the NATS chart (see `helm_values`).
    - ``chart-values``: the same under ``nats:``, with ``bus.prefix`` and
      ``natsAuth.secretName``: a values file for podpost's chart (`chart_values`).
    - ``secret``: the v1 Secret both charts read; every role needs a password, of the
      shape nats-server reads back from its environment (`env_safe`)."""
    if fmt == "conf":
        return server_config(bus, {r: Literal(p) for r, p in passwords.items()})
    if fmt == "helm-values":
        return yaml.safe_dump(helm_values(bus, secret_name), sort_keys=False, width=200)
    if fmt == "chart-values":
        return yaml.safe_dump(chart_values(bus, secret_name), sort_keys=False, width=200)
    if fmt == "secret":
        missing = [r for r in ROLES if not passwords.get(r)]
        if missing:
            raise ValueError(f"no password for {', '.join(missing)}")
        unsafe = [r for r in ROLES if not env_safe(passwords[r])]
        if unsafe:
            raise ValueError(
                f"the {', '.join(unsafe)} password would not read back from nats-server's "
                "environment: use letters and digits, starting with a letter")
        return yaml.safe_dump(secret_manifest(bus, secret_name, namespace, passwords),
                              sort_keys=False)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
