"""The provider parts of the build: an SMTPServer's quotas and reply rules, an
EmailPolicy's fallback servers. Pure; each refusal is an `Unresolved` that becomes the
resource's Ready condition (an unknown time zone, a pattern that does not compile, a
fallback server that is missing, not Ready or already in the sink)."""

from __future__ import annotations

import re
import zoneinfo

from reconciler.rules import credentials
from schemas import durations, resources, snapshot

Unresolved = credentials.Unresolved


def quota(index: int, quota: resources.Quota) -> snapshot.Quota:
    if quota.time_zone is not None:
        try:
            zoneinfo.ZoneInfo(quota.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise Unresolved("InvalidQuota", f"spec.quotas[{index}].timeZone: unknown time "
                              f"zone {quota.time_zone!r}") from exc
    return snapshot.Quota(maximum=quota.maximum, period=quota.period, count=quota.count,
                          time_zone=quota.time_zone)


def reply_rule(index: int, rule: resources.ReplyRule) -> snapshot.ReplyRule:
    try:
        re.compile(rule.match)
    except re.error as exc:
        raise Unresolved("InvalidReplyRule",
                          f"spec.replyRules[{index}].match: {exc}") from exc
    try:
        for_s = None if rule.for_ is None else durations.parse(rule.for_)
    except ValueError as exc:
        raise Unresolved("InvalidReplyRule", f"spec.replyRules[{index}].for: {exc}") from exc
    return snapshot.ReplyRule(match=rule.match, action=rule.action, for_s=for_s)


def fallbacks(
    policy: resources.EmailPolicy, smtp: resources.SMTPSink,
    servers: dict[str, resources.SMTPServer], secrets: dict[str, resources.Secret],
    broken: dict[str, Unresolved],
) -> tuple[list[snapshot.Fallback], list[tuple[str, snapshot.Credentials]]]:
    """The sink's fallbacks, each server known and Ready, each login read."""
    primary = f"{smtp.server.namespace or policy.metadata.namespace}/{smtp.server.name}"
    out: list[snapshot.Fallback] = []
    logins: list[tuple[str, snapshot.Credentials]] = []
    for index, fallback in enumerate(smtp.fallbacks):
        ref = fallback.server
        upstream = f"{ref.namespace or policy.metadata.namespace}/{ref.name}"
        where = f"spec.sink.smtp.fallbacks[{index}]"
        if upstream not in servers:
            raise Unresolved("ServerNotFound", f"{where}: SMTPServer {upstream} not found")
        if upstream in broken:
            raise Unresolved("ServerNotReady", f"{where}: SMTPServer {upstream} is not "
                              f"Ready: {broken[upstream].message}")
        if upstream == primary or upstream in {f.upstream for f in out}:
            raise Unresolved("InvalidSink", f"{where}: SMTPServer {upstream} is already "
                              "in the sink")
        login = None
        if fallback.credentials is not None:
            login = credentials.policy_login(policy, fallback.credentials, secrets)
            logins.append(login)
        out.append(snapshot.Fallback(upstream=upstream,
                                     credentials=None if login is None else login[0]))
    return out, logins
