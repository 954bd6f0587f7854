"""The README is a contract too: its two quick-start commands are the ones CI and people
run, and its policy example is valid input for the file source."""

from __future__ import annotations

import re
from pathlib import Path

from reconciler.rules import documents

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_quick_start_has_exactly_the_two_commands_and_ci_runs_the_test_one() -> None:
    """The quick start is `make dev` and `make test`; CI runs `make test` after installing
    system packages only."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make dev", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line for line in ci.splitlines() if line and not line.startswith("#")
             and not line.startswith(("set ", "cd "))]
    # Before it, only system packages pip cannot bring (Debian's chromium).
    assert steps[-1] == "make test"
    assert all(step.startswith("apt-get ") for step in steps[:-1]), steps


def test_the_policy_example_is_valid_file_source_input() -> None:
    [example] = re.findall(r"```yaml\n(.*?)```", README, re.S)
    inputs = documents.parse(example, path="README.md")
    assert [p.metadata.name for p in inputs.policies] == ["web"]
