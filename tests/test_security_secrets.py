"""A hostile agent trying to see a secret: through an error text (a header the HTTP library cannot
encode), through an allowed host that reflects the value in some encoding, and through a value
cut at the response size limit. The real example service answers; the checks read everything an
agent or an operator can see: results, errors, journal records and blobs, span attributes."""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import secrets
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, quote_plus, unquote_plus

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import goex
from goex.adapters.http.secrets import Secret
from goex.service import serve

SEED = {"orders": [], "items": [], "emails": [], "payments": []}


@pytest.fixture(scope="module")
def service():
    with serve() as base:
        yield base


@pytest.fixture
def base(service: str) -> str:
    httpx.post(service + "/admin/reset", json=SEED).raise_for_status()
    httpx.delete(service + "/admin/faults").raise_for_status()
    return service


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def runtime(root: Path, base: str, exporter: InMemorySpanExporter, values: dict[str, str],
            max_response_bytes: int = 1 << 20) -> goex.Runtime:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = goex.SecretStore({name: Secret(value) for name, value in values.items()})
    http = goex.HttpConfig(allow_hosts=[httpx.URL(base).host], secrets=store, max_response_bytes=max_response_bytes)
    return goex.Runtime(root, policy="permissive", http=http, tracer_provider=provider)


# -- what an observer can recover from a text ---------------------------------------------------------


def revealed(text: str, secret: str) -> list[str]:
    """The decodings of `text` that show `secret`: as it is in any case, %-decoded, HTML- or
    JSON-unescaped, or inside a hex or base64/base64url run at any alignment."""
    found = []
    views = {"raw, any case": text.lower(), "url": unquote_plus(text).lower(),
             "html": html.unescape(text).lower(), "json \\u": _json_unescape(text).lower()}
    found += [name for name, view in views.items() if secret.lower() in view]
    raw = secret.encode("utf-8")
    for run in re.findall(r"[0-9a-fA-F]{8,}", text):
        if any(raw in _unhex(run[i:]) for i in (0, 1)):
            found.append("hex")
    for run in re.findall(r"[A-Za-z0-9+/_-]{6,}", text):
        std = run.replace("-", "+").replace("_", "/")
        if any(raw in _unb64(std[i:]) for i in range(4)):
            found.append("base64")
    return found


def _json_unescape(text: str) -> str:
    units = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    return units.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _unhex(run: str) -> bytes:
    return binascii.unhexlify(run[: len(run) // 2 * 2])


def _unb64(run: str) -> bytes:
    run = run[: len(run) - (len(run) % 4 == 1)]  # a lone last character holds no whole byte
    return base64.b64decode(run + "=" * (-len(run) % 4), validate=False)


def strings(obj: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from strings(value)


def journal_texts(rt: goex.Runtime) -> Iterator[str]:
    for _, body, _ in rt.journal.records():
        yield body
        yield from strings(json.loads(body))
    for (digest,) in rt.journal.raw().execute("SELECT hash FROM blobs"):
        yield rt.journal.read_blob(digest).decode("utf-8", "replace")


def span_texts(exporter: InMemorySpanExporter) -> Iterator[str]:
    for span in exporter.get_finished_spans():
        yield span.name
        yield span.status.description or ""
        yield from strings(dict(span.attributes or {}))
        for event in span.events:
            yield from strings(dict(event.attributes or {}))


def leaks(secret: str, *sources: Iterator[str] | list[str]) -> list[tuple[str, list[str]]]:
    return [(text[:120], how) for source in sources for text in source if (how := revealed(text, secret))]


# -- finding 7: a secret in an error text ---------------------------------------------------------------


def test_a_header_the_library_cannot_encode_is_malformed_and_quotes_no_secret(root: Path, base: str, exporter):
    value = "tok-" + secrets.token_hex(12)
    with runtime(root, base, exporter, {"T": value}) as rt:
        s = rt.session()
        with pytest.raises(goex.ActionError) as refused:
            s.execute({"type": "http.request", "method": "POST", "url": base + "/emails",
                       "headers": {"X-Note": "{{secret:T}} \u2603"},
                       "json": {"to": "a@example.com", "subject": "hi", "body": "x"}})
        assert "header 'X-Note'" in str(refused.value)
        assert leaks(value, [str(refused.value), repr(refused.value)], journal_texts(rt), span_texts(exporter)) == []
        assert rt.journal.head()[0] == 0  # nothing journaled, nothing sent
    assert httpx.get(base + "/state").json()["emails"] == []


@pytest.mark.parametrize("value", ["p\u00e4sswort-" + secrets.token_hex(8), "tok-" + secrets.token_hex(8) + "\r\nX-Evil: 1"])
def test_a_secret_whose_value_cannot_go_in_a_header_fails_by_name_not_by_value(root: Path, base: str, exporter, value):
    with runtime(root, base, exporter, {"T": value}) as rt:
        s = rt.session()
        result = s.execute({"type": "http.request", "method": "POST", "url": base + "/emails",
                            "headers": {"Authorization": "Bearer {{secret:T}}"},
                            "json": {"to": "a@example.com", "subject": "hi", "body": "x"}})
        assert not result.ok and "secret T" in result.error
        assert leaks(value.split("\r")[0], [result.error or "", json.dumps(result.to_json())],
                     journal_texts(rt), span_texts(exporter)) == []
        rt.verify()
    assert httpx.get(base + "/state").json()["emails"] == []  # never sent


# -- finding 8: a secret reflected in another encoding --------------------------------------------------


def reflections(value: str) -> dict[str, str]:
    """The secret as a server may hand it back: every encoding an agent could decode."""
    raw = value.encode("utf-8")
    b64, b64url = base64.b64encode, base64.urlsafe_b64encode
    return {
        "raw": value, "upper": value.upper(), "lower": value.lower(), "swapped": value.swapcase(),
        "url": quote(value, safe=""), "url plus": quote_plus(value), "url lower": quote(value, safe="").lower(),
        "hex": raw.hex(), "HEX": raw.hex().upper(),
        "base64": b64(raw).decode(), "base64url": b64url(raw).decode(),
        "base64 at 1": b64(b"u" + raw + b"!").decode(), "base64 at 2": b64(b"us" + raw + b"er").decode(),
        "base64url at 1": b64url(b"\xfb" + raw).decode(), "base64url at 2": b64url(b"\xfb\xff" + raw + b"\xfe").decode(),
        "html decimal": "".join(f"&#{ord(c)};" for c in value),
        "html hex": "".join(f"&#X{ord(c):X};" for c in value),
        "html named": html.escape(value, quote=True),
        "html mixed": "".join(f"&#x{ord(c):x};" if i % 2 else c for i, c in enumerate(value)),
        "json escapes": "".join(f"\\u{ord(c):04x}" for c in value),
        "json ascii": json.dumps(value),
    }


def test_a_secret_reflected_in_any_encoding_is_redacted_everywhere(root: Path, base: str, exporter):
    value = "Tk/" + secrets.token_hex(10) + "+&<\u00e9 x"
    forms = reflections(value)
    for name, form in forms.items():  # the detector itself can see every planted form
        assert revealed(f"pre {form} post", value), name
    # the allowed host holds the token in every encoding (a debug page, an audit log, a profile)
    emails = [{"id": f"eml_{i}", "to": "ops@example.com", "subject": name, "body": f"key={form};"}
              for i, (name, form) in enumerate(forms.items())]
    httpx.post(base + "/admin/reset", json={**SEED, "emails": emails,
                                            "items": [{"id": "itm_1", "name": forms["base64 at 2"], "price": 1.0,
                                                       "stock": 1}]}).raise_for_status()
    with runtime(root, base, exporter, {"T": value}) as rt:
        s = rt.session()
        listed = s.execute({"type": "http.request", "method": "GET", "url": base + "/emails"})
        assert listed.ok and len(listed.output["body"]) == len(forms)
        assert {e["subject"] for e in listed.output["body"]} == set(forms)  # the rest of the data is intact
        assert all(e["body"].startswith("key=") for e in listed.output["body"])
        state = s.execute({"type": "http.request", "method": "GET", "url": base + "/state"})
        # an update journals the resource's before-image; it held the secret base64-encoded
        put = s.execute({"type": "http.request", "method": "PUT", "url": base + "/items/itm_1",
                         "json": {"name": "pen", "price": 2.0, "stock": 3}})
        assert put.ok
        seen = [*strings(listed.to_json()), *strings(state.to_json()), *strings(put.to_json())]
        assert leaks(value, seen, journal_texts(rt), span_texts(exporter)) == []
        assert "{{secret:T}}" in json.dumps(listed.output)
        rt.verify()


def test_a_secret_cut_at_the_response_limit_leaks_no_prefix(root: Path, base: str, exporter):
    value = "Zq9" + secrets.token_hex(12)
    limit = 1500
    with runtime(root, base, exporter, {"T": value}, max_response_bytes=limit) as rt:
        s = rt.session()

        def echo(body: str) -> goex.Result:
            return s.execute({"type": "http.request", "method": "POST", "url": base + "/echo",
                              "headers": {"Content-Type": "text/plain"}, "body": body})

        probe = echo("P" * 3000)
        assert probe.ok and probe.output["truncated"]
        start = probe.output["body"].index("PPPP")  # where the echoed body begins in the response
        cut_inside = 0
        for before_limit in range(0, len(value) + 2):  # the value starts this many bytes before the cut
            result = echo("P" * (limit - start - before_limit) + "{{secret:T}}")
            assert result.ok and result.output["truncated"]
            text = result.output["body"]
            assert value[:3] not in text, (before_limit, text[-40:])
            if 0 < before_limit < len(value):
                assert text.endswith("{{secret:T}}"), text[-40:]
                cut_inside += 1
        assert cut_inside == len(value) - 1
        assert leaks(value, journal_texts(rt), span_texts(exporter)) == []
