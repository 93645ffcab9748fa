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

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote, quote_plus

import yaml

from ...errors import GoexError

PLACEHOLDER = re.compile(r"\{\{secret:([A-Za-z_][A-Za-z0-9_]*)\}\}")
_ENV_PREFIX = "GOEX_SECRET_"
#: Secret values shorter than this are not searched for written out in requests (too many false alarms).
MIN_LITERAL = 8


class SecretRefused(GoexError):
    """A placeholder names an unknown secret, or one not bound to the request's host."""

    rule = "http.secret-binding"

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"secret {name!r} refused: {reason}")


@dataclass(frozen=True)
class Secret:
    value: str
    hosts: frozenset[str] = frozenset()  # empty: any host the runtime allows


@dataclass
class SecretStore:
    secrets: dict[str, Secret] = field(default_factory=dict)

    @classmethod
    def default(cls, file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> "SecretStore":
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
            data = yaml.safe_load(Path(path).read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise GoexError(f"cannot read the secrets file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise GoexError(f"{path}: a secrets file maps NAME to a value or to {{value, hosts}}")
        secrets = {}
        for name, spec in data.items():
            if isinstance(spec, dict):
                value, hosts = spec.get("value"), spec.get("hosts") or []
            else:
                value, hosts = spec, []
            if not isinstance(value, str) or not value:
                raise GoexError(f"{path}: secret {name!r} needs a non-empty string value")
            secrets[str(name)] = Secret(value, frozenset(str(h).lower() for h in hosts))
        return cls(secrets)

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

    def _forms(self) -> list[tuple[str, str]]:
        """(encoded value, placeholder), longest first so no secret is half-redacted by another."""
        forms = {(form, f"{{{{secret:{name}}}}}")
                 for name, secret in self.secrets.items()
                 for form in (secret.value, quote(secret.value, safe=""), quote(secret.value), quote_plus(secret.value))
                 if form}
        return sorted(forms, key=lambda f: -len(f[0]))

    def redact(self, text: str) -> str:
        """Every secret value (raw or URL-encoded) back to its placeholder."""
        for form, placeholder in self._forms():
            if form in text:
                text = text.replace(form, placeholder)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        for form, placeholder in self._forms():
            encoded = form.encode("utf-8")
            if encoded in data:
                data = data.replace(encoded, placeholder.encode())
        return data

    def redact_json(self, obj: Any) -> Any:
        return _map_strings(obj, self.redact)


def _map_strings(obj: Any, fn: Any) -> Any:
    """`obj` with `fn` applied to every string in it, keys included."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_strings(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {fn(str(k)): _map_strings(v, fn) for k, v in obj.items()}
    return obj
