"""SQLite confinement, attacked through the public API: a database file swapped for a symlink
(to a host file or to goex's journal) between actions, by code.run or directly; TEMP objects on
goex's kept-open connection; planted hot journals and -wal/-shm files; and the `all_rows` /
`creates_trigger` preview fields judged from the dry run's effect, whatever the syntax."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import goex
from goex.errors import GoexError

ROWS = 100


def make_db(path: Path, rows: int = ROWS) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INT);"
                       "CREATE TABLE log(msg TEXT);")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(i, f"item-{i:04d}" * 20, i) for i in range(1, rows + 1)])
    conn.commit()
    conn.close()


def rows_of(path: Path, table: str = "orders") -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
    finally:
        conn.close()


def sql(session: goex.Session, text: str, db: str = "main") -> goex.Result:
    return session.execute({"type": "sql.execute", "db": db, "sql": text})


@pytest.fixture
def world(tmp_path: Path):
    """A workspace with app.db, and outside it a database and a plain file an attacker wants."""
    root = tmp_path / "ws"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    make_db(root / "app.db")
    make_db(outside / "victim.db")
    (outside / "secret.txt").write_bytes(b"host secret\n")
    return root, outside


def outside_state(outside: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outside.iterdir())}


def journal_entries(root: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{root / '.goex' / 'journal.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, id, status FROM entries ORDER BY seq").fetchall()
    finally:
        conn.close()


# -- finding 1: a database file swapped for a symlink ---------------------------------------------


@pytest.mark.parametrize("target", ["victim.db", "secret.txt", "journal"])
@pytest.mark.parametrize("opened_first", [True, False])
def test_database_swapped_for_a_symlink_is_refused(world, target: str, opened_first: bool):
    root, outside = world
    before = outside_state(outside)
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        if opened_first:  # goex's kept-open connection is on the real file
            assert sql(s, "SELECT count(*) FROM orders").ok
        os.rename(root / "app.db", root / "real.db")
        link = str(root / ".goex" / "journal.db") if target == "journal" else str(outside / target)
        os.symlink(link, root / "app.db")
        journal = journal_entries(root)
        for text in ("SELECT * FROM entries", "DELETE FROM entries", "DELETE FROM orders",
                     "CREATE TABLE planted(a)", "SELECT count(*) FROM orders"):
            r = sql(s, text)
            assert not r.ok and r.status == "denied", (text, r)
            assert "symbolic link" in r.error
        assert outside_state(outside) == before
        assert journal_entries(root)[:len(journal)] == journal  # only the refusals were added
        assert [e["status"] for e in rt.log()[-5:]] == ["denied"] * 5
        assert rt.verify().records > 0


def test_database_hard_linked_to_the_journal_is_refused(world):
    root, _ = world
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "SELECT 1").ok
        journal = journal_entries(root)
        os.unlink(root / "app.db")
        os.link(root / ".goex" / "journal.db", root / "app.db")
        r = sql(s, "DELETE FROM entries")
        assert not r.ok and r.status == "denied" and "hard links" in r.error
        assert journal_entries(root)[:len(journal)] == journal and rt.verify().records > 0


def test_a_folder_on_the_way_swapped_for_a_symlink_is_refused(tmp_path: Path):
    root = tmp_path / "ws"
    (root / "data").mkdir(parents=True)
    make_db(root / "data" / "app.db")
    outside = tmp_path / "outside"
    outside.mkdir()
    make_db(outside / "app.db")
    before = outside_state(outside)
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///data/app.db"}) as rt:
        s = rt.session()
        assert sql(s, "UPDATE orders SET qty = 0 WHERE id = 1").ok
        os.rename(root / "data", root / "data.old")
        os.symlink(str(outside), root / "data")
        r = sql(s, "DELETE FROM orders")
        assert not r.ok and r.status == "denied" and "outside the workspace" in r.error
        with pytest.raises(GoexError):
            s.undo()
        assert outside_state(outside) == before
        # put back, the database undoes as usual
        os.unlink(root / "data")
        os.rename(root / "data.old", root / "data")
        s.undo()
        assert rows_of(root / "data" / "app.db")[0][2] == 1


@pytest.mark.parametrize("ddl", [False, True])
def test_undo_never_writes_through_a_link_to_an_outside_copy(world, ddl: bool):
    """The outside file is a copy of the database, so the undo data would apply cleanly to it."""
    root, outside = world
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        statement = "DROP TABLE log" if ddl else "DELETE FROM orders WHERE id <= 10"
        assert sql(s, statement).ok
        shutil.copy(root / "app.db", outside / "copy.db")
        before = outside_state(outside)
        os.rename(root / "app.db", root / "moved.db")
        os.symlink(str(outside / "copy.db"), root / "app.db")
        with pytest.raises(GoexError) as info:
            s.undo()
        assert "symbolic link" in str(info.value)
        with pytest.raises(GoexError):
            s.rollback(force=True)
        assert outside_state(outside) == before
        os.unlink(root / "app.db")
        os.rename(root / "moved.db", root / "app.db")
        s.rollback()
    assert len(rows_of(root / "app.db")) == ROWS and rows_of(root / "app.db", "log") == []


def test_a_database_the_action_created_is_removed_by_undo_only_by_its_name(world):
    root, outside = world
    before = outside_state(outside)
    with goex.Runtime(root, policy="permissive", databases={"new": "sqlite:///new.db"}) as rt:
        s = rt.session()
        assert sql(s, "CREATE TABLE t(a); INSERT INTO t VALUES (1)", db="new").ok
        os.unlink(root / "new.db")
        os.symlink(str(outside / "victim.db"), root / "new.db")
        with pytest.raises(GoexError):
            s.undo()
        assert outside_state(outside) == before


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_code_run_swapping_the_database_for_a_link_is_refused(world, backend: str):
    root, outside = world
    before = outside_state(outside)
    start = rows_of(root / "app.db")
    with goex.Runtime(root, policy="permissive", sandbox=backend, sandbox_options={"pool_size": 1},
                      databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "SELECT count(*) FROM orders").ok
        code = ("import os\n"
                "os.rename('app.db', 'kept.db')\n"
                f"os.symlink({str(outside / 'victim.db')!r}, 'app.db')\n"
                "os.symlink('.goex/journal.db', 'j.db')\n")
        ran = s.execute({"type": "code.run", "code": code})
        for text in ("DELETE FROM orders", "UPDATE orders SET qty = -1", "SELECT * FROM orders"):
            r = sql(s, text)
            if ran.ok and os.path.islink(root / "app.db"):  # the link landed: goex must refuse to open it
                assert not r.ok and r.status == "denied", (text, r)
        assert outside_state(outside) == before
        rt.rollback_all(force=True)
    assert outside_state(outside) == before
    assert rows_of(root / "app.db") == start


# -- finding 5: TEMP objects on the kept-open connection -----------------------------------------


@pytest.mark.parametrize("statement", [
    "CREATE TEMP TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)",
    "CREATE TEMPORARY TABLE orders AS SELECT * FROM main.orders WHERE 0",
    "CREATE TABLE temp.orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)",
    "/* hidden */ CREATE TABLE \"temp\".orders(id, item, qty)",
    "CREATE TEMP TRIGGER eat AFTER INSERT ON main.orders BEGIN DELETE FROM main.orders WHERE id = new.id; END",
    "CREATE TRIGGER temp.eat AFTER INSERT ON main.orders BEGIN DELETE FROM main.orders WHERE id = new.id; END",
    "CREATE TEMP VIEW v AS SELECT 1",
])
def test_temp_objects_are_refused_and_later_rows_land_in_the_file(world, statement: str):
    root, _ = world
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        r = sql(rt.session(), statement)
        assert not r.ok and r.status == "denied", r
        later = rt.session()  # a user's later session on the same runtime (same kept-open connection)
        assert sql(later, "INSERT INTO orders(id, item, qty) VALUES (1000, 'user', 1)").ok
        assert sql(later, "INSERT INTO orders(id, item, qty) VALUES (1001, 'user', 2)").ok
    assert [r[0] for r in rows_of(root / "app.db")][-2:] == [1000, 1001]


def test_a_temp_object_on_the_connection_is_dropped_before_the_next_action(world):
    """The second line: should a TEMP table exist on goex's connection, the connection is reset."""
    root, _ = world
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "SELECT 1").ok
        engine = rt.adapter("sql").engine("main")  # type: ignore[attr-defined]
        engine._work[0].execute("CREATE TEMP TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)")
        assert sql(s, "INSERT INTO orders(id, item, qty) VALUES (1000, 'user', 1)").ok
        r = sql(s, "SELECT count(*) FROM temp.sqlite_master")
        assert r.ok and r.output["rows"] == [[0]]
        s.undo(2)
    assert len(rows_of(root / "app.db")) == ROWS


# -- finding 6: planted hot journal, -wal, -shm ---------------------------------------------------

HOT_JOURNAL = r'''
import shutil, sqlite3, sys
victim, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copy(victim, work)
c = sqlite3.connect(work, isolation_level=None)
c.execute(f"DELETE FROM orders WHERE id > {int(sys.argv[4])}")   # the state the journal will hold
c.execute("PRAGMA synchronous=OFF")  # the journal header is complete at once: hot when left behind
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE orders SET item = 'x'")
shutil.copy(work + "-journal", out)  # a write transaction in flight: its journal, as a crash leaves it
c.execute("ROLLBACK")
'''

WAL = r'''
import shutil, sqlite3, sys
victim, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copy(victim, work)
c = sqlite3.connect(work, isolation_level=None)
c.execute("PRAGMA journal_mode=wal")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute(f"DELETE FROM orders WHERE id > {int(sys.argv[4])}")
shutil.copy(work + "-wal", out)
'''


def forge(script: str, victim: Path, tmp: Path, keep: int = ROWS // 2) -> bytes:
    out = tmp / "forged"
    subprocess.run([sys.executable, "-c", script, str(victim), str(tmp / "work.db"), str(out), str(keep)],
                   check=True, timeout=60)
    return out.read_bytes()


def test_the_forged_journal_is_hot(world, tmp_path: Path):
    """The attack is real: plain SQLite replays the planted journal, and rows are gone."""
    root, _ = world
    plain = tmp_path / "plain.db"
    shutil.copy(root / "app.db", plain)
    Path(f"{plain}-journal").write_bytes(forge(HOT_JOURNAL, plain, tmp_path))
    assert len(rows_of_rw(plain)) < ROWS


def rows_of_rw(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM orders").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["direct", "fs.write"])
@pytest.mark.parametrize("opened_first", [True, False])
@pytest.mark.parametrize("sidecar", ["-journal", "-wal", "-shm"])
def test_a_planted_sidecar_is_never_replayed(world, tmp_path: Path, how: str, opened_first: bool, sidecar: str):
    root, _ = world
    db = root / "app.db"
    start = rows_of(db)
    forged = forge(HOT_JOURNAL if sidecar == "-journal" else WAL, db, tmp_path) if sidecar != "-shm" else b"\0" * 32768
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        if opened_first:
            assert sql(s, "SELECT count(*) FROM orders").ok
        planted = True
        if how == "direct":
            Path(f"{db}{sidecar}").write_bytes(forged)
        else:
            w = s.execute({"type": "fs.write", "path": f"app.db{sidecar}", "encoding": "base64",
                           "content": base64.b64encode(forged).decode()})
            planted = w.ok  # the runtime may refuse to write a database's sidecar at all
        r = sql(s, "SELECT count(*) FROM orders")
        if planted:
            assert not r.ok and r.status == "denied" and f"app.db{sidecar}" in r.error, r
        else:
            assert r.ok and r.output["rows"] == [[ROWS]]
        w = sql(s, "UPDATE orders SET qty = 0 WHERE id = 1")
        assert w.ok != planted
        s.rollback(force=True)  # undoes the fs.write too
        assert os.path.exists(f"{db}{sidecar}") == (how == "direct")  # goex did not replay and remove it
        Path(f"{db}{sidecar}").unlink(missing_ok=True)
        r = sql(s, "SELECT count(*) FROM orders")  # removed, the database is usable again
        assert r.ok and r.output["rows"] == [[ROWS]]
    assert rows_of(db) == start


def test_a_replaced_wal_is_refused_for_a_wal_database(world, tmp_path: Path):
    root, _ = world
    db = root / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.close()
    start = rows_of(db)
    forged = forge(WAL, db, tmp_path)
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert sql(s, "UPDATE orders SET qty = 0 WHERE id = 1").ok
        os.unlink(f"{db}-wal")
        Path(f"{db}-wal").write_bytes(forged)  # a new file in its place
        r = sql(s, "SELECT count(*) FROM orders")
        assert not r.ok and r.status == "denied" and "app.db-wal" in r.error


KILLED = r'''
import os, signal, sys
import goex
from goex.adapters.sql import sqlite as engine

connect = engine._connect
def small_cache(path, confined):
    conn = connect(path, confined)
    conn.execute("PRAGMA cache_size=5")  # the transaction spills: the database file changes before commit
    return conn
engine._connect = small_cache
original = engine.SqliteEngine.stage
def stage(self, *args):
    staged = original(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)
engine.SqliteEngine.stage = stage
rt = goex.Runtime(sys.argv[1], policy="permissive", databases={"main": "sqlite:///app.db"})
rt.session().execute({"type": "sql.execute", "db": "main", "sql": "UPDATE orders SET item = 'changed'"})
'''


def test_goex_own_hot_journal_is_rolled_back_after_it_was_killed(world):
    root, _ = world
    db = root / "app.db"
    start = rows_of(db)
    done = subprocess.run([sys.executable, "-c", KILLED, str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode < 0, done.stderr
    journal = Path(f"{db}-journal")
    assert journal.exists() and journal.read_bytes()[:1] != b"\0", "the kill left no hot journal"
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        assert all(v in ("reverted", "applied") for v in rt.recover().outcomes.values())
        r = sql(rt.session(), "SELECT count(*) FROM orders WHERE item = 'changed'")
        assert r.ok and r.output["rows"] == [[0]], r
    assert rows_of(db) == start and not journal.exists()


# -- finding 9: the preview says when every row of a table changes -------------------------------

SMALL = """
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE w(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
CREATE TABLE one(id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE src(id INTEGER PRIMARY KEY);
CREATE TABLE feed(msg TEXT);
INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');
INSERT INTO w VALUES ('a', '1'), ('b', '2'), ('c', '3');
INSERT INTO one VALUES (1, 'x');
INSERT INTO src VALUES (1), (2), (3), (4);
CREATE TRIGGER fed AFTER INSERT ON feed BEGIN UPDATE t SET v = new.msg; END;
"""


@pytest.fixture
def small(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    conn = sqlite3.connect(root / "app.db")
    conn.executescript(SMALL)
    conn.close()
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        yield rt


def preview(rt: goex.Runtime, text: str) -> dict:
    return rt.session().check({"type": "sql.execute", "db": "main", "sql": text})[1]


@pytest.mark.parametrize("statement, tables", [
    ("UPDATE t SET v = 'z' WHERE 1", ["t"]),
    ("UPDATE t SET v = 'z' WHERE true", ["t"]),
    ("UPDATE t SET v = 'z' WHERE id = id", ["t"]),
    ("DELETE FROM t WHERE 1=1 OR id = 3", ["t"]),
    ("DELETE FROM t WHERE id IN (SELECT id FROM t)", ["t"]),
    ("DELETE FROM t WHERE id IN (SELECT id FROM src)", ["t"]),
    ("DELETE FROM t", ["t"]),
    ("UPDATE t SET v = v", ["t"]),  # touched, even if nothing differs after
    ("REPLACE INTO t SELECT id, 'z' FROM t", ["t"]),
    ("INSERT INTO t(id, v) SELECT id, 'z' FROM src WHERE true ON CONFLICT(id) DO UPDATE SET v = excluded.v", ["t"]),
    ("INSERT INTO feed VALUES ('fired')", ["t"]),  # through a trigger created earlier
    ("UPDATE w SET v = 'z' WHERE k = k", ["w"]),
    ("UPDATE w SET k = k || '!'", ["w"]),
    ("UPDATE t SET id = id + 100", ["t"]),
    ("DELETE FROM t WHERE id > 1; DELETE FROM t WHERE id = 1", ["t"]),
    ("UPDATE t SET v = 'z' WHERE 1; UPDATE w SET v = 'z'", ["t", "w"]),
    # harmless twins
    ("UPDATE t SET v = 'z' WHERE id = 3", []),
    ("DELETE FROM t WHERE id > 1", []),
    ("INSERT INTO t(v) VALUES ('new'); DELETE FROM t WHERE v = 'new'", []),
    ("INSERT INTO t(id, v) VALUES (1, 'z') ON CONFLICT(id) DO UPDATE SET v = excluded.v", []),
    ("UPDATE one SET v = 'z'", []),  # a single row is not "every row"
    ("DELETE FROM t WHERE id > 1; INSERT INTO t(v) VALUES ('n1'), ('n2'), ('n3'); UPDATE t SET v = 'z' WHERE id > 4", []),
])
def test_all_rows_is_judged_from_the_effect(small: goex.Runtime, statement: str, tables: list[str]):
    p = preview(small, statement)
    assert p["all_rows"] == tables, p
    assert p["creates_trigger"] is False


def test_creates_trigger_is_in_the_preview(small: goex.Runtime):
    p = preview(small, "CREATE TRIGGER later AFTER INSERT ON src BEGIN DELETE FROM t; END")
    assert p["creates_trigger"] is True and p["all_rows"] == []
    assert preview(small, "CREATE TABLE x(a)")["creates_trigger"] is False
    assert preview(small, "SELECT * FROM t")["all_rows"] == []


def test_policy_rules_may_name_the_new_fields():
    from goex.policy import Rule
    rule = Rule.model_validate({"id": "x.trigger", "match": {"type": ["sql.execute"], "preview": {"creates_trigger": True}},
                                "decision": "confirm"})
    assert rule.match.preview == {"creates_trigger": True}


# -- privileges -----------------------------------------------------------------------------------


def test_agent_privileges_report_the_authorizer(world):
    root, _ = world
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        info = rt.adapter("sql").engine("main").agent_privileges()  # type: ignore[attr-defined]
    assert info["runs_as"] == "sqlite authorizer" and info["safe"] is True and info["dangerous"] == []
    assert "workspace" in info["detail"]


@pytest.mark.parametrize("url", ["sqlite:///../out.db", "sqlite:///sub/../../out.db", "sqlite:///./../../out.db"])
def test_a_relative_sqlite_path_never_leaves_the_root(tmp_path: Path, url: str):
    root = tmp_path / "work" / "root"
    (root / "sub").mkdir(parents=True)
    with pytest.raises(GoexError, match="leaves the root") as err:
        goex.Runtime(root, databases={"main": url})
    assert "sqlite:////" in str(err.value)  # says how to name an outside database on purpose
    assert not list(tmp_path.rglob("out.db"))
    from goex.cli import main
    assert main(["exec", "--root", str(root), "--db", f"main={url}", '{"type": "sql.execute", "db": "main",'
                 ' "sql": "CREATE TABLE t(x)"}']) != 0
    assert not list(tmp_path.rglob("out.db"))


def test_a_mistyped_outside_sqlite_path_is_an_error_not_a_new_database(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    missing = tmp_path / "data" / "app.db"
    with pytest.raises(GoexError, match="does not exist"):
        goex.Runtime(root, databases={"main": f"sqlite:///{missing}"})
    assert not missing.exists()
    make_db(tmp_path / "app.db")
    with goex.Runtime(root, databases={"main": f"sqlite:///{tmp_path / 'app.db'}"}) as rt:
        assert rt.session().execute({"type": "sql.execute", "db": "main", "sql": "SELECT count(*) FROM orders"}).ok
    with goex.Runtime(root, databases={"main": "sqlite:///new/app.db"}) as rt:  # inside the root: created
        session = rt.session()
        create = {"type": "sql.execute", "db": "main", "sql": "CREATE TABLE t(x)"}
        missing_folder = session.execute(create)
        assert not missing_folder.ok and "Create the folder first" in missing_folder.error
        assert session.execute({"type": "fs.mkdir", "path": "new"}).ok
        assert session.execute(create).ok
    assert (root / "new" / "app.db").exists()
