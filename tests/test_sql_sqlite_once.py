"""sql.execute on SQLite runs its statements once: the run that gives the policy its preview is
the transaction that is captured and committed. The preview is the dry run's exactly; a refused,
parked or rejected action leaves the database as it was and unlocked; a kill between the run and
the commit is settled by recovery."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import goex
from goex.adapters.sql.sqlite import SqliteEngine

SCHEMA = """
CREATE TABLE parent(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, note TEXT DEFAULT 'n/a');
CREATE TABLE child(id INTEGER PRIMARY KEY, parent INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                   data BLOB);
CREATE TABLE audit(msg TEXT);
CREATE TRIGGER parent_gone AFTER DELETE ON parent BEGIN INSERT INTO audit VALUES ('gone ' || old.name); END;
CREATE TABLE nopk(a, b);
CREATE TABLE keyed(k TEXT PRIMARY KEY, v INT);
INSERT INTO parent(name) VALUES ('ada'), ('bob'), ('cy');
INSERT INTO child VALUES (1, 1, x'00ff10'), (2, 1, NULL), (3, 2, x'');
INSERT INTO nopk VALUES (1, 1), (1, 1), (NULL, 2);
INSERT INTO keyed VALUES ('a', 1), ('b', 2), ('c', 3);
"""


def make(path: Path, extra: str = "") -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA + extra)
    conn.commit()
    conn.close()
    return path


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def db(root: Path) -> Path:
    return make(root / "app.db")


def sql(session: goex.Session, text: str, **kw) -> goex.Result:
    return session.execute({"type": "sql.execute", "db": "main", "sql": text, **kw})


def unlocked(path: Path) -> bool:
    """Whether another connection can take the write lock at once."""
    conn = sqlite3.connect(path, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def test_a_statement_whose_count_varies_runs_once(root: Path, db: Path):
    """An INSERT of a random number of rows: run twice, the count the policy saw and the rows
    committed would differ; run once they are the same, every time."""
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        committed = 0
        for _ in range(8):
            r = sql(s, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) "
                       "INSERT INTO nopk SELECT x, 'r' FROM c WHERE abs(random()) % 2 = 0")
            assert r.ok, r.error
            conn = sqlite3.connect(db)
            now = conn.execute("SELECT count(*) FROM nopk WHERE b = 'r'").fetchone()[0]
            conn.close()
            inserted, committed = now - committed, now
            preview = rt.entry_record(r.entry_id)["preview"]
            assert preview["rows"] == inserted == r.output["rows_changed"]
        s.rollback()
        assert dump(db) == dump(make(root / "fresh.db"))


@pytest.mark.parametrize("how", ["deny", "reject", "park"])
def test_a_refused_action_leaves_no_trace(root: Path, db: Path, how: str):
    pack = root.parent / "pack.yaml"
    decision = "deny" if how == "deny" else "confirm"
    pack.write_text("name: p\nrules:\n  - {id: p.sql, match: {type: [sql.execute]}, decision: %s}\n" % decision)
    approver = {"deny": None, "reject": lambda request: False, "park": "pending"}[how]
    start = dump(db)
    with goex.Runtime(root, policy=pack, databases={"main": "sqlite:///app.db"}, approver=approver) as rt:
        r = sql(rt.session(), "UPDATE parent SET note = 'x'; DELETE FROM child WHERE id = 3")
        assert not r.ok and r.status == ("awaiting_approval" if how == "park" else "denied")
        assert dump(db) == start
        assert unlocked(db)  # the run's transaction is gone, not merely uncommitted
        preview = rt.entry_record(r.entry_id)["preview"]
        assert preview["rows"] == 4 and preview["all_rows"] == ["parent"]
    assert dump(db) == start


def test_an_allowed_action_after_a_refused_one_runs(root: Path, db: Path):
    pack = root.parent / "pack.yaml"
    pack.write_text("name: p\nrules:\n  - {id: p.many, match: {type: [sql.execute], preview: {rows: {gt: 1}}}, "
                    "decision: deny}\n")
    with goex.Runtime(root, policy=pack, databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "UPDATE parent SET note = 'x'").status == "denied"
        r = sql(s, "UPDATE parent SET note = 'y' WHERE id = 2")
        assert r.ok and r.output == {"rows_changed": 1}
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT id, note FROM parent ORDER BY id").fetchall() == [(1, "n/a"), (2, "y"), (3, "n/a")]
        conn.close()
        s.rollback()
        assert dump(db) == dump(make(root / "fresh.db"))


# statements whose preview (rows, all_rows, creates_trigger) the single run must give exactly as the dry run
CASES = [
    "UPDATE parent SET note = 'x' WHERE id = 1",
    "UPDATE parent SET note = 'x'",
    "UPDATE parent SET note = note",  # touched, unchanged: only the dry run's hook sees it
    "UPDATE parent SET note = 'x' WHERE id < 3; UPDATE parent SET note = note WHERE id = 3",
    "UPDATE parent SET note = 'x'; UPDATE parent SET note = 'n/a'",  # set back
    "DELETE FROM child",
    "DELETE FROM parent WHERE id = 1",  # cascade and trigger
    "DELETE FROM parent",
    "UPDATE parent SET id = id + 10",  # rowids move; ON UPDATE CASCADE
    "UPDATE parent SET id = id + 10 WHERE id = 1; UPDATE parent SET id = 1 WHERE id = 11",  # moved and back
    "UPDATE nopk SET a = 5",
    "UPDATE nopk SET a = a",
    "DELETE FROM nopk WHERE b = 1",
    "UPDATE keyed SET k = k || 'x'",  # primary keys change
    "UPDATE keyed SET v = v + 1 WHERE k <> 'a'; UPDATE keyed SET v = v WHERE k = 'a'",
    "INSERT INTO nopk VALUES (7, 7), (8, 8); DELETE FROM nopk",
    "DELETE FROM nopk; INSERT INTO nopk VALUES (1, 1), (1, 1), (NULL, 2)",
    "INSERT INTO parent(name) VALUES ('dee'); UPDATE parent SET note = 'x'",
    "INSERT INTO parent(name) VALUES ('ada') ON CONFLICT(name) DO UPDATE SET note = 'up'",
    "INSERT OR REPLACE INTO parent(id, name) VALUES (1, 'bob')",
    "REPLACE INTO keyed VALUES ('a', 1), ('b', 2), ('c', 3)",
    "UPDATE OR IGNORE parent SET name = 'ada'",
    "UPDATE parent SET note = 'x' RETURNING id",
    "UPDATE wr SET v = v",
    "UPDATE wr SET v = v + 1",
    "UPDATE rep SET v = 2 WHERE k = 1",
    "INSERT INTO rep VALUES (1, 9), (2, 9)",
    "UPDATE parent SET note = 'x' WHERE 0",
]
EXTRA = """
CREATE TABLE wr(k INTEGER PRIMARY KEY, v) WITHOUT ROWID;
INSERT INTO wr VALUES (1, 1), (2, 2);
CREATE TABLE rep(k INTEGER UNIQUE ON CONFLICT REPLACE, v);
INSERT INTO rep VALUES (1, 1), (2, 2);
"""


@pytest.mark.parametrize("text", CASES)
def test_the_single_run_gives_the_dry_runs_preview(tmp_path: Path, text: str):
    ran, dry = make(tmp_path / "ran.db", EXTRA), tmp_path / "dry.db"
    shutil.copy(ran, dry)
    start = dump(ran)
    once, twice = SqliteEngine(ran), SqliteEngine(dry)
    try:
        statements = once.split(text)
        once.begin()
        effect, held = once.rehearse(statements, None)
        expected = twice.dry_run(statements, None)
        assert effect == expected
        if held is not None:
            assert dump(ran) == start and not unlocked(ran)  # open, not committed
            held.abort()
        assert dump(ran) == start and unlocked(ran)
    finally:
        once.close()
        twice.close()


@pytest.mark.parametrize("text, once", [
    ("UPDATE parent SET note = 'x' WHERE id = 1", True),
    ("UPDATE parent SET note = 'x'", True),
    ("DELETE FROM parent WHERE id = 1", True),
    ("UPDATE parent SET note = note", False),  # the bounds do not settle it: dry run, then a staged run
    ("INSERT OR REPLACE INTO parent(id, name) VALUES (1, 'bob')", False),
    ("CREATE TABLE t2(a)", False),
])
def test_which_actions_run_once(tmp_path: Path, text: str, once: bool):
    engine = SqliteEngine(make(tmp_path / "app.db"))
    try:
        engine.begin()
        _, held = engine.rehearse(engine.split(text), None)
        assert (held is not None) == once
        if held is not None:
            held.abort()
    finally:
        engine.close()


def test_the_run_is_the_one_committed(root: Path, db: Path):
    """The committed rows are the ones the run produced (random values differ from run to run),
    and undo takes them back exactly."""
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        r = sql(s, "UPDATE parent SET note = hex(randomblob(8)) RETURNING id, note")
        assert r.ok, r.error
        conn = sqlite3.connect(db)
        now = conn.execute("SELECT id, note FROM parent ORDER BY id").fetchall()
        assert sorted(map(tuple, r.output["rows"])) == now
        conn.close()
        assert rt.entry_record(r.entry_id)["preview"]["all_rows"] == ["parent"]
        s.rollback()
        assert dump(db) == dump(make(root / "fresh.db"))


KILLED_AFTER_RUN = r'''
import os, signal, sys
import goex
from goex.adapters.sql import sqlite as engine

connect = engine._connect
def small_cache(path, confined):
    conn = connect(path, confined)
    conn.execute("PRAGMA cache_size=5")  # the transaction spills: the database file changes before commit
    return conn
engine._connect = small_cache
original = engine.SqliteEngine.rehearse
def rehearse(self, *args):
    effect, held = original(self, *args)
    assert held is not None
    os.kill(os.getpid(), signal.SIGKILL)
engine.SqliteEngine.rehearse = rehearse
rt = goex.Runtime(sys.argv[1], policy="permissive", databases={"main": "sqlite:///app.db"})
rt.session().execute({"type": "sql.execute", "db": "main", "sql": "UPDATE big SET v = v + 1"})
'''


def test_a_kill_after_the_run_leaves_the_database_as_it_was(root: Path):
    """Killed after the statements ran, before anything was journaled: SQLite rolls the open
    transaction back (goex's own hot journal), recovery finds nothing to settle, and goex goes on."""
    db = make(root / "app.db", "CREATE TABLE big(id INTEGER PRIMARY KEY, v INT);"
                               "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) "
                               "INSERT INTO big SELECT x, x FROM c;")
    start = dump(db)
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_RUN, str(root)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode < 0, done.stderr
    assert Path(f"{db}-journal").exists()  # the run spilled into the file: its journal is hot
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        rt.recover()
        r = sql(rt.session(), "UPDATE big SET v = 0 WHERE id = 1")
        assert r.ok, r.error
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT sum(v) FROM big").fetchone()[0] == 5000 * 5001 // 2 - 1
        conn.close()
        rt.rollback_all()
    assert dump(db) == start
