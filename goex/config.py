"""Per-root settings: `<journal folder>/config.toml` (by default `ROOT/.goex/config.toml`).

`goex init` writes it; `Runtime.open(root)`, every CLI command and `goex mcp` read it, and what
is given explicitly (keyword arguments, flags) overrides it. The file lives in the journal folder,
which no action can reach, so an agent cannot change the settings that confine it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import GoexError

FILE_NAME = "config.toml"


class HttpSettings(BaseModel):
    """What `http.request` may reach, and how its effects are undone."""

    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list, description="hosts (`name` or `name:port`) reachable")
    openapi: str | None = Field(default=None, description="OpenAPI document to derive CRUD compensations from")
    compensations: str | None = Field(default=None, description="compensation routes (YAML or JSON)")
    secrets: str | None = Field(default=None, description="secrets file (YAML)")


class TelemetrySettings(BaseModel):
    """Where traces go (OTLP over HTTP, the `otlp` extra). The standard `OTEL_*` variables, when
    set, win over these."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(default=None, description="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    headers: dict[str, str] = Field(default_factory=dict, description="headers sent with each export")
    service_name: str = Field(default="goex", description="the service.name resource attribute")


class Settings(BaseModel):
    """The settings of one root. Relative file paths are relative to the root; a file kept in
    the journal folder (`.goex/secrets.yaml`) is out of every action's reach."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(default="default", description="shipped pack name or YAML path")
    protected: list[str] = Field(default_factory=list, description="path globs no action may change")
    databases: dict[str, str] = Field(default_factory=dict, description="names for sql.execute -> URLs")
    http: HttpSettings = Field(default_factory=lambda: HttpSettings())
    sandbox: Literal["auto", "docker", "bwrap", "process"] = "auto"
    durability: Literal["fsync", "process"] = "fsync"
    telemetry: TelemetrySettings = Field(default_factory=lambda: TelemetrySettings())

    def runtime_options(self, root: Path) -> dict[str, Any]:
        """Keyword arguments of `Runtime` these settings stand for."""
        from .adapters.http.adapter import HttpConfig

        def path(value: str | None) -> str | None:
            return None if not value else str(value if os.path.isabs(value) else root / value)

        policy = path(self.policy) if self.policy.endswith((".yaml", ".yml")) else self.policy
        http = HttpConfig(allow_hosts=list(self.http.allow_hosts), openapi=path(self.http.openapi),
                          compensations=path(self.http.compensations), secrets=path(self.http.secrets))
        options = {"policy": policy, "protected": list(self.protected), "databases": dict(self.databases),
                   "http": http, "sandbox": self.sandbox, "durability": self.durability}
        if self.telemetry.endpoint:
            from .telemetry import provider_from_settings

            provider = provider_from_settings(self.telemetry.endpoint, self.telemetry.headers,
                                              self.telemetry.service_name)
            if provider is not None:
                options["tracer_provider"] = provider
        return options


def settings_file(root: str | os.PathLike[str], journal: str | os.PathLike[str] | None = None) -> Path:
    """Where the settings of `root` live: in its journal folder."""
    return (Path(journal) if journal is not None else Path(root) / ".goex") / FILE_NAME


def load_settings(root: str | os.PathLike[str], journal: str | os.PathLike[str] | None = None) -> Settings:
    """The settings of `root`; the defaults when it has no settings file."""
    file = settings_file(root, journal)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError) as exc:
        raise GoexError(f"cannot read the settings file {file}: {exc}") from None
    try:
        return Settings.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise GoexError(f"the settings file {file} is not valid TOML: {exc}; fix it or write it again "
                        "with `goex init --force`") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise GoexError(f"the settings file {file} is not valid: {problems}") from None


def write_settings(settings: Settings, root: str | os.PathLike[str], journal: str | os.PathLike[str] | None = None,
                   *, replace: bool = False) -> Path:
    """Write `settings` for `root`; refuses to replace an existing file unless `replace`."""
    import tomli_w

    file = settings_file(root, journal)
    if file.exists() and not replace:
        raise GoexError(f"{file} exists already; edit it, or write it again with `goex init --force`")
    file.parent.mkdir(parents=True, exist_ok=True)
    data = settings.model_dump(exclude_none=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(_HEADER + tomli_w.dumps(data), encoding="utf-8")
    os.replace(tmp, file)
    return file


_HEADER = """\
# goex settings of this root, read by the goex CLI, `goex mcp` and goex.Runtime.open(root).
# Flags and keyword arguments override them. Relative paths are relative to the root; files kept
# in this folder (the journal folder) are out of every action's reach.
"""
