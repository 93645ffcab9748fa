"""Attacks on SQLite's single run (the run that gives the policy its preview is the one
committed), through the public API only: a hostile agent's statements against a policy that
judges `rows` and `all_rows`, refused and parked actions, kills between the run and the
commit, other writers, and undo. Every effect is read off the database file with a raw
connection and the journal with `goex verify`."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import goex
from goex.adapters.sql.sqlite import SqliteEngine

SCHEMA = """
CREATE TABLE parent(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, note TEXT DEFAULT 'n/a');
CREATE TABLE child(id INTEGER PRIMARY KEY, parent INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                   v INT);
CREATE TABLE log(msg TEXT);
CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, bal INT);
CREATE TABLE keyed(k TEXT PRIMARY KEY, v INT);
CREATE TABLE gen(id INTEGER PRIMARY KEY, a INT, b INT GENERATED ALWAYS AS (a * 2) STORED,
                 c INT GENERATED ALWAYS AS (a + 1) VIRTUAL);
CREATE TABLE uniq(id INTEGER PRIMARY KEY, u INT UNIQUE, v INT);
CREATE TABLE victim(id INTEGER PRIMARY KEY, v INT);
CREATE TABLE lever(id INTEGER PRIMARY KEY, v INT);
CREATE TRIGGER lever_wipes AFTER UPDATE ON lever BEGIN DELETE FROM victim WHERE id > 0; END;
CREATE TABLE ledger(id INTEGER PRIMARY KEY, v INT);
CREATE TRIGGER ledger_resets AFTER INSERT ON ledger BEGIN UPDATE acct SET bal = 0 WHERE id = id; END;
CREATE VIEW acct_view AS SELECT id, owner, bal FROM acct;
CREATE TRIGGER acct_view_del INSTEAD OF DELETE ON acct_view BEGIN DELETE FROM acct WHERE id > 0; END;
CREATE TRIGGER acct_view_upd INSTEAD OF UPDATE ON acct_view BEGIN UPDATE acct SET bal = new.bal WHERE 1; END;
INSERT INTO parent(name) VALUES ('ada'), ('bob'), ('cy');
INSERT INTO child VALUES (1, 1, 1), (2, 1, 2), (3, 2, 3), (4, 3, 4);
INSERT INTO acct VALUES (1, 'ada', 10), (2, 'bob', 20), (3, 'cy', 30);
INSERT INTO keyed VALUES ('a', 1), ('b', 2), ('c', 3);
INSERT INTO gen(id, a) VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO uniq VALUES (1, 1, 1), (2, 2, 2), (3, 3, 3);
INSERT INTO victim VALUES (1, 1), (2, 2), (3, 3);
INSERT INTO lever VALUES (1, 1);
PRAGMA user_version = 7;
"""

# a WITHOUT ROWID table sends every action on its database to the dry run and a staged run
WR = "CREATE TABLE wr(k INTEGER PRIMARY KEY, v INT) WITHOUT ROWID; INSERT INTO wr VALUES (1, 1), (2, 2), (3, 3);"
URL = {"main": "sqlite:///app.db"}


def make(path: Path, extra: str = "") -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA + extra)
    conn.commit()
    conn.close()
    return path


def dump(path: Path) -> list[str]:
    """Rows, schema and sqlite_sequence (iterdump, sorted: a rowid behind a declared key is not
    state, undo of a key update gives a new one), and the header's user_version."""
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.iterdump()) + [f"user_version {conn.execute('PRAGMA user_version').fetchone()[0]}"]
    finally:
        conn.close()


def rows(path: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}"').fetchall()
    finally:
        conn.close()


def unlocked(path: Path) -> bool:
    """Whether another connection (another process: APSW and sqlite3 do not see each other's
    locks inside one) can take the write lock at once."""
    probe = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=0)\n"
             "try:\n    c.execute('BEGIN IMMEDIATE'); c.execute('ROLLBACK')\nexcept sqlite3.OperationalError:\n"
             "    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", probe, str(path)], timeout=60).returncode == 0


def sql(session: goex.Session, text: str, **kw) -> goex.Result:
    return session.execute({"type": "sql.execute", "db": "main", "sql": text, **kw})


def verified(root: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from goex.cli import main; sys.exit(main())",
                           "verify", "--root", str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def pack(root: Path, rules: str) -> Path:
    path = root.parent / "pack.yaml"
    path.write_text("name: attack\nrules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    return path


def dry_effect(path: Path, text: str, tmp: Path) -> dict:
    """What the dry run (the preview before statements ran once) says, on a copy."""
    copy = tmp / "dry.db"
    shutil.copy(path, copy)
    engine = SqliteEngine(copy)
    try:
        engine.begin()
        return engine.dry_run(engine.split(text), None)
    finally:
        engine.close()
        copy.unlink()


def plain_run(path: Path, text: str, tmp: Path) -> list[str]:
    """The database after the statements, run by plain SQLite on a copy (foreign keys on)."""
    copy = tmp / "plain.db"
    shutil.copy(path, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    conn.executescript(text) if ";" in text.strip().rstrip(";") else conn.execute(text).fetchall()
    conn.execute("COMMIT") if conn.in_transaction else None
    conn.close()
    out = dump(copy)
    copy.unlink()
    return out


# statements a hostile agent uses so that the preview looks small while the commit is not
ATTACKS = [
    # a trigger on another table wipes every row of `victim`
    "UPDATE lever SET v = v + 1 WHERE id = 1",
    # a trigger whose WHERE names every row
    "INSERT INTO ledger(v) VALUES (1)",
    # an INSTEAD OF trigger on a view: the statement names the view only
    "DELETE FROM acct_view WHERE id = 1",
    "UPDATE acct_view SET bal = 0 WHERE id = 1",
    # foreign-key cascades
    "DELETE FROM parent WHERE id < 4",
    "UPDATE parent SET id = id + 100 WHERE id > 0",
    # upserts touching every row
    "INSERT INTO uniq(u, v) VALUES (1, 0), (2, 0), (3, 0) ON CONFLICT(u) DO UPDATE SET v = excluded.v",
    "INSERT INTO uniq(u, v) SELECT u, 9 FROM uniq WHERE true ON CONFLICT(u) DO UPDATE SET v = 9",
    "INSERT INTO uniq(u, v) VALUES (1, 0) ON CONFLICT DO NOTHING",
    # conflict clauses: REPLACE deletes rows the update hook does not see
    "INSERT OR REPLACE INTO uniq(id, u, v) VALUES (1, 2, 0), (3, 1, 0)",
    "UPDATE OR REPLACE uniq SET u = 1",
    "UPDATE OR IGNORE uniq SET u = 1",
    "REPLACE INTO acct SELECT id, owner, 0 FROM acct",
    # the word 'replace' hidden in a comment or a string does not change anything
    "UPDATE acct SET bal = 0 WHERE id > 0 /* replace */",
    "UPDATE acct SET owner = replace(owner, 'a', 'b') WHERE id > 0",
    # RETURNING, CTEs, recursive CTEs driving a DELETE
    "DELETE FROM acct WHERE id IN (SELECT id FROM acct) RETURNING *",
    "WITH doomed AS (SELECT id FROM acct) DELETE FROM acct WHERE id IN doomed",
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10) "
    "UPDATE acct SET bal = bal + 1 WHERE id IN n",
    # WITHOUT ROWID: the update hook sees none of its rows
    "UPDATE wr SET v = v + 1 WHERE k > 0",
    "DELETE FROM wr WHERE k IN (SELECT k FROM wr)",
    # generated columns
    "UPDATE gen SET a = a + 1 WHERE b > 0",
    # changes made, then taken back in the same statement list
    "UPDATE acct SET bal = 0 WHERE id > 0; UPDATE acct SET bal = id * 10 WHERE id > 0",
    "DELETE FROM acct WHERE id > 0; INSERT INTO acct VALUES (1, 'ada', 10), (2, 'bob', 20), (3, 'cy', 30)",
    "UPDATE acct SET bal = bal WHERE id > 0",
    "INSERT INTO acct VALUES (4, 'dee', 0); DELETE FROM acct WHERE id = 4",
    # rows moved from one key to another
    "UPDATE acct SET id = id + 10 WHERE id > 0; UPDATE acct SET id = id - 10 WHERE id > 10",
    "UPDATE keyed SET k = k || 'x' WHERE v > 0",
    # AUTOINCREMENT: sqlite_sequence moves
    "INSERT INTO parent(name) VALUES ('dee'), ('eve'); DELETE FROM parent WHERE name IN ('dee', 'eve')",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_the_preview_is_what_commits_and_undo_is_exact(root: Path, text: str):
    """The policy's preview is the dry run's, the committed database is what plain SQLite makes
    of the statements, and undo gives back the database exactly."""
    db = make(root / "app.db", WR if " wr " in text else "")
    start = dump(db)
    expected = dry_effect(db, text, root.parent)
    after = plain_run(db, text, root.parent)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, text)
        assert r.ok, r.error
        preview = rt.entry_record(r.entry_id)["preview"]
        assert (preview["rows"], preview["all_rows"]) == (expected["rows"], sorted(expected["all_rows"]))
        assert dump(db) == after
        assert s.rollback()
        assert dump(db) == start
        assert unlocked(db)
    verified(root)


@pytest.mark.parametrize("text", [t for t in ATTACKS if "bal = bal" not in t])
def test_a_policy_on_all_rows_is_not_bypassed(root: Path, text: str):
    """A pack that refuses changing every row of a table, or more than 2 rows: what it lets
    through changed no table whole and at most 2 rows; what it refuses left no trace."""
    db = make(root / "app.db", WR if " wr " in text else "")
    start = dump(db)
    policy = pack(root, """\
        - {id: a.all, match: {type: [sql.execute], preview: {all_rows: {gt: 0}}}, decision: deny}
        - {id: a.many, match: {type: [sql.execute], preview: {rows: {gt: 2}}}, decision: deny}
    """)
    tables = ("parent", "child", "acct", "keyed", "gen", "uniq", "victim") + (("wr",) if " wr " in text else ())
    before = {t: rows(db, t) for t in tables}
    with goex.Runtime(root, policy=policy, databases=URL) as rt:
        r = sql(rt.session(), text)
        if r.ok:  # every table of 2 rows or more keeps a row as it was
            for table in tables:
                now = rows(db, table)
                assert len(before[table]) < 2 or set(before[table]) & set(now), table
            assert rt.entry_record(r.entry_id)["preview"]["rows"] <= 2
        else:
            assert r.status == "denied"
            assert dump(db) == start
            assert unlocked(db)
    verified(root)


NULL_KEYS = "CREATE TABLE nk(k TEXT PRIMARY KEY, v INT); INSERT INTO nk VALUES ('a', 1), ('b', 2), ('c', 3);"


@pytest.mark.parametrize("text", [
    "DELETE FROM nk WHERE k IS NOT NULL; INSERT INTO nk VALUES (NULL, 1)",
    "UPDATE nk SET v = 0 WHERE v > 0; INSERT INTO nk VALUES (NULL, 1), (NULL, 2)",
    "UPDATE nk SET k = NULL WHERE v > 0",
])
def test_rows_keyed_by_null_do_not_hide_a_whole_table(root: Path, text: str):
    """A rowid table's declared TEXT key may hold NULL (SQLite's quirk) and a session records no
    such row: inserting some must not make a table whose every row changed look partly kept."""
    db = make(root / "app.db", NULL_KEYS)
    start = dump(db)
    policy = pack(root, "- {id: a.all, match: {type: [sql.execute], preview: {all_rows: {gt: 0}}}, decision: deny}\n")
    with goex.Runtime(root, policy=policy, databases=URL) as rt:
        r = sql(rt.session(), text)
        assert r.status == "denied", r
        assert rt.entry_record(r.entry_id)["preview"]["all_rows"] == ["nk"]
    assert dump(db) == start and unlocked(db)


@pytest.mark.parametrize("text", [
    "INSERT INTO nk VALUES (NULL, 5)",
    "UPDATE nk SET k = NULL WHERE k = 'a'",
    "INSERT INTO nk VALUES (NULL, 9); UPDATE nk SET k = 'x' WHERE v = 9",
    "INSERT INTO nk VALUES (NULL, 9); UPDATE nk SET v = 10 WHERE k IS NULL",
])
def test_rows_keyed_by_null_are_undone(root: Path, text: str):
    db = make(root / "app.db", NULL_KEYS + "INSERT INTO nk VALUES (NULL, 0);")
    start = dump(db)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, text)
        assert r.ok, r.error
        assert dump(db) != start
        assert s.rollback()
        assert dump(db) == start
    verified(root)


@pytest.mark.parametrize("text", [
    "UPDATE nk SET v = v + 1 WHERE k = 'a'",
    "INSERT INTO nk VALUES (NULL, 9); UPDATE nk SET k = 'x' WHERE v = 9",  # NULL on the way only
    "UPDATE nk SET k = NULL WHERE k = 'a'; UPDATE nk SET k = 'a', v = 5 WHERE k IS NULL",
    "INSERT INTO nk VALUES (NULL, 9); DELETE FROM nk WHERE k IS NULL",
    "UPDATE nk SET k = NULL WHERE k = 'a'",  # a NULL key left: kept as an image
    "UPDATE pair SET b = NULL WHERE a = 1",
    "UPDATE pair SET v = 0 WHERE a = 1",
])
def test_keys_that_may_hold_null_are_undone_exactly(root: Path, text: str):
    """A key that may hold NULL but holds none before and after the action: the session records
    every change (a row keyed NULL only on the way is its first and last state); otherwise the
    database image is kept. Undo is exact either way."""
    db = make(root / "app.db", NULL_KEYS + "CREATE TABLE pair(a, b, v, PRIMARY KEY(a, b)); "
                                           "INSERT INTO pair VALUES (1, 1, 1), (1, 2, 2);")
    start = dump(db)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, text)
        assert r.ok, r.error
        mode = rt.entry_record(r.entry_id)["plan"]["before"]["mode"]
        assert mode == ("image" if "NULL WHERE" in text and "IS NULL" not in text or "pair" in text
                        else "changeset")
        assert s.rollback()
        assert dump(db) == start
    verified(root)


def test_a_null_key_only_the_committed_run_writes_is_not_committed_unrecorded(root: Path):
    """Statements whose effect differs from run to run cannot slip a NULL-keyed row past the
    session: the run that is committed is checked itself, not the dry run."""
    db = make(root / "app.db", NULL_KEYS)
    start = dump(db)
    # 'replace' sends it to the dry run and a second, staged run
    text = "INSERT INTO nk SELECT CASE WHEN abs(random()) % 2 THEN NULL ELSE 'z' || random() END, 9 /* replace */"
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        for _ in range(12):
            r = sql(s, text)
            assert r.ok or r.status == "failed", r
        assert s.rollback() is not None
        assert dump(db) == start
    verified(root)


@pytest.mark.parametrize("text", [
    "PRAGMA user_version = 9",
    "PRAGMA recursive_triggers = 1",
    "PRAGMA foreign_keys = 0",
    "PRAGMA writable_schema = 1",
    "SELECT * FROM pragma_user_version; PRAGMA user_version = 9",
    "ATTACH DATABASE 'outside.db' AS o",
    "ATTACH 'file:../outside.db?mode=rwc' AS o; CREATE TABLE o.t(a)",
    "CREATE TEMP TABLE t(a); INSERT INTO t VALUES (1)",
    "CREATE TEMP TRIGGER t AFTER UPDATE ON acct BEGIN DELETE FROM acct; END",
    "CREATE TRIGGER t AFTER UPDATE ON acct BEGIN DELETE FROM temp.x; END; UPDATE acct SET bal = 1 WHERE id = 1",
    "UPDATE acct SET bal = 1 WHERE id = 1; COMMIT; DELETE FROM acct",
    "UPDATE acct SET bal = 1 WHERE id = 1; SAVEPOINT x; DELETE FROM acct WHERE id > 0; RELEASE x",
    "SELECT load_extension('/tmp/x')",
    "VACUUM INTO '../copy.db'",
    "DELETE FROM sqlite_sequence",
    "DELETE FROM sqlite_master WHERE 1",
])
def test_settings_other_files_and_transaction_control_stay_out(root: Path, text: str):
    db = make(root / "app.db")
    start = dump(db)
    outside = set(os.listdir(root.parent))
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, text)
        if r.ok:  # allowed only where it is undone exactly
            s.rollback()
        assert dump(db) == start
        assert unlocked(db)
        assert sql(s, "UPDATE acct SET bal = 5 WHERE id = 1").ok  # the connection is usable after it
        s.rollback()
    assert dump(db) == start
    assert set(os.listdir(root.parent)) == outside
    verified(root)


@pytest.mark.parametrize("how", ["deny", "reject", "park", "check"])
def test_a_refused_action_leaves_rows_schema_sequence_and_version(root: Path, how: str):
    db = make(root / "app.db")
    start = dump(db)
    policy = pack(root, "- {id: a.sql, match: {type: [sql.execute], preview: {writes: true}}, decision: %s}\n"
                  % ("deny" if how == "deny" else "confirm"))
    approver = {"deny": None, "reject": lambda request: False, "park": "pending", "check": None}[how]
    text = ("INSERT INTO parent(name) VALUES ('dee'), ('eve'), ('fay'); DELETE FROM parent WHERE id = 1; "
            "UPDATE acct SET bal = 0 WHERE id > 0")
    with goex.Runtime(root, policy=policy, databases=URL, approver=approver) as rt:
        s = rt.session()
        if how == "check":
            decision, _ = s.check({"type": "sql.execute", "db": "main", "sql": text})
            assert decision.verdict == "confirm"
            r = None
        else:
            r = sql(s, text)
            assert not r.ok and r.status == ("awaiting_approval" if how == "park" else "denied")
        assert dump(db) == start
        assert unlocked(db)
        conn = sqlite3.connect(db, timeout=0)  # a raw writer goes ahead at once, its rows stay
        conn.execute("INSERT INTO log VALUES ('raw')")
        conn.commit()
        conn.close()
        if how == "park":
            assert r is not None and rt.approve(r.entry_id).ok
            conn = sqlite3.connect(db)
            assert conn.execute("SELECT count(*) FROM parent").fetchone()[0] == 5
            assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'parent'").fetchone()[0] == 6
            assert conn.execute("SELECT msg FROM log").fetchall() == [("raw",)]
            conn.close()
            s.rollback()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM log")
    conn.commit()
    conn.close()
    assert dump(db) == start
    verified(root)


def test_nothing_is_held_while_a_person_is_asked(root: Path):
    """While the approver is asked, another process writes the database at once; the approved
    action then runs on what is there, and undo takes back only its own rows."""
    db = make(root / "app.db")
    start = dump(db)
    policy = pack(root, "- {id: a.sql, match: {type: [sql.execute], preview: {writes: true}}, decision: confirm}\n")
    seen = {}

    def approver(request) -> bool:
        seen["unlocked"] = unlocked(db)
        writer = subprocess.run([sys.executable, "-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], "
                                 "timeout=0)\nc.execute(\"UPDATE acct SET bal = bal + 1000 WHERE id = 2\")\n"
                                 "c.commit()\n", str(db)], capture_output=True, text=True, timeout=60)
        seen["writer"] = writer.returncode
        return True

    with goex.Runtime(root, policy=policy, databases=URL, approver=approver) as rt:
        s = rt.session()
        r = sql(s, "UPDATE acct SET bal = bal * 2 WHERE id > 0")
        assert r.ok, r.error
        assert seen == {"unlocked": True, "writer": 0}
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT bal FROM acct ORDER BY id").fetchall() == [(20,), (2040,), (60,)]
        conn.close()
        assert s.rollback()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT bal FROM acct ORDER BY id").fetchall() == [(10,), (1020,), (30,)]
    conn.execute("UPDATE acct SET bal = 20 WHERE id = 2")
    conn.commit()
    conn.close()
    assert dump(db) == start


def test_a_commit_refused_by_a_deferred_foreign_key_leaves_nothing(root: Path):
    """The run passes, its preview is allowed and its capture journaled; COMMIT then fails on a
    deferred foreign key: nothing is committed, the entry says failed, the database is unlocked
    and the next action runs."""
    db = make(root / "app.db", "CREATE TABLE d(id INTEGER PRIMARY KEY, p INT REFERENCES parent(id) "
                               "DEFERRABLE INITIALLY DEFERRED); INSERT INTO d VALUES (1, 1);")
    start = dump(db)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, "INSERT INTO d VALUES (2, 99)")
        assert not r.ok and r.status == "failed", r
        assert dump(db) == start and unlocked(db)
        r = sql(s, "INSERT INTO d VALUES (2, 2)")
        assert r.ok, r.error
        assert s.rollback()
    assert dump(db) == start
    verified(root)


KILL = r'''
import os, signal, sys
import goex
from goex.adapters.sql import sqlite as engine

where = sys.argv[2]
original = engine.SqliteEngine._staged
def staged(self, *args, **kw):
    out = original(self, *args, **kw)
    commit = out.commit
    def killed():
        if where == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        commit()
        if where == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    out.commit = killed
    return out
engine.SqliteEngine._staged = staged
rt = goex.Runtime(sys.argv[1], policy="permissive", databases={"main": "sqlite:///app.db"})
r = rt.session().execute({"type": "sql.execute", "db": "main", "sql": sys.argv[3]})
print("not killed", r)
'''


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("text", [
    "DELETE FROM parent WHERE id = 1; INSERT INTO parent(name) VALUES ('dee')",  # the single run
    "INSERT OR REPLACE INTO uniq VALUES (1, 2, 0)",  # a dry run, then a staged run
])
def test_a_kill_at_the_commit_is_settled_by_recovery(root: Path, where: str, text: str):
    """Killed with the capture journaled, just before or just after COMMIT: the database holds
    either nothing of the action or all of it, recovery says which, and undo is exact."""
    db = make(root / "app.db")
    start = dump(db)
    after = plain_run(db, text, root.parent)
    done = subprocess.run([sys.executable, "-c", KILL, str(root), where, text], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert dump(db) == (start if where == "before" else after)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        report = rt.recover()
        assert report is not None
        assert dump(db) == (start if where == "before" else after)
        rt.rollback_all()
        assert dump(db) == start
        assert unlocked(db)
    verified(root)


WRITER = r'''
import sys
import goex
rt = goex.Runtime(sys.argv[1], policy="permissive", databases={"main": "sqlite:///app.db"})
s = rt.session()
for i in range(int(sys.argv[2])):
    r = s.execute({"type": "sql.execute", "db": "main",
                   "sql": "UPDATE acct SET bal = bal + 1 WHERE id = 1; INSERT INTO log VALUES ('%s')" % sys.argv[3]})
    assert r.ok, r.error
rt.close()
'''

RAW = r'''
import sqlite3, sys
for i in range(int(sys.argv[2])):
    c = sqlite3.connect(sys.argv[1], timeout=60)
    c.execute("UPDATE acct SET bal = bal + 1 WHERE id = 1")
    c.execute("INSERT INTO log VALUES ('raw')")
    c.commit()
    c.close()
'''


def test_concurrent_goex_processes_and_a_raw_writer_lose_no_update(root: Path):
    """Two goex processes and a raw writer increment one row together: every increment lands
    (no run's preview and commit straddle another's); undo takes back goex's rows (forced when
    the raw writer changed the row after a goex entry: a conflict) and leaves the raw writer's."""
    db = make(root / "app.db")
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), name]) for name in ("g1", "g2")]
    procs.append(subprocess.Popen([sys.executable, "-c", RAW, str(db), str(n)]))
    deadline = time.time() + 300
    for p in procs:
        assert p.wait(timeout=max(1, deadline - time.time())) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT bal FROM acct WHERE id = 1").fetchone()[0] == 10 + 3 * n
    assert conn.execute("SELECT msg, count(*) FROM log GROUP BY msg ORDER BY msg").fetchall() == \
        [("g1", n), ("g2", n), ("raw", n)]
    conn.close()
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        assert len({e.session for e in rt.journal.entries()}) == 2
        try:
            rt.rollback_all()
            forced = False
        except goex.errors.UndoConflict:  # the raw writer changed the row after a goex entry
            rt.rollback_all(force=True)
            forced = True
    conn = sqlite3.connect(db)
    if not forced:
        assert conn.execute("SELECT bal FROM acct WHERE id = 1").fetchone()[0] == 10 + n
    assert conn.execute("SELECT msg, count(*) FROM log GROUP BY msg").fetchall() == [("raw", n)]
    conn.close()
    verified(root)


@pytest.mark.parametrize("text", [
    # 'replace' in a comment sends it to the dry run and a second, staged run; the subquery is
    # evaluated once per run: nothing in one run, every row in the other
    "DELETE FROM acct WHERE (SELECT abs(random()) % 2) = 0 /* replace */",
    "DELETE FROM acct WHERE (SELECT abs(random()) % 2) = 0; SELECT 1 FROM wr",  # WITHOUT ROWID: two runs
    "UPDATE acct SET bal = 0 WHERE (SELECT abs(random()) % 2) = 0 /* replace */",
    "CREATE TABLE junk(a); DELETE FROM acct WHERE (SELECT abs(random()) % 2) = 0",  # DDL: two runs, image
])
@pytest.mark.parametrize("asked", [False, True])
def test_a_second_run_that_does_more_than_the_preview_is_not_committed(root: Path, text: str, asked: bool):
    """Where the statements run twice (the dry run for the preview, then the staged run; or a
    person asked, then the run), one whose effect varies from run to run must not commit more
    than the policy or the person was shown: a pack refusing every-row changes never sees all of
    `acct` go while its preview said none, nor does a person who approves only partial changes."""
    db = make(root / "app.db", WR)
    rule = "{type: [sql.execute], preview: {all_rows: {gt: 0}}}, decision: deny"
    if asked:
        rule = "{type: [sql.execute], preview: {writes: true}}, decision: confirm"
    policy = pack(root, f"- {{id: a.rule, match: {rule}}}\n")

    def person(request) -> bool:  # approves what it is shown keeps every table partly
        return request.preview["all_rows"] == []

    with goex.Runtime(root, policy=policy, databases=URL, approver=person if asked else None) as rt:
        s = rt.session()
        for _ in range(24):
            start = rows(db, "acct")
            r = sql(s, text)
            if r.ok:
                assert rt.entry_record(r.entry_id)["preview"]["all_rows"] == []
                assert set(start) & set(rows(db, "acct")), "every row went, while the preview said none"
                assert s.rollback()
            assert rows(db, "acct") == start
    verified(root)


@pytest.mark.parametrize("text", [
    "UPDATE acct SET bal = 0 WHERE id > 0; INSERT INTO acct VALUES (1, 'x', 0)",
    "UPDATE acct SET bal = 0 WHERE id > 0; UPDATE OR ROLLBACK acct SET id = 1 WHERE id = 2; DELETE FROM acct",
    "INSERT INTO parent(name) VALUES ('dee'); INSERT OR FAIL INTO uniq VALUES (9, 1, 0)",
    "CREATE TRIGGER boom BEFORE DELETE ON acct WHEN old.id = 3 BEGIN SELECT RAISE(ROLLBACK, 'no'); END; "
    "DELETE FROM acct WHERE id > 0",
    "UPDATE acct SET bal = 0 WHERE id > 0; SELECT * FROM no_such_table",
    "DELETE FROM acct WHERE id > 0; UPDATE acct SET bal = 1 WHERE id = 1 AND (SELECT abs(random()) % 2) = 0 "
    "AND 1 / 0 IS NULL /* replace */",
])
def test_a_statement_list_that_fails_part_way_leaves_nothing(root: Path, text: str):
    """A constraint, OR ROLLBACK (SQLite ends the transaction itself), OR FAIL, RAISE(ROLLBACK)
    from a trigger, or an error in a later statement: nothing of the list is committed, the
    database is unlocked and the next action runs."""
    db = make(root / "app.db")
    start = dump(db)
    with goex.Runtime(root, policy="permissive", databases=URL) as rt:
        s = rt.session()
        r = sql(s, text)
        if r.ok:  # only the last case may pass (division by zero is NULL in SQLite): undone exactly
            assert s.rollback()
        assert dump(db) == start and unlocked(db)
        r = sql(s, "UPDATE acct SET bal = 5 WHERE id = 1")
        assert r.ok, r.error
        assert s.rollback()
    assert dump(db) == start
    verified(root)
