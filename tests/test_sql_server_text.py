"""How the server engines read SQL text: one tokenizer (sqlglot's) for comments, words,
placeholders and statements; refusals found wherever comments put them; executable comments
found under every quoting sql_mode, and run by the real server when they are not refused."""

from __future__ import annotations

import secrets

import pymysql
import pytest

from goex.adapters.sql.common import SqlRefused, uncommented, words
from goex.adapters.sql.mysql import MysqlEngine, _executable_comment
from goex.adapters.sql.mysql import convert_params as my_params
from goex.adapters.sql.postgres import PostgresEngine
from goex.adapters.sql.postgres import convert_params as pg_params

HOST, PORT = "127.0.0.1", 3306


def test_placeholders_are_found_by_the_tokenizer():
    # a cast, an array slice and text in strings, comments and dollar quotes stay as they are
    assert pg_params("SELECT x::int, arr[1:2], '?', $$:a$$ /* ? */ FROM t WHERE a = :a AND b = '%'",
                     {"a": 1}) == ("SELECT x::int, arr[1:2], '?', $$:a$$ /* ? */ FROM t WHERE a = %(a)s AND b = '%%'",
                                   {"a": 1})
    assert my_params("SELECT `?`, \"?\", ? # ?\n", [5]) == ("SELECT `?`, \"?\", %s # ?\n", (5,))
    # inside a statement sqlglot reads as a command (its text one token): found too
    assert my_params("REPLACE INTO t VALUES (?)", [1]) == ("REPLACE INTO t VALUES (%s)", (1,))


def test_words_leave_out_comments_and_values():
    assert words("/* set */ SELECT 'drop owned' -- alter role\n FROM \"concurrently\"", "postgres") == [
        "select", "from"]
    assert uncommented("SELECT 1 # two\n, '#' -- three\n", "mysql") == "SELECT 1 , '#'"
    assert words("SELECT 1--1", "mysql") == ["select"]  # a subtraction, not a comment


@pytest.mark.parametrize("sql", [
    "/* a /* nested */ comment */ SET search_path = evil",  # PostgreSQL nests comments
    "-- x\nCOPY t TO PROGRAM 'id'",
    "/**/BEGIN",
    "SELECT pg_read_file /* x */ ('/etc/passwd')",
    "SELECT \"pg_read_file\"('/etc/passwd')",
    "CREATE INDEX CONCURRENTLY i ON t (a)",
    "SELECT * FROM goex.x",
    "ALTER /* x */ DEFAULT PRIVILEGES GRANT ALL ON TABLES TO public",
])
def test_postgres_refusals_see_through_comments(sql):
    with pytest.raises(SqlRefused):
        PostgresEngine("postgresql://postgres@127.0.0.1:5432/test").check(sql, {})


@pytest.mark.parametrize("sql", [
    "SELECT 'set', 'concurrently' /* COPY */",
    "/* a /* nested */ SET */ SELECT 1",
    "SELECT 1 AS \"set\"",
])
def test_postgres_values_and_comments_are_not_refused(sql):
    PostgresEngine("postgresql://postgres@127.0.0.1:5432/test").check(sql, {})


def test_executable_comments_under_every_quoting_mode():
    assert _executable_comment("SELECT 1 /*! , 2 */")
    assert _executable_comment("SELECT 1 /*M!100000 , 2 */")
    assert not _executable_comment("SELECT '/*! x */', `/*!`, \"/*!\"")
    # data with backslash escapes, a comment when they are off: refused
    assert _executable_comment("SELECT 'a\\' /*! , 2 */ '")
    # a name under ANSI_QUOTES, a string otherwise: data both ways
    assert not _executable_comment('SELECT "a /*! , 2 */"')
    assert not _executable_comment("SELECT 1 /* ! not executable */")


@pytest.fixture
def mysql_db():
    name = f"goex_tx_{secrets.token_hex(4)}"
    with pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True) as conn:
        conn.cursor().execute(f"CREATE DATABASE `{name}`")
    engine = MysqlEngine(f"mysql://root@{HOST}:{PORT}/{name}")
    try:
        yield engine, name
    finally:
        engine.close()
        with pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_the_server_runs_what_the_check_finds(mysql_db):
    """The executable comment the check refuses is one the server runs, and the subtraction
    the check lets through is one it computes."""
    engine, name = mysql_db
    with pymysql.connect(host=HOST, port=PORT, user="root", password="", database=name) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1 /*! + 1 */")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT 1--1")
        assert cur.fetchone()[0] == 2
    with pytest.raises(SqlRefused):
        engine.check("SELECT 1 /*! + 1 */", {"kind": "select"})
    engine.check("SELECT 1--1", {"kind": "select"})
    staged = engine.stage(["SELECT 1--1"], None, [{"kind": "select", "parsed": True}], {})
    staged.abort()
    assert staged.output["rows"] == [[2]]


@pytest.mark.parametrize("sql", [
    "SELECT LOAD_FILE /* x */ ('/etc/passwd')",
    "SELECT `load_file`('/etc/passwd')",
    "/* x */ SET autocommit = 0",
    "# x\nLOCK TABLES t WRITE",
    "SELECT * FROM goex_log",
])
def test_mysql_refusals_see_through_comments(mysql_db, sql):
    engine, _ = mysql_db
    with pytest.raises(SqlRefused):
        engine.check(sql, {"kind": "select"})
