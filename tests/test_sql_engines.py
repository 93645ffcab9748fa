"""SQL through the whole runtime on all three engines (SQLite, PostgreSQL, MariaDB), on real
servers: statement sequences rolled back to the byte-identical canonical dump, conflicts, the
CLI's --db, and processes SIGKILLed between the journal entry and the commit or after it.

Each test gets a database of its own (created and dropped here), so it never meets another
test's tables.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goex
from goex.adapters.sql.mysql import drop_agent_account
from goex.sql import dump
from conftest import run_cli

ENGINES = ["sqlite", "postgresql", "mysql"]

SCHEMA = {
    "sqlite": """
CREATE TABLE parent(id INTEGER PRIMARY KEY, name VARCHAR(50) UNIQUE, note VARCHAR(50) DEFAULT 'n/a');
CREATE TABLE child(id INTEGER PRIMARY KEY, parent INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                   data BLOB);
CREATE TABLE audit(msg VARCHAR(80));
CREATE TRIGGER parent_gone AFTER DELETE ON parent FOR EACH ROW BEGIN INSERT INTO audit VALUES ('gone ' || old.name); END;
CREATE TABLE nopk(a INT, b VARCHAR(50));
CREATE VIEW names AS SELECT name FROM parent;
INSERT INTO parent(id, name) VALUES (1, 'p1'), (2, 'p2'), (3, 'p3');
INSERT INTO child VALUES (10, 1, x'00ff'), (11, 1, NULL), (12, 2, x'');
INSERT INTO nopk VALUES (1, 'a'), (1, 'a'), (2, NULL);
""",
    "postgresql": """
CREATE TABLE parent(id INT PRIMARY KEY, name VARCHAR(50) UNIQUE, note VARCHAR(50) DEFAULT 'n/a');
CREATE TABLE child(id INT PRIMARY KEY, parent INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                   data BYTEA);
CREATE TABLE audit(msg VARCHAR(80));
CREATE FUNCTION parent_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES ('gone ' || OLD.name); RETURN OLD; END $$;
CREATE TRIGGER parent_gone AFTER DELETE ON parent FOR EACH ROW EXECUTE FUNCTION parent_gone();
CREATE TABLE nopk(a INT, b VARCHAR(50));
CREATE VIEW names AS SELECT name FROM parent;
INSERT INTO parent(id, name) VALUES (1, 'p1'), (2, 'p2'), (3, 'p3');
INSERT INTO child VALUES (10, 1, '\\x00ff'), (11, 1, NULL), (12, 2, '\\x');
INSERT INTO nopk VALUES (1, 'a'), (1, 'a'), (2, NULL);
""",
    "mysql": """
CREATE TABLE parent(id INT PRIMARY KEY, name VARCHAR(50) UNIQUE, note VARCHAR(50) DEFAULT 'n/a') ENGINE=InnoDB;
CREATE TABLE child(id INT PRIMARY KEY, parent INT, data BLOB,
                   FOREIGN KEY (parent) REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE) ENGINE=InnoDB;
CREATE TABLE audit(msg VARCHAR(80)) ENGINE=InnoDB;
CREATE TRIGGER parent_gone AFTER DELETE ON parent FOR EACH ROW INSERT INTO audit VALUES (CONCAT('gone ', OLD.name));
CREATE TABLE nopk(a INT, b VARCHAR(50)) ENGINE=InnoDB;
CREATE VIEW names AS SELECT name FROM parent;
INSERT INTO parent(id, name) VALUES (1, 'p1'), (2, 'p2'), (3, 'p3');
INSERT INTO child VALUES (10, 1, x'00ff'), (11, 1, NULL), (12, 2, x'');
INSERT INTO nopk VALUES (1, 'a'), (1, 'a'), (2, NULL);
""",
}


def _statements(kind: str, script: str) -> list[str]:
    if kind == "postgresql":
        return [script]  # psycopg runs a whole script (dollar quotes included)
    return [s.strip() for s in script.split(";\n") if s.strip()]


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(kind, url, root): a fresh database holding SCHEMA, and a workspace root."""
    kind = request.param
    root = tmp_path / "ws"
    root.mkdir()
    name = f"goex_rt_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        import apsw

        conn = apsw.Connection(str(root / "app.db"))
        conn.execute(SCHEMA["sqlite"])
        conn.close()
        yield kind, "sqlite:///app.db", root
        return
    if kind == "postgresql":
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA["postgresql"])
        try:
            yield kind, url, root
        finally:
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return
    import pymysql

    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE {name}")
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=name, autocommit=True)
    for statement in _statements("mysql", SCHEMA["mysql"]):
        conn.cursor().execute(statement)
    conn.close()
    try:
        yield kind, f"mysql://root@127.0.0.1:3306/{name}", root
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()
        drop_agent_account(f"mysql://root@127.0.0.1:3306/{name}")


def _blob(kind: str, hexdigits: str) -> str:
    return f"'\\x{hexdigits}'" if kind == "postgresql" else f"x'{hexdigits}'"


def statement(kind: str) -> st.SearchStrategy[str]:
    """One statement of a small grammar over SCHEMA, portable where it can be, per engine where not."""
    i = st.integers(1, 6)
    upsert = {"mysql": "INSERT INTO parent(id, name) VALUES ({0}, 'q{0}') ON DUPLICATE KEY UPDATE note = 'up'",
              "sqlite": "INSERT INTO parent(id, name) VALUES ({0}, 'q{0}') ON CONFLICT(id) DO UPDATE SET note = 'up'",
              "postgresql": "INSERT INTO parent(id, name) VALUES ({0}, 'q{0}') ON CONFLICT(id) DO UPDATE SET note = 'up'"}
    truncate = "DELETE FROM audit" if kind == "sqlite" else "TRUNCATE TABLE audit"
    drop_index = "DROP INDEX nopk_a ON nopk" if kind == "mysql" else "DROP INDEX nopk_a"
    return st.one_of(
        i.map(lambda n: f"INSERT INTO parent(id, name) VALUES ({n}, 'p{n}')"),
        st.tuples(i, i).map(lambda t: f"INSERT INTO child(id, parent, data) VALUES ({t[0] + 20}, {t[1]}, "
                                      f"{_blob(kind, '0a0b')})"),
        i.map(lambda n: f"UPDATE parent SET note = 'u{n}' WHERE id = {n}"),
        st.tuples(i, i).map(lambda t: f"UPDATE parent SET id = {t[0] + 6} WHERE id = {t[1]}"),
        i.map(lambda n: f"DELETE FROM parent WHERE id = {n}"),
        i.map(lambda n: f"DELETE FROM nopk WHERE a = {n % 3}"),
        i.map(lambda n: f"INSERT INTO nopk VALUES ({n % 3}, 'a')"),
        i.map(lambda n: f"INSERT INTO nopk VALUES ({n % 3}, NULL)"),
        i.map(lambda n: f"UPDATE nopk SET b = 'y{n}' WHERE a = {n % 3}"),
        i.map(upsert[kind].format),
        st.just("INSERT INTO nopk SELECT id, name FROM parent"),
        st.just("DELETE FROM child"),
        st.just("UPDATE child SET data = NULL"),
        st.just("ALTER TABLE nopk ADD COLUMN c INT"),
        st.just("ALTER TABLE nopk DROP COLUMN c"),
        st.just("CREATE INDEX nopk_a ON nopk(a)"),
        st.just(drop_index),
        st.just(truncate),
    )


def _sql(s: goex.Session, text: str) -> goex.Result:
    return s.execute({"type": "sql.execute", "db": "d", "sql": text})


@pytest.mark.parametrize("database", ENGINES, indirect=True)
def test_statement_sequences_roll_back_to_the_identical_dump(database: tuple[str, str, Path]):
    kind, url, root = database
    start = dump(url, root)
    assert "parent" in start and "p3" in start

    @settings(max_examples=12 if kind != "sqlite" else 30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(st.lists(statement(kind), min_size=1, max_size=2), min_size=1, max_size=6))
    def run(actions: list[list[str]]) -> None:
        with goex.Runtime(root, policy="permissive", durability="process", databases={"d": url}) as rt:
            s = rt.session()
            for statements in actions:
                result = _sql(s, "; ".join(statements))
                assert result.ok or result.status == "failed", result.error
            s.rollback()
            assert dump(url, root) == start

    run()


@pytest.mark.parametrize("database", ENGINES, indirect=True)
def test_undo_refuses_to_overwrite_another_clients_change(database: tuple[str, str, Path]):
    kind, url, root = database
    start = dump(url, root)
    with goex.Runtime(root, policy="permissive", databases={"d": url}) as rt:
        s = rt.session()
        assert _sql(s, "UPDATE parent SET note = 'agent' WHERE id = 2").ok
        # another client changes the same row afterwards
        other = goex.Runtime(root / "..", policy="permissive", journal=root / ".." / "other-journal",
                             databases={"d": url if kind != "sqlite" else f"sqlite:///{root / 'app.db'}"})
        with other:
            assert other.session().execute({"type": "sql.execute", "db": "d",
                                            "sql": "UPDATE parent SET note = 'human' WHERE id = 2"}).ok
        with pytest.raises(goex.UndoConflict) as info:
            s.undo()
        assert "parent" in str(info.value)
        assert "human" in dump(url, root)  # nothing was overwritten
        s.undo(force=True)
        assert dump(url, root) == start


@pytest.mark.parametrize("database", ENGINES, indirect=True)
def test_cli_names_databases_with_db(database: tuple[str, str, Path]):
    kind, url, root = database
    start = dump(url, root)
    action = json.dumps({"type": "sql.execute", "db": "d", "sql": "DELETE FROM parent WHERE id = 1"})
    done = run_cli("exec", "--root", str(root), "--db", f"d={url}", "--policy", "default", action)
    assert done.returncode == 0, done.out + done.err
    line = json.loads(done.out.splitlines()[-1])
    assert line["ok"] and line["output"]["rows_changed"] >= 1
    assert dump(url, root) != start
    done = run_cli("undo", "--root", str(root), "--db", f"d={url}", "--all")
    assert done.returncode == 0, done.out + done.err
    assert dump(url, root) == start
    # the default pack asks before a DELETE without WHERE (parked: exit 3), and says which rule
    action = json.dumps({"type": "sql.execute", "db": "d", "sql": "DELETE FROM child"})
    done = run_cli("exec", "--root", str(root), "--db", f"d={url}", action)
    assert done.returncode == 3 and "sql.no-where" in done.out, done.out + done.err
    assert dump(url, root) == start


@pytest.mark.parametrize("database", ENGINES, indirect=True)
def test_bad_input_is_a_clear_error_and_changes_nothing(database: tuple[str, str, Path]):
    kind, url, root = database
    start = dump(url, root)
    with goex.Runtime(root, policy="permissive", databases={"d": url}) as rt:
        s = rt.session()
        bad = _sql(s, "UPDATE parent SET note = 'x' WHER id = 1")
        assert not bad.ok and bad.status == "failed" and "nothing" in bad.error
        unknown = s.execute({"type": "sql.execute", "db": "nope", "sql": "SELECT 1"})
        assert not unknown.ok and "no database named 'nope'" in unknown.error and "--db" in unknown.error
        grant = _sql(s, "GRANT SELECT ON parent TO someone" if kind != "sqlite" else "DROP DATABASE x")
        assert not grant.ok and grant.status == "denied"
        half = _sql(s, "INSERT INTO parent(id, name) VALUES (9, 'p9'); INSERT INTO parent(id, name) VALUES (9, 'again')")
        assert not half.ok and half.status == "failed"
        assert rt.verify().records > 0
    assert dump(url, root) == start


def _server_down_url(kind: str) -> str:
    return {"postgresql": "postgresql://postgres@127.0.0.1:1/test", "mysql": "mysql://root@127.0.0.1:1/test"}[kind]


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_server_that_is_down_is_a_clear_error(kind: str, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", databases={"d": _server_down_url(kind)}) as rt:
        result = rt.session().execute({"type": "sql.execute", "db": "d", "sql": "UPDATE t SET a = 1 WHERE id = 1"})
        assert not result.ok and result.status == "failed"
        assert "127.0.0.1:1" in result.error or "connect" in result.error.lower()
        assert rt.verify().records > 0


WORKER = r'''
import os, signal, sys
import goex
from goex.adapters.sql.adapter import SqlAdapter

root, url, when = sys.argv[1], sys.argv[2], sys.argv[3]
original = SqlAdapter.stage

def stage(self, prepared):
    staged = original(self, prepared)
    if when == "before-capture":
        os.kill(os.getpid(), signal.SIGKILL)
    commit = staged.commit
    def dying_commit():
        if when == "after-commit":
            commit()
        os.kill(os.getpid(), signal.SIGKILL)
    staged.commit = dying_commit
    return staged

SqlAdapter.stage = stage
rt = goex.Runtime(root, policy="permissive", databases={"d": url})
rt.session().execute({"type": "sql.execute", "db": "d",
                      "sql": "DELETE FROM parent WHERE id = 1; UPDATE nopk SET b = 'k' WHERE a = 1"})
'''


@pytest.mark.parametrize("when", ["before-capture", "before-commit", "after-commit"])
@pytest.mark.parametrize("database", ENGINES, indirect=True)
def test_a_process_killed_mid_action_is_recovered(database: tuple[str, str, Path], when: str):
    kind, url, root = database
    start = dump(url, root)
    done = subprocess.run([sys.executable, "-c", WORKER, str(root), url, when], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with goex.Runtime(root, policy="permissive", databases={"d": url}) as rt:
        report = rt.recover()
        if when == "before-capture" and not report.outcomes:
            # the run was held open since `prepare` (journaled with its capture in one commit):
            # killed before that commit, nothing was journaled and nothing reached the database
            assert rt.log() == [] and dump(url, root) == start
            assert rt.verify().records == 0
            return
        outcome = next(iter(report.outcomes.values()))
        assert outcome == ("applied" if when == "after-commit" else "reverted"), report.outcomes
        assert (dump(url, root) == start) == (when != "after-commit")
        assert rt.log()[-1]["status"] == ("applied" if when == "after-commit" else "failed")
        rt.rollback_all()
        assert dump(url, root) == start
        assert rt.verify().records > 0
