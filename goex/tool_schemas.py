"""Tool definitions for tool-calling APIs, one per action type, in the forms their strict modes
accept; and the way back from a tool call to a goex action.

The action models' JSON Schema has what strict modes refuse (optional properties, free-form
maps, values of any type, `default`, length limits), so each tool's parameters are a strict
rewrite of it: every property required (those with a default are nullable: null means the
default), every object closed (`additionalProperties: false`), a map of strings as a list of
`{"key", "value"}` pairs, a free JSON value as JSON text, SQL parameters as scalars. Then each
format keeps only the keywords its API documents:

- `openai`: Chat Completions `{"type": "function", "function": {..., "strict": true}}`
- `anthropic`: Messages `{"name", "description", "input_schema", "strict": true}`
- `gemini`: a `functionDeclarations` entry (the OpenAPI subset: upper-case types, `nullable`)
- `mcp`: `{"name", "description", "inputSchema"}` as `tools/list` returns them

`action_from_call(name, arguments)` turns a call of any of them back into the action.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Literal

from .errors import ActionError

Format = Literal["openai", "anthropic", "gemini", "mcp"]
FORMATS: tuple[str, ...] = ("openai", "anthropic", "gemini", "mcp")
UNION_TOOL = "goex_action"

Decode = Callable[[Any], Any]
_SCALAR: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]}
_KEEP = ("description", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems")


@dataclass(frozen=True)
class ToolSpec:
    """One action type as a strict tool: its name, description, parameters and decoder."""

    name: str
    action_type: str
    description: str
    parameters: dict[str, Any]
    decode: Decode


def tool_name(action_type: str) -> str:
    """`fs.write` -> `fs_write` (names tool APIs accept: letters, digits, `_`)."""
    return action_type.replace(".", "_")


def specs(extra: dict[str, dict[str, Any]] | None = None) -> list[ToolSpec]:
    """Every action type as a strict tool, sorted by name; `extra`: more action schemas by type
    (a runtime's custom tools). Built once per set of action types."""
    from .actions import schema_version

    return list(_specs(schema_version(), json.dumps(extra or {}, default=str)))


@functools.lru_cache(maxsize=16)
def _specs(version: int, extra_json: str) -> tuple[ToolSpec, ...]:
    from .actions import action_schema

    schema, extra = action_schema(), json.loads(extra_json)
    defs = schema.get("$defs", {})
    models = {m["properties"]["type"]["const"]: m for m in defs.values() if "const" in m.get("properties", {})
              .get("type", {})}
    models.update(extra)
    out = []
    for action_type, model in models.items():
        params, decode = _object(model, defs, top=True, skip=("type",))
        out.append(ToolSpec(tool_name(action_type), action_type, _describe(model), params, decode))
    return tuple(sorted(out, key=lambda s: s.name))


def tools(format: str = "openai", *, union: bool = False,
          extra: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Tool definitions for `format` ('openai', 'anthropic', 'gemini' or 'mcp'): one per action
    type, or (`union`) one tool, `goex_action`, taking any action as `{"action": {"type": ...}}`."""
    if format not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}; got {format!r}")
    found = specs(extra)
    if union:
        found = [_union(found)]
    return copy.deepcopy([_render(format, s.name, s.description, s.parameters) for s in found])


def action_from_call(name: str, arguments: Any, extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The goex action a call of tool `name` (any format, or `goex_action`) stands for.
    `arguments`: a mapping or its JSON text. Raises `ActionError` for an unknown tool or bad arguments."""
    if isinstance(arguments, (str, bytes)):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            raise ActionError(f"the arguments of {name} are not valid JSON: {exc.msg}") from None
    if not isinstance(arguments, dict):
        raise ActionError(f"the arguments of {name} are a JSON object; got {type(arguments).__name__}")
    by_name = {s.name: s for s in specs(extra)}
    if name == UNION_TOOL:
        action = arguments.get("action")
        if not isinstance(action, dict) or tool_name(str(action.get("type"))) not in by_name:
            raise ActionError(f"{UNION_TOOL} takes {{\"action\": {{\"type\": ...}}}} with a known action type")
        chosen = by_name[tool_name(action["type"])]
        return {"type": chosen.action_type, **chosen.decode({k: v for k, v in action.items() if k != "type"})}
    spec = by_name.get(name)
    if spec is None:
        raise ActionError(f"unknown tool {name!r}; known: {', '.join(by_name)}")
    return {"type": spec.action_type, **spec.decode(arguments)}


# -- the strict rewrite ----------------------------------------------------------------------------


def _describe(model: dict[str, Any]) -> str:
    return " ".join(str(model.get("description", "")).split()) or str(model.get("title", ""))


def _object(schema: dict[str, Any], defs: dict[str, Any], *, top: bool = False,
            skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], Decode]:
    props: dict[str, Any] = {}
    decoders: dict[str, tuple[Decode, bool]] = {}
    required = set(schema.get("required", ()))
    for key, sub in schema.get("properties", {}).items():
        if key in skip:
            continue
        converted, inner = _value(sub, defs, top=top)
        optional = key not in required
        if optional and not _nullable(converted):
            converted = _or_null(converted)
        props[key] = converted
        decoders[key] = (inner, optional)
    out = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    if schema.get("description") and not top:
        out["description"] = _describe(schema)

    def decode(value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the action's own validation names the problem
        result = {}
        for key, item in value.items():
            if key not in decoders:
                result[key] = item  # refused by the action model as "not a field of this action"
                continue
            dec, optional = decoders[key]
            if item is None and optional:
                continue  # null stands for the default
            result[key] = dec(item)
        return result

    return out, decode


def _value(schema: dict[str, Any], defs: dict[str, Any], *, top: bool) -> tuple[dict[str, Any], Decode]:
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in schema.items() if k != "$ref"}}
    described = {k: schema[k] for k in ("description",) if k in schema}
    if "anyOf" in schema:
        return _any_of(schema, defs, top, described)
    kind = schema.get("type")
    if "const" in schema:
        return {"type": kind or "string", "enum": [schema["const"]], **described}, _same
    if kind == "object" and schema.get("properties"):
        return _object(schema, defs)
    if kind == "object":
        return _map(schema, defs, described)
    if kind == "array":
        items, decode = _value(schema.get("items", {}), defs, top=False)
        out = {"type": "array", "items": items, **{k: schema[k] for k in _KEEP if k in schema}}
        return out, lambda v: [decode(x) for x in v] if isinstance(v, list) else v
    if kind is None:  # a value of any type
        if top:
            text = {"type": "string", "description": (schema.get("description", "") + " As JSON text.").strip()}
            return text, _json_text
        return {**copy.deepcopy(_SCALAR), **described}, _same
    return {"type": kind, **{k: schema[k] for k in _KEEP if k in schema}}, _same


def _any_of(schema: dict[str, Any], defs: dict[str, Any], top: bool,
            described: dict[str, Any]) -> tuple[dict[str, Any], Decode]:
    branches = [_value(b, defs, top=False) for b in schema["anyOf"]]
    kinds = [b.get("type") for b, _ in branches]
    if len(branches) == 2 and "null" in kinds:  # X or null
        real, inner = branches[kinds.index("null") ^ 1]
        return {**_or_null(real), **described}, lambda v: None if v is None else inner(v)
    pairs = next((d for (b, d) in branches if _is_pairs(b)), None)
    flat = [b for b, _ in branches]
    out = {"anyOf": flat, **described}

    def decode(value: Any) -> Any:
        if pairs is not None and isinstance(value, list) and value and all(
                isinstance(x, dict) and set(x) == {"key", "value"} for x in value):
            return pairs(value)
        return value

    return out, decode


def _map(schema: dict[str, Any], defs: dict[str, Any], described: dict[str, Any]) -> tuple[dict[str, Any], Decode]:
    extra = schema.get("additionalProperties")
    value, decode = _value(extra if isinstance(extra, dict) else {}, defs, top=False)
    pair = {"type": "object", "properties": {"key": {"type": "string"}, "value": value},
            "required": ["key", "value"], "additionalProperties": False}
    out = {"type": "array", "items": pair, **described}
    out["description"] = (out.get("description", "") + " A mapping, as a list of key/value pairs.").strip()

    def pairs(v: Any) -> Any:
        if not isinstance(v, list):
            return v
        return {p["key"]: decode(p["value"]) for p in v if isinstance(p, dict) and "key" in p and "value" in p}

    return out, pairs


def _is_pairs(schema: dict[str, Any]) -> bool:
    items = schema.get("items", {})
    return schema.get("type") == "array" and set(items.get("properties", {})) == {"key", "value"}


def _nullable(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "null" or any(b.get("type") == "null" for b in schema.get("anyOf", ()))


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    described = {k: schema[k] for k in ("description",) if k in schema}
    inner = {k: v for k, v in schema.items() if k != "description"}
    if "anyOf" in inner:
        return {"anyOf": inner["anyOf"] + [{"type": "null"}], **described}
    return {"anyOf": [inner, {"type": "null"}], **described}


def _same(value: Any) -> Any:
    return value


def _json_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ActionError(f"a JSON-text argument is not valid JSON: {exc.msg}") from None


def _union(found: list[ToolSpec]) -> ToolSpec:
    variants = []
    for s in found:
        props = {"type": {"type": "string", "enum": [s.action_type]}, **s.parameters["properties"]}
        variants.append({**s.parameters, "properties": props, "required": list(props), "description": s.description})
    params = {"type": "object", "properties": {"action": {"anyOf": variants}}, "required": ["action"],
              "additionalProperties": False}
    return ToolSpec(UNION_TOOL, "", "Run one goex action; `action.type` says which.", params, _same)


# -- formats -----------------------------------------------------------------------------------------

_ANTHROPIC_DROPS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems")


def _render(format: str, name: str, description: str, params: dict[str, Any]) -> dict[str, Any]:
    if format == "openai":
        return {"type": "function", "function": {"name": name, "description": description, "parameters": params,
                                                 "strict": True}}
    if format == "anthropic":
        return {"name": name, "description": description, "input_schema": _drop(params, _ANTHROPIC_DROPS),
                "strict": True}
    if format == "gemini":
        return {"name": name, "description": description, "parameters": _gemini(params)}
    return {"name": name, "description": description, "inputSchema": params}


def _drop(schema: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(schema, list):
        return [_drop(s, keys) for s in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: (v if k in ("enum",) else _drop(v, keys)) if k != "properties" else
            {p: _drop(s, keys) for p, s in v.items()} for k, v in schema.items() if k not in keys}


def _gemini(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.0 subset Gemini's function declarations take: upper-case `type`, `nullable`
    instead of a null branch, no `additionalProperties` or exclusive bounds."""
    branches = schema.get("anyOf")
    out: dict[str, Any] = {}
    if branches is not None:
        real = [b for b in branches if b.get("type") != "null"]
        if len(real) < len(branches):
            out["nullable"] = True
        if len(real) == 1:
            out.update(_gemini(real[0]))
        else:
            out["anyOf"] = [_gemini(b) for b in real]
    for key, value in schema.items():
        if key == "type":
            out["type"] = str(value).upper()
        elif key == "properties":
            out["properties"] = {p: _gemini(s) for p, s in value.items()}
        elif key == "items":
            out["items"] = _gemini(value)
        elif key in ("description", "enum", "required", "minimum", "maximum", "minItems", "maxItems"):
            out[key] = value
    return out
