"""Which adapter handles which actions: the shipped domains, and any package's, found through the
`goex.adapters` entry point group (`<prefix> = "package.module:AdapterClass"`).

A domain's action models and preview model are light (pydantic models) and load when actions are
parsed or a policy is checked; its adapter class loads when a runtime first acts in it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import GoexError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .base import Adapter

GROUP = "goex.adapters"

# prefix -> (module with ACTIONS and PREVIEW, "module:Adapter class", runtime settings it reads)
_SHIPPED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fs": ("goex.adapters.fs.actions", "goex.adapters.fs.adapter:FileAdapter", ()),
    "http": ("goex.adapters.http.actions", "goex.adapters.http.adapter:HttpAdapter", ("http",)),
    "sql": ("goex.adapters.sql.actions", "goex.adapters.sql.adapter:SqlAdapter", ("databases",)),
    "code": ("goex.adapters.code.actions", "goex.adapters.code.adapter:CodeAdapter", ("sandbox",)),
    "tool": ("goex.custom", "goex.custom:ToolAdapter", ("tools",)),  # a runtime's own tools: types open
}


@dataclass(frozen=True)
class Domain:
    """One action prefix: its action models, its preview model and (loaded on demand) its adapter."""

    prefix: str
    actions: "tuple[type[BaseModel], ...]"
    preview: "type[BaseModel]"
    load: "Callable[[], type[Adapter]]"
    settings: tuple[str, ...] = ()  # runtime settings it reads: given, the adapter is made at start
    source: str = "goex"

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(m.model_fields["type"].default for m in self.actions)


_lock = threading.Lock()
_domains: dict[str, Domain] | None = None


def domains() -> dict[str, Domain]:
    """Every domain by prefix: the shipped ones, then those of installed packages."""
    global _domains
    with _lock:
        if _domains is None:
            found = {prefix: _shipped(prefix, *spec) for prefix, spec in _SHIPPED.items()}
            for domain in _installed():
                if domain.prefix in found:
                    if found[domain.prefix].source != domain.source:
                        raise GoexError(f"the adapter {domain.source} takes the prefix {domain.prefix!r}, which "
                                        f"{found[domain.prefix].source} has; uninstall one of them")
                    continue
                found[domain.prefix] = domain
            _domains = found
        return _domains


def refresh() -> None:
    """Look for installed adapters again (after installing one in a running process)."""
    global _domains
    with _lock:
        _domains = None
    from .. import actions

    actions.forget()


def domain_of(action_type: str) -> Domain:
    prefix = action_type.split(".", 1)[0]
    try:
        return domains()[prefix]
    except KeyError:
        raise GoexError(f"no adapter handles {action_type!r}; known prefixes: {', '.join(domains())}") from None


def action_types() -> tuple[str, ...]:
    return tuple(t for d in domains().values() for t in d.types)


def _shipped(prefix: str, actions_module: str, adapter: str, settings: tuple[str, ...]) -> Domain:
    module = importlib.import_module(actions_module)
    return Domain(prefix, module.ACTIONS, module.PREVIEW, lambda: _load(adapter), settings)


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _loaded(cls: "type[Adapter]") -> "Callable[[], type[Adapter]]":
    return lambda: cls


def _installed() -> list[Domain]:
    from importlib.metadata import entry_points

    out = []
    for ep in entry_points(group=GROUP):
        if ep.value.startswith("goex."):
            continue  # the shipped domains, declared for discovery; loaded above without the scan's cost
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in is named, never half-loaded
            raise GoexError(f"the adapter {ep.name} = {ep.value!r} (entry point group {GROUP}) cannot be "
                            f"loaded: {type(exc).__name__}: {exc}") from None
        prefix = getattr(cls, "prefix", None)
        if prefix != ep.name or not getattr(cls, "actions", None):
            raise GoexError(f"the adapter {ep.value!r} is registered as {ep.name!r} but declares prefix "
                            f"{prefix!r}; an adapter sets prefix = {ep.name!r} and its action models in `actions`")
        out.append(Domain(prefix, tuple(cls.actions), cls.preview, _loaded(cls),
                          tuple(getattr(cls, "settings", ())), ep.value))
    return out
