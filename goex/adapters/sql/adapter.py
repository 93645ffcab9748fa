"""The SQL adapter: statements analysed with sqlglot, counted by a dry run (or by the run itself,
kept open until the policy has decided, where the engine can), run as one transaction, and
undone exactly, on SQLite, PostgreSQL and MySQL/MariaDB.

The adapter is engine-neutral; each engine (`sqlite.py`, `postgres.py`, `mysql.py`) decides how
it captures undo data (see `common.py` for the protocol). The runtime drives a write in stages:
the entry is journaled with the engine's `before` data; the statements run in an open
transaction; what the engine captured inside it is journaled durably; only then is the
transaction committed. So every committed change has its undo data on disk, and a crash at any
point leaves either nothing applied or an entry whose outcome recovery can read off the database.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from ...errors import ActionFailed, ConfigError, GoexError
from ..base import Adapter, Applied, Coalesced, Context, Damage, GetBlob, Outcome, Prepared, PutBlob
from ..fs.workspace import Workspace
from .actions import SQL_ACTIONS, SqlExecute, SqlPreview

if TYPE_CHECKING:
    from ...journal.read import EntryDetail

from .common import IRREVERSIBLE, Engine, SqlRefused, SqlSyntaxError, Staged, analyse, sample_query

if TYPE_CHECKING:
    from .mysql import MysqlEngine
    from .postgres import PostgresEngine
    from .sqlite import SqliteEngine

#: rows of an UPDATE or DELETE shown when asking for confirmation
SAMPLE_ROWS = 5
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")  # a SQLite database's own files: SQLite replays them on open
# the effect of statements that only read
_READS_ONLY: dict[str, Any] = {"rows": 0, "all_rows": [], "creates_trigger": False}

__all__ = ["SqlAdapter", "SqlRefused", "SqlIrreversible", "Database", "parse_databases", "engine_for"]

_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql",
            "mariadb": "mysql", "mysql+pymysql": "mysql"}


class SqlIrreversible(SqlRefused):
    """A statement no engine can take back (GRANT, DROP DATABASE, ...): refused."""

    rule = "sql.irreversible"


@dataclass(frozen=True)
class Database:
    name: str
    url: str
    kind: str  # sqlite | postgresql | mysql
    path: Path | None = None  # SQLite: the file
    inside: str | None = None  # SQLite: its path relative to the workspace root, when it is inside it
    root: Path | None = None  # SQLite: the workspace root it was named against

    @functools.cached_property
    def shown(self) -> str:
        """The URL without its passwords (the account's, and a `goex_password` or `goex_role_password` option's)."""
        parts = urlsplit(self.url)
        query = re.sub(r"(^|&)(goex_(?:role_)?password=)[^&]*", r"\1\2***", parts.query)
        if not parts.password and query == parts.query:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@") if parts.password else parts.netloc
        return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_databases(databases: dict[str, str] | None, root: Path) -> dict[str, Database]:
    """`{"main": "sqlite:///app.db", "pg": "postgresql://...", "my": "mysql://..."}`: relative
    SQLite paths are inside the root."""
    out = {}
    for name, url in (databases or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(f"database name {name!r}: use letters, digits, '_', '.', '-'")
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        kind = _SCHEMES.get(scheme)
        if kind is None:
            raise ConfigError(f"database {name!r}: {url!r} is not a database URL goex knows; give sqlite:///PATH, "
                            "postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB")
        if kind == "sqlite":
            if not url.startswith("sqlite:///"):
                raise ConfigError(f"database {name!r}: write SQLite URLs as sqlite:///relative/path or sqlite:////abs/path")
            raw = url[len("sqlite:///"):]
            path = Path(raw) if raw.startswith("/") else root / raw
            inside = _inside(path, root)
            if inside is None and not raw.startswith("/"):
                raise ConfigError(f"database {name!r}: {url!r} leaves the root; relative SQLite paths are inside "
                                f"the root. For a database outside it, give its absolute path: sqlite:///"
                                f"{os.path.abspath(path)}")
            if inside is None and not path.exists():
                raise ConfigError(f"database {name!r}: {path} does not exist. goex creates a SQLite database only "
                                "inside the root; create it first or check the path")
            out[name] = Database(name, url, kind, path, inside, root)
        else:
            out[name] = Database(name, url, kind)
    return out


def _inside(path: Path, root: Path) -> str | None:
    """A SQLite file's path inside the root, or None when it is outside. Read from the spelling
    (the file itself may be a link an agent planted: where it leads must not decide); only the
    folders of a path not spelled under the root are resolved."""
    real_root = os.path.realpath(root)
    for base in {os.path.abspath(root), real_root}:
        rel = os.path.relpath(os.path.normpath(os.path.abspath(path)), base)
        if rel != ".." and not rel.startswith("../"):
            return rel
    rel = os.path.relpath(os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), path.name), real_root)
    return None if rel == ".." or rel.startswith("../") else rel


SHOWN_CHANGES = 50  # row changes an entry's description lists


def _shown(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, (bytes, bytearray, memoryview)) else str(value)


def operation_name(sql: str, kind: str) -> str | None:
    """The statement's operation (SELECT, UPDATE, ...); `BATCH <op>` or `BATCH` for several."""
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        ops = [e.key.upper() for e in sqlglot.parse(sql, read=_DIALECTS.get(kind)) if e is not None]
    except SqlglotError:
        first = re.match(r"\s*([A-Za-z]+)", sql)
        return first.group(1).upper() if first else None
    if len(ops) <= 1:
        return ops[0] if ops else None
    return f"BATCH {ops[0]}" if len(set(ops)) == 1 else "BATCH"


_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}


def engine_for(db: Database, workspace: Workspace | None = None) -> Engine:
    """The engine of `db`. A SQLite file inside the workspace is opened through `workspace`'s
    confined resolver (one made for its root when none is given)."""
    if db.kind == "sqlite":
        from .sqlite import SqliteEngine
        assert db.path is not None
        if workspace is None and db.inside is not None and db.root is not None:
            workspace = Workspace(db.root, hidden=db.root / ".goex")
        return SqliteEngine(db.path, db.name, workspace, db.inside)
    if db.kind == "postgresql":
        from .postgres import PostgresEngine
        return PostgresEngine(db.url)
    from .mysql import MysqlEngine
    return MysqlEngine(db.url)


class SqlAdapter(Adapter):
    prefix = "sql"
    actions = SQL_ACTIONS
    preview = SqlPreview
    staged = True
    span_kind = "client"

    @classmethod
    def create(cls, context: Context) -> "SqlAdapter":
        return cls(parse_databases(context.settings.get("databases"), context.root), context.read_blob,
                   context.workspace)

    def __init__(self, databases: dict[str, Database], get_blob: GetBlob | None = None,
                 workspace: Workspace | None = None):
        self.databases = databases
        self.get_blob = get_blob  # the journal's blobs: undo data lives there
        self.workspace = workspace  # SQLite files inside the root are opened through it
        self._engines: dict[str, Engine] = {}

    def span_attributes(self, action: SqlExecute, output: Any) -> dict[str, Any]:
        """`db.*` conventions; the statement text as the agent wrote it, parameters never inlined."""
        db = self.databases.get(action.db)
        if db is None:
            return {}
        system = "mariadb" if db.kind == "mysql" and db.url.lower().startswith("mariadb") else db.kind
        namespace = db.inside or db.name if db.kind == "sqlite" else urlsplit(db.url).path.lstrip("/")
        attrs: dict[str, Any] = {"db.system.name": system, "db.namespace": namespace, "db.query.text": action.sql}
        operation = operation_name(action.sql, db.kind)
        if operation:
            attrs["db.operation.name"] = operation
        if isinstance(output, dict) and isinstance(output.get("rows"), list):
            attrs["db.response.returned_rows"] = len(output["rows"])
        elif isinstance(output, dict) and isinstance(output.get("rows_changed"), int):
            attrs["goex.sql.rows_changed"] = output["rows_changed"]
        return attrs

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            db = self.databases.get(name)
            if db is None:
                known = ", ".join(sorted(self.databases)) or "none"
                raise ActionFailed(f"sql.execute: no database named {name!r} (known: {known}); "
                                   "name it on the runtime: Runtime(databases={...}) or --db NAME=URL")
            self._engines[name] = engine_for(db, self.workspace)
        return self._engines[name]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()

    # -- protocol ------------------------------------------------------------------------------

    def prepare(self, action: SqlExecute) -> Prepared:
        engine = self.engine(action.db)
        engine.begin()
        db = self.databases[action.db]
        statements = engine.split(action.sql)
        if action.params is not None and len(statements) > 1:
            raise ActionFailed(f"sql.execute: params go with a single statement; this has {len(statements)}")
        analysed = [analyse(s, engine.dialect) for s in statements]
        for statement, analysis in zip(statements, analysed, strict=False):
            if analysis["kind"] in IRREVERSIBLE:
                raise SqlIrreversible(f"{analysis['kind'].replace('_', ' ').upper()} cannot be undone; goex does not "
                                      "run it. Run it outside goex, by hand, if it must happen")
            engine.check(statement, analysis)
        kinds = [a["kind"] for a in analysed]
        writes = any(k != "select" for k in kinds)
        output = None
        held = None
        try:
            if not writes:  # run now, read-only: a query that writes after all (nextval, a function
                output = engine.read(statements, action.params, analysed)  # changing rows) is a write
                writes = output is None
            effect, held = engine.rehearse(statements, action.params) if writes else (_READS_ONLY, None)
        except ActionFailed as exc:
            unread = [a["parse_error"] for a in analysed if not a["parsed"]]
            if unread:  # the engine's message, and where sqlglot lost track of the text
                raise SqlSyntaxError(f"{exc} (the SQL does not parse: {unread[0]})") from None
            raise
        try:
            return self._prepared(action, db, statements, analysed, kinds, writes, effect, output, held)
        except BaseException:
            if held is not None:  # nothing may stay open past a prepare that failed
                held.abort()
            raise

    def _prepared(self, action: SqlExecute, db: Database, statements: list[str], analysed: list[dict[str, Any]],
                  kinds: list[str], writes: bool, effect: dict[str, Any], output: Any, held: Staged | None) -> Prepared:
        preview = {
            "db": db.name, "engine": db.kind, "statements": [{k: v for k, v in a.items() if k != "parse_error"}
                                                              for a in analysed], "kinds": kinds,
            "tables": sorted({t for a in analysed for t in a["tables"]}),
            "where_missing": any(a["kind"] in ("update", "delete") and not a["where"] for a in analysed),
            "drops": any(a["kind"] in ("drop", "truncate") for a in analysed),
            "drop_column": any(a["drop_column"] for a in analysed),
            "rows": effect["rows"], "writes": writes,
            # from the dry run's effect, not the syntax: `WHERE 1`, upserts and triggers count too
            "all_rows": sorted(set(effect["all_rows"])), "creates_trigger": bool(effect["creates_trigger"]),
        }
        # the rehearsal's open transaction, when the engine kept it: the action's run if it is allowed
        state = {"db": db, "statements": statements, "analysed": analysed, "output": output, "held": held}
        prepared = Prepared(action, action.targets(), preview, writes, state)
        prepared.covers = [db.inside] if db.inside else []  # protected paths and path rules see the file
        return prepared

    def summarize(self, prepared: Prepared) -> str:
        """What the statements would do, for a person deciding whether to allow them: per
        statement its kind, tables and WHERE, and for a single-table UPDATE or DELETE the first
        rows it would change, read with its own WHERE in a transaction that is rolled back."""
        p = prepared.preview
        action: SqlExecute = prepared.action
        statements, analysed = prepared.state["statements"], prepared.state["analysed"]
        count = f"{len(statements)} statements" if len(statements) > 1 else "1 statement"
        lines = [f"sql.execute on {p['db']} ({p['engine']}), {count}: "
                 + (f"{p['rows']:,} rows change in all (exact, cascades and triggers included)" if p["writes"]
                    else "reads only")]
        earlier_write = False
        for n, (statement, a) in enumerate(zip(statements, analysed, strict=False), 1):
            where = ""
            if a["kind"] in ("update", "delete"):
                where = ", with WHERE" if a["where"] else ", NO WHERE (every row)"
            text = " ".join(statement.split())
            lines.append(f"{n}. {a['kind'].upper()} on {', '.join(a['tables']) or '-'}{where}: "
                         f"{text[:300]}{'...' if len(text) > 300 else ''}")
            if a["kind"] in ("update", "delete"):
                lines += ["   " + line for line in self._sample(prepared.state["db"], statement, action.params,
                                                               earlier_write, ", ".join(a["tables"]))]
            earlier_write = earlier_write or a["kind"] != "select"
        return "\n".join(lines)

    def describe(self, entry: "EntryDetail") -> str:
        """The statements and parameters, then the rows before and after each change (SQLite,
        from the journaled changeset); other engines say how many rows changed."""
        action, preview = entry.action(), entry.preview
        lines = [entry.error] if entry.error else []
        lines.append(f"sql.execute on {preview.get('db', action.get('db'))} ({preview.get('engine', '?')}): "
                     + (f"{preview.get('rows', 0):,} rows change" if preview.get("writes") else "reads only"))
        lines += ["  " + line for line in str(action.get("sql", "")).strip().splitlines()]
        if action.get("params") is not None:
            lines.append("params: " + json.dumps(action["params"], ensure_ascii=False, default=str)[:500])
        captured = next((r.get("plan") or {} for r in entry.records if r.get("kind") == "captured"), {})
        rows, total = self._changed_rows(entry.plan.get("engine", ""), captured)
        if rows:
            more = f" (the first {len(rows)} of {total})" if total > len(rows) else ""
            lines.append(f"row changes{more}:")
        for r in rows:
            lines.append(f"  {r['op']} {r['table']}".replace("   ", "  "))
            for side in ("before", "after"):
                if r[side] is not None:
                    shown = r[side] if isinstance(r[side], str) else json.dumps(r[side], ensure_ascii=False,
                                                                                default=_shown)
                    lines.append(f"    {side}: {shown[:300]}")
        if captured and not rows:
            lines.append("no row images: the whole database or schema was kept for undo (DDL)"
                         if captured.get("mode") in ("ddl", "dump", "image") or entry.plan.get("before", {}).get(
                             "mode") == "image" else "no row changed")
        return "\n".join(lines)

    def _changed_rows(self, engine: str, captured: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """The row changes the engine's captured undo data holds, as the engine reads them."""
        if not captured or self.get_blob is None:
            return [], 0
        from . import mysql, postgres, sqlite

        reader = {"sqlite": sqlite.changed_rows, "postgresql": postgres.changed_rows,
                  "mysql": mysql.changed_rows}.get(engine)
        return reader(captured, self.get_blob, SHOWN_CHANGES) if reader else ([], 0)

    def _sample(self, db: Database, statement: str, params: Any, earlier_write: bool, table: str) -> list[str]:
        """The first rows an UPDATE or DELETE would change, or why they are not shown. Never
        changes anything: a plain SELECT, run in a transaction that is rolled back; never raises."""
        if earlier_write:
            return ["rows not shown: earlier statements of this action change the data first"]
        try:
            engine = self.engine(db.name)
            query, values = sample_query(statement, params, engine.dialect, SAMPLE_ROWS + 1)
        except (ValueError, GoexError) as exc:
            return [f"rows not shown: {exc}"]
        try:
            staged = engine.stage([query], values, [analyse(query, engine.dialect)], {})
            staged.abort()
        except Exception as exc:  # noqa: BLE001 - a sample is a courtesy; the action goes on without it
            return [f"rows not shown: reading them failed ({exc})"]
        columns, rows = staged.output.get("columns") or [], staged.output.get("rows") or []
        if not rows:
            return [f"no row of {table} matches now"]
        head = (f"rows of {table} it would change (the first {SAMPLE_ROWS}; more match):" if len(rows) > SAMPLE_ROWS
                else f"rows of {table} it would change (all {len(rows)}):")
        out = [head]
        for row in rows[:SAMPLE_ROWS]:
            shown = json.dumps(dict(zip(columns, row, strict=False)), ensure_ascii=False, default=str)
            out.append(f"  {shown[:200]}{'...' if len(shown) > 200 else ''}")
        return out

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        db: Database = prepared.state["db"]
        before = self.engine(db.name).before(prepared.state["statements"], prepared.state["analysed"], put_blob)
        prepared.state["before"] = before
        return {"db": db.name, "engine": db.kind, "url": db.shown, "ops": [{"op": "sql"}], "before": before,
                "staged": True}

    def stage(self, prepared: Prepared) -> Staged:
        held = prepared.state.pop("held", None)
        db: Database = prepared.state["db"]
        action: SqlExecute = prepared.action
        engine = self.engine(db.name)
        if db.kind != "sqlite":
            if held is not None:  # the statements ran in prepare, in the transaction kept open since
                return held
            return engine.stage(prepared.state["statements"], action.params, prepared.state["analysed"],
                                prepared.state.get("before", {}))
        # SQLite's stage adopts the held run, or checks a new one against the preview judged
        expect = {k: prepared.preview[k] for k in ("rows", "all_rows", "creates_trigger")}
        return cast("SqliteEngine", engine).stage(prepared.state["statements"], action.params,
                                                  prepared.state["analysed"], prepared.state.get("before", {}),
                                                  held, expect)

    def isolated_stage(self, prepared: Prepared) -> bool:
        # SQLite runs the statements in one transaction, DDL included, rolled back if the process
        # dies; PostgreSQL's sequences and MySQL's implicit DDL commits act before the commit
        return isinstance(prepared.state, dict) and prepared.state["db"].kind == "sqlite"

    def holds_run(self, prepared: Prepared) -> bool:
        return isinstance(prepared.state, dict) and prepared.state.get("held") is not None

    def release(self, prepared: Prepared) -> None:
        held = prepared.state.pop("held", None) if isinstance(prepared.state, dict) else None
        if held is not None:
            held.abort()

    def apply(self, prepared: Prepared) -> Applied:
        """Reads: their output, from the read-only run in `prepare`."""
        return Applied(prepared.state["output"], {})

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        assert self.get_blob is not None, "SqlAdapter needs the journal's get_blob"
        return self._engine_of(plan).conflicts(plan["before"], plan["captured"], self.get_blob)

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> None:
        self._engine_of(plan).revert(plan["before"], plan.get("captured"), get_blob, force)

    def coalesce(self, plan: dict[str, Any], after: dict[str, Any]) -> Coalesced | None:
        """Row changes of one database are undone together: SQLite's changesets composed into one,
        PostgreSQL's and MariaDB's row images set back in one transaction. Schema changes (kept
        for undo as a dump or an image) and MariaDB sequences are undone entry by entry."""
        db = self.databases.get(plan.get("db", ""))
        captured = plan.get("captured")
        if db is None or not isinstance(captured, dict):
            return None
        mode = (plan.get("before") or {}).get("mode")
        if db.kind == "sqlite" and mode == "changeset" and "changeset" in captured:
            return Coalesced(self, f"sqlite:{db.name}", plan, after)
        if db.kind in ("postgresql", "mysql"):
            from .mysql import MysqlEngine
            from .postgres import PostgresEngine

            engine = self._engine_of(plan)
            if isinstance(engine, (PostgresEngine, MysqlEngine)) and engine.coalescable(plan["before"], captured):
                return Coalesced(self, f"{db.kind}:{db.name}", plan, after)
        return None

    def range_conflicts(self, items: list[Coalesced]) -> list[list[tuple[str, str]]] | None:
        assert self.get_blob is not None, "SqlAdapter needs the journal's get_blob"
        return self._ranged(items[0].plan).range_conflicts([c.plan["captured"] for c in items], self.get_blob)

    def revert_range(self, items: list[Coalesced], get_blob: GetBlob) -> None:
        self._ranged(items[0].plan).revert_range([c.plan["captured"] for c in items], get_blob)

    def end_range(self, items: list[Coalesced]) -> None:
        from .sqlite import SqliteEngine

        engine = self._ranged(items[0].plan)
        if isinstance(engine, SqliteEngine):  # the one engine that holds a range's undo open between the two
            engine.end_range()

    def _ranged(self, plan: dict[str, Any]) -> "SqliteEngine | PostgresEngine | MysqlEngine":
        from .mysql import MysqlEngine
        from .postgres import PostgresEngine
        from .sqlite import SqliteEngine

        engine = self._engine_of(plan)
        assert isinstance(engine, (SqliteEngine, PostgresEngine, MysqlEngine)), "an engine that does not coalesce"
        return engine

    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        """An action interrupted by a crash: without a capture record it never committed; with
        one, the database says whether the commit happened."""
        engine = self._engine_of(plan)
        captured = plan.get("captured")
        if captured is None:
            engine.revert(plan["before"], None, get_blob, True)
            return "reverted", {}, ""
        outcome, why = engine.committed(plan["before"], captured, get_blob)
        return outcome, {}, why

    def settles(self, plan: dict[str, Any]) -> bool:
        """Captured: `recover` asks the database whether the commit happened, and keeps it if so."""
        return plan.get("captured") is not None

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        rows = int(preview.get("rows") or 0)
        return {"rows_changed": rows} if rows else {}

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        if set(preview.get("kinds") or ()) & {"delete", "drop", "truncate"}:
            return Damage(rows=int(preview.get("rows") or 0) or (1 if preview.get("drops") else 0))
        return Damage()

    def owned_paths(self) -> dict[str, str]:
        """A SQLite database's own files (SQLite replays its journal and WAL on the next open)."""
        return {f"{db.inside}{suffix}".lower(): f"belongs to the SQLite database {db.name!r} (SQLite would replay it "
                                                  "on the next open); only sql.execute may change it"
                for db in self.databases.values() if db.kind == "sqlite" and db.inside
                for suffix in SQLITE_SIDECARS}

    def _engine_of(self, plan: dict[str, Any]) -> Engine:
        try:
            return self.engine(plan["db"])
        except ActionFailed:
            raise ActionFailed(f"the entry acted on database {plan['db']!r} ({plan.get('url')}); name it again "
                               f"to undo it: --db {plan['db']}=URL") from None


__all__ += ["SqlSyntaxError"]
