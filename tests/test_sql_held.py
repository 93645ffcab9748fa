"""A write's dry run and its run are one transaction on PostgreSQL and MariaDB: the transaction
the preview was read from stays open while the policy decides. Whatever the decision, nothing of
it may outlive the action: an action refused, parked for approval or only checked leaves no lock,
no trigger and no change, and another client writes the same row at once."""

from __future__ import annotations

import os
import secrets
from typing import Any, Callable, Iterator

import pytest

import goex

PG_ADMIN = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MY_HOST = os.environ.get("GOEX_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("GOEX_MYSQL_PORT", "3306"))
SQL = "UPDATE item SET v = v + 1 WHERE id = ?"


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: Any) -> Iterator[tuple[str, Callable[[str], Any]]]:
    """(database URL, run(sql) -> rows as another client with a 2 s lock timeout)."""
    name = "goex_held_" + secrets.token_hex(5)
    if request.param == "postgresql":
        psycopg = pytest.importorskip("psycopg")
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
            # goex's own sessions too: a lock held where none may be fails the test instead of hanging it
            admin.execute(f"ALTER DATABASE {name} SET lock_timeout = '10s'")
        url = PG_ADMIN.rpartition("/")[0] + "/" + name
        client = psycopg.connect(url, autocommit=True)
        client.execute("SET lock_timeout = '2s'")

        def run(sql: str) -> Any:
            cur = client.execute(sql)
            return cur.fetchall() if cur.description else None
        try:
            yield url, run
        finally:
            client.close()
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return
    pymysql = pytest.importorskip("pymysql")
    with pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="", autocommit=True) as admin:
        admin.cursor().execute(f"CREATE DATABASE `{name}`")
    client = pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="", database=name, autocommit=True)
    client.cursor().execute("SET SESSION innodb_lock_wait_timeout = 2, lock_wait_timeout = 2")

    def run_my(sql: str) -> Any:
        cur = client.cursor()
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()] if cur.description else None
    try:
        yield f"mysql://root@{MY_HOST}:{MY_PORT}/{name}", run_my
    finally:
        client.close()
        with pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="", autocommit=True) as admin:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


def _triggers(url: str, run: Callable[[str], Any]) -> list[Any]:
    if url.startswith("postgresql"):
        return run("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
    return run("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")


def test_refused_parked_and_checked_writes_hold_nothing(server, root):
    url, run = server
    run("CREATE TABLE item (id INT PRIMARY KEY, v INT)")
    run("INSERT INTO item VALUES (1, 0), (2, 0)")
    ask, deny = root.parent / "ask.yaml", root.parent / "deny.yaml"
    ask.write_text("name: ask\nrules:\n  - {id: ask.sql, match: {type: [sql.execute]}, decision: confirm}\n")
    deny.write_text("name: deny\nrules:\n  - {id: no.rows, match: {type: [sql.execute], preview: {rows: {gt: 0}}}, "
                    "decision: deny}\n")
    for pack, approver in ((deny, None), (ask, None), (ask, "pending"), (ask, lambda request: False)):
        with goex.Runtime(root, policy=pack, databases={"db": url}, approver=approver) as rt:
            s = rt.session()
            r = s.execute({"type": "sql.execute", "db": "db", "sql": SQL, "params": [1]})
            assert not r.ok and r.status in ("denied", "awaiting_approval"), r
            run("UPDATE item SET v = v + 10 WHERE id = 1")  # not blocked: the preview's transaction is gone
            decision, preview = s.check({"type": "sql.execute", "db": "db", "sql": SQL, "params": [1]})
            assert decision.verdict in ("deny", "confirm") and preview["rows"] == 1
            run("UPDATE item SET v = v + 10 WHERE id = 1")
    assert run("SELECT id, v FROM item ORDER BY id") == [(1, 80), (2, 0)]
    assert _triggers(url, run) == []


def test_other_clients_write_while_a_person_is_asked(server, root):
    """The approver may take minutes: the preview's transaction is not held open meanwhile (the
    row it would change stays writable); an approved action then runs on the rows as they are."""
    url, run = server
    run("CREATE TABLE item (id INT PRIMARY KEY, v INT)")
    run("INSERT INTO item VALUES (1, 0), (2, 0)")
    ask = root.parent / "ask.yaml"
    ask.write_text("name: ask\nrules:\n  - {id: ask.sql, match: {type: [sql.execute]}, decision: confirm}\n")

    def approver(request: Any) -> bool:
        run("UPDATE item SET v = v + 10 WHERE id = 1")  # fails on a lock timeout if the row is held
        return True
    with goex.Runtime(root, policy=ask, databases={"db": url}, approver=approver) as rt:
        s = rt.session()
        r = s.execute({"type": "sql.execute", "db": "db", "sql": SQL, "params": [1]})
        assert r.ok and r.output == {"rows_changed": 1}, r.error
        assert run("SELECT id, v FROM item ORDER BY id") == [(1, 11), (2, 0)]
        assert len(s.undo()) == 1
    assert run("SELECT id, v FROM item ORDER BY id") == [(1, 10), (2, 0)]
    assert _triggers(url, run) == []


def test_allowed_write_then_other_client_and_undo(server, root):
    url, run = server
    run("CREATE TABLE item (id INT PRIMARY KEY, v INT)")
    run("INSERT INTO item VALUES (1, 0), (2, 0)")
    with goex.Runtime(root, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        assert s.check({"type": "sql.execute", "db": "db", "sql": SQL, "params": [1]})[1]["rows"] == 1
        r = s.execute({"type": "sql.execute", "db": "db", "sql": SQL, "params": [1]})
        assert r.ok and r.output == {"rows_changed": 1}, r.error
        run("UPDATE item SET v = v + 10 WHERE id = 2")  # committed: nothing of goex's holds the table
        assert run("SELECT id, v FROM item ORDER BY id") == [(1, 1), (2, 10)]
        assert len(s.undo()) == 1
    assert run("SELECT id, v FROM item ORDER BY id") == [(1, 0), (2, 10)]
    assert _triggers(url, run) == []


def test_schema_changed_by_another_client_between_actions(server, root):
    """What goex knows of a table from one action is not trusted for the next: a trigger, a
    cascading foreign key or a column another client adds in between is seen, and undo stays
    exact (the trigger's and the cascade's rows come back too)."""
    url, run = server
    pg = url.startswith("postgresql")
    run("CREATE TABLE item (id INT PRIMARY KEY, v INT)")
    run("CREATE TABLE audit (n INT)")
    run("INSERT INTO item VALUES (1, 0), (2, 0), (3, 0)")
    with goex.Runtime(root, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()

        def act(sql: str, key: int) -> None:
            r = s.execute({"type": "sql.execute", "db": "db", "sql": sql, "params": [key]})
            assert r.ok, r.error
        act(SQL, 1)
        assert len(s.undo()) == 1
        if pg:
            run("CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO audit VALUES (NEW.v); RETURN NEW; END $$")
            run("CREATE TRIGGER note AFTER UPDATE ON item FOR EACH ROW EXECUTE FUNCTION note()")
        else:
            run("CREATE TRIGGER note AFTER UPDATE ON item FOR EACH ROW INSERT INTO audit VALUES (NEW.v)")
        act(SQL, 1)
        assert run("SELECT n FROM audit") == [(1,)]
        assert len(s.undo()) == 1 and run("SELECT n FROM audit") == []
        run("CREATE TABLE part (id INT PRIMARY KEY, item_id INT REFERENCES item (id) ON DELETE CASCADE)"
            if pg else "CREATE TABLE part (id INT PRIMARY KEY, item_id INT, "
            "FOREIGN KEY (item_id) REFERENCES item (id) ON DELETE CASCADE)")
        run("INSERT INTO part VALUES (7, 2)")
        act("DELETE FROM item WHERE id = ?", 2)
        assert run("SELECT id FROM part") == []
        assert len(s.undo()) == 1 and run("SELECT id, item_id FROM part") == [(7, 2)]
        run("ALTER TABLE item ADD COLUMN w INT DEFAULT 5")
        act("UPDATE item SET w = 9 WHERE id = ?", 3)
        assert run("SELECT w FROM item WHERE id = 3") == [(9,)]
        assert len(s.undo()) == 1
    assert run("SELECT id, v, w FROM item ORDER BY id") == [(1, 0, 5), (2, 0, 5), (3, 0, 5)]
