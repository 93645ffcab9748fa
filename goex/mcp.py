"""goex as an MCP server (the official `mcp` SDK's low-level `Server`): stdio, or streamable HTTP
at `/mcp`.

Tools: one per action type (`fs_write`, ..., `code_run`, and the runtime's custom tools, named
and shaped as `Runtime.tools(format="mcp")` gives them), plus `goex_checkpoint`, `goex_undo`,
`goex_log` and `goex_status`. Every result carries the runtime's result as structured content
(ok, status, entry id, output or error, rules). An action a rule sends to confirmation is parked
(`awaiting_approval`); when the client supports elicitation the human is asked through it (on protocol 2026-07-28 as an
`InputRequiredResult` the client answers and retries with; on earlier ones as an
`elicitation/create` request) and the answer approves or rejects the parked entry. Otherwise it
stays parked for `goex approve`.

A connection is one goex session: stdio serves one; over HTTP each MCP session (`Mcp-Session-Id`)
gets its own, and on the stateless 2026-07-28 protocol each client (its `clientInfo` name, or
`_meta["goex/session"]`) does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from typing import TYPE_CHECKING, Any, Callable

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server

from . import __version__
from .errors import ActionError, GoexError
from .tool_schemas import action_from_call

if TYPE_CHECKING:
    from .runtime import Result, Runtime, Session

_APPROVAL = "goex_approval"
_ASK: dict[str, Any] = {"type": "object", "properties": {"approve": {
    "type": "boolean", "title": "Allow it", "description": "Run this action as shown"}}, "required": ["approve"]}

_CONTROL: list[dict[str, Any]] = [
    {"name": "goex_checkpoint", "description": "Mark a checkpoint in this session; returns its id (undo back to it "
     "with goex_undo).", "inputSchema": {"type": "object", "properties": {"label": {
         "anyOf": [{"type": "string"}, {"type": "null"}], "description": "a name for it"}},
        "required": ["label"], "additionalProperties": False}},
    {"name": "goex_undo", "description": "Undo this session's last `steps` changes, or everything after checkpoint "
     "`to` (id or label). Give one of them.", "inputSchema": {"type": "object", "properties": {
         "steps": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
         "to": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["steps", "to"], "additionalProperties": False}},
    {"name": "goex_log", "description": "This session's journal entries: id, time, type, target, decision, status.",
     "inputSchema": {"type": "object", "properties": {"limit": {"anyOf": [{"type": "integer", "minimum": 1},
                                                                          {"type": "null"}]}},
                     "required": ["limit"], "additionalProperties": False}},
    {"name": "goex_status", "description": "This session: its id, actor, entry counts by status, the budgets spent "
     "and left, and the actions awaiting approval.", "inputSchema": {
         "type": "object", "properties": {}, "required": [], "additionalProperties": False}},
]


class McpServer:
    """The MCP server of one runtime. `session` / `actor` fix the goex session id and actor of
    every connection (default: from the client's name, a new session per connection)."""

    def __init__(self, runtime: "Runtime", *, session: str | None = None, actor: str | None = None):
        self.runtime = runtime
        if runtime.approver is None:
            runtime.approver = "pending"  # confirmations are parked, then asked through the client
        self._fixed = (session, actor)
        self._sessions: dict[str, "Session"] = {}
        self._lock = threading.Lock()  # the runtime acts for one request at a time
        self._sessions_lock = threading.Lock()  # taken on the event loop: never held while acting
        self._key = secrets.token_bytes(32)  # signs the approval state a client carries between rounds
        self.server: Server[Any] = Server("goex", version=__version__, instructions=_INSTRUCTIONS,
                                          on_list_tools=self._list_tools, on_call_tool=self._call_tool)

    # -- MCP handlers ----------------------------------------------------------------------------

    async def _list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        listed = self.runtime.tools(format="mcp") + _CONTROL
        return types.ListToolsResult(tools=[types.Tool(name=t["name"], description=t["description"],
                                                       input_schema=t["inputSchema"]) for t in listed])

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> Any:
        session = self._session(ctx)
        args = dict(params.arguments or {})
        try:
            if params.request_state is not None:
                return await self._answered(ctx, session, params)
            control = {"goex_checkpoint": self._checkpoint, "goex_undo": self._undo, "goex_log": self._log,
                       "goex_status": self._status}.get(params.name)
            if control is not None:
                return _reply(await self._run(lambda: control(session, args)))
            action = action_from_call(params.name, args, self.runtime.custom_tools.schemas())
            result = await self._run(lambda: session.execute(action))
        except (ActionError, GoexError, ValueError) as exc:
            return _reply({"ok": False, "session": session.id, "status": "error", "error": str(exc)}, error=True)
        if result.status == "awaiting_approval" and result.entry_id and _can_elicit(ctx):
            return await self._ask(ctx, session, result)
        return _result(result)

    # -- sessions --------------------------------------------------------------------------------

    def _session(self, ctx: Any) -> "Session":
        fixed_id, fixed_actor = self._fixed
        info = ctx.session.client_params.client_info if ctx.session.client_params else None
        meta = (ctx.meta or {}) if isinstance(ctx.meta, dict) else {}
        client = (info.name if info else None) or _client_name(meta) or "mcp-client"
        key = _connection_key(ctx, meta, client)
        with self._sessions_lock:
            found = self._sessions.get(key)
            if found is None:
                sid = fixed_id or f"mcp-{_slug(client)}-{secrets.token_hex(4)}"
                found = self.runtime.session(actor=fixed_actor or client, session_id=sid)
                self._sessions[key] = found
            return found

    async def _run(self, work: Callable[[], Any]) -> Any:
        def locked() -> Any:
            with self._lock:
                return work()

        return await anyio.to_thread.run_sync(locked)

    # -- confirmation through elicitation --------------------------------------------------------

    async def _ask(self, ctx: Any, session: "Session", result: "Result") -> Any:
        eid = result.entry_id or ""
        message = await self._run(lambda: _question(self.runtime, eid))
        if _modern(ctx):
            request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message,
                                                                               requested_schema=_ASK))
            return types.InputRequiredResult(input_requests={_APPROVAL: request},
                                             request_state=self._sign(session.id, eid))
        answer = await ctx.session.elicit_form(message, _ASK, related_request_id=ctx.request_id)
        return await self._settle(session, eid, answer)

    async def _answered(self, ctx: Any, session: "Session", params: types.CallToolRequestParams) -> Any:
        eid = self._verify(session.id, params.request_state or "")
        answer = (params.input_responses or {}).get(_APPROVAL)
        if not isinstance(answer, types.ElicitResult):
            raise GoexError(f"the approval of {eid} came back without an answer; it stays parked for `goex approve`")
        return await self._settle(session, eid, answer)

    async def _settle(self, session: "Session", eid: str, answer: types.ElicitResult) -> Any:
        yes = answer.action == "accept" and bool((answer.content or {}).get("approve"))
        by = f"{session.actor} (MCP elicitation)"
        if yes:
            return _result(await self._run(lambda: self.runtime.approve(eid, by=by)))
        why = "declined" if answer.action != "cancel" else "cancelled"
        await self._run(lambda: self.runtime.reject(eid, by=by, reason=f"{why} through MCP elicitation"))
        return _reply({"ok": False, "entry_id": eid, "session": session.id, "status": "rejected",
                       "error": f"not run: the human {why} it"}, error=True)

    def _sign(self, session_id: str, eid: str) -> str:
        body = json.dumps([session_id, eid])
        return body + "." + hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def _verify(self, session_id: str, state: str) -> str:
        """The entry id an approval state names, if this server issued it for this session."""
        body, _, mac = state.rpartition(".")
        good = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, good):
            raise GoexError("the approval state was not issued by this server; nothing was approved")
        sid, eid = json.loads(body)
        if sid != session_id:
            raise GoexError("the approval state belongs to another session; nothing was approved")
        return str(eid)

    # -- control tools ---------------------------------------------------------------------------

    def _checkpoint(self, session: "Session", args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "session": session.id, "checkpoint": session.checkpoint(args.get("label"))}

    def _undo(self, session: "Session", args: dict[str, Any]) -> dict[str, Any]:
        steps, to = args.get("steps"), args.get("to")
        if (steps is None) == (to is None):
            raise ActionError("goex_undo takes either steps or to (a checkpoint id or label)")
        undone = session.rollback(to=str(to)) if to is not None else session.undo(int(steps or 1))
        return {"ok": True, "session": session.id, "undone": undone}

    def _log(self, session: "Session", args: dict[str, Any]) -> dict[str, Any]:
        from .cli import with_iso_times

        rows = with_iso_times(session.log())
        limit = args.get("limit")
        return {"ok": True, "session": session.id, "entries": rows[-int(limit):] if limit else rows}

    def _status(self, session: "Session", args: dict[str, Any]) -> dict[str, Any]:
        rows = session.log()
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        pending = [{"id": r["id"], "type": r["type"], "target": r["target"]} for r in rows
                   if r["status"] == "awaiting_approval"]
        return {"ok": True, "session": session.id, "actor": session.actor, "root": str(self.runtime.root),
                "policy": self.runtime.policy.name, "entries": counts, "budgets": session.budgets(),
                "awaiting_approval": pending}

    # -- serving ---------------------------------------------------------------------------------

    async def run_stdio(self) -> None:
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    def http_app(self, token: str | None = None) -> Any:
        """The ASGI app serving streamable HTTP at `/mcp`; with `token`, every request must carry
        `Authorization: Bearer <token>`."""
        app = self.server.streamable_http_app()
        return app if token is None else _BearerOnly(app, token)


class _BearerOnly:
    """ASGI middleware: 401 for an HTTP request without the bearer token."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"goex: a bearer token is required\n"})
                return
        await self.app(scope, receive, send)


def serve(runtime: "Runtime", *, http: str | None = None, token: str | None = None, session: str | None = None,
          actor: str | None = None) -> None:
    """Serve `runtime` over stdio, or over streamable HTTP at `http` ("HOST:PORT", path `/mcp`). A
    non-loopback address needs `token`."""
    server = McpServer(runtime, session=session, actor=actor)
    if http is None:
        anyio.run(server.run_stdio)
        return
    host, _, port = http.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise GoexError(f"--http takes HOST:PORT, e.g. 127.0.0.1:8765; got {http!r}")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        raise GoexError(f"serving on {host} (not loopback) needs a bearer token: --token TOKEN or $GOEX_MCP_TOKEN")
    import uvicorn

    uvicorn.run(server.http_app(token), host=host, port=int(port), log_level="warning")


# -- helpers ---------------------------------------------------------------------------------------

_INSTRUCTIONS = ("Every tool call is checked against a policy, journaled with what it takes to undo it, and "
                 "applied. A refused call says which rule refused it; undo with goex_undo.")


def _result(result: "Result") -> types.CallToolResult:
    return _reply(result.to_json(), error=not result.ok)


def _reply(data: dict[str, Any], error: bool = False) -> types.CallToolResult:
    text = json.dumps(data, ensure_ascii=False, default=str)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                structured_content=json.loads(text), is_error=error)


def _question(runtime: "Runtime", eid: str) -> str:
    detail = runtime.journal.detail(eid)
    if detail is None:
        return f"Allow entry {eid}?"
    rules = ", ".join(m.get("id", "") for m in detail.decision.get("rules", ())) or "a rule"
    preview = json.dumps(detail.preview, default=str)
    return (f"goex: {detail.type} {detail.target} needs confirmation ({rules}). "
            f"What it would do: {preview[:1500]}. Allow it?")


def _can_elicit(ctx: Any) -> bool:
    caps = ctx.session.client_capabilities
    return caps is not None and caps.elicitation is not None and (_modern(ctx) or ctx.session.can_send_request)


def _modern(ctx: Any) -> bool:
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def _client_name(meta: dict[str, Any]) -> str | None:
    info = meta.get("io.modelcontextprotocol/clientInfo")
    return info.get("name") if isinstance(info, dict) else None


def _connection_key(ctx: Any, meta: dict[str, Any], client: str) -> str:
    """What tells one connection from another: the MCP session id over stateful HTTP, the
    client's own `_meta["goex/session"]` or name on stateless HTTP, the process on stdio."""
    headers = getattr(ctx.request, "headers", None)
    sid = headers.get("mcp-session-id") if headers is not None else None
    if sid:
        return f"http:{sid}"
    if isinstance(meta.get("goex/session"), str):
        return f"meta:{meta['goex/session']}"
    return f"client:{client}" if headers is not None else "stdio"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "client"
