"""Render podpost's Helm chart offline: a small interpreter for the Go-template subset the
chart uses, since there is no helm binary here.

Supported, with Go/Helm semantics: text and ``{{ }}`` actions with ``{{-``/``-}}`` trimming;
``.Values.a.b``, ``.Release.*``, ``.Chart.*``, ``$``, ``$var`` (from ``range $v := ...``)
and ``.`` (changed by ``range`` and ``with``); ``if``/``else if``/``else``, ``range``
(lists and maps, sorted by key as Go does), ``with``, ``define`` and ``include``; pipelines
``a | f b``; parenthesised sub-pipelines; functions ``toYaml``, ``nindent``, ``indent``,
``quote``, ``default``, ``printf`` (``%s``/``%d``/``%v``), ``and``, ``or``, ``not``,
``eq``, ``ne``, ``required``, ``fail``, ``trunc``, ``trimSuffix``, ``toString``, ``int``,
``join``, ``upper``, ``replace``, ``contains``, ``list``, ``dig``; ``$x := pipeline``.

Where it cannot tell (the NATS subchart, whose templates need far more of Go and sprig),
`real` renders with Helm's own engine, when helm-python-sdk (Helm v4's Go library) is
installed.

Numbers from values are float64s, as in Helm, and print as Go prints them (``1e+06``):
pipe big ones through ``int``. Anything else is an error, not a silent empty string: so
is a missing intermediate map (as in Helm), and printing a missing value (Helm would
print ``<no value>``).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|\||:=|[^\s()|]+')


class TemplateError(ValueError):
    pass


@dataclass
class Node:
    kind: str  # text, action, if, range, with, define
    text: str = ""
    branches: list[tuple[str | None, list[Node]]] = field(default_factory=list)
    var: str | None = None


def _lex(source: str) -> list[tuple[str, str]]:
    """[(kind, text)]: ``text`` pieces and ``action`` bodies, with trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out.append(("text", text))
        body = match.group(2).strip()
        if not body.startswith("/*"):
            out.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]]) -> list[Node]:
    stack: list[tuple[Node, list[Node]]] = []
    root: list[Node] = []
    current = root
    for kind, text in tokens:
        if kind == "text":
            if text:
                current.append(Node("text", text))
            continue
        word, _, rest = text.partition(" ")
        rest = rest.strip()
        if word in ("if", "with", "define"):
            node = Node(word, branches=[(rest, [])])
            current.append(node)
            stack.append((node, current))
            current = node.branches[0][1]
        elif word == "range":
            node = Node("range")
            if ":=" in rest:
                var, _, rest = rest.partition(":=")
                node.var = var.strip()
            node.branches.append((rest.strip(), []))
            current.append(node)
            stack.append((node, current))
            current = node.branches[0][1]
        elif word == "else":
            if not stack:
                raise TemplateError("else outside a block")
            node = stack[-1][0]
            cond = rest[3:].strip() if rest.startswith("if ") else None
            node.branches.append((cond, []))
            current = node.branches[-1][1]
        elif word == "end":
            if not stack:
                raise TemplateError("end without a block")
            _, current = stack.pop()
        else:
            current.append(Node("action", text))
    if stack:
        raise TemplateError(f"unclosed {stack[-1][0].kind}")
    return root


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (
        isinstance(value, (list, dict)) and not value)


def _as_go_values(value: Any) -> Any:
    """Helm reads values.yaml through JSON: every number becomes a float64."""
    if isinstance(value, dict):
        return {k: _as_go_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_go_values(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _as_json_numbers(value: Any) -> Any:
    """toYaml goes through JSON too, where an integral float64 prints without ``.0``."""
    if isinstance(value, dict):
        return {k: _as_json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(_as_json_numbers(value), sort_keys=True, default_flow_style=False,
                          width=1000).rstrip("\n")


def _indent(n: int, text: str) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line if line else line for line in str(text).split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(0) == "%q":
            return _quote(next(values))
        return _show(next(values))

    return re.sub(r"%[sdvq%]", one, fmt)


def _go_float(x: float) -> str:
    """Go's ``%v`` of a float64: shortest digits, ``%e`` form when the decimal exponent is
    below -4 or at least 6 (so 26214400 prints as ``2.62144e+07``, as helm would)."""
    if x == 0:
        return "0"
    sign, digits, exponent = decimal.Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    exp = len(text) - 1 + exponent
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return minus + format(decimal.Decimal(repr(abs(x))).normalize(), "f")


def _show(value: Any) -> str:
    if value is None:
        raise TemplateError("printing a missing value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, (dict, list)):
        raise TemplateError(f"printing a collection: {value!r}")
    return str(value)


def _default(fallback: Any, value: Any = None) -> Any:
    return value if _truthy(value) else fallback


def _required(message: str, value: Any = None) -> Any:
    if not _truthy(value):
        raise TemplateError(message)
    return value


def _fail(message: str) -> Any:
    raise TemplateError(message)


def _dig(*args: Any) -> Any:
    """sprig's ``dig "a" "b" default map``: a nested lookup with a default."""
    *keys, fallback, value = args
    for key in keys:
        if not isinstance(value, dict) or value.get(key) is None:
            return fallback
        value = value[key]
    return value


def _quote(value: Any) -> str:
    return '"' + _show(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "indent": _indent,
    "quote": _quote,
    "default": _default,
    "printf": _printf,
    "not": lambda v: not _truthy(v),
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "required": _required,
    "trunc": lambda n, s: str(s)[: int(n)],
    "trimSuffix": lambda suffix, s: str(s).removesuffix(suffix),
    "toString": _show,
    "int": int,
    "join": lambda sep, items: sep.join(_show(i) for i in items),
    "upper": lambda s: _show(s).upper(),
    "replace": lambda old, new, s: _show(s).replace(old, new),
    "fail": _fail,
    "contains": lambda sub, s: _show(sub) in _show(s),
    "list": lambda *items: list(items),
    "dig": _dig,
}


@dataclass
class Scope:
    dot: Any
    root: Any
    variables: dict[str, Any]


class Chart:
    """A chart directory: ``templates/*.yaml`` rendered with ``_*.tpl`` definitions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.defaults = yaml.safe_load((path / "values.yaml").read_text())
        self.defines: dict[str, list[Node]] = {}
        self.templates: dict[str, list[Node]] = {}
        for file in sorted((path / "templates").iterdir()):
            nodes = _parse(_lex(file.read_text()))
            for node in nodes:
                if node.kind == "define":
                    name = node.branches[0][0]
                    assert name is not None
                    self.defines[name.strip().strip('"')] = node.branches[0][1]
            if file.suffix == ".yaml":
                self.templates[file.name] = [n for n in nodes if n.kind != "define"]

    def render(self, values: Mapping[str, Any] | None = None, *, release: str = "podpost",
               namespace: str = "podpost") -> dict[str, str]:
        """Each template's text, with ``values`` deep-merged over values.yaml."""
        root = {
            "Values": _as_go_values(_merge(self.defaults, values or {})),
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": self.meta["name"], "Version": self.meta["version"],
                      "AppVersion": self.meta.get("appVersion", "")},
        }
        return {name: self._run(nodes, Scope(root, root, {"$": root}))
                for name, nodes in self.templates.items()}

    def documents(self, values: Mapping[str, Any] | None = None, **kwargs: Any
                  ) -> list[dict[str, Any]]:
        """Every non-empty YAML document of the rendered templates."""
        docs: list[dict[str, Any]] = []
        for name, text in self.render(values, **kwargs).items():
            try:
                loaded = list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:
                raise TemplateError(f"{name} renders invalid YAML: {exc}\n{text}") from exc
            docs += [d for d in loaded if d]
        return docs

    # --- evaluation ---------------------------------------------------------------------

    def _run(self, nodes: list[Node], scope: Scope) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                assign = re.fullmatch(r"(\$\w+)\s*:?=\s*(.+)", node.text, re.S)
                if assign:  # Go prints nothing for an assignment
                    scope.variables[assign.group(1)] = self._pipeline(assign.group(2), scope)
                else:
                    out.append(_show(self._pipeline(node.text, scope)))
            elif node.kind == "if":
                for cond, body in node.branches:
                    if cond is None or _truthy(self._pipeline(cond, scope)):
                        out.append(self._run(body, scope))
                        break
            elif node.kind == "with":
                cond, body = node.branches[0]
                assert cond is not None
                value = self._pipeline(cond, scope)
                if _truthy(value):
                    out.append(self._run(body, Scope(value, scope.root, scope.variables)))
                elif len(node.branches) > 1:
                    out.append(self._run(node.branches[1][1], scope))
            elif node.kind == "range":
                cond, body = node.branches[0]
                assert cond is not None
                value = self._pipeline(cond, scope)
                items = ([value[k] for k in sorted(value)] if isinstance(value, dict)
                         else list(value or []))
                for item in items:
                    variables = dict(scope.variables)
                    if node.var:
                        variables[node.var] = item
                    out.append(self._run(body, Scope(item, scope.root, variables)))
                if not items and len(node.branches) > 1:
                    out.append(self._run(node.branches[1][1], scope))
        return "".join(out)

    def _pipeline(self, text: str, scope: Scope) -> Any:
        tokens = _TOKEN.findall(text)
        value, rest = self._parse_pipeline(tokens, scope)
        if rest:
            raise TemplateError(f"unexpected {rest!r} in {text!r}")
        return value

    def _parse_pipeline(self, tokens: list[str], scope: Scope) -> tuple[Any, list[str]]:
        piped: list[Any] = []
        while True:
            command: list[Any] = []
            while tokens and tokens[0] not in ("|", ")"):
                token = tokens.pop(0)
                if token == "(":
                    value, tokens = self._parse_pipeline(tokens, scope)
                    if not tokens or tokens[0] != ")":
                        raise TemplateError("unbalanced parenthesis")
                    tokens = tokens[1:]
                    command.append(("value", value))
                else:
                    command.append(("token", token))
            result = self._command(command, piped, scope)
            piped = [result]
            if tokens and tokens[0] == "|":
                tokens = tokens[1:]
                continue
            return result, tokens

    def _command(self, command: list[tuple[str, Any]], piped: list[Any], scope: Scope) -> Any:
        if not command:
            raise TemplateError("empty command")
        kind, head = command[0]
        if kind == "token" and (head in FUNCTIONS or head in ("include", "and", "or")):
            args = [self._value(item, scope) for item in command[1:]] + piped
            if head == "include":
                name, dot = args
                return self._run(self.defines[name], Scope(dot, scope.root, {"$": dot}))
            if head == "and":
                result = args[0]
                for arg in args:
                    result = arg
                    if not _truthy(arg):
                        break
                return result
            if head == "or":
                for arg in args:
                    if _truthy(arg):
                        return arg
                return args[-1]
            return FUNCTIONS[head](*args)
        if len(command) > 1 or piped:
            raise TemplateError(f"{head!r} is not a function")
        return self._value(command[0], scope)

    def _value(self, item: tuple[str, Any], scope: Scope) -> Any:
        kind, token = item
        if kind == "value":
            return token
        if token.startswith('"'):
            return yaml.safe_load(token)  # a double-quoted YAML scalar unescapes like Go
        if token.startswith("`"):
            return token[1:-1]
        if token in ("true", "false"):
            return token == "true"
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token == ".":
            return scope.dot
        if token.startswith("."):
            return _lookup(scope.dot, token[1:].split("."), token)
        if token.startswith("$"):
            name, _, path = token.partition(".")
            if name not in scope.variables:
                raise TemplateError(f"undefined variable {name}")
            base = scope.variables[name]
            return _lookup(base, path.split("."), token) if path else base
        raise TemplateError(f"unknown token {token!r}")


class Real:
    """The chart rendered by Helm's own engine (helm-python-sdk: Helm v4's Go library, no
    cluster), the vendored NATS subchart included: for what the interpreter above cannot
    render. Same interface as `Chart`; a failed render is a `TemplateError`."""

    def __init__(self, path: Path, *, subcharts: bool = True) -> None:
        import helm_python  # type: ignore[import-not-found,unused-ignore]

        self._helm = helm_python
        self.path = path
        self.subcharts = subcharts

    def render(self, values: Mapping[str, Any] | None = None, *, release: str = "podpost",
               namespace: str = "podpost") -> dict[str, str]:
        """Each template's text by its path in the chart (``podpost/templates/x.yaml``)."""
        with self._helm.Chart.load(str(self.path)) as chart:
            try:
                out: dict[str, str] = chart.render(dict(values or {}), name=release,
                                                   namespace=namespace, is_install=True)
            except self._helm.HelmError as exc:
                raise TemplateError(str(exc)) from exc
        return {k: v for k, v in out.items() if self.subcharts or "/charts/" not in k}

    def documents(self, values: Mapping[str, Any] | None = None, **kwargs: Any
                  ) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for name, text in sorted(self.render(values, **kwargs).items()):
            if name.endswith(".yaml"):
                docs += [d for d in yaml.safe_load_all(text) if d]
        return docs


def real(path: Path, *, subcharts: bool = True) -> Real:
    """Helm's own renderer; a test without it is skipped, except under CI, where real
    Helm is part of the test dependencies and its absence a failure."""
    import os

    import pytest

    try:
        return Real(path, subcharts=subcharts)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("helm-python-sdk is not installed: CI renders the chart with Helm")
        pytest.skip("helm-python-sdk is not installed: no real Helm to render with")


def _lookup(base: Any, path: list[str], token: str) -> Any:
    value = base
    for i, key in enumerate(path):
        if not isinstance(value, dict):
            raise TemplateError(f"{token}: {'.'.join(path[:i]) or '.'} is not a map")
        value = value.get(key)
        if value is None and i < len(path) - 1:
            raise TemplateError(f"{token}: nil pointer evaluating {'.'.join(path[:i + 1])}")
    return value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
