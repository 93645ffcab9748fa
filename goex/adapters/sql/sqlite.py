"""SQLite engine, through APSW (it exposes SQLite's session extension).

Row changes are captured by a session on the action's own connection: every row inserted,
updated or deleted, including by triggers, foreign-key actions and REPLACE, lands in a
changeset. Undo applies the inverted changeset with triggers and foreign-key actions off, so
nothing fires twice; a row someone else changed since shows up as a conflict. `sqlite_sequence`
(AUTOINCREMENT positions) is kept beside it, since sessions do not track it.

Statements that change the schema (DDL, or SQL sqlglot cannot read) take the simplest exact
route instead: the whole database image, stored before the action in content-addressed 1 MiB
chunks (unchanged pages deduplicate across entries), copied back with SQLite's backup API.

goex opens database files with APSW's own SQLite. Inside one process, do not keep the same file
open through Python's `sqlite3` module while goex acts on it: two SQLite libraries in one process
do not see each other's POSIX locks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import apsw

from ...errors import ActionFailed
from ...journal.store import CHUNK
from .common import GetBlob, PutBlob, SqlRefused, Staged, format_rows

# goex owns the transaction and the file: these never run inside an action
_FORBIDDEN = {"attach", "detach", "vacuum", "begin", "commit", "end", "rollback", "savepoint", "release"}
# introspection pragmas take an argument (a table); settings read without one are fine too
_INTROSPECTION = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                  "foreign_key_list", "integrity_check", "quick_check", "foreign_key_check"}
_SETTINGS_READ = {"user_version", "application_id", "foreign_keys", "schema_version", "page_count", "page_size",
                  "compile_options", "database_list", "collation_list", "function_list", "encoding", "journal_mode"}


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """SQLite's authorizer: the hard guarantee behind the statement check."""
    if action in (apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH, apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT):
        return apsw.SQLITE_DENY
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if not (name in _INTROSPECTION or (name in _SETTINGS_READ and arg2 is None)):
            return apsw.SQLITE_DENY
    if action == apsw.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def _connect(path: Path) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(30_000)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _error(db: str, exc: Exception, applied: str = "nothing of it was applied") -> ActionFailed:
    text = str(exc)
    for prefix in ("SQLError: ", "ConstraintError: ", "AuthError: "):
        text = text.replace(prefix, "")
    if isinstance(exc, apsw.AuthError):
        text += " (goex refuses ATTACH, transaction control, PRAGMA settings and extensions)"
    return ActionFailed(f"sql.execute on {db}: {text}; {applied}")


class SqliteEngine:
    kind = "sqlite"
    dialect = "sqlite"

    def __init__(self, path: Path, name: str = "db"):
        self.path = path
        self.name = name
        self._undo: tuple[apsw.Connection, tuple[int, int]] | None = None
        self._work: tuple[apsw.Connection, tuple[int, int]] | None = None

    # -- analysis --------------------------------------------------------------------------------

    def split(self, sql: str) -> list[str]:
        """The statements of `sql`, each as SQLite will run it (trigger bodies stay whole)."""
        out, current = [], ""
        for piece in sql.split(";"):
            current += piece + ";"
            if apsw.complete(current):
                if current.strip(" \t\r\n;"):
                    out.append(current.strip())
                current = ""
        if current.strip(" \t\r\n;"):
            out.append(current.strip().rstrip(";"))
        if not out:
            raise ActionFailed("sql.execute: no statement in 'sql'")
        return out

    def check(self, statement: str, analysis: dict[str, Any]) -> None:
        words = _strip_comments(statement).lower().split()
        first = words[0].strip("(;") if words else ""
        if first in _FORBIDDEN:
            raise SqlRefused(f"{first.upper()} is not allowed: goex runs each action as one transaction on "
                             "its own database (VACUUM and ATTACH reach other files; COMMIT and friends would "
                             "end the transaction undo relies on)")
        if first == "pragma" and "=" in statement:
            raise SqlRefused("PRAGMA assignments are not allowed: they change the database outside undo")
        if "load_extension" in " ".join(words):
            raise SqlRefused("load_extension is not allowed")

    def dry_run(self, statements: list[str], params: Any) -> int:
        """Rows the statements would change, cascades, triggers, dropped and created tables included,
        by running them in a transaction that is rolled back."""
        if not self.path.exists():
            return 0
        conn = self._work_connection()
        try:
            conn.execute("BEGIN")
            # whole tables appear or vanish only through DDL; counting rows costs a scan, so only then
            ddl = any(_strip_comments(s).lstrip().split(None, 1)[0].lower() in ("create", "drop", "alter")
                      for s in statements if s.strip())
            counts = _row_counts(conn) if ddl else {}
            before = conn.total_changes()
            conn.authorizer = _authorize
            for sql in statements:
                _run(conn, sql, params)
            conn.authorizer = None
            changed = conn.total_changes() - before
            after = _row_counts(conn) if ddl else {}
            moved = sum(abs(after.get(t, 0) - counts.get(t, 0)) for t in set(counts) | set(after)
                        if t not in counts or t not in after)  # tables dropped or created whole
            return changed + moved
        except apsw.Error as exc:
            raise _error(self.name, exc, "nothing was applied") from None
        finally:
            self._release(conn, None)

    # -- doing -----------------------------------------------------------------------------------

    def before(self, statements: list[str], analyses: list[dict[str, Any]], put_blob: PutBlob) -> dict[str, Any]:
        if not self.path.exists():
            return {"mode": "image", "absent": True}
        if all(a.get("parsed") and not a.get("ddl") for a in analyses):
            return {"mode": "changeset"}
        image = _image(self.path)
        chunks = [put_blob(image[i:i + CHUNK]) for i in range(0, len(image), CHUNK)]
        return {"mode": "image", "absent": False, "size": len(image), "sha": hashlib.sha256(image).hexdigest(),
                "chunks": chunks, "checksums": _checksums(self.path)}

    def stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
              before: dict[str, Any]) -> Staged:
        conn = self._work_connection()
        session = None
        try:
            writes = any(a["kind"] != "select" for a in analyses)
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            sequence = _sequence(conn)
            if before.get("mode") == "changeset":
                session = apsw.Session(conn, "main")
                session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)  # tables without a primary key too
                session.attach()
            conn.authorizer = _authorize
            output: dict[str, Any] = {}
            start = conn.total_changes()
            for sql in statements:
                cursor = _run(conn, sql, params)
                description = _description(cursor)
                if description is not None:
                    output = format_rows(description, cursor)
            conn.authorizer = None
            if not output:
                output = {"rows_changed": conn.total_changes() - start}
        except apsw.Error as exc:
            self._release(conn, session)
            raise _error(self.name, exc) from None
        except BaseException:
            self._release(conn, session)
            raise

        def capture(put_blob: PutBlob) -> dict[str, Any]:
            out: dict[str, Any] = {"sequence": sequence}
            if session is not None:
                changeset = session.changeset()
                out["changeset"] = {"chunks": [put_blob(changeset[i:i + CHUNK]) for i in range(0, len(changeset), CHUNK)]}
                tables = sorted({change.name for change in apsw.Changeset.iter(changeset)})
                out["after"] = {"changeset": hashlib.sha256(changeset).hexdigest(), "schema": _schema(conn, tables)}
            else:
                out["after"] = {"checksums": _checksums_conn(conn)}
            return out

        def commit() -> None:
            try:
                conn.execute("COMMIT")
            finally:
                self._release(conn, session)

        def abort() -> None:
            self._release(conn, session)

        return Staged(output, capture, commit, abort)

    # -- undoing ---------------------------------------------------------------------------------

    def conflicts(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> list[tuple[str, str]]:
        if before.get("mode") == "changeset":
            then = captured["after"]["schema"]
            if not self.path.exists():
                return [(self.name, f"the database file {self.path} is gone")]
            now = _schema(self._undo_connection(), list(then))
            reshaped = [(f"{self.name}.{t}", "dropped since the action" if now[t] is None else
                         "schema changed since the action") for t in then if now[t] != then[t]]
            return reshaped or self._trial(apsw.Changeset.invert(_blob(captured["changeset"]["chunks"], get_blob)))
        now = _checksums(self.path) if self.path.exists() else {}
        then = captured["after"]["checksums"]
        return _differences(then, now, self.name)

    def revert(self, before: dict[str, Any], captured: dict[str, Any] | None, get_blob: GetBlob,
               force: bool) -> None:
        if captured is None:  # never committed: SQLite rolled it back; only a file it created remains
            if before.get("absent"):
                _remove(self.path)
            return
        if before.get("absent"):
            _remove(self.path)
            return
        if before["mode"] == "image":
            _restore_image(self.path, b"".join(get_blob(c) for c in before["chunks"]))
            return
        inverted = apsw.Changeset.invert(_blob(captured["changeset"]["chunks"], get_blob))
        conn = self._undo_connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            problems: list[str] = []

            def conflict(reason: int, change: apsw.TableChange) -> int:
                if force:  # forced: the before-state wins; a row already gone stays gone
                    return apsw.SQLITE_CHANGESET_OMIT if reason == apsw.SQLITE_CHANGESET_NOTFOUND else \
                        apsw.SQLITE_CHANGESET_REPLACE if reason in (apsw.SQLITE_CHANGESET_DATA,
                                                                   apsw.SQLITE_CHANGESET_CONFLICT) else \
                        apsw.SQLITE_CHANGESET_OMIT
                problems.append(_describe(reason, change))
                return apsw.SQLITE_CHANGESET_ABORT

            try:
                apsw.Changeset.apply(inverted, conn, conflict=conflict,
                                     flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION | apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT)
            except apsw.AbortError:
                conn.execute("ROLLBACK")
                raise ActionFailed(f"undo on {self.name} stopped: {'; '.join(problems)}") from None
            _restore_sequence(conn, captured.get("sequence"))
            conn.execute("COMMIT")
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")

    def committed(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> tuple[str, str]:
        if not self.path.exists():
            return ("reverted", "") if before.get("absent") else ("review", f"{self.path} is gone")
        if before.get("mode") == "changeset":
            changeset = _blob(captured["changeset"]["chunks"], get_blob)
            if not self._trial(apsw.Changeset.invert(changeset)):
                return "applied", ""
            if not self._trial(changeset):
                return "reverted", ""
            return "review", f"{self.name} matches neither the state before nor the state after the action"
        now = _checksums(self.path)
        if now == captured["after"]["checksums"]:
            return "applied", ""
        if not before.get("absent") and now == before["checksums"]:
            return "reverted", ""
        return "review", f"{self.name} matches neither the state before nor the state after the action"

    def _trial(self, changeset: bytes) -> list[tuple[str, str]]:
        """Apply `changeset` in a transaction that is rolled back; the conflicts it would meet."""
        found: list[tuple[str, str]] = []

        def conflict(reason: int, change: apsw.TableChange) -> int:
            found.append((f"{self.name}.{change.name}", _describe(reason, change)))
            return apsw.SQLITE_CHANGESET_OMIT

        conn = self._undo_connection()
        try:
            conn.execute("BEGIN")
            try:
                apsw.Changeset.apply(changeset, conn, conflict=conflict,
                                     flags=apsw.SQLITE_CHANGESETAPPLY_FKNOACTION | apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT)
            except apsw.SQLError as exc:  # a table it names is gone or reshaped
                found.append((self.name, f"schema changed since the action ({exc})"))
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
        return found

    def dump(self) -> str:
        return dump_path(self.path)

    def close(self) -> None:
        for held in (self._undo, self._work):
            if held is not None:
                held[0].close()
        self._undo = self._work = None

    def _work_connection(self) -> apsw.Connection:
        """The connection actions run on, kept open between them (opening one and reading the
        schema again costs more than a small statement). Reopened when the file was replaced."""
        try:
            st = os.stat(self.path)
            key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            key = None
        if self._work is not None and (key is None or self._work[1] != key):
            self._work[0].close()
            self._work = None
        if self._work is None:
            conn = _connect(self.path)
            if key is None:  # it created the file
                st = os.stat(self.path)
                key = (st.st_dev, st.st_ino)
            self._work = (conn, key)
        return self._work[0]

    def _release(self, conn: apsw.Connection, session: Any) -> None:
        """Done with the work connection: its session closed, any open transaction rolled back;
        on any trouble it is closed, and the next action opens a new one."""
        try:
            if session is not None:
                session.close()
            conn.authorizer = None
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
        except BaseException:
            if self._work is not None and self._work[0] is conn:
                self._work = None
            conn.close()
            raise

    def _undo_connection(self) -> apsw.Connection:
        """The connection undo uses, kept open between entries (a rollback of many entries opens
        it once): foreign-key actions and triggers off, so nothing fires from goex's own undo.
        Reopened when the database file was replaced or removed since."""
        st = os.stat(self.path)
        key = (st.st_dev, st.st_ino)
        if self._undo is not None and self._undo[1] != key:
            self._undo[0].close()
            self._undo = None
        if self._undo is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
            self._undo = (conn, key)
        return self._undo[0]


# -- helpers -------------------------------------------------------------------------------------


def _strip_comments(statement: str) -> str:
    import re
    return re.sub(r"--[^\n]*|/\*.*?(\*/|$)", " ", statement, flags=re.DOTALL)


def _run(conn: apsw.Connection, sql: str, params: Any) -> apsw.Cursor:
    if isinstance(params, dict):
        return conn.execute(sql, params)
    return conn.execute(sql, tuple(params) if params is not None else None)


def _description(cursor: apsw.Cursor) -> list[str] | None:
    try:
        return [d[0] for d in cursor.get_description()]
    except apsw.ExecutionCompleteError:
        return None


def _blob(chunks: list[str], get_blob: GetBlob) -> bytes:
    return b"".join(get_blob(c) for c in chunks)


def _describe(reason: int, change: Any) -> str:
    row = change.old if change.old is not None else change.new
    key = f"row {list(row)[:3]!r}" if row is not None else "a row"
    what = {apsw.SQLITE_CHANGESET_DATA: "changed since the action",
            apsw.SQLITE_CHANGESET_NOTFOUND: "deleted since the action",
            apsw.SQLITE_CHANGESET_CONFLICT: "re-created since the action",
            apsw.SQLITE_CHANGESET_CONSTRAINT: "would break a constraint",
            apsw.SQLITE_CHANGESET_FOREIGN_KEY: "would break a foreign key"}.get(reason, "conflicts")
    return f"{change.name}: {key} {what}"


def _schema(conn: apsw.Connection, tables: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for table in tables:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchall()
        out[table] = rows[0][0] if rows else None
    return out


def _sequence(conn: apsw.Connection) -> list[list[Any]] | None:
    try:
        return [list(r) for r in conn.execute("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")]
    except apsw.SQLError:
        return None


def _restore_sequence(conn: apsw.Connection, rows: list[list[Any]] | None) -> None:
    if rows is None or _sequence(conn) is None:
        return
    conn.execute("DELETE FROM sqlite_sequence")
    for name, seq in rows:
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (name, seq))


def _row_counts(conn: apsw.Connection) -> dict[str, int]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _image(path: Path) -> bytes:
    source = apsw.Connection(str(path))
    memory = apsw.Connection(":memory:")
    try:
        with memory.backup("main", source, "main") as backup:
            backup.step()
        image = bytearray(memory.serialize("main"))
        if len(image) >= 20:
            image[18] = image[19] = 1  # a WAL database's image must open in memory; backup keeps WAL on restore
        return bytes(image)
    finally:
        source.close()
        memory.close()


def _restore_image(path: Path, image: bytes) -> None:
    source = apsw.Connection(":memory:")
    try:
        source.deserialize("main", image)
        target = apsw.Connection(str(path))
        target.set_busy_timeout(30_000)
        try:
            with target.backup("main", source, "main") as backup:
                backup.step()
        finally:
            target.close()
    finally:
        source.close()


def _checksums(path: Path) -> dict[str, str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return _checksums_conn(conn)
    finally:
        conn.close()


def _checksums_conn(conn: apsw.Connection) -> dict[str, str]:
    """sha256 per schema object: its SQL, and for tables every row in rowid order."""
    out = {"pragma:user_version": str(conn.execute("PRAGMA user_version").fetchall()[0][0]),
           "pragma:application_id": str(conn.execute("PRAGMA application_id").fetchall()[0][0])}
    for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall():
        h = hashlib.sha256((sql or "").encode())
        if kind == "table":
            try:
                rows = conn.execute(f'SELECT rowid, * FROM "{name}" ORDER BY rowid').fetchall()
            except apsw.SQLError:  # WITHOUT ROWID
                rows = conn.execute(f'SELECT * FROM "{name}" ORDER BY 1').fetchall()
            for row in rows:
                h.update(repr(row).encode())
        out[f"{kind}:{name}"] = h.hexdigest()
    return out


def _differences(then: dict[str, str], now: dict[str, str], db: str) -> list[tuple[str, str]]:
    changed = sorted(name for name in set(now) | set(then) if now.get(name) != then.get(name))
    return [(f"{db}.{name}", "changed since the action" if name in now and name in then else
             "created since the action" if name in now else "dropped since the action") for name in changed]


def dump_path(path: Path) -> str:
    """Canonical text of a SQLite database: settings, schema objects by type and name, AUTOINCREMENT
    positions, and every table's rows sorted."""
    if not path.exists():
        return "-- absent\n"
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        lines = [f"user_version {conn.execute('PRAGMA user_version').fetchall()[0][0]}",
                 f"application_id {conn.execute('PRAGMA application_id').fetchall()[0][0]}"]
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                               "WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name").fetchall()
        for kind, name, table, sql in objects:
            if name.lower().startswith("goex_"):
                continue
            lines.append(f"{kind} {name} on {table}: {' '.join((sql or '').split())}")
            if kind == "table":
                rows = sorted(repr(tuple(r)) for r in conn.execute(f'SELECT * FROM "{name}"'))
                lines.extend(f"  {r}" for r in rows)
        return "\n".join(lines) + "\n"
    finally:
        conn.close()


def sqlite_path(url: str, root: Path | None = None) -> Path:
    raw = url[len("sqlite:///"):]
    if raw.startswith("/"):
        return Path(raw)
    return (root or Path(os.getcwd())) / raw
