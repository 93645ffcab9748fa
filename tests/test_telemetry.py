"""Spans follow the OpenTelemetry semantic conventions (tool execution, HTTP client, database
client), read back from an in-memory exporter; OTLP export configured by the standard OTEL_*
variables, read back from a small OTLP/HTTP receiver in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import goex


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class Recorder(BaseHTTPRequestHandler):
    """A real HTTP server on loopback that keeps every request's method, path, headers and body."""

    seen: list[dict] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                "body": body})
        out = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict]]]:
    handler = type("R", (Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    server.shutdown()
    server.server_close()


def test_action_spans_are_tool_executions_with_journal_attributes(root: Path, spans):
    provider, exporter = spans
    with goex.Runtime(root, tracer_provider=provider) as rt:
        s = rt.session(actor="bot")
        ok = s.execute({"type": "fs.write", "path": "a.txt", "content": "x"})
        denied = s.execute({"type": "fs.write", "path": ".git/config", "content": "x"})
        with pytest.raises(goex.ActionError):
            s.execute({"type": "fs.write", "path": "b.txt"})  # no content: malformed
        head = rt.verify().head_hash
    first, second, malformed = exporter.get_finished_spans()
    assert (first.name, first.kind) == ("execute_tool fs.write", SpanKind.INTERNAL)
    assert {k: first.attributes[k] for k in ("gen_ai.operation.name", "gen_ai.tool.name", "gen_ai.agent.name",
                                             "gen_ai.conversation.id")} == {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "fs.write", "gen_ai.agent.name": "bot",
        "gen_ai.conversation.id": s.id}
    assert first.attributes["goex.entry.id"] == ok.entry_id and first.attributes["goex.status"] == "applied"
    assert first.attributes["goex.decision"] == "allow" and first.status.status_code == StatusCode.UNSET
    assert len(first.attributes["goex.entry.hash"]) == 64 and head != first.attributes["goex.entry.hash"]
    assert second.attributes["goex.entry.id"] == denied.entry_id and second.attributes["goex.decision"] == "deny"
    assert list(second.attributes["goex.rules"]) == ["fs.git-internals"]
    assert second.status.status_code == StatusCode.ERROR and second.attributes["error.type"] == "denied"
    assert malformed.name == "execute_tool" and malformed.status.status_code == StatusCode.ERROR
    assert malformed.attributes["goex.status"] == "malformed" and malformed.attributes["gen_ai.conversation.id"] == s.id
    assert "gen_ai.tool.name" not in malformed.attributes


def test_sql_spans_are_database_clients_without_inlined_parameters(root: Path, spans):
    provider, exporter = spans
    with goex.Runtime(root, tracer_provider=provider, policy="permissive",
                      databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        s.execute({"type": "sql.execute", "db": "main", "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"})
        s.execute({"type": "sql.execute", "db": "main", "sql": "INSERT INTO t (v) VALUES (?)",
                   "params": ["hidden-param-value"]})
        s.execute({"type": "sql.execute", "db": "main", "sql": "SELECT v FROM t; SELECT id FROM t"})
        failed = s.execute({"type": "sql.execute", "db": "main", "sql": "INSERT INTO nope VALUES (1)"})
    create, insert, batch, bad = exporter.get_finished_spans()
    assert {sp.kind for sp in (create, insert, batch, bad)} == {SpanKind.CLIENT}
    assert insert.attributes["db.system.name"] == "sqlite" and insert.attributes["db.namespace"] == "app.db"
    assert insert.attributes["db.operation.name"] == "INSERT" and create.attributes["db.operation.name"] == "CREATE"
    assert insert.attributes["db.query.text"] == "INSERT INTO t (v) VALUES (?)"
    assert not any("hidden-param-value" in str(v) for v in insert.attributes.values())
    assert batch.attributes["db.operation.name"] == "BATCH SELECT"
    assert not failed.ok and bad.status.status_code == StatusCode.ERROR


def test_http_spans_are_clients_and_propagate_traceparent(root: Path, spans, recorder):
    provider, exporter = spans
    base, seen = recorder
    with goex.Runtime(root, tracer_provider=provider, policy="permissive",
                      http=goex.HttpConfig(allow_hosts=["127.0.0.1"])) as rt:
        r = rt.session().execute({"type": "http.request", "method": "GET", "url": base + "/things?x=1"})
    assert r.ok, r.error
    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.CLIENT and span.name == "execute_tool http.request"
    port = int(base.rsplit(":", 1)[1])
    assert {k: span.attributes[k] for k in ("http.request.method", "url.full", "server.address", "server.port",
                                            "http.response.status_code")} == {
        "http.request.method": "GET", "url.full": base + "/things?x=1", "server.address": "127.0.0.1",
        "server.port": port, "http.response.status_code": 200}
    traceparent = {k.lower(): v for k, v in seen[0]["headers"].items()}["traceparent"]
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert (int(trace_id, 16), int(span_id, 16)) == (span.context.trace_id, span.context.span_id)


def test_a_rollback_holds_its_undos_and_a_conflict_is_on_its_span(root: Path, spans):
    provider, exporter = spans
    with goex.Runtime(root, tracer_provider=provider) as rt:
        s = rt.session()
        a = s.execute({"type": "fs.write", "path": "a.txt", "content": "1"}).entry_id
        b = s.execute({"type": "fs.write", "path": "b.txt", "content": "2"}).entry_id
        exporter.clear()
        assert s.rollback() == [b, a]
        undos = exporter.get_finished_spans()
        c = s.execute({"type": "fs.write", "path": "c.txt", "content": "3"}).entry_id
        (root / "c.txt").write_text("changed by someone else")
        exporter.clear()
        with pytest.raises(goex.UndoConflict):
            s.undo()
        refused = exporter.get_finished_spans()
    *children, parent = undos
    assert parent.name == "goex rollback" and children and {sp.name for sp in children} == {"goex undo"}
    assert all(sp.parent.span_id == parent.context.span_id for sp in children)
    # entry by entry, or one span for a coalesced range naming its entries
    assert [e for sp in children for e in sp.attributes.get("goex.undo.entries", [sp.attributes["goex.entry.id"]])] \
        == [b, a]
    assert list(parent.attributes["goex.undo.entries"]) == [b, a]
    undo, rollback = refused
    assert undo.attributes["goex.entry.id"] == c and "c.txt" in undo.attributes["goex.undo.conflict"][0]
    assert undo.status.status_code == StatusCode.ERROR and rollback.status.status_code == StatusCode.ERROR


def test_no_sdk_configured_still_works(root: Path):
    with goex.Runtime(root) as rt:
        assert rt.session().execute({"type": "fs.write", "path": "a", "content": "x"}).ok


class OtlpReceiver(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: decodes each export request's protobuf body."""

    requests: list[ExportTraceServiceRequest] = []
    headers_seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 - the handler's name is the HTTP method
        type(self).headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            type(self).requests.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_export_from_the_standard_variables(root: Path):
    handler = type("Rx", (OtlpReceiver,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "OTEL_SERVICE_NAME": "goex-under-test", "OTEL_BSP_SCHEDULE_DELAY": "50"}
        env.pop("OTEL_TRACES_EXPORTER", None)
        action = json.dumps({"type": "fs.write", "path": "x.txt", "content": "hi"})
        run = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root), "--actor", "exporter",
                              action], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        entry = json.loads(run.stdout)["entry_id"]
    finally:
        server.shutdown()
        server.server_close()
    spans = [(rs.resource, sp) for req in handler.requests for rs in req.resource_spans
             for ss in rs.scope_spans for sp in ss.spans]
    assert len(spans) == 1
    resource, span = spans[0]
    attrs = {a.key: a.value for a in span.attributes}
    assert span.name == "execute_tool fs.write" and span.kind == span.SPAN_KIND_INTERNAL
    assert attrs["gen_ai.tool.name"].string_value == "fs.write" and attrs["gen_ai.agent.name"].string_value == "exporter"
    assert attrs["goex.entry.id"].string_value == entry
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "goex-under-test"


def test_otlp_asked_for_with_a_protocol_goex_cannot_send(root: Path):
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    run = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root),
                          '{"type": "fs.write", "path": "x", "content": "1"}'], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "http/protobuf" in run.stderr
    assert not (root / "x").exists()


def test_otlp_export_from_the_roots_settings(root: Path):
    handler = type("Rx", (OtlpReceiver,), {"requests": [], "headers_seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (root / ".goex").mkdir()
        (root / ".goex" / "config.toml").write_text(
            f'[telemetry]\nendpoint = "http://127.0.0.1:{server.server_address[1]}"\n'
            'service_name = "goex-from-settings"\nheaders = {"x-team" = "agents"}\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"OTEL_BSP_SCHEDULE_DELAY": "50"}
        action = json.dumps({"type": "fs.write", "path": "y.txt", "content": "hi"})
        run = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root), action], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    finally:
        server.shutdown()
        server.server_close()
    spans = [(rs.resource, sp) for req in handler.requests for rs in req.resource_spans
             for ss in rs.scope_spans for sp in ss.spans]
    assert [sp.name for _, sp in spans] == ["execute_tool fs.write"]
    assert {a.key: a.value.string_value for a in spans[0][0].attributes}["service.name"] == "goex-from-settings"
    assert handler.headers_seen and all(h.get("x-team") == "agents" for h in handler.headers_seen)


def test_the_standard_variables_win_over_the_settings(monkeypatch: pytest.MonkeyPatch):
    from goex.telemetry import provider_from_settings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert provider_from_settings("http://127.0.0.1:8", {}, "goex") is None
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert provider_from_settings("http://127.0.0.1:8", {}, "goex") is None
