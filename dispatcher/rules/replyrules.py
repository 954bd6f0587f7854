"""Reply rules: what an upstream's reply means, before the generic 4xx/5xx rule.

A provider says "your quota is used up" in its own words, and often with a 5xx: Gmail
answers ``550 5.4.5 Daily user sending quota exceeded``, so the generic rule (5xx is
permanent) would dead-letter mail that only has to wait until tomorrow. KumoMTA's shaping
rules match the reply text for the same reason. A rule is a regular expression searched,
case-insensitively, in ``<code> <text>`` of a reply (the text starts with the enhanced
status code when the server sends one: ``550 5.4.5 Daily ...``), and an action:

- ``retry``: temporary, retried after the usual backoff, even a 5xx;
- ``wait``: the provider account's quota is used up: the account's quota windows are
  marked full for every replica and the mail waits for the next window; a server without
  quotas is suspended instead, for the rule's ``for`` (1 h when unset);
- ``suspend``: no replica sends to the server for ``for`` (1 h when unset): a suspension
  in the CONTROL bucket, as ``podpost queue suspend --for`` writes it;
- ``dead``: permanent, dead-lettered, even a 4xx.

The server's own rules (``SMTPServer.spec.replyRules``) are tried first, in order, then
`PRESETS`; the first that matches decides. A reply no rule matches gets the generic
rule (`classify`). Pure: compiled patterns are cached by their text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import snapshot

DEFAULT_FOR_S = 3600.0
"""How long ``suspend`` (and ``wait`` without a quota) lasts when the rule gives no
``for``."""


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    action: snapshot.ReplyAction
    for_s: float | None = None
    source: str = ""
    """Where the reply text comes from (presets) or ``server`` (the server's own)."""

    @property
    def duration_s(self) -> float:
        return DEFAULT_FOR_S if self.for_s is None else self.for_s


def _preset(pattern: str, action: snapshot.ReplyAction, source: str,
            for_s: float | None = None) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), action, for_s, source)


PRESETS: tuple[Rule, ...] = (
    _preset(r"^5\d\d\b.*\b5\.4\.5\b.*(quota|limit)", "wait",
            "Gmail / Google Workspace SMTP error reference: '550 5.4.5 Daily user sending "
            "quota exceeded', '550 5.4.5 Daily SMTP relay sending limit exceeded'"),
    _preset(r"^454\b.*throttling failure:.*daily message quota exceeded", "wait",
            "Amazon SES developer guide, sending-quota errors: '454 Throttling failure: "
            "Daily message quota exceeded'"),
    _preset(r"^454\b.*throttling failure:.*maximum sending rate exceeded", "retry",
            "Amazon SES developer guide, sending-quota errors: '454 Throttling failure: "
            "Maximum sending rate exceeded'"),
    _preset(r"^5\d\d\b.*SubmissionQuotaExceededException", "wait",
            "Exchange Online / Microsoft 365: '554 5.2.0 STOREDRV.Submission.Exception:"
            "SubmissionQuotaExceededException' (the mailbox's daily recipient limit)"),
    _preset(r"^[45]\d\d\b.*too many (concurrent )?(smtp )?connections", "retry",
            "Mailtrap '535 5.7.8 Too many connections per account', Exchange Online and "
            "Postfix-based providers '421 4.7.0 Too many concurrent SMTP connections'"),
    _preset(r"^5\d\d\b.*(try again later|temporarily (deferred|rate limited))", "retry",
            "providers that answer a throttle with a 5xx, e.g. '554 ... try again later'"),
)
"""Well-known provider replies; each documented in docs/ratelimits.md with its source."""


@functools.lru_cache(maxsize=256)
def _compiled(rules: tuple[tuple[str, str, float | None], ...]) -> tuple[Rule, ...]:
    return tuple(Rule(re.compile(match, re.IGNORECASE), action, for_s, "server")  # type: ignore[arg-type]
                 for match, action, for_s in rules)


def compile_rules(rules: Sequence[snapshot.ReplyRule]) -> tuple[Rule, ...]:
    """A server's own rules followed by the presets. An invalid pattern (the reconciler
    refuses them, so only an old snapshot could hold one) is skipped."""
    own: list[Rule] = []
    for rule in rules:
        try:
            own.extend(_compiled(((rule.match, rule.action, rule.for_s),)))
        except re.error:
            continue
    return (*own, *PRESETS)


def reply_text(code: int | None, reply: str) -> str:
    """What a rule's pattern is searched in: ``550 5.4.5 Daily ...``."""
    text = " ".join(reply.split())
    return text if code is None else f"{code} {text}"


def first(rules: Sequence[Rule], code: int | None, reply: str) -> Rule | None:
    """The first rule whose pattern is found in the reply; None for a 2xx, a reply
    without a code, or when no rule matches."""
    if code is None or 200 <= code < 300:
        return None
    text = reply_text(code, reply)
    for rule in rules:
        if rule.pattern.search(text):
            return rule
    return None
