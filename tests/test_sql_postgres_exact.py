"""PostgreSQL undo stays exact on schemas named like goex's own aliases and keywords, and a SELECT
with side effects is a write: run, captured and undone, never silently rolled back.

Through the public API (goex.Runtime, sql.execute, rollback), against the real server; each
test has a database of its own. The database is compared with `pg_dump` (the server's own client)
before and after.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess

import pytest

import goex
import goex.sql
from goex.errors import UndoConflict

psycopg = pytest.importorskip("psycopg")

ADMIN_URL = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def url():
    name = "goex_pgx_" + secrets.token_hex(6)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_URL.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def raw(url: str, sql: str, params=None):
    """Another client: a plain connection as the URL's user."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def pg_dump(url: str) -> str:
    """Schema and data by the server's own dump tool, without goex's schema and the volatile
    header lines; row order normalised (COPY blocks sorted)."""
    exe = shutil.which("pg_dump") or "pg_dump"
    out = subprocess.run([exe, "--no-owner", "--no-privileges", "--exclude-schema=goex", url], check=True,
                         capture_output=True, text=True).stdout
    lines, block, result = out.splitlines(), None, []
    for line in lines:
        if line.startswith("--") or line.startswith("\\restrict") or line.startswith("\\unrestrict"):
            continue
        if block is not None:
            if line == "\\.":
                result += sorted(block) + [line]
                block = None
            else:
                block.append(line)
            continue
        result.append(line)
        if line.startswith("COPY "):
            block = []
    return "\n".join(line for line in result if line.strip())


def runtime(tmp_path, url):
    return goex.Runtime(tmp_path, policy="permissive", databases={"db": url})


def run(session, sql, params=None):
    result = session.execute({"type": "sql.execute", "db": "db", "sql": sql, "params": params})
    assert result.ok, result.error
    return result


# goex's aliases and helper names, and keywords, as table and column names
HOSTILE = """
CREATE TABLE x (x int PRIMARY KEY, r text, u text, v text, j text, c int, n int, s text, rn int);
CREATE TABLE r (x int, r text, u int, "select" text, "order" int);
CREATE TABLE "select" ("from" int PRIMARY KEY, x text, "where" text);
CREATE TABLE cur (u int, x int, v int);
CREATE TABLE "X y" ("x y" int PRIMARY KEY, "x" text);
INSERT INTO x VALUES (1, 'a', 'b', 'c', 'd', 1, 2, 's', 3), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO r VALUES (1, 'one', 1, 'sel', 1), (1, 'one', 1, 'sel', 1), (NULL, NULL, NULL, NULL, NULL);
INSERT INTO "select" VALUES (1, NULL, 'w'), (2, NULL, NULL);
INSERT INTO cur VALUES (1, 1, 1), (2, NULL, 2);
INSERT INTO "X y" VALUES (1, 'one');
"""


def test_hostile_names_every_statement_undone_exactly(tmp_path, url):
    raw(url, HOSTILE)
    start = pg_dump(url)
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        for sql in [
            "INSERT INTO x VALUES (3, 'r', 'u', 'v', 'j', 4, 5, 's', 6)",
            "UPDATE x SET r = 'changed', x = x + 10 WHERE x = 1",
            "DELETE FROM x WHERE x = 2",
            "INSERT INTO r VALUES (1, 'one', 1, 'sel', 1)",
            "UPDATE r SET r = 'two' WHERE x IS NULL",
            "DELETE FROM r WHERE r = 'one' AND ctid = (SELECT min(ctid) FROM r WHERE r = 'one')",
            'UPDATE "select" SET x = \'set\' WHERE "from" = 1',
            'DELETE FROM "select" WHERE "from" = 2',
            "INSERT INTO cur VALUES (3, NULL, NULL)",
            "UPDATE cur SET v = v + 1",
            'UPDATE "X y" SET x = \'uno\'',
            "ALTER TABLE x ADD COLUMN d int DEFAULT 7",
            "UPDATE x SET d = 8 WHERE x = 3",
        ]:
            run(s, sql)
        assert pg_dump(url) != start
        s.rollback()
    assert pg_dump(url) == start


def test_hostile_names_conflicts_are_per_row(tmp_path, url):
    raw(url, HOSTILE)
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "UPDATE x SET r = 'mine' WHERE x = 1")
        raw(url, "UPDATE x SET r = 'theirs-other-row' WHERE x = 2")  # another row: no conflict
        s.undo()
        assert raw(url, "SELECT x, r FROM x ORDER BY x") == [(1, "a"), (2, "theirs-other-row")]
        run(s, "UPDATE x SET r = 'mine' WHERE x = 1")
        raw(url, "UPDATE x SET r = 'theirs' WHERE x = 1")  # the same row: a conflict
        with pytest.raises(UndoConflict):
            s.undo()
        assert raw(url, "SELECT r FROM x WHERE x = 1") == [("theirs",)]


def test_table_without_key_column_named_x(tmp_path, url):
    raw(url, "CREATE TABLE bag (x int, y text); INSERT INTO bag VALUES (1, 'a'), (1, 'a'), (NULL, 'b'), (NULL, 'c')")
    start = pg_dump(url)
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "INSERT INTO bag VALUES (1, 'a')")
        run(s, "UPDATE bag SET y = 'z' WHERE y = 'b'")
        run(s, "DELETE FROM bag WHERE y = 'c'")
        s.rollback()
    assert pg_dump(url) == start
    assert raw(url, "SELECT count(*) FROM bag") == [(4,)]


def test_ddl_undo_sees_other_clients_write_on_column_x(tmp_path, url):
    raw(url, "CREATE TABLE t (id int PRIMARY KEY, x int); INSERT INTO t VALUES (1, NULL), (2, NULL)")
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "ALTER TABLE t ADD COLUMN note text")
        raw(url, "UPDATE t SET x = 5 WHERE id = 2")  # another client's write after the DDL
        with pytest.raises(UndoConflict):
            s.undo()
        assert raw(url, "SELECT id, x FROM t ORDER BY id") == [(1, None), (2, 5)]


def test_dump_with_nulls_in_column_x(url):
    raw(url, "CREATE TABLE t (x int); INSERT INTO t VALUES (NULL), (NULL), (1)")
    text = goex.sql.dump(url)
    assert len(re.findall(r"^\s*row ", text, flags=re.M)) == 3


# -- SELECT with side effects ----------------------------------------------------------------------


def test_select_nextval_is_a_write_and_undone(tmp_path, url):
    raw(url, "CREATE SEQUENCE s START 100")
    with runtime(tmp_path, url) as rt:
        sess = rt.session()
        got = [run(sess, "SELECT nextval('s')").output["rows"][0][0] for _ in range(3)]
        assert got == [100, 101, 102]
        assert raw(url, "SELECT last_value, is_called FROM s") == [(102, True)]
        run(sess, "SELECT setval('s', 500)")
        assert raw(url, "SELECT last_value FROM s") == [(500,)]
        sess.rollback()
    assert raw(url, "SELECT last_value, is_called FROM s") == [(100, False)]


def test_select_of_function_that_deletes_rows_is_a_write_and_undone(tmp_path, url):
    raw(url, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 5);"
             "CREATE FUNCTION zap() RETURNS bigint LANGUAGE sql AS $$ WITH d AS (DELETE FROM t WHERE id > 2 "
             "RETURNING 1) SELECT count(*) FROM d $$")
    with runtime(tmp_path, url) as rt:
        sess = rt.session()
        result = run(sess, "SELECT zap()")
        assert result.output["rows"] == [[3]]
        assert raw(url, "SELECT count(*) FROM t") == [(2,)]  # it happened, as reported
        sess.rollback()
    assert raw(url, "SELECT id FROM t ORDER BY id") == [(i,) for i in range(1, 6)]


def test_side_effect_smuggled_in_a_string_is_a_write(tmp_path, url):
    raw(url, "CREATE SEQUENCE s START 7")
    with runtime(tmp_path, url) as rt:
        sess = rt.session()
        run(sess, "SELECT query_to_xml('select nextval(''s'')', true, true, '')")
        assert raw(url, "SELECT last_value, is_called FROM s") == [(7, True)]
        sess.rollback()
    assert raw(url, "SELECT last_value, is_called FROM s") == [(7, False)]


def test_plain_select_stays_a_read(tmp_path, url):
    raw(url, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    with runtime(tmp_path, url) as rt:
        sess = rt.session()
        result = run(sess, "SELECT count(*) FROM t")
        assert result.output["rows"] == [[2]]
        assert sess.rollback() == []  # nothing to undo: it wrote nothing


# -- referential integrity -------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["NO ACTION", "CASCADE", "SET NULL"])
def test_undo_never_orphans_or_cascades_into_other_clients_rows(tmp_path, url, action):
    raw(url, f"CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, "
             f"pid int REFERENCES parent(id) ON DELETE {action})")
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "INSERT INTO parent VALUES (7)")
        raw(url, "INSERT INTO child VALUES (1, 7)")  # another client references the agent's row
        with pytest.raises(UndoConflict) as caught:
            s.undo()
        assert "child" in str(caught.value) and "(1,7)" in str(caught.value)  # the row, named whole
        assert not caught.value.forceable and "Forcing cannot help" in str(caught.value)  # no --force offered
        with pytest.raises(UndoConflict) as forced:
            s.undo(force=True)  # force never breaks another client's reference either
        assert not forced.value.forceable and "--force" not in str(forced.value)
    assert raw(url, "SELECT id FROM parent") == [(7,)]
    assert raw(url, "SELECT id, pid FROM child") == [(1, 7)]


def test_undo_of_own_parent_and_child_is_exact(tmp_path, url):
    raw(url, "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, "
             "pid int REFERENCES parent(id) ON DELETE CASCADE); INSERT INTO parent VALUES (1); "
             "INSERT INTO child VALUES (1, 1)")
    start = pg_dump(url)
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "INSERT INTO parent VALUES (7)")
        run(s, "INSERT INTO child VALUES (2, 7)")
        run(s, "DELETE FROM parent WHERE id = 1")  # cascades into the child row 1
        raw(url, "INSERT INTO parent VALUES (8)")  # unrelated work by another client
        s.rollback()
    assert raw(url, "SELECT id FROM parent ORDER BY id") == [(1,), (8,)]
    raw(url, "DELETE FROM parent WHERE id = 8")
    assert pg_dump(url) == start


def test_undo_does_not_put_back_a_row_whose_parent_was_removed(tmp_path, url):
    raw(url, "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, "
             "pid int REFERENCES parent(id)); INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (5, 2)")
    with runtime(tmp_path, url) as rt:
        s = rt.session()
        run(s, "DELETE FROM child WHERE id = 5")
        raw(url, "DELETE FROM parent WHERE id = 2")  # another client removes the parent meanwhile
        with pytest.raises(UndoConflict):
            s.undo()
    assert raw(url, "SELECT count(*) FROM child") == [(0,)]
