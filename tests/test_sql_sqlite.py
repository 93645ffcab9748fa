"""sql.execute on SQLite: preview from sqlglot and a dry run, atomic apply, exact undo of DML and
DDL (triggers, cascades, no primary key, duplicates, blobs, upserts, sequences), conflicts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import goex
from conftest import run_cli

SCHEMA = """
CREATE TABLE parent(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, note TEXT DEFAULT 'n/a');
CREATE TABLE child(id INTEGER PRIMARY KEY, parent INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                   data BLOB);
CREATE TABLE audit(msg TEXT);
CREATE TRIGGER parent_gone AFTER DELETE ON parent BEGIN INSERT INTO audit VALUES ('gone ' || old.name); END;
CREATE TABLE nopk(a, b);
CREATE INDEX child_parent ON child(parent);
CREATE VIEW names AS SELECT name FROM parent;
INSERT INTO parent(name) VALUES ('ada'), ('bob'), ('cy');
INSERT INTO child VALUES (1, 1, x'00ff10'), (2, 1, NULL), (3, 2, x'');
INSERT INTO nopk VALUES (1, 1), (1, 1), (NULL, 2);
"""


@pytest.fixture
def db(root: Path) -> Path:
    path = root / "app.db"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.commit()
    conn.close()
    return path


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        seq = conn.execute("SELECT * FROM sqlite_sequence ORDER BY name").fetchall() if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() else []
        return list(conn.iterdump()) + [repr(seq)]
    finally:
        conn.close()


@pytest.fixture
def rt(root: Path, db: Path):
    runtime = goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"})
    yield runtime
    runtime.close()


def sql(session: goex.Session, text: str, **kw) -> goex.Result:
    return session.execute({"type": "sql.execute", "db": "main", "sql": text, **kw})


STATEMENTS = [
    "DELETE FROM parent WHERE id = 1",
    "UPDATE parent SET id = 20 WHERE name = 'bob'",
    "UPDATE nopk SET b = 9 WHERE a = 1",
    "DELETE FROM nopk",
    "INSERT INTO parent(name) VALUES ('dee'), ('eve')",
    "INSERT INTO parent(name) VALUES ('cy') ON CONFLICT(name) DO UPDATE SET note = 'dup'",
    "INSERT INTO child(parent, data) SELECT id, x'aa' FROM parent",
    "ALTER TABLE parent ADD COLUMN age INT DEFAULT 7",
    "ALTER TABLE child RENAME COLUMN data TO payload",
    "ALTER TABLE nopk DROP COLUMN b",
    "CREATE TABLE fresh(x TEXT); INSERT INTO fresh VALUES ('new')",
    "DROP INDEX child_parent",
    "DROP VIEW names",
    "CREATE VIEW v2 AS SELECT * FROM child",
    "DROP TRIGGER parent_gone",
    "DROP TABLE audit",
    "ALTER TABLE fresh RENAME TO fresher",
]


def test_any_sequence_then_rollback_is_exact(db: Path, rt: goex.Runtime):
    start = dump(db)
    s = rt.session()
    marks = []
    for i, statement in enumerate(STATEMENTS):
        r = sql(s, statement)
        assert r.ok, (statement, r.error)
        if i % 4 == 0:
            marks.append((s.checkpoint(), dump(db)))
    for cp, expected in reversed(marks):
        s.rollback(to=cp)
        assert dump(db) == expected
    s.rollback()
    assert dump(db) == start
    rt.verify()


def test_preview_counts_cascades_and_triggers(db: Path, rt: goex.Runtime):
    decision, preview = rt.session().check({"type": "sql.execute", "db": "main", "sql": "DELETE FROM parent WHERE id = 1"})
    assert preview["rows"] == 4  # the parent, two children by cascade, one audit row by the trigger
    assert preview["kinds"] == ["delete"] and preview["tables"] == ["parent"] and preview["where_missing"] is False
    _, preview = rt.session().check({"type": "sql.execute", "db": "main", "sql": "UPDATE nopk SET a = 2"})
    assert preview["where_missing"] is True and preview["rows"] == 3
    assert dump(db) == dump(db) and sqlite3.connect(db).execute("SELECT count(*) FROM child").fetchone()[0] == 3


def test_queries_return_bounded_rows(db: Path, rt: goex.Runtime):
    s = rt.session()
    r = sql(s, "SELECT id, data FROM child ORDER BY id")
    assert r.output == {"columns": ["id", "data"], "rows": [[1, {"$base64": "AP8Q"}], [2, None], [3, {"$base64": ""}]]}
    sql(s, "CREATE TABLE big(n); WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 1500) "
           "INSERT INTO big SELECT n FROM c")
    r = sql(s, "SELECT n FROM big")
    assert len(r.output["rows"]) == 1000 and r.output["truncated"] is True
    assert sql(s, "INSERT INTO nopk VALUES (?, ?)", params=[7, 8]).output == {"rows_changed": 1}


def test_failures_apply_nothing(db: Path, rt: goex.Runtime):
    start = dump(db)
    s = rt.session()
    cases = [
        ("INSERT INTO nopk VALUES (5, 5); INSERT INTO missing VALUES (1)", "no such table: missing"),
        ("INSERT INTO parent(name) VALUES ('ada')", "UNIQUE constraint failed"),
        ("SELEC * FROM parent", "syntax error"),
    ]
    for text, words in cases:
        r = sql(s, text)
        assert not r.ok and words in r.error and "nothing" in r.error, r.error
    r = s.execute({"type": "sql.execute", "db": "other", "sql": "SELECT 1"})
    assert not r.ok and "no database named 'other'" in r.error
    r = sql(s, "SELECT 1; SELECT 2", params=[1])
    assert not r.ok and "single statement" in r.error
    for text in ("ATTACH DATABASE 'elsewhere.db' AS x", "VACUUM/**/INTO'elsewhere.db'", "/* x */ vacuum",
                 "CREATE TABLE u(x); COMMIT; DROP TABLE parent", "DELETE FROM nopk; END", "SAVEPOINT a",
                 "PRAGMA user_version = 9", "SELECT load_extension('x')"):
        r = sql(s, text)
        assert not r.ok and r.status == "denied" and r.decision.rules == ["sql.confinement"], (text, r.error)
    assert sql(s, "PRAGMA table_info(parent)").ok  # reading a pragma is fine
    assert dump(db) == start and not (rt.root / "elsewhere.db").exists()


def test_undo_names_what_someone_else_changed(db: Path, rt: goex.Runtime):
    s = rt.session()
    assert sql(s, "UPDATE parent SET note = 'x' WHERE id = 2").ok
    conn = sqlite3.connect(db)
    conn.execute("UPDATE parent SET note = 'y' WHERE id = 2")
    conn.execute("INSERT INTO audit VALUES ('by hand')")  # a row the action never touched
    conn.commit()
    conn.close()
    with pytest.raises(goex.UndoConflict) as info:
        s.undo()
    assert "main.parent" in str(info.value) and "changed since the action" in str(info.value)
    s.undo(force=True)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT note FROM parent WHERE id = 2").fetchone() == ("n/a",)
    assert conn.execute("SELECT count(*) FROM audit WHERE msg = 'by hand'").fetchone() == (1,)  # kept
    conn.close()


def test_undo_after_schema_change_is_a_conflict(db: Path, rt: goex.Runtime):
    s = rt.session()
    assert sql(s, "UPDATE parent SET note = 'x' WHERE id = 2").ok
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE nopk")
    conn.execute("ALTER TABLE parent RENAME TO p2")
    conn.commit()
    conn.close()
    with pytest.raises(goex.UndoConflict) as info:
        s.undo()
    assert "main.parent: dropped since the action" in str(info.value)


def test_preview_never_changes_the_database(db: Path, rt: goex.Runtime):
    start = dump(db)
    for text in ("DROP TABLE audit; COMMIT", "DELETE FROM parent; COMMIT;", "UPDATE nopk SET a = 1"):
        rt.session().check({"type": "sql.execute", "db": "main", "sql": text})
    assert dump(db) == start and rt.log() == []


def test_wal_databases_are_undone_too(root: Path, db: Path):
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    start = dump(db)
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "INSERT INTO nopk VALUES (3, 3)").ok and sql(s, "DROP TABLE audit").ok
        s.rollback()
        assert dump(db) == start
        assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_rows_count_dropped_and_created_tables(db: Path, rt: goex.Runtime):
    _, preview = rt.session().check({"type": "sql.execute", "db": "main", "sql": "DROP TABLE nopk"})
    assert preview["rows"] == 3
    _, preview = rt.session().check({"type": "sql.execute", "db": "main", "sql": "CREATE TABLE c2 AS SELECT * FROM child"})
    assert preview["rows"] == 3


def test_protected_database_file(root: Path, db: Path):
    with goex.Runtime(root, policy="permissive", protected=["app.db"], databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "SELECT count(*) FROM parent").ok  # reading is fine
        r = sql(s, "DELETE FROM nopk WHERE a = 1")
        assert not r.ok and r.decision.rules == ["workspace.protected"]


def test_database_created_by_the_action_is_removed_on_undo(root: Path):
    with goex.Runtime(root, policy="permissive", databases={"new": "sqlite:///data/new.db"}) as rt:
        (root / "data").mkdir()
        s = rt.session()
        assert s.execute({"type": "sql.execute", "db": "new", "sql": "CREATE TABLE t(a); INSERT INTO t VALUES (1)"}).ok
        assert (root / "data/new.db").exists()
        s.undo()
        assert not (root / "data/new.db").exists()


SQL_RULES = [
    ("sql.no-where", "DELETE FROM nopk", "DELETE FROM nopk WHERE a IS NULL"),
    ("sql.no-where", "UPDATE parent SET note = 'x'", "UPDATE parent SET note = 'x' WHERE id = 1"),
    ("sql.drop", "DROP TABLE audit", "CREATE TABLE audit2(msg TEXT)"),
    ("sql.drop-column", "ALTER TABLE nopk DROP COLUMN b", "ALTER TABLE nopk ADD COLUMN c"),
]


@pytest.mark.parametrize("rule,harmful,harmless", SQL_RULES, ids=[f"{r[0]}-{i}" for i, r in enumerate(SQL_RULES)])
def test_default_pack_sql_rules(root: Path, db: Path, rule, harmful, harmless):
    with goex.Runtime(root, databases={"main": "sqlite:///app.db"}) as strict:
        s = strict.session()
        before = dump(db)
        refused = sql(s, harmful)
        assert not refused.ok and rule in refused.decision.rules and dump(db) == before
        allowed = sql(s, harmless)
        assert allowed.ok and allowed.decision.verdict == "allow", allowed.error


def test_many_rows_rule(root: Path, db: Path):
    with goex.Runtime(root, databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        ok = sql(s, "CREATE TABLE big(n); WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM c WHERE n < 1001) "
                    "INSERT INTO big SELECT n FROM c")
        assert not ok.ok and ok.decision.rules == ["sql.many-rows"]
        assert sql(s, "CREATE TABLE small(n); INSERT INTO small VALUES (1)").ok


def test_cli_with_db(root: Path, db: Path):
    start = dump(db)
    action = json.dumps({"type": "sql.execute", "db": "main", "sql": "DELETE FROM parent WHERE id = 2"})
    done = run_cli("exec", "--root", str(root), "--db", "main=sqlite:///app.db", action)
    assert done.returncode == 0 and json.loads(done.out)["output"] == {"rows_changed": 3}, done.err
    done = run_cli("undo", "--root", str(root), "--db", "main=sqlite:///app.db", "--all")
    assert done.returncode == 0, done.err
    assert dump(db) == start
    bad = run_cli("exec", "--root", str(root), "--db", "oops", action)
    assert bad.returncode == 2 and "NAME=URL" in bad.err  # a malformed setting, like a malformed action
    outside = run_cli("exec", "--root", str(root), "--db", "main=sqlite:///../app.db", action)
    assert outside.returncode == 2 and "leaves the root" in outside.err
    assert dump(db) == start


def _exec_on_a_terminal(args: list[str], answer: str) -> tuple[dict, str]:
    """Run `goex exec` with stdin and stderr on a terminal (so it asks), answer the prompt, and
    return (the JSON result, what the terminal showed)."""
    import os
    import pty
    import select
    goex_cli = str(Path(sys.executable).with_name("goex"))
    master, slave = pty.openpty()
    proc = subprocess.Popen([goex_cli, "exec", *args], stdin=slave, stderr=slave, stdout=subprocess.PIPE)
    os.close(slave)
    shown = b""
    try:
        while b"Allow it? [y/N] " not in shown:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no prompt; the terminal showed {shown!r}"
            shown += os.read(master, 65536)
        os.write(master, answer.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill() if proc.poll() is None else None
        os.close(master)
    return json.loads(out), shown.decode().replace("\r\n", "\n")


def test_cli_confirmation_shows_the_rows_a_statement_would_change(root: Path, db: Path):
    start = dump(db)
    args = ["--root", str(root), "--db", "main=sqlite:///app.db",
            json.dumps({"type": "sql.execute", "db": "main", "sql": "DELETE FROM parent"})]
    result, shown = _exec_on_a_terminal(args, "n")
    assert result["status"] == "denied" and result["rules"] == ["sql.no-where"], result
    assert "rejected by the approver" in result["error"] and dump(db) == start  # the sample changed nothing
    assert "sql.execute on main (sqlite), 1 statement: 9 rows change in all" in shown  # parents, children, audit
    assert "1. DELETE on parent, NO WHERE (every row): DELETE FROM parent" in shown
    assert "rows of parent it would change (all 3):" in shown
    assert '{"id": 1, "name": "ada", "note": "n/a"}' in shown and '"name": "cy"' in shown

    where = json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE parent SET note = ? WHERE id >= ? OR name = ?",
                        "params": ["x", 2, "ada"]})
    pack = root.parent / "ask.yaml"
    pack.write_text("name: ask\nrules:\n  - {id: ask.sql, match: {type: [sql.execute]}, decision: confirm}\n")
    result, shown = _exec_on_a_terminal(["--policy", str(pack), *args[:-1], where], "y")
    assert result["ok"] and result["output"] == {"rows_changed": 3}, result
    assert "1. UPDATE on parent, with WHERE: UPDATE parent SET note = ? WHERE id >= ? OR name = ?" in shown
    assert "rows of parent it would change (all 3):" in shown and '"note": "n/a"' in shown  # the rows as they are
    assert '"note": "x"' not in shown
    assert all(row[2] == "x" for row in sqlite3.connect(db).execute("SELECT * FROM parent"))


@pytest.mark.parametrize("text,params,shown", [
    ("DELETE FROM parent WHERE abs(id) = 1", None, "rows not shown: its WHERE calls functions or holds subqueries"),
    ("DELETE FROM parent WHERE id IN (SELECT parent FROM child)", None, "rows not shown: its WHERE calls functions"),
    ("DELETE FROM child; DELETE FROM parent", None, "rows not shown: earlier statements of this action change"),
    ("DELETE FROM parent WHERE id = 99", None, "no row of parent matches now"),
    ("UPDATE parent SET note = :n WHERE name LIKE :p", {"n": "x", "p": "%y"}, "rows of parent it would change (all 1):"),
    ("DELETE FROM nopk WHERE a = 1", None, "rows of nopk it would change (all 2):"),
])
def test_sql_confirmation_summary_cases(root: Path, db: Path, text, params, shown):
    pack = root.parent / "ask.yaml"
    pack.write_text("name: ask\nrules:\n  - {id: ask.sql, match: {type: [sql.execute]}, decision: confirm}\n")
    asked = []
    with goex.Runtime(root, policy=pack, databases={"main": "sqlite:///app.db"},
                      approver=lambda r: asked.append(r) or False) as rt:
        before = dump(db)
        r = sql(rt.session(), text, **({"params": params} if params else {}))
        assert r.status == "denied" and dump(db) == before
    assert shown in asked[0].summary, asked[0].summary


def test_a_failing_sample_does_not_fail_the_action(root: Path, db: Path, monkeypatch: pytest.MonkeyPatch):
    from goex.adapters.sql.sqlite import SqliteEngine
    real = SqliteEngine.stage

    def stage(self, statements, *args, **kw):
        if statements[0].startswith("SELECT"):
            raise RuntimeError("disk on fire")
        return real(self, statements, *args, **kw)

    monkeypatch.setattr(SqliteEngine, "stage", stage)
    asked = []
    with goex.Runtime(root, databases={"main": "sqlite:///app.db"}, approver=lambda r: asked.append(r) or True) as rt:
        r = sql(rt.session(), "DELETE FROM nopk")
        assert r.ok and r.output == {"rows_changed": 3}
    assert "rows not shown: reading them failed (disk on fire)" in asked[0].summary


def schema_of(path: Path) -> list[tuple]:
    """Every schema object as SQLite records it (sqlite_stat tables included)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()


def test_triggers_created_and_dropped_roll_back(db: Path, rt: goex.Runtime):
    start, start_schema = dump(db), schema_of(db)
    s = rt.session()
    r = sql(s, "CREATE TRIGGER named AFTER INSERT ON parent BEGIN INSERT INTO audit VALUES ('new ' || new.name); "
               "UPDATE parent SET note = 'seen' WHERE id = new.id; END;")
    assert r.ok, r.error
    assert rt.session().check({"type": "sql.execute", "db": "main",
                               "sql": "CREATE TRIGGER t2 UPDATE ON nopk BEGIN SELECT 1; END"})[1]["kinds"] == ["create"]
    cp = s.checkpoint()
    assert sql(s, "INSERT INTO parent(name) VALUES ('dee')").ok
    assert sql(s, "DROP TRIGGER parent_gone").ok
    assert sql(s, "CREATE TRIGGER parent_gone UPDATE ON nopk BEGIN SELECT 1; END;").ok
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT msg FROM audit").fetchall() == [("new dee",)]
    assert conn.execute("SELECT note FROM parent WHERE name = 'dee'").fetchall() == [("seen",)]
    conn.close()
    s.rollback(to=cp)
    assert [o for o in schema_of(db) if o[0] == "trigger"] == [
        ("trigger", "named", "parent", "CREATE TRIGGER named AFTER INSERT ON parent BEGIN INSERT INTO audit VALUES "
                                       "('new ' || new.name); UPDATE parent SET note = 'seen' WHERE id = new.id; END"),
        ("trigger", "parent_gone", "parent", [o for o in start_schema if o[1] == "parent_gone"][0][3])]
    s.rollback()
    assert schema_of(db) == start_schema and dump(db) == start


def test_analyze_statistics_roll_back(db: Path, rt: goex.Runtime):
    start_schema = schema_of(db)
    s = rt.session()
    assert sql(s, "ANALYZE").ok
    assert "sqlite_stat1" in [o[1] for o in schema_of(db)]
    s.rollback()
    assert schema_of(db) == start_schema
    # statistics kept by the user are restored to theirs
    conn = sqlite3.connect(db)
    conn.execute("ANALYZE")
    conn.commit()
    stats = conn.execute("SELECT * FROM sqlite_stat1 ORDER BY tbl, idx").fetchall()
    conn.close()
    assert sql(s, "CREATE INDEX parent_note ON parent(note); INSERT INTO nopk VALUES (5, 5)").ok
    assert sql(s, "ANALYZE; ANALYZE parent").ok
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM sqlite_stat1 ORDER BY tbl, idx").fetchall() != stats
    conn.close()
    s.rollback()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM sqlite_stat1 ORDER BY tbl, idx").fetchall() == stats
    conn.close()


FAMILY = """
CREATE TABLE kin(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE ward(id INTEGER PRIMARY KEY, kin INT REFERENCES kin(id) {on_delete});
INSERT INTO kin VALUES (1, 'one');
INSERT INTO ward VALUES (1, 1);
"""


@pytest.mark.parametrize("client_fk", [True, False], ids=["client-fk-on", "client-fk-off"])
@pytest.mark.parametrize("on_delete", ["", "ON DELETE CASCADE", "ON DELETE SET NULL"])
def test_undo_never_orphans_another_clients_rows(root: Path, client_fk: bool, on_delete: str):
    path = root / "family.db"
    conn = sqlite3.connect(path)
    conn.executescript(FAMILY.format(on_delete=on_delete))
    conn.close()
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///family.db"}) as rt:
        s = rt.session()
        assert sql(s, "UPDATE kin SET name = 'uno' WHERE id = 1").ok
        assert sql(s, "INSERT INTO kin VALUES (7, 'seven')").ok
        other = sqlite3.connect(path)
        if client_fk:
            other.execute("PRAGMA foreign_keys = ON")
        other.execute("INSERT INTO ward VALUES (100, 7)")  # another client's row needs kin 7
        other.commit()
        other.close()
        expected = dump(path)
        for force in (False, True):  # forced or not: kin 7 stays, ward 100 is neither orphaned nor deleted
            with pytest.raises(goex.UndoConflict) as info:
                s.rollback(force=force)
            assert "main.ward: row 100 refers to kin" in str(info.value)
            assert not info.value.forceable and "--force" not in str(info.value)
            assert dump(path) == expected
        conn = sqlite3.connect(path)
        conn.execute("DELETE FROM ward WHERE id = 100")  # the client takes its row back: undo may proceed
        conn.commit()
        conn.close()
        s.rollback()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM kin").fetchall() == [(1, "one")]
    assert conn.execute("SELECT * FROM ward").fetchall() == [(1, 1)]
    conn.close()


def test_undo_never_restores_a_row_whose_parent_is_gone(root: Path):
    path = root / "family.db"
    conn = sqlite3.connect(path)
    conn.executescript(FAMILY.format(on_delete="") + "INSERT INTO kin VALUES (2, 'two'); INSERT INTO ward VALUES (2, 2);")
    conn.close()
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///family.db"}) as rt:
        s = rt.session()
        assert sql(s, "DELETE FROM ward WHERE id = 2").ok
        other = sqlite3.connect(path)
        other.execute("DELETE FROM kin WHERE id = 2")  # foreign_keys off: nothing stops it now
        other.commit()
        other.close()
        with pytest.raises(goex.UndoConflict) as info:
            s.undo()
        assert "main.ward: row 2 refers to kin" in str(info.value)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM ward").fetchall() == [(1, 1)]
    conn.close()
