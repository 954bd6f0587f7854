"""The CustomResourceDefinitions of `SMTPServer` and `EmailPolicy`, generated from `schemas`.

The resource Structs in `schemas.resources` are the one source of truth; this module turns
their msgspec JSON Schema into the OpenAPI v3 subset Kubernetes accepts (a *structural*
schema): ``$ref``/``$defs`` inlined, no ``title``, no ``anyOf`` around types (an optional
field is simply not required), no ``additionalProperties: false`` (the API server prunes
unknown fields instead), ``exclusiveMinimum`` in its OpenAPI 3.0 boolean form, and every
node typed. Group, version, kinds, plurals and field names are kube-mail's, so a kube-mail
user's manifests apply unchanged. Pure: `podpost crds` prints the result and a unit test
checks that the files in ``deploy/crds`` never drift from it.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from schemas import resources

_REF_PREFIX = "#/$defs/"
# Keys a structural schema node may carry (apiextensions.k8s.io/v1 JSONSchemaProps);
# anything else msgspec might emit is dropped rather than rejected by the API server.
_ALLOWED = frozenset({
    "description", "type", "format", "properties", "items", "required", "enum", "default",
    "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "minItems", "maxItems", "uniqueItems", "additionalProperties",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
})

READY_COLUMN = '.status.conditions[?(@.type=="Ready")].status'


class Kind(msgspec.Struct, frozen=True, kw_only=True):
    """One custom resource kind: its names and where its spec Struct lives."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[msgspec.Struct]
    description: str
    columns: list[dict[str, Any]]
    status: dict[str, Any]


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref`` (our Structs are not recursive, so this terminates)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(defs[node["$ref"].removeprefix(_REF_PREFIX)], defs)
        siblings = {k: _resolve(v, defs) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _resolve(value, defs) for key, value in node.items()}


def _unwrap_optional(node: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` -> X, keeping the outer keys (a field's default, say).

    Structural schemas forbid types inside ``anyOf``; an optional field is expressed by not
    being required, and a null value is pruned by the API server."""
    branches = node.get("anyOf")
    if not isinstance(branches, list):
        return node
    kept = [branch for branch in branches if not _is_null(branch)]
    if len(kept) != 1:
        raise ValueError(f"cannot express a union of {len(kept)} types in a CRD: {node!r}")
    outer = {key: value for key, value in node.items() if key != "anyOf"}
    return {**kept[0], **outer}


def _structural(node: Any) -> Any:
    """One resolved msgspec schema node -> a structural OpenAPI v3 node, recursively."""
    if not isinstance(node, dict):
        return node
    node = _unwrap_optional(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _ALLOWED:
            continue
        if key == "properties":
            out[key] = {name: _structural(child) for name, child in value.items()}
        elif key == "items":
            out[key] = _structural(value)
        elif key == "additionalProperties":
            if isinstance(value, dict):  # a map such as labels; ``false`` is not allowed
                out[key] = _structural(value)
        elif key == "required":
            if value:
                out[key] = list(value)
        elif key == "default":
            # Only scalar defaults: the API server then fills in kube-mail's documented
            # defaults (port 587, PLAIN, hour); empty lists and maps would be noise.
            if isinstance(value, (bool, int, float, str)):
                out[key] = value
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = value
    if "enum" in out and "type" not in out and all(isinstance(v, str) for v in out["enum"]):
        out["type"] = "string"
    if out.get("type") == "object" and "properties" in out and "additionalProperties" in out:
        del out["additionalProperties"]  # mutually exclusive in a structural schema
    return out


def openapi_schema(tp: Any) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one Struct type."""
    (root,), defs = msgspec.json.schema_components([tp], ref_template=_REF_PREFIX + "{name}")
    resolved = _resolve(root, defs)
    return dict(_structural(resolved))


def _conditions_schema() -> dict[str, Any]:
    return {
        "description": "Ready and friends, written by the podpost reconciler.",
        "type": "array",
        "items": openapi_schema(resources.Condition),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }


def _status(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "Written by the podpost reconciler through the status subresource.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"conditions": _conditions_schema(), **extra},
    }


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _ready() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": READY_COLUMN,
            "description": "The Ready condition written by the reconciler."}


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="SMTPServer",
        plural="smtpservers",
        singular="smtpserver",
        short_names=["smtpserver"],
        spec=resources.SMTPServerSpec,
        description="An upstream SMTP server that EmailPolicies deliver to (kube-mail "
        "compatible; fields marked 'podpost:' are podpost additions).",
        columns=[
            {"name": "Server", "type": "string", "jsonPath": ".spec.server",
             "description": "SMTP server hostname"},
            {"name": "Port", "type": "integer", "jsonPath": ".spec.port"},
            {"name": "Connect", "type": "string", "jsonPath": ".spec.connect"},
            _ready(),
            _age(),
        ],
        status=_status({}),
    ),
    Kind(
        kind="EmailPolicy",
        plural="emailpolicies",
        singular="emailpolicy",
        short_names=["emailpolicy"],
        spec=resources.EmailPolicySpec,
        description="Which pods may send mail and where it goes (kube-mail compatible; "
        "fields marked 'podpost:' are podpost additions).",
        columns=[
            {"name": "Server", "type": "string", "jsonPath": ".spec.sink.smtp.server.name",
             "description": "which SMTP server mails are forwarded to"},
            {"name": "Default", "type": "boolean", "jsonPath": ".spec.default",
             "description": "describes if this is the default policy"},
            {"name": "Pods", "type": "integer", "jsonPath": ".status.matchedPods",
             "description": "Pods whose mail this policy currently admits."},
            _ready(),
            _age(),
        ],
        status=_status({
            "matchedPods": {
                "description": "Pods whose mail this policy currently admits.",
                "type": "integer",
                "minimum": 0,
            },
            "observedGeneration": {
                "description": "The metadata.generation this status describes.",
                "type": "integer",
            },
        }),
    ),
)


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition document of one kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{resources.GROUP}",
            "annotations": {"podpost.dev/generated-by": "podpost crds"},
        },
        "spec": {
            "group": resources.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": resources.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {
                        "openAPIV3Schema": {
                            "description": kind.description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(kind.spec),
                                "status": kind.status,
                            },
                        }
                    },
                }
            ],
        },
    }


def documents() -> dict[str, dict[str, Any]]:
    """File name (under ``deploy/crds``) -> CRD document, for every kind."""
    return {f"{kind.plural}.yaml": crd(kind) for kind in KINDS}


HEADER = "# Generated by `podpost crds` from schemas/resources.py. Do not edit.\n"


def render(doc: dict[str, Any]) -> str:
    """One document as YAML, with the generated-file header."""
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def render_all() -> str:
    """Every CRD as one multi-document YAML stream (what `podpost crds` prints)."""
    return "---\n".join(render(doc) for doc in documents().values())
