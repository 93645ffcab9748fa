"""Coalesced undo on MariaDB: a session's row changes are undone in one transaction with one
journal record, ending exactly where undoing each entry in turn ends (rows and AUTO_INCREMENT
counters), conflicts included, with another client writing in between. Tables with triggers and
sequences, whose undo needs DDL (which commits in MariaDB), are undone entry by entry.

Against the real server, each test in a database of its own."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

pymysql = pytest.importorskip("pymysql")

import goex  # noqa: E402
from goex.adapters.base import Adapter  # noqa: E402
from goex.adapters.sql.mysql import MysqlEngine  # noqa: E402
from test_sql_mysql import Db, _server_up  # noqa: E402

pytestmark = pytest.mark.skipif(not _server_up(), reason="no MySQL/MariaDB server at 127.0.0.1:3306")

SCHEMA = """
CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(20)) ENGINE=InnoDB;
CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT, w VARCHAR(20), p INT,
  FOREIGN KEY (p) REFERENCES parent(id)) ENGINE=InnoDB;
CREATE TABLE bag (msg VARCHAR(20)) ENGINE=InnoDB;
INSERT INTO parent VALUES (1, 'one'), (2, 'two');
INSERT INTO t (v, w, p) VALUES (0, 'a', 1), (0, 'b', 2), (0, 'c', NULL);
INSERT INTO bag VALUES ('start');
"""


@pytest.fixture
def db():
    d = Db()
    d.setup(SCHEMA)
    yield d
    d.drop()


def sql(s: goex.Session, statement: str, params: list | None = None) -> str:
    result = s.execute({"type": "sql.execute", "db": "main", "sql": statement, "params": params})
    assert result.ok, result.error
    return result.entry_id


def state(db: Db) -> tuple:
    """Every row, and t's AUTO_INCREMENT counter."""
    return (db.query("SELECT id, v, w, p FROM t ORDER BY id"), db.query("SELECT * FROM parent ORDER BY id"),
            sorted(db.query("SELECT msg FROM bag")),
            db.query(f"SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db.name}' "
                     "AND TABLE_NAME='t'"))


def undoing_records(rt: goex.Runtime) -> int:
    return sum(json.loads(body)["kind"] == "undoing" for _, body, _ in rt.journal.records())


def test_a_session_of_row_changes_is_undone_with_one_record(db: Db, tmp_path: Path):
    start = state(db)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        ids = [sql(s, "UPDATE t SET v = v + 1 WHERE id = ?", [i % 3 + 1]) for i in range(10)]
        ids.append(sql(s, "INSERT INTO t (v, w) VALUES (7, 'new')"))  # moves the counter
        ids.append(sql(s, "INSERT INTO bag VALUES ('x'), ('x')"))
        ids.append(sql(s, "DELETE FROM bag WHERE msg = 'start'"))
        before = undoing_records(rt)
        assert sorted(s.rollback()) == sorted(ids)
        assert undoing_records(rt) == before + 1  # one record names them all
        rt.verify()
    assert state(db) == start  # rows and the counter as they were


def test_another_clients_change_in_the_middle_stops_at_the_entry_it_concerns(db: Db, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        sql(s, "UPDATE t SET v = 10 WHERE id = 2")
        expected = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        db.setup("UPDATE t SET v = 99 WHERE id = 1")
        newer = [sql(s, "UPDATE t SET v = 2 WHERE id = 1"), sql(s, "UPDATE t SET w = 'z' WHERE id = 3")]
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == expected and caught.value.undone == newer[::-1]
        assert db.query("SELECT id, v, w FROM t ORDER BY id") == ((1, 99, "a"), (2, 10, "b"), (3, 0, "c"))
        rt.verify()


def test_a_child_row_added_by_another_client_keeps_its_parent(db: Db, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        parent = sql(s, "INSERT INTO parent VALUES (7, 'seven')")
        later = sql(s, "UPDATE t SET v = 5 WHERE id = 1")
        db.setup("INSERT INTO t (v, w, p) VALUES (0, 'child', 7)")
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == parent and caught.value.undone == [later]
        assert not caught.value.forceable  # forcing would leave the child dangling
        assert db.query("SELECT count(*) FROM parent WHERE id = 7") == ((1,),)


def test_tables_with_triggers_are_undone_entry_by_entry(db: Db, tmp_path: Path):
    db.setup("CREATE TRIGGER count_bag AFTER INSERT ON bag FOR EACH ROW UPDATE parent SET name = 'seen' WHERE id = 2")
    start = state(db)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        for i in range(3):
            sql(s, "INSERT INTO bag VALUES (?)", [f"m{i}"])
        before = undoing_records(rt)
        s.rollback()
        assert undoing_records(rt) == before + 3
    assert state(db) == start
    assert db.query("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                    f"WHERE TRIGGER_SCHEMA='{db.name}'") == (("count_bag",),)


def test_a_change_between_the_check_and_the_undo_is_reported_for_its_entry(db: Db, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        expected = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        newer = sql(s, "UPDATE t SET v = 2 WHERE id = 2")
        checked = MysqlEngine.range_conflicts

        def then_written(self, captureds, get_blob):
            found = checked(self, captureds, get_blob)
            db.setup("UPDATE t SET v = 50 WHERE id = 1")
            return found

        monkeypatch.setattr(MysqlEngine, "range_conflicts", then_written)
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == expected and caught.value.undone == [newer]
        assert db.query("SELECT id, v FROM t ORDER BY id") == ((1, 50), (2, 0), (3, 0))
        rt.verify()


def test_coalesced_and_entry_by_entry_undo_agree_on_random_histories(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """Differential: the same random history (goex statements and another client's writes)
    undone with coalescing and with it switched off ends the same way, counters included."""

    def run(seed: int, coalesce: bool) -> tuple:
        rng = random.Random(seed)
        root = tmp_path / f"{seed}-{coalesce}"
        root.mkdir()
        db = Db()
        try:
            db.setup(SCHEMA)
            with monkeypatch.context() as m:
                if not coalesce:
                    for cls in [Adapter, *Adapter.__subclasses__()]:
                        m.setattr(cls, "coalesce", lambda self, plan, after: None, raising=False)
                with goex.Runtime(root, policy="permissive", durability="process", databases={"main": db.url}) as rt:
                    s = rt.session()
                    for step in range(rng.randrange(4, 16)):
                        if rng.random() < 0.8:
                            statement = rng.choice([
                                "UPDATE t SET v = ? WHERE id = 1", "UPDATE t SET w = ? WHERE id = 2",
                                "INSERT INTO t (v, w) VALUES (?, 'n')", "DELETE FROM t WHERE v = ?",
                                "INSERT INTO bag VALUES (?)", "DELETE FROM bag WHERE msg = ?"])
                            s.execute({"type": "sql.execute", "db": "main", "sql": statement, "params": [step]})
                        else:
                            db.setup(rng.choice(["UPDATE t SET v = 100 WHERE id = 1", "DELETE FROM t WHERE id = 4",
                                                 "INSERT INTO bag VALUES ('o')", "INSERT INTO t (v) VALUES (-1)"]))
                    try:
                        outcome: tuple = ("ok", s.rollback())
                    except goex.UndoConflict as exc:
                        outcome = ("conflict", exc.entry_id, exc.undone, sorted(t.partition(".")[2]
                                                                                for t, _ in exc.conflicts))
                    statuses = [(e["id"], e["status"]) for e in rt.log()]
                    rt.verify()
            return outcome, statuses, state(db)
        finally:
            db.drop()

    ranges: list[int] = []
    real = MysqlEngine.revert_range

    def counted(self, captureds, get_blob):
        ranges.append(len(captureds))
        return real(self, captureds, get_blob)

    monkeypatch.setattr(MysqlEngine, "revert_range", counted)
    conflicts = 0
    for seed in range(int(os.environ.get("GOEX_COALESCE_SEEDS", "12"))):
        coalesced, one_by_one = run(seed, True), run(seed, False)
        assert coalesced == one_by_one, f"seed {seed}"
        conflicts += coalesced[0][0] == "conflict"
    assert conflicts >= 2, "the histories never met a conflict: the test did not test conflicts"
    assert sum(n > 1 for n in ranges) >= 5, f"few ranges were coalesced ({ranges}): the test did not test them"


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_fault_inside_the_range_is_settled_by_recover(db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        when: str):
    start = state(db)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        s = rt.session()
        for i in range(6):
            sql(s, "UPDATE t SET v = ? WHERE id = ?", [i, i % 3 + 1])
        sql(s, "INSERT INTO t (v, w) VALUES (1, 'counter')")
        real = MysqlEngine.revert_range

        def faulty(self, captureds, get_blob):
            if when == "after":  # committed, then the process fails before the record
                real(self, captureds, get_blob)
            raise RuntimeError("connection lost")

        monkeypatch.setattr(MysqlEngine, "revert_range", faulty)
        with pytest.raises(goex.RecoveryNeeded):
            s.rollback()
        monkeypatch.setattr(MysqlEngine, "revert_range", real)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": db.url}) as rt:
        assert rt.recover().ok
        assert {e["status"] for e in rt.log()} == {"undone"}, [(e["id"], e["status"], e["target"]) for e in rt.log()]
        rt.verify()
    assert state(db) == start
