"""The web console's REST API over real HTTP, against the real relay in process: mail sent
over SMTP is listed per namespace, searched, read, and released to a real upstream; every
action is refused without the token; a CI job can wait for its mail."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from loadkit import upstream as upstream_mod
from runtime import bus, settings
from tests.support import consoling, dispatching

AUTH = {"Authorization": f"Bearer {consoling.TOKEN}"}


@pytest.fixture
async def relay(nats_settings: settings.NatsSettings, conn: bus.Conn,
                upstream: upstream_mod.Upstream) -> AsyncIterator[consoling.Relay]:
    async with consoling.running(nats_settings, conn, upstream) as running:
        yield running


@pytest.fixture
async def http(relay: consoling.Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.console_url, timeout=20) as client:
        yield client


async def _caught(http: httpx.AsyncClient, **params: str) -> list[dict[str, object]]:
    response = await http.get("/api/caught", params={"wait_s": "10", **params})
    assert response.status_code == 200, response.text
    rows: list[dict[str, object]] = response.json()["rows"]
    return rows


async def test_caught_mail_is_listed_per_namespace_searched_and_read(
    relay: consoling.Relay, http: httpx.AsyncClient
) -> None:
    """A mail from team-a's pod lands in team-a's inbox only, with its pod; the search
    narrows by sender, recipient and subject; the mail reads back with its HTML, text
    and attachment, which downloads as an attachment."""
    await relay.send(consoling.html_mail("quarterly report"))
    await relay.send(consoling.html_mail("team b news", to="b@example.org"),
                     source="127.0.0.3")
    [row] = await _caught(http, namespace="team-a")
    assert (row["namespace"], row["policy"], row["pod"], row["subject"]) == (
        "team-a", "team-a/catch", "team-a/web-1", "quarterly report")
    [b_row] = await _caught(http, namespace="team-b")
    assert b_row["subject"] == "team b news"
    listing = (await http.get("/api/caught")).json()
    assert [(box["namespace"], box["count"]) for box in listing["inboxes"]] == [
        ("team-a", 1), ("team-b", 1)]
    assert [r["seq"] for r in await _caught(http, recipient="B@EXAMPLE", subject="news")] == [
        b_row["seq"]]
    assert (await http.get("/api/caught", params={"sender": "nobody"})).json()["rows"] == []
    shown = (await http.get(f"/api/caught/{row['seq']}")).json()
    assert shown["message"]["text"] == "Hello in plain text.\n"
    assert "<h1 id='greeting'>" in shown["message"]["html"]
    [part] = shown["message"]["attachments"]
    assert (part["filename"], part["content_type"]) == ("report.pdf", "application/pdf")
    html = await http.get(f"/api/caught/{row['seq']}/html")
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
    download = await http.get(f"/api/caught/{row['seq']}/attachments/0")
    assert download.content == b"%PDF-1.4 test attachment\n"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["content-type"] == "application/octet-stream"
    raw = await http.get(f"/api/caught/{row['seq']}/raw")
    assert "Subject: quarterly report" in raw.text


async def test_actions_are_refused_without_the_token(
    relay: consoling.Relay, http: httpx.AsyncClient, upstream: upstream_mod.Upstream
) -> None:
    """Release, delete, replay and purge answer 401 without the bearer token or with a
    wrong one, and change nothing; reads need no token."""
    await relay.send(consoling.html_mail("keep me"))
    [row] = await _caught(http)
    dead_seq = await consoling.dead_letter(relay.conn, "you@example.org")
    seq = row["seq"]
    attempts = [
        ("POST", f"/api/caught/{seq}/release", {"upstream": consoling.UPSTREAM}),
        ("DELETE", f"/api/caught/{seq}", None),
        ("POST", f"/api/dead/{dead_seq}/replay", {}),
        ("DELETE", f"/api/dead/{dead_seq}", None),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        for method, path, body in attempts:
            response = await http.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert [r["seq"] for r in await _caught(http)] == [seq]
    assert [r["seq"] for r in (await http.get("/api/dead")).json()["rows"]] == [dead_seq]
    assert (await http.get("/api/session")).json() == {"actions": False, "read_only": False}
    assert (await http.get("/api/session", headers=AUTH)).json()["actions"] is True
    assert upstream.handler.messages == []


async def test_a_caught_mail_is_released_to_a_real_upstream_once(
    relay: consoling.Relay, http: httpx.AsyncClient, upstream: upstream_mod.Upstream
) -> None:
    """With the token, releasing a caught mail queues it for the upstream, which receives
    it; releasing it again to the same upstream is a duplicate; an unknown upstream is
    refused; the caught copy stays until it is deleted."""
    await relay.send(consoling.html_mail("ship it"))
    [row] = await _caught(http, subject="ship it")
    path = f"/api/caught/{row['seq']}/release"
    unknown = await http.post(path, json={"upstream": "mail/nowhere"}, headers=AUTH)
    assert unknown.status_code == 422 and "mail/nowhere" in unknown.json()["detail"]
    first = await http.post(path, json={"upstream": consoling.UPSTREAM}, headers=AUTH)
    assert first.status_code == 200 and first.json()["outcome"] == "queued", first.text
    again = await http.post(path, json={"upstream": consoling.UPSTREAM}, headers=AUTH)
    assert again.json()["outcome"] == "already-queued"
    await dispatching.eventually(lambda: len(upstream.handler.messages) >= 1)
    [received] = upstream.handler.messages
    assert received.rcpt_to == ["someone@example.org"] and b"Subject: ship it" in received.data
    assert [r["seq"] for r in await _caught(http, subject="ship it")] == [row["seq"]]
    deleted = await http.delete(f"/api/caught/{row['seq']}", headers=AUTH)
    assert deleted.json() == {"seq": row["seq"], "deleted": True}
    assert (await http.get(f"/api/caught/{row['seq']}")).status_code == 404
    assert len(upstream.handler.messages) == 1


async def test_a_dead_letter_is_replayed_through_the_api(
    relay: consoling.Relay, http: httpx.AsyncClient, upstream: upstream_mod.Upstream
) -> None:
    """Replaying a dead letter with the token moves it out of DEAD and the upstream
    receives the mail; purging another removes it."""
    seq = await consoling.dead_letter(relay.conn, "back@example.org")
    other = await consoling.dead_letter(relay.conn, "gone@example.org")
    replayed = await http.post(f"/api/dead/{seq}/replay", json={}, headers=AUTH)
    assert replayed.json()["outcome"] == "queued", replayed.text
    purged = await http.delete(f"/api/dead/{other}", headers=AUTH)
    assert purged.json()["outcome"] == "purged"
    assert (await http.get("/api/dead")).json()["rows"] == []
    await dispatching.eventually(lambda: len(upstream.handler.messages) >= 1)
    assert upstream.handler.messages[0].rcpt_to == ["back@example.org"]


async def test_the_api_is_described_by_an_openapi_document(http: httpx.AsyncClient) -> None:
    """The OpenAPI document names every route and the schemas of what they answer."""
    document = (await http.get("/api/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in ("/api/caught", "/api/caught/{seq}", "/api/caught/{seq}/release",
                 "/api/dead", "/api/dead/{seq}/replay", "/api/events"):
        assert path in document["paths"], path
    schemas = document["components"]["schemas"]
    assert {"CaughtList", "CaughtRow", "CaughtMail", "Release", "Replay"} <= set(schemas)
    ok = document["paths"]["/api/caught"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CaughtList"}


async def test_a_bad_namespace_is_refused_in_one_line(http: httpx.AsyncClient) -> None:
    """A namespace that is no DNS label never reaches a subject filter."""
    response = await http.get("/api/caught", params={"namespace": "a.>"})
    assert response.status_code == 422
    assert "not a Kubernetes namespace" in response.json()["detail"]
