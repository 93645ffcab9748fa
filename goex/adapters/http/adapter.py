"""The HTTP adapter: requests to allowed hosts, with secrets filled in late and redacted out of
everything recorded, and compensations computed from the actual response and verified on undo.

Undo plan: `{"kind", "route", "url", "idempotency_key", "before", "ops": [{"op": "compensate"}]}`
(no ops: irreversible). The `applied` record's `after` holds the resolved compensation request and
the after-state (`etag`, `json`) that undo compares against before sending it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Iterable, ParamSpec, TypeVar

import httpx
from opentelemetry import propagate

from ...errors import ActionFailed, GoexError, OutcomeUnknown, Refused, UndoDeclined
from ..base import Adapter, Applied, Context, Damage, GetBlob, Outcome, Prepared, PutBlob
from .actions import HEADER_VALUE, HTTP_ACTIONS, SAFE_METHODS, HttpPreview, HttpRequest, parse_url
from .compensations import Compensations, expand
from .secrets import SecretRefused, SecretStore

if TYPE_CHECKING:
    from ...journal.read import EntryDetail

_HOP_HEADERS = {"content-type", "content-length", "if-match", "host", "transfer-encoding"}
_P = ParamSpec("_P")
_R = TypeVar("_R")


class HostRefused(Refused):
    """The request's host is not in the runtime's allow-list; nothing was sent."""

    rule = "http.host-not-allowed"

    def __init__(self, host: str, allowed: Iterable[str]):
        super().__init__(f"host {host!r} is not allowed; allowed: {', '.join(sorted(allowed)) or 'none'} "
                         "(add it with HttpConfig(allow_hosts=[...]) or --allow-host)")


class CompensationFailed(UndoDeclined):
    """Undo sent the compensating request and it did not succeed; the entry is `undo_failed`."""


@dataclass
class HttpConfig:
    """HTTP settings of a runtime. Hosts are `name` or `name:port`; nothing else is reachable."""

    allow_hosts: Iterable[str] = ()
    compensations: Compensations | str | os.PathLike[str] | None = None
    openapi: dict[str, Any] | str | os.PathLike[str] | None = None
    secrets: SecretStore | str | os.PathLike[str] | None = None
    idempotency_header: str = "Idempotency-Key"
    max_response_bytes: int = 1 << 20
    hosts: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        self.hosts = frozenset(h.lower() for h in self.allow_hosts)
        if not isinstance(self.secrets, SecretStore):
            self.secrets = SecretStore.default(self.secrets)
        if not isinstance(self.compensations, Compensations):
            self.compensations = Compensations.from_file(self.compensations) if self.compensations else Compensations()
        if self.openapi is not None:
            self.compensations = Compensations.from_openapi(self.openapi).merged(self.compensations)


_Method = Callable[Concatenate["HttpAdapter", _P], _R]  # a method of HttpAdapter


def _scrubbed(failure: type[GoexError]) -> Callable[[_Method[_P, _R]], _Method[_P, _R]]:
    """Every error leaving the decorated method has each secret value redacted from its text:
    goex's own errors in place, anything else (a UnicodeEncodeError quoting a filled-in header,
    say) as `failure`, naming only the type and the redacted message."""
    def wrap(method: _Method[_P, _R]) -> _Method[_P, _R]:
        @functools.wraps(method)
        def scrubbed(self: "HttpAdapter", *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(self, *args, **kwargs)
            except GoexError as exc:
                self._redact_error(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - its text may hold a value: never pass it on raw
                raise failure(f"http.request: {type(exc).__name__}: {self.secrets.redact(str(exc))}") from None
        return scrubbed
    return wrap


_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpAdapter(Adapter):
    prefix = "http"
    actions = HTTP_ACTIONS
    preview = HttpPreview
    budgets = ("http_calls", "irreversible_calls")
    span_kind = "client"

    @classmethod
    def create(cls, context: Context) -> "HttpAdapter":
        return cls(context.settings.get("http"))

    def __init__(self, config: HttpConfig | None = None):
        self.config = config or HttpConfig()
        secrets, routes = self.config.secrets, self.config.compensations
        if not isinstance(secrets, SecretStore) or not isinstance(routes, Compensations):
            raise TypeError("HttpConfig.secrets and .compensations were replaced after it was made; "
                            "make a new HttpConfig instead")
        self.secrets = secrets
        self.routes = routes
        self.client = httpx.Client(follow_redirects=False, trust_env=False)
        # ETags a compensation produced, mapped to the ETag of the state it restored (per URL),
        # so undoing an earlier entry on the same resource does not mistake goex's own restore
        # for someone else's change. Kept for the life of the runtime.
        self._restored: dict[str, dict[str, str]] = {}
        self._seen_etag: dict[str, str] = {}  # the ETag the last conflict check saw, for If-Match on undo

    def close(self) -> None:
        self.client.close()

    # -- protocol ------------------------------------------------------------------------------

    @_scrubbed(ActionFailed)
    def prepare(self, action: HttpRequest) -> Prepared:
        url = parse_url(action.url)
        host, names = self._check_destination(action)
        self._check_filled_headers(action.headers)
        safe = action.method in SAFE_METHODS
        matched = None if safe else self.routes.match(action.method, _raw_path(url))
        route, params = matched if matched else (None, {})
        kind = route.kind if route else ("read" if safe else "irreversible")
        collection = action.method == "DELETE" and any(
            r.kind == "create" and r.template.rstrip("/") == _raw_path(url).rstrip("/") for r in self.routes.routes)
        preview = {"method": action.method, "host": host, "path": _raw_path(url), "secrets": names,
                   "collection": collection,
                   "route": f"{route.method} {route.template}" if route else None,
                   "reversible": kind != "irreversible", "kind": kind}
        state = {"route": route, "params": params, "kind": kind}
        return Prepared(action, action.targets(), preview, not safe, state)

    @_scrubbed(ActionFailed)
    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        action: HttpRequest = prepared.action
        state = prepared.state
        key = next((v for k, v in action.headers.items() if k.lower() == self.config.idempotency_header.lower()),
                   None) or f"goex-{uuid.uuid4().hex}"
        state["key"] = key
        plan: dict[str, Any] = {"kind": state["kind"], "url": self.secrets.redact(action.url), "idempotency_key": key,
                                "route": prepared.preview["route"], "params": state["params"],
                                "undo": state["route"].undo if state["route"] else None,
                                "idempotent": bool(state["route"] and state["route"].idempotent)}
        if state["kind"] in ("update", "delete"):
            before = self._snapshot(action.url, action.headers)
            if before["status"] != 404 and not 200 <= before["status"] < 300:
                raise ActionFailed(f"cannot read {action.url} before changing it (status {before['status']}), so "
                                   "it could not be undone; nothing was sent")
            plan["before"] = state["before"] = before
            if before["status"] == 404:  # a PUT that creates is undone by a DELETE; a DELETE of nothing is a no-op
                plan["kind"] = "create" if state["kind"] == "update" else "none"
                plan["undo"] = f"DELETE {_raw_path(parse_url(action.url))}" if plan["kind"] == "create" else None
        if plan["kind"] in ("create", "update", "delete"):
            plan["ops"] = [{"op": "compensate"}]
        state["plan"] = plan
        return plan

    @_scrubbed(ActionFailed)
    def apply(self, prepared: Prepared) -> Applied:
        action: HttpRequest = prepared.action
        if not prepared.effect:
            response = self._send_action(action, key=None)
            return Applied(self._output(response), {})
        response = self._send_action(action, key=prepared.state["key"])
        return Applied(self._output(response), self._after(prepared.state["plan"], action, response))

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        if not after.get("effect") or not after.get("check"):
            return []
        url = after["check"]
        if after.get("unknown"):
            return [(url, f"{after['unknown']}, so a change since cannot be ruled out")]
        try:
            now = self._snapshot(url, after.get("headers", {}))
        except GoexError as exc:
            return [(url, f"cannot be checked ({exc})")]
        if plan["kind"] == "delete":
            return [] if now["status"] == 404 else [(url, f"was re-created since (status {now['status']})")]
        if now["status"] == 404:
            return [(url, "was deleted since")]
        if now.get("etag"):
            self._seen_etag[_key(url)] = now["etag"]
        if after.get("etag") and now.get("etag"):
            etag, aliases, seen = now["etag"], self._restored.get(_key(url), {}), set()
            while etag != after["etag"] and etag in aliases and etag not in seen:
                seen.add(etag)
                etag = aliases[etag]
            same = after["etag"] == etag
        elif after.get("json") is not None or now.get("json") is not None:
            same = after.get("json") == now.get("json")
        else:
            same = after.get("body_sha") == now.get("body_sha")
        return [] if same else [(url, "changed since the action "
                                      f"(ETag {after.get('etag')} -> {now.get('etag')})" if now.get("etag") else
                                 "changed since the action (its representation differs)")]

    @_scrubbed(CompensationFailed)
    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> dict[str, Any]:
        if after is None or not after.get("effect"):
            return {}
        comp = after.get("compensation")
        if comp is None:
            raise CompensationFailed(f"no compensation could be computed: {after.get('compensation_error')}")
        try:
            self._check_destination(HttpRequest.model_validate(
                {"method": comp["method"], "url": comp["url"], "headers": comp["headers"], "json": comp.get("json")}))
        except (GoexError, ValueError) as exc:
            raise CompensationFailed(f"compensation {comp['method']} {comp['url']} refused: {exc}") from None
        headers = dict(comp["headers"])
        # a fresh key per attempt: a retried undo must not get the server's stored answer to the failed one
        headers[self.config.idempotency_header] = f"{plan['idempotency_key']}-undo-{uuid.uuid4().hex[:8]}"
        seen = self._seen_etag.pop(_key(comp["url"]), None)
        if plan["kind"] == "update" and seen and not force:
            headers["If-Match"] = seen  # fails (412) if the resource changes between the check and now
        try:
            response = self._send(comp["method"], comp["url"], headers, comp.get("json"), None, 30.0)
        except (ActionFailed, OutcomeUnknown) as exc:
            raise CompensationFailed(f"compensation {comp['method']} {comp['url']} failed: {exc}") from None
        body = self.secrets.redact(response.text[:300]) if response.text else ""
        if response.status_code == 412:
            raise CompensationFailed(f"compensation {comp['method']} {comp['url']}: the resource changed since "
                                     "(412 Precondition Failed)", conflict=True, forceable=True)
        if response.status_code >= 400 and not (comp["method"] == "DELETE" and response.status_code == 404):
            raise CompensationFailed(f"compensation {comp['method']} {comp['url']} answered "
                                     f"{response.status_code}: {body}")
        new_etag, old_etag = response.headers.get("etag"), (plan.get("before") or {}).get("etag")
        if new_etag and old_etag and new_etag != old_etag:
            self._restored.setdefault(_key(comp["url"]), {})[new_etag] = old_etag
        return {"compensation_status": response.status_code}

    @_scrubbed(ActionFailed)
    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        """A request journaled but with no recorded response: replay it with the same idempotency
        key when the route allows, else leave it for a human."""
        if not plan.get("idempotent"):
            return "review", {}, ("the request may have reached the server and the route does not take "
                                  "idempotency keys: check the service by hand, then undo or keep it")
        try:
            request = HttpRequest.model_validate(action)
            self._check_destination(request)  # this runtime's hosts and secret bindings, not the old one's
            response = self._send_action(request, key=plan["idempotency_key"])
        except (GoexError, ValueError) as exc:
            return "review", {}, f"not replayed ({self.secrets.redact(str(exc))}); check the service by hand"
        return "applied", self._after(plan, request, response), ""

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        return {"http_calls": 1, **({"irreversible_calls": 1} if preview.get("reversible") is False else {})}

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        return Damage(resources=1) if preview.get("method") == "DELETE" else Damage()

    def redact(self, text: str) -> str:
        return self.secrets.redact(text)

    def redact_action(self, action: dict[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = self.secrets.redact_json(action)
        return redacted

    def span_attributes(self, action: HttpRequest, output: Any) -> dict[str, Any]:
        url = parse_url(action.url)
        port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
        attrs: dict[str, Any] = {"http.request.method": action.method, "url.full": self.redact(action.url),
                                 "server.address": url.host, "server.port": port}
        if isinstance(output, dict) and isinstance(output.get("status"), int):
            attrs["http.response.status_code"] = output["status"]
        return attrs

    def describe(self, entry: "EntryDetail") -> str:
        if entry.error:
            return entry.error
        action, after = entry.action(), entry.after or {}
        comp = after.get("compensation")
        undo = f"; undo: {comp['method']} {comp['url']}" if comp else ""
        status = after.get("status")
        return f"{action['method']} {action['url']}" + (f" -> {status}" if status else "") + undo

    def summarize(self, prepared: Prepared) -> str:
        action: HttpRequest = prepared.action
        body = json.dumps(action.json_body)[:1000] if action.json_body is not None else (action.body or "")[:1000]
        kind = prepared.preview["kind"]
        note = "it cannot be undone" if kind == "irreversible" else f"undo: {kind} compensation"
        return f"{action.method} {action.url}\n{body}\n({note})".replace("\n\n", "\n")

    # -- helpers -------------------------------------------------------------------------------

    def _check_destination(self, action: HttpRequest) -> tuple[str, list[str]]:
        """Refuse unless the host is allowed and every secret may go there; returns (host, secret names)."""
        url = parse_url(action.url)
        host = (url.host or "").lower()
        authority = action.url.split("//", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if "{{" in authority:
            names = self.secrets.names_in([authority]) or ["?"]
            raise SecretRefused(names[0], "placeholders may not stand in the user or host part of a URL; "
                                          "send credentials in a header")
        if host not in self.config.hosts and f"{host}:{url.port}" not in self.config.hosts:
            raise HostRefused(host, self.config.hosts)
        texts = [action.url, *action.headers, *action.headers.values(), action.body or "",
                 *_json_texts(action.json_body)]
        names = self.secrets.names_in(texts)
        pasted = self.secrets.literals_in(texts)  # a value copied into the request is the secret too
        self.secrets.check(names, host, written_out=pasted)
        return host, sorted(set(names) | set(pasted))

    def _check_filled_headers(self, headers: dict[str, str]) -> None:
        """A secret's value must be sendable where its placeholder stands; say so by name, before
        anything is journaled or sent, rather than fail later with the value in the error."""
        for name, value in headers.items():
            if "{{" in value and not HEADER_VALUE.fullmatch(self.secrets.fill(value)):
                secrets = ", ".join(self.secrets.names_in([value]))
                raise ActionFailed(f"http.request: header {name!r} cannot carry the value of secret {secrets} (an HTTP "
                                   "header holds printable ASCII only, no line breaks); nothing was sent")

    def _redact_error(self, exc: GoexError) -> None:
        """Put every secret value in `exc`'s text back to its placeholder, in place."""
        exc.args = tuple(self.secrets.redact(a) if isinstance(a, str) else a for a in exc.args)
        if isinstance(exc, Refused):
            exc.reason = self.secrets.redact(exc.reason)

    def _send_action(self, action: HttpRequest, key: str | None) -> httpx.Response:
        headers = dict(action.headers)
        if key is not None and not any(k.lower() == self.config.idempotency_header.lower() for k in headers):
            headers[self.config.idempotency_header] = key
        return self._send(action.method, action.url, headers, action.json_body, action.body, action.timeout_s)

    def _send(self, method: str, url: str, headers: dict[str, str], json_body: Any, body: str | None,
              timeout_s: float) -> httpx.Response:
        try:
            request = self._build(method, url, headers, json_body, body, timeout_s)
        except GoexError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a UnicodeEncodeError, whose text quotes the filled value
            raise ActionFailed(f"{method} {url}: the request cannot be encoded ({type(exc).__name__}: "
                               f"{self.secrets.redact(str(exc))}); nothing was sent") from None
        try:
            response = self.client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            why = self.secrets.redact(str(exc)) or type(exc).__name__
            raise ActionFailed(f"{method} {url}: cannot connect ({why}); "
                               "nothing was sent") from None
        except httpx.TimeoutException:
            raise self._unknown(method, url, f"no response within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise self._unknown(method, url, self.secrets.redact(str(exc)) or type(exc).__name__) from None
        limit = self.config.max_response_bytes
        try:
            # read past the limit by the longest form of a secret, so that a value cut at the limit is
            # redacted whole: nothing of it is kept (every reader of the response sees it redacted)
            raw, truncated = _bounded_body(response, limit, self.secrets.margin())
            response._content = self.secrets.redact_prefix(raw, limit) if truncated else self.secrets.redact_bytes(raw)
            response.extensions["goex_truncated"] = truncated
        except httpx.TimeoutException:
            raise self._unknown(method, url, f"the response did not finish within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise self._unknown(method, url, f"the response broke off ({type(exc).__name__})") from None
        finally:
            response.close()
        return response

    def _build(self, method: str, url: str, headers: dict[str, str], json_body: Any, body: str | None,
               timeout_s: float) -> httpx.Request:
        filled_headers = {k: self.secrets.fill(v) for k, v in headers.items()}
        propagate.inject(filled_headers)  # `traceparent` of the action's (or undo's) span, when one is recording
        for name, value in filled_headers.items():
            if not HEADER_VALUE.fullmatch(value):
                raise ActionFailed(f"{method} {url}: header {name!r} cannot carry the value filled into it (an HTTP "
                                   "header holds printable ASCII only, no line breaks); nothing was sent")
        if not any(k.lower() == "accept-encoding" for k in filled_headers):
            filled_headers["Accept-Encoding"] = "identity"  # a compressed response could inflate past any bound
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            kwargs["json"] = self.secrets.fill_json(json_body)
        elif body is not None:
            kwargs["content"] = self.secrets.fill(body).encode("utf-8")
        filled = self.secrets.fill_url(url)
        # a URL no secret is filled into is parsed once (a filled one is not kept: it holds the value)
        return self.client.build_request(method, parse_url(url) if filled == url else filled,
                                         headers=filled_headers, timeout=timeout_s, **kwargs)

    def _unknown(self, method: str, url: str, why: str) -> GoexError:
        if method in SAFE_METHODS:
            return ActionFailed(f"{method} {url}: {why}")
        return OutcomeUnknown(f"{method} {url}: {why}; the server may have acted")

    def _snapshot(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        """GET the resource now: status, ETag and JSON (secrets redacted)."""
        clean = {k: v for k, v in headers.items()
                 if k.lower() not in _HOP_HEADERS and k.lower() != self.config.idempotency_header.lower()}
        try:
            response = self._send("GET", url, clean, None, None, 30.0)
        except (ActionFailed, OutcomeUnknown) as exc:
            raise ActionFailed(f"cannot read {url} before/after the request: {exc}") from None
        return {"status": response.status_code, "etag": response.headers.get("etag"),
                "json": self.secrets.redact_json(_json_or_none(response)),
                "body_sha": hashlib.sha256(response.content).hexdigest()}

    def _after(self, plan: dict[str, Any], action: HttpRequest, response: httpx.Response) -> dict[str, Any]:
        """The after-state and the compensation, computed from the response actually received.
        Never raises: the request has happened, and the journal must say so."""
        status = response.status_code
        if status >= 400 or plan["kind"] in ("irreversible", "none", "read"):
            return {"effect": 200 <= status < 400, "status": status}
        url = parse_url(action.url)
        auth_headers = {k: self.secrets.redact(v) for k, v in action.headers.items()  # filled again when sent
                        if k.lower() not in _HOP_HEADERS and k.lower() != self.config.idempotency_header.lower()}
        after: dict[str, Any] = {"effect": True, "status": status, "headers": auth_headers, "compensation": None}
        if status >= 300:
            after["compensation_error"] = f"the server answered {status} (a redirect): what it did is unknown"
            after["check"] = None
            return after
        doc = {"json": _json_or_none(response), "headers": dict(response.headers)}
        try:
            method, target, body = self._compensation(plan, doc, action)
            after["compensation"] = {"method": method, "url": self.secrets.redact(str(url.join(target))),
                                     "headers": auth_headers, "json": body}
        except KeyError as exc:
            after["compensation_error"] = str(exc).strip("'\"")
        created = (after["compensation"] or {}).get("url")
        check = self.secrets.redact(action.url) if plan["kind"] != "create" else created
        after["check"] = check
        if plan["kind"] == "delete" or not check:
            return after
        # The response is the after-state when it carries the representation (ETag, or a create's
        # JSON body); otherwise read the resource once more.
        if doc["json"] is not None and (response.headers.get("etag") or plan["kind"] == "create"):
            after.update(etag=response.headers.get("etag"), json=self.secrets.redact_json(doc["json"]))
            return after
        try:
            now = self._snapshot(check, auth_headers)
            after.update(etag=now["etag"], json=now["json"], body_sha=now["body_sha"])
        except GoexError:
            after["unknown"] = "the resource could not be read after the request"
        return after

    def _compensation(self, plan: dict[str, Any], doc: dict[str, Any], action: HttpRequest) -> tuple[str, str, Any]:
        kind, params, before = plan["kind"], plan.get("params") or {}, plan.get("before")
        url = parse_url(action.url)
        path, query = _raw_path(url), url.query.decode("ascii")
        if kind == "create":
            if plan.get("undo"):
                method, target = expand(plan["undo"], params, doc)
            elif doc["headers"].get("location"):
                method, target = "DELETE", doc["headers"]["location"]
            else:
                method, target = expand(f"DELETE {path.rstrip('/')}/{{response.json.id}}", params, doc)
            return method, target, None
        method, target = expand(plan.get("undo") or f"PUT {path}", params, doc,
                                {"json": before.get("json") if before else None, "headers": {}})
        body = before.get("json") if before else None
        if body is None:
            raise KeyError("the before-image of the resource could not be read as JSON")
        if query and "?" not in target:  # keep query credentials and selectors of the original request
            target += "?" + query
        return method, target, body

    def _output(self, response: httpx.Response) -> dict[str, Any]:
        truncated = bool(response.extensions.get("goex_truncated"))
        raw = response.content
        out: dict[str, Any] = {"status": response.status_code,
                               "headers": self.secrets.redact_json(dict(response.headers))}
        ctype = response.headers.get("content-type", "")
        if not truncated and "json" in ctype:
            try:
                out["body"] = self.secrets.redact_json(json.loads(raw)) if raw else None
                return out
            except ValueError as exc:
                out["json_error"] = f"the server said JSON but sent something else ({exc})"
        if ctype.startswith("text/") or "json" in ctype or "xml" in ctype or not ctype:
            out["body"] = self.secrets.redact(raw.decode(response.encoding or "utf-8", errors="replace"))
        else:
            out["body"] = base64.b64encode(self.secrets.redact_bytes(raw)).decode("ascii")
            out["body_encoding"] = "base64"
        if truncated:
            out["truncated"] = True
            out["body_note"] = f"[truncated: only the first {self.config.max_response_bytes:,} bytes were kept]"
        return out


def _bounded_body(response: httpx.Response, limit: int, margin: int) -> tuple[bytes, bool]:
    """The decoded body, read to at most `limit + margin` bytes, and whether it is longer than
    `limit`; compressed input is inflated in bounded steps, so a small compressed response cannot
    balloon in memory."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflate = (zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip")
               else zlib.decompressobj() if encoding == "deflate" else None)
    most = limit + margin
    out = bytearray()
    for chunk in response.iter_raw():
        if inflate is not None:
            try:
                out += inflate.decompress(chunk, most + 1 - len(out))
            except zlib.error:
                raise httpx.DecodingError("the compressed body is corrupt") from None
            if len(out) > most or inflate.unconsumed_tail:
                return bytes(out[:most]), True
        else:
            out += chunk
            if len(out) > most:
                return bytes(out[:most]), True
    return bytes(out), len(out) > limit


def _json_texts(obj: Any) -> list[str]:
    """Every string (keys included) and number of a JSON body, as text."""
    out: list[str] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                out.append(str(key))
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(str(item))
    return out


def _raw_path(url: httpx.URL) -> str:
    """The path as sent, percent-escapes kept (an id holding %2F or %3F stays one segment)."""
    return url.raw_path.decode("ascii").split("?", 1)[0]


def _key(url: str) -> str:
    return str(httpx.URL(url))


def _json_or_none(response: httpx.Response) -> Any:
    if response.extensions.get("goex_truncated"):
        return None
    try:
        return json.loads(response.content) if response.content else None
    except ValueError:
        return None
