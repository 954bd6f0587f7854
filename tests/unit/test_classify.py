"""From one delivery outcome to each recipient's fate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.rules import backoff, classify
from dispatcher.rules.outcome import Failure, Outcome, RcptResult
from schemas import snapshot

Fate = classify.Fate
Dead = classify.DeadFate
POLICY = snapshot.RetryPolicy(min_delay_s=300.0, max_delay_s=4020.0, max_age_s=86400.0)
YOUNG = 10.0
OLD = 86400.0


def _all(result: Outcome, rcpts: list[str], age_s: float = YOUNG) -> classify.Decision:
    return classify.classify(result, rcpts, attempt=1, age_s=age_s, policy=POLICY)


def _accepted(code: int, *rcpts: str, reply: str = "") -> Outcome:
    return Outcome(rcpts=[RcptResult(rcpt=r, code=code, reply=reply) for r in rcpts])


@pytest.mark.parametrize(
    ("result", "age_s", "fate", "dead_fate"),
    [
        (_accepted(250, "a@x"), YOUNG, Fate.DELIVERED, None),
        (_accepted(251, "a@x"), OLD, Fate.DELIVERED, None),  # delivered even when old
        (_accepted(451, "a@x"), YOUNG, Fate.RETRY, None),
        (_accepted(452, "a@x"), OLD, Fate.DEAD, Dead.EXPIRED),
        (_accepted(550, "a@x"), YOUNG, Fate.DEAD, Dead.PERMANENT),
        (_accepted(554, "a@x"), OLD, Fate.DEAD, Dead.PERMANENT),  # a 5xx stays permanent
        (Outcome(failure="connect", reply="refused"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="connect", code=421, reply="busy"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="connect", code=554, reply="no service"), YOUNG, Fate.DEAD,
         Dead.PERMANENT),
        (Outcome(failure="connect", reply="refused"), OLD, Fate.DEAD, Dead.EXPIRED),
        (Outcome(failure="tls", reply="bad cert"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="timeout"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="timeout"), OLD, Fate.DEAD, Dead.EXPIRED),
        (Outcome(failure="protocol", code=451), YOUNG, Fate.RETRY, None),
        (Outcome(failure="protocol", code=553, reply="sender refused"), YOUNG, Fate.DEAD,
         Dead.PERMANENT),
        (Outcome(failure="auth", code=535, reply="bad login"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="auth", code=535, reply="bad login"), OLD, Fate.DEAD, Dead.EXPIRED),
        (Outcome(failure="auth", code=454, reply="try later"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="auth", reply="mechanism unsupported"), YOUNG, Fate.RETRY, None),
        (Outcome(failure="body", reply="gone"), YOUNG, Fate.DEAD, Dead.INVALID),
        (Outcome(failure="body", reply="gone"), OLD, Fate.DEAD, Dead.INVALID),
        (Outcome(), YOUNG, Fate.RETRY, None),  # no verdict at all: never a loss
    ],
)
def test_outcomes_map_to_fates(
    result: Outcome, age_s: float, fate: Fate, dead_fate: Dead | None
) -> None:
    """The outcome table (docs/architecture.md, "One mail's trip"): 2xx delivered, 4xx
    and session failures transient, 5xx permanent, unreadable mail invalid, transient past
    the max age expired."""
    decision = _all(result, ["a@x"], age_s)
    assert [(v.fate, v.dead_fate, v.rcpts) for v in decision.verdicts] == [
        (fate, dead_fate, ["a@x"])]


def test_a_deferral_waits_the_age_clamped_delay() -> None:
    """A retried group waits the backoff delay of the mail's age; others wait nothing."""
    decision = classify.classify(_accepted(451, "a@x"), ["a@x"], attempt=3, age_s=1000.0,
                                 policy=POLICY)
    assert decision.delay_s == 1000.0
    assert decision.attempt == 3
    assert not decision.settled
    delivered = classify.classify(_accepted(250, "a@x"), ["a@x"], attempt=3, age_s=1000.0,
                                  policy=POLICY)
    assert delivered.settled and delivered.delay_s == 0.0


def test_mixed_recipients_each_get_their_own_fate() -> None:
    """Accepted, permanently and temporarily refused recipients form separate groups,
    each with its own reply."""
    result = Outcome(rcpts=[
        RcptResult(rcpt="ok@x", code=250, reply="queued"),
        RcptResult(rcpt="gone@x", code=550, reply="no such user"),
        RcptResult(rcpt="full@x", code=452, reply="mailbox full"),
        RcptResult(rcpt="ok2@x", code=250, reply="queued"),
    ])
    decision = _all(result, ["ok@x", "gone@x", "full@x", "ok2@x"])
    assert [(v.fate, v.rcpts, v.code, v.reply) for v in decision.verdicts] == [
        (Fate.DELIVERED, ["ok@x", "ok2@x"], 250, "queued"),
        (Fate.DEAD, ["gone@x"], 550, "no such user"),
        (Fate.RETRY, ["full@x"], 452, "mailbox full"),
    ]
    assert decision.rcpts(Fate.DEAD) == ["gone@x"]
    assert not decision.settled


def test_refusals_with_different_replies_are_separate_groups() -> None:
    """Two permanent refusals with different codes become two dead groups, so each dead
    letter carries the reply its recipients actually got."""
    result = Outcome(rcpts=[RcptResult(rcpt="a@x", code=550, reply="unknown"),
                            RcptResult(rcpt="b@x", code=553, reply="bad address")])
    decision = _all(result, ["a@x", "b@x"])
    assert [(v.rcpts, v.code) for v in decision.of(Fate.DEAD)] == [(["a@x"], 550),
                                                                    (["b@x"], 553)]


def test_a_failed_session_does_not_trust_a_recorded_2xx() -> None:
    """When the session failed, a 2xx recorded for a recipient is retried, not counted as
    delivered (DATA may not have completed); its own 5xx refusal still stands."""
    result = Outcome(failure="connect", reply="dropped", rcpts=[
        RcptResult(rcpt="a@x", code=250), RcptResult(rcpt="b@x", code=550, reply="no")])
    decision = _all(result, ["a@x", "b@x"])
    assert decision.rcpts(Fate.RETRY) == ["a@x"]
    assert decision.rcpts(Fate.DEAD) == ["b@x"]


def test_recipient_results_match_regardless_of_case() -> None:
    """The upstream's result for ``A@X`` is the result for ``a@x``."""
    decision = _all(_accepted(250, "A@X"), ["a@x"])
    assert decision.rcpts(Fate.DELIVERED) == ["a@x"]


@pytest.mark.parametrize(("age_s", "fate"), [(YOUNG, Fate.RETRY), (OLD, Fate.DEAD)])
def test_a_hold_is_not_an_attempt_but_still_expires(age_s: float, fate: Fate) -> None:
    """Nothing to try with: retry after the given delay, counted as no attempt, unless
    the mail is past its max age."""
    decision = classify.hold(["a@x", "b@x"], age_s=age_s, policy=POLICY, delay_s=5.0,
                             reason="upstream not in the snapshot")
    assert decision.attempt == 0
    assert [(v.fate, v.rcpts) for v in decision.verdicts] == [(fate, ["a@x", "b@x"])]
    if fate is Fate.RETRY:
        assert decision.delay_s == 5.0
    else:
        assert decision.verdicts[0].dead_fate is Dead.EXPIRED


failures = st.sampled_from([None, "connect", "tls", "auth", "timeout", "protocol"])
codes = st.one_of(st.none(), st.integers(100, 699))
rcpt_lists = st.lists(st.sampled_from(["a@x", "b@x", "c@x", "d@x"]), min_size=1,
                      max_size=4, unique=True)
policies = st.tuples(st.floats(0, 1e4), st.floats(0, 1e4), st.floats(0, 1e6)).map(
    lambda t: snapshot.RetryPolicy(min_delay_s=t[0], max_delay_s=t[1], max_age_s=t[2]))


@st.composite
def outcomes(draw: st.DrawFn) -> tuple[Outcome, list[str]]:
    rcpts = draw(rcpt_lists)
    answered = draw(st.lists(st.sampled_from(rcpts), unique=True))
    results = [RcptResult(rcpt=r, code=draw(st.integers(200, 599))) for r in answered]
    failure: Failure | None = draw(failures)
    return Outcome(rcpts=results, failure=failure, code=draw(codes)), rcpts


@given(case=outcomes(), age=st.floats(0, 2e6), policy=policies)
def test_every_recipient_gets_exactly_one_fate(
    case: tuple[Outcome, list[str]], age: float, policy: snapshot.RetryPolicy
) -> None:
    """No recipient is lost or judged twice."""
    result, rcpts = case
    decision = classify.classify(result, rcpts, attempt=1, age_s=age, policy=policy)
    judged = [r for v in decision.verdicts for r in v.rcpts]
    assert sorted(judged) == sorted(rcpts)


@given(case=outcomes(), age=st.floats(0, 2e6), policy=policies)
def test_a_5xx_is_never_retried(
    case: tuple[Outcome, list[str]], age: float, policy: snapshot.RetryPolicy
) -> None:
    """A 5xx reply is never RETRY, except a refused login (soft bounce, like Postfix)."""
    result, rcpts = case
    decision = classify.classify(result, rcpts, attempt=1, age_s=age, policy=policy)
    for verdict in decision.of(Fate.RETRY):
        login = result.failure == "auth" and verdict.code == result.code
        assert login or verdict.code is None or not 500 <= verdict.code < 600


@given(case=outcomes(), age=st.floats(0, 2e6), policy=policies)
def test_retries_wait_within_the_window_and_never_past_the_max_age(
    case: tuple[Outcome, list[str]], age: float, policy: snapshot.RetryPolicy
) -> None:
    """A retried group waits a delay within the policy's window, and only a mail younger
    than the max age is retried at all."""
    result, rcpts = case
    decision = classify.classify(result, rcpts, attempt=1, age_s=age, policy=policy)
    for verdict in decision.of(Fate.RETRY):
        assert verdict.delay_s == backoff.delay_for(age, policy)
        assert policy.min_delay_s <= verdict.delay_s <= max(policy.min_delay_s,
                                                            policy.max_delay_s)
        assert age < policy.max_age_s
