"""The PostgreSQL engine against a real server: every action undone exactly, conflicts seen,
failures leave nothing behind, recovery reads the outcome off the database.

Each test works in a database of its own (`goex_pg_<hex>`), created from a connection to `test`
and dropped afterwards. The server is taken from GOEX_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test); the tests are skipped when it cannot be reached.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from goex.adapters.sql.common import SqlRefused, SqlSyntaxError, analyse  # noqa: E402
from goex.adapters.sql.postgres import PostgresEngine, convert_params, dump  # noqa: E402
from goex.errors import ActionFailed  # noqa: E402

ADMIN_URL = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _admin():
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - environment without a server
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}")


def _url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def url():
    name = "goex_pg_" + secrets.token_hex(6)
    with _admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _url(name)
    finally:
        with _admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Record:
    statements: list[str]
    before: dict[str, Any]
    captured: dict[str, Any] | None
    output: dict[str, Any]
    rows: int


@dataclass
class Harness:
    url: str
    engine: PostgresEngine = field(init=False)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self):
        self.engine = PostgresEngine(self.url)

    def put(self, data: bytes) -> str:
        key = f"b{len(self.blobs)}"
        self.blobs[key] = data
        return key

    def sql(self, text: str) -> None:
        """Setup or another client's change, outside goex."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(text)

    def prepare(self, sql: str) -> tuple[list[str], list[dict[str, Any]]]:
        statements = self.engine.split(sql)
        analyses = [analyse(s, self.engine.dialect) for s in statements]
        for statement, analysis in zip(statements, analyses):
            self.engine.check(statement, analysis)
        return statements, analyses

    def act(self, sql: str, params: Any = None) -> Record:
        """An action: dry run, before, stage, capture, commit."""
        statements, analyses = self.prepare(sql)
        rows = self.engine.dry_run(statements, params)["rows"]
        before = self.engine.before(statements, analyses, self.put)
        staged = self.engine.stage(statements, params, analyses, before)
        captured = staged.capture(self.put)
        staged.commit()
        return Record(statements, before, captured, staged.output, rows)

    def revert(self, record: Record, force: bool = False) -> None:
        self.engine.revert(record.before, record.captured, self.blobs.get, force)

    def conflicts(self, record: Record) -> list[tuple[str, str]]:
        assert record.captured is not None
        return self.engine.conflicts(record.before, record.captured, self.blobs.get)

    def dump(self) -> str:
        return self.engine.dump()


@pytest.fixture
def h(url):
    harness = Harness(url)
    yield harness
    harness.engine.close()


SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE child (id serial PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                    note text, data bytea);
CREATE TABLE loose (id int PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE SET NULL ON UPDATE CASCADE);
CREATE TABLE audit (id bigserial PRIMARY KEY, op text, rid int);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit(op, rid) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
  RETURN NULL;
END $$;
CREATE TRIGGER parent_audit AFTER INSERT OR UPDATE OR DELETE ON parent FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE VIEW summary AS SELECT p.id, p.name, count(c.id) AS children FROM parent p
  LEFT JOIN child c ON c.pid = p.id GROUP BY p.id, p.name;
CREATE TABLE bag (a int, b text, blob bytea);
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
INSERT INTO parent VALUES (1, 'one'), (2, 'two'), (3, NULL), (4, 'four');
INSERT INTO child (pid, note, data) VALUES (1, 'a', '\\x00ff'), (1, NULL, NULL), (2, 'b', '\\xdeadbeef');
INSERT INTO loose VALUES (10, 1), (11, 2);
INSERT INTO bag VALUES (1, 'x', NULL), (1, 'x', NULL), (2, NULL, '\\x01'), (NULL, NULL, NULL);
INSERT INTO ident (v) VALUES ('first');
"""


def _no_triggers(h: Harness) -> str:
    """The schema without the audit trigger (for exact row counts of plain statements)."""
    h.sql("DROP TRIGGER parent_audit ON parent")
    return h.dump()


# -- DML -------------------------------------------------------------------------------------------


def test_dml_sequence_reverted_exactly(h):
    h.sql(SCHEMA)
    start = h.dump()
    records = [
        h.act("INSERT INTO parent VALUES (5, 'five')"),
        h.act("UPDATE parent SET name = 'uno' WHERE id = 1"),
        h.act("UPDATE parent SET id = 20 WHERE id = 2"),  # primary key update, cascades to child
        h.act("DELETE FROM parent WHERE id = 1"),  # cascades to child, sets loose.pid NULL
        h.act("INSERT INTO bag VALUES (1, 'x', NULL)"),  # a third duplicate
        h.act("UPDATE bag SET b = 'y' WHERE a = 1"),
        h.act("DELETE FROM bag WHERE a IS NULL OR a = 2"),
        h.act("INSERT INTO child (pid, note, data) VALUES (?, ?, ?)", [4, "bytes", b"\x00\x01\xff"]),
        h.act("UPDATE child SET data = NULL, note = :n WHERE pid = :p", {"n": "100%", "p": 20}),
        h.act("INSERT INTO ident (v) VALUES ('second'), ('third')"),
        h.act("DELETE FROM bag"),
    ]
    assert h.dump() != start
    for record in reversed(records):
        assert h.conflicts(record) == []
        h.revert(record)
        h.revert(record)  # idempotent: a second run finds the before-state and leaves it
    assert h.dump() == start


def test_upsert_and_insert_select(h):
    h.sql(SCHEMA)
    start = h.dump()
    a = h.act("INSERT INTO parent VALUES (1, 'changed'), (9, 'nine') "
              "ON CONFLICT (id) DO UPDATE SET name = excluded.name")
    b = h.act("INSERT INTO parent VALUES (1, 'ignored'), (8, 'eight') ON CONFLICT DO NOTHING")
    c = h.act("INSERT INTO bag SELECT a, b, blob FROM bag WHERE a = 1")
    d = h.act("WITH moved AS (DELETE FROM bag WHERE a = 2 RETURNING *) "
              "INSERT INTO bag SELECT a + 1, b, blob FROM moved")
    assert a.output == {"rows_changed": 2}
    assert b.output == {"rows_changed": 1}
    assert c.output == {"rows_changed": 2}
    with psycopg.connect(h.url) as conn:
        assert conn.execute("SELECT name FROM parent WHERE id = 1").fetchone() == ("changed",)
        assert conn.execute("SELECT count(*) FROM bag WHERE a = 1").fetchone() == (4,)
    for record in (d, c, b, a):
        h.revert(record)
    assert h.dump() == start


def test_returning_and_query_output(h):
    h.sql(SCHEMA)
    start = h.dump()
    record = h.act("INSERT INTO parent VALUES (7, 'seven') RETURNING id, name")
    assert record.output["columns"] == ["id", "name"] and record.output["rows"] == [[7, "seven"]]
    statements, analyses = h.prepare("SELECT data FROM child WHERE pid = 1 ORDER BY id")
    staged = h.engine.stage(statements, None, analyses, h.engine.before(statements, analyses, h.put))
    staged.abort()
    assert staged.output["rows"][0] == [{"$base64": "AP8="}]
    h.revert(record)
    assert h.dump() == start


def test_cascades_triggers_and_dry_run_counts(h):
    h.sql(SCHEMA)
    start = h.dump()
    statements, _ = h.prepare("DELETE FROM parent WHERE id = 1")
    # parent row + 2 children (cascade) + loose.pid set NULL + 1 audit row written by the trigger
    assert h.engine.dry_run(statements, None)["rows"] == 5
    assert h.dump() == start  # the dry run left nothing, not even a sequence step
    h.sql("INSERT INTO child (pid) VALUES (4)")
    start = h.dump()
    statements, _ = h.prepare("UPDATE parent SET id = 100 WHERE id = 4")
    assert h.engine.dry_run(statements, None)["rows"] == 3  # parent + child (ON UPDATE CASCADE) + audit
    record = h.act("DELETE FROM parent WHERE id = 1")
    assert record.rows == 5
    with psycopg.connect(h.url) as conn:
        assert conn.execute("SELECT count(*) FROM child WHERE pid = 1").fetchone() == (0,)
        assert conn.execute("SELECT pid FROM loose WHERE id = 10").fetchone() == (None,)
        assert conn.execute("SELECT op, rid FROM audit ORDER BY id DESC LIMIT 1").fetchone() == ("DELETE", 1)
    h.revert(record)
    assert h.dump() == start  # audit row gone, audit sequence set back, children back, no trigger fired
    with psycopg.connect(h.url) as conn:
        assert conn.execute("SELECT count(*) FROM audit WHERE op = 'DELETE'").fetchone() == (0,)


def test_dry_run_counts_plain_statements(h):
    h.sql(SCHEMA)
    start = _no_triggers(h)
    assert h.engine.dry_run(h.prepare("UPDATE bag SET b = 'z' WHERE a = 1")[0], None)["rows"] == 2
    assert h.engine.dry_run(h.prepare("INSERT INTO parent VALUES (1, 'x') ON CONFLICT DO NOTHING")[0], None)["rows"] == 0
    assert h.engine.dry_run(h.prepare("INSERT INTO ident (v) VALUES ('a'), ('b')")[0], None)["rows"] == 2
    assert h.engine.dry_run(h.prepare("DELETE FROM parent WHERE id = 2")[0], None)["rows"] == 3  # + child + loose
    assert h.engine.dry_run(h.prepare("TRUNCATE bag")[0], None)["rows"] == 4
    assert h.engine.dry_run(h.prepare("TRUNCATE parent CASCADE")[0], None)["rows"] == 4 + 3 + 2
    assert h.engine.dry_run(h.prepare("DROP TABLE bag")[0], None)["rows"] == 4
    assert h.dump() == start


def test_partitions_and_large_captures(h):
    h.sql("CREATE TABLE part (k int, v text) PARTITION BY RANGE (k); "
          "CREATE TABLE part_low PARTITION OF part FOR VALUES FROM (0) TO (100); "
          "CREATE TABLE part_high PARTITION OF part FOR VALUES FROM (100) TO (1000); "
          "INSERT INTO part VALUES (1, 'a'), (2, 'b'), (150, 'c'); "
          "CREATE TABLE big (id int PRIMARY KEY, v text); "
          "INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 3000) g")
    start = h.dump()
    a = h.act("UPDATE part SET k = k + 100 WHERE k < 100")  # rows move between partitions
    b = h.act("UPDATE big SET v = v || 'y'; DELETE FROM big WHERE id > 2500")
    assert b.rows == 3500 and "tables_blobs" in b.captured  # large undo data goes to blobs
    assert h.conflicts(b) == [] and h.conflicts(a) == []
    h.revert(b)
    h.revert(a)
    assert h.dump() == start


# -- DDL -------------------------------------------------------------------------------------------


def test_ddl_sequence_reverted_exactly(h):
    h.sql(SCHEMA)
    start = h.dump()
    steps = [
        "CREATE TABLE fresh (id serial PRIMARY KEY, v text); INSERT INTO fresh (v) VALUES ('a'), ('b')",
        "ALTER TABLE bag ADD COLUMN c int DEFAULT 7",
        "ALTER TABLE bag DROP COLUMN blob",
        "ALTER TABLE parent RENAME COLUMN name TO title",
        "ALTER TABLE loose RENAME TO slack",
        "CREATE INDEX bag_a ON bag (a)",
        "DROP INDEX bag_a",
        "CREATE INDEX child_note ON child (note)",
        "CREATE VIEW names AS SELECT title FROM parent",
        "DROP VIEW summary",
        "CREATE TRIGGER child_audit AFTER DELETE ON child FOR EACH ROW EXECUTE FUNCTION audit_fn()",
        "DELETE FROM child WHERE pid = 2",
        "DROP TRIGGER parent_audit ON parent",
        "TRUNCATE parent CASCADE",
        "INSERT INTO parent VALUES (1, 'back'); INSERT INTO child (pid) VALUES (1)",
        "INSERT INTO ident (v) VALUES ('x')",
        "DROP TABLE fresh",
        "DROP TABLE bag",
    ]
    records = [h.act(sql) for sql in steps]
    assert h.dump() != start
    for record in reversed(records):
        assert h.conflicts(record) == [], record.statements
        h.revert(record)
    assert h.dump() == start


def test_sequence_positions_set_back(h):
    h.sql(SCHEMA)
    start = h.dump()
    a = h.act("INSERT INTO child (pid) VALUES (1), (2)")
    b = h.act("SELECT nextval('child_id_seq'); INSERT INTO ident (v) VALUES ('z')")
    h.revert(b)
    h.revert(a)
    assert h.dump() == start
    with psycopg.connect(h.url) as conn:
        assert conn.execute("SELECT last_value, is_called FROM child_id_seq").fetchone() == (3, True)


# -- conflicts -------------------------------------------------------------------------------------


def test_conflict_on_changed_row_and_force(h):
    h.sql(SCHEMA)
    start = h.dump()
    record = h.act("UPDATE parent SET name = 'mine' WHERE id = 4")
    h.sql("UPDATE parent SET name = 'theirs' WHERE id = 4")
    found = h.conflicts(record)
    assert found and "parent" in found[0][0] and "theirs" in found[0][1]
    with pytest.raises(ActionFailed, match="changed since the action"):
        h.revert(record)
    h.revert(record, force=True)
    h.sql("DELETE FROM audit WHERE id > 4")  # the other client's update fired the audit trigger
    h.sql("SELECT setval('audit_id_seq', 4, true)")
    assert h.dump() == start


def test_conflict_on_row_inserted_at_removed_key(h):
    h.sql(SCHEMA)
    record = h.act("DELETE FROM bag WHERE a = 2; DELETE FROM ident")
    h.sql("INSERT INTO ident OVERRIDING SYSTEM VALUE VALUES (1, 'other')")
    assert [target for target, _ in h.conflicts(record)] == [f"{h.engine.name}.public.ident"]
    h.sql("INSERT INTO bag VALUES (9, 'new', NULL)")  # a row the action never touched: no conflict
    assert len(h.conflicts(record)) == 1


def test_conflict_on_dropped_column(h):
    h.sql(SCHEMA)
    record = h.act("UPDATE bag SET b = 'q' WHERE a = 1")
    h.sql("ALTER TABLE bag DROP COLUMN blob")
    found = h.conflicts(record)
    assert found and "columns changed" in found[0][1]


def test_conflict_after_ddl_action(h):
    h.sql(SCHEMA)
    start = h.dump()
    record = h.act("ALTER TABLE parent ADD COLUMN extra int")
    assert h.conflicts(record) == []
    h.sql("INSERT INTO bag VALUES (42, 'late', NULL)")
    found = h.conflicts(record)
    assert [target for target, _ in found] == [f"{h.engine.name}: table public.bag"]
    with pytest.raises(ActionFailed, match="changed since the action"):
        h.revert(record)
    h.revert(record, force=True)
    assert h.dump() == start


# -- failures, errors, refusals --------------------------------------------------------------------


def test_failure_mid_action_leaves_nothing(h):
    h.sql(SCHEMA)
    start = h.dump()
    sql = "INSERT INTO child (pid, note) VALUES (1, 'ok'); INSERT INTO parent VALUES (1, 'duplicate')"
    statements, analyses = h.prepare(sql)
    with pytest.raises(ActionFailed, match="duplicate key.*nothing was applied"):
        h.engine.dry_run(statements, None)
    before = h.engine.before(statements, analyses, h.put)
    with pytest.raises(ActionFailed, match="statement 2.*nothing of it was applied"):
        h.engine.stage(statements, None, analyses, before)
    assert h.dump() == start  # the serial sequence was set back too
    ddl = "ALTER TABLE bag ADD COLUMN c int; INSERT INTO nowhere VALUES (1)"
    statements, analyses = h.prepare(ddl)
    before = h.engine.before(statements, analyses, h.put)
    with pytest.raises(ActionFailed, match="nowhere"):
        h.engine.stage(statements, None, analyses, before)
    h.engine.revert(before, None, h.blobs.get, True)  # never committed: nothing to do
    assert h.dump() == start


def test_syntax_error_message(h):
    h.sql(SCHEMA)
    statements, _ = h.prepare("UPDATE parent SET name = 'x' WHERE")
    with pytest.raises(SqlSyntaxError) as info:
        h.engine.dry_run(statements, None)
    assert "syntax error" in str(info.value) and "character" in str(info.value)
    assert "nothing was applied" in str(info.value)


@pytest.mark.parametrize("sql", [
    "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "RELEASE SAVEPOINT s", "START TRANSACTION", "END", "ABORT",
    "PREPARE TRANSACTION 'x'", "SET session_replication_role = replica", "SET LOCAL search_path = x",
    "RESET ALL", "COPY parent FROM '/etc/passwd'", "COPY parent TO PROGRAM 'cat'", "VACUUM", "CLUSTER parent",
    "REINDEX TABLE parent", "CHECKPOINT", "SELECT pg_read_file('/etc/passwd')", "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')", "SELECT pg_catalog.pg_terminate_backend(1)", "SELECT dblink_exec('x', 'y')",
    "SELECT set_config('session_replication_role', 'replica', false)", "DROP FUNCTION goex.capture_v1",
    "SELECT * FROM goex.anything", "CREATE INDEX CONCURRENTLY i ON parent (name)", "DISCARD ALL",
    "SELECT pg_advisory_lock(1)", "ALTER ROLE postgres SET work_mem = '1MB'",
    "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC", "CREATE PUBLICATION p FOR ALL TABLES",
])
def test_refused(h, sql):
    with pytest.raises(SqlRefused) as info:
        h.prepare(sql)
    assert info.value.reason


@pytest.mark.parametrize("sql", ["NOTIFY chan, 'x'", "LISTEN chan", "SELECT 'pg_read_file(x)', 'BEGIN'",
                                 "SELECT pg_advisory_xact_lock(1)"])
def test_allowed(h, sql):
    h.prepare(sql)


def test_convert_params():
    assert convert_params("SELECT ? , '?', '%' , b FROM t WHERE a = ?", [1, 2]) == (
        "SELECT %s , '?', '%%' , b FROM t WHERE a = %s", (1, 2))
    assert convert_params("SELECT :a, ':b', x::int, c LIKE 'a%' FROM t WHERE d = :dd", {"a": 1, "dd": 2}) == (
        "SELECT %(a)s, ':b', x::int, c LIKE 'a%%' FROM t WHERE d = %(dd)s", {"a": 1, "dd": 2})
    assert convert_params("SELECT '%' -- ?", None) == ("SELECT '%' -- ?", None)
    with pytest.raises(ActionFailed):
        convert_params("SELECT ?", {"a": 1})
    with pytest.raises(ActionFailed):
        convert_params("SELECT :a", [1])


# -- recovery --------------------------------------------------------------------------------------


def test_committed_after_crash(h):
    h.sql(SCHEMA)
    start = h.dump()
    for sql in ("UPDATE parent SET name = 'crash' WHERE id = 2", "ALTER TABLE bag ADD COLUMN c int"):
        statements, analyses = h.prepare(sql)
        before = h.engine.before(statements, analyses, h.put)
        staged = h.engine.stage(statements, None, analyses, before)
        captured = staged.capture(h.put)
        outcome, why = h.engine.committed(before, captured, h.blobs.get)
        assert outcome == "review" and "still open" in why
        staged.abort()  # the process died before its commit: the server rolled it back
        assert h.engine.committed(before, captured, h.blobs.get) == ("reverted", "")
        assert h.dump() == start
        staged = h.engine.stage(statements, None, analyses, before)
        captured = staged.capture(h.put)
        staged.commit()
        assert h.engine.committed(before, captured, h.blobs.get) == ("applied", "")
        h.engine.revert(before, captured, h.blobs.get, False)
        assert h.dump() == start


# -- dump ------------------------------------------------------------------------------------------


def test_dump_hides_goex_and_sorts(h):
    h.sql(SCHEMA)
    h.act("INSERT INTO bag VALUES (0, 'a', NULL)")  # creates goex's schema and functions
    with psycopg.connect(h.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'goex'").fetchone() == (1,)
    text = h.dump()
    assert "goex" not in text
    bag = text.split("table public.bag\n", 1)[1].split("\ntable ", 1)[0]
    rows = [line for line in bag.splitlines() if line.startswith("  row ")]
    assert rows == sorted(rows) and rows.count("  row (1,x,)") == 2
    assert "ON UPDATE CASCADE ON DELETE CASCADE" in text and "last_value 3 is_called True" in text
    assert "CREATE TRIGGER parent_audit" in text and "view public.summary" in text
    assert dump(h.url.replace("postgresql://", "postgres://")) == text
    # the same state built in another order dumps the same
    h.sql("CREATE TABLE z2 (b int); CREATE TABLE z1 (a int); INSERT INTO z1 VALUES (2), (1)")
    once = h.dump()
    h.sql("DROP TABLE z1; DROP TABLE z2; CREATE TABLE z1 (a int); CREATE TABLE z2 (b int); "
          "INSERT INTO z1 VALUES (1), (2)")
    assert h.dump() == once


# -- property: any sequence of actions, undone newest first, gives the start back ------------------


NAMES = st.sampled_from(["'n1'", "'n2'", "NULL", "'it''s'"])
IDS = st.integers(1, 6)
SMALL = st.integers(0, 2)
BYTES = st.sampled_from(["NULL", "'\\x00'", "'\\xff00'", "''"])

STATEMENT = st.one_of(
    st.builds("INSERT INTO parent VALUES ({}, {})".format, IDS, NAMES),
    st.builds("INSERT INTO parent VALUES ({}, {}) ON CONFLICT (id) DO UPDATE SET name = excluded.name".format,
              IDS, NAMES),
    st.builds("INSERT INTO parent VALUES ({}, {}) ON CONFLICT DO NOTHING".format, IDS, NAMES),
    st.builds("INSERT INTO child (pid, note, data) VALUES ({}, {}, {})".format, IDS, NAMES, BYTES),
    st.builds("INSERT INTO bag (a, b, blob) VALUES ({}, {}, {})".format, SMALL, NAMES, BYTES),
    st.builds("INSERT INTO bag (a, b) SELECT a, b FROM bag WHERE a = {}".format, SMALL),
    st.builds("INSERT INTO parent SELECT id + 10, name FROM parent WHERE id = {}".format, IDS),
    st.builds("UPDATE parent SET id = id + 1 WHERE id = {}".format, IDS),
    st.builds("UPDATE parent SET name = {} WHERE id = {}".format, NAMES, IDS),
    st.builds("UPDATE bag SET b = {} WHERE a = {}".format, NAMES, SMALL),
    st.builds("UPDATE child SET data = {} WHERE pid = {}".format, BYTES, IDS),
    st.builds("DELETE FROM parent WHERE id = {}".format, IDS),
    st.builds("DELETE FROM bag WHERE a = {}".format, SMALL),
    st.just("DELETE FROM bag"),
    st.just("DELETE FROM child"),
    st.just("ALTER TABLE bag ADD COLUMN c int DEFAULT 7"),
    st.just("ALTER TABLE bag DROP COLUMN c"),
    st.just("CREATE INDEX bag_a ON bag (a)"),
    st.just("DROP INDEX bag_a"),
    st.just("TRUNCATE bag"),
    st.just("TRUNCATE parent CASCADE"),
)
ACTIONS = st.lists(st.lists(STATEMENT, min_size=1, max_size=2), min_size=1, max_size=8)

PROPERTY_SCHEMA = """
CREATE TABLE parent (id int PRIMARY KEY, name text);
CREATE TABLE child (id serial PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
                    note text, data bytea);
CREATE TABLE audit (id bigserial PRIMARY KEY, op text, rid int);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit(op, rid) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
  RETURN NULL;
END $$;
CREATE TRIGGER parent_audit AFTER INSERT OR UPDATE OR DELETE ON parent FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE VIEW summary AS SELECT p.id, p.name, count(c.id) AS children FROM parent p
  LEFT JOIN child c ON c.pid = p.id GROUP BY p.id, p.name;
CREATE TABLE bag (a int, b text, blob bytea);
INSERT INTO parent VALUES (1, 'one'), (2, NULL), (3, 'three');
INSERT INTO child (pid, note, data) VALUES (1, 'a', '\\x00ff'), (1, NULL, NULL), (2, 'b', '\\xdeadbeef');
INSERT INTO bag VALUES (1, 'x', NULL), (1, 'x', NULL), (2, NULL, '\\x01'), (NULL, NULL, NULL);
"""


@pytest.fixture
def prop(url):
    harness = Harness(url)
    harness.sql(PROPERTY_SCHEMA)
    yield harness
    harness.engine.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_property_any_actions_undone_newest_first(prop, actions):
    h = prop
    start = h.dump()
    done = []
    for statements in actions:
        sql = "; ".join(statements)
        current = h.dump()
        try:
            done.append(h.act(sql))
        except ActionFailed:
            assert h.dump() == current  # a failed action leaves nothing applied
    for record in reversed(done):
        assert h.conflicts(record) == []
        h.revert(record)
    assert h.dump() == start


def test_confirmation_shows_the_rows_a_statement_would_change(url: str, root):
    """The confirmation prompt's summary reads the rows an UPDATE/DELETE would change with the
    statement's own WHERE and parameters, and changes nothing."""
    import goex
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE item(id INT PRIMARY KEY, name TEXT, price NUMERIC(6, 2), tags TEXT[]); "
                     "INSERT INTO item SELECT n, 'item ' || n, n * 1.5, ARRAY['t' || n] FROM generate_series(1, 8) n")
    start = dump(url)
    asked: list = []
    with goex.Runtime(root, databases={"pg": url}, approver=lambda r: asked.append(r) or False) as rt:
        s = rt.session()
        r = s.execute({"type": "sql.execute", "db": "pg", "sql": "DELETE FROM item"})
        assert r.status == "denied" and r.decision.rules == ["sql.no-where"] and dump(url) == start
        summary = asked[-1].summary
        assert "sql.execute on pg (postgresql), 1 statement: 8 rows change in all" in summary
        assert "1. DELETE on item, NO WHERE (every row): DELETE FROM item" in summary
        assert "rows of item it would change (the first 5; more match):" in summary
        assert '{"id": 1, "name": "item 1", "price": "1.50", "tags": "[\'t1\']"}' in summary  # as queries show it
        assert '"id": 5,' in summary and '"id": 6,' not in summary
    pack = root.parent / "ask.yaml"
    pack.write_text("name: ask\nrules:\n  - {id: ask.sql, match: {type: [sql.execute]}, decision: confirm}\n")
    with goex.Runtime(root, policy=pack, databases={"pg": url}, approver=lambda r: asked.append(r) or True) as rt:
        s = rt.session()
        r = s.execute({"type": "sql.execute", "db": "pg", "sql": "UPDATE item SET name = :new WHERE id BETWEEN :lo AND 3 "
                       "AND name LIKE 'item%'", "params": {"new": "renamed", "lo": 2}})
        assert r.ok and r.output == {"rows_changed": 2}, r.error
        summary = asked[-1].summary
        assert "rows of item it would change (all 2):" in summary and '"name": "item 2"' in summary
        assert '"name": "item 3"' in summary and "renamed" not in summary.split("\n", 2)[2]
        s.rollback()
    assert dump(url) == start
