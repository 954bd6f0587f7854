"""The generated CRDs: committed files never drift, schemas are structural, and kube-mail's
manifests (plus podpost's additions) validate against them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from podpost import cli, crds
from schemas import resources

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
EXAMPLES = ROOT / "deploy" / "examples" / "kube-mail"
KINDS = {"SMTPServer": resources.SMTPServer, "EmailPolicy": resources.EmailPolicy}
# Keys a structural schema must not contain anywhere.
FORBIDDEN = {"$ref", "$defs", "title", "anyOf", "oneOf", "allOf", "not", "nullable"}


def _schema(kind: str) -> dict[str, Any]:
    for doc in crds.documents().values():
        if doc["spec"]["names"]["kind"] == kind:
            return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    raise KeyError(kind)


def _validator(kind: str) -> jsonschema.Draft4Validator:
    # OpenAPI 3.0 schemas are JSON Schema draft 4 in the parts a CRD may use
    # (exclusiveMinimum is a boolean there).
    return jsonschema.Draft4Validator(_schema(kind))


def _nodes(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _prune_nulls(value: Any) -> Any:
    """What the API server does first: null values of non-nullable fields are dropped."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


@pytest.mark.parametrize("name", sorted(crds.documents()))
def test_committed_crd_equals_generator(name: str) -> None:
    """deploy/crds/<plural>.yaml is byte-for-byte what `podpost crds` generates."""
    committed = (CRD_DIR / name).read_text(encoding="utf-8")
    assert committed == crds.render(crds.documents()[name]), (
        f"deploy/crds/{name} is stale: run `podpost crds --out deploy/crds`"
    )


def test_crds_command_prints_every_crd() -> None:
    """`podpost crds` prints each CRD as one document of a YAML stream."""
    result = CliRunner().invoke(cli.app, ["crds"])
    assert result.exit_code == 0, result.output
    printed = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert printed == list(crds.documents().values())


@pytest.mark.parametrize("name", sorted(crds.documents()))
def test_crd_is_a_valid_customresourcedefinition(name: str) -> None:
    """Each CRD validates, strictly (no unknown keys), as an apiextensions.k8s.io/v1 object."""
    kubernetes_validate.validate(crds.documents()[name], "1.30", strict=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    """Every node is typed, nothing is a $ref/title/anyOf, and maps are `additionalProperties`
    schemas that never sit next to `properties`."""
    for path, node in _nodes(_schema(kind)):
        assert not FORBIDDEN & node.keys(), (path, FORBIDDEN & node.keys())
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        extra = node.get("additionalProperties")
        assert extra is None or isinstance(extra, dict), path
        assert not (extra is not None and "properties" in node), path
        assert node.get("default", 0) is not None, path
        assert node.get("required", ["x"]), f"{path}: empty required list"
        for field in node.get("required", []):
            assert field in node.get("properties", {}), f"{path}: required {field} undefined"


def test_labels_are_string_maps() -> None:
    """matchLabels is a map of strings, as Kubernetes expects for label maps."""
    selector = _schema("EmailPolicy")["properties"]["spec"]["properties"]["podSelector"]
    assert selector["properties"]["matchLabels"] == {
        "type": "object", "additionalProperties": {"type": "string"},
    }


def test_kube_mail_names_are_kept() -> None:
    """Group, version, kinds, plurals and scope are kube-mail's, with a status subresource."""
    got = {
        (d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["names"]["plural"],
         d["spec"]["scope"], d["spec"]["versions"][0]["name"],
         "status" in d["spec"]["versions"][0]["subresources"])
        for d in crds.documents().values()
    }
    assert got == {
        ("kube-mail.helmich.me", "SMTPServer", "smtpservers", "Namespaced", "v1alpha1", True),
        ("kube-mail.helmich.me", "EmailPolicy", "emailpolicies", "Namespaced", "v1alpha1", True),
    }


def test_ratelimiting_period_defaults_to_minute_in_the_crd() -> None:
    """The API server stores an unset period as minute, kube-mail's `period || "minute"`."""
    spec = _schema("EmailPolicy")["properties"]["spec"]["properties"]
    assert spec["ratelimiting"]["properties"]["period"]["default"] == "minute"


def test_descriptions_are_kept() -> None:
    """Field descriptions from the Structs reach the CRD (kubectl explain shows them)."""
    spec = _schema("SMTPServer")["properties"]["spec"]["properties"]
    assert spec["server"]["description"] == "Host name or address of the upstream."
    assert spec["maxConnections"]["description"].startswith("podpost:")


@pytest.mark.parametrize(
    "doc", _examples(), ids=lambda d: f"{d['kind']}:{d['metadata']['name']}"
)
def test_kube_mail_example_validates(doc: dict[str, Any]) -> None:
    """kube-mail's own manifests validate against the CRD and decode into our Structs."""
    if doc["kind"] not in KINDS:
        assert doc["kind"] == "Secret"
        msgspec.convert(doc, resources.Secret)
        return
    _validator(doc["kind"]).validate(doc)
    msgspec.convert(doc, KINDS[doc["kind"]])


def test_kube_mail_example_servers_connect_as_in_kube_mail() -> None:
    """The README's `port: 465, tls: true` is implicit TLS, MailHog's `tls: false` plain."""
    modes = {doc["metadata"]["name"]: resources.connect_mode(
        msgspec.convert(doc, resources.SMTPServer).spec)
        for doc in _examples() if doc["kind"] == "SMTPServer"}
    assert modes == {"default": "ssl", "mailhog": "plain", "mailtrap": "starttls"}


def test_examples_cover_both_kinds() -> None:
    """The example set holds several SMTPServers and EmailPolicies (so the test above bites)."""
    kinds = [doc["kind"] for doc in _examples()]
    assert kinds.count("SMTPServer") >= 2 and kinds.count("EmailPolicy") >= 3


SERVER = {"apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "SMTPServer",
          "metadata": {"name": "s"}}
POLICY = {"apiVersion": "kube-mail.helmich.me/v1alpha1", "kind": "EmailPolicy",
          "metadata": {"name": "p"}}
SINK = {"smtp": {"server": {"name": "s"}}}


@pytest.mark.parametrize(
    ("doc", "valid"),
    [
        ({**SERVER, "spec": {"server": "smtp.example"}}, True),
        ({**SERVER, "spec": {"server": "smtp.example", "connect": "ssl", "port": 465}}, True),
        ({**SERVER, "spec": {"server": "smtp.example", "timeoutSeconds": 0.5}}, True),
        ({**SERVER, "spec": {"server": "x", "tlsCA": {"configMapKeyRef": {"name": "ca"}}}},
         True),
        ({**SERVER, "spec": {"server": "x", "tlsCA": {"secretKeyRef": {"name": "t",
                                                                       "key": "ca.pem"}}}},
         True),
        ({**SERVER, "spec": {"server": "x", "tlsCA": {"configMapKeyRef": {"key": "k"}}}},
         False),
        ({**SERVER, "spec": {}}, False),
        ({**SERVER, "spec": {"server": ""}}, False),
        ({**SERVER, "spec": {"server": "x", "port": 0}}, False),
        ({**SERVER, "spec": {"server": "x", "port": 70000}}, False),
        ({**SERVER, "spec": {"server": "x", "connect": "tls"}}, False),
        ({**SERVER, "spec": {"server": "x", "authType": "XOAUTH2"}}, False),
        ({**SERVER, "spec": {"server": "x", "timeoutSeconds": 0}}, False),
        ({**SERVER}, False),
        ({**POLICY, "spec": {"sink": SINK}}, True),
        ({**POLICY, "spec": {"sink": {"catcher": {}}, "default": True}}, True),
        ({**POLICY, "spec": {"sink": SINK, "retry": {"maxQueueAge": "2d12h"}}}, True),
        ({**POLICY, "spec": {"sink": SINK, "ratelimiting": {"maximum": 5}}}, True),
        ({**POLICY, "spec": {}}, False),
        ({**POLICY, "spec": {"sink": {"smtp": {}}}}, False),
        ({**POLICY, "spec": {"sink": SINK, "ratelimiting": {"period": "hour"}}}, False),
        ({**POLICY, "spec": {"sink": SINK, "ratelimiting": {"maximum": 1, "period": "day"}}},
         True),
        ({**POLICY, "spec": {"sink": SINK, "ratelimiting": {"maximum": 1, "period": "week"}}},
         False),
        ({**SERVER, "spec": {"server": "smtp", "quotas": [
            {"maximum": 300, "period": "day", "count": "recipients",
             "timeZone": "Europe/Paris"}],
            "replyRules": [{"match": "5\\.4\\.5", "action": "suspend", "for": "2h"}]}},
         True),
        ({**SERVER, "spec": {"server": "smtp", "quotas": [
            {"maximum": 300, "period": "week"}]}}, False),
        ({**SERVER, "spec": {"server": "smtp", "replyRules": [
            {"match": "x", "action": "bounce"}]}}, False),
        ({**POLICY, "spec": {"sink": SINK, "retry": {"maxQueueAge": "two days"}}}, False),
        ({**POLICY, "spec": {"sink": SINK, "podSelector": {"matchExpressions": [
            {"key": "a", "operator": "Like"}]}}}, False),
        ({**POLICY, "spec": {"sink": SINK, "podSelector": {"matchLabels": {"a": 1}}}}, False),
    ],
)
def test_schema_accepts_and_refuses_like_the_structs(doc: dict[str, Any], valid: bool) -> None:
    """The CRD schema and the msgspec Structs agree on what is valid."""
    schema_ok = _validator(doc["kind"]).is_valid(doc)
    try:
        msgspec.convert(doc, KINDS[doc["kind"]])
        struct_ok = True
    except msgspec.ValidationError:
        struct_ok = False
    assert (schema_ok, struct_ok) == (valid, valid)


_label = st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True)
_specs = st.builds(
    resources.SMTPServerSpec,
    server=st.text(min_size=1, max_size=20),
    port=st.integers(1, 65535),
    connect=st.sampled_from([None, "plain", "ssl", "starttls"]),
    tls=st.sampled_from([None, True, False]),
    auth_type=st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]),
    max_connections=st.none() | st.integers(1, 1000),
    timeout_seconds=st.none() | st.floats(0.001, 600),
    tls_ca=st.none() | st.builds(
        resources.CASource,
        config_map_key_ref=st.none() | st.builds(resources.KeyRef, name=_label, key=_label),
        secret_key_ref=st.none() | st.builds(resources.KeyRef, name=_label),
    ),
)
_selectors = st.builds(
    resources.LabelSelector,
    match_labels=st.dictionaries(_label, _label, max_size=3),
    match_expressions=st.lists(
        st.builds(resources.LabelSelectorRequirement, key=_label,
                  operator=st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                  values=st.lists(_label, max_size=3)),
        max_size=3,
    ),
)


@given(spec=_specs)
def test_every_valid_server_spec_fits_the_crd(spec: resources.SMTPServerSpec) -> None:
    """Whatever msgspec accepts as an SMTPServer spec, the CRD accepts too."""
    doc = {**SERVER, "spec": _prune_nulls(msgspec.to_builtins(spec))}
    _validator("SMTPServer").validate(doc)


@given(selector=_selectors, default=st.booleans())
def test_every_valid_policy_selector_fits_the_crd(
    selector: resources.LabelSelector, default: bool
) -> None:
    """Whatever msgspec accepts as a policy's selector, the CRD accepts too."""
    spec = resources.EmailPolicySpec(
        default=default, pod_selector=selector,
        sink=resources.Sink(smtp=resources.SMTPSink(server=resources.ObjectRef(name="s"))),
    )
    doc = {**POLICY, "spec": _prune_nulls(msgspec.to_builtins(spec))}
    _validator("EmailPolicy").validate(doc)
