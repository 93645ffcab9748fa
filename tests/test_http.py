"""HTTP actions against the real example service over loopback: compensations computed from the
actual response, verified undo, conflicts, secrets that never leak, faults, bounded responses."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import goex
from goex.adapters.http.adapter import HttpAdapter
from goex.service import serve
from conftest import run_cli

SEED = {
    "orders": [{"id": "ord_1", "item": "A-1", "qty": 1, "status": "open"}],
    "items": [{"id": "itm_1", "name": "pen", "price": 1.5, "stock": 10},
              {"id": "itm_2", "name": "ink", "price": 4.0, "stock": 2}],
    "emails": [], "payments": [],
}


@pytest.fixture(scope="module")
def service():
    with serve() as base:
        yield base


@pytest.fixture
def base(service: str) -> str:
    httpx.post(service + "/admin/reset", json=SEED).raise_for_status()
    httpx.delete(service + "/admin/faults").raise_for_status()
    return service


def state(base: str) -> dict:
    return httpx.get(base + "/state").json()


def config(base: str, **kw) -> goex.HttpConfig:
    return goex.HttpConfig(allow_hosts=[httpx.URL(base).host], openapi=httpx.get(base + "/openapi.json").json(), **kw)


@pytest.fixture
def rt(root: Path, base: str):
    runtime = goex.Runtime(root, policy="permissive", http=config(base))
    yield runtime
    runtime.close()


def req(session: goex.Session, method: str, url: str, **kw) -> goex.Result:
    return session.execute({"type": "http.request", "method": method, "url": url, **kw})


def test_any_sequence_then_rollback_restores_the_full_state(base: str, rt: goex.Runtime):
    start = state(base)
    rng = random.Random(7)
    s = rt.session()
    for step in range(40):
        items = [i["id"] for i in state(base)["items"]]
        orders = [o["id"] for o in state(base)["orders"]]
        # (orders have no PUT, so deleting one cannot be undone: that is tested as irreversible elsewhere)
        choice = rng.choice(["order", "item", "put", "patch", "delete-item", "patch-order", "email"])
        if choice == "order":
            r = req(s, "POST", base + "/orders", json={"item": f"X-{step}", "qty": rng.randint(1, 5)})
        elif choice == "item":
            r = req(s, "POST", base + "/items", json={"name": f"n{step}", "price": step, "stock": 1})
        elif choice == "put" and items:
            r = req(s, "PUT", f"{base}/items/{rng.choice(items + ['itm_new'])}",
                    json={"name": f"p{step}", "price": 2.5, "stock": step})
        elif choice == "patch" and items:
            r = req(s, "PATCH", f"{base}/items/{rng.choice(items)}", json={"stock": step})
        elif choice == "delete-item" and items:
            r = req(s, "DELETE", f"{base}/items/{rng.choice(items)}")
        elif choice == "patch-order" and orders:
            r = req(s, "PATCH", f"{base}/orders/{rng.choice(orders)}", json={"status": "shipped"})
        elif choice == "email":
            r = req(s, "POST", base + "/emails", json={"to": "a@example.com", "subject": "s", "body": str(step)})
        else:
            continue
        assert r.ok, r.error
        if step % 10 == 5:
            s.checkpoint()
    assert state(base) != start
    s.rollback()
    assert state(base) == start
    rt.verify()


def test_compensation_comes_from_the_actual_response(base: str, rt: goex.Runtime):
    s = rt.session()
    r = req(s, "POST", base + "/orders", json={"item": "B", "qty": 2})
    new_id = r.output["body"]["id"]
    assert new_id != "ord_1" and r.output["status"] == 201
    applied = [json.loads(b) for _, b, _ in rt.journal.records() if json.loads(b)["kind"] == "applied"][-1]
    assert applied["after"]["compensation"]["method"] == "DELETE"
    assert applied["after"]["compensation"]["url"].endswith(f"/orders/{new_id}")
    assert s.undo() == [r.entry_id]
    assert httpx.get(f"{base}/orders/{new_id}").status_code == 404
    undone = [json.loads(b) for _, b, _ in rt.journal.records() if json.loads(b)["kind"] == "undone"][-1]
    assert undone["compensation_status"] == 204


def test_undo_detects_someone_elses_change_and_force_restores(base: str, rt: goex.Runtime):
    s = rt.session()
    assert req(s, "PATCH", base + "/items/itm_1", json={"stock": 3}).ok
    httpx.patch(base + "/items/itm_1", json={"price": 99.0}).raise_for_status()  # another client
    with pytest.raises(goex.UndoConflict) as info:
        s.undo()
    assert "/items/itm_1" in str(info.value)
    assert httpx.get(base + "/items/itm_1").json()["price"] == 99.0  # nothing overwritten
    s.undo(force=True)
    assert state(base) == SEED | {}


def test_undo_detects_a_deleted_resource_recreated(base: str, rt: goex.Runtime):
    s = rt.session()
    assert req(s, "DELETE", base + "/items/itm_2").ok
    httpx.put(base + "/items/itm_2", json={"name": "someone else's", "price": 1, "stock": 1}).raise_for_status()
    with pytest.raises(goex.UndoConflict, match="re-created"):
        s.undo()


def test_failed_compensation_is_undo_failed_never_undone(base: str, rt: goex.Runtime):
    s = rt.session()
    r = req(s, "POST", base + "/orders", json={"item": "C", "qty": 1})
    order = r.output["body"]["id"]
    httpx.post(base + "/admin/faults", json={"method": "DELETE", "path": f"/orders/{order}", "status": 500, "times": 1})
    with pytest.raises(goex.CompensationFailed, match="500"):
        s.undo()
    assert {e["id"]: e["status"] for e in rt.log()}[r.entry_id] == "undo_failed"
    assert httpx.get(f"{base}/orders/{order}").status_code == 200
    assert s.undo() == [r.entry_id]  # the fault is gone: undo again succeeds
    assert state(base) == SEED
    rt.verify()


def test_irreversible_requests_are_marked_and_asked_about(root: Path, base: str):
    with goex.Runtime(root, http=config(base)) as strict:  # default pack
        r = req(strict.session(), "POST", base + "/payments", json={"amount": 5, "currency": "EUR", "to": "x"})
        assert not r.ok and r.status == "denied" and r.decision.rules == ["http.irreversible"]
        assert state(base)["payments"] == []
    with goex.Runtime(root, policy="permissive", http=config(base)) as rt:
        s = rt.session()
        r = req(s, "POST", base + "/payments", json={"amount": 5, "currency": "EUR", "to": "x"})
        assert r.ok and r.decision.verdict == "allow"
        entry = json.loads(next(b for seq, b, _ in rt.journal.records() if seq == int(r.entry_id[1:])))
        assert entry["preview"]["reversible"] is False and not entry["plan"].get("ops")
        assert s.rollback() == []  # nothing it can undo
        assert len(state(base)["payments"]) == 1


def test_hosts_outside_the_allow_list_get_no_byte(root: Path, base: str):
    port = httpx.URL(base).port
    with goex.Runtime(root, policy="permissive", http=goex.HttpConfig(allow_hosts=[f"127.0.0.1:{port + 1}"])) as rt:
        s = rt.session()
        r = req(s, "POST", base + "/orders", json={"item": "Z", "qty": 1})
        assert not r.ok and r.status == "denied" and r.decision.rules == ["http.host-not-allowed"]
        r = req(s, "GET", "http://example.invalid/")
        assert not r.ok and "not allowed" in r.error
    assert state(base) == SEED
    with goex.Runtime(root, policy="permissive") as rt:  # no HttpConfig: nothing is reachable
        assert req(rt.session(), "GET", base + "/state").status == "denied"


def test_secrets_are_filled_but_never_recorded(root: Path, base: str, monkeypatch: pytest.MonkeyPatch):
    value = "tok-" + "8c1f27e0d4b95a63"
    host = httpx.URL(base).host
    monkeypatch.setenv("GOEX_SECRET_SHOP_TOKEN", value)
    monkeypatch.setenv("GOEX_SECRET_SHOP_TOKEN_HOSTS", host)
    monkeypatch.setenv("GOEX_SECRET_OTHER", "other-" + value)
    monkeypatch.setenv("GOEX_SECRET_OTHER_HOSTS", "api.example.com")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    results = []
    with goex.Runtime(root, policy="permissive", http=config(base), tracer_provider=provider) as rt:
        s = rt.session()
        echo = req(s, "POST", base + "/echo?token={{secret:SHOP_TOKEN}}",
                   headers={"Authorization": "Bearer {{secret:SHOP_TOKEN}}"}, json={"key": "{{secret:SHOP_TOKEN}}"})
        results.append(echo)
        assert echo.ok
        assert echo.output["body"]["headers"]["authorization"] == "Bearer {{secret:SHOP_TOKEN}}"  # sent, then redacted
        created = req(s, "POST", base + "/items", json={"name": "{{secret:SHOP_TOKEN}}", "price": 1, "stock": 1})
        results.append(created)
        item = created.output["body"]["id"]
        assert httpx.get(f"{base}/items/{item}").json()["name"] == value  # the server got the real value
        refused = req(s, "POST", base + "/orders", json={"item": "{{secret:OTHER}}", "qty": 1})
        results.append(refused)
        assert not refused.ok and refused.decision.rules == ["http.secret-binding"]
        unknown = req(s, "GET", base + "/echo", headers={"X": "{{secret:NOPE}}"})
        assert not unknown.ok and "no such secret" in unknown.error
        results.append(unknown)
        s.rollback()
        rt.log()
    assert value not in json.dumps([r.to_json() for r in results])
    for path in (root / ".goex").iterdir():
        assert value.encode() not in path.read_bytes(), path
    for span in exporter.get_finished_spans():
        assert value not in json.dumps(dict(span.attributes or {})), span.name
    assert len([o for o in state(base)["orders"] if "other" in o["item"]]) == 0


def test_refused_connection_timeout_and_lying_server(root: Path, base: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    with goex.Runtime(root, policy="permissive", http=config(base)) as rt:
        s = rt.session()
        r = req(s, "POST", f"http://127.0.0.1:{dead_port}/orders", json={"item": "A", "qty": 1})
        assert not r.ok and r.status == "failed" and "cannot connect" in r.error and "nothing was sent" in r.error
        t = time.monotonic()
        r = req(s, "GET", base + "/slow?seconds=5", timeout_s=0.5)
        assert not r.ok and "no response within 0.5s" in r.error and time.monotonic() - t < 4
        r = req(s, "GET", base + "/not-json")
        assert r.ok and "json_error" in r.output and r.output["body"] == "this is not json"
        assert all(e["status"] in ("failed", "applied") for e in rt.log())
        rt.verify()


def test_gigabyte_response_is_bounded(root: Path, base: str):
    with goex.Runtime(root, policy="permissive", http=config(base, max_response_bytes=256 * 1024)) as rt:
        t = time.monotonic()
        r = req(rt.session(), "GET", base + "/big?mb=4096")
        assert r.ok and r.output["truncated"] is True and time.monotonic() - t < 10
        assert len(r.output["body"]) < 1024 * 1024  # base64 of at most the limit plus one chunk


def test_lost_response_is_replayed_with_the_same_idempotency_key(base: str, rt: goex.Runtime,
                                                               monkeypatch: pytest.MonkeyPatch):
    real = HttpAdapter._send_action
    calls = []

    def lose_first_response(self, action, key):
        calls.append(key)
        response = real(self, action, key)
        if len(calls) == 1:
            raise goex.adapters.http.adapter.OutcomeUnknown(f"{action.method} {action.url}: connection dropped")
        return response

    monkeypatch.setattr(HttpAdapter, "_send_action", lose_first_response)
    s = rt.session()
    r = req(s, "POST", base + "/orders", json={"item": "once", "qty": 1})
    assert r.ok and "replayed" in r.output["note"]
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0].startswith("goex-")
    assert [o["item"] for o in state(base)["orders"]].count("once") == 1  # the server acted exactly once
    s.undo()
    assert state(base) == SEED


def test_lost_response_on_a_route_without_keys_needs_review(root: Path, base: str, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path):
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes:\n  - route: POST /orders\n    kind: create\n    idempotent: false\n")
    real = HttpAdapter._send_action

    def lose(self, action, key):
        real(self, action, key)
        raise goex.adapters.http.adapter.OutcomeUnknown(f"{action.method} {action.url}: connection dropped")

    monkeypatch.setattr(HttpAdapter, "_send_action", lose)
    cfg = goex.HttpConfig(allow_hosts=[httpx.URL(base).host], compensations=routes)
    with goex.Runtime(root, policy="permissive", http=cfg) as rt:
        r = req(rt.session(), "POST", base + "/orders", json={"item": "maybe", "qty": 1})
        assert not r.ok and r.status == "needs_review" and "by hand" in r.error
        assert [e["status"] for e in rt.log()] == ["needs_review"]
        rt.verify()


def test_malformed_http_actions(rt: goex.Runtime):
    s = rt.session()
    for action, words in [
        ({"method": "GET", "url": "not a url"}, "absolute http"),
        ({"method": "GET", "url": "ftp://127.0.0.1/x"}, "absolute http"),
        ({"method": "BREW", "url": "http://127.0.0.1/"}, "'method'"),
        ({"method": "POST", "url": "http://127.0.0.1/", "json": {}, "body": "x"}, "not both"),
        ({"method": "POST", "url": "http://127.0.0.1/", "body": "{oops", "headers": {"Content-Type": "application/json"}},
         "not JSON"),
        ({"method": "GET", "url": "http://127.0.0.1/", "timeout_s": 0}, "'timeout_s'"),
    ]:
        with pytest.raises(goex.ActionError, match=words):
            s.execute({"type": "http.request", **action})
    assert rt.log() == []


def test_compensations_from_openapi_and_from_a_file(base: str, tmp_path: Path):
    derived = goex.Compensations.from_openapi(httpx.get(base + "/openapi.json").json())
    kinds = {f"{r.method} {r.template}": r.kind for r in derived.routes}
    assert kinds["POST /orders"] == "create" and kinds["PUT /items/{id}"] == "update"
    assert kinds["DELETE /items/{id}"] == "delete" and kinds["PATCH /orders/{id}"] == "update"
    assert "POST /payments" not in kinds  # no way back: irreversible
    f = tmp_path / "c.yaml"
    f.write_text("routes:\n  - route: POST /payments\n    kind: irreversible\n"
                 "  - {route: 'POST /orders', undo: 'DELETE /orders/{response.json.id}'}\n")
    declared = goex.Compensations.from_file(f)
    assert declared.match("POST", "/orders")[0].kind == "create"
    f.write_text("routes:\n  - route: FETCH /x\n")
    with pytest.raises(goex.GoexError, match="routes\\[0\\]"):
        goex.Compensations.from_file(f)


def test_cli_exec_and_undo_with_http(root: Path, base: str, tmp_path: Path):
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(base + "/openapi.json").text)
    flags = ["--root", str(root), "--allow-host", httpx.URL(base).host, "--openapi", str(spec)]
    action = json.dumps({"type": "http.request", "method": "POST", "url": base + "/items",
                         "json": {"name": "cli", "price": 1, "stock": 1}})
    done = run_cli("exec", *flags, "--policy", "permissive", action)
    assert done.returncode == 0, done.err
    assert len(state(base)["items"]) == 3
    done = run_cli("undo", *flags, "--all")
    assert done.returncode == 0, done.err
    assert state(base) == SEED


def test_process_killed_after_sending_is_settled_by_recover(root: Path, base: str, tmp_path: Path):
    """The request reached the server, the process died before recording the response:
    `goex recover` replays it with the same idempotency key, and it happened exactly once."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, sys, httpx, goex\n"
        "from goex.adapters.http.adapter import HttpAdapter\n"
        "real = HttpAdapter._send_action\n"
        "def send_then_die(self, action, key):\n"
        "    real(self, action, key)\n"
        "    os._exit(9)  # killed: the response is never recorded\n"
        "HttpAdapter._send_action = send_then_die\n"
        "root, base = sys.argv[1], sys.argv[2]\n"
        "rt = goex.Runtime(root, policy='permissive', http=goex.HttpConfig(allow_hosts=['127.0.0.1'],\n"
        "    openapi=httpx.get(base + '/openapi.json').json()))\n"
        "rt.session(session_id='W').execute({'type': 'http.request', 'method': 'POST', 'url': base + '/orders',\n"
        "    'json': {'item': 'crash', 'qty': 1}})\n"
    )
    done = subprocess.run([sys.executable, str(worker), str(root), base], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert [o["item"] for o in state(base)["orders"]].count("crash") == 1
    spec = tmp_path / "openapi.json"
    spec.write_text(httpx.get(base + "/openapi.json").text)
    flags = ["--root", str(root), "--allow-host", "127.0.0.1", "--openapi", str(spec)]
    recovered = run_cli("recover", *flags)
    assert recovered.returncode == 0 and ": applied" in recovered.out, recovered.out + recovered.err
    assert [o["item"] for o in state(base)["orders"]].count("crash") == 1  # replayed, not repeated
    undone = run_cli("undo", *flags, "--session", "W")
    assert undone.returncode == 0, undone.err
    assert state(base) == SEED


def test_declared_routes_override_derived_ones(root: Path, base: str):
    declared = goex.Compensations().add("POST /orders", "irreversible", idempotent=False)
    cfg = goex.HttpConfig(allow_hosts=["127.0.0.1"], openapi=httpx.get(base + "/openapi.json").json(),
                          compensations=declared)
    with goex.Runtime(root, http=cfg) as rt:
        r = req(rt.session(), "POST", base + "/orders", json={"item": "x", "qty": 1})
        assert r.status == "denied" and r.decision.rules == ["http.irreversible"]


def test_unreadable_before_image_means_nothing_is_sent(base: str, rt: goex.Runtime):
    httpx.post(base + "/admin/faults", json={"method": "GET", "path": "/orders/ord_1", "status": 503, "times": 1})
    r = req(rt.session(), "PATCH", base + "/orders/ord_1", json={"status": "cancelled"})
    assert not r.ok and r.status == "failed" and "before changing it (status 503)" in r.error
    assert state(base) == SEED


def test_ids_with_escaped_characters_are_restored_at_the_right_url(base: str, rt: goex.Runtime):
    httpx.put(base + "/items/a%3Fb", json={"name": "odd", "price": 1.0, "stock": 1}).raise_for_status()
    start = state(base)
    s = rt.session()
    assert req(s, "PUT", base + "/items/a%3Fb", json={"name": "CHANGED", "price": 9.0, "stock": 9}).ok
    assert req(s, "DELETE", base + "/items/a%3Fb").ok
    s.rollback()
    assert state(base) == start


def test_secrets_may_not_shape_the_host(root: Path, base: str):
    store = goex.SecretStore({"PW": goex.adapters.http.secrets.Secret("1/evil#")})
    with goex.Runtime(root, policy="permissive", http=goex.HttpConfig(allow_hosts=["127.0.0.1"], secrets=store)) as rt:
        port = httpx.URL(base).port
        r = req(rt.session(), "GET", f"http://user:{{{{secret:PW}}}}@127.0.0.1:{port}/echo")
        assert not r.ok and r.decision.rules == ["http.secret-binding"] and "header" in r.error
        r = req(rt.session(), "GET", f"{base}/echo?q={{{{secret:PW}}}}")  # in the query: percent-encoded
        assert r.ok and r.output["body"]["path"] == "/echo"  # the '/' and '#' did not reshape the URL
        assert r.output["body"]["query"] == {"q": "{{secret:PW}}"}  # the server got it whole; we redact it


def test_default_pack_refuses_deleting_a_collection(root: Path, base: str):
    with goex.Runtime(root, http=config(base)) as rt:
        s = rt.session()
        r = req(s, "DELETE", base + "/orders")
        assert not r.ok and r.decision.verdict == "deny" and "http.delete-collection" in r.decision.rules
        r = req(s, "DELETE", base + "/orders/ord_1")  # the harmless twin: one item, reversible
        assert r.decision.verdict != "deny" and "http.delete-collection" not in r.decision.rules


def test_secret_values_written_out_are_bound_like_placeholders(root: Path, base: str, monkeypatch: pytest.MonkeyPatch):
    """An agent that read a secret and pastes its value is held to the secret's hosts, wherever
    in the request the value is; the same value sent to the host it is bound to goes through."""
    from urllib.parse import quote
    mine, other, pin = "tok-" + "5e0a9d3c71b2f468", "oth/er+" + "0c9b8a7d6e5f", "1234567"
    monkeypatch.setenv("GOEX_SECRET_SHOP_TOKEN", mine)
    monkeypatch.setenv("GOEX_SECRET_SHOP_TOKEN_HOSTS", httpx.URL(base).host)
    monkeypatch.setenv("GOEX_SECRET_OTHER", other)
    monkeypatch.setenv("GOEX_SECRET_OTHER_HOSTS", "api.example.com")
    monkeypatch.setenv("GOEX_SECRET_PIN", pin)  # too short to be looked for
    monkeypatch.setenv("GOEX_SECRET_PIN_HOSTS", "api.example.com")

    def placements(value: str) -> list[dict]:
        return [{"url": base + "/orders?note=" + quote(value, safe=""), "json": {"item": "A", "qty": 1}},
                {"url": base + "/orders?note=" + value, "json": {"item": "A", "qty": 1}},
                {"url": base + "/orders", "headers": {"X-Note": f"Bearer {value}"}, "json": {"item": "A", "qty": 1}},
                {"url": base + "/orders", "headers": {"Content-Type": "application/json"},
                 "body": json.dumps({"item": value, "qty": 1})},
                {"url": base + "/orders", "json": {"item": "A", "qty": 1, "meta": [{"note": f"k={value};"}]}}]

    with goex.Runtime(root, policy="permissive", http=config(base)) as rt:
        s = rt.session()
        for spec in placements(other):
            refused = req(s, "POST", **spec)
            assert not refused.ok and refused.status == "denied", spec
            assert refused.decision.rules == ["http.secret-binding"]
            assert "secret 'OTHER' refused" in refused.error and "written out" in refused.error
            assert "api.example.com" in refused.error
            assert other not in json.dumps(refused.to_json()) and quote(other, safe="") not in refused.error
        assert state(base) == SEED  # nothing was sent
        mixed = req(s, "POST", base + "/orders", headers={"Authorization": "Bearer {{secret:SHOP_TOKEN}}"},
                    json={"item": other, "qty": 1})
        assert not mixed.ok and "secret 'OTHER' refused" in mixed.error
        short = req(s, "POST", base + "/orders", json={"item": pin, "qty": 1})  # under 8 characters: not looked for
        assert short.ok and state(base)["orders"][-1]["item"] == pin

        for spec in placements(mine):  # the harmless twin: the host it is bound to
            decision, preview = s.check({"type": "http.request", "method": "POST", **spec})
            assert decision.verdict == "allow" and preview["secrets"] == ["SHOP_TOKEN"], spec
            done = req(s, "POST", **spec)
            assert done.ok, done.error
            assert rt.journal.record(rt.journal.entry(done.entry_id)["seq"])["preview"]["secrets"] == ["SHOP_TOKEN"]
        echo = req(s, "POST", base + "/echo", headers={"X-Token": mine, "Authorization": "Bearer {{secret:SHOP_TOKEN}}"})
        assert echo.ok and echo.output["body"]["headers"]["x-token"] == "{{secret:SHOP_TOKEN}}"  # redacted on the way back
        assert echo.decision.verdict == "allow"
        s.rollback()
        journal = "\n".join(body for _, body, _ in rt.journal.records())
        for value in (mine, other):  # journaled as their placeholders, refused or sent
            assert value not in journal and quote(value, safe="") not in journal
        assert "{{secret:SHOP_TOKEN}}" in journal
    assert state(base) == SEED
