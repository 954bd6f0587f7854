"""The file source's YAML: documents decode into builder inputs, and every error names the
file, the document and the field."""

from __future__ import annotations

import fnmatch
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.rules import building, documents
from runtime import settings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 1, tzinfo=UTC)

STATIC = """\
apiVersion: podpost/v1alpha1
kind: StaticSource
metadata: {name: local, namespace: dev, labels: {app: local}}
spec: {cidrs: ["127.0.0.1", "10.1.2.3/8", "::1"]}
"""
POLICY = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {name: app, namespace: dev}
spec:
  podSelector: {matchLabels: {app: local}}
  sink: {catcher: {}}
"""
SERVER = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {name: relay, namespace: dev}
spec: {server: smtp.example.com, port: 2525, connect: starttls}
"""
SECRET = """\
apiVersion: v1
kind: Secret
metadata: {name: login, namespace: dev}
stringData: {username: robot, password: s3cret}
"""


def parse(*docs: str) -> building.Inputs:
    return documents.parse("---\n".join(docs), path="policies.yaml")


def error_of(*docs: str) -> str:
    with pytest.raises(documents.SourceError) as caught:
        parse(*docs)
    return str(caught.value)


def test_every_kind_decodes() -> None:
    """Servers, policies, Secrets and static sources land in their lists; a static source
    becomes an endpoint with normalized networks."""
    inputs = parse(STATIC, POLICY, SERVER, SECRET)
    assert [s.metadata.name for s in inputs.servers] == ["relay"]
    assert [p.metadata.name for p in inputs.policies] == ["app"]
    assert [s.metadata.name for s in inputs.secrets] == ["login"]
    assert inputs.endpoints == [building.Endpoint(
        source="static:dev/local", namespace="dev", labels={"app": "local"},
        networks=["10.0.0.0/8", "127.0.0.1/32", "::1/128"])]


def test_empty_documents_are_skipped() -> None:
    """A leading or trailing '---' or an empty file is not an error."""
    assert parse("", POLICY, "").policies
    assert documents.parse("", path="x.yaml") == building.Inputs()


@pytest.mark.parametrize(("docs", "expected"), [
    ((STATIC, POLICY.replace("podSelector", "podSelectr")),
     'policies.yaml: document 2 (EmailPolicy dev/app): unknown field "podSelectr" at spec'),
    ((POLICY.replace("sink: {catcher: {}}", "sink: {catcher: {}, smpt: {}}"),),
     'policies.yaml: document 1 (EmailPolicy dev/app): unknown field "smpt" at spec.sink'),
    ((POLICY.replace("  sink: {catcher: {}}\n", ""),),
     'policies.yaml: document 1 (EmailPolicy dev/app): missing required field "sink" at spec'),
    ((SERVER.replace("port: 2525", "port: high"),),
     'policies.yaml: document 1 (SMTPServer dev/relay): expected "int", got "str" '
     "at spec.port"),
    ((SERVER.replace("starttls", "tls13"),),
     "policies.yaml: document 1 (SMTPServer dev/relay): invalid enum value 'tls13' "
     "at spec.connect"),
    ((POLICY.replace("app: local", "app: 1"),),
     "policies.yaml: document 1 (EmailPolicy dev/app): "
     'expected "str", got "int" at spec.podSelector.matchLabels[...] (quote it'),
    ((POLICY.replace("  sink:", "  retry: {minDelay: soon}\n  sink:"),),
     "policies.yaml: document 1 (EmailPolicy dev/app): expected a duration such as 90s, "
     "5m, 1h7m or 5d at spec.retry.minDelay"),
    ((STATIC.replace('"::1"', '"localhost"'),),
     "policies.yaml: document 1 (StaticSource dev/local): not an IP address or CIDR "
     "at spec.cidrs[2]"),
    ((POLICY, STATIC.replace("kind: StaticSource", "kind: Pod")),
     "policies.yaml: document 2 (Pod dev/local): unknown kind 'Pod'; expected one of "
     "ConfigMap, EmailPolicy, SMTPServer, Secret, StaticSource"),
    ((POLICY.replace("v1alpha1", "v1"),),
     'policies.yaml: document 1 (EmailPolicy dev/app): EmailPolicy needs apiVersion '
     '"kube-mail.helmich.me/v1alpha1"'),
    (("- just\n- a list\n",),
     "policies.yaml: document 1: a document must be a mapping with apiVersion and kind"),
    ((STATIC, STATIC.replace("name: local", "name: other").replace("10.1.2.3/8", "10.0.0.0/8")),
     "policies.yaml: document 2 (StaticSource dev/other): 10.0.0.0/8 is already claimed by "
     "document 1"),
    ((POLICY, SERVER, POLICY),
     "policies.yaml: document 3 (EmailPolicy dev/app): EmailPolicy dev/app is already "
     "defined by document 1"),
])
def test_errors_name_document_and_field(docs: tuple[str, ...], expected: str) -> None:
    """The message starts with file, document number, kind and name, then the problem
    and the field path."""
    assert error_of(*docs).startswith(expected)


def test_bad_yaml_names_the_line() -> None:
    """A YAML syntax error gives the line and column of the problem."""
    text = POLICY + "---\n" + "kind: [unclosed\nmetadata: {}\n"
    message = error_of(text)
    assert message.startswith("policies.yaml: invalid YAML at line 9")


def test_errors_never_quote_a_secret() -> None:
    """Neither a YAML error nor a type error repeats the text of the document."""
    broken_yaml = SECRET.replace("password: s3cret", "password: [s3cret")
    assert "s3cret" not in error_of(broken_yaml)
    wrong_type = SECRET.replace("password: s3cret", "password: {value: s3cret}")
    assert "s3cret" not in error_of(wrong_type)


@pytest.mark.parametrize("path", [Path(settings.DEV_POLICY),
                                  ROOT / "deploy" / "examples" / "relay.yaml"])
def test_shipped_examples_build_with_every_policy_ready(path: Path) -> None:
    """The example files parse, every policy is Ready, and every static source is routed."""
    inputs = documents.parse(path.read_text(), path=str(path))
    result = building.build(inputs, now=NOW, source=f"file:{path}")
    assert inputs.policies and set(result.snapshot.policies) == {
        f"{p.metadata.namespace}/{p.metadata.name}" for p in inputs.policies}
    routed = {r.source for r in result.snapshot.routes}
    assert routed == {e.source for e in inputs.endpoints}
    for conditions in result.conditions.values():
        for condition in conditions:
            assert (condition.type, condition.status) != ("Ready", "False")


def test_dev_file_routes_localhost_to_the_catcher() -> None:
    """podpost dev: 127.0.0.0/8 and ::1 go to a catcher policy."""
    path = Path(settings.DEV_POLICY)
    result = building.build(documents.parse(path.read_text(), path="dev.yaml"),
                            now=NOW, source="file:dev.yaml")
    networks = {r.network: result.snapshot.policies[r.policy].upstream
                for r in result.snapshot.routes}
    assert networks == {"127.0.0.0/8": "_/catcher", "::1/128": "_/catcher"}


def test_the_dev_policy_ships_inside_the_package() -> None:
    """The dev policy lives in the runtime package and is declared package data, so a
    wheel (``pip install podpost``, the image) carries it, not only a checkout."""
    path = Path(settings.DEV_POLICY)
    relative = path.relative_to(ROOT / "runtime" / "data").as_posix()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]
    assert "runtime.data" in setuptools["packages"]
    patterns = setuptools["package-data"]["runtime.data"]
    assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns), patterns
    assert not (ROOT / "deploy" / "examples" / "dev.yaml").exists()  # one copy, no drift


def test_ratelimiting_without_period_counts_per_minute() -> None:
    """A file policy's `ratelimiting: {maximum: 5}` is 5 a minute, as in kube-mail."""
    inputs = parse(STATIC, POLICY.replace("sink:", "ratelimiting: {maximum: 5}\n  sink:"))
    view = building.build(inputs, now=NOW, source="file").snapshot.policies["dev/app"]
    assert view.ratelimit is not None and view.ratelimit.period_s == 60.0
