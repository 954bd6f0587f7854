"""The per-role NATS permissions as data: who may read and write what, for any prefix;
and what `podpost nats-config` prints. The real server's refusals are in
tests/integration/test_nats_permissions.py."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from podpost import cli, natsconfig
from schemas import names

PREFIXES = ["podpost", "mail-a"]


def _reads_credentials(bus: names.Bus, subject: str) -> bool:
    stream = names.kv_stream(bus.credentials_bucket)
    return (subject.startswith((f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}",
                                f"$JS.API.CONSUMER.CREATE.{stream}"))
            or subject in (">", "$JS.API.>", f"$KV.{bus.credentials_bucket}.>"))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_only_dispatchers_and_the_reconciler_can_read_credentials(prefix: str) -> None:
    """Among the processes' users, a subject that reads CREDENTIALS is allowed only to the
    dispatcher and the reconciler, and explicitly denied to the ingress."""
    bus = names.Bus(prefix=prefix)
    readers = {role for role in ("ingress", "dispatcher", "reconciler")
               if any(_reads_credentials(bus, s)
                      for s in natsconfig.permissions(bus, role).publish_allow)}
    assert readers == {"dispatcher", "reconciler"}
    denied = natsconfig.permissions(bus, "ingress").publish_deny
    assert f"$JS.API.STREAM.MSG.GET.KV_{bus.credentials_bucket}" in denied
    assert f"$JS.API.DIRECT.GET.KV_{bus.credentials_bucket}.>" in denied


@pytest.mark.parametrize("prefix", PREFIXES)
def test_only_the_reconciler_writes_policy_and_credentials_or_changes_the_layout(
    prefix: str,
) -> None:
    """``$KV.<bucket>.>`` of POLICY and CREDENTIALS, and stream create/update, are in the
    reconciler's allow list only (and the admin's ``>``)."""
    bus = names.Bus(prefix=prefix)
    owned = {f"$KV.{bus.policy_bucket}.>", f"$KV.{bus.credentials_bucket}.>"}
    for role in natsconfig.ROLES:
        allow = set(natsconfig.permissions(bus, role).publish_allow)
        manages = any(re.match(r"\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE)\.", s) for s in allow)
        if role == "reconciler":
            assert owned <= allow and manages
        elif role == "admin":
            assert allow == {">"}
        else:
            assert not owned & allow and not manages, role


@pytest.mark.parametrize("prefix", PREFIXES)
def test_api_access_is_per_stream_and_replies_per_role(prefix: str) -> None:
    """No process user gets a JetStream API wildcard: every ``$JS.`` subject names one of
    the installation's streams (or lists stream names), and each subscribes only to its
    own inbox prefix, the one `bus` connects with."""
    bus = names.Bus(prefix=prefix)
    streams = bus.owned_streams
    for role in ("ingress", "dispatcher", "reconciler"):
        perms = natsconfig.permissions(bus, role)
        for subject in perms.publish_allow:
            if subject.startswith("$JS."):
                assert subject == "$JS.API.STREAM.NAMES" or any(
                    re.search(rf"\.{re.escape(s)}(\.|$)", subject) for s in streams), subject
            else:
                assert subject.startswith((f"{prefix}.mail.", "$KV.", "$O.")), subject
                assert (f"{bus.mail_stream.removesuffix('_MAIL')}_" in subject
                        or subject.startswith(f"{prefix}.mail.")), subject
        assert perms.subscribe_allow == (f"_INBOX.{prefix}.{role}.>",)
        assert names.inbox_prefix(bus, role) == f"_INBOX.{prefix}.{role}"
    assert names.inbox_prefix(bus, "Not A Role!") == f"_INBOX.{prefix}.client"


def test_the_server_config_quotes_subjects_and_reads_missing_passwords_from_env() -> None:
    """Subjects are quoted (``$JS`` is no variable); a given password is written quoted,
    a missing one as ``$NATS_PASSWORD_<ROLE>``."""
    text = natsconfig.server_config(names.Bus(), {"ingress": natsconfig.Literal('p"w')})
    assert 'password: "p\\"w"' in text
    assert "password: $NATS_PASSWORD_DISPATCHER," in text
    assert '"$JS.API.STREAM.INFO.PODPOST_MAIL"' in text
    assert not re.search(r"[\[,] ?\$JS", text)  # never an unquoted $JS subject


def test_nats_config_command_prints_each_format() -> None:
    """conf takes passwords from the environment; secret makes a fresh random one for
    each role; helm-values references the Secret; a bad format exits 2."""
    runner = CliRunner()
    conf = runner.invoke(cli.app, ["nats-config"],
                         env={"NATS_PASSWORD_INGRESS": "from-env"})
    assert conf.exit_code == 0, conf.output
    assert 'password: "from-env"' in conf.output
    secrets_ = [yaml.safe_load(runner.invoke(cli.app, ["nats-config", "--format", "secret",
                                                       "--namespace", "mail"]).output)
                for _ in range(2)]
    data = secrets_[0]["stringData"]
    assert secrets_[0]["metadata"]["namespace"] == "mail"
    assert len({data[r] for r in natsconfig.ROLES}) == 4
    assert all(len(data[r]) >= 32 for r in natsconfig.ROLES)
    assert data["ingress-user"] == "podpost-ingress"
    assert secrets_[1]["stringData"]["admin"] != data["admin"]
    values = yaml.safe_load(runner.invoke(
        cli.app, ["nats-config", "--format", "helm-values", "--prefix", "mail-a"]).output)
    users = values["config"]["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == [f"mail-a-{r}" for r in natsconfig.ROLES]
    assert users[0]["password"] == "<< $NATS_PASSWORD_INGRESS >>"
    assert runner.invoke(cli.app, ["nats-config", "--format", "xml"]).exit_code == 2


@pytest.mark.parametrize(("password", "safe"), [
    ("Abc123", True), ("x", True), ("-abc", False), ("12-3abc", False), ("7e5", False),
    ("2020-01-01x", False), ("true", False), ("OFF", False), ("yes", False),
    ("a-b", False), ("a b", False), ("", False),
])
def test_env_safe_accepts_only_what_nats_reads_back_from_its_environment(
    password: str, safe: bool,
) -> None:
    """A letter, then letters and digits, and not a boolean word: nothing nats-server
    would read as a number, a date, a boolean or a parse error."""
    assert natsconfig.env_safe(password) is safe


def test_generated_passwords_are_long_and_env_safe() -> None:
    """Every generated password is 32 characters of that shape, and they differ."""
    made = [natsconfig.new_password() for _ in range(2000)]
    assert all(len(p) == 32 and natsconfig.env_safe(p) for p in made)
    assert len(set(made)) == len(made)


def test_chart_values_are_consistent_by_construction() -> None:
    """`--format chart-values` sets the prefix and Secret name beside the NATS users and
    password variables made for them."""
    runner = CliRunner()
    out = runner.invoke(cli.app, ["nats-config", "--format", "chart-values", "--prefix",
                                  "mail-a", "--secret-name", "relay-nats"])
    assert out.exit_code == 0, out.output
    values = yaml.safe_load(out.output)
    assert values["bus"] == {"prefix": "mail-a"}
    assert values["natsAuth"] == {"secretName": "relay-nats"}
    users = values["nats"]["config"]["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == [f"mail-a-{r}" for r in natsconfig.ROLES]
    refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in values["nats"]["container"]["env"]
            .values()}
    assert refs == {"relay-nats"}
