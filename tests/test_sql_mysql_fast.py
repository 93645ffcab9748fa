"""MariaDB: a one-table UPDATE/DELETE runs on the schema kept from an earlier action, checked again
under the statement's locks. A schema that changes between actions (by another client or by the
agent itself: a column, a trigger, a foreign key that cascades) is read again, and undo stays
exact; parameters any quoting mode reads differently, failing statements and hostile text too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pymysql = pytest.importorskip("pymysql")

import goex  # noqa: E402
from test_sql_mysql import Db, _server_up  # noqa: E402

pytestmark = pytest.mark.skipif(not _server_up(), reason="no MySQL/MariaDB server at 127.0.0.1:3306")

SCHEMA = """
CREATE TABLE t (id INT PRIMARY KEY, v INT, s VARCHAR(40)) ENGINE=InnoDB;
CREATE TABLE log (n INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(40)) ENGINE=InnoDB;
CREATE TABLE counted (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;
INSERT INTO t VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, NULL);
INSERT INTO counted (v) VALUES (1), (2);
INSERT INTO log (what) VALUES ('seed');
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


def run(s: goex.Session, text: str, params=None) -> goex.Result:
    action = {"type": "sql.execute", "db": "d", "sql": text, **({"params": params} if params is not None else {})}
    result = s.execute(action)
    assert result.ok, result.error
    return result


def undone_exactly(db: Db, s: goex.Session, before: str, entries: int) -> None:
    for _ in range(entries):
        assert len(s.undo()) == 1
    assert db.engine.dump() == before


def test_column_added_by_another_client_is_imaged(db: Db, session: goex.Session):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])  # the schema of t is kept
    db.setup("ALTER TABLE t ADD COLUMN w INT DEFAULT 5")
    before = db.engine.dump()
    run(session, "UPDATE t SET w = 9, v = 0 WHERE id = ?", [2])
    assert db.query("SELECT v, w FROM t WHERE id = 2") == ((0, 9),)
    undone_exactly(db, session, before, 1)


@pytest.mark.parametrize("by_agent", [False, True])
def test_trigger_added_after_the_schema_was_kept_is_undone_too(db: Db, session: goex.Session, by_agent: bool):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    trigger = "CREATE TRIGGER t_upd AFTER UPDATE ON t FOR EACH ROW INSERT INTO log (what) VALUES (NEW.s)"
    if by_agent:
        run(session, trigger)
    else:
        db.setup(trigger)
    before = db.engine.dump()
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [2])
    assert db.query("SELECT what FROM log ORDER BY n") == (("seed",), ("b",))
    undone_exactly(db, session, before, 1)
    assert db.query("SELECT what FROM log") == (("seed",),)


def test_cascading_foreign_key_added_by_another_client_is_undone_too(db: Db, session: goex.Session):
    run(session, "DELETE FROM t WHERE id = ?", [3])  # the schema of t is kept
    db.setup("CREATE TABLE kid (id INT PRIMARY KEY, t_id INT, FOREIGN KEY (t_id) REFERENCES t(id) "
             "ON DELETE CASCADE) ENGINE=InnoDB; INSERT INTO kid VALUES (1, 1), (2, 1), (3, 2)")
    before = db.engine.dump()
    run(session, "DELETE FROM t WHERE id = ?", [1])
    assert db.query("SELECT id FROM kid ORDER BY id") == ((3,),)
    undone_exactly(db, session, before, 1)


def test_table_dropped_and_recreated_as_a_view_by_another_client(db: Db, session: goex.Session):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    db.setup("CREATE TABLE t2 (id INT PRIMARY KEY, v INT, s VARCHAR(40)) ENGINE=InnoDB; "
             "INSERT INTO t2 SELECT * FROM t; DROP TABLE t; CREATE VIEW t AS SELECT * FROM t2")
    before = db.engine.dump()
    run(session, "UPDATE t SET v = 0 WHERE id = ?", [2])
    assert db.query("SELECT v FROM t2 WHERE id = 2") == ((0,),)
    undone_exactly(db, session, before, 1)


@pytest.mark.parametrize("value", ["it's", 'say "hi"', "back\\slash", "line\nbreak", "nul\x00", "plain",
                                   "\\' OR 1=1 -- "])
def test_parameters_any_quoting_mode_reads_differently(db: Db, session: goex.Session, value: str):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    db.setup("UPDATE t SET s = 'x\\'y' WHERE id = 2")
    before = db.engine.dump()
    run(session, "UPDATE t SET s = ? WHERE id = ? OR s = ?", [value, 1, "x'y"])
    assert db.query("SELECT id FROM t WHERE s = " + db.conn().escape(value) + " ORDER BY id") == ((1,), (2,))
    undone_exactly(db, session, before, 1)


def test_failing_statement_applies_nothing_and_the_next_runs(db: Db, session: goex.Session):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    before = db.engine.dump()
    result = session.execute({"type": "sql.execute", "db": "d", "sql": "UPDATE t SET nosuch = 1 WHERE id = ?",
                               "params": [1]})
    assert not result.ok and "nosuch" in (result.error or "")
    assert db.engine.dump() == before
    run(session, "UPDATE t SET v = 7 WHERE id = ?", [3])
    undone_exactly(db, session, before, 1)


def test_no_row_matched_delete_and_auto_increment(db: Db, session: goex.Session):
    before = db.engine.dump()
    assert "AUTO_INCREMENT=3" in before
    assert run(session, "UPDATE t SET v = 1 WHERE id = ?", [99]).output == {"rows_changed": 0}
    assert run(session, "DELETE FROM t WHERE id IN (?, ?)", [1, 2]).output == {"rows_changed": 2}
    run(session, "UPDATE counted SET v = v * 10 WHERE id > ?", [0])
    db.setup("INSERT INTO counted (v) VALUES (3)")  # another client moves the counter
    assert db.query("SELECT id, v FROM counted ORDER BY id") == ((1, 10), (2, 20), (3, 3))
    db.setup("DELETE FROM counted WHERE id = 3")
    assert len(session.undo()) == 1
    assert len(session.undo()) == 1
    assert len(session.undo()) == 1
    assert db.query("SELECT * FROM t ORDER BY id") == ((1, 10, "a"), (2, 20, "b"), (3, 30, None))
    assert db.query("SELECT id, v FROM counted ORDER BY id") == ((1, 1), (2, 2))
    assert db.engine.dump() == before.replace("AUTO_INCREMENT=3", "AUTO_INCREMENT=4")


@pytest.mark.parametrize("text", [
    "UPDATE t SET v = v + 1 WHERE id = 1 -- ; DROP TABLE log",
    "UPDATE t SET v = v + 1 WHERE id = 1 /* ; DROP TABLE log */",
    "UPDATE t SET s = ';DROP TABLE log' WHERE id = 1",
    "UPDATE `t` SET `v` = 0 WHERE `id` = 1 OR `s` = 'b'",
    "UPDATE t SET v = (SELECT COUNT(*) FROM log) WHERE id = 1",
    "UPDATE t SET v = v + 1 WHERE id = (SELECT MAX(n) FROM log) OR id = 1",
])
def test_hostile_text_runs_as_written_and_undoes_exactly(db: Db, session: goex.Session, text: str):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [3])
    before = db.engine.dump()
    run(session, text)
    assert db.query("SHOW TABLES LIKE 'log'") == (("log",),)
    assert db.engine.dump() != before
    undone_exactly(db, session, before, 1)


def test_two_statements_run_one_by_one(db: Db, session: goex.Session):
    before = db.engine.dump()
    run(session, "UPDATE t SET v = 1 WHERE id = 1; UPDATE t SET v = 2 WHERE id = 2")
    assert db.query("SELECT v FROM t WHERE id IN (1, 2) ORDER BY id") == ((1,), (2,))
    undone_exactly(db, session, before, 1)


@pytest.mark.parametrize("tail", ["", " -- a comment", " # a comment"])
def test_the_image_rows_are_locked_before_the_statement_runs(db: Db, monkeypatch, tail: str):
    from goex.adapters.sql import mysql

    seen: list[str] = []
    pipeline = mysql._pipeline

    def watched(conn, commands):
        results = pipeline(conn, commands)
        image = [found for c in commands if isinstance(c, str)
                 for found in [re.search(r"^SELECT .* WHERE id = (\d+).*FOR UPDATE$", c, re.S)] if found]
        if image:  # the before-image of the statement's own WHERE
            key = image[0].group(1)
            other = db.conn()  # another client: the image's rows are locked by now
            try:
                with pytest.raises(pymysql.err.OperationalError):
                    other.cursor().execute(f"SELECT * FROM t WHERE id = {key} FOR UPDATE NOWAIT")
                seen.append("locked")
            finally:
                other.close()
        return results

    monkeypatch.setattr(mysql, "_pipeline", watched)
    before = db.engine.dump()
    db.act("UPDATE t SET v = v + 1 WHERE id = 2")  # the schema of t is kept
    entry = db.act("UPDATE t SET v = v + 1 WHERE id = 1" + tail)
    assert seen == ["locked", "locked"]
    db.revert(entry)
    db.revert(db.act("UPDATE t SET v = v - 1 WHERE id = 2"))
    assert db.query("SELECT v FROM t ORDER BY id") == ((10,), (21,), (30,))
    assert before != db.engine.dump()


def test_a_row_the_image_missed_sends_the_statement_the_usual_way(db: Db, session: goex.Session, monkeypatch):
    """As when a row slips in between the image and the statement (READ COMMITTED takes no gap
    locks): the statement matched more rows than the image holds; it is rolled back and run again
    with whole-table images."""
    from goex.adapters.sql import mysql

    pipeline = mysql._pipeline

    def short(conn, commands):
        results = pipeline(conn, commands)
        if len(commands) >= 4 and isinstance(commands[-4], str) and commands[-4].endswith("\nFOR UPDATE") and results[-4].rows:
            results[-4].rows = results[-4].rows[:-1]  # the image as if the last row were not there yet
        return results

    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [3])  # the schema of t is kept
    before = db.engine.dump()
    monkeypatch.setattr(mysql, "_pipeline", short)
    assert run(session, "UPDATE t SET v = v + 1 WHERE id IN (?, ?)", [1, 2]).output == {"rows_changed": 2}
    monkeypatch.undo()
    assert db.query("SELECT v FROM t ORDER BY id") == ((11,), (21,), (31,))
    undone_exactly(db, session, before, 1)


def test_cascading_foreign_key_created_between_the_image_and_the_statement_is_undone_too(
        db: Db, session: goex.Session, monkeypatch):
    """A table created with a foreign key is not held off by the locks of the transaction on the
    table it refers to: one that cascades may come after the schema was read under them and
    before the statement. The foreign keys are read again after the statement, in its
    transaction: the cascade is rolled back with it and the statement runs the usual way."""
    from goex.adapters.sql import mysql

    db.setup("CREATE TABLE p (id INT PRIMARY KEY, code INT, v INT, UNIQUE KEY (code)) ENGINE=InnoDB; "
             "INSERT INTO p VALUES (1, 10, 0), (2, 20, 0)")
    run(session, "UPDATE p SET code = code + 1 WHERE id = ?", [2])  # the schema of p is kept
    pipeline = mysql._pipeline
    came: list[bool] = []

    def another_client_between(conn, commands):
        if not came and isinstance(commands[0], str) and commands[0].startswith("UPDATE p "):
            came.append(True)  # the image's locks are held: the statement is next
            db.setup("CREATE TABLE kid (id INT PRIMARY KEY, code INT, FOREIGN KEY (code) REFERENCES p(code) "
                     "ON UPDATE CASCADE) ENGINE=InnoDB; INSERT INTO kid VALUES (1, 10)")
        return pipeline(conn, commands)

    monkeypatch.setattr(mysql, "_pipeline", another_client_between)
    run(session, "UPDATE p SET code = code + 100 WHERE id = ?", [1])
    monkeypatch.undo()
    assert came
    assert db.query("SELECT code FROM kid") == ((110,),)  # cascaded
    assert len(session.undo()) == 1
    assert db.query("SELECT code FROM p ORDER BY id") == ((10,), (21,))
    assert db.query("SELECT code FROM kid") == ((10,),)


@pytest.mark.parametrize("sql, cascades", [
    ("UPDATE t SET v = v + 1 WHERE id = 1", False),
    ("UPDATE t SET s = 'x' WHERE id = 1", True),  # a column of a key
    ("UPDATE t SET v = 1 WHERE id = 1", True),  # with a generated column in the table: taken as one that may
    ("DELETE FROM t WHERE id = 1", True),
])
def test_which_statements_may_set_off_a_foreign_key(db: Db, sql: str, cascades: bool):
    from goex.adapters.sql import mysql

    if sql.startswith("UPDATE t SET v = 1"):
        db.setup("ALTER TABLE t ADD COLUMN g INT AS (v * 2) VIRTUAL")
    db.setup("ALTER TABLE t ADD UNIQUE KEY s_key (s)")
    create = db.query("SHOW CREATE TABLE t")[0][1]
    assigned, _ = mysql._effects(sql)
    assert mysql._may_cascade(create, assigned) is cascades


@pytest.mark.parametrize("sql, pure", [
    ("UPDATE t SET v = v + 1, s = ? WHERE id = ?", True),
    ("DELETE FROM t WHERE id IN (1, 2)", True),
    ("UPDATE t SET v = @x := 1 WHERE id = 1", False),
    ("UPDATE t SET v = ABS(v) WHERE id = 1", False),
    ("UPDATE t SET v = (SELECT 1) WHERE id = 1", False),
    ("UPDATE t SET v = DEFAULT WHERE id = 1", False),
])
def test_only_statements_that_leave_the_session_as_it_was_skip_the_next_reset(db: Db, sql: str, pure: bool):
    from goex.adapters.sql import mysql

    assert mysql._effects(sql)[1] is pure
    db.act("UPDATE t SET v = v + 1 WHERE id = 3")  # the schema of t is kept
    params = ["y", 2] if "?" in sql else None
    db.act(sql, params)
    assert bool(db.engine._spare and db.engine._spare.clean) is pure


def test_a_clean_connection_gone_between_actions_is_replaced(db: Db, session: goex.Session):
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])  # its connection is kept clean
    with db.conn() as conn:
        cur = conn.cursor()
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
                    (db.name,))
        for (thread,) in cur.fetchall():
            cur.execute(f"KILL {thread}")
    before = db.engine.dump()
    run(session, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
    assert db.query("SELECT v FROM t WHERE id = 1") == ((13,),)
    assert len(session.undo()) == 1
    assert db.engine.dump() == before


def test_pipelined_results_read_as_the_driver_reads_them(db: Db):
    """The pipeline reads results without the column descriptions: every type, NULL, long values
    (each length prefix), several rows and errors come out as PyMySQL's own reading has them."""
    from goex.adapters.sql import mysql

    db.setup("CREATE TABLE types (id INT PRIMARY KEY, i BIGINT, d DECIMAL(10,3), f DOUBLE, dt DATETIME(6), "
             "da DATE, ti TIME, b VARBINARY(20), bl LONGBLOB, tx LONGTEXT, j JSON, bi BIT(5), e ENUM('x','y'), "
             "st SET('a','b'), y YEAR, u VARCHAR(20)) ENGINE=InnoDB; "
             "INSERT INTO types VALUES (1, -9007199254740993, 12.5, 0.1, '2024-02-29 23:59:59.123456', "
             "'2024-02-29', '-12:30:01', 0x00ff, REPEAT('z', 300), REPEAT('é', 70000), '{\"a\": [1, null]}', "
             "b'10101', 'y', 'a,b', 2024, 'ünï'), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
             "NULL, NULL, NULL, NULL, NULL, NULL)")
    queries = ["SELECT * FROM types ORDER BY id", "SELECT CONCAT_WS(',', id, QUOTE(u)), HEX(bl) FROM types",
               "SELECT 1 FROM nowhere", "SELECT * FROM types WHERE 0"]
    conn = db.engine._connect()
    try:
        results = mysql._pipeline(conn, queries)
        for query, result in zip(queries, results):
            with conn.cursor() as cur:
                try:
                    cur.execute(query)
                except pymysql.err.ProgrammingError as exc:
                    assert isinstance(result, pymysql.err.ProgrammingError) and result.args == exc.args
                    continue
                assert result.rows == (cur._rows if cur.description else None)
                assert result.affected_rows == cur.rowcount
        changed, same = mysql._pipeline(conn, ["UPDATE types SET i = i + 1 WHERE id = 1",
                                               "UPDATE types SET i = i WHERE id = 1"])
        assert changed.affected_rows == 1 and changed.message.endswith(b"Rows matched: 1  Changed: 1  Warnings: 0")
        assert same.affected_rows == 0 and same.message.endswith(b"Rows matched: 1  Changed: 0  Warnings: 0")
    finally:
        conn.rollback()
        conn.close()


def test_cascading_foreign_key_created_before_a_statement_of_the_usual_way_is_undone_too(
        db: Db, session: goex.Session, monkeypatch):
    """The same on the usual path (whole-table images): a foreign key that cascades from an
    imaged table to one that is not, found after the statements, sends them back to be planned
    again with the schema as it is now."""
    db.setup("CREATE TABLE p (id INT PRIMARY KEY, code INT, v INT, UNIQUE KEY (code)) ENGINE=InnoDB; "
             "INSERT INTO p VALUES (1, 10, 0), (2, 20, 0)")
    execute = pymysql.cursors.Cursor.execute
    came: list[bool] = []

    def another_client_between(cur, query, args=None):
        if not came and isinstance(query, str) and query.startswith("UPDATE p "):
            came.append(True)  # the images are taken: the statement is next
            db.setup("CREATE TABLE kid (id INT PRIMARY KEY, code INT, FOREIGN KEY (code) REFERENCES p(code) "
                     "ON UPDATE CASCADE) ENGINE=InnoDB; INSERT INTO kid VALUES (1, 10)")
        return execute(cur, query, args)

    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", another_client_between)
    run(session, "UPDATE p SET code = code + 100 WHERE ABS(id) = 1")
    monkeypatch.undo()
    assert came
    assert db.query("SELECT code FROM kid") == ((110,),)
    assert len(session.undo()) == 1
    assert db.query("SELECT code FROM p ORDER BY id") == ((10,), (20,))
    assert db.query("SELECT code FROM kid") == ((10,),)
