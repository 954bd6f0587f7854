"""The custom resource specs, kube-mail compatible, plus podpost's optional additions.

Group ``kube-mail.helmich.me``, version ``v1alpha1``: a kube-mail user's manifests decode
unchanged. These Structs are human input, so unknown fields are refused (a typo is an error,
not a silent default); the CRD OpenAPI schemas in ``deploy/crds`` are generated from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

GROUP = "kube-mail.helmich.me"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
STATIC_API_VERSION = "podpost/v1alpha1"

Duration = Annotated[
    str,
    Meta(
        pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
        description="A duration such as 90s, 5m, 1h7m or 5d.",
    ),
]


class _Spec(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Base of every human-written spec: camelCase on the wire, unknown fields refused."""


# --- SMTPServer -------------------------------------------------------------------------


class KeyRef(_Spec, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1, description="The object's name, in the "
                              "SMTPServer's namespace.")]
    key: Annotated[str, Meta(min_length=1, description="The data key holding the PEM; "
                             "ca.crt by default.")] = "ca.crt"


class CASource(_Spec, frozen=True, kw_only=True):
    """podpost: a private CA (PEM bundle) the dispatcher trusts for this upstream, besides
    the system's CAs: exactly one of configMapKeyRef or secretKeyRef, in the SMTPServer's
    namespace."""

    config_map_key_ref: KeyRef | None = None
    secret_key_ref: KeyRef | None = None



class Quota(_Spec, frozen=True, kw_only=True):
    """podpost: a provider quota, e.g. 300 messages a day (Brevo's free tier) or 3,000
    recipients a month (Resend's)."""

    maximum: Annotated[int, Meta(ge=0, description="Messages (or recipients) allowed per "
                                 "period for the account.")]
    period: Annotated[
        Literal["minute", "hour", "day", "month"],
        Meta(description="A calendar window: a day starts at midnight, a month on its "
             "first day, in timeZone (UTC when unset)."),
    ]
    count: Annotated[
        Literal["messages", "recipients"],
        Meta(description="What one mail costs: 1, or its number of recipients."),
    ] = "messages"
    time_zone: (
        Annotated[str, Meta(min_length=1, description="An IANA time zone such as "
                            "America/New_York, where the provider's day starts.")]
        | None
    ) = None


class ReplyRule(_Spec, frozen=True, kw_only=True):
    """podpost: one reply rule: a regular expression searched in ``<code> <enhanced code>
    <text>`` of a reply (e.g. ``550 5.4.5 Daily user sending quota exceeded``)."""

    match: Annotated[str, Meta(min_length=1, description="A Python regular expression, "
                               "searched case-insensitively.")]
    action: Annotated[
        Literal["retry", "wait", "suspend", "dead"],
        Meta(description="retry: temporary, retried after the backoff (even a 5xx); "
             "wait: the account's quota is used up, the mail waits for its next window "
             "(no attempt counted); suspend: no replica sends to this server for `for`; "
             "dead: permanent, dead-lettered (even a 4xx)."),
    ]
    for_: Duration | None = msgspec.field(default=None, name="for")


class SMTPServerSpec(_Spec, frozen=True, kw_only=True):
    server: Annotated[str, Meta(min_length=1, description="Host name or address of the upstream.")]
    port: Annotated[int, Meta(ge=1, le=65535, description="TCP port; 587 by default.")] = 587
    connect: (
        Annotated[
            Literal["plain", "ssl", "starttls"],
            Meta(
                description="plain: no TLS; ssl: implicit TLS; starttls: upgrade after EHLO. "
                "When unset, the deprecated `tls` decides, as in kube-mail: unset or true "
                "is ssl, false is plain."
            ),
        ]
        | None
    ) = None
    tls: Annotated[
        bool,
        Meta(description="Deprecated: use `connect`. Used only when `connect` is unset: "
             "unset or true is implicit TLS (ssl), false is plain."),
    ] | None = None
    auth_type: Annotated[
        Literal["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"],
        Meta(description="SASL mechanism used with the policy's credentials "
             "(SCRAM-SHA-256 is a podpost addition)."),
    ] = "PLAIN"
    # podpost additions
    max_connections: (
        Annotated[
            int,
            Meta(ge=1, le=1000, description="podpost: cap on concurrent connections to this "
                 "upstream per dispatcher replica."),
        ]
        | None
    ) = None
    timeout_seconds: (
        Annotated[float, Meta(gt=0, le=600, description="podpost: per SMTP command deadline.")]
        | None
    ) = None
    tls_ca: CASource | None = msgspec.field(default=None, name="tlsCA")
    quotas: Annotated[
        list[Quota],
        Meta(description="podpost: the provider account's quotas (this server with one "
             "policy's credentials), counted across every policy and dispatcher replica "
             "that sends through it; over quota, mail waits in the queue for the next "
             "window."),
    ] = []
    reply_rules: Annotated[
        list[ReplyRule],
        Meta(description="podpost: what a reply of this server means, tried in order "
             "before the built-in presets and the generic 4xx/5xx rule; the first rule "
             "whose match finds the reply decides."),
    ] = []


def connect_mode(spec: SMTPServerSpec) -> Literal["plain", "ssl", "starttls"]:
    """``connect`` wins; otherwise kube-mail's rule (src/policy/kubernetes.ts): ``tls``
    unset or true is implicit TLS, ``tls: false`` is plain. So a server written with
    neither gets TLS, never a login sent in the clear."""
    if spec.connect is not None:
        return spec.connect
    return "plain" if spec.tls is False else "ssl"


# --- EmailPolicy ------------------------------------------------------------------------


class LabelSelectorRequirement(_Spec, frozen=True, kw_only=True):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []


class LabelSelector(_Spec, frozen=True, kw_only=True):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []


class RateLimiting(_Spec, frozen=True, kw_only=True):
    maximum: Annotated[int, Meta(ge=0, description="Messages allowed per period, per policy.")]
    period: Annotated[
        Literal["hour", "minute", "day"],
        Meta(description="The window the maximum applies to; minute when unset, as in "
             "kube-mail (day is a podpost addition)."),
    ] = "minute"


class ObjectRef(_Spec, frozen=True, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    namespace: str | None = None


class Fallback(_Spec, frozen=True, kw_only=True):
    """podpost: a second upstream for a policy's mail, with its own login."""

    server: ObjectRef
    credentials: ObjectRef | None = None


class SMTPSink(_Spec, frozen=True, kw_only=True):
    server: ObjectRef
    credentials: ObjectRef | None = None
    # podpost additions
    fallbacks: Annotated[
        list[Fallback],
        Meta(description="podpost: servers to fail over to, in order: mail moves to the "
             "next one while the current one is suspended, over its quota, or has failed "
             "transiently for longer than failoverAfter; new mail goes to `server` first."),
    ] = []
    failover_after: Duration = "10m"


class CatcherSink(_Spec, frozen=True, kw_only=True):
    """podpost: keep the mail inside podpost for viewing (`podpost caught`) instead of
    sending it anywhere."""


class Sink(_Spec, frozen=True, kw_only=True):
    smtp: SMTPSink | None = None
    catcher: CatcherSink | None = None


class RetrySpec(_Spec, frozen=True, kw_only=True):
    """podpost: the retry schedule. Delay is the mail's age clamped to [minDelay, maxDelay]
    (Postfix's rule); past maxQueueAge the mail is dead-lettered as expired."""

    min_delay: Duration | None = None
    max_delay: Duration | None = None
    max_queue_age: Duration | None = None


class EmailPolicySpec(_Spec, frozen=True, kw_only=True):
    default: Annotated[
        bool,
        Meta(description="Fallback for pods of this namespace that no other policy selects."),
    ] = False
    pod_selector: LabelSelector = LabelSelector()
    ratelimiting: RateLimiting | None = None
    sink: Sink
    # podpost additions
    retry: RetrySpec | None = None
    max_message_size: (
        Annotated[int, Meta(ge=1, description="podpost: bytes; the global limit when unset.")]
        | None
    ) = None
    allowed_senders: Annotated[
        list[str],
        Meta(description="podpost: envelope sender and From: must match one of these: "
             "an address, '@domain' or '*@domain'. Empty: any sender."),
    ] = []
    require_tls: Annotated[
        bool,
        Meta(description="podpost: admit this policy's mail only over TLS (STARTTLS or "
             "the ingress's implicit-TLS port); without it MAIL gets 530."),
    ] = msgspec.field(default=False, name="requireTLS")
    client_credentials: Annotated[
        list[ObjectRef],
        Meta(description="podpost: Secrets (username, password) a client may log in to "
             "the ingress with (AUTH PLAIN or LOGIN) to get this policy whatever its "
             "address: for clients no pod address identifies. Offered after TLS only, "
             "unless allowPlaintextAuth."),
    ] = []
    allow_plaintext_auth: Annotated[
        bool,
        Meta(description="podpost: offer and accept clientCredentials before TLS too."),
    ] = False
    rewrite_sender: (
        Annotated[
            str,
            Meta(pattern=r"^[^@\s<>]+@[^@\s<>]+$",
                 description="podpost: the provider's verified address; the envelope "
                 "sender and From: become it (the display name kept) and the original "
                 "From: goes into Reply-To when none is set, so SPF and DMARC align with "
                 "the provider's domain."),
        ]
        | None
    ) = None


# --- documents --------------------------------------------------------------------------


class Metadata(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Object metadata. Unknown fields (uid, resourceVersion, ...) are allowed: they come
    from the API server, not from a person."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generation: int | None = None
    resource_version: str | None = None


class StaticSourceSpec(_Spec, frozen=True, kw_only=True):
    cidrs: Annotated[list[str], Meta(min_length=1)]


class SMTPServer(msgspec.Struct, frozen=True, kw_only=True, rename="camel",
                 forbid_unknown_fields=True):
    api_version: Literal["kube-mail.helmich.me/v1alpha1"] = "kube-mail.helmich.me/v1alpha1"
    kind: Literal["SMTPServer"] = "SMTPServer"
    metadata: Metadata
    spec: SMTPServerSpec
    status: dict[str, object] | None = None


class EmailPolicy(msgspec.Struct, frozen=True, kw_only=True, rename="camel",
                  forbid_unknown_fields=True):
    api_version: Literal["kube-mail.helmich.me/v1alpha1"] = "kube-mail.helmich.me/v1alpha1"
    kind: Literal["EmailPolicy"] = "EmailPolicy"
    metadata: Metadata
    spec: EmailPolicySpec
    status: dict[str, object] | None = None


class StaticSource(msgspec.Struct, frozen=True, kw_only=True, rename="camel",
                   forbid_unknown_fields=True):
    """File source only: clients in ``cidrs`` are treated as a pod with these labels in
    this namespace."""

    api_version: Literal["podpost/v1alpha1"] = "podpost/v1alpha1"
    kind: Literal["StaticSource"] = "StaticSource"
    metadata: Metadata
    spec: StaticSourceSpec


class Secret(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A v1 Secret holding ``username`` and ``password`` (``data`` base64, or ``stringData``)."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["Secret"] = "Secret"
    metadata: Metadata
    type: str = "Opaque"
    data: dict[str, str] = {}
    string_data: dict[str, str] = {}


class ConfigMap(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A v1 ConfigMap; podpost reads a CA bundle from its ``data``."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["ConfigMap"] = "ConfigMap"
    metadata: Metadata
    data: dict[str, str] = {}


# --- status -----------------------------------------------------------------------------


class Condition(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None
