"""The bus names and their inverses (`schemas.names`)."""

from __future__ import annotations

import pytest

from schemas import names

BUS = names.Bus(prefix="pp")


@pytest.mark.parametrize(("upstream", "policy"), [
    ("mail/relay", "apps/web"), ("mail/smtp.example.com", "apps/my.app"), (names.CATCHER,
                                                                          "a/b")])
def test_a_mail_subject_parses_back_to_its_keys(upstream: str, policy: str) -> None:
    """`parse_mail_filter` of `mail_subject` gives back the upstream and policy keys."""
    assert BUS.parse_mail_filter(BUS.mail_subject(upstream, policy)) == (upstream, policy)


def test_a_per_upstream_mail_filter_parses_to_its_upstream() -> None:
    """`parse_mail_filter` of one upstream's `mail_filter` gives that upstream and no policy."""
    assert BUS.parse_mail_filter(BUS.mail_filter("mail/smtp.example.com")) == (
        "mail/smtp.example.com", None)


def test_a_dead_subject_parses_back_to_its_upstream() -> None:
    """`parse_dead_subject` is the inverse of `dead_subject`."""
    assert BUS.parse_dead_subject(BUS.dead_subject("mail/smtp.example.com")) == (
        "mail/smtp.example.com")


@pytest.mark.parametrize("subject", [
    "pp.mail.out.>", "other.mail.out.a.b.c.d", "pp.mail.dead.a.b", "pp.mail.out.a.b.c"])
def test_what_is_no_mail_subject_is_refused(subject: str) -> None:
    """A subject of another prefix, kind or shape is no mail subject."""
    with pytest.raises(names.InvalidKey):
        BUS.parse_mail_filter(subject)


@pytest.mark.parametrize("subject", [
    "pp.mail.dead.>", "other.mail.dead.a.b", "pp.mail.out.a.b", "pp.mail.dead.a.b.c"])
def test_what_is_no_dead_subject_is_refused(subject: str) -> None:
    """A subject of another prefix, kind or shape is no dead-letter subject."""
    with pytest.raises(names.InvalidKey):
        BUS.parse_dead_subject(subject)


def test_owned_streams_name_every_bucket_by_its_jetstream_stream() -> None:
    """The installation's streams include each KV bucket's and the object store's stream."""
    owned = BUS.owned_streams
    assert {"KV_PP_POLICY", "KV_PP_CREDENTIALS", "KV_PP_ATTEMPTS", "KV_PP_RATES", "KV_PP_ROUTES",
            "OBJ_PP_BODIES", "KV_PP_CONTROL", BUS.mail_stream, BUS.dead_stream, BUS.events_stream,
            BUS.caught_stream} == set(owned)
    assert len(owned) == len(set(owned))


def test_user_names_carry_the_prefix() -> None:
    """A role's NATS user is ``<prefix>-<role>``."""
    assert names.user_name(BUS, "dispatcher") == "pp-dispatcher"
