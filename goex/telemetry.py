"""OpenTelemetry spans mirrored from the journal: one span per action, per undo, per rollback.

Spans follow the semantic conventions where they apply: an action is a tool execution
(`execute_tool <type>`, `gen_ai.operation.name`, `gen_ai.tool.name`, `gen_ai.agent.name`,
`gen_ai.conversation.id`); an adapter adds its domain's attributes and span kind (HTTP and SQL
actions are CLIENT spans with `http.*` / `url.full` / `server.*` and `db.*` attributes); what
has no convention stays under `goex.*`. Refused, failed and malformed actions end with status
ERROR.

With no SDK configured, the API hands out non-recording spans and this costs next to nothing.
Configure a TracerProvider (globally, or pass `tracer_provider=` to `Runtime`), or set the
standard `OTEL_*` variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_EXPORTER=otlp`, ...)
to export them over OTLP with the official exporter (the `otlp` extra).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from .errors import GoexError

if TYPE_CHECKING:
    from .journal.read import Entry

_KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
_configured = threading.Lock()


class TelemetryUnavailable(GoexError):
    """OTLP export is asked for (by `OTEL_*` variables) but its packages are not installed."""


def tracer(provider: Any = None) -> trace.Tracer:
    """goex's tracer: from `provider`, else the global provider, else one exporting over OTLP
    when the `OTEL_*` variables ask for it."""
    if provider is None:
        provider = provider_from_env()
    return trace.get_tracer("goex", __version__, tracer_provider=provider)


def otlp_requested(env: Any = os.environ) -> bool:
    """Whether the standard variables ask for OTLP trace export (and the SDK is not disabled)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return "otlp" in exporters
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_env() -> Any:
    """The process's OTLP-exporting provider when the environment asks for one and no SDK
    provider was set globally; None otherwise (the global provider is used). Made once."""
    if not otlp_requested() or _has_global_sdk_provider():
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                              os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    return _otlp_provider(None, (), os.environ.get("OTEL_SERVICE_NAME", "goex"), protocol)


def provider_from_settings(endpoint: str | None, headers: dict[str, str], service_name: str) -> Any:
    """The OTLP-exporting provider a root's `[telemetry]` settings ask for; None when they name no
    endpoint, or when the `OTEL_*` variables or a global SDK provider decide instead (they win)."""
    if not endpoint or otlp_requested() or _has_global_sdk_provider() \
            or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    url = endpoint.rstrip("/")
    return _otlp_provider(url if url.endswith("/v1/traces") else url + "/v1/traces", tuple(sorted(headers.items())),
                          service_name, "http/protobuf")


_providers: dict[tuple[Any, ...], Any] = {}


def _otlp_provider(endpoint: str | None, headers: tuple[tuple[str, str], ...], service: str, protocol: str) -> Any:
    """One provider per destination, made once per process (flushed and shut down at exit).
    `endpoint` None: the exporter reads the `OTEL_EXPORTER_OTLP_*` variables itself."""
    if protocol != "http/protobuf":
        raise TelemetryUnavailable(f"OTLP protocol {protocol!r} is not supported; goex exports traces "
                                   "over http/protobuf (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)")
    key = (endpoint, headers, service)
    with _configured:
        if key not in _providers:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.resources import Resource
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor
            except ImportError as exc:
                raise TelemetryUnavailable(f"OTLP export is asked for (OTEL_* variables or [telemetry] settings), but "
                                           f"{exc.name} is not installed: pip install 'goex[otlp]'") from None
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            exporter = OTLPSpanExporter(endpoint=endpoint, headers=dict(headers) or None) if endpoint \
                else OTLPSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(exporter))
            _providers[key] = provider
    return _providers[key]


def _has_global_sdk_provider() -> bool:
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def span_kind(name: str) -> SpanKind:
    return _KINDS.get(name, SpanKind.INTERNAL)


def action_span_name(action_type: str | None) -> str:
    return f"execute_tool {action_type}" if action_type else "execute_tool"


def action_attributes(action_type: str, session: str, actor: str) -> dict[str, Any]:
    """The attributes every action span starts with."""
    return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": action_type, "gen_ai.agent.name": actor,
            "gen_ai.conversation.id": session, "goex.action.type": action_type, "goex.session.id": session,
            "goex.actor": actor}


def end_action(span: Any, result: Any, target: str, head_hash: str, domain: dict[str, Any]) -> None:
    """What an action's result adds to its span: the journal's view, the domain's attributes,
    and status ERROR unless it applied."""
    decision = result.decision
    span.set_attributes({
        "goex.action.target": target, "goex.decision": decision.verdict if decision else "allow",
        "goex.entry.id": result.entry_id or "", "goex.status": result.status, "goex.entry.hash": head_hash, **domain,
    })
    if decision and decision.rules:
        span.set_attribute("goex.rules", decision.rules)
    if not result.ok:
        span.set_attribute("goex.error", result.error or "")
        span.set_attribute("error.type", result.status)
        span.set_status(Status(StatusCode.ERROR, result.error or result.status))


def malformed(span: Any, session: str, actor: str, error: str) -> None:
    """A malformed action's span: no tool name is known, nothing was journaled."""
    span.set_attributes({"gen_ai.operation.name": "execute_tool", "gen_ai.agent.name": actor,
                         "gen_ai.conversation.id": session, "goex.session.id": session, "goex.actor": actor,
                         "goex.status": "malformed", "error.type": "malformed", "goex.error": error})
    span.set_status(Status(StatusCode.ERROR, error))


def undo_attributes(entry: "Entry") -> dict[str, Any]:
    return {"goex.entry.id": entry.id, "goex.session.id": entry.session, "goex.action.type": entry.type,
            "goex.action.target": entry.target}


def rollback_attributes(filters: dict[str, Any], force: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {"goex.forced": force}
    if filters.get("session"):
        attrs["goex.session.id"] = filters["session"]
    return attrs
