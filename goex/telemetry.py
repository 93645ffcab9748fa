"""OpenTelemetry spans mirrored from the journal: one span per action and per undo.

With no SDK configured, the API hands out non-recording spans and this costs next to nothing.
Configure a TracerProvider (globally, or pass `tracer_provider=` to `Runtime`) to export them.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from . import __version__


def tracer(provider: Any = None) -> trace.Tracer:
    return trace.get_tracer("goex", __version__, tracer_provider=provider)
