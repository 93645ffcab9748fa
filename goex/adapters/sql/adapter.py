"""The SQL adapter: statements analysed with sqlglot, counted by a dry run, applied as one unit,
and undone exactly.

SQLite is the engine built so far. Its undo takes the simplest exact route: the whole database
image (schema, rows, rowids, sequences, triggers, views, indexes) is the before-image, stored in
content-addressed 1 MiB chunks (unchanged pages deduplicate across entries), and undo copies it
back with SQLite's backup API. The after-state is a logical checksum per schema object, so undo
names every table or view changed since, by anyone, and refuses unless forced.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from ...errors import ActionFailed, GoexError
from ...journal.store import CHUNK
from ..base import Applied, GetBlob, Prepared, PutBlob
from .actions import SqlExecute

MAX_ROWS = 1000
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its "falling back to Command" notes are not for users

# goex owns the transaction and the file: these never run inside an action
_FORBIDDEN = {"attach", "detach", "vacuum", "begin", "commit", "end", "rollback", "savepoint", "release"}
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|$)", re.DOTALL)
# introspection pragmas take an argument (a table); settings read without one are fine too
_INTROSPECTION = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
                  "integrity_check", "quick_check"}
_SETTINGS_READ = {"user_version", "application_id", "foreign_keys", "schema_version", "page_count", "page_size",
                  "compile_options", "database_list", "collation_list", "function_list", "encoding", "journal_mode"}


class SqlRefused(GoexError):
    """SQL that would reach beyond its own transaction and database (ATTACH, VACUUM INTO,
    COMMIT, PRAGMA writes, extensions): refused before anything runs."""

    rule = "sql.confinement"

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"SQL refused: {reason}")


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """SQLite's authorizer: the hard guarantee behind the statement check."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if not (name in _INTROSPECTION or (name in _SETTINGS_READ and arg2 is None)):
            return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@dataclass(frozen=True)
class Database:
    name: str
    url: str
    path: Path
    inside: str | None = None  # its path relative to the workspace root, when it is inside it


def parse_databases(databases: dict[str, str] | None, root: Path) -> dict[str, Database]:
    """`{"main": "sqlite:///app.db"}`: relative SQLite paths are inside the root."""
    out = {}
    for name, url in (databases or {}).items():
        if not url.startswith("sqlite:///"):
            raise GoexError(f"database {name!r}: {url!r} is not supported yet; give sqlite:///PATH "
                            "(PostgreSQL and MySQL are not built yet)")
        raw = url[len("sqlite:///"):]
        path = Path(raw) if raw.startswith("/") else root / raw
        inside = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
        out[name] = Database(name, url, path, None if inside == ".." or inside.startswith("../") else inside)
    return out


class SqlAdapter:
    prefix = "sql"

    def __init__(self, databases: dict[str, Database]):
        self.databases = databases

    # -- protocol ------------------------------------------------------------------------------

    def prepare(self, action: SqlExecute) -> Prepared:
        db = self.databases.get(action.db)
        if db is None:
            known = ", ".join(sorted(self.databases)) or "none"
            raise ActionFailed(f"sql.execute: no database named {action.db!r} (known: {known}); "
                               "name it on the runtime: Runtime(databases={...}) or --db NAME=URL")
        statements = _split(action.sql)
        if action.params is not None and len(statements) > 1:
            raise ActionFailed("sql.execute: params go with a single statement; this has "
                               f"{len(statements)}")
        analysed = [_analyse(s) for s in statements]
        kinds = [a["kind"] for a in analysed]
        rows = self._dry_run(db, statements, action.params) if any(k != "select" for k in kinds) else 0
        preview = {
            "db": db.name, "statements": analysed, "kinds": kinds,
            "tables": sorted({t for a in analysed for t in a["tables"]}),
            "where_missing": any(a["kind"] in ("update", "delete") and not a["where"] for a in analysed),
            "drops": any(a["kind"] in ("drop", "truncate") for a in analysed),
            "drop_column": any(a["drop_column"] for a in analysed),
            "rows": rows, "writes": any(k != "select" for k in kinds),
        }
        state = {"db": db, "statements": statements}
        prepared = Prepared(action, action.targets(), preview, preview["writes"], state)
        prepared.covers = [db.inside] if db.inside else []  # protected paths and path rules see the file
        return prepared

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        db: Database = prepared.state["db"]
        if not db.path.exists():
            return {"db": db.name, "path": str(db.path), "ops": [{"op": "restore_db", "absent": True}]}
        image = _image(db.path)
        chunks = [put_blob(image[i:i + CHUNK]) for i in range(0, len(image), CHUNK)]
        return {"db": db.name, "path": str(db.path), "ops": [
            {"op": "restore_db", "absent": False, "size": len(image), "sha": hashlib.sha256(image).hexdigest(),
             "chunks": chunks}]}

    def apply(self, prepared: Prepared) -> Applied:
        db: Database = prepared.state["db"]
        action: SqlExecute = prepared.action  # type: ignore[assignment]
        conn = _connect(db.path)
        try:
            conn.execute("BEGIN IMMEDIATE" if prepared.effect else "BEGIN")
            conn.set_authorizer(_authorize)
            output: dict[str, Any] = {}
            before = conn.total_changes
            for sql in prepared.state["statements"]:
                cur = conn.execute(sql, action.params if action.params is not None else ())
                if cur.description is not None:
                    output = _rows(cur)
            conn.set_authorizer(None)  # goex's own COMMIT
            conn.execute("COMMIT")
            if not output:
                output = {"rows_changed": conn.total_changes - before}
        except sqlite3.Error as exc:
            conn.set_authorizer(None)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise ActionFailed(f"sql.execute on {db.name}: {exc}; nothing of it was applied") from None
        finally:
            conn.close()
        after = {"checksums": _checksums(db.path)} if prepared.effect else {}
        return Applied(output, after)

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        path = Path(plan["path"])
        now = _checksums(path) if path.exists() else {}
        then = after.get("checksums", {})
        changed = sorted(name for name in set(now) | set(then) if now.get(name) != then.get(name))
        return [(f"{plan['db']}.{name}", "changed since the action" if name in now and name in then else
                 "created since the action" if name in now else "dropped since the action") for name in changed]

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> None:
        path = Path(plan["path"])
        for op in plan.get("ops", []):
            if op["absent"]:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                continue
            image = b"".join(get_blob(c) for c in op["chunks"])
            source = sqlite3.connect(":memory:")
            try:
                source.deserialize(image)
                target = _connect(path)
                try:
                    source.backup(target)
                finally:
                    target.close()
            finally:
                source.close()

    # -- helpers -------------------------------------------------------------------------------

    def _dry_run(self, db: Database, statements: list[str], params: Any) -> int:
        """Rows the statements would change, cascades, triggers, dropped and created tables included,
        by running them in a transaction that is rolled back (transaction control is refused, so
        nothing can end it early)."""
        if not db.path.exists():
            return 0
        conn = _connect(db.path)
        try:
            conn.execute("BEGIN")
            counts = _row_counts(conn)
            before = conn.total_changes
            conn.set_authorizer(_authorize)
            for sql in statements:
                conn.execute(sql, params if params is not None else ())
            conn.set_authorizer(None)
            changed = conn.total_changes - before
            after = _row_counts(conn)
            moved = sum(abs(after.get(t, 0) - counts.get(t, 0)) for t in set(counts) | set(after)
                        if t not in counts or t not in after)  # tables dropped or created whole
            return changed + moved
        except sqlite3.Error as exc:
            raise ActionFailed(f"sql.execute on {db.name}: {exc}; nothing was applied") from None
        finally:
            conn.set_authorizer(None)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _split(sql: str) -> list[str]:
    """The statements of `sql`, each as SQLite will run it (split with sqlite3.complete_statement)."""
    out, current = [], ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                out.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        out.append(current.strip().rstrip(";"))
    if not out:
        raise ActionFailed("sql.execute: no statement in 'sql'")
    for statement in out:
        words = _COMMENTS.sub(" ", statement).lower().split()
        first = words[0].strip("(;") if words else ""
        if first in _FORBIDDEN:
            raise SqlRefused(f"{first.upper()} is not allowed: goex runs each action as one transaction on "
                             "its own database (VACUUM and ATTACH reach other files; COMMIT and friends would "
                             "end the transaction undo relies on)")
        if first == "pragma" and "=" in statement:
            raise SqlRefused("PRAGMA assignments are not allowed: they change the database outside undo")
        if "load_extension" in " ".join(words):
            raise SqlRefused("load_extension is not allowed")
    return out


def _analyse(statement: str) -> dict[str, Any]:
    flat = " ".join(statement.lower().split())
    try:
        tree = sqlglot.parse_one(statement, read="sqlite")
    except sqlglot.errors.ParseError:
        # The engine is the authority on its own syntax: its dry run reports the error, or runs
        # what sqlglot does not know. The analysis falls back to the words.
        kind = flat.split(" ", 1)[0]
        return {"kind": kind, "tables": [], "where": " where " in f" {flat} ", "drop_column": "drop column" in flat}
    kind = type(tree).__name__.lower()
    if kind == "command":
        kind = statement.split(None, 1)[0].lower()
    drop_column = isinstance(tree, exp.Alter) and any(isinstance(a, exp.Drop) for a in tree.args.get("actions") or [])
    if kind == "alter" and "drop column" in " ".join(statement.lower().split()):
        drop_column = True
    tables = sorted({t.name for t in tree.find_all(exp.Table) if t.name})
    return {"kind": kind, "tables": tables, "where": tree.args.get("where") is not None, "drop_column": drop_column}


def _image(path: Path) -> bytes:
    source = sqlite3.connect(path)
    memory = sqlite3.connect(":memory:")
    try:
        source.backup(memory)
        image = bytearray(memory.serialize())
        if len(image) >= 20:
            image[18] = image[19] = 1  # a WAL database's image must open in memory; backup keeps WAL on restore
        return bytes(image)
    finally:
        source.close()
        memory.close()


def _checksums(path: Path) -> dict[str, str]:
    """sha256 per schema object: its SQL, and for tables every row in rowid order."""
    conn = sqlite3.connect(path)
    try:
        out = {"pragma:user_version": str(conn.execute("PRAGMA user_version").fetchone()[0]),
               "pragma:application_id": str(conn.execute("PRAGMA application_id").fetchone()[0])}
        for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name"):
            h = hashlib.sha256((sql or "").encode())
            if kind == "table":
                try:
                    rows = conn.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid')
                except sqlite3.OperationalError:  # WITHOUT ROWID
                    rows = conn.execute(f'SELECT * FROM "{name}" ORDER BY 1')
                for row in rows:
                    h.update(repr(row).encode())
            out[f"{kind}:{name}"] = h.hexdigest()
        return out
    finally:
        conn.close()


def _rows(cur: sqlite3.Cursor) -> dict[str, Any]:
    columns = [d[0] for d in cur.description]
    rows = []
    truncated = False
    for row in cur:
        if len(rows) == MAX_ROWS:
            truncated = True
            break
        rows.append([{"$base64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for v in row])
    out: dict[str, Any] = {"columns": columns, "rows": rows}
    if truncated:
        out["truncated"] = True
        out["note"] = f"[truncated: only the first {MAX_ROWS} rows]"
    return out
