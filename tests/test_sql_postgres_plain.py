"""PostgreSQL's plain path: a single INSERT, UPDATE or DELETE of a table nothing else hangs on is
captured by the statement itself (RETURNING), without creating a capture trigger; everywhere the
statement could change more than the rows it returns, or its text could end an appended clause,
the capture-trigger path runs it instead. Undo is exact either way, compared with `pg_dump`.

Through the public API (goex.Runtime, sql.execute, rollback), against the real server; each test
has a database of its own.
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from test_sql_postgres_exact import ADMIN_URL, pg_dump, raw, run

import goex
from goex.adapters.sql import postgres

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def url():
    name = "goex_pgp_" + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_URL.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

TABLES = """
CREATE TABLE t (id int PRIMARY KEY, v int, note text);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
INSERT INTO t SELECT g, g * 10, 'row ' || g FROM generate_series(1, 5) g;
"""


@pytest.fixture
def paths(monkeypatch):
    """How many statements each path ran: the plain path's runs that it kept, and the
    capture-trigger path's."""
    counts = {"plain": 0, "trigger": 0}
    plain, trigger = postgres.PostgresEngine._rehearse_plain, postgres.PostgresEngine._rehearse

    def counted_plain(self, statements, params):
        out = plain(self, statements, params)
        counts["plain"] += out is not None
        return out

    def counted_trigger(self, statements, params):
        counts["trigger"] += 1
        return trigger(self, statements, params)

    monkeypatch.setattr(postgres.PostgresEngine, "_rehearse_plain", counted_plain)
    monkeypatch.setattr(postgres.PostgresEngine, "_rehearse", counted_trigger)
    return counts


def triggers(url):
    return raw(url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'goex_capture'")[0][0]


def test_plain_statements_create_no_trigger_and_undo_exactly(tmp_path, url, paths):
    raw(url, TABLES)
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        run(s, "UPDATE t SET v = v + 1 WHERE id = ?", [1])
        run(s, "UPDATE t SET note = 'it''s -- /* not a comment */' WHERE id < 4")
        assert run(s, "DELETE FROM t AS x WHERE x.id = :id", {"id": 5}).output == {"rows_changed": 1}
        run(s, "INSERT INTO t (id, v, note) VALUES (6, 60, 'six'), (7, 70, NULL)")
        run(s, "INSERT INTO audit (what) SELECT note FROM t WHERE id = 6")  # a serial: the sequence moves
        run(s, "UPDATE t SET v = v WHERE id = 2")  # changes nothing: nothing to undo, still counted
        assert paths == {"plain": 6, "trigger": 0}
        assert triggers(url) == 0
        assert raw(url, "SELECT id, v, note FROM t ORDER BY id")[:2] == [(1, 11, "it's -- /* not a comment */"),
                                                                      (2, 20, "it's -- /* not a comment */")]
        assert pg_dump(url) != start
        s.rollback()
    assert pg_dump(url) == start


def test_each_entry_undone_on_its_own(tmp_path, url, paths):
    raw(url, TABLES)
    states = [pg_dump(url)]
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        for sql in ("UPDATE t SET v = -v WHERE id > 2", "DELETE FROM t WHERE id = 1",
                    "INSERT INTO t VALUES (9, 9, 'x')"):
            run(s, sql)
            states.append(pg_dump(url))
        for state in reversed(states[:-1]):
            assert len(s.undo()) == 1
            assert pg_dump(url) == state
    assert paths["plain"] == 3


# statements whose effect reaches beyond the rows they return, or whose text the plain path does
# not append to: (setup as the URL's user, setup through goex, statement, a check of its effect)
FALLBACKS = {
    "a trigger the agent created": (
        "CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO audit (what) VALUES ('changed ' || NEW.id); RETURN NEW; END$$",
        "CREATE TRIGGER logged AFTER UPDATE ON t FOR EACH ROW EXECUTE FUNCTION log_it()",
        "UPDATE t SET v = 0 WHERE id = 2", "SELECT what FROM audit", [("changed 2",)]),
    "a rule": (
        "", "CREATE RULE also AS ON DELETE TO t DO ALSO INSERT INTO audit (what) VALUES ('gone')",
        "DELETE FROM t WHERE id = 3", "SELECT what FROM audit", [("gone",)]),
    "a cascading foreign key": (
        "CREATE TABLE child (id int PRIMARY KEY, t_id int REFERENCES t ON DELETE CASCADE); "
        "INSERT INTO child VALUES (1, 4), (2, 5)", "",
        "DELETE FROM t WHERE id = 4", "SELECT id FROM child", [(2,)]),
    "an inheriting table": (
        "CREATE TABLE t_more (extra int) INHERITS (t); INSERT INTO t_more VALUES (50, 1, 'more', 1)", "",
        "UPDATE t SET v = 7 WHERE id = 50", "SELECT v FROM t_more", [(7,)]),
    "row security": (
        "ALTER TABLE t ENABLE ROW LEVEL SECURITY; CREATE POLICY everyone ON t USING (true)", "",
        "UPDATE t SET v = 1 WHERE id = 1", "SELECT v FROM t WHERE id = 1", [(1,)]),
    "an operator that writes the same table": (
        "CREATE FUNCTION sneaky(int, text) RETURNS int LANGUAGE plpgsql AS "
        "$$BEGIN UPDATE t SET note = 'touched' WHERE id = 5; RETURN $1 + 1; END$$; "
        "CREATE OPERATOR public.+ (LEFTARG = int, RIGHTARG = text, FUNCTION = sneaky)", "",
        "UPDATE t SET v = v + 'x'::text WHERE id = 1", "SELECT v, note FROM t WHERE id IN (1, 5) ORDER BY id",
        [(11, "row 1"), (50, "touched")]),
    "a view that writes": (
        "CREATE FUNCTION bump() RETURNS int LANGUAGE plpgsql AS "
        "$$BEGIN INSERT INTO audit (what) VALUES ('viewed'); RETURN 1; END$$; CREATE VIEW one AS SELECT bump() AS n",
        "", "UPDATE t SET v = (SELECT n FROM one) WHERE id = 1", "SELECT what FROM audit", [("viewed",)]),
    "a key that changes": ("", "", "UPDATE t SET id = id + 100 WHERE id < 3", "SELECT count(*) FROM t WHERE id > 100",
                           [(2,)]),
    "a writable WITH": ("", "", "WITH gone AS (DELETE FROM audit RETURNING 1) UPDATE t SET v = 3 WHERE id = 1",
                        "SELECT v FROM t WHERE id = 1", [(3,)]),
    "a dollar-quoted string": ("", "", "UPDATE t SET note = $q$it's$q$ WHERE id = 1",
                               "SELECT note FROM t WHERE id = 1", [("it's",)]),
    "a comment": ("", "", "UPDATE t SET v = 2 -- RETURNING 1\nWHERE id = 1",
                           "SELECT v FROM t WHERE id = 1", [(2,)]),
    "a quoted target": ("", "", 'UPDATE "t" SET v = 4 WHERE id = 1', "SELECT v FROM t WHERE id = 1", [(4,)]),
    "a RETURNING of its own": ("", "", "UPDATE t SET v = 5 WHERE id = 1 RETURNING v",
                               "SELECT v FROM t WHERE id = 1", [(5,)]),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
def test_what_rows_alone_do_not_tell_runs_with_capture_triggers(tmp_path, url, paths, case):
    setup, through_goex, statement, check, expected = FALLBACKS[case]
    raw(url, TABLES + "INSERT INTO audit (what) VALUES ('old')" if case == "a writable WITH" else TABLES)
    if setup:
        raw(url, setup)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        if through_goex:
            run(s, through_goex)
        start = pg_dump(url)
        run(s, statement)
        assert raw(url, check) == expected
        assert paths["plain"] == 0 and paths["trigger"] >= 1
        assert triggers(url) == 0
        assert len(s.undo()) == 1
        assert pg_dump(url) == start


def test_a_row_another_client_changed_meanwhile_is_captured_as_it_was_replaced(tmp_path, url, paths):
    """The UPDATE waits for another client's lock on the row, then changes that client's version
    of it (which its own snapshot cannot see): the plain path's reading of the replaced row would
    be the older version, so the counts disagree and the capture-trigger path captures it."""
    raw(url, TABLES)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        run(s, "UPDATE t SET v = v WHERE id = 5")  # the connection and the key are ready: no waits but the lock
        other = psycopg.connect(url)
        other.execute("UPDATE t SET v = 1000 WHERE id = 1")
        results = []
        worker = threading.Thread(target=lambda: results.append(
            s.execute({"type": "sql.execute", "db": "db", "sql": "UPDATE t SET v = v + 1 WHERE id = 1"})))
        worker.start()
        time.sleep(1.0)
        other.commit()
        other.close()
        worker.join(30)
        assert results and results[0].ok, results and results[0].error
        assert raw(url, "SELECT v FROM t WHERE id = 1") == [(1001,)]
        assert len(s.undo()) == 1
        assert raw(url, "SELECT v FROM t WHERE id = 1") == [(1000,)]  # the other client's value, not the older one
    assert paths["trigger"] == 1


def test_sequences_called_or_not_are_set_back_exactly(tmp_path, url, paths):
    """Sequence positions around a plain statement: a called sequence's (read by
    pg_sequence_last_value) and ones never called or set back with is_called false (read by
    their own SELECT) are each restored as they were."""
    raw(url, TABLES + "CREATE SEQUENCE fresh; CREATE SEQUENCE reset_one; SELECT setval('reset_one', 40, false); "
        "CREATE SEQUENCE used; SELECT nextval('used'), nextval('used');")
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        run(s, "INSERT INTO t (id, v) VALUES (nextval('fresh') + 100, nextval('reset_one'))")
        run(s, "INSERT INTO t (id, v) VALUES (nextval('used') + 200, 0)")
        assert paths == {"plain": 2, "trigger": 0}
        assert raw(url, "SELECT id, v FROM t WHERE id > 100 ORDER BY id") == [(101, 40), (203, 0)]
        assert raw(url, "SELECT last_value, is_called FROM reset_one") == [(40, True)]
        s.undo()
        assert raw(url, "SELECT last_value, is_called FROM used") == [(2, True)]
        s.rollback()
    assert raw(url, "SELECT last_value, is_called FROM fresh") == [(1, False)]
    assert raw(url, "SELECT last_value, is_called FROM reset_one") == [(40, False)]
    assert pg_dump(url) == start


TYPED = ("CREATE TABLE {name} (id int PRIMARY KEY, i bigint, f float8, n numeric, s text, b bytea, "
         "ok boolean, d date, ts timestamptz, ai int[], at text[], j jsonb, nothing text)")


def test_parameters_bind_as_a_plain_client_binds_them(tmp_path, url, paths):
    """The plain path binds the agent's parameters as psycopg's cursor does: numbers, text the
    server types by its column (numeric, bytea, dates, arrays, JSON), NULL, booleans and a `%` in
    the text end up stored exactly as a plain client's same statement stores them, and the values
    are never put in the statement's text."""
    raw(url, TYPED.format(name="mine") + "; " + TYPED.format(name="theirs"))
    values = [1, 2**40, 1.5, "12.3400", "it's 50% \u00e9 -- /* */ $1", "\\x00ff275c", True, "2024-02-29",
              "2024-01-02 03:04:05+00", "{1,NULL,3}", '{a,"b\'c",""}', '{"k": [1, "x"]}', None]
    columns = "id, i, f, n, s, b, ok, d, ts, ai, at, j, nothing"
    marks = ", ".join("?" for _ in values)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        run(s, f"INSERT INTO mine ({columns}) VALUES ({marks})", values)
        run(s, "UPDATE mine SET s = s || :tail, ai = :arr, j = :doc WHERE id = :id AND s LIKE '%50%'",
            {"tail": "%s", "arr": "{7}", "doc": "[]", "id": 1.0})
        assert paths == {"plain": 2, "trigger": 0}
    raw(url, f"INSERT INTO theirs ({columns}) VALUES ({', '.join('%s' for _ in values)})", values)
    raw(url, "UPDATE theirs SET s = s || %(tail)s, ai = %(arr)s, j = %(doc)s WHERE id = %(id)s AND s LIKE '%%50%%'",
        {"tail": "%s", "arr": "{7}", "doc": "[]", "id": 1.0})
    mine = raw(url, "SELECT mine::text FROM mine")
    assert mine == raw(url, "SELECT theirs::text FROM theirs")
    assert "%s" in mine[0][0] and "\\\\x00ff275c" in mine[0][0]


def test_a_failing_statement_leaves_the_connection_clean(tmp_path, url, paths):
    """A statement that fails in the plain path's pipeline (the server skips what follows it)
    is reported as the statement's own error, applies nothing, and the next actions run on a
    clean connection, through the plain path again."""
    raw(url, TABLES)
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        state = start
        for _ in range(3):
            failed = s.execute({"type": "sql.execute", "db": "db", "sql": "UPDATE t SET v = v / (id - 1) WHERE id = ?",
                                "params": [1]})
            assert not failed.ok and "division by zero" in failed.error
            again = s.execute({"type": "sql.execute", "db": "db", "sql": "INSERT INTO t (id) VALUES (?)",
                               "params": [1]})
            assert not again.ok and "duplicate key" in again.error
            assert pg_dump(url) == state
            run(s, "UPDATE t SET v = v + 1 WHERE id = ?", [2])
            state = pg_dump(url)
        assert paths["plain"] == 3
        assert raw(url, "SELECT v FROM t WHERE id = 2") == [(23,)]
        assert raw(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state LIKE 'idle in transaction%'") == [(0,)]
        s.rollback()
    assert pg_dump(url) == start


def test_a_commit_the_server_refuses_applies_nothing(tmp_path, url, paths):
    """A deferred foreign key checked at the `COMMIT`: the action fails as a failed commit, nothing
    of it stays, and the connection serves the next action."""
    raw(url, TABLES + "CREATE TABLE later (id int PRIMARY KEY, t_id int REFERENCES t DEFERRABLE INITIALLY DEFERRED)")
    start = pg_dump(url)
    with goex.Runtime(tmp_path, policy="permissive", databases={"db": url}) as rt:
        s = rt.session()
        for _ in range(2):
            failed = s.execute({"type": "sql.execute", "db": "db", "sql": "INSERT INTO later VALUES (?, ?)",
                                "params": [1, 99]})
            assert not failed.ok and "the commit failed" in failed.error and "later_t_id_fkey" in failed.error
            assert pg_dump(url) == start
        run(s, "INSERT INTO later VALUES (?, ?)", [1, 2])
        assert paths["plain"] == 3
        assert raw(url, "SELECT * FROM later") == [(1, 2)]
        s.rollback()
    assert pg_dump(url) == start
