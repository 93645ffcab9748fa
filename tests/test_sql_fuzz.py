"""Schema fuzzing with another client: undo is exact on schemas nobody chose, on all three engines.

Hypothesis draws a schema (tables and columns named like SQL keywords and goex's own aliases and
internal names; the engine's column types with their awkward values: NaN, infinities, bytes, JSON,
arrays; composite, single and no primary keys; foreign keys to an earlier table or the table
itself, with each ON DELETE action) and a sequence of agent statements through goex, with another
client writing between them.

The oracle is a twin database: the same schema, and every write of the other client, but none
of the agent's. After `session.rollback()` the engine's own dump tool (`pg_dump`, `mariadb-dump`,
SQLite's `iterdump`), normalised, must show the database equal to its twin: the agent's work gone
exactly and the other client's work intact. The other client writes rows of its own (key range
1000 and up) so that an exact undo never has to conflict; a refusal names its reason.

Bounded: a few examples per engine (GOEX_FUZZ_EXAMPLES, default 12).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goex

EXAMPLES = int(os.environ.get("GOEX_FUZZ_EXAMPLES", "12"))
PG_ADMIN = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MY_HOST, MY_PORT = "127.0.0.1", 3306

# goex's aliases and internal names, and keywords every engine accepts quoted
NAMES = ["x", "r", "u", "s", "v", "j", "c", "n", "d", "p", "k", "rn", "cur", "rel", "old", "new", "key",
         "rows", "table", "select", "order", "group", "from", "where", "values", "default", "user", "check",
         "index", "column", "Mixed Case", "with space", "dots.in.name", "quote\"d"]

# (SQL type, strategy of Python values, how the value is written as a literal)
Typ = tuple[str, st.SearchStrategy[Any]]


def _text() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


TYPES: dict[str, list[Typ]] = {
    "sqlite": [("INTEGER", st.integers(-2**40, 2**40)), ("TEXT", _text()), ("REAL", st.floats(allow_nan=False)),
               ("BLOB", st.binary(max_size=8)), ("NUMERIC", st.integers(-999, 999)), ("", st.integers(0, 9))],
    "postgresql": [("integer", st.integers(-2**31, 2**31 - 1)), ("bigint", st.integers(-2**62, 2**62)),
                   ("text", _text()), ("double precision", st.floats()), ("numeric", st.sampled_from(
                       ["NaN", "1.50", "-0", "123456789.123456789"])), ("bytea", st.binary(max_size=8)),
                   ("jsonb", st.sampled_from(['{"a": [1, 2]}', "null", '"x"', "[]"])),
                   ("integer[]", st.sampled_from(["{}", "{1,2}", "{NULL,3}"])),
                   ("timestamp", st.sampled_from(["infinity", "-infinity", "2024-02-29 12:00:00"])),
                   ("boolean", st.booleans()), ('varchar(20) COLLATE "C"', _text())],
    "mysql": [("INT", st.integers(-2**31, 2**31 - 1)), ("BIGINT", st.integers(-2**62, 2**62)),
              ("VARCHAR(40)", st.text(st.characters(codec="utf-8", max_codepoint=0xFFFF,
                                                    exclude_categories=("Cs", "Cc")), max_size=12)),
              ("DOUBLE", st.floats(allow_nan=False, allow_infinity=False, width=32)),
              ("DECIMAL(12,3)", st.sampled_from(["1.500", "-0.001", "123456789.123"])),
              ("BLOB", st.binary(max_size=8)), ("JSON", st.sampled_from(['{"a": [1, 2]}', "null", "[]"])),
              ("DATETIME", st.sampled_from(["2024-02-29 12:00:00", "1000-01-01 00:00:00"]))],
}


def quote(engine: str, name: str) -> str:
    if engine == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def literal(engine: str, sqltype: str, value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, bytes):
        if engine == "postgresql":
            return f"'\\x{value.hex()}'::bytea"
        return f"X'{value.hex()}'"
    if isinstance(value, float):
        if engine == "postgresql":
            return f"'{value!r}'::float8" if value == value and abs(value) != float("inf") else \
                f"'{'NaN' if value != value else ('Infinity' if value > 0 else '-Infinity')}'::float8"
        if abs(value) == float("inf"):  # SQLite has no infinity literal: it reads an overflowing one as one
            return "9e999" if value > 0 else "-9e999"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("'", "''")
    if engine == "mysql":
        text = text.replace("\\", "\\\\")
    if engine == "postgresql" and sqltype not in ("text",) and not sqltype.startswith("varchar"):
        return f"'{text}'::{sqltype.split(' COLLATE')[0]}"
    return f"'{text}'"


@dataclass
class Column:
    name: str
    sqltype: str
    values: st.SearchStrategy[Any]


@dataclass
class Table:
    name: str
    k: str  # the integer column whose value says whose row it is (agent < 1000 <= other client)
    columns: list[Column]
    key: list[str]  # primary key columns (k first), or none
    ref: tuple[str, str, str] | None  # (referenced table, its k, ON DELETE action): first column -> it


@st.composite
def schemas(draw: Callable[..., Any], engine: str) -> list[Table]:
    tables: list[Table] = []
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    for name in names:
        cols = draw(st.lists(st.sampled_from([n for n in NAMES if n != name]), min_size=3, max_size=5,
                             unique_by=str.lower))
        k, k2, others = cols[0], cols[1], cols[2:]
        columns = [Column(c, *draw(st.sampled_from(TYPES[engine]))) for c in others]
        pk = draw(st.sampled_from(["none", "single", "composite"]))
        key = {"none": [], "single": [k], "composite": [k, k2]}[pk]
        ref = None
        if key == [k] and draw(st.booleans()):
            target = draw(st.sampled_from([t for t in tables if t.key == [t.k]] + [None]))
            ondelete = draw(st.sampled_from(["CASCADE", "SET NULL", "RESTRICT", "NO ACTION"]))
            ref = (target.name, target.k, ondelete) if target else (name, k, ondelete)
        tables.append(Table(name, k, [Column(k2, "INTEGER" if engine != "mysql" else "INT", st.none())]
                            + columns, key, ref))
    return tables


def create_sql(engine: str, table: Table) -> str:
    q = lambda n: quote(engine, n)  # noqa: E731
    inttype = "INTEGER" if engine != "mysql" else "INT"
    parts = [f"{q(table.k)} {inttype} NOT NULL"] + [f"{q(c.name)} {c.sqltype or ''}".rstrip() for c in table.columns]
    if table.key:
        parts.append(f"PRIMARY KEY ({', '.join(q(n) for n in table.key)})")
    if table.ref:
        parent, parent_k, action = table.ref
        parts.append(f"FOREIGN KEY ({q(table.columns[0].name)}) REFERENCES {q(parent)} ({q(parent_k)}) "
                     f"ON DELETE {action}")
    extra = " ENGINE=InnoDB" if engine == "mysql" else ""
    return f"CREATE TABLE {q(table.name)} ({', '.join(parts)}){extra}"


@st.composite
def row(draw: Callable[..., Any], engine: str, table: Table, k: int, tables: dict[str, Table],
        keys: dict[str, set[int]]) -> str:
    values = [str(k)]
    for i, c in enumerate(table.columns):
        if i == 0:  # the reference column: a key of the referenced table in the same range, or NULL
            pool = sorted(x for x in keys.get(table.ref[0], set()) if (x >= 1000) == (k >= 1000)) if table.ref else []
            values.append(str(draw(st.sampled_from(pool))) if pool and draw(st.booleans()) else
                          (str(draw(st.integers(0, 3))) if table.key[1:] else "NULL"))
        else:
            values.append(literal(engine, c.sqltype, draw(st.one_of(st.none(), c.values))))
    cols = ", ".join(quote(engine, n) for n in [table.k] + [c.name for c in table.columns])
    return f"INSERT INTO {quote(engine, table.name)} ({cols}) VALUES ({', '.join(values)})"


@st.composite
def scenario(draw: Callable[..., Any], engine: str) -> tuple[list[Table], list[str], list[tuple[str, str]]]:
    """(schema, setup inserts, steps): a step is ("agent" | "client", SQL)."""
    tables = draw(schemas(engine))
    by_name = {t.name: t for t in tables}
    keys: dict[str, set[int]] = {t.name: set() for t in tables}
    setup = []
    for t in tables:
        for k in sorted(draw(st.sets(st.integers(1, 20), max_size=4)) | draw(st.sets(st.integers(1000, 1020), max_size=2))):
            setup.append(draw(row(engine, t, k, by_name, keys)))
            keys[t.name].add(k)
    steps: list[tuple[str, str]] = []
    ddl = draw(st.booleans()) and draw(st.booleans())
    if ddl:  # schema change: no other client after it (its undo restores the snapshot: a write since conflicts)
        t = draw(st.sampled_from(tables))
        extra = draw(st.sampled_from([n for n in NAMES if n.lower() not in
                                      {c.name.lower() for c in t.columns} | {t.k.lower()}]))
        steps.append(("agent", f"ALTER TABLE {quote(engine, t.name)} ADD COLUMN {quote(engine, extra)} "
                               f"{'INTEGER' if engine != 'mysql' else 'INT'} DEFAULT 7"))
    for _ in range(draw(st.integers(1, 8))):
        who = "agent" if ddl else draw(st.sampled_from(["agent", "agent", "client"]))
        lo, hi = (21, 999) if who == "agent" else (1021, 1999)
        old_lo, old_hi = (1, 25) if who == "agent" else (1000, 1025)  # where the rows are
        t = draw(st.sampled_from(tables))
        q = lambda n: quote(engine, n)  # noqa: E731
        kind = draw(st.sampled_from(["insert", "insert", "update", "delete", "update_key"]))
        if kind == "insert":
            k = draw(st.integers(lo, hi).filter(lambda v: v not in keys[t.name]))
            steps.append((who, draw(row(engine, t, k, by_name, keys))))
            keys[t.name].add(k)
        elif kind == "update" and len(t.columns) > 1:
            c = draw(st.sampled_from(t.columns[1:]))
            value = literal(engine, c.sqltype, draw(st.one_of(st.none(), c.values)))
            a = draw(st.integers(old_lo, old_hi))
            steps.append((who, f"UPDATE {q(t.name)} SET {q(c.name)} = {value} WHERE {q(t.k)} BETWEEN {a} AND "
                               f"{min(a + draw(st.integers(0, 10)), old_hi)}"))
        elif kind == "update_key" and who == "agent" and not t.ref and not any(
                x.ref and x.ref[0] == t.name for x in tables):
            a = draw(st.sampled_from(sorted(x for x in keys[t.name] if x < 1000) or [1]))
            new = draw(st.integers(21, 999).filter(lambda v: v not in keys[t.name]))
            steps.append((who, f"UPDATE {q(t.name)} SET {q(t.k)} = {new} WHERE {q(t.k)} = {a}"))
            keys[t.name].add(new)
        else:
            a = draw(st.integers(old_lo, old_hi))
            steps.append((who, f"DELETE FROM {q(t.name)} WHERE {q(t.k)} BETWEEN {a} AND "
                               f"{min(a + draw(st.integers(0, 5)), old_hi)}"))
    return tables, setup, steps


# -- engines: a main database (goex) and its twin (the other client's writes only) -----------------


class Sqlite:
    name = "sqlite"

    def __init__(self, root: Path):
        self.root = root

    def reset(self) -> None:
        for f in ("main.db", "twin.db"):
            (self.root / f).unlink(missing_ok=True)
            sqlite3.connect(self.root / f).close()

    def url(self) -> str:
        return "sqlite:///main.db"

    def run(self, which: str, sql: str) -> None:
        conn = sqlite3.connect(self.root / f"{which}.db", isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(sql)
        finally:
            conn.close()

    def dump(self, which: str) -> str:
        conn = sqlite3.connect(self.root / f"{which}.db")
        try:
            return "\n".join(sorted(conn.iterdump()))
        finally:
            conn.close()


class Postgres:
    name = "postgresql"

    def __init__(self, root: Path):
        import psycopg

        self.psycopg = psycopg
        self.dbs = {w: f"goex_fz_{w}_{secrets.token_hex(4)}" for w in ("main", "twin")}
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for db in self.dbs.values():
                admin.execute(f"CREATE DATABASE {db}")

    def _url(self, which: str) -> str:
        return PG_ADMIN.rpartition("/")[0] + "/" + self.dbs[which]

    def url(self) -> str:
        return self._url("main")

    def reset(self) -> None:
        for which in self.dbs:
            with self.psycopg.connect(self._url(which), autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public; GRANT ALL ON SCHEMA public TO PUBLIC")

    def run(self, which: str, sql: str) -> None:
        with self.psycopg.connect(self._url(which), autocommit=True) as conn:
            conn.execute(sql)

    def dump(self, which: str) -> str:
        out = subprocess.run([shutil.which("pg_dump") or "pg_dump", "--no-owner", "--no-privileges",
                              "--exclude-schema=goex", self._url(which)], check=True, capture_output=True,
                             text=True).stdout
        return _normalise(out, copy_blocks=True)

    def close(self) -> None:
        with self.psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for db in self.dbs.values():
                admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


class Mysql:
    name = "mysql"

    def __init__(self, root: Path):
        import pymysql

        self.pymysql = pymysql
        self.dbs = {w: f"goex_fz_{w}_{secrets.token_hex(4)}" for w in ("main", "twin")}
        self._admin(lambda cur: [cur.execute(f"CREATE DATABASE `{db}`") for db in self.dbs.values()])

    def _admin(self, fn: Callable[[Any], Any], db: str | None = None) -> Any:
        conn = self.pymysql.connect(host=MY_HOST, port=MY_PORT, user="root", password="", database=db,
                                    autocommit=True)
        try:
            return fn(conn.cursor())
        finally:
            conn.close()

    def url(self) -> str:
        return f"mysql://root@{MY_HOST}:{MY_PORT}/{self.dbs['main']}"

    def reset(self) -> None:
        for db in self.dbs.values():
            self._admin(lambda cur, db=db: [cur.execute(f"DROP DATABASE `{db}`"), cur.execute(f"CREATE DATABASE `{db}`")])

    def run(self, which: str, sql: str) -> None:
        self._admin(lambda cur: cur.execute(sql), self.dbs[which])

    def dump(self, which: str) -> str:
        exe = shutil.which("mariadb-dump") or shutil.which("mysqldump") or "mysqldump"
        out = subprocess.run([exe, "-h", MY_HOST, "-P", str(MY_PORT), "-uroot", "--skip-comments",
                              "--skip-dump-date", "--skip-extended-insert", "--hex-blob", "--skip-opt",
                              "--create-options", self.dbs[which]], check=True, capture_output=True,
                             text=True).stdout
        # the InnoDB counter only grows (a server limit, see docs/sql.md): not part of the comparison
        out = re.sub(r" AUTO_INCREMENT=\d+", "", out)
        return _normalise(out, copy_blocks=False)

    def close(self) -> None:
        self._admin(lambda cur: [cur.execute(f"DROP DATABASE IF EXISTS `{db}`") for db in self.dbs.values()])


def _normalise(text: str, copy_blocks: bool) -> str:
    lines, out, block = text.splitlines(), [], None
    for line in lines:
        if not line.strip() or line.startswith("--") or line.startswith("\\restrict") or \
                line.startswith("\\unrestrict") or line.startswith("/*!"):
            continue
        if copy_blocks and block is not None:
            if line == "\\.":
                out += sorted(block) + [line]
                block = None
            else:
                block.append(line)
            continue
        out.append(line)
        if copy_blocks and line.startswith("COPY "):
            block = []
    if not copy_blocks:  # INSERT lines, one per row, in no guaranteed order without a key
        inserts = sorted(line for line in out if line.startswith("INSERT INTO"))
        out = [line for line in out if not line.startswith("INSERT INTO")] + inserts
    return "\n".join(out)


ENGINES = {"sqlite": Sqlite, "postgresql": Postgres, "mysql": Mysql}


@pytest.fixture(params=list(ENGINES))
def engine(request, tmp_path_factory):
    eng = ENGINES[request.param](tmp_path_factory.mktemp("fuzz"))
    yield eng
    if hasattr(eng, "close"):
        eng.close()


def test_undo_is_exact_with_another_client(engine, tmp_path_factory):
    root = getattr(engine, "root", None) or tmp_path_factory.mktemp("root")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=scenario(engine.name))
    def check(data: tuple[list[Table], list[str], list[tuple[str, str]]]) -> None:
        tables, setup, steps = data
        engine.reset()
        for which in ("main", "twin"):
            for t in tables:
                engine.run(which, create_sql(engine.name, t))
            for sql in setup:
                engine.run(which, sql)
        assert engine.dump("main") == engine.dump("twin")
        journal = tmp_path_factory.mktemp("journal")
        with goex.Runtime(root, journal=journal / "j.db", policy="permissive", durability="process",
                          databases={"db": engine.url()}) as rt:
            session = rt.session()
            for who, sql in steps:
                if who == "client":
                    engine.run("main", sql)
                    engine.run("twin", sql)
                    continue
                result = session.execute({"type": "sql.execute", "db": "db", "sql": sql})
                assert result.ok or result.error, f"{sql}: refused with no reason"
            session.rollback()
        assert engine.dump("main") == engine.dump("twin"), f"steps: {steps}"

    check()
