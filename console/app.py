"""The console's HTTP face: a REST API (described at ``/api/openapi.json``), the live
stream (``/api/events``) and the page that uses them (``/``, static files, no build step).

FastAPI gives the OpenAPI document and the parameter checks; the bodies are msgspec
Structs (the bus's own types and `console.rules`' rows), whose JSON Schemas are merged
into the document's components, so the API describes exactly what it sends. Reads are
open; actions need the bearer token (`console.rules.access`). Errors are JSON
``{"detail": "<one line>"}`` with a 4xx status.
"""

from __future__ import annotations

import importlib.resources
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import fastapi
import msgspec
import pydantic
from fastapi import Header, Path, Query
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from console import live as live_mod
from console import reading
from console.rules import access, framing, inbox, message
from runtime import bus, requeueing
from runtime import settings as settings_mod

WAIT_MAX_S = 60.0
"""A CI job may wait this long in one ``GET /api/caught?wait_s=`` for its mail."""

_encoder = msgspec.json.Encoder()


class CaughtList(msgspec.Struct, frozen=True, kw_only=True):
    rows: list[inbox.CaughtRow]
    inboxes: list[inbox.Inbox]
    unreadable: int = 0


class CaughtMail(msgspec.Struct, frozen=True, kw_only=True):
    row: inbox.CaughtRow
    message: message.Message


class DeadList(msgspec.Struct, frozen=True, kw_only=True):
    rows: list[inbox.DeadRow]
    unreadable: int = 0


class Session(msgspec.Struct, frozen=True, kw_only=True):
    actions: bool
    """Whether this request's token allows actions."""
    read_only: bool
    """Whether the console has no token at all (no action is possible)."""


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    deleted: bool


SCHEMAS: dict[str, type[Any]] = {
    "CaughtList": CaughtList, "CaughtMail": CaughtMail, "DeadList": DeadList,
    "Session": Session, "Deleted": Deleted, "Release": requeueing.Release,
    "Replay": requeueing.Replay, "Purge": requeueing.Purge,
    "QueueRow": inbox.QueueRow, "Upstream": reading.Upstream,
}


class ReleaseRequest(pydantic.BaseModel):
    upstream: str
    """The upstream (``<namespace>/<name>``) to send the caught mail to."""


class ReplayRequest(pydantic.BaseModel):
    upstream: str | None = None
    """Send to this upstream instead of the dead letter's own."""


Auth = Annotated[str | None, Header(description="`Bearer <token>`; actions need it.")]
Seq = Annotated[int, Path(ge=1, description="The stream sequence (the id column).")]
Index = Annotated[int, Path(ge=0, description="The attachment's index in the mail.")]
Wait = Annotated[float, Query(ge=0, le=WAIT_MAX_S, description=(
    "Wait up to this long for a matching mail to be caught (for CI jobs)"))]


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type="application/json")


def _ok(name: str, *, list_of: bool = False) -> dict[int | str, dict[str, Any]]:
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    schema = {"type": "array", "items": ref} if list_of else ref
    return {200: {"content": {"application/json": {"schema": schema}}}}


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create(conn: bus.Conn, cfg: settings_mod.ConsoleSettings, live: live_mod.Live
           ) -> fastapi.FastAPI:
    """The ASGI app of one console, reading and acting through ``conn``."""
    app = fastapi.FastAPI(title="podpost console", version="1",
                          description="Caught mail per namespace, the queue and dead letters.",
                          openapi_url="/api/openapi.json", docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def headers(request: fastapi.Request, call_next: Any) -> Any:
        response = await call_next(request)
        for name, value in framing.common_headers().items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Content-Security-Policy", framing.PAGE_CSP)
        return response

    @app.exception_handler(_Refused)
    async def refused(request: fastapi.Request, exc: _Refused) -> JSONResponse:
        extra = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, exc.status, headers=extra)

    @app.exception_handler(reading.NotFound)
    async def not_found(request: fastapi.Request, exc: reading.NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 404)

    @app.exception_handler(inbox.InvalidSearch)
    async def invalid(request: fastapi.Request, exc: inbox.InvalidSearch) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    def may_act(authorization: str | None) -> None:
        verdict = access.check(authorization, cfg.token)
        if verdict is access.Verdict.READ_ONLY:
            raise _Refused(403, "this console is read-only: no PODPOST_CONSOLE__TOKEN is set")
        if verdict is access.Verdict.NO_TOKEN:
            raise _Refused(401, "actions need the console's token (Authorization: Bearer)")

    # --- caught mail ---------------------------------------------------------------------

    @app.get("/api/caught", responses=_ok("CaughtList"), response_class=Response,
             summary="Caught mail, newest first, narrowed by the search")
    async def caught_list(
        namespace: str | None = None, policy: str | None = None, pod: str | None = None,
        sender: str | None = None, recipient: str | None = None,
        subject: str | None = None, mail_id: str | None = None,
        since: datetime | None = None, until: datetime | None = None,
        wait_s: Wait = 0.0,
    ) -> Response:
        search = inbox.Search(namespace=inbox.checked_namespace(namespace), policy=policy,
                              pod=pod, sender=sender, recipient=recipient, subject=subject,
                              mail_id=mail_id, since=since, until=until)
        ends = time.monotonic() + wait_s
        with live.watching() as watch:
            for _ in range(1000):  # each round waits for a catch or ends
                every, bad = await reading.caught_rows(conn, search.namespace)
                rows = inbox.select(every, search, cfg.max_rows)
                remaining = ends - time.monotonic()
                if rows or remaining <= 0 or not await watch.caught(remaining):
                    break
        return _json(CaughtList(rows=rows, inboxes=inbox.inboxes(every), unreadable=bad))

    @app.get("/api/caught/{seq}", responses=_ok("CaughtMail"), response_class=Response,
             summary="One caught mail: headers, text, HTML source, attachments")
    async def caught_one(seq: Seq) -> Response:
        kept, data = await reading.caught_mail(conn, seq)
        parsed = message.read(data)
        row = inbox.caught_row(kept.seq, kept.value, parsed.subject)
        return _json(CaughtMail(row=row, message=parsed))

    @app.get("/api/caught/{seq}/raw", response_class=Response,
             summary="The stored message as it was caught (message/rfc822, as text)")
    async def caught_raw(seq: Seq) -> Response:
        _, data = await reading.caught_mail(conn, seq)
        return Response(data, media_type="text/plain; charset=utf-8")

    @app.get("/api/caught/{seq}/html", response_class=Response,
             summary="The HTML part, for the sandboxed frame: no script, no remote content")
    async def caught_html(seq: Seq, remote: bool = False) -> Response:
        _, data = await reading.caught_mail(conn, seq)
        html = message.read(data).html
        if html is None:
            raise reading.NotFound(f"caught mail {seq} has no HTML part")
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": framing.mail_csp(remote=remote)})

    @app.get("/api/caught/{seq}/attachments/{index}", response_class=Response,
             summary="One attachment, as a download")
    async def caught_attachment(seq: Seq, index: Index) -> Response:
        _, data = await reading.caught_mail(conn, seq)
        found = message.attachment(data, index)
        if found is None:
            raise reading.NotFound(f"caught mail {seq} has no attachment {index}")
        return Response(found.data, media_type="application/octet-stream", headers={
            "Content-Disposition": framing.download_disposition(found.filename),
            "Content-Security-Policy": "default-src 'none'; sandbox"})

    @app.delete("/api/caught/{seq}", responses=_ok("Deleted"), response_class=Response,
                summary="Delete a caught mail (needs the token)")
    async def caught_delete(seq: Seq, authorization: Auth = None) -> Response:
        may_act(authorization)
        return _json(Deleted(seq=seq, deleted=await requeueing.delete_caught(conn, seq)))

    @app.post("/api/caught/{seq}/release", responses=_ok("Release"), response_class=Response,
              summary="Send a caught mail to an upstream (needs the token)")
    async def caught_release(seq: Seq, body: ReleaseRequest, authorization: Auth = None
                             ) -> Response:
        may_act(authorization)
        known = {up.key for up in await reading.upstreams(conn)}
        if body.upstream not in known:
            raise _Refused(422, f"upstream {body.upstream!r} is not in the policy snapshot "
                                f"(known: {', '.join(sorted(known)) or 'none'})")
        kept, _ = await reading.caught_mail(conn, seq)
        row = await requeueing.release(conn, kept, to_upstream=body.upstream)
        return _json(row, 409 if row.outcome == requeueing.BODY_MISSING else 200)

    # --- the queue and dead letters ----------------------------------------------------

    @app.get("/api/queue", responses=_ok("QueueRow", list_of=True), response_class=Response,
             summary="Mail waiting per upstream and policy")
    async def queue() -> Response:
        return _json(await reading.queue(conn))

    @app.get("/api/upstreams", responses=_ok("Upstream", list_of=True),
             response_class=Response, summary="Upstreams a mail can be released to")
    async def upstreams() -> Response:
        return _json(await reading.upstreams(conn))

    @app.get("/api/dead", responses=_ok("DeadList"), response_class=Response,
             summary="Dead letters, newest first")
    async def dead_list(namespace: str | None = None) -> Response:
        rows, bad = await reading.dead_rows(conn)
        ns = inbox.checked_namespace(namespace)
        rows = [row for row in reversed(rows) if ns is None or row.namespace == ns]
        return _json(DeadList(rows=rows[:cfg.max_rows], unreadable=bad))

    @app.post("/api/dead/{seq}/replay", responses=_ok("Replay"), response_class=Response,
              summary="Queue a dead letter again, as `podpost dlq replay` (needs the token)")
    async def dead_replay(seq: Seq, body: ReplayRequest | None = None,
                          authorization: Auth = None) -> Response:
        may_act(authorization)
        target = body.upstream if body is not None else None
        if target is not None and target not in {up.key for up in await reading.upstreams(conn)}:
            raise _Refused(422, f"upstream {target!r} is not in the policy snapshot")
        kept = await reading.dead_letter(conn, seq)
        [row] = await requeueing.replay(conn, [kept], to_upstream=target, dry_run=False,
                                        now=_now())
        return _json(row, 409 if row.outcome == requeueing.BODY_MISSING else 200)

    @app.delete("/api/dead/{seq}", responses=_ok("Purge"), response_class=Response,
                summary="Purge a dead letter, as `podpost dlq purge` (needs the token)")
    async def dead_purge(seq: Seq, authorization: Auth = None) -> Response:
        may_act(authorization)
        kept = await reading.dead_letter(conn, seq)
        [row] = await requeueing.purge(conn, [kept], dry_run=False, now=_now())
        return _json(row)

    # --- the session, the live stream, the page ----------------------------------------

    @app.get("/api/session", responses=_ok("Session"), response_class=Response,
             summary="Whether the given token allows actions")
    async def session(authorization: Auth = None) -> Response:
        verdict = access.check(authorization, cfg.token)
        return _json(Session(actions=verdict is access.Verdict.ALLOWED,
                             read_only=verdict is access.Verdict.READ_ONLY))

    @app.get("/api/events", response_class=StreamingResponse,
             summary="Server-Sent Events: caught, dead, replayed, purged")
    async def events(namespace: str | None = None) -> StreamingResponse:
        ns = inbox.checked_namespace(namespace)
        return StreamingResponse(live.stream(ns), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    static = importlib.resources.files("console") / "static"

    @app.get("/", response_class=Response, include_in_schema=False)
    async def index() -> Response:
        return Response(static.joinpath("index.html").read_bytes(), media_type="text/html")

    app.mount("/static", StaticFiles(packages=[("console", "static")]), name="static")
    _describe(app)
    return app


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(app: fastapi.FastAPI) -> None:
    """Merge the msgspec Structs' JSON Schemas into the OpenAPI document's components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            _, components = msgspec.json.schema_components(
                list(SCHEMAS.values()), ref_template="#/components/schemas/{name}")
            by_type = {cls.__name__: name for name, cls in SCHEMAS.items()}
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in components.items():
                schemas[by_type.get(name, name)] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
