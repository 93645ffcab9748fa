"""The example REST service: orders, items (with ETags), an email outbox and payments, over SQLite.

goex's HTTP actions, tests and demo talk to it over loopback. Besides the resources it has test
hooks: `GET /state` and `POST /admin/reset` read and replace everything, `POST /admin/faults` makes
the next matching requests fail, an `Idempotency-Key` header replays the first response, and
`/slow`, `/big`, `/echo` and `/not-json` misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers

PREFIXES = {"orders": "ord", "items": "itm", "emails": "eml", "payments": "pay"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
MiB = 1 << 20

# --- request and response bodies ------------------------------------------------------------

Text = Annotated[str, Field(min_length=1)]
PosInt = Annotated[int, Field(gt=0)]
PosNum = Annotated[float, Field(gt=0)]


class _Body(BaseModel):
    # Strict: "3" is not an int and 1 is not a string. Unknown fields (e.g. `id` in a GET response
    # sent back as a PUT body, or a legacy `version` on an item in a reset body) are ignored.
    model_config = ConfigDict(strict=True)


class OrderIn(_Body):
    item: Text
    qty: PosInt


class OrderPatch(_Body):
    status: Text | None = None
    qty: PosInt | None = None


class Order(_Body):
    id: Text
    item: Text
    qty: PosInt
    status: Text = "open"


class ItemIn(_Body):
    name: str
    price: float
    stock: int


class ItemPatch(_Body):
    name: str | None = None
    price: float | None = None
    stock: int | None = None


class Item(_Body):
    id: Text
    name: str
    price: float
    stock: int


class EmailIn(_Body):
    to: Text
    subject: str
    body: str


class Email(_Body):
    id: Text
    to: Text
    subject: str
    body: str
    status: Text = "queued"


class PaymentIn(_Body):
    amount: PosNum
    currency: Text
    to: Text


class Payment(_Body):
    id: Text
    amount: PosNum
    currency: Text
    to: Text
    status: Text = "captured"


class State(_Body):
    orders: list[Order] = []
    items: list[Item] = []
    emails: list[Email] = []
    payments: list[Payment] = []


class Fault(_Body):
    method: Text
    path: Annotated[str, Field(pattern="^/")]
    status: Annotated[int, Field(ge=100, le=599)] = 500
    times: Annotated[int, Field(ge=1)] = 1


# --- storage --------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (kind TEXT, id TEXT, doc TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, method TEXT, path TEXT, status INTEGER, headers TEXT, body BLOB);
CREATE TABLE IF NOT EXISTS faults (method TEXT, path TEXT, status INTEGER, times INTEGER);
"""


def _id_order(doc: dict) -> list:
    """Natural order of ids: ord_2 before ord_10."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", doc["id"]))]


ITEM_CONTENT = ("name", "price", "stock")  # an item's client-controlled fields


def _etag(doc: dict) -> str:
    """A strong, content-based ETag: the same content always gets the same tag (so restoring an
    item's content restores its ETag). The quoted first 16 hex chars of sha256 over the canonical
    JSON (sorted keys, compact separators) of {name, price, stock}."""
    content = {k: doc[k] for k in ITEM_CONTENT} | {"price": float(doc["price"])}  # 1 and 1.0: one price
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:16] + '"'


class Store:
    """One SQLite file: records (a JSON document per row), counters, idempotency keys, faults.

    Thread-safe: one connection behind a lock. Run several operations atomically in `with store.tx():`.
    """

    def __init__(self, path: str | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="goex-service-") if path is None else None
        self.path = str(Path(self._tmp.name, "service.db")) if self._tmp else path
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()
            if self._tmp:
                self._tmp.cleanup()

    @contextmanager
    def tx(self) -> Iterator[Store]:
        """Hold the lock; commit on success, roll back on an exception. Do not nest."""
        with self.lock, self.db:
            yield self

    def get(self, kind: str, id: str) -> dict | None:
        row = self.db.execute("SELECT doc FROM records WHERE kind=? AND id=?", (kind, id)).fetchone()
        return json.loads(row[0]) if row else None

    def all(self, kind: str) -> list[dict]:
        rows = self.db.execute("SELECT doc FROM records WHERE kind=?", (kind,)).fetchall()
        return sorted((json.loads(r[0]) for r in rows), key=_id_order)

    def put(self, kind: str, doc: dict) -> dict:
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (kind, doc["id"], json.dumps(doc)))
        return doc

    def delete(self, kind: str, id: str) -> None:
        self.db.execute("DELETE FROM records WHERE kind=? AND id=?", (kind, id))

    def bump(self, counter: str) -> int:
        """The counter's next value (counters start at 1)."""
        sql = "INSERT INTO counters VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value=value+1 RETURNING value"
        return self.db.execute(sql, (counter,)).fetchone()[0]

    def new_id(self, kind: str) -> str:
        while self.get(kind, id := f"{PREFIXES[kind]}_{self.bump(PREFIXES[kind])}"):
            pass  # taken by a PUT with an explicit id
        return id

    def reset(self, state: dict[str, list[dict]]) -> None:
        """Replace every record; id counters continue above the highest id given."""
        self.db.execute("DELETE FROM records")
        self.db.execute("DELETE FROM counters")
        self.db.execute("DELETE FROM idempotency")
        highest = {}
        for kind, prefix in PREFIXES.items():
            nums = [int(m[1]) for d in state[kind] if (m := re.fullmatch(prefix + r"_(\d+)", d["id"]))]
            highest[prefix] = max(nums, default=0)
        self.db.executemany("INSERT INTO counters VALUES (?, ?)", highest.items())
        for kind in PREFIXES:
            for doc in state[kind]:
                self.put(kind, doc)

    def take_fault(self, method: str, path: str) -> int | None:
        """Consume one use of the first fault matching this request; its status, or None."""
        with self.tx():
            rows = self.db.execute(
                "SELECT rowid, path, status, times FROM faults WHERE method=? ORDER BY rowid", (method,)
            ).fetchall()
            for rowid, prefix, status, times in rows:
                if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                    if times > 1:
                        self.db.execute("UPDATE faults SET times=? WHERE rowid=?", (times - 1, rowid))
                    else:
                        self.db.execute("DELETE FROM faults WHERE rowid=?", (rowid,))
                    return status
        return None

    def recall(self, key: str) -> tuple | None:
        """(method, path, status, headers, body) first answered for this Idempotency-Key, or None."""
        with self.lock:
            sql = "SELECT method, path, status, headers, body FROM idempotency WHERE key=?"
            return self.db.execute(sql, (key,)).fetchone()

    def remember(self, key: str, method: str, path: str, status: int, headers: list, body: bytes) -> None:
        text = json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers])
        with self.tx():
            row = (key, method, path, status, text, body)
            self.db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?)", row)


# --- faults and idempotency (ASGI middleware) -----------------------------------------------


class _Guard:
    """Outside /admin/: an injected fault answers first and changes nothing; then, on a write with
    an Idempotency-Key, the first response for that key is replayed (5xx responses are not kept)."""

    def __init__(self, app: Any, store: Store):
        self.app, self.store, self.lock = app, store, asyncio.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/admin/"):
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if (status := self.store.take_fault(method, path)) is not None:
            return await JSONResponse({"error": "injected"}, status)(scope, receive, send)
        key = Headers(scope=scope).get("idempotency-key")
        if key is None or method not in WRITES:
            return await self.app(scope, receive, send)
        async with self.lock:  # one keyed write at a time, so a concurrent retry waits and replays
            seen = self.store.recall(key)
            if seen is None:
                return await self._answer_and_remember(key, scope, receive, send)
            if tuple(seen[:2]) != (method, path):
                detail = f"Idempotency-Key already used for {seen[0]} {seen[1]}"
                return await JSONResponse({"detail": detail}, 422)(scope, receive, send)
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(seen[3])]
            headers.append((b"idempotent-replayed", b"true"))
            await send({"type": "http.response.start", "status": seen[2], "headers": headers})
            await send({"type": "http.response.body", "body": seen[4]})

    async def _answer_and_remember(self, key: str, scope: dict, receive: Any, send: Any) -> None:
        start: dict = {}
        body: list[bytes] = []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if start and start["status"] < 500:
            headers = start.get("headers", [])
            self.store.remember(key, scope["method"], scope["path"], start["status"], headers, b"".join(body))


# --- the app --------------------------------------------------------------------------------

IfMatch = Annotated[str | None, Header(description='The current ETag (a list of ETags, or *); else 412')]


def _check_if_match(if_match: str | None, current: dict | None) -> None:
    if if_match is None:
        return
    tags = [t.strip() for t in if_match.split(",")]
    if current is None or ("*" not in tags and _etag(current) not in tags):
        raise HTTPException(412, "If-Match does not match the current ETag")


def create_app(db_path: str | None = None) -> FastAPI:
    """The service as a FastAPI app storing into the SQLite file `db_path` (None: a fresh temporary
    file). The store is `app.state.store`; close it with `app.state.store.close()` when done."""
    store = Store(db_path)
    app = FastAPI(title="goex example service", version="1.0")
    app.state.store = store
    app.add_middleware(_Guard, store=store)

    def found(kind: str, id: str) -> dict:
        if (doc := store.get(kind, id)) is None:
            raise HTTPException(404, f"{kind} {id} not found")
        return doc

    def created(response: Response, kind: str, doc: dict) -> dict:
        response.status_code = 201
        response.headers["Location"] = f"/{kind}/{doc['id']}"
        if kind == "items":
            response.headers["ETag"] = _etag(doc)
        return doc

    def add_reads(kind: str, model: type[BaseModel]) -> None:
        def list_all() -> list[dict]:
            with store.tx():
                return store.all(kind)

        def get_one(id: str, response: Response) -> dict:
            with store.tx():
                doc = found(kind, id)
            if kind == "items":
                response.headers["ETag"] = _etag(doc)
            return doc

        app.get(f"/{kind}", response_model=list[model], tags=[kind], name=f"list_{kind}")(list_all)
        app.get(f"/{kind}/{{id}}", response_model=model, tags=[kind], name=f"get_{kind}",
                responses={404: {"description": "Not found"}})(get_one)

    for kind, model in (("orders", Order), ("items", Item), ("emails", Email), ("payments", Payment)):
        add_reads(kind, model)

    # Orders: plain CRUD.
    @app.post("/orders", status_code=201, response_model=Order, tags=["orders"])
    def create_order(body: OrderIn, response: Response) -> dict:
        with store.tx():
            doc = store.put("orders", {"id": store.new_id("orders"), **body.model_dump(), "status": "open"})
        return created(response, "orders", doc)

    @app.patch("/orders/{id}", response_model=Order, tags=["orders"])
    def update_order(id: str, body: OrderPatch) -> dict:
        with store.tx():
            return store.put("orders", {**found("orders", id), **body.model_dump(exclude_none=True)})

    @app.delete("/orders/{id}", status_code=204, tags=["orders"])
    def delete_order(id: str) -> None:
        with store.tx():
            found("orders", id)
            store.delete("orders", id)

    # Items: the ETag is a hash of the content (see _etag); writes honour If-Match.
    @app.post("/items", status_code=201, response_model=Item, tags=["items"])
    def create_item(body: ItemIn, response: Response) -> dict:
        with store.tx():
            doc = store.put("items", {"id": store.new_id("items"), **body.model_dump()})
        return created(response, "items", doc)

    @app.put("/items/{id}", response_model=Item, tags=["items"],
             responses={201: {"description": "Created with this id"}, 412: {"description": "If-Match failed"}})
    def replace_item(id: str, body: ItemIn, response: Response, if_match: IfMatch = None) -> dict:
        with store.tx():
            old = store.get("items", id)
            _check_if_match(if_match, old)
            doc = store.put("items", {"id": id, **body.model_dump()})
        if old is None:
            return created(response, "items", doc)
        response.headers["ETag"] = _etag(doc)
        return doc

    @app.patch("/items/{id}", response_model=Item, tags=["items"], responses={412: {"description": "If-Match failed"}})
    def update_item(id: str, body: ItemPatch, response: Response, if_match: IfMatch = None) -> dict:
        with store.tx():
            old = found("items", id)
            _check_if_match(if_match, old)
            content = {k: old[k] for k in ITEM_CONTENT} | body.model_dump(exclude_none=True)
            doc = store.put("items", {"id": id, **content})
        response.headers["ETag"] = _etag(doc)
        return doc

    @app.delete("/items/{id}", status_code=204, tags=["items"], responses={412: {"description": "If-Match failed"}})
    def delete_item(id: str, if_match: IfMatch = None) -> None:
        with store.tx():
            _check_if_match(if_match, found("items", id))
            store.delete("items", id)

    # Emails: an outbox; deletable while queued, sending is irreversible.
    @app.post("/emails", status_code=201, response_model=Email, tags=["emails"])
    def queue_email(body: EmailIn, response: Response) -> dict:
        with store.tx():
            doc = store.put("emails", {"id": store.new_id("emails"), **body.model_dump(), "status": "queued"})
        return created(response, "emails", doc)

    @app.delete("/emails/{id}", status_code=204, tags=["emails"], responses={409: {"description": "Already sent"}})
    def delete_email(id: str) -> None:
        with store.tx():
            if found("emails", id)["status"] != "queued":
                raise HTTPException(409, f"email {id} was already sent")
            store.delete("emails", id)

    @app.post("/emails/{id}/send", response_model=Email, tags=["emails"], responses={409: {"description": "Sent"}})
    def send_email(id: str) -> dict:
        with store.tx():
            doc = found("emails", id)
            if doc["status"] != "queued":
                raise HTTPException(409, f"email {id} was already sent")
            return store.put("emails", {**doc, "status": "sent"})

    # Payments: captured at once, irreversible (no DELETE: 405).
    @app.post("/payments", status_code=201, response_model=Payment, tags=["payments"])
    def pay(body: PaymentIn, response: Response) -> dict:
        with store.tx():
            doc = {"id": store.new_id("payments"), **body.model_dump(), "status": "captured"}
            store.put("payments", doc)
        return created(response, "payments", doc)

    # Whole state and test administration.
    @app.get("/state", response_model=State, tags=["admin"])
    def state() -> dict:
        with store.tx():
            return {kind: store.all(kind) for kind in PREFIXES}

    @app.post("/admin/reset", status_code=204, tags=["admin"])
    def reset(body: State | None = None) -> None:
        """Replace the whole state (ids kept; counters continue above the highest); forget
        Idempotency-Keys. Injected faults stay (DELETE /admin/faults clears them)."""
        with store.tx():
            store.reset((body or State()).model_dump())

    @app.post("/admin/faults", status_code=204, tags=["admin"])
    def add_fault(fault: Fault) -> None:
        """The next `times` requests with this method and path (a prefix if it ends with "/")
        get `status` and {"error": "injected"}, and change nothing."""
        with store.tx():
            row = (fault.method.upper(), fault.path, fault.status, fault.times)
            store.db.execute("INSERT INTO faults VALUES (?, ?, ?, ?)", row)

    @app.delete("/admin/faults", status_code=204, tags=["admin"])
    def clear_faults() -> None:
        with store.tx():
            store.db.execute("DELETE FROM faults")

    # Misbehaving endpoints for tests.
    @app.get("/slow", tags=["test"])
    async def slow(request: Request, seconds: Annotated[float, Query(ge=0, le=600)] = 1.0) -> dict:
        """Answer after `seconds` (gives up early if the client goes away)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if await request.is_disconnected():
                break
            await asyncio.sleep(min(left, 0.05))
        return {"slept": seconds}

    @app.get("/big", tags=["test"])
    def big(
        mb: Annotated[int, Query(ge=0)] = 1, as_json: Annotated[bool, Query(alias="json")] = False
    ) -> StreamingResponse:
        """Stream `mb` MiB of bytes, or with json=1 a JSON string of that size (no Content-Length)."""

        chunk = (b"a" if as_json else b"x") * MiB

        async def chunks() -> AsyncIterator[bytes]:
            if as_json:
                yield b'"'
            for _ in range(mb):
                yield chunk
                await asyncio.sleep(0)  # let a client's disconnect be noticed and end the stream
            if as_json:
                yield b'"'

        return StreamingResponse(chunks(), media_type="application/json" if as_json else "application/octet-stream")

    async def echo(request: Request) -> dict:
        """The request as received: method, path, query, headers, body (as text)."""
        return {
            "method": request.method,
            "path": request.url.path,
            "query": dict(request.query_params),
            "headers": dict(request.headers),
            "body": (await request.body()).decode("utf-8", "replace"),
        }

    app.get("/echo", tags=["test"], name="echo_get")(echo)
    app.post("/echo", tags=["test"], name="echo_post")(echo)

    @app.get("/not-json", tags=["test"])
    def not_json() -> Response:
        """A lying server: says application/json, sends plain text."""
        return Response("this is not json", media_type="application/json")

    return app


@contextmanager
def serve(db_path: str | None = None, *, port: int = 0) -> Iterator[str]:
    """Run the service with uvicorn on 127.0.0.1 (port 0: a free one) in a background thread.

    Yields the base URL, e.g. "http://127.0.0.1:43121", once the server answers. On exit, stops
    the server, joins its thread and closes the socket and the store (the data stays in `db_path`).
    """
    app = create_app(db_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio sets NODELAY
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, args=([sock],), name="goex-service", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the example service did not start")
                time.sleep(0.005)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join()
    finally:
        sock.close()
        app.state.store.close()
