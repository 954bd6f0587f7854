"""Facts about the container image that can be checked without docker: it installs the
wheel of exactly the packages pyproject ships, runs as the chart's non-root numeric user,
and starts `podpost`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_the_image_runs_podpost_as_the_charts_non_root_user() -> None:
    """The final stage is python:3.11-slim, switches to uid 10001 (numeric, so
    runAsNonRoot can be verified) and has `podpost` as its entrypoint."""
    final = _final_stage()
    assert final[0] == ("FROM", "python:3.11-slim")
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    values = yaml.safe_load((ROOT / "deploy/helm/podpost/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001
    (entrypoint,) = [args for word, args in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["podpost"]
    installs = [args for word, args in final if word == "RUN" and "pip install" in args]
    assert installs and all(".whl" in args for args in installs)


def test_the_build_stage_copies_every_shipped_package() -> None:
    """The wheel is built from exactly the packages pyproject lists, and .dockerignore
    keeps the virtualenv, git history and tests out of the build context."""
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    copied = [source for word, args in _instructions()
              if word == "COPY" and not args.startswith("--from")
              for source in args.split()[:-1]]
    roots = sorted(p for p in shipped if "." not in p)
    assert sorted(c for c in copied if c in shipped) == roots
    # Sub-packages must be listed too, or the wheel (and so the image) lacks them.
    found = sorted(str(init.parent.relative_to(ROOT)).replace("/", ".")
                   for root in roots for init in (ROOT / root).rglob("__init__.py"))
    assert found == sorted(shipped)
    assert {"pyproject.toml", "README.md"} <= set(copied)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)
