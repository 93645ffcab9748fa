"""The sqllogictest `test/evidence` scripts (SQLite's own test corpus) through goex, beside the same
records on a raw connection, on SQLite, PostgreSQL and MariaDB.

For each script and engine: a fresh database for goex and another for the raw client; every
record the script's `skipif`/`onlyif` lines apply to that engine runs through `sql.execute` in
one goex session and on the raw connection; outcomes (ok or error) and query results (normalised
the sqllogictest way) must be the same; at the end both databases must hold the same schema and
rows, and rolling the goex session back must give the database exactly as it was at the start
(`iterdump` for SQLite; a listing of schema objects and sorted rows read from the server's
catalog for PostgreSQL and MariaDB). On SQLite, the raw results must also be the script's own
expected results: that checks this runner.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import goex
from goex.adapters.sql.mysql import drop_agent_account

from sqllogic import Record, compared, records, values



def _corpus() -> Path:
    """The scripts: GOEX_SLT_CORPUS, or `shared/corpora/sqllogictest/evidence` in a folder above this one."""
    if os.environ.get("GOEX_SLT_CORPUS"):
        return Path(os.environ["GOEX_SLT_CORPUS"])
    for up in Path(__file__).resolve().parents:
        if (up / "shared/corpora/sqllogictest/evidence").is_dir():
            return up / "shared/corpora/sqllogictest/evidence"
    return Path("/work/shared/corpora/sqllogictest/evidence")


CORPUS = _corpus()
SCRIPTS = sorted(CORPUS.glob("*.test"))
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

#: records goex refuses on purpose, by engine and how their SQL starts: why. goex must refuse
#: them (a typed refusal, status "denied"); they run on neither side, so both stay in step.
REFUSED: dict[tuple[str, str], str] = {
    ("sqlite", "CREATE TEMP "): "TEMP objects would live on goex's own connection, outside the action's "
                                "transaction and its undo (SQLite's authorizer refuses them)",
    ("sqlite", "CREATE TEMPORARY "): "the same as CREATE TEMP",
    # SQLite's trigger syntax: PostgreSQL has no BEGIN ... END trigger body, so its tokenizer splits
    # the text at the inner ';' and the trailing `END` is transaction control (the raw server fails
    # the whole text as a syntax error)
    ("postgresql", "CREATE TRIGGER "): "split at ';', its trailing END is transaction control",
    ("postgresql", "REINDEX "): "maintenance goex does not run inside an action's transaction",
}


def _refused(engine: str, sql: str) -> str | None:
    return next((why for (name, start), why in REFUSED.items() if name == engine and sql.startswith(start)), None)


#: (engine, script): why goex does not match the raw client there (strict xfail); empty: everything matches
KNOWN: dict[tuple[str, str], str] = {}


# -- the databases --------------------------------------------------------------------------------


class Sqlite:
    """Two database files in the workspace: one goex acts on, one the raw `sqlite3` client uses."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "goex.db"
        sqlite3.connect(self.path).close()  # an empty database exists at the start
        self.url = "sqlite:///goex.db"
        self.raw = sqlite3.connect(root.parent / "raw.db", isolation_level=None)

    def statement(self, sql: str) -> None:
        self.raw.executescript(sql)

    def query(self, sql: str) -> list[list[Any]]:
        return [list(r) for r in self.raw.execute(sql).fetchall()]

    def listing(self, which: str) -> list[str]:
        conn = self.raw if which == "raw" else sqlite3.connect(self.path)
        try:
            return list(conn.iterdump())
        finally:
            if conn is not self.raw:
                conn.close()

    def close(self) -> None:
        self.raw.close()


class Postgres:
    """Two databases on the server: goex's and the raw `psycopg` client's."""

    def __init__(self, root: Path):
        import psycopg

        self.names = [f"goex_slt_{uuid.uuid4().hex[:10]}", f"goex_slt_{uuid.uuid4().hex[:10]}"]
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for name in self.names:
                admin.execute(f"CREATE DATABASE {name}")
        base = PG_ADMIN.rsplit("/", 1)[0]
        self.url = f"{base}/{self.names[0]}"
        self.raw = psycopg.connect(f"{base}/{self.names[1]}", autocommit=True)
        self.reader = psycopg.connect(self.url, autocommit=True)

    def statement(self, sql: str) -> None:
        self.raw.execute(sql)

    def query(self, sql: str) -> list[list[Any]]:
        return [list(r) for r in self.raw.execute(sql).fetchall()]

    def listing(self, which: str) -> list[str]:
        conn = self.raw if which == "raw" else self.reader
        out = []
        for query in (
            "SELECT table_name, ordinal_position, column_name, data_type, character_maximum_length, "
            "numeric_precision, numeric_scale, column_default, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2",
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
            "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
            "SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal "
            "AND c.relnamespace = 'public'::regnamespace ORDER BY 1, 2",
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
            "WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2",
            "SELECT sequencename, last_value, start_value, increment_by FROM pg_sequences "
            "WHERE schemaname = 'public' ORDER BY 1",
        ):
            out += [repr(r) for r in conn.execute(query).fetchall()]
        tables = [r[0] for r in conn.execute("SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p') "
                                             "AND c.relnamespace = 'public'::regnamespace ORDER BY 1")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM public."{table}"').fetchall()
            out += [f"{table}: {r!r}" for r in sorted(repr(r) for r in rows)]
        return out

    def close(self) -> None:
        import psycopg

        self.raw.close()
        self.reader.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            for name in self.names:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Mysql:
    """Two databases on the MariaDB server: goex's and the raw `pymysql` client's."""

    def __init__(self, root: Path):
        import pymysql
        from pymysql.constants import CLIENT

        self.names = [f"goex_slt_{uuid.uuid4().hex[:10]}", f"goex_slt_{uuid.uuid4().hex[:10]}"]
        self.admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
        for name in self.names:
            self.admin.cursor().execute(f"CREATE DATABASE {name}")
        self.url = f"mysql://root@127.0.0.1:3306/{self.names[0]}"
        self.raw = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=self.names[1],
                                   autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
        self.reader = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                      database=self.names[0], autocommit=True)

    def statement(self, sql: str) -> None:
        with self.raw.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass

    def query(self, sql: str) -> list[list[Any]]:
        with self.raw.cursor() as cur:
            cur.execute(sql)
            return [list(r) for r in cur.fetchall()]

    def listing(self, which: str) -> list[str]:
        import re

        conn = self.raw if which == "raw" else self.reader
        out = []
        with conn.cursor() as cur:
            cur.execute("SHOW FULL TABLES")
            objects = sorted(cur.fetchall())
            for name, kind in objects:
                if kind == "VIEW":
                    cur.execute(f"SHOW CREATE VIEW `{name}`")
                    create = cur.fetchone()[1]
                else:
                    cur.execute(f"SHOW CREATE TABLE `{name}`")
                    create = cur.fetchone()[1]
                out.append(re.sub(r"DEFINER=`[^`]*`@`[^`]*` ", "", create))  # goex acts as its own account
                if kind != "VIEW":
                    cur.execute(f"SELECT * FROM `{name}`")
                    out += [f"{name}: {r}" for r in sorted(repr(r) for r in cur.fetchall())]
            cur.execute("SELECT trigger_name, event_manipulation, event_object_table, action_statement, "
                        "action_timing, action_order FROM information_schema.triggers "
                        "WHERE trigger_schema = DATABASE() ORDER BY 1")
            out += [repr(r) for r in cur.fetchall()]
        return out

    def close(self) -> None:
        self.raw.close()
        self.reader.close()
        for name in self.names:
            self.admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
        self.admin.close()
        drop_agent_account(self.url)


SIDES = {"sqlite": Sqlite, "postgresql": Postgres, "mysql": Mysql}


@pytest.fixture
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    root = tmp_path / "ws"
    root.mkdir()
    made = SIDES[request.param](root)
    made.root = root
    try:
        yield made
    finally:
        made.close()


# -- running a script -----------------------------------------------------------------------------


def _raw(side: Any, record: Record) -> tuple[str, list[str] | None]:
    """The record on the raw connection: ("ok", values) or ("error", None)."""
    try:
        if record.kind == "statement":
            side.statement(record.sql)
            return "ok", None
        return "ok", values(record, side.query(record.sql))
    except Exception:  # noqa: BLE001 - any driver's error is the outcome being compared
        return "error", None


def _goex(session: goex.Session, record: Record) -> tuple[str, list[str] | None, str]:
    """The record through goex: ("ok", values), ("error", None), ("refused", None) or ("raised", None)
    (an exception where a result was due), and goex's error."""
    try:
        result = session.execute({"type": "sql.execute", "db": "d", "sql": record.sql})
    except goex.GoexError as exc:
        return "raised", None, f"{type(exc).__name__}: {exc}"
    if not result.ok:
        return ("refused" if result.status == "denied" else "error"), None, result.error or ""
    if record.kind == "statement":
        return "ok", None, ""
    output = result.output or {}
    if output.get("truncated") or "rows" not in output:
        return "error", None, f"no full result set: {output}"
    return "ok", values(record, output["rows"]), ""


def _script_says(record: Record, outcome: str, got: list[str] | None) -> str | None:
    """Whether a raw outcome is what the script expects; None when it is."""
    if record.kind == "statement":
        wanted = "error" if record.error else "ok"
        return None if outcome == wanted else f"the script expects {wanted}, the raw client gave {outcome}"
    if outcome != "ok":
        return None if not record.expected else "the raw client failed a query the script answers"
    lines = compared(record, got or [])
    return None if lines == record.expected else f"the script expects {record.expected}, raw gave {lines}"


def run_script(engine: str, script: Path, side: Any) -> None:
    start = side.listing("goex")
    problems: list[str] = []
    script_problems: list[str] = []
    diverged = False  # a record was refused: later ones may find the state the script expects changed
    with goex.Runtime(side.root, policy="permissive", durability="process", databases={"d": side.url}) as rt:
        session = rt.session()
        for record in records(script, engine):
            text = " ".join(record.sql.split())
            refused = _refused(engine, text)
            outcome, got, error = _goex(session, record)
            if refused is not None:
                if outcome != "refused":
                    problems.append(f"{record.where}: goex should refuse it ({refused}), it gave {outcome}")
                diverged = True
                continue
            raw, expected = _raw(side, record)
            if (outcome, got) != (raw, expected):
                problems.append(f"{record.where} {text[:120]!r}: goex {outcome} {got} {error[:300]}; "
                                f"raw {raw} {expected}")
            said = _script_says(record, raw, expected)
            if said is not None and not diverged:
                script_problems.append(f"{record.where} {text[:80]!r}: {said}")
        if side.listing("goex") != side.listing("raw"):
            problems.append("at the end of the script goex's database and the raw client's differ")
        try:
            session.rollback()
        except goex.GoexError as exc:
            problems.append(f"rollback failed: {exc}")
    if side.listing("goex") != start:
        problems.append("after the rollback the database is not as it was at the start of the script")
    if engine == "sqlite":  # SQLite is the engine the scripts were written against: the runner is checked
        problems += [f"runner: {p}" for p in script_problems]
    assert not problems, "\n".join(problems)


def _cases() -> list[Any]:
    out = []
    for engine in SIDES:
        for script in SCRIPTS:
            why = KNOWN.get((engine, script.name))
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            out.append(pytest.param(engine, script, id=f"{engine}-{script.stem}", marks=marks))
    return out


def test_the_runner_reads_the_format(tmp_path: Path):
    script = tmp_path / "tiny.test"
    script.write_text("hash-threshold 3\r\n\r\nstatement ok\r\nCREATE TABLE t(a, b)\r\n\r\n"
                      "onlyif mysql # a comment\nstatement error\nnope\n\n"
                      "# a comment line\nskipif mysql\nquery IRT rowsort\nSELECT 1\n----\n1\n\n"
                      "onlyif sqlite\nhalt\n\nquery I nosort\nSELECT 2\n----\n2\n", encoding="utf-8")
    sqlite = list(records(script, "sqlite"))
    assert [(r.kind, r.sql, r.line) for r in sqlite] == [("statement", "CREATE TABLE t(a, b)", 3),
                                                          ("query", "SELECT 1", 10)]
    assert [(r.kind, r.error, r.sql) for r in records(script, "mysql")] == [
        ("statement", False, "CREATE TABLE t(a, b)"), ("statement", True, "nope"), ("query", False, "SELECT 2")]
    query = sqlite[1]
    assert (query.types, query.sort, query.expected, query.threshold) == ("IRT", "rowsort", ["1"], 3)
    rows = [[2.9, -9223372036854775808.0, ""], [None, "1.25", b"a\x01"], [True, 0.0005, 7]]
    assert values(query, rows) == ["1", "0.001", "7", "2", "-9223372036854776000.000", "(empty)",
                                   "NULL", "1.250", "a@"]
    digest = hashlib.md5("".join(f"{v}\n" for v in values(query, rows)).encode()).hexdigest()
    assert compared(query, values(query, rows)) == [f"9 values hashing to {digest}"]
    query.sort = "valuesort"
    assert values(query, rows[:1]) == sorted(["2", "-9223372036854776000.000", "(empty)"])


def test_the_corpus_is_there():
    assert len(SCRIPTS) == 12, f"expected the 12 evidence scripts in {CORPUS}"


@pytest.mark.parametrize("side, script", _cases(), indirect=["side"])
def test_script_through_goex_matches_the_raw_client(side: Any, script: Path, request: pytest.FixtureRequest):
    engine = request.node.callspec.params["side"]
    run_script(engine, script, side)
