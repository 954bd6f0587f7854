"""The chart's optional web console: off by default; on, a Deployment and a Service that
validate, run non-root on a read-only root, connect as the admin NATS user and take the
actions token from a Secret, with settings podpost accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from runtime import settings
from tests.support import helmrender

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "podpost"
ON = {"console": {"enabled": True, "tokenSecret": "console-token"}}


@pytest.fixture(scope="module", params=["interpreter", "helm"])
def chart(request: pytest.FixtureRequest) -> helmrender.Chart | helmrender.Real:
    """podpost's own templates, by either renderer (Helm's own skips locally without it)."""
    if request.param == "helm":
        return helmrender.real(CHART, subcharts=False)
    return helmrender.Chart(CHART)


Renderer = helmrender.Chart | helmrender.Real


def _render(chart: Renderer, values: dict[str, Any]) -> list[dict[str, Any]]:
    return chart.documents(values, release="podpost", namespace="podpost")


def _console(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"].get("labels", {}).get(
        "app.kubernetes.io/component") == "console"]


def test_the_console_is_off_by_default(chart: Renderer) -> None:
    """A default install has no console objects."""
    assert _console(_render(chart, {})) == []


def test_the_console_deployment_and_service(chart: Renderer) -> None:
    """Enabled, the console is a Deployment and a Service that validate strictly; its pod
    is non-root on a read-only root, listens on all addresses of its port, is the admin
    NATS user and reads the actions token from the named Secret's key ``token``."""
    docs = _console(_render(chart, ON))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "podpost-console"), ("Service", "podpost-console")]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["console"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["PODPOST_CONSOLE__TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "console-token", "key": "token"}
    assert by_name["PODPOST_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "admin"
    plain = {name: e["value"] for name, e in by_name.items() if "value" in e}
    cfg = settings.load(plain)
    assert (cfg.console.host, cfg.console.port, cfg.nats.user) == (
        "0.0.0.0", 8025, "podpost-admin")
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8025
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_without_a_token_secret_the_console_is_read_only(chart: Renderer) -> None:
    """No tokenSecret: no token variable, so every action is refused."""
    docs = _console(_render(chart, {"console": {"enabled": True}}))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "PODPOST_CONSOLE__TOKEN" not in {e["name"] for e in env}
