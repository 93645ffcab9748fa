"""One OpenTelemetry span per action, with type, target, decision, entry id and session."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import goex


def test_one_span_per_action_with_journal_attributes(root: Path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with goex.Runtime(root, tracer_provider=provider) as rt:
        s = rt.session(actor="bot")
        ok = s.execute({"type": "fs.write", "path": "a.txt", "content": "x"})
        denied = s.execute({"type": "fs.write", "path": ".git/config", "content": "x"})
        s.execute({"type": "fs.read", "path": "a.txt"})
        s.undo()
        head = rt.verify().head_hash
    spans = exporter.get_finished_spans()
    assert [sp.name for sp in spans] == ["goex fs.write", "goex fs.write", "goex fs.read", "goex undo"]
    first, second = spans[0].attributes, spans[1].attributes
    assert first["goex.action.type"] == "fs.write" and first["goex.action.target"] == "a.txt"
    assert first["goex.entry.id"] == ok.entry_id and first["goex.session.id"] == s.id
    assert first["goex.decision"] == "allow" and first["goex.status"] == "applied"
    assert second["goex.decision"] == "deny" and second["goex.entry.id"] == denied.entry_id
    assert list(second["goex.rules"]) == ["fs.git-internals"]
    assert spans[3].attributes["goex.entry.id"] == ok.entry_id and spans[3].attributes["goex.status"] == "undone"
    assert len(first["goex.entry.hash"]) == 64 and head != first["goex.entry.hash"]


def test_no_sdk_configured_still_works(root: Path):
    with goex.Runtime(root) as rt:
        assert rt.session().execute({"type": "fs.write", "path": "a", "content": "x"}).ok
