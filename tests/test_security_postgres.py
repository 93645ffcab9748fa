"""PostgreSQL confinement attacked through the public API: agent SQL runs as a least-privilege
role, so functions smuggled inside string literals (query_to_xml('...')) reach nothing the role
may not; session settings never carry over to a later action or undo; the preview judges the
effect, not the syntax.

Each test works in a database of its own, created from a connection to GOEX_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test) and dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import psycopg
import pytest

import goex
from goex.adapters.sql.postgres import PostgresEngine, dump

ADMIN_URL = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _admin() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


def _url(name: str) -> str:
    return f"{ADMIN_URL.rpartition('/')[0]}/{name}"


@pytest.fixture
def url():
    name = "goex_sec_" + secrets.token_hex(6)
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(_url(name), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); "
                         "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g; "
                         "CREATE TABLE small (id int PRIMARY KEY, n int); "
                         "INSERT INTO small VALUES (1, 10), (2, 20), (3, 30)")
        yield _url(name)
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def rt(url, tmp_path: Path):
    with goex.Runtime(tmp_path, policy="permissive", databases={"pg": url}) as runtime:
        yield runtime


def _sql(s: goex.Session, text: str) -> goex.Result:
    return s.execute({"type": "sql.execute", "db": "pg", "sql": text})


def _smuggle(inner: str) -> str:
    """`inner` run by query_to_xml: SQL inside a string literal, where no statement check looks."""
    return "SELECT query_to_xml('" + inner.replace("'", "''") + "', true, false, '')"


def _count(url: str, query: str = "SELECT count(*) FROM t") -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def _seen(result: goex.Result) -> str:
    return f"{result.output} {result.error}"


# -- finding 3: SQL smuggled inside string literals ------------------------------------------------


def test_smuggled_function_cannot_read_a_server_file(rt, tmp_path_factory):
    secret = "goex-secret-" + secrets.token_hex(16)
    path = Path("/tmp") / f"goex_sec_{secrets.token_hex(6)}.txt"
    path.write_text(secret)
    path.chmod(0o644)  # readable by the server's OS user: only privilege stands in the way
    try:
        s = rt.session()
        attacks = [
            _smuggle(f"select pg_read_file('{path}') as x"),
            _smuggle(f"select pg_read_binary_file('{path}') as x"),
            _smuggle(f"select set_config('role', 'postgres', true), pg_read_file('{path}') as x"),
            _smuggle(f"select set_config('session_authorization', 'postgres', true), pg_read_file('{path}') as x"),
            _smuggle("select x from pg_ls_dir('/tmp') x"),
        ]
        for attack in attacks:
            result = _sql(s, attack)
            assert secret not in _seen(result) and path.name not in _seen(result)
            assert not result.ok, attack
    finally:
        path.unlink()


def test_smuggled_replication_role_cannot_hide_a_2000_row_delete(rt, url):
    s = rt.session()
    assert not _sql(s, _smuggle("select set_config('session_replication_role', 'replica', false)")).ok
    assert not _sql(s, _smuggle("select set_config('session_replication_role', 'replica', true)") +
                    "; DELETE FROM t WHERE id = id").ok
    delete = {"type": "sql.execute", "db": "pg", "sql": "DELETE FROM t WHERE id = id"}
    _, preview = s.check(delete)
    assert preview["rows"] == 2000 and preview["all_rows"] == ["t"]
    assert s.execute(delete).ok
    assert _count(url) == 0
    s.undo()
    assert _count(url) == 2000


def test_a_non_local_setting_does_not_reach_a_later_action_or_undo(rt, url, tmp_path):
    start = dump(url)
    s = rt.session()
    # settings the role may make: kept by a pooled session unless goex resets it
    assert _sql(s, _smuggle("select set_config('default_transaction_read_only', 'on', false), "
                            "set_config('search_path', 'nowhere', false)")
                + "; UPDATE public.small SET n = n WHERE id = 1").ok  # a write: its transaction commits
    assert _sql(s, "DELETE FROM t WHERE id > 0").ok  # neither read-only nor lost on its search path
    assert _sql(s, "UPDATE small SET n = n + 1").ok
    assert _count(url) == 0
    with goex.Runtime(tmp_path, policy="permissive", databases={"pg": url}) as later:
        later.session(session_id=s.id).rollback()
    assert _count(url) == 2000
    assert dump(url) == start


def test_server_side_files_and_programs_refused_with_no_effect(rt, url):
    marker = Path("/tmp") / f"goex_sec_{secrets.token_hex(6)}.marker"
    s = rt.session()
    objects = "SELECT count(*) FROM pg_largeobject_metadata"
    before = _count(url, objects)
    for attack in [
        "SELECT lo_import('/etc/hostname')",
        _smuggle("select lo_import('/etc/hostname') as x"),
        f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'",
        _smuggle(f"copy (select 1) to program 'touch {marker}'"),
        "SELECT pg_ls_dir('/tmp')",
        _smuggle("select lo_from_bytea(0, 'x'::bytea) as x") + "; UPDATE small SET n = 1 WHERE id = 1",
    ]:
        result = _sql(s, attack)
        assert not result.ok, attack
        assert "hostname" not in str(result.output)
    assert not marker.exists()
    assert _count(url, objects) == before
    assert _count(url, "SELECT n FROM small WHERE id = 1") == 10


def test_ddl_runs_as_the_agent_role_and_undoes_exactly(rt, url):
    start = dump(url)
    s = rt.session()
    for text in ["CREATE TABLE fresh (id serial PRIMARY KEY, v text); INSERT INTO fresh (v) VALUES ('a')",
                 "ALTER TABLE small ADD COLUMN note text DEFAULT 'x'",
                 "CREATE INDEX small_n ON small (n)",
                 "ALTER TABLE t RENAME TO renamed",
                 "DROP TABLE fresh"]:
        result = _sql(s, text)
        assert result.ok, result.error
    assert "renamed" in dump(url)
    s.rollback()
    assert dump(url) == start


def test_agent_statements_run_as_the_agent_role(rt):
    s = rt.session()
    result = _sql(s, "SELECT current_user, session_user")
    assert result.ok
    assert result.output["rows"] == [["goex_agent", "goex_agent"]]


# -- finding 9: the effect, not the syntax ----------------------------------------------------------


@pytest.mark.parametrize("text", [
    "UPDATE small SET n = n WHERE 1 = 1",
    "UPDATE small SET n = n + 1 WHERE true",
    "UPDATE small SET n = 0 WHERE id = id OR n > 100",
    "DELETE FROM small WHERE id IN (SELECT id FROM small)",
    "INSERT INTO small SELECT id, n + 1 FROM small ON CONFLICT (id) DO UPDATE SET n = excluded.n",
    "WITH x AS (DELETE FROM small RETURNING id) INSERT INTO t SELECT id + 5000, 'x' FROM x",
    "TRUNCATE small",
])
def test_preview_says_when_every_row_changes(rt, text):
    _, preview = rt.session().check({"type": "sql.execute", "db": "pg", "sql": text})
    assert preview["all_rows"] == ["small"]


def test_preview_leaves_out_partial_changes(rt):
    s = rt.session()
    for text in ["UPDATE small SET n = 0 WHERE id < 3", "DELETE FROM t WHERE id > 1", "INSERT INTO small VALUES (9, 9)"]:
        _, preview = s.check({"type": "sql.execute", "db": "pg", "sql": text})
        assert preview["all_rows"] == [], text


def test_a_trigger_created_first_then_fired_is_seen(rt, url):
    s = rt.session()
    with psycopg.connect(url, autocommit=True) as conn:  # a user function an agent may use
        conn.execute("CREATE FUNCTION touch_all() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN UPDATE small SET n = n + 1; RETURN NULL; END $$")
    create = {"type": "sql.execute", "db": "pg",
              "sql": "CREATE TRIGGER fan AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch_all()"}
    _, preview = s.check(create)
    assert preview["creates_trigger"] is True
    assert s.execute(create).ok
    _, preview = s.check({"type": "sql.execute", "db": "pg", "sql": "INSERT INTO t VALUES (5000, 'x')"})
    assert preview["all_rows"] == ["small"]


# -- the role goex runs agent SQL as ---------------------------------------------------------------


def test_agent_privileges_report_the_safe_role(url):
    engine = PostgresEngine(url)
    try:
        got = engine.agent_privileges()
    finally:
        engine.close()
    assert got["runs_as"] == "goex_agent" and got["safe"] is True and got["dangerous"] == []


def test_a_named_role_holding_server_file_access_is_refused(url, tmp_path):
    role = "goex_sec_" + secrets.token_hex(5)
    with _admin() as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT pg_read_server_files TO {role}")
    try:
        named = f"{url}?goex_role={role}"
        engine = PostgresEngine(named)
        got = engine.agent_privileges()
        engine.close()
        assert got["safe"] is False and "member of pg_read_server_files" in got["dangerous"]
        with goex.Runtime(tmp_path, policy="permissive", databases={"pg": named}) as runtime:
            result = _sql(runtime.session(), "DELETE FROM small")
        assert not result.ok and "pg_read_server_files" in (result.error or "")
        assert _count(url, "SELECT count(*) FROM small") == 3
    finally:
        with _admin() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_role_setup_is_safe_when_many_engines_start_at_once(url):
    import threading

    errors: list[BaseException] = []

    def start() -> None:
        engine = PostgresEngine(url)
        try:
            engine.agent_privileges()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            engine.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- undo evaluates agent-written expressions with the agent's rights only -------------------------


def _hidden(inner: str) -> str:
    """`inner` run by query_to_xml from base64 text: no statement check can read it."""
    import base64
    text = base64.b64encode(inner.encode()).decode()
    return f"query_to_xml(convert_from(decode('{text}', 'base64'), 'UTF8'), true, false, '')"


def _when_able(inner: str, what: str = "write") -> str:
    """A CHECK that holds for everyone and runs `inner` whenever the role evaluating it may reach
    server files (a superuser may)."""
    able = f"pg_has_role(current_user, 'pg_{what}_server_files', 'USAGE')"
    if what == "write":
        return f"CHECK (CASE WHEN {able} THEN {_hidden(inner)} IS NOT NULL ELSE true END)"
    return f"CHECK (CASE WHEN {able} THEN ({_hidden(inner)}::text)::int > 0 ELSE true END)"


def _out_path() -> Path:
    return Path(f"/tmp/goex_sec_pg_{secrets.token_hex(8)}")  # the postgres OS user may write /tmp


def _undo_text(s: goex.Session) -> str:
    try:
        return repr(s.undo(steps=1))
    except goex.GoexError as exc:
        return f"error: {exc}"


def test_row_undo_runs_agent_check_constraints_without_superuser(rt, url):
    out = _out_path()
    s = rt.session()
    write = f"SELECT lo_export(lo_from_bytea(0, 'written by the server'::bytea), '{out}') AS w"
    read = "SELECT pg_read_file('/etc/passwd', 0, 200) AS f"
    for text in [f"CREATE TABLE w (id int PRIMARY KEY, {_when_able(write)})",
                 f"CREATE TABLE r (id int PRIMARY KEY, {_when_able(read, 'read')})",
                 "INSERT INTO w VALUES (1), (2), (3)", "INSERT INTO r VALUES (1), (2)",
                 "DELETE FROM w WHERE id = 1"]:
        assert _sql(s, text).ok
    seen = _undo_text(s)
    assert _sql(s, "DELETE FROM r WHERE id = 1").ok
    seen += _undo_text(s)
    assert not out.exists(), "undo evaluated the agent's CHECK as a superuser: a server file was written"
    assert "root:" not in seen
    assert _count(url, "SELECT count(*) FROM w") == 3 and _count(url, "SELECT count(*) FROM r") == 2


def test_row_undo_expression_cannot_switch_role_back(rt, url):
    out = _out_path()
    s = rt.session()
    escape = (f"SELECT set_config('role', 'postgres', true), set_config('session_replication_role', 'origin', false), "
              f"lo_export(lo_from_bytea(0, 'x'::bytea), '{out}')")
    check = f"CHECK (CASE WHEN current_user <> 'goex_agent' THEN {_hidden(escape)} IS NOT NULL ELSE true END)"
    for text in [f"CREATE TABLE w (id int PRIMARY KEY, {check})", "INSERT INTO w VALUES (1), (2)",
                 "DELETE FROM w WHERE id = 2"]:
        assert _sql(s, text).ok
    seen = _undo_text(s)
    assert not out.exists()
    assert seen.startswith("error:") and "permission denied" in seen
    assert _count(url, "SELECT count(*) FROM w") == 1  # the failed undo applied nothing
    assert _count(url, "SELECT count(*) FROM small") == 3


def test_ddl_undo_restores_rows_through_agent_checks_without_superuser(rt, url):
    out = _out_path()
    s = rt.session()
    write = f"SELECT lo_export(lo_from_bytea(0, 'written by the server'::bytea), '{out}') AS w"
    read = "SELECT pg_read_file('/etc/passwd', 0, 200) AS f"
    for text in [f"CREATE TABLE w (id int PRIMARY KEY, {_when_able(write)})",
                 f"CREATE TABLE r (id int PRIMARY KEY, {_when_able(read, 'read')})",
                 "INSERT INTO w VALUES (1), (2), (3)", "INSERT INTO r VALUES (1), (2)"]:
        assert _sql(s, text).ok
    start = dump(url)
    result = _sql(s, "ALTER TABLE w ADD COLUMN note text; ALTER TABLE r ADD COLUMN note text; DELETE FROM w")
    assert result.ok, result.error
    seen = _undo_text(s) + _seen(result)
    assert not out.exists(), "the dump restore evaluated the agent's CHECK as a superuser: a server file was written"
    assert "root:" not in seen
    assert dump(url) == start, seen
    assert _count(url, "SELECT count(*) FROM w") == 3 and _count(url, "SELECT count(*) FROM r") == 2
