"""The example REST service (goex.service), exercised over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from goex.service import serve

MiB = 1 << 20


def content_etag(name, price, stock):
    """The ETag the service gives an item with this content."""
    content = {"name": name, "price": float(price), "stock": stock}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:16] + '"'


@pytest.fixture(scope="module")
def base_url():
    with serve() as url:
        yield url


@pytest.fixture
def client(base_url):
    """A client on a shared server, reset to an empty state with no faults."""
    with httpx.Client(base_url=base_url, timeout=10) as c:
        assert c.post("/admin/reset").status_code == 204
        assert c.delete("/admin/faults").status_code == 204
        yield c


def test_serve_starts_fast_and_shuts_down_cleanly():
    threads = set(threading.enumerate())
    started = time.monotonic()
    with serve() as url:
        assert time.monotonic() - started < 1
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/state").status_code == 200
        port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 2  # the server's worker threads stop along with its event loop
    while set(threading.enumerate()) != threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) == threads
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", port))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/state")


def test_db_path_keeps_state_across_restarts(tmp_path):
    db = str(tmp_path / "service.db")
    with serve(db) as url:
        assert httpx.post(f"{url}/orders", json={"item": "book", "qty": 1}).json()["id"] == "ord_1"
    with serve(db) as url:
        assert [o["id"] for o in httpx.get(f"{url}/orders").json()] == ["ord_1"]
        assert httpx.post(f"{url}/orders", json={"item": "pen", "qty": 2}).json()["id"] == "ord_2"


def test_python_dash_m_runs_it_in_the_foreground(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "fg.db"
    cmd = [sys.executable, "-m", "goex.service", "--port", str(port), "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/orders", json={"item": "x", "qty": 1})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert r.status_code == 201
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err
    with serve(str(db)) as url:  # the state was kept in --db
        assert [o["id"] for o in httpx.get(f"{url}/orders").json()] == ["ord_1"]


def test_orders_crud(client):
    r = client.post("/orders", json={"item": "book", "qty": 2})
    assert r.status_code == 201
    assert r.json() == {"id": "ord_1", "item": "book", "qty": 2, "status": "open"}
    assert r.headers["location"] == "/orders/ord_1"
    assert client.get("/orders/ord_1").json() == r.json()
    assert client.post("/orders", json={"item": "pen", "qty": 1}).json()["id"] == "ord_2"
    assert [o["id"] for o in client.get("/orders").json()] == ["ord_1", "ord_2"]

    r = client.patch("/orders/ord_1", json={"status": "shipped"})
    assert r.status_code == 200 and r.json() == {"id": "ord_1", "item": "book", "qty": 2, "status": "shipped"}
    assert client.patch("/orders/ord_1", json={"qty": 5}).json()["qty"] == 5
    assert client.patch("/orders/ord_9", json={"qty": 5}).status_code == 404

    assert client.delete("/orders/ord_1").status_code == 204
    assert client.get("/orders/ord_1").status_code == 404
    assert client.delete("/orders/ord_1").status_code == 404
    assert client.post("/orders", json={"item": "cup", "qty": 1}).json()["id"] == "ord_3"  # ids are never reused


@pytest.mark.parametrize(
    "body",
    [{"item": "x", "qty": 0}, {"item": "x", "qty": "3"}, {"item": "x", "qty": 1.5}, {"qty": 1}, {"item": "", "qty": 1}],
)
def test_invalid_bodies_are_422(client, body):
    assert client.post("/orders", json=body).status_code == 422
    assert client.get("/orders").json() == []


def test_validation_of_other_resources(client):
    assert client.post("/items", json={"name": "a", "price": "1", "stock": 1}).status_code == 422
    assert client.post("/emails", json={"to": "a@x", "subject": "s"}).status_code == 422
    assert client.post("/payments", json={"amount": 0, "currency": "EUR", "to": "bob"}).status_code == 422
    assert client.patch("/orders/ord_1", json={"qty": -1}).status_code == 422


def test_items_etags_and_if_match(client):
    r = client.post("/items", json={"name": "lamp", "price": 9.5, "stock": 3})
    assert r.status_code == 201 and r.headers["location"] == "/items/itm_1"
    item = r.json()
    assert item == {"id": "itm_1", "name": "lamp", "price": 9.5, "stock": 3}  # no server-managed version
    etag = r.headers["etag"]
    assert etag == content_etag("lamp", 9.5, 3) and len(etag) == 18 and not etag.startswith("W/")
    assert client.get("/items/itm_1").headers["etag"] == etag
    assert client.get("/items/itm_2").status_code == 404

    # A stale or wrong If-Match changes nothing.
    for method, kwargs in [("PUT", {"json": {"name": "x", "price": 1, "stock": 1}}), ("PATCH", {"json": {"stock": 0}}),
                           ("DELETE", {})]:
        r = client.request(method, "/items/itm_1", headers={"If-Match": '"999"'}, **kwargs)
        assert r.status_code == 412, method
    assert client.get("/items/itm_1").json() == item

    r = client.patch("/items/itm_1", json={"stock": 2}, headers={"If-Match": etag})
    assert r.status_code == 200 and r.json() == {**item, "stock": 2}
    assert r.headers["etag"] == content_etag("lamp", 9.5, 2) != etag  # content changed: so did the ETag
    assert client.get("/items/itm_1").headers["etag"] == r.headers["etag"]
    assert client.patch("/items/itm_1", json={"stock": 1}, headers={"If-Match": etag}).status_code == 412  # stale
    assert client.get("/items/itm_1").json()["stock"] == 2

    # If-Match takes a list; one current ETag in it is enough.
    current = r.headers["etag"]
    r = client.patch("/items/itm_1", json={"stock": 2}, headers={"If-Match": f'{etag}, {current}'})
    assert r.status_code == 200 and r.headers["etag"] == current  # same content: same ETag
    assert client.patch("/items/itm_1", json={"stock": 2}, headers={"If-Match": f"W/{current}"}).status_code == 412

    # PUT replaces; the body of a GET (with id, and a legacy version) is accepted as is.
    current = client.get("/items/itm_1")
    body = {**current.json(), "name": "desk lamp", "version": 3}
    r = client.put("/items/itm_1", json=body, headers={"If-Match": current.headers["etag"]})
    assert r.status_code == 200 and r.json() == {"id": "itm_1", "name": "desk lamp", "price": 9.5, "stock": 2}
    assert r.headers["etag"] == content_etag("desk lamp", 9.5, 2)
    assert client.put("/items/itm_1", json={"name": "no price"}).status_code == 422

    # If-Match: * matches any existing item; DELETE with the current ETag.
    assert client.patch("/items/itm_1", json={"price": 11}, headers={"If-Match": "*"}).status_code == 200
    last = client.get("/items/itm_1").headers["etag"]
    assert client.delete("/items/itm_1", headers={"If-Match": last}).status_code == 204
    assert client.get("/items/itm_1").status_code == 404
    assert client.delete("/items/itm_1").status_code == 404


def test_put_creates_with_the_given_id_and_etags_follow_content(client):
    r = client.put("/items/itm_7", json={"name": "a", "price": 1, "stock": 1})
    assert r.status_code == 201 and r.headers["location"] == "/items/itm_7" and r.json()["id"] == "itm_7"
    first = r.headers["etag"]
    assert first == content_etag("a", 1, 1) == content_etag("a", 1.0, 1)  # 1 and 1.0 are one price
    r = client.put("/items/itm_8", json={"name": "b", "price": 1, "stock": 1}, headers={"If-Match": "*"})
    assert r.status_code == 412
    assert client.get("/items/itm_8").status_code == 404
    r = client.put("/items/itm_7", json={"name": "a", "price": 1, "stock": 1}, headers={"If-Match": '"x"'})
    assert r.status_code == 412

    # Re-created with the same content: the same ETag again, and the old one matches.
    assert client.delete("/items/itm_7", headers={"If-Match": first}).status_code == 204
    r = client.put("/items/itm_7", json={"name": "a", "price": 1.0, "stock": 1})
    assert r.status_code == 201 and r.headers["etag"] == first
    assert client.get("/items/itm_7").headers["etag"] == first

    # Different content, different ETags; equal content in another item, the same ETag.
    etags = {first}
    for n, (name, price, stock) in enumerate([("b", 1, 1), ("a", 2, 1), ("a", 1, 2), ("A", 1, 1), ("a", 1, 1)]):
        r = client.post("/items", json={"name": name, "price": price, "stock": stock})
        assert r.status_code == 201 and r.headers["etag"] == content_etag(name, price, stock)
        assert (r.headers["etag"] in etags) == (n == 4)
        etags.add(r.headers["etag"])
    assert len(etags) == 5
    for _ in range(2):  # POST allocates ids around the one taken by PUT
        client.post("/items", json={"name": "c", "price": 2, "stock": 0})
    assert [i["id"] for i in client.get("/items").json()] == [f"itm_{n}" for n in range(1, 9)]
    assert all(set(i) == {"id", "name", "price", "stock"} for i in client.get("/items").json())


def test_etag_returns_when_content_returns_and_state_is_restored_exactly(client):
    client.post("/items", json={"name": "lamp", "price": 9.5, "stock": 3})
    client.post("/items", json={"name": "desk", "price": 120, "stock": 1})
    client.post("/orders", json={"item": "lamp", "qty": 1})
    before_state = client.get("/state").content
    before = client.get("/items/itm_1")
    etag = before.headers["etag"]

    # Change it twice (a PATCH then a PUT), each with the then-current ETag.
    r = client.patch("/items/itm_1", json={"price": 8.0, "stock": 0}, headers={"If-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    body = {"name": "old lamp", "price": 8.0, "stock": 0}
    r = client.put("/items/itm_1", json=body, headers={"If-Match": r.headers["etag"]})
    assert r.status_code == 200 and r.headers["etag"] != etag
    changed = r.headers["etag"]
    assert client.get("/state").content != before_state
    assert client.patch("/items/itm_1", json={"stock": 9}, headers={"If-Match": etag}).status_code == 412  # stale

    # Undo through the API: put the old content back. The ETag and /state are exactly as before.
    r = client.put("/items/itm_1", json=before.json(), headers={"If-Match": changed})
    assert r.status_code == 200 and r.headers["etag"] == etag and r.json() == before.json()
    assert client.get("/items/itm_1").headers["etag"] == etag
    assert client.get("/state").content == before_state
    assert client.patch("/items/itm_1", json={"stock": 9}, headers={"If-Match": changed}).status_code == 412

    # Undo a delete by re-creating with the id: the same again.
    assert client.delete("/items/itm_2", headers={"If-Match": "*"}).status_code == 204
    desk = {"name": "desk", "price": 120, "stock": 1}
    r = client.put("/items/itm_2", json=desk)
    assert r.status_code == 201 and r.headers["etag"] == content_etag(**desk)
    assert client.get("/state").content == before_state


def test_emails_outbox(client):
    email = {"to": "ann@example.com", "subject": "hi", "body": "hello"}
    r = client.post("/emails", json=email)
    assert r.status_code == 201 and r.json() == {"id": "eml_1", **email, "status": "queued"}
    assert r.headers["location"] == "/emails/eml_1"
    assert client.post("/emails", json=email).json()["id"] == "eml_2"
    assert client.delete("/emails/eml_2").status_code == 204
    assert client.get("/emails/eml_2").status_code == 404

    r = client.post("/emails/eml_1/send")
    assert r.status_code == 200 and r.json() == {"id": "eml_1", **email, "status": "sent"}
    assert client.delete("/emails/eml_1").status_code == 409
    assert client.post("/emails/eml_1/send").status_code == 409
    assert client.get("/emails").json() == [{"id": "eml_1", **email, "status": "sent"}]
    assert client.post("/emails/eml_9/send").status_code == 404


def test_payments_are_irreversible(client):
    r = client.post("/payments", json={"amount": 12.5, "currency": "EUR", "to": "bob"})
    assert r.status_code == 201
    assert r.json() == {"id": "pay_1", "amount": 12.5, "currency": "EUR", "to": "bob", "status": "captured"}
    assert r.headers["location"] == "/payments/pay_1"
    assert client.delete("/payments/pay_1").status_code == 405
    assert client.get("/payments/pay_1").json() == r.json()
    assert client.get("/payments").json() == [r.json()]


def test_state_and_reset_round_trip(client):
    for n in range(11):
        client.post("/orders", json={"item": f"i{n}", "qty": n + 1})
    client.post("/items", json={"name": "a", "price": 1, "stock": 1})
    client.post("/emails", json={"to": "a@x", "subject": "s", "body": "b"})
    client.post("/emails/eml_1/send")
    client.post("/payments", json={"amount": 1, "currency": "USD", "to": "c"})
    snapshot = client.get("/state").json()
    assert set(snapshot) == {"orders", "items", "emails", "payments"}
    assert [o["id"] for o in snapshot["orders"]] == [f"ord_{n}" for n in range(1, 12)]  # sorted by id, naturally

    assert client.post("/admin/reset").status_code == 204
    assert client.get("/state").json() == {"orders": [], "items": [], "emails": [], "payments": []}
    assert client.post("/orders", json={"item": "x", "qty": 1}).json()["id"] == "ord_1"

    assert client.post("/admin/reset", json=snapshot).status_code == 204
    assert client.get("/state").json() == snapshot
    assert client.post("/orders", json={"item": "x", "qty": 1}).json()["id"] == "ord_12"

    # Missing lists are empty; ids kept as given; counters continue above the highest.
    # A `version` on an item (from an older snapshot) is ignored.
    seed = {"items": [{"id": "itm_41", "name": "a", "price": 1, "stock": 1, "version": 5},
                      {"id": "itm_3", "name": "b", "price": 2, "stock": 2}]}
    assert client.post("/admin/reset", json=seed).status_code == 204
    state = client.get("/state").json()
    assert state["orders"] == [] and state["items"] == [
        {"id": "itm_3", "name": "b", "price": 2, "stock": 2}, {"id": "itm_41", "name": "a", "price": 1, "stock": 1}]
    assert client.get("/items/itm_41").headers["etag"] == content_etag("a", 1, 1)
    assert client.get("/items/itm_3").headers["etag"] == content_etag("b", 2, 2)
    r = client.post("/items", json={"name": "c", "price": 3, "stock": 3})
    assert r.json() == {"id": "itm_42", "name": "c", "price": 3, "stock": 3}
    state = client.get("/state").content
    assert client.post("/admin/reset", json=json.loads(state)).status_code == 204
    assert client.get("/state").content == state  # byte for byte
    assert client.post("/admin/reset", json={"orders": [{"id": "ord_1", "qty": 1}]}).status_code == 422


def test_idempotent_replays(client):
    key = {"Idempotency-Key": "k-1"}
    first = client.post("/items", json={"name": "a", "price": 1, "stock": 1}, headers=key)
    again = client.post("/items", json={"name": "a", "price": 1, "stock": 1}, headers=key)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"] and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert len(client.get("/items").json()) == 1

    # The same key on another method or path is an error and does nothing.
    assert client.post("/orders", json={"item": "x", "qty": 1}, headers=key).status_code == 422
    assert client.delete("/items/itm_1", headers=key).status_code == 422
    assert client.get("/state").json()["orders"] == []

    # DELETE and PATCH replay their first answer too, even when repeating would now fail.
    assert client.delete("/items/itm_1", headers={"Idempotency-Key": "k-2"}).status_code == 204
    r = client.delete("/items/itm_1", headers={"Idempotency-Key": "k-2"})
    assert r.status_code == 204 and r.headers["idempotent-replayed"] == "true"
    client.post("/orders", json={"item": "x", "qty": 1})
    p1 = client.patch("/orders/ord_1", json={"qty": 2}, headers={"Idempotency-Key": "k-3"})
    client.patch("/orders/ord_1", json={"qty": 3})
    p2 = client.patch("/orders/ord_1", json={"qty": 2}, headers={"Idempotency-Key": "k-3"})
    assert p1.json() == p2.json() and client.get("/orders/ord_1").json()["qty"] == 3

    # A reset forgets the keys.
    client.post("/admin/reset")
    r = client.post("/items", json={"name": "a", "price": 1, "stock": 1}, headers=key)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers


def test_concurrent_retries_with_one_key_act_once(client):
    def post(_):
        body = {"amount": 5, "currency": "EUR", "to": "bob"}
        return client.post("/payments", json=body, headers={"Idempotency-Key": "pay-once"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {r.status_code for r in answers} == {201}
    assert {r.json()["id"] for r in answers} == {"pay_1"}
    assert len(client.get("/payments").json()) == 1


def test_faults(client):
    client.post("/items", json={"name": "a", "price": 1, "stock": 1})
    client.post("/items", json={"name": "b", "price": 1, "stock": 1})
    before = client.get("/state").json()

    fault = {"method": "DELETE", "path": "/items/itm_1", "status": 500, "times": 2}
    assert client.post("/admin/faults", json=fault).status_code == 204
    assert client.delete("/items/itm_2", headers={"If-Match": "*"}).status_code == 204  # other path: unaffected
    for _ in range(2):
        r = client.delete("/items/itm_1")
        assert r.status_code == 500 and r.json() == {"error": "injected"}
    assert client.get("/items/itm_1").status_code == 200  # other method: unaffected; nothing was deleted
    assert client.delete("/items/itm_1").status_code == 204  # used up

    # A prefix (ends with "/"), and a fault is not remembered as an idempotent answer.
    client.post("/admin/reset", json=before)
    client.post("/admin/faults", json={"method": "patch", "path": "/items/", "status": 503})
    key = {"Idempotency-Key": "retry-me"}
    assert client.patch("/items/itm_2", json={"stock": 9}, headers=key).status_code == 503
    assert client.get("/state").json() == before
    r = client.patch("/items/itm_2", json={"stock": 9}, headers=key)
    assert r.status_code == 200 and r.json()["stock"] == 9

    # DELETE /admin/faults clears them.
    client.post("/admin/faults", json={"method": "GET", "path": "/state", "times": 5})
    assert client.get("/state").status_code == 500
    assert client.delete("/admin/faults").status_code == 204
    assert client.get("/state").status_code == 200
    assert client.post("/admin/faults", json={"method": "GET", "path": "no-slash"}).status_code == 422


def test_big_streams_and_can_be_abandoned(client, caplog):
    r = client.get("/big", params={"mb": 1})
    assert r.headers["content-type"] == "application/octet-stream" and len(r.content) == MiB

    started = time.monotonic()
    with client.stream("GET", "/big", params={"mb": 4096}) as r:  # 4 GiB: only a bit is read
        assert r.status_code == 200 and "content-length" not in r.headers
        got = 0
        for chunk in r.iter_bytes():
            got += len(chunk)
            if got >= 2 * MiB:
                break
    assert time.monotonic() - started < 5

    with client.stream("GET", "/big", params={"mb": 1024, "json": 1}) as r:
        assert r.headers["content-type"] == "application/json"
        head = b""
        for chunk in r.iter_bytes():
            head += chunk
            if len(head) > 10:
                break
        assert head.startswith(b'"aaaaaaaaa')
    body = client.get("/big", params={"mb": 1, "json": 1}).content
    assert len(json.loads(body)) == MiB
    assert client.get("/state").status_code == 200  # still healthy
    time.sleep(0.1)
    assert not [r for r in caplog.records if "socket.send" in r.getMessage()]  # abandoned streams stopped


def test_slow(client):
    started = time.monotonic()
    r = client.get("/slow", params={"seconds": 0.3})
    assert r.status_code == 200 and time.monotonic() - started >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        client.get("/slow", params={"seconds": 30}, timeout=0.2)
    assert client.get("/slow", params={"seconds": 0}).status_code == 200


def test_echo(client):
    r = client.get("/echo", params={"api_key": "s3cret", "q": "1"}, headers={"Authorization": "Bearer tok"})
    assert r.json() == {
        "method": "GET", "path": "/echo", "query": {"api_key": "s3cret", "q": "1"},
        "headers": {**r.json()["headers"], "authorization": "Bearer tok"}, "body": "",
    }
    r = client.post("/echo", content='{"password": "hunter2"}', headers={"X-Api-Key": "k"})
    echoed = r.json()
    assert echoed["method"] == "POST" and echoed["body"] == '{"password": "hunter2"}'
    assert echoed["headers"]["x-api-key"] == "k"


def test_not_json(client):
    r = client.get("/not-json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.text == "this is not json"
    with pytest.raises(json.JSONDecodeError):
        r.json()


def test_openapi_describes_the_resources(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/orders": {"get", "post"}, "/orders/{id}": {"get", "patch", "delete"},
        "/items": {"get", "post"}, "/items/{id}": {"get", "put", "patch", "delete"},
        "/emails": {"get", "post"}, "/emails/{id}": {"get", "delete"}, "/emails/{id}/send": {"post"},
        "/payments": {"get", "post"}, "/payments/{id}": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for op in paths[path].values():
            params = {(p["in"], p["name"]) for p in op.get("parameters", [])}
            assert ("path", "id") in params or "{id}" not in path
    assert ("header", "if-match") in {(p["in"], p["name"]) for p in paths["/items/{id}"]["put"]["parameters"]}
    assert "201" in paths["/items/{id}"]["put"]["responses"]
    assert set(spec["components"]["schemas"]["Item"]["properties"]) == {"id", "name", "price", "stock"}
