"""Credentials the agent never sees: `{{secret:NAME}}` placeholders filled at send time.

Sources, later ones overriding earlier ones:

- environment variables `GOEX_SECRET_<NAME>=value`, bound to hosts by
  `GOEX_SECRET_<NAME>_HOSTS=api.example.com,127.0.0.1` (unbound: any host the runtime allows);
- a YAML file: `NAME: value` or `NAME: {value: ..., hosts: [api.example.com]}`.

A secret is only ever sent to the hosts it is bound to; every value is redacted (back to its
placeholder) from anything goex records or returns. A value written out in a request (an agent
that read it somewhere and pasted it) counts as the secret too: it may only go where the secret
may. Values shorter than `MIN_LITERAL` characters are not looked for, as they turn up by chance.
"""

from __future__ import annotations

import base64
import html.entities
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, quote_plus

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ...errors import GoexError, Refused
from ...yamlmodel import parse_yaml, validate

PLACEHOLDER = re.compile(r"\{\{secret:([A-Za-z_][A-Za-z0-9_]*)\}\}")
_ENV_PREFIX = "GOEX_SECRET_"
#: Secret values shorter than this are not searched for written out in requests (too many false alarms).
MIN_LITERAL = 8


class SecretSpec(BaseModel):
    """One secret of a secrets file: `NAME: value` or `NAME: {value, hosts}`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    value: str = Field(min_length=1, description="The secret's value")
    hosts: list[str] = Field(default_factory=list, description="Hosts it may be sent to (none: any allowed host)")


class SecretsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    secrets: dict[str, SecretSpec]


def _under(key: str, root: Any) -> Any:
    """The YAML tree as if it sat under `key` (a file whose top level is a model's field)."""
    return yaml.MappingNode("tag:yaml.org,2002:map", [(yaml.ScalarNode("tag:yaml.org,2002:str", key), root)],
                            root.start_mark, root.end_mark) if root is not None else None


class SecretRefused(Refused):
    """A placeholder names an unknown secret, or one not bound to the request's host."""

    rule = "http.secret-binding"

    def __init__(self, name: str, reason: str):
        self.name = name
        super().__init__(reason, f"secret {name!r} refused: {reason}")


@dataclass(frozen=True)
class Secret:
    value: str
    hosts: frozenset[str] = frozenset()  # empty: any host the runtime allows


@dataclass
class SecretStore:
    secrets: dict[str, Secret] = field(default_factory=dict)
    _compiled: "_Redactor | None" = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def default(cls, file: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> "SecretStore":
        store = cls.from_env(environ)
        if file is not None:
            store.secrets.update(cls.from_file(file).secrets)
        return store

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SecretStore":
        env = os.environ if environ is None else environ
        secrets = {}
        for key, value in env.items():
            if key.startswith(_ENV_PREFIX) and not key.endswith("_HOSTS") and value:
                name = key[len(_ENV_PREFIX):]
                hosts = env.get(f"{key}_HOSTS", "")
                secrets[name] = Secret(value, frozenset(h.strip().lower() for h in hosts.split(",") if h.strip()))
        return cls(secrets)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "SecretStore":
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise GoexError(f"cannot read the secrets file {path}: {exc.strerror}") from None
        data, root = parse_yaml(text, str(path))
        if data is not None and not isinstance(data, dict):
            raise GoexError(f"{path}:1: a secrets file maps NAME to a value or to {{value, hosts}}")
        entries = {str(k): v if isinstance(v, dict) else {"value": v} for k, v in (data or {}).items()}
        spec = validate({"secrets": entries}, _under("secrets", root), SecretsFile, str(path))
        return cls({name: Secret(s.value, frozenset(h.lower() for h in s.hosts)) for name, s in spec.secrets.items()})

    def names_in(self, texts: Iterable[str]) -> list[str]:
        return sorted({m.group(1) for t in texts for m in PLACEHOLDER.finditer(t)})

    def literals_in(self, texts: Iterable[str]) -> list[str]:
        """Names of the secrets whose value is written out in `texts`, as it is or URL-encoded.
        Values shorter than MIN_LITERAL characters are not looked for."""
        texts = [t for t in texts if t]
        found = set()
        for name, secret in self.secrets.items():
            value = secret.value
            if len(value) < MIN_LITERAL:
                continue
            forms = {value, quote(value, safe=""), quote(value), quote_plus(value)}
            if any(form in text for text in texts for form in forms):
                found.add(name)
        return sorted(found)

    def check(self, names: Iterable[str], host: str, *, written_out: Iterable[str] = ()) -> None:
        """Refuse unless every named secret exists and may go to `host`. `written_out` names
        secrets whose value the request holds literally; they are bound the same way. The
        refusal names the secret, never its value."""
        pasted = set(written_out)
        for name in sorted(set(names) | pasted):
            secret = self.secrets.get(name)
            if secret is None:
                raise SecretRefused(name, f"no such secret; set {_ENV_PREFIX}{name} or add it to the secrets file")
            if secret.hosts and host.lower() not in secret.hosts:
                how = (f"the request holds its value written out (not as {{{{secret:{name}}}}}), and "
                       if name in pasted and name not in names else "")
                raise SecretRefused(name, f"{how}it is bound to {', '.join(sorted(secret.hosts))}, not {host}")

    def fill(self, text: str) -> str:
        return PLACEHOLDER.sub(lambda m: self.secrets[m.group(1)].value, text)

    def fill_url(self, url: str) -> str:
        """Fill placeholders percent-encoded, so a value can never change the URL's structure."""
        return PLACEHOLDER.sub(lambda m: quote(self.secrets[m.group(1)].value, safe=""), url)

    def fill_json(self, obj: Any) -> Any:
        return _map_strings(obj, self.fill)

    def redact(self, text: str) -> str:
        """Every secret value, in any encoding a server may echo it in, back to its placeholder."""
        return _redactor(self).text.sub(self._placeholder, text) if self.secrets else text

    def redact_bytes(self, data: bytes) -> bytes:
        return _redactor(self).data.sub(self._placeholder_bytes, data) if self.secrets else data

    def redact_json(self, obj: Any) -> Any:
        """`obj` with every secret value in its strings (keys included) back to its placeholder;
        `obj` itself when there are no secrets (every caller passes a value of its own making)."""
        return _map_strings(obj, self.redact) if self.secrets else obj

    def redact_prefix(self, data: bytes, limit: int) -> bytes:
        """The first `limit` bytes of `data`, redacted as part of the whole: read `data` at least
        `margin()` bytes past the limit, so a value cut at the limit is matched whole and goes as
        its placeholder; nothing of a match starting at or after the limit is kept."""
        if not self.secrets:
            return data[:limit]
        out, pos = bytearray(), 0
        for m in _redactor(self).data.finditer(data):
            if m.start() >= limit:
                break
            out += data[pos:m.start()] + self._placeholder_bytes(m)
            pos = m.end()
        if pos < limit:
            out += data[pos:limit]
        return bytes(out)

    def margin(self) -> int:
        """The longest match the redaction can make: read this far past a cut."""
        return _redactor(self).longest

    def _placeholder(self, match: re.Match[str] | re.Match[bytes]) -> str:
        group = match.lastindex
        if group is None:  # each secret is a group of the alternation: every match has one
            raise ValueError("a redaction match names no secret")
        return f"{{{{secret:{_redactor(self).names[group - 1]}}}}}"

    def _placeholder_bytes(self, match: re.Match[bytes]) -> bytes:
        return self._placeholder(match).encode()


@dataclass(frozen=True)
class _Redactor:
    """One compiled alternation per secret set, for text and for bytes; `names[i]` is the secret
    matched by capture group i + 1. Every branch starts with a literal character, so the regex
    engine skips ahead to the characters a match can start with (fast on text holding no secret)."""

    key: tuple[tuple[str, str], ...]
    names: tuple[str, ...]
    text: re.Pattern[str]
    data: re.Pattern[bytes]
    longest: int


def _redactor(store: SecretStore) -> _Redactor:
    key = tuple(sorted((name, s.value) for name, s in store.secrets.items() if s.value))
    cached = store._compiled
    if cached is None or cached.key != key:
        by_first: dict[str, list[tuple[str, str]]] = {}
        for name, value in sorted(key, key=lambda item: -len(item[1])):  # a longer value wins over one it holds
            for first, rest in _encodings(value):
                by_first.setdefault(first, []).append((name, rest))
        names = tuple(name for branches in by_first.values() for name, _ in branches)
        pattern = "|".join(re.escape(first) + "(?:" + "|".join(f"({rest})" for _, rest in branches) + ")"
                           for first, branches in by_first.items())
        cached = _Redactor(key, names, re.compile(pattern), re.compile(_utf8(pattern)),
                           max((_MAX_UNIT * len(_utf8(value)) for _, value in key), default=0))
        store._compiled = cached
    return cached


#: the longest form one byte of a value takes in any encoding matched (e.g. `&#x0000FF;`)
_MAX_UNIT = 16
_HTML_NAMES = {chr(cp): name for cp, name in html.entities.codepoint2name.items()} | {"'": "apos"}
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


def _encodings(value: str) -> list[tuple[str, str]]:
    """(first character, rest as a regex) of each way `value` may come back: each character raw
    in either case, %-encoded, as an HTML entity or a JSON escape, in any mix; and, when long
    enough not to match by chance, as hex and as base64/base64url at each of the 3 byte offsets
    inside a longer encoded string."""
    rest = "".join(_char_regex(c) for c in value[1:])
    out = [(first, head + rest) for first, head in _char_forms(value[0])]
    raw = _utf8(value)
    if len(value) >= MIN_LITERAL:
        hexed = raw.hex()
        out += [(first, _any_case(hexed[1:])) for first in _cases(hexed[0])]
        for alphabet in (base64.b64encode, base64.urlsafe_b64encode):
            for offset in range(3):
                encoded = alphabet(bytes(offset) + raw).rstrip(b"=").decode("ascii")
                inner = encoded[-(-8 * offset // 6):(8 * (offset + len(raw))) // 6]  # characters of value bits only
                out.append((inner[0], re.escape(inner[1:])))
    return out


def _char_regex(c: str) -> str:
    return "(?:" + "|".join(re.escape(first) + rest for first, rest in _char_forms(c)) + ")"


def _char_forms(c: str) -> list[tuple[str, str]]:
    """(first character, rest as a regex) of each way one character may be written."""
    code = ord(c)
    forms = [(variant, "") for variant in _cases(c)]
    forms.append(("%", _any_case("%".join(f"{b:02x}" for b in _utf8(c)))))
    forms.append(("&", f"#0{{0,4}}{code};?"))
    forms.append(("&", f"#[xX]0{{0,4}}{_any_case(f'{code:x}')};?"))
    if c in _HTML_NAMES:
        forms.append(("&", re.escape(_HTML_NAMES[c] + ";")))
    if c == " ":
        forms.append(("+", ""))
    if c in _JSON_SHORT:
        forms.append(("\\", re.escape(_JSON_SHORT[c])))
    units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
    forms.append(("\\", r"\\".join("u" + _any_case(f"{u:04x}") for u in units)))
    return forms


def _cases(c: str) -> list[str]:
    """`c` and its other-case forms that are single characters."""
    return sorted({v for v in (c, c.lower(), c.upper(), c.swapcase()) if len(v) == 1})


def _any_case(literal: str) -> str:
    """A regex matching `literal` with its ASCII letters in either case (hex digits, mostly)."""
    return "".join(f"[{ch.lower()}{ch.upper()}]" if ch.isascii() and ch.isalpha() else re.escape(ch)
                   for ch in literal)


def _utf8(text: str) -> bytes:
    """UTF-8, with the raw bytes of undecodable environment values (surrogate escapes) kept."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _map_strings(obj: Any, fn: Any) -> Any:
    """`obj` with `fn` applied to every string in it, keys included."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_strings(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {fn(str(k)): _map_strings(v, fn) for k, v in obj.items()}
    return obj
