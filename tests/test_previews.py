"""Every adapter's real previews are instances of the preview model it declares: real actions of
each domain run (files, SQLite, HTTP against the example service, code in the sandbox), and the
preview each one was decided on, as `check` returns it and as the journal recorded it, validates
against FsPreview, SqlPreview, HttpPreview or CodePreview (no field missing, none unknown, each of
its declared type)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import goex
from goex.adapters.code.actions import CodePreview
from goex.adapters.fs.actions import FsPreview
from goex.adapters.http.actions import HttpPreview
from goex.adapters.registry import domain_of
from goex.adapters.sql.actions import SqlPreview
from goex.service import serve

MODELS: dict[str, type[BaseModel]] = {"fs": FsPreview, "sql": SqlPreview, "http": HttpPreview, "code": CodePreview}


def run_and_validate(rt: goex.Runtime, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check, then run each action; validate the preview `check` gives and the one the journal
    recorded (every action that may change something records it; reads record none) against the
    domain's model. Returns the previews, recorded ones where there are."""
    session = rt.session()
    checked = []
    for action in actions:
        _, preview = session.check(action)
        checked.append(preview)
        session.execute(action)
    entries = rt.journal.entries()
    assert [e.type for e in entries] == [a["type"] for a in actions], "each action is journaled once"
    out = []
    for action, entry, before in zip(actions, entries, checked, strict=True):
        record = rt.journal.entry_record(entry.id)
        recorded = record.get("preview")
        read = "plan" not in record and entry.status == "applied"  # a read: journaled, nothing to undo
        assert (recorded is None) == read, f"{action['type']}: a preview is journaled for every change"
        model = MODELS[action["type"].split(".", 1)[0]]
        assert domain_of(action["type"]).preview is model
        for preview in (before, recorded) if recorded is not None else (before,):
            assert preview, f"{action['type']}: an empty preview"
            model.model_validate(preview, strict=True)  # raises, naming the field, when it drifted
        out.append(recorded if recorded is not None else before)
    return out


def test_file_previews_are_fs_previews(root: Path):
    (root / "old.txt").write_text("old text")
    (root / "tree").mkdir()
    for i in range(3):
        (root / "tree" / f"{i}.txt").write_text("x" * (i + 1))
    actions = [
        {"type": "fs.write", "path": "new.txt", "content": "hello"},
        {"type": "fs.write", "path": "old.txt", "content": "more", "append": True},
        {"type": "fs.read", "path": "new.txt"},
        {"type": "fs.list", "path": "."},
        {"type": "fs.mkdir", "path": "made/deep"},
        {"type": "fs.move", "src": "new.txt", "dst": "old.txt", "overwrite": True},
        {"type": "fs.chmod", "path": "old.txt", "mode": "0777"},
        {"type": "fs.delete", "path": "tree", "recursive": True},
    ]
    with goex.Runtime(root, policy="permissive") as rt:
        previews = run_and_validate(rt, actions)
    write, append, _, _, _, move, chmod, delete = previews
    assert write["bytes_written"] == 5 and write["overwrites"] is False and write["paths"] == ["new.txt"]
    assert append["overwrites"] is False and append["bytes_written"] == 4  # appending replaces nothing
    assert move["paths"] == ["new.txt", "old.txt"] and move["files_deleted"] == 1
    assert chmod["mode"] == "0777" and chmod["world_writable"] is True
    assert delete["folder"] is True and delete["files_deleted"] == 3 and delete["bytes_deleted"] == 6


def test_a_refused_action_journals_its_preview_too(root: Path):
    with goex.Runtime(root) as rt:  # the default pack refuses changes to .git/
        [denied] = run_and_validate(rt, [{"type": "fs.write", "path": ".git/config", "content": "refused"}])
        assert rt.log()[0]["status"] == "denied"
    assert denied["paths"] == [".git/config"] and not (root / ".git").exists()


def test_sql_previews_are_sql_previews(root: Path):
    conn = sqlite3.connect(root / "app.db")
    conn.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, note TEXT);"
                       "INSERT INTO t VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z');")
    conn.close()
    sql = [
        "SELECT * FROM t",
        "INSERT INTO t VALUES (4, 'd', 'w')",
        "UPDATE t SET name = 'all'",
        "DELETE FROM t WHERE id = 1",
        "CREATE TABLE u(id INTEGER PRIMARY KEY); INSERT INTO u VALUES (1)",
        "CREATE TRIGGER tr AFTER INSERT ON u BEGIN SELECT 1; END",
        "ALTER TABLE t DROP COLUMN note",
        "DROP TABLE u",
    ]
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        previews = run_and_validate(rt, [{"type": "sql.execute", "db": "main", "sql": s} for s in sql])
    select, insert, update, delete, create, trigger, alter, drop = previews
    assert select["writes"] is False and select["engine"] == "sqlite" and select["kinds"] == ["select"]
    assert insert["rows"] == 1 and update["where_missing"] is True and update["all_rows"] == ["t"]
    assert update["rows"] == 4 and delete["rows"] == 1 and create["kinds"] == ["create", "insert"]
    assert trigger["creates_trigger"] is True and alter["drop_column"] is True and drop["drops"] is True


@pytest.fixture(scope="module")
def service():
    with serve() as base:
        yield base


def test_http_previews_are_http_previews(root: Path, service: str):
    httpx.post(service + "/admin/reset", json={"orders": [], "items": [
        {"id": "itm_1", "name": "pen", "price": 1.5, "stock": 10}], "emails": [], "payments": []}).raise_for_status()
    cfg = goex.HttpConfig(allow_hosts=[httpx.URL(service).host], openapi=httpx.get(service + "/openapi.json").json())
    actions = [
        {"type": "http.request", "method": "GET", "url": service + "/items/itm_1"},
        {"type": "http.request", "method": "POST", "url": service + "/items",
         "json": {"name": "ink", "price": 4.0, "stock": 2}},
        {"type": "http.request", "method": "PATCH", "url": service + "/items/itm_1", "json": {"stock": 9}},
        {"type": "http.request", "method": "DELETE", "url": service + "/items/itm_1"},
        {"type": "http.request", "method": "POST", "url": service + "/payments", "json": {"amount": 1}},
    ]
    with goex.Runtime(root, policy="permissive", http=cfg) as rt:
        previews = run_and_validate(rt, actions)
    assert [p["kind"] for p in previews] == ["read", "create", "update", "delete", "irreversible"]
    assert previews[1]["route"] == "POST /items" and previews[4]["reversible"] is False
    assert {p["host"] for p in previews} == {httpx.URL(service).host}


def test_code_previews_are_code_previews(root: Path):
    (root / "gone.txt").write_text("delete me")
    code = "open('made.txt', 'w').write('abc')\nimport os\nos.remove('gone.txt')\n"
    with goex.Runtime(root, policy="permissive", sandbox="bwrap") as rt:
        [preview] = run_and_validate(rt, [{"type": "code.run", "language": "python", "code": code}])
    assert (root / "made.txt").read_text() == "abc" and not (root / "gone.txt").exists()
    assert preview["backend"] == "bwrap" and preview["unsafe"] is False and preview["network"] is False
    assert preview["files"]["created"] == ["made.txt"] and preview["files"]["deleted"] == ["gone.txt"]
    assert preview["bytes_written"] == 3 and preview["files_deleted"] == 1
