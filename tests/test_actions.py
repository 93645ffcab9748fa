"""Malformed actions raise ActionError with a clear reason, apply nothing, and journal nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import goex
from goex.adapters.fs.actions import FsWrite
from conftest import snapshot

MALFORMED = [
    ({"type": "fs.explode", "path": "a"}, "unknown action type 'fs.explode'"),
    ({"path": "a"}, "the action has no 'type' field; give one of: fs.write"),
    ({"type": "fs.wrte", "path": "a"}, "did you mean 'fs.write'?"),
    ({"type": "fs.write", "path": "a"}, "'content' is required"),
    ({"type": "fs.write", "path": "a", "content": "x", "mode": "0644"}, "'mode' is not a field"),
    ({"type": "fs.write", "path": "a", "content": 12}, "'content'"),
    ({"type": "fs.write", "path": "a", "content": "x", "append": "yes"}, "'append'"),
    ({"type": "fs.write", "path": "", "content": "x"}, "'path'"),
    ({"type": "fs.write", "path": "a", "content": "\ud800"}, "not valid Unicode"),
    ({"type": "fs.write", "path": "a", "content": "%%%", "encoding": "base64"}, "not valid base64"),
    ({"type": "fs.write", "path": "a", "content": "x", "encoding": "latin-1"}, "'encoding'"),
    ({"type": "fs.chmod", "path": "a", "mode": "rwxr-xr-x"}, "octal"),
    ({"type": "fs.move", "src": "a"}, "'dst' is required"),
    ("{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ("[1, 2]", "JSON object"),
    (42, "JSON object"),
]


@pytest.mark.parametrize("action,words", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_actions_raise_and_change_nothing(root: Path, rt: goex.Runtime, action, words):
    (root / "a").write_text("keep")
    before = snapshot(root)
    with pytest.raises(goex.ActionError) as info:
        rt.session().execute(action)
    assert words in str(info.value)
    assert snapshot(root) == before
    assert rt.log() == []
    rt.verify()


def test_huge_payload_is_refused_before_anything(root: Path):
    with goex.Runtime(root, policy="permissive", max_action_bytes=1024) as rt:
        with pytest.raises(goex.ActionError, match="over the limit"):
            rt.session().execute({"type": "fs.write", "path": "big", "content": "x" * 2048})
        with pytest.raises(goex.ActionError, match="over the limit"):
            rt.session().execute(json.dumps({"type": "fs.write", "path": "big", "content": "x" * 2048}))
        assert not (root / "big").exists() and rt.log() == []


def test_actions_accept_models_dicts_and_json(root: Path, rt: goex.Runtime):
    s = rt.session()
    assert s.execute(FsWrite(path="m", content="model")).ok
    assert s.execute({"type": "fs.write", "path": "d", "content": "dict"}).ok
    assert s.execute('{"type": "fs.write", "path": "j", "content": "json"}').ok
    assert [(root / n).read_text() for n in "mdj"] == ["model", "dict", "json"]


def test_schema_is_a_discriminated_union_of_every_action():
    schema = goex.action_schema()
    assert schema["discriminator"]["propertyName"] == "type"
    kinds = set(schema["discriminator"]["mapping"])
    assert kinds == {"fs.write", "fs.read", "fs.list", "fs.delete", "fs.move", "fs.mkdir", "fs.chmod", "http.request", "sql.execute", "code.run"}
    write = schema["$defs"]["FsWrite"]
    assert write["additionalProperties"] is False and set(write["required"]) >= {"path", "content"}
    json.dumps(schema)  # serialisable as-is for tool-calling APIs

