"""The pure decisions about providers: quota windows and costs, reply rules, their place
in `classify`, failover's chain and health, and how the reconciler builds quotas, rules
and fallbacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.rules import classify, failover, quotas, replyrules
from dispatcher.rules.outcome import Outcome, RcptResult
from schemas import snapshot
from tests.unit.test_building import build, condition, policy, secret, server

POLICY = snapshot.RetryPolicy(min_delay_s=300.0, max_delay_s=4020.0, max_age_s=86400.0)
RULES = replyrules.compile_rules([])


def _ms(*args: int, tz: object = UTC) -> int:
    return round(datetime(*args, tzinfo=tz).timestamp() * 1000)  # type: ignore[arg-type, misc]


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@pytest.mark.parametrize(("period", "zone", "now", "start", "end"), [
    ("day", None, (2026, 5, 1, 23, 59), (2026, 5, 1, 0, 0), (2026, 5, 2, 0, 0)),
    ("month", None, (2026, 12, 31, 12, 0), (2026, 12, 1, 0, 0), (2027, 1, 1, 0, 0)),
    ("hour", None, (2026, 5, 1, 7, 30), (2026, 5, 1, 7, 0), (2026, 5, 1, 8, 0)),
    ("minute", None, (2026, 5, 1, 7, 30, 59), (2026, 5, 1, 7, 30), (2026, 5, 1, 7, 31)),
    # New York's day starts at 05:00 UTC in winter, and lasts 23 hours on 8 March 2026
    ("day", "America/New_York", (2026, 3, 8, 12, 0), (2026, 3, 8, 5, 0), (2026, 3, 9, 4, 0)),
    ("day", "America/New_York", (2026, 1, 10, 3, 0), (2026, 1, 9, 5, 0), (2026, 1, 10, 5, 0)),
    ("month", "Europe/Paris", (2026, 6, 30, 22, 30), (2026, 6, 30, 22, 0), (2026, 7, 31, 22, 0)),
])
def test_quota_windows_are_calendar_windows_in_their_time_zone(
    period: snapshot.QuotaPeriod, zone: str | None, now: tuple[int, ...],
    start: tuple[int, ...], end: tuple[int, ...],
) -> None:
    """A quota's window is the calendar minute, hour, day or month holding now, in the
    quota's time zone (UTC by default), daylight-saving days included."""
    quota = snapshot.Quota(maximum=1, period=period, time_zone=zone)
    got = quotas.window(_ms(*now), quota)
    assert (_utc(got[0]), _utc(got[1])) == (datetime(*start, tzinfo=UTC),
                                            datetime(*end, tzinfo=UTC))


@given(st.integers(min_value=0, max_value=4_000_000_000_000),
       st.sampled_from(["minute", "hour", "day", "month"]),
       st.sampled_from([None, "UTC", "Asia/Kolkata", "America/New_York", "Australia/Sydney"]))
def test_a_moment_lies_in_its_window(now: int, period: snapshot.QuotaPeriod,
                                     zone: str | None) -> None:
    """Every moment falls inside the window computed for it, and the next window starts
    where this one ends."""
    quota = snapshot.Quota(maximum=1, period=period, time_zone=zone)
    start, end = quotas.window(now, quota)
    assert start <= now < end
    assert quotas.window(end, quota)[0] == end


def test_scaled_windows_are_fixed_and_aligned_to_the_epoch() -> None:
    """With a test scale a day is 86,400 s times the scale, aligned to the epoch."""
    quota = snapshot.Quota(maximum=1, period="day")
    assert quotas.window(10_500, quota, scale=4000 / 86_400_000) == (8000, 12000)


def test_costs_and_refunds_count_messages_or_recipients() -> None:
    """A mail costs 1 message or its recipients (never more than the whole quota); what
    the provider did not accept goes back."""
    msgs = snapshot.Quota(maximum=10, period="day")
    rcpts = snapshot.Quota(maximum=10, period="day", count="recipients")
    assert (quotas.cost(msgs, 3), quotas.cost(rcpts, 3), quotas.cost(rcpts, 50)) == (1, 3, 10)
    assert (quotas.refund(msgs, 3, 0), quotas.refund(msgs, 3, 1)) == (1, 0)
    assert (quotas.refund(rcpts, 3, 1), quotas.refund(rcpts, 3, 3)) == (2, 0)
    assert quotas.allows(10, 7, 3) and not quotas.allows(10, 8, 3)


def test_an_account_is_the_server_with_its_login() -> None:
    """Two policies with the same server and login share an account; another login is
    another account."""
    assert quotas.account("mail/brevo", "apps.login") == quotas.account("mail/brevo",
                                                                        "apps.login")
    assert quotas.account("mail/brevo", "apps.login") != quotas.account("mail/brevo", None)


@pytest.mark.parametrize(("code", "reply", "action"), [
    (550, "5.4.5 Daily user sending quota exceeded. x - gsmtp", "wait"),
    (550, "5.4.5 Daily SMTP relay sending limit exceeded for customer", "wait"),
    (454, "Throttling failure: Daily message quota exceeded.", "wait"),
    (454, "Throttling failure: Maximum sending rate exceeded.", "retry"),
    (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; quota",
     "wait"),
    (421, "4.7.0 Too many concurrent SMTP connections", "retry"),
    (535, "5.7.8 Too many connections per account", "retry"),
    (554, "5.7.1 Service unavailable, try again later", "retry"),
    (550, "5.1.1 user unknown", None),
    (250, "2.0.0 OK quota", None),
])
def test_presets_know_the_providers_replies(code: int, reply: str, action: str | None) -> None:
    """The presets turn well-known provider replies into their actions and leave other
    replies (a 5.1.1, any 2xx) to the generic rule."""
    rule = replyrules.first(RULES, code, reply)
    assert (None if rule is None else rule.action) == action


def test_a_servers_own_rules_come_before_the_presets() -> None:
    """A server's rule that matches decides, even against a preset for the same reply."""
    rules = replyrules.compile_rules([
        snapshot.ReplyRule(match=r"5\.4\.5", action="suspend", for_s=7200.0)])
    rule = replyrules.first(rules, 550, "5.4.5 Daily user sending quota exceeded")
    assert rule is not None and (rule.action, rule.duration_s, rule.source) == (
        "suspend", 7200.0, "server")


def _judge(result: Outcome, rules: tuple[replyrules.Rule, ...] = RULES,
           age_s: float = 10.0) -> classify.Decision:
    return classify.classify(result, ["a@x", "b@x"], attempt=1, age_s=age_s, policy=POLICY,
                             rules=rules)


def test_a_quota_reply_is_a_wait_not_a_dead_letter() -> None:
    """A 550 5.4.5 at DATA retries every recipient, even past the max queue age, and asks
    the shell to wait for the quota window."""
    result = Outcome(rcpts=[RcptResult(rcpt=r, code=550, reply="5.4.5 Daily user sending "
                                       "quota exceeded") for r in ("a@x", "b@x")])
    decision = _judge(result, age_s=10 * 86400.0)
    assert decision.rcpts(classify.Fate.RETRY) == ["a@x", "b@x"]
    assert decision.steer is not None and decision.steer.action == "wait"
    assert decision.steer.reply.startswith("550 5.4.5")


def test_an_unknown_user_is_still_dead_beside_a_quota_rule() -> None:
    """Reply rules change only the replies they match: 550 5.1.1 stays permanent."""
    result = Outcome(rcpts=[RcptResult(rcpt="a@x", code=550, reply="5.1.1 user unknown"),
                            RcptResult(rcpt="b@x", code=250, reply="ok")])
    decision = _judge(result)
    assert decision.rcpts(classify.Fate.DEAD) == ["a@x"]
    assert decision.rcpts(classify.Fate.DELIVERED) == ["b@x"]
    assert decision.steer is None


def test_rules_can_make_a_4xx_dead_and_a_5xx_a_retry() -> None:
    """``dead`` dead-letters a 4xx; ``retry`` retries a 5xx (until the max queue age)."""
    rules = replyrules.compile_rules([
        snapshot.ReplyRule(match="mailbox disabled", action="dead"),
        snapshot.ReplyRule(match="greylisted", action="retry")])
    dead = _judge(Outcome(failure="protocol", code=450, reply="4.2.1 mailbox disabled"), rules)
    assert dead.rcpts(classify.Fate.DEAD) == ["a@x", "b@x"]
    retry = _judge(Outcome(failure="protocol", code=550, reply="greylisted"), rules)
    assert retry.rcpts(classify.Fate.RETRY) == ["a@x", "b@x"]
    expired = _judge(Outcome(failure="protocol", code=550, reply="greylisted"), rules,
                     age_s=2 * 86400.0)
    assert expired.of(classify.Fate.DEAD)[0].dead_fate is classify.DeadFate.EXPIRED


def test_the_reconciler_builds_quotas_and_rules() -> None:
    """An SMTPServer's quotas and reply rules reach its upstream view; ``for`` becomes
    seconds."""
    result = build(servers=[server(quotas=[
        {"maximum": 300, "period": "day", "timeZone": "Europe/Paris"},
        {"maximum": 3000, "period": "month", "count": "recipients"}],
        replyRules=[{"match": "5\\.4\\.5", "action": "suspend", "for": "2h"}])])
    view = result.snapshot.upstreams["app/relay"]
    assert view.quotas == [
        snapshot.Quota(maximum=300, period="day", time_zone="Europe/Paris"),
        snapshot.Quota(maximum=3000, period="month", count="recipients")]
    assert view.reply_rules == [snapshot.ReplyRule(match="5\\.4\\.5", action="suspend",
                                                   for_s=7200.0)]


@pytest.mark.parametrize(("spec", "reason"), [
    ({"quotas": [{"maximum": 1, "period": "day", "timeZone": "Mars/Olympus"}]},
     "InvalidQuota"),
    ({"replyRules": [{"match": "(unclosed", "action": "dead"}]}, "InvalidReplyRule"),
])
def test_a_bad_zone_or_pattern_makes_the_server_not_ready(spec: dict[str, object],
                                                          reason: str) -> None:
    """An unknown time zone or a pattern that does not compile is the server's
    condition, not a crash, and the server is left out of the snapshot."""
    result = build(servers=[server(**spec)])
    assert condition(result, "SMTPServer:app/relay").reason == reason
    assert "app/relay" not in result.snapshot.upstreams


def _view(*fallbacks: str) -> snapshot.PolicyView:
    return snapshot.PolicyView(key="apps/a", upstream="mail/p", credentials="apps.p",
                               fallbacks=[snapshot.Fallback(upstream=f, credentials=f"c.{f}")
                                          for f in fallbacks])


def test_failover_goes_down_the_chain_past_suspended_upstreams() -> None:
    """The next upstream is the first after the current one that is not suspended; the
    last keeps its mail; each upstream has its own login."""
    view = _view("mail/b", "mail/c")
    assert failover.next_upstream(view, "mail/p", lambda u: False) == "mail/b"
    assert failover.next_upstream(view, "mail/p", lambda u: u == "mail/b") == "mail/c"
    assert failover.next_upstream(view, "mail/b", lambda u: False) == "mail/c"
    assert failover.next_upstream(view, "mail/c", lambda u: False) is None
    assert failover.next_upstream(view, "mail/other", lambda u: False) is None
    assert failover.credentials_for(view, "mail/p") == "apps.p"
    assert failover.credentials_for(view, "mail/c") == "c.mail/c"


def test_health_counts_failing_time_until_a_delivery() -> None:
    """An upstream fails for as long as no delivery followed its first transient failure."""
    health = failover.Health()
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    health.failed("mail/p", t0)
    health.failed("mail/p", t0 + timedelta(seconds=30))
    since = health.since("mail/p")
    assert failover.failing_too_long(since, t0 + timedelta(seconds=60), 60.0)
    assert not failover.failing_too_long(since, t0 + timedelta(seconds=59), 60.0)
    health.delivered("mail/p")
    assert not failover.failing_too_long(health.since("mail/p"), t0 + timedelta(days=1), 60.0)


def test_the_reconciler_builds_fallbacks_with_their_logins() -> None:
    """A sink's fallbacks become the policy's, in order, each login published; an
    unknown fallback server or one already in the sink makes the policy not ready."""
    result = build(
        servers=[server("relay"), server("backup")], secrets=[secret("login"),
                                                              secret("other")],
        policies=[policy("web", sink={"smtp": {
            "server": {"name": "relay"}, "credentials": {"name": "login"},
            "fallbacks": [{"server": {"name": "backup"}, "credentials": {"name": "other"}}],
            "failoverAfter": "2m"}})])
    view = result.snapshot.policies["app/web"]
    assert view.fallbacks == [snapshot.Fallback(upstream="app/backup",
                                                credentials="app__other")]
    assert view.failover_after_s == 120.0
    assert set(result.credentials) == {"app__login", "app__other"}
    for fallbacks, reason in (([{"server": {"name": "nope"}}], "ServerNotFound"),
                              ([{"server": {"name": "relay"}}], "InvalidSink")):
        bad = build(servers=[server("relay")], policies=[policy("web", sink={"smtp": {
            "server": {"name": "relay"}, "fallbacks": fallbacks}})])
        assert condition(bad, "EmailPolicy:app/web").reason == reason
