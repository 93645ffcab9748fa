"""Tool definitions for OpenAI, Anthropic, Gemini and MCP: each checked against the constraints
its API documents for strict tool use, and each tool call turned back into an action that runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
from conftest import run_cli

import goex

# What each API documents its strict schemas may use.
OPENAI_KEYS = {"type", "properties", "required", "additionalProperties", "enum", "const", "anyOf", "description",
               "items", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems",
               "maxItems", "pattern", "format", "$ref", "$defs"}
ANTHROPIC_KEYS = {"type", "properties", "required", "additionalProperties", "enum", "const", "anyOf", "allOf",
                  "description", "items", "default", "format", "$ref", "$defs"}
GEMINI_KEYS = {"type", "format", "description", "nullable", "enum", "properties", "required", "items", "anyOf",
               "minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "pattern", "title",
               "propertyOrdering", "minProperties", "maxProperties", "default", "example"}
GEMINI_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# One call per built-in tool, every property given (null: the default), as a strict model emits it.
CALLS: dict[str, dict[str, Any]] = {
    "fs_write": {"path": "notes/a.md", "content": "hi", "encoding": None, "append": None},
    "fs_read": {"path": "notes/a.md", "encoding": "utf-8"},
    "fs_list": {"path": None},
    "fs_mkdir": {"path": "d/e"},
    "fs_move": {"src": "notes/a.md", "dst": "notes/b.md", "overwrite": False},
    "fs_chmod": {"path": "notes/b.md", "mode": "0640"},
    "fs_delete": {"path": "d", "recursive": True},
    "sql_execute": {"db": "main", "sql": "UPDATE t SET v = :v WHERE id = :id",
                    "params": [{"key": "v", "value": "z"}, {"key": "id", "value": 1}]},
    "http_request": {"method": "POST", "url": "http://127.0.0.1:9/x", "headers": [{"key": "X-A", "value": "1"}],
                     "json": "{\"item\": \"A-1\", \"qty\": 2}", "body": None, "timeout_s": None},
    "code_run": {"language": "python", "code": "print(1)", "timeout_s": 5, "network": None, "memory_mb": None},
}


def nodes(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside `schema` (not the property maps themselves)."""
    if isinstance(schema, list):
        for s in schema:
            yield from nodes(s)
    elif isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    yield from nodes(sub)
            elif key in ("items", "anyOf", "allOf", "$defs", "additionalProperties"):
                yield from nodes(list(value.values()) if key == "$defs" else value)


def depth(schema: dict[str, Any]) -> int:
    inner = [depth(s) for s in schema.get("properties", {}).values()]
    inner += [depth(schema["items"])] if "items" in schema else []
    inner += [depth(s) - 1 for s in schema.get("anyOf", ())]
    return (1 if schema.get("type") in ("object", "array") else 0) + max(inner, default=0)


def check_strict_objects(params: dict[str, Any]) -> None:
    """Every object closed, every property required."""
    assert params["type"] == "object"
    for node in nodes(params):
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, node
            assert sorted(node["required"]) == sorted(node["properties"]), node


@pytest.mark.parametrize("union", [False, True])
def test_openai_strict_definitions(union: bool):
    defs = goex.tools(format="openai", union=union)
    for d in defs:
        assert d["type"] == "function" and d["function"]["strict"] is True and NAME.match(d["function"]["name"])
        params = d["function"]["parameters"]
        check_strict_objects(params)
        for node in nodes(params):
            assert set(node) <= OPENAI_KEYS, set(node) - OPENAI_KEYS
        assert depth(params) <= 5
        assert sum(len(n.get("properties", {})) for n in nodes(params)) <= 100
        jsonschema.Draft202012Validator.check_schema(params)
    if union:
        [tool] = defs
        variants = tool["function"]["parameters"]["properties"]["action"]["anyOf"]
        assert all(v["required"][0] == "type" and len(v["properties"]["type"]["enum"]) == 1 for v in variants)
    else:
        assert {d["function"]["name"] for d in defs} == set(CALLS)


@pytest.mark.parametrize("union", [False, True])
def test_anthropic_strict_definitions(union: bool):
    for d in goex.tools(format="anthropic", union=union):
        assert set(d) == {"name", "description", "input_schema", "strict"} and NAME.match(d["name"])
        check_strict_objects(d["input_schema"])
        for node in nodes(d["input_schema"]):
            assert set(node) <= ANTHROPIC_KEYS, set(node) - ANTHROPIC_KEYS
        jsonschema.Draft202012Validator.check_schema(d["input_schema"])


@pytest.mark.parametrize("union", [False, True])
def test_gemini_function_declarations(union: bool):
    for d in goex.tools(format="gemini", union=union):
        assert set(d) == {"name", "description", "parameters"} and NAME.match(d["name"])
        assert d["parameters"]["type"] == "OBJECT"
        for node in nodes(d["parameters"]):
            assert set(node) <= GEMINI_KEYS, set(node) - GEMINI_KEYS
            assert "type" not in node or node["type"] in GEMINI_TYPES
            if node.get("type") == "OBJECT":
                assert set(node["required"]) <= set(node["properties"])


def test_mcp_definitions_are_json_schema():
    for d in goex.tools(format="mcp"):
        assert set(d) == {"name", "description", "inputSchema"} and d["inputSchema"]["type"] == "object"
        jsonschema.Draft202012Validator.check_schema(d["inputSchema"])


def test_every_format_accepts_the_strict_calls_and_they_become_valid_actions():
    schemas = {d["function"]["name"]: d["function"]["parameters"] for d in goex.tools(format="openai")}
    anthropic = {d["name"]: d["input_schema"] for d in goex.tools(format="anthropic")}
    [union] = goex.tools(format="openai", union=True)
    for name, args in CALLS.items():
        jsonschema.validate(args, schemas[name])
        jsonschema.validate(args, anthropic[name])
        action = goex.action_from_call(name, args)
        goex.parse_action(action)  # valid for the runtime
        wrapped = {"action": {"type": action["type"], **args}}
        jsonschema.validate(wrapped, union["function"]["parameters"])
        assert goex.action_from_call("goex_action", json.dumps(wrapped)) == action
    http = goex.action_from_call("http_request", CALLS["http_request"])
    assert http["headers"] == {"X-A": "1"} and http["json"] == {"item": "A-1", "qty": 2} and "body" not in http
    sql = goex.action_from_call("sql_execute", CALLS["sql_execute"])
    assert sql["params"] == {"v": "z", "id": 1}
    positional = goex.action_from_call("sql_execute", {"db": "main", "sql": "SELECT ?", "params": [1, "a", None]})
    assert positional["params"] == [1, "a", None]


def test_bad_calls_are_action_errors():
    with pytest.raises(goex.ActionError, match="unknown tool"):
        goex.action_from_call("rm_rf", {})
    with pytest.raises(goex.ActionError, match="not valid JSON"):
        goex.action_from_call("fs_write", "{nope")
    with pytest.raises(goex.ActionError, match="not a field"):
        goex.parse_action(goex.action_from_call("fs_write", {"path": "a", "content": "x", "sneaky": 1}))


def test_tool_calls_run_through_the_runtime(root: Path):
    with goex.Runtime(root) as rt:
        s = rt.session()
        for name in ("fs_write", "fs_read", "fs_list", "fs_mkdir", "fs_move", "fs_chmod"):
            r = s.execute(goex.action_from_call(name, CALLS[name]))
            assert r.ok, (name, r.error)
        assert (root / "notes" / "b.md").read_text() == "hi" and oct((root / "notes" / "b.md").stat().st_mode)[-3:] == "640"
        s.rollback()
    assert not (root / "notes").exists() and not (root / "d").exists()


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini", "mcp"])
def test_schema_command_prints_each_format(fmt: str):
    done = run_cli("schema", "--format", fmt)
    assert done.returncode == 0
    assert json.loads(done.out) == goex.tools(format=fmt)
    union = json.loads(run_cli("schema", "--format", fmt, "--union").out)
    assert len(union) == 1
