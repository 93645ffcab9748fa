"""The audit viewer: a FastAPI app with server-rendered pages (Jinja2 templates, one small script,
no front-end build) over one root's journal.

Reads go through the journal's read API (verified); the actions it offers (approve, reject,
accept, undo from an entry) go through the runtime and are journaled with who did them.

Protection: loopback only unless an access token is set (then every request carries it, from a
cookie set by opening the printed URL once); requests naming another host are refused (DNS
rebinding); every state-changing request is a POST carrying the page's CSRF token; pages may
not be framed and run only the viewer's own script.
"""

from __future__ import annotations

import asyncio
import getpass
import hmac
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ..errors import GoexError, JournalCorrupt, UndoConflict
from ..journal.store import Journal
from ..journal.verify import verify
from . import views

if TYPE_CHECKING:
    from ..runtime import Runtime

_HERE = Path(__file__).parent
_COOKIE = "goex_audit_token"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ViewerRefused(GoexError):
    """The viewer was asked to run in a way that would expose the journal (say, off loopback
    without a token)."""


@dataclass
class ViewerConfig:
    """`root`, `journal` (default ROOT/.goex), `open_runtime(**kw)` making a `Runtime` on the root
    with the settings its actions need (databases, hosts, secrets), `by`: who acts from the viewer
    (journaled; default the user running it), `token`: required on every request when set."""

    root: Path
    journal: Path | None
    open_runtime: Callable[..., "Runtime"]
    by: str | None = None
    token: str | None = None
    poll_s: float = 0.3
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def journal_folder(self) -> Path:
        return self.journal if self.journal is not None else self.root / ".goex"


def is_loopback(host: str) -> bool:
    if host.strip("[]") in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Viewer:
    """The app's state: one runtime on the root (its journal answers the reads), opened at start."""

    def __init__(self, config: ViewerConfig):
        self.config = config
        self.by = config.by or f"{_user()} (audit viewer)"
        self.rt = config.open_runtime(policy="permissive")
        self.lock_notes = threading.Lock()
        self.lock = threading.Lock()  # one state-changing request at a time
        self._notes: dict[str, tuple[str, str]] = {}  # what a step did, shown once on the page it leads to

    def note(self, kind: str, text: str) -> str:
        """Keep (kind, text) for the next page; returns the id its URL carries. Text never travels
        in a URL, so a link cannot make the viewer say something it did not."""
        with self.lock_notes:
            while len(self._notes) >= 256:
                self._notes.pop(next(iter(self._notes)))
            key = secrets.token_urlsafe(12)
            self._notes[key] = (kind, self.redact(text))
            return key

    def take_note(self, key: str) -> tuple[str, str]:
        with self.lock_notes:
            return self._notes.pop(key, ("", ""))

    @property
    def journal(self) -> Journal:
        return self.rt.journal

    def redact(self, text: str) -> str:
        for prefix in ("http",):  # the domain holding secrets; its redaction knows their values
            text = self.rt.adapter(prefix).redact(text)
        return text

    def describe(self, detail: Any) -> str:
        try:
            return self.rt.adapter(detail.type.split(".", 1)[0]).describe(detail)
        except GoexError as exc:
            return detail.error or f"{detail.type} {detail.target} ({exc})"

    def approve(self, eid: str) -> str:
        parked = self.rt.parked(eid)
        with self.config.open_runtime(policy=_pack_spec(parked.get("policy", "default")),
                                      protected=parked.get("protected", [])) as rt:
            result = rt.approve(eid, by=self.by)
        return f"{eid} approved: " + ("ran as " + str(result.entry_id) if result.ok
                                      else f"{result.status}: {result.error}")

    def close(self) -> None:
        self.rt.close()


def _pack_spec(source: str) -> str:
    return source.removesuffix(" (shipped)")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        return "unknown"


def create_app(config: ViewerConfig, *, bound_host: str = "127.0.0.1") -> FastAPI:
    """The viewer's app. Raises `ViewerRefused` when `bound_host` is not loopback and no token is set."""
    if not is_loopback(bound_host) and not config.token:
        raise ViewerRefused(f"the audit viewer serves the journal and can approve and undo actions: binding "
                            f"{bound_host} (not loopback) needs --token TOKEN")
    viewer = Viewer(config)
    app = FastAPI(title="goex audit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.viewer = viewer
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals.update(csrf=config.csrf, root=str(config.root))
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    @app.exception_handler(_Forbidden)
    async def forbidden(request: Request, exc: _Forbidden) -> Response:
        return PlainTextResponse(str(exc), status_code=403, headers=_HEADERS)

    @app.exception_handler(JournalCorrupt)
    async def corrupt(request: Request, exc: JournalCorrupt) -> Response:
        return templates.TemplateResponse(request, "corrupt.html", {"bad": exc, "head": (0, ""), "message": ""},
                                          status_code=500, headers=_HEADERS)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refusal = _refusal(config, bound_host, request)
        if isinstance(refusal, Response):
            return refusal
        response = await call_next(request)
        response.headers.update(_HEADERS)
        return response

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        kind, text = viewer.take_note(request.query_params.get("note", ""))
        context.setdefault("message", text if kind == "message" else "")
        context.setdefault("conflict", text if kind == "conflict" else "")
        context.setdefault("head", viewer.journal.head())
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return page(request, "sessions.html", sessions=views.sessions(viewer.journal), head=viewer.journal.head())

    @app.get("/sessions/{sid}", response_class=HTMLResponse)
    def session(request: Request, sid: str, type: str = "", status: str = "", decision: str = "") -> HTMLResponse:
        items = views.timeline(viewer.journal, sid, type=type, status=status, decision=decision)
        if not items and not viewer.journal.entries(session=sid):
            return page(request, "missing.html", 404, what=f"session {sid}")
        for item in items:
            item.text = viewer.redact(item.text)
        every = viewer.journal.entries(session=sid)
        return page(request, "session.html", sid=sid, items=items, head=viewer.journal.head(),
                    filters={"type": type, "status": status, "decision": decision},
                    types=sorted({e.type for e in every}), statuses=sorted({e.status for e in every}),
                    decisions=sorted({e.decision for e in every}), redact=viewer.redact)

    @app.get("/entries/{eid}", response_class=HTMLResponse)
    def entry(request: Request, eid: str) -> HTMLResponse:
        view = views.entry_view(viewer.journal, eid, viewer.describe, viewer.redact)
        if view is None:
            return page(request, "missing.html", 404, what=f"entry {eid}")
        return page(request, "entry.html", view=view, e=view.detail.entry, redact=viewer.redact)

    @app.get("/verify", response_class=HTMLResponse)
    def verify_page(request: Request) -> HTMLResponse:
        try:
            report, bad = verify(viewer.journal), None
        except JournalCorrupt as exc:
            report, bad = None, exc
        anchor = viewer.journal.anchor.read()
        return page(request, "verify.html", report=report, bad=bad, anchor=anchor,
                    anchor_path=str(viewer.journal.anchor.path))

    def timeline_of(eid: str) -> str:
        found = viewer.journal.entry(eid)
        return f"/sessions/{quote(found.session)}" if found is not None else f"/entries/{eid}"

    @app.post("/entries/{eid}/approve")
    async def approve(request: Request, eid: str) -> Response:
        await _checked_form(request, config)
        return _settle(viewer, timeline_of(eid), lambda: viewer.approve(eid))

    @app.post("/entries/{eid}/reject")
    async def reject(request: Request, eid: str) -> Response:
        form = await _checked_form(request, config)
        return _settle(viewer, timeline_of(eid), lambda: _reject(viewer, eid, form.get("reason", "")))

    @app.post("/entries/{eid}/undo-from")
    async def undo_from(request: Request, eid: str) -> Response:
        await _checked_form(request, config)
        found = viewer.journal.entry(eid)
        if found is None:
            return PlainTextResponse(f"no entry {eid}", status_code=404)
        sid = found.session

        def run() -> str:
            undone = viewer.rt.session(session_id=sid).undo_from(eid, by=viewer.by)
            return f"undone: {', '.join(undone) or 'nothing'}"

        return _settle(viewer, f"/sessions/{quote(sid)}", run, conflict_to=f"/entries/{eid}")

    @app.post("/sessions/{sid}/accept")
    async def accept(request: Request, sid: str) -> Response:
        await _checked_form(request, config)
        return _settle(viewer, f"/sessions/{quote(sid)}", lambda: (
            f"accepted {len(viewer.rt.session(session_id=sid).accept(by=viewer.by))} entries"))

    @app.get("/events")
    async def events(request: Request, after: int = -1) -> StreamingResponse:
        return StreamingResponse(_heads(request, viewer, config.poll_s, after), media_type="text/event-stream")

    return app


def _reject(viewer: Viewer, eid: str, reason: str) -> str:
    viewer.rt.reject(eid, by=viewer.by, reason=reason)
    return f"{eid} rejected"


def _settle(viewer: Viewer, back: str, act: Callable[[], str], conflict_to: str | None = None) -> Response:
    """Run one state-changing step, then go back to `back` with what happened (or the refusal)."""
    with viewer.lock:
        try:
            message = act()
        except UndoConflict as exc:
            return RedirectResponse(f"{conflict_to or back}?note={viewer.note('conflict', str(exc))}", status_code=303)
        except GoexError as exc:
            message = f"refused: {exc}"
    return RedirectResponse(f"{back}?note={viewer.note('message', message)}", status_code=303)


async def _checked_form(request: Request, config: ViewerConfig) -> dict[str, str]:
    """The url-encoded form of a POST whose CSRF token matches; raises otherwise (403)."""
    body = (await request.body()).decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    if not hmac.compare_digest(form.get("csrf", ""), config.csrf):
        raise _Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return form


class _Forbidden(Exception):
    pass


def _refusal(config: ViewerConfig, bound_host: str, request: Request) -> Response | None:
    """A response refusing the request (wrong host, no token, cross-site POST), or None."""
    host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
    if not config.token and not is_loopback(host):
        return PlainTextResponse("the audit viewer answers only on a loopback address", status_code=421)
    if config.token:
        given = request.cookies.get(_COOKIE) or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            return PlainTextResponse("an access token is required: open the URL `goex audit serve` printed",
                                     status_code=401)
        if request.query_params.get("token"):  # keep it in a cookie, and out of the address bar
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(_COOKIE, config.token, httponly=True, samesite="strict")
            return response
    origin = request.headers.get("origin")
    if request.method == "POST" and origin and origin.split("://", 1)[-1] != request.headers.get("host"):
        return PlainTextResponse("cross-site request refused", status_code=403)
    return None


async def _heads(request: Request, viewer: Viewer, poll_s: float, after: int) -> AsyncIterator[str]:
    """Server-sent events: `head` with the journal's head seq, at once and whenever it moves."""
    last = after
    while not await request.is_disconnected():
        seq = (await asyncio.to_thread(viewer.journal.verified_head))[0]
        if seq != last:
            last = seq
            yield f"event: head\ndata: {seq}\n\n"
        else:
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll_s)


def serve(config: ViewerConfig, *, host: str = "127.0.0.1", port: int = 8765) -> int:
    """Run the viewer until interrupted; prints the URL to open."""
    import socket

    import uvicorn

    app = create_app(config, bound_host=host)

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # connections wait in the backlog from now: the printed URL answers at once
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={quote(config.token)}" if config.token else "")
    print(f"goex audit viewer for {config.root}: {url}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.viewer.close()
    return 0
