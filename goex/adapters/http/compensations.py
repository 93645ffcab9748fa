"""Compensations: how to undo a request, declared per route, computed from the actual response.

A route is `METHOD /path/{param}` and a kind:

- `create` (e.g. POST /orders): undo deletes what was created, `undo: DELETE /orders/{response.json.id}`
  (default: DELETE of the `Location` header, else of `<path>/{response.json.id}`);
- `update` (PUT / PATCH /items/{id}): the resource is read first; undo puts that before-image back
  (`undo: PUT /items/{id}` by default), with `If-Match` when the server gives ETags;
- `delete` (DELETE /items/{id}): the resource is read first; undo re-creates it
  (`undo: PUT /items/{id}` by default);
- `irreversible` (POST /payments): no undo exists; the journal says so and the policy decides.

An unsafe request matching no route is irreversible. Declare routes in YAML or JSON
(`Compensations.from_file`), in Python (`Compensations.add`), or derive them for conventional
CRUD resources from an OpenAPI document (`Compensations.from_openapi`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field

from ...errors import GoexError
from ...yamlmodel import line_of, parse_yaml, validate

Kind = Literal["create", "update", "delete", "irreversible"]
KINDS = ("create", "update", "delete", "irreversible")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELD = re.compile(r"\{(response|before)\.(json|headers)((?:\.[A-Za-z0-9_-]+)*)\}")


class RouteSpec(BaseModel):
    """One route of a compensations file."""

    model_config = ConfigDict(extra="forbid", strict=True)
    route: str = Field(description="METHOD /path/{param}, e.g. 'POST /orders'")
    kind: str | None = Field(None, description="create, update, delete or irreversible (default: create with undo)")
    undo: str | None = Field(None, description="The compensating request, e.g. 'DELETE /orders/{response.json.id}'")
    idempotent: bool = True


class RoutesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    routes: list[RouteSpec]


class CompensationError(GoexError):
    """A compensation file or route is malformed."""


def _is_kind(value: str) -> TypeGuard[Kind]:
    return value in KINDS


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    kind: Kind
    undo: str | None = None  # "METHOD /path/{param or response.json.x}"
    idempotent: bool = True  # the server honours idempotency keys: a lost response can be replayed

    @property
    def pattern(self) -> re.Pattern[str]:
        escaped = re.escape(self.template).replace(r"\{", "{").replace(r"\}", "}")
        regex = _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", escaped)
        return re.compile(f"^{regex}/?$")

    def specificity(self) -> tuple[int, int]:
        literal = len(_PARAM.sub("", self.template))
        return (-self.template.count("/"), -literal)


@dataclass
class Compensations:
    routes: list[Route] = field(default_factory=list)

    def add(self, route: str, kind: str, undo: str | None = None, *, idempotent: bool = True) -> "Compensations":
        """Declare a route, e.g. `add("POST /orders", "create", "DELETE /orders/{response.json.id}")`;
        `kind` is one of KINDS."""
        method, template = _split_route(route)
        if not _is_kind(kind):
            raise CompensationError(f"route {route!r}: kind must be one of {', '.join(KINDS)}")
        if undo is not None:
            _split_route(undo)
        self.routes.append(Route(method, template, kind, undo, idempotent))
        self.routes.sort(key=Route.specificity)
        return self

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self.routes:
            if route.method == method:
                m = route.pattern.match(path)
                if m:
                    return route, m.groupdict()
        return None

    # -- sources -------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Compensations":
        """Routes from YAML or JSON: `routes: [{route: "POST /orders", kind: create, undo: ...}]`."""
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise CompensationError(f"cannot read compensations file {path}: {exc.strerror}") from None
        data, root = parse_yaml(text, str(path), CompensationError)
        spec = validate(data if data is not None else {}, root, RoutesFile, str(path), CompensationError)
        out = cls()
        for i, route in enumerate(spec.routes):
            kind = route.kind or ("create" if route.undo else "irreversible")
            try:
                out.add(route.route, kind, route.undo, idempotent=route.idempotent)
            except CompensationError as exc:
                raise CompensationError(f"{path}:{line_of(root, ('routes', i))}: routes[{i}]: {exc}") from None
        return out

    @classmethod
    def from_openapi(cls, document: dict[str, Any] | str | os.PathLike[str]) -> "Compensations":
        """Derive compensations for conventional CRUD resources from an OpenAPI document:
        `POST /x` with `DELETE /x/{id}` creates; `PUT`/`PATCH /x/{id}` with `GET` updates;
        `DELETE /x/{id}` with `GET` and `PUT` deletes (re-created by PUT). Other unsafe
        operations are left out, hence irreversible."""
        spec = document if isinstance(document, dict) else json.loads(Path(document).read_text("utf-8"))
        paths: dict[str, set[str]] = {p: {m.upper() for m in ops} for p, ops in (spec.get("paths") or {}).items()}
        out = cls()
        for path, methods in paths.items():
            item = next((p for p in paths if _is_item_of(p, path)), None)
            if "POST" in methods and item and "DELETE" in paths[item]:
                out.add(f"POST {path}", "create", f"DELETE {path.rstrip('/')}/{{response.json.id}}")
            if _PARAM.search(path.rsplit("/", 1)[-1]) and "GET" in methods:
                for verb in ("PUT", "PATCH"):
                    if verb in methods:
                        out.add(f"{verb} {path}", "update", f"{'PUT' if 'PUT' in methods else 'PATCH'} {path}")
                if "DELETE" in methods and "PUT" in methods:
                    out.add(f"DELETE {path}", "delete", f"PUT {path}")
        return out

    def merged(self, declared: "Compensations") -> "Compensations":
        """These routes, with `declared` ones replacing any for the same method and path."""
        taken = {(r.method, r.template) for r in declared.routes}
        out = Compensations(list(declared.routes) + [r for r in self.routes if (r.method, r.template) not in taken])
        out.routes.sort(key=Route.specificity)  # stable: declared ones stay first among equals
        return out


def _is_item_of(candidate: str, collection: str) -> bool:
    head, _, last = candidate.rstrip("/").rpartition("/")
    return head == collection.rstrip("/") and bool(_PARAM.fullmatch(last))


def _split_route(route: str) -> tuple[str, str]:
    method, _, template = route.strip().partition(" ")
    method, template = method.upper(), template.strip()
    if method not in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE") or not template.startswith("/"):
        raise CompensationError(f"{route!r} is not a route like 'POST /orders/{{id}}'")
    return method, template


def expand(template: str, params: dict[str, str], response: dict[str, Any] | None,
           before: dict[str, Any] | None = None) -> tuple[str, str]:
    """Fill an undo template: path params, `{response.json.a.b}`, `{response.headers.location}`,
    `{before.json.x}`. Raises KeyError naming what is missing."""
    method, path = _split_route(template)

    def field_value(m: re.Match[str]) -> str:
        source = response if m.group(1) == "response" else before
        if source is None:
            raise KeyError(f"{m.group(0)}: no {m.group(1)} was recorded")
        value: Any = source.get(m.group(2))
        for key in m.group(3).strip(".").split(".") if m.group(3) else []:
            if isinstance(value, dict):
                if m.group(2) == "headers":
                    value = {k.lower(): v for k, v in value.items()}.get(key.lower())
                else:
                    value = value.get(key)
            else:
                value = None
        if value is None or isinstance(value, (dict, list)):
            raise KeyError(f"{m.group(0)} is not in the {m.group(1)}")
        return str(value)

    path = _FIELD.sub(field_value, path)
    path = _PARAM.sub(lambda m: params[m.group(1)] if m.group(1) in params else _missing(m.group(0)), path)
    return method, path


def _missing(name: str) -> str:
    raise KeyError(f"{name} is not a path parameter of the route")
