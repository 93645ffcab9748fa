"""MariaDB undo stays exact on schemas with sequences, AUTO_INCREMENT keys and foreign keys, with
another client writing between the agent's actions: through the public API, checked on the rows
and sequence values the server holds."""

from __future__ import annotations

from pathlib import Path

import pytest

pymysql = pytest.importorskip("pymysql")

import goex  # noqa: E402
from test_sql_mysql import Db, _server_up  # noqa: E402

pytestmark = pytest.mark.skipif(not _server_up(), reason="no MySQL/MariaDB server at 127.0.0.1:3306")

SCHEMA = """
CREATE SEQUENCE seq START WITH 901;
CREATE SEQUENCE tight START WITH 901 NOCACHE;
CREATE TABLE items (id BIGINT PRIMARY KEY DEFAULT NEXTVAL(seq), v INT) ENGINE=InnoDB;
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB;
CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB;
CREATE TABLE child (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, note TEXT,
  FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE) ENGINE=InnoDB;
CREATE TABLE pin (id INT PRIMARY KEY, parent_id INT, FOREIGN KEY (parent_id) REFERENCES parent(id)) ENGINE=InnoDB;
CREATE TABLE bag (a INT, b VARCHAR(10)) ENGINE=InnoDB;
INSERT INTO customers (name) VALUES ('ann'), ('bob'), ('cy');
INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, 'three');
INSERT INTO child (parent_id, note) VALUES (1, 'a'), (2, 'b');
INSERT INTO pin VALUES (1, 3);
INSERT INTO bag VALUES (1, 'x'), (1, 'x');
"""


@pytest.fixture
def db():
    d = Db()
    d.setup(SCHEMA)
    yield d
    d.drop()


@pytest.fixture
def session(db: Db, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", durability="process", databases={"d": db.url}) as rt:
        yield rt.session()


def sql(s: goex.Session, text: str) -> goex.Result:
    result = s.execute({"type": "sql.execute", "db": "d", "sql": text})
    assert result.ok, result.error
    return result


def nextval(db: Db, name: str) -> int:
    """The value the sequence hands out next, taken by another client (it is spent)."""
    return db.query(f"SELECT NEXTVAL({name})")[0][0]


# -- sequences -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seq", "tight"])
def test_preview_spends_no_sequence_value_and_undo_sets_it_back(db: Db, session: goex.Session, name: str):
    db.setup(f"ALTER TABLE items ALTER COLUMN id SET DEFAULT NEXTVAL({name})")
    sql(session, "INSERT INTO items (v) VALUES (1)")  # DEFAULT NEXTVAL
    sql(session, f"INSERT INTO items VALUES (NEXTVAL({name}), 2), (NEXT VALUE FOR {name}, 3)")
    assert db.query("SELECT id, v FROM items ORDER BY id") == ((901, 1), (902, 2), (903, 3))  # no value spent twice
    sql(session, f"INSERT INTO items VALUES (SETVAL({name}, 5000), 4)")
    assert db.query("SELECT MAX(id) FROM items")[0][0] == 5000
    session.rollback()
    assert db.query("SELECT * FROM items") == ()
    assert nextval(db, name) == 901  # exactly where it was: no gap


def test_undo_of_one_action_sets_the_sequence_back_to_that_action(db: Db, session: goex.Session):
    sql(session, "INSERT INTO items (v) VALUES (1)")
    sql(session, "INSERT INTO items (v) VALUES (2), (3)")
    session.undo()
    assert db.query("SELECT id FROM items") == ((901,),)
    sql(session, "INSERT INTO items (v) VALUES (4)")
    assert db.query("SELECT id, v FROM items ORDER BY id") == ((901, 1), (902, 4))


def test_sequence_used_by_another_client_since_is_a_conflict(db: Db, session: goex.Session):
    sql(session, "INSERT INTO items (v) VALUES (1)")
    assert nextval(db, "seq") == 902  # another client takes the next value
    with pytest.raises(goex.UndoConflict) as info:
        session.undo()
    assert "seq" in str(info.value)
    assert db.query("SELECT id FROM items") == ((901,),)  # nothing was undone
    assert nextval(db, "seq") == 903  # and the value the other client holds is never handed out again


def test_a_query_taking_sequence_values_is_refused(db: Db, session: goex.Session):
    result = session.execute({"type": "sql.execute", "db": "d", "sql": "SELECT NEXTVAL(seq)"})
    assert not result.ok and "sequence" in (result.error or "")
    assert nextval(db, "seq") == 901
    assert sql(session, "SELECT PREVIOUS VALUE FOR seq").ok  # reading is fine


def test_failed_action_spends_no_sequence_value(db: Db, session: goex.Session):
    result = session.execute({"type": "sql.execute", "db": "d",
                              "sql": "INSERT INTO items (v) VALUES (1); INSERT INTO nowhere VALUES (1)"})
    assert not result.ok
    assert nextval(db, "tight") == 901 and nextval(db, "seq") == 901


# -- AUTO_INCREMENT --------------------------------------------------------------------------------


def test_key_update_on_auto_increment_table_rolls_back(db: Db, session: goex.Session):
    start = db.engine.dump()
    sql(session, "INSERT INTO customers (name) VALUES ('dee')")
    sql(session, "UPDATE customers SET name = 'anne' WHERE id = 1")
    sql(session, "UPDATE customers SET id = id + 100 WHERE id = 3")  # moves the counter to 104
    sql(session, "INSERT INTO customers (name) VALUES ('eve')")
    assert db.query("SELECT id FROM customers ORDER BY id") == ((1,), (2,), (4,), (103,), (104,))
    assert len(session.rollback()) == 4
    assert db.query("SELECT id, name FROM customers ORDER BY id") == ((1, "ann"), (2, "bob"), (3, "cy"))
    assert "AUTO_INCREMENT=4" in db.query("SHOW CREATE TABLE customers")[0][1]
    assert db.engine.dump() == start


def test_counter_moved_by_another_client_is_not_a_conflict(db: Db, session: goex.Session):
    sql(session, "UPDATE customers SET name = 'anne' WHERE id = 1")
    db.setup("INSERT INTO customers (name) VALUES ('other')")  # id 4, counter 5
    session.undo()
    assert db.query("SELECT id, name FROM customers ORDER BY id") == ((1, "ann"), (2, "bob"), (3, "cy"),
                                                                      (4, "other"))


# -- conflicts are per row -------------------------------------------------------------------------


def test_another_clients_change_to_another_row_of_a_referenced_table_is_no_conflict(db: Db, session: goex.Session):
    sql(session, "UPDATE parent SET name = 'agent' WHERE id = 1")
    sql(session, "DELETE FROM parent WHERE id = 2")  # cascades to child 2
    db.setup("UPDATE parent SET name = 'client' WHERE id = 3; INSERT INTO child (parent_id, note) VALUES (3, 'c')")
    session.rollback()
    assert db.query("SELECT id, name FROM parent ORDER BY id") == ((1, "one"), (2, "two"), (3, "client"))
    assert db.query("SELECT id, parent_id, note FROM child ORDER BY id") == ((1, 1, "a"), (2, 2, "b"), (3, 3, "c"))


def test_force_restores_only_the_rows_the_action_changed(db: Db, session: goex.Session):
    sql(session, "UPDATE parent SET name = 'agent' WHERE id = 1")
    db.setup("UPDATE parent SET name = 'client1' WHERE id = 1; UPDATE parent SET name = 'client2' WHERE id = 2")
    with pytest.raises(goex.UndoConflict) as info:
        session.undo()
    assert "parent" in str(info.value) and "'1'" in str(info.value)
    assert db.query("SELECT name FROM parent WHERE id = 1") == (("client1",),)
    session.undo(force=True)
    assert db.query("SELECT id, name FROM parent ORDER BY id") == ((1, "one"), (2, "client2"), (3, "three"))


def test_table_without_key_is_compared_row_by_row(db: Db, session: goex.Session):
    sql(session, "INSERT INTO bag VALUES (2, 'y')")
    sql(session, "DELETE FROM bag WHERE a = 1")
    db.setup("INSERT INTO bag VALUES (3, 'z'), (2, 'w')")
    session.rollback()
    assert sorted(db.query("SELECT a, b FROM bag")) == [(1, "x"), (1, "x"), (2, "w"), (3, "z")]


# -- referential integrity -------------------------------------------------------------------------


@pytest.mark.parametrize("child", ["child", "pin"])  # ON DELETE CASCADE, and no action
def test_undo_that_would_orphan_another_clients_row_is_a_conflict(db: Db, session: goex.Session, child: str):
    sql(session, "INSERT INTO parent VALUES (7, 'seven')")
    db.setup(f"INSERT INTO {child} (id, parent_id) VALUES (70, 7)")
    with pytest.raises(goex.UndoConflict) as info:
        session.undo()
    assert child in str(info.value)
    assert not info.value.forceable and "--force" not in str(info.value) and "Forcing cannot help" in str(info.value)
    assert db.query("SELECT name FROM parent WHERE id = 7") == (("seven",),)
    assert db.query(f"SELECT parent_id FROM {child} WHERE id = 70") == ((7,),)
    db.setup(f"DELETE FROM {child} WHERE id = 70")
    session.undo()  # nothing refers to it any more
    assert db.query("SELECT * FROM parent WHERE id = 7") == ()


def test_undo_that_would_put_back_a_row_whose_parent_is_gone_is_a_conflict(db: Db, session: goex.Session):
    sql(session, "DELETE FROM pin WHERE id = 1")
    db.setup("DELETE FROM parent WHERE id = 3")  # nothing refers to it now
    with pytest.raises(goex.UndoConflict) as info:
        session.undo()
    assert "pin" in str(info.value)
    assert db.query("SELECT * FROM pin") == ()


def test_undo_of_parent_and_child_written_by_the_agent_is_no_conflict(db: Db, session: goex.Session):
    start = db.engine.dump()
    sql(session, "INSERT INTO parent VALUES (8, 'eight')")
    sql(session, "INSERT INTO child (parent_id, note) VALUES (8, 'mine')")
    sql(session, "UPDATE parent SET id = 9 WHERE id = 8")  # cascades into the agent's own child row
    session.rollback()
    assert db.engine.dump() == start
