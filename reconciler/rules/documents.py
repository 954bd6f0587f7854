"""The file source's YAML: text in, builder `Inputs` out, or one error a person can act on.

The file holds the same documents as a cluster (``SMTPServer``, ``EmailPolicy``, v1
``Secret`` and ``ConfigMap``) plus ``StaticSource`` documents standing in for pods
(docs/architecture.md "One mail's trip", the reconciler's side; an example in the
README). Each document is decoded into the Structs of `schemas.resources`, which refuse
unknown fields, so a typo is an error. An error names the file, the document (its number,
kind and name) and the field: ``policies.yaml: document 3 (EmailPolicy dev/app): unknown
field "podSelectr" at spec``. Messages never quote a Secret's values nor a YAML line, so a
password cannot reach a log through an error. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import msgspec
import yaml

from reconciler.rules import inputs as inputs_mod
from schemas import resources

KINDS: dict[str, tuple[str, type[Any]]] = {
    "SMTPServer": (resources.API_VERSION, resources.SMTPServer),
    "EmailPolicy": (resources.API_VERSION, resources.EmailPolicy),
    "Secret": ("v1", resources.Secret),
    "ConfigMap": ("v1", resources.ConfigMap),
    "StaticSource": (resources.STATIC_API_VERSION, resources.StaticSource),
}

_AT_RE = re.compile(r" - at `\$\.?([^`]*)`$")
_DURATION_RE = re.compile(r"^Expected `str` matching regex .*\(ms\|s\|m\|h\|d\)")
_SCALAR_RE = re.compile(r'^expected "str", got "(int|float|bool)"')
_FIELD_RE = re.compile(r"(unknown field|missing required field) `([^`]*)`")


class SourceError(ValueError):
    """The file cannot be used; the message says where and why."""


def _label(index: int, document: object) -> str:
    """``document 3 (EmailPolicy dev/app)``, with as much as the document tells."""
    label = f"document {index}"
    if not isinstance(document, dict):
        return label
    kind = document.get("kind")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = metadata.get("namespace", "default") if isinstance(metadata, dict) else None
    parts = [str(kind)] if isinstance(kind, str) else []
    if isinstance(name, str):
        parts.append(f"{namespace}/{name}")
    return f"{label} ({' '.join(parts)})" if parts else label


def describe_validation(error: msgspec.ValidationError) -> str:
    """msgspec's ``Object contains unknown field `x` - at `$.spec` `` as
    ``unknown field "x" at spec``."""
    text = str(error)
    path = ""
    found = _AT_RE.search(text)
    if found:
        path = found.group(1)
        text = text[: found.start()]
    field = _FIELD_RE.search(text)
    if _DURATION_RE.search(text):
        text = "expected a duration such as 90s, 5m, 1h7m or 5d"
    elif field:
        text = f'{field.group(1)} "{field.group(2)}"'
    else:
        text = text.replace("`", '"')
        text = text[:1].lower() + text[1:]
    where = f"{text} at {path}" if path else f"{text} at the top level"
    if _SCALAR_RE.search(text):
        where += " (quote it: YAML reads 1, 1.5, yes and on as numbers or booleans)"
    return where


def _yaml_error(path: str, error: yaml.YAMLError) -> SourceError:
    """Line and column, and the parser's complaint, without the offending text."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or "invalid YAML"
        return SourceError(
            f"{path}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        )
    return SourceError(f"{path}: invalid YAML")


def _endpoint(source: resources.StaticSource, where: str) -> inputs_mod.Endpoint:
    networks = []
    for i, cidr in enumerate(source.spec.cidrs):
        try:
            networks.append(str(ipaddress.ip_network(cidr.strip(), strict=False)))
        except ValueError:
            raise SourceError(f'{where}: not an IP address or CIDR at spec.cidrs[{i}]') from None
    meta = source.metadata
    return inputs_mod.Endpoint(
        source=f"static:{meta.namespace}/{meta.name}",
        namespace=meta.namespace,
        labels=dict(meta.labels),
        networks=sorted(set(networks)),
    )


def _decode(index: int, document: object, path: str) -> object:
    where = f"{path}: {_label(index, document)}"
    if not isinstance(document, dict):
        raise SourceError(f"{where}: a document must be a mapping with apiVersion and kind")
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SourceError(
            f"{where}: unknown kind {kind!r}; expected one of {', '.join(sorted(KINDS))}"
        )
    api_version, struct = KINDS[kind]
    if document.get("apiVersion") != api_version:
        raise SourceError(f'{where}: {kind} needs apiVersion "{api_version}"')
    try:
        decoded = msgspec.convert(document, struct)
    except msgspec.ValidationError as exc:
        raise SourceError(f"{where}: {describe_validation(exc)}") from None
    if isinstance(decoded, resources.StaticSource):
        return _endpoint(decoded, where)
    return decoded


def parse(text: str, *, path: str) -> inputs_mod.Inputs:
    """Every document of the file, decoded; `SourceError` on the first bad one.

    Empty documents (a stray ``---``) are skipped. Two documents of one kind with one
    ``namespace/name`` are an error, as the API server would refuse the second."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    servers: list[resources.SMTPServer] = []
    policies: list[resources.EmailPolicy] = []
    secrets: list[resources.Secret] = []
    config_maps: list[resources.ConfigMap] = []
    endpoints: list[inputs_mod.Endpoint] = []
    seen: dict[tuple[str, str], int] = {}
    claimed: dict[str, int] = {}
    for index, document in enumerate(documents, start=1):
        if document is None:
            continue
        decoded = _decode(index, document, path)
        if isinstance(decoded, inputs_mod.Endpoint):
            identity = ("StaticSource", decoded.source.removeprefix("static:"))
            for network in decoded.networks:
                if network in claimed:
                    raise SourceError(
                        f"{path}: {_label(index, document)}: {network} is already claimed by "
                        f"document {claimed[network]}; a client must have one identity"
                    )
                claimed[network] = index
            endpoints.append(decoded)
        else:
            assert isinstance(decoded, resources.SMTPServer | resources.EmailPolicy
                              | resources.Secret | resources.ConfigMap)
            identity = (decoded.kind, inputs_mod.resource_key(decoded.metadata))
            if isinstance(decoded, resources.SMTPServer):
                servers.append(decoded)
            elif isinstance(decoded, resources.EmailPolicy):
                policies.append(decoded)
            elif isinstance(decoded, resources.ConfigMap):
                config_maps.append(decoded)
            else:
                secrets.append(decoded)
        if identity in seen:
            raise SourceError(
                f"{path}: {_label(index, document)}: {identity[0]} {identity[1]} "
                f"is already defined by document {seen[identity]}"
            )
        seen[identity] = index
    return inputs_mod.Inputs(servers=servers, policies=policies, secrets=secrets,
                           config_maps=config_maps, endpoints=endpoints)
