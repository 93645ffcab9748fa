"""Coalesced undo on PostgreSQL: a session's row changes are undone in one transaction with one
journal record, ending exactly where undoing each entry in turn ends, conflicts included, with
another client writing in between; a fault inside it is settled by `recover`.

Against the real server, each test in a database of its own; the end state is read by pg_dump."""

from __future__ import annotations

import json
import os
import random
import secrets
from pathlib import Path

import pytest

import goex
from goex.adapters.base import Adapter
from goex.adapters.sql.postgres import PostgresEngine

psycopg = pytest.importorskip("psycopg")

from test_sql_postgres_exact import pg_dump  # noqa: E402

ADMIN_URL = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

SETUP = """
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE t (id serial PRIMARY KEY, v int, w text, p int REFERENCES parent(id));
CREATE TABLE log (msg text);  -- no primary key: rows are told apart by their contents
INSERT INTO parent VALUES (1, 'one'), (2, 'two');
INSERT INTO t (v, w, p) VALUES (0, 'a', 1), (0, 'b', 2), (0, 'c', NULL);
INSERT INTO log VALUES ('start');
"""


def _database() -> str:
    name = "goex_pgc_" + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = ADMIN_URL.rpartition("/")[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
    return url


def _drop(url: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {url.rpartition('/')[2]} WITH (FORCE)")


@pytest.fixture
def url():
    made = _database()
    try:
        yield made
    finally:
        _drop(made)


def outside(url: str, sql: str) -> None:
    """Another client's write."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def sql(s: goex.Session, statement: str, params: list | None = None) -> str:
    result = s.execute({"type": "sql.execute", "db": "main", "sql": statement, "params": params})
    assert result.ok, result.error
    return result.entry_id


def kinds(rt: goex.Runtime) -> list[str]:
    return [json.loads(body)["kind"] for _, body, _ in rt.journal.records()]


def test_a_session_of_row_changes_is_undone_with_one_record(url: str, tmp_path: Path):
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        s = rt.session()
        ids = [sql(s, "UPDATE t SET v = v + 1 WHERE id = ?", [i % 3 + 1]) for i in range(12)]
        ids.append(sql(s, "INSERT INTO t (v, w) VALUES (7, 'new')"))  # takes a value of t's sequence
        ids.append(sql(s, "INSERT INTO log VALUES ('x'), ('x')"))
        ids.append(sql(s, "DELETE FROM log WHERE msg = 'start'"))
        undoing = kinds(rt).count("undoing")
        assert sorted(s.rollback()) == sorted(ids)
        assert kinds(rt).count("undoing") == undoing + 1  # one record names them all
        rt.verify()
    assert pg_dump(url) == start  # rows and the sequence's position as they were


def test_another_clients_change_in_the_middle_stops_at_the_entry_it_concerns(url: str, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        s = rt.session()
        sql(s, "UPDATE t SET v = 10 WHERE id = 2")
        expected = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        outside(url, "UPDATE t SET v = 99 WHERE id = 1")
        newer = [sql(s, "UPDATE t SET v = 2 WHERE id = 1"), sql(s, "UPDATE t SET w = 'z' WHERE id = 3")]
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == expected
        assert caught.value.undone == newer[::-1]
        assert caught.value.conflicts and all(t.startswith(url.rpartition("/")[2]) for t, _ in caught.value.conflicts)
        assert {e["id"]: e["status"] for e in rt.log()}[expected] == "applied"
        with psycopg.connect(url) as conn:  # the newer entries were undone, the conflicting one was not
            assert conn.execute("SELECT id, v, w FROM t ORDER BY id").fetchall() == [(1, 99, "a"), (2, 10, "b"),
                                                                                    (3, 0, "c")]
        rt.verify()


def test_a_child_row_added_by_another_client_keeps_its_parent(url: str, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        s = rt.session()
        parent = sql(s, "INSERT INTO parent VALUES (7, 'seven')")
        later = sql(s, "UPDATE t SET v = 5 WHERE id = 1")
        outside(url, "INSERT INTO t (v, w, p) VALUES (0, 'child', 7)")
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == parent and caught.value.undone == [later]
        assert not caught.value.forceable  # forcing would leave the child dangling
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM parent WHERE id = 7").fetchone() == (1,)


def test_a_change_between_the_check_and_the_undo_is_reported_for_its_entry(url: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """Another client writes after the range was checked: the undo, which checks again under row
    locks, applies nothing of the range, and goes on entry by entry to name the one it concerns."""
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        s = rt.session()
        expected = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        newer = sql(s, "UPDATE t SET v = 2 WHERE id = 2")
        checked = PostgresEngine.range_conflicts

        def then_written(self, captureds, get_blob):
            found = checked(self, captureds, get_blob)
            outside(url, "UPDATE t SET v = 50 WHERE id = 1")
            return found

        monkeypatch.setattr(PostgresEngine, "range_conflicts", then_written)
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == expected and caught.value.undone == [newer]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, 50), (2, 0), (3, 0)]
        rt.verify()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_fault_inside_the_range_is_settled_by_recover(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        when: str):
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        s = rt.session()
        for i in range(6):
            sql(s, "UPDATE t SET v = ? WHERE id = ?", [i, i % 3 + 1])
        sql(s, "INSERT INTO t (v, w) VALUES (1, 'seq')")
        real = PostgresEngine.revert_range

        def faulty(self, captureds, get_blob):
            if when == "after":  # committed, then the process fails before the record
                real(self, captureds, get_blob)
            raise RuntimeError("connection lost")

        monkeypatch.setattr(PostgresEngine, "revert_range", faulty)
        with pytest.raises(goex.RecoveryNeeded):
            s.rollback()
        monkeypatch.setattr(PostgresEngine, "revert_range", real)
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"main": url}) as rt:
        assert rt.recover().ok
        assert {e["status"] for e in rt.log()} == {"undone"}
        rt.verify()
    assert pg_dump(url) == start


def test_coalesced_and_entry_by_entry_undo_agree_on_random_histories(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """Differential: the same random history (goex statements and another client's writes)
    undone with coalescing and with it switched off ends the same way."""

    def run(seed: int, coalesce: bool) -> tuple:
        rng = random.Random(seed)
        root = tmp_path / f"{seed}-{coalesce}"
        root.mkdir()
        url = _database()
        try:
            with monkeypatch.context() as m:
                if not coalesce:
                    for cls in [Adapter, *Adapter.__subclasses__()]:
                        m.setattr(cls, "coalesce", lambda self, plan, after: None, raising=False)
                with goex.Runtime(root, policy="permissive", durability="process",
                                  databases={"main": url}) as rt:
                    s = rt.session()
                    for step in range(rng.randrange(4, 16)):
                        if rng.random() < 0.8:
                            statement = rng.choice([
                                "UPDATE t SET v = ? WHERE id = 1", "UPDATE t SET w = ?::text WHERE id = 2",
                                "INSERT INTO t (v, w) VALUES (?, 'n')", "DELETE FROM t WHERE v = ?",
                                "INSERT INTO log VALUES (?::text)", "UPDATE t SET p = NULL WHERE v = ?",
                                "INSERT INTO parent VALUES (10 + ?, 'p')"])
                            s.execute({"type": "sql.execute", "db": "main", "sql": statement, "params": [step]})
                        else:
                            outside(url, rng.choice(["UPDATE t SET v = 100 WHERE id = 1", "DELETE FROM t WHERE id = 4",
                                                     "INSERT INTO log VALUES ('o')", "UPDATE t SET w = 'o' WHERE id = 2"]))
                    try:
                        outcome: tuple = ("ok", s.rollback())
                    except goex.UndoConflict as exc:
                        outcome = ("conflict", exc.entry_id, exc.undone,
                                   sorted(t.partition(".")[2] for t, _ in exc.conflicts))  # without the db's name
                    statuses = [(e["id"], e["status"]) for e in rt.log()]
                    rt.verify()
            return outcome, statuses, pg_dump(url)
        finally:
            _drop(url)

    ranges: list[int] = []
    real = PostgresEngine.revert_range

    def counted(self, captureds, get_blob):
        ranges.append(len(captureds))
        return real(self, captureds, get_blob)

    monkeypatch.setattr(PostgresEngine, "revert_range", counted)
    conflicts = 0
    for seed in range(int(os.environ.get("GOEX_COALESCE_SEEDS", "12"))):
        coalesced, one_by_one = run(seed, True), run(seed, False)
        assert coalesced == one_by_one, f"seed {seed}"
        conflicts += coalesced[0][0] == "conflict"
    assert conflicts >= 2, "the histories never met a conflict: the test did not test conflicts"
    assert sum(n > 1 for n in ranges) >= 5, f"few ranges were coalesced ({ranges}): the test did not test them"
