"""SQLite engine, through APSW (it exposes SQLite's session extension).

Row changes are captured by a session on the action's own connection: every row inserted,
updated or deleted, including by triggers, foreign-key actions and REPLACE, lands in a
changeset. Undo applies the inverted changeset with triggers and foreign-key actions off, so
nothing fires twice; a row someone else changed since shows up as a conflict. `sqlite_sequence`
(AUTOINCREMENT positions) is kept beside it, since sessions do not track it.

Row changes run once (`rehearse`): the run that gives the policy its preview is the session's
transaction, kept open until the action is applied (committed) or released (rolled back).

Statements that change the schema (DDL, or SQL sqlglot cannot read) take the simplest exact
route instead: the whole database image, stored before the action in content-addressed 1 MiB
chunks (unchanged pages deduplicate across entries), copied back with SQLite's backup API.

A database inside the workspace is opened through the workspace's confined resolver: its
folders resolve inside the root only, the file itself is never a symlink, and SQLite opens it
with SQLITE_OPEN_NOFOLLOW. Before every action and every undo goex checks again that the file it
holds open is the one the resolver finds, that no `-journal` SQLite would replay (a hot journal
goex did not write) and no `-wal`/`-shm` of a database not in WAL mode lies beside it, and that
the connection holds no TEMP object. Agent SQL runs under an authorizer: no ATTACH, transaction
control, PRAGMA settings, extensions or TEMP objects.

goex opens database files with APSW's own SQLite. Inside one process, do not keep the same file
open through Python's `sqlite3` module while goex acts on it: two SQLite libraries in one process
do not see each other's POSIX locks.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import apsw

from ...errors import ActionFailed, GoexError, PathRefused, Unforceable
from ...journal.store import CHUNK
from ..fs.workspace import Parts, Workspace
from .changesets import RowChain, compose_inverse, row_matches
from .common import GetBlob, PutBlob, SqlRefused, Staged, UndoRefused, analyse, format_rows, words

# goex owns the transaction and the file: these never run inside an action
_FORBIDDEN = {"attach", "detach", "vacuum", "begin", "commit", "end", "rollback", "savepoint", "release"}
# introspection pragmas take an argument (a table); settings read without one are fine too
_INTROSPECTION = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                  "foreign_key_list", "integrity_check", "quick_check", "foreign_key_check"}
_SETTINGS_READ = {"user_version", "application_id", "foreign_keys", "schema_version", "page_count", "page_size",
                  "compile_options", "database_list", "collation_list", "function_list", "encoding", "journal_mode"}


_DENIED = {apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH, apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT,
           # TEMP objects would live on goex's kept-open connection, outside capture and undo
           apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TRIGGER,
           apsw.SQLITE_CREATE_TEMP_VIEW, apsw.SQLITE_DROP_TEMP_TABLE, apsw.SQLITE_DROP_TEMP_INDEX,
           apsw.SQLITE_DROP_TEMP_TRIGGER, apsw.SQLITE_DROP_TEMP_VIEW}
# what agent SQL may do in the temp schema: read it (it is empty)
_TEMP_READS = {apsw.SQLITE_READ, apsw.SQLITE_SELECT, apsw.SQLITE_FUNCTION, apsw.SQLITE_PRAGMA, apsw.SQLITE_RECURSIVE}
# the sidecar files SQLite keeps beside a database: they belong to it
SIDECARS = ("-journal", "-wal", "-shm")
_APPLY_FLAGS = apsw.SQLITE_CHANGESETAPPLY_FKNOACTION | apsw.SQLITE_CHANGESETAPPLY_NOSAVEPOINT  # no cascades
_PENDING_BYTE = 0x40000000  # SQLite's lock bytes: PENDING, then RESERVED (a write transaction is open)


def _renaming(action: int, table: str | None) -> bool:
    """ALTER TABLE in main rewrites references in the temp schema's catalog (empty here; agent SQL
    cannot write that catalog itself: SQLite refuses it)."""
    return action in (apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE) and table == "sqlite_temp_master"


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """SQLite's authorizer: the hard guarantee behind the statement check."""
    if action in _DENIED or (db == "temp" and action not in _TEMP_READS and not _renaming(action, arg1)):
        return apsw.SQLITE_DENY
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if not (name in _INTROSPECTION or (name in _SETTINGS_READ and arg2 is None)):
            return apsw.SQLITE_DENY
    if action == apsw.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


# tables SQLite keeps for itself that a session does not record: writing them changes the schema or
# the planner's statistics, which only the database image restores
_UNRECORDED = ("sqlite_master", "sqlite_schema", "sqlite_stat")


class _Authorizer:
    """The authorizer, noting whether the statements create a trigger (for the preview) and
    whether they change anything a session does not record (the schema, ANALYZE's statistics):
    SQLite's own parser says so, whatever words the statement uses."""

    def __init__(self) -> None:
        self.creates_trigger = False
        self.reshapes = False

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        if action == apsw.SQLITE_CREATE_TRIGGER:
            self.creates_trigger = True
        if action == apsw.SQLITE_ANALYZE or (
                action in (apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE)
                and (arg1 or "").lower().startswith(_UNRECORDED)):
            self.reshapes = True
        return _authorize(action, arg1, arg2, db, trigger)


class DatabaseRefused(SqlRefused):
    """A SQLite database goex will not open or use: a symlink, a path leading out of the
    workspace or into the journal, or sidecar files (-journal, -wal, -shm) goex did not expect."""

    def __init__(self, db: str, reason: str):
        super().__init__(reason)
        self.args = (f"database {db} refused: {reason}",)

    def __str__(self) -> str:
        return self.args[0]


def _connect(path: Path, confined: bool) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE | (apsw.SQLITE_OPEN_NOFOLLOW if confined else 0)
    conn = apsw.Connection(str(path), flags=flags)
    conn.set_busy_timeout(30_000)
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _error(db: str, exc: Exception, applied: str = "nothing of it was applied") -> GoexError:
    text = str(exc)
    for prefix in ("SQLError: ", "ConstraintError: ", "AuthError: "):
        text = text.replace(prefix, "")
    if isinstance(exc, apsw.AuthError) or text.startswith("not authorized"):  # the authorizer: a refusal
        return SqlRefused(f"sql.execute on {db}: {text} (goex refuses ATTACH, transaction control, PRAGMA settings, "
                          f"TEMP objects and extensions); {applied}")
    return ActionFailed(f"sql.execute on {db}: {text}; {applied}")


@dataclass(frozen=True)
class _File:
    """A database file and its sidecars, looked at without following links: through the
    workspace's confined folders (`parts`), or by path for a database outside the workspace."""

    path: Path  # what SQLite opens
    parts: Parts | None
    workspace: Workspace | None

    @property
    def confined(self) -> bool:
        return self.parts is not None

    def lstat(self, suffix: str = "") -> os.stat_result | None:
        if self.parts is not None and self.workspace is not None:
            return self.workspace.lstat(self.parts[:-1] + (self.parts[-1] + suffix,))
        try:
            return os.lstat(f"{self.path}{suffix}")
        except FileNotFoundError:
            return None

    def head(self, suffix: str, size: int) -> bytes:
        if self.parts is not None and self.workspace is not None:
            return self.workspace.read_head(self.parts[:-1] + (self.parts[-1] + suffix,), size)
        with open(f"{self.path}{suffix}", "rb") as f:
            return f.read(size)

    def unlink(self, suffix: str = "") -> None:
        if self.parts is not None and self.workspace is not None:
            self.workspace.unlink_file(self.parts[:-1] + (self.parts[-1] + suffix,))
        else:
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def open(self, flags: int = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE) -> apsw.Connection:
        return apsw.Connection(str(self.path), flags=flags | (apsw.SQLITE_OPEN_NOFOLLOW if self.confined else 0))


def _identity(st: os.stat_result | None) -> tuple[int, int] | None:
    return (st.st_dev, st.st_ino) if st is not None else None


class SqliteEngine:
    kind = "sqlite"
    dialect = "sqlite"

    def __init__(self, path: Path, name: str = "db", workspace: Workspace | None = None, inside: str | None = None):
        self.path = path
        self.name = name
        self.workspace = workspace  # goex's own state (the journal folder) is known through it
        self.inside = inside  # its path in the workspace: then it is opened through the confined resolver
        self._undo: tuple[apsw.Connection, tuple[int, int]] | None = None
        self._work: tuple[apsw.Connection, tuple[int, int]] | None = None
        self._sidecars: dict[str, tuple[int, int]] = {}  # -wal / -shm as they were while goex held the file open
        self._keyed: tuple[int, dict[str, list[int]]] = (-1, {})  # schema version, WITHOUT ROWID tables' keys
        self._shaped: tuple[Any, bool, dict[str, str], _Keys] = (None, False, {}, {})  # `_shape`
        self._linked: tuple[int, dict[str, set[str]]] = (-1, {})  # schema version, tables tied by foreign keys
        self._marker: Path | None = None
        self._held: _File | None = None  # the file the work connection is on
        self._outside: _File | None = None  # the file outside the workspace, where its path last led
        self._found: tuple[_File, os.stat_result | None] | None = None  # checked by this action's dry run
        # this action's dry run saw it change what a session does not record (the schema, statistics,
        # rows keyed by NULL): its undo keeps the database image
        self._reshapes: bool | None = None
        self._last_composed: tuple[bytes, bytes] = (b"", b"")  # (key of the changesets, their composed undo)
        self._pending: bytes | None = None  # key of the range whose undo the undo connection's open transaction holds

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
        said = words(statement, "sqlite")  # the authorizer is the hard guarantee behind these
        first = said[0] if said else ""
        if first in _FORBIDDEN:
            raise SqlRefused(f"{first.upper()} is not allowed: goex runs each action as one transaction on "
                             "its own database (VACUUM and ATTACH reach other files; COMMIT and friends would "
                             "end the transaction undo relies on)")
        if first == "pragma" and "=" in statement:
            raise SqlRefused("PRAGMA assignments are not allowed: they change the database outside undo")
        if "load_extension" in said:
            raise SqlRefused("load_extension is not allowed")
        if first == "create" and len(said) > 1 and said[1] in ("temp", "temporary"):
            raise SqlRefused("TEMP tables, views and triggers are not allowed: they would outlive the action on "
                             "goex's connection, outside undo; create a regular table")

    def begin(self) -> None:
        """A new action: what the last one's dry run checked is not trusted for this one."""
        self._found = None
        self._reshapes = None

    def _file_of_action(self) -> tuple[_File, os.stat_result | None, bool]:
        """The file as this action's dry run checked it moments ago (the runtime holds the journal's
        lock across an action, so no other action ran since), or checked now; and whether it was
        the dry run's (then the work connection was checked too)."""
        if self._found is not None:
            return *self._found, True
        return *self._file(), False

    def rehearse(self, statements: list[str], params: Any) -> tuple[dict[str, Any], Staged | None]:
        """Row changes run once: the transaction opened, the session attached, the statements run
        and their effect read off that run (SQLite's change count, the session's changeset and the
        update hook's count of rows touched); the transaction stays open as the action's run, its
        changeset captured, committed if the action is allowed, rolled back when it is released.

        The effect is the dry run's, exactly: `rows` is the same change count; `all_rows` is
        decided from the changeset (the rows there before that the action changed or deleted: a
        lower bound of those it touched) and the update hook (the rows it updated or deleted: an
        upper bound); where the two bounds do not settle a table, or where the update hook may
        miss rows (WITHOUT ROWID tables, REPLACE conflict resolution), or the statements change
        the schema, the run is rolled back and the dry run and a later staged run do it."""
        if (any(not (a := analyse(s, self.dialect))["parsed"] or a["ddl"] for s in statements)
                or any("replace" in s.lower() for s in statements)):
            return self.dry_run(statements, params), None
        file, st = self._file()
        if st is None:  # the action creates the database: the dry run leaves no file behind
            return self.dry_run(statements, params), None
        conn = self._work_connection(file, st)
        session = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            hooked, tables, nullable = self._shape(conn)
            if not hooked:
                self._release(conn, None)
                return self.dry_run(statements, params), None
            nulls = _null_keyed(conn, nullable, nullable)
            sequence = _sequence(conn) if "sqlite_sequence" in tables else None
            session = _session(conn)
            authorizer, counted = _Authorizer(), _Counted()
            conn.set_update_hook(counted)
            conn.authorizer = authorizer
            output, changed = _execute(conn, statements, params)
            conn.authorizer = None
            conn.set_update_hook(None)
            unrecorded = authorizer.reshapes or _unrecorded(conn, nullable, nulls, counted.written)
            changeset = b"" if unrecorded else session.changeset()
            all_rows = None if unrecorded else counted.every_row(conn, changeset)
        except apsw.Error as exc:
            self._release(conn, session)
            raise _error(self.name, exc, "nothing was applied") from None
        except BaseException:
            self._release(conn, session)
            raise
        if all_rows is None:  # the schema or statistics changed, rows a session misses, or unsettled bounds
            self._release(conn, session)
            return self.dry_run(statements, params), None
        self._found = (file, st)
        self._reshapes = False
        effect = {"rows": changed, "all_rows": all_rows, "creates_trigger": authorizer.creates_trigger}
        return effect, self._staged(conn, session, sequence, output, (changeset, tables))

    def _shape(self, conn: apsw.Connection) -> tuple[bool, dict[str, str], _Keys]:
        """What a run of row changes needs of the schema, read inside its transaction, and read
        again only when the schema changed: whether SQLite's update hook sees every row it updates
        or deletes (no WITHOUT ROWID table: the hook skips them; no REPLACE conflict resolution
        declared in the schema: the rows it deletes pass the hook by), each table's SQL, and the
        tables whose primary key may hold NULL (a rowid table's declared key without NOT NULL,
        SQLite's old quirk), with their key's columns: a session records no row whose key is NULL
        (see `_unrecorded`)."""
        assert self._work is not None
        key = (self._work[1], _fetch(conn, "PRAGMA schema_version")[0][0])
        if self._shaped[0] != key:
            tables = dict(_fetch(conn, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
            unhooked = _fetch(conn, "SELECT 1 FROM pragma_table_list WHERE schema = 'main' AND wr UNION ALL "
                                    "SELECT 1 FROM sqlite_master WHERE lower(sql) LIKE '%replace%' LIMIT 1")
            nullable: _Keys = {}
            for table, column in _fetch(conn, _NULLABLE_KEYS):
                nullable[table] = nullable.get(table, ()) + (column,)
            self._shaped = (key, not unhooked, tables, nullable)
        return self._shaped[1], self._shaped[2], self._shaped[3]

    def dry_run(self, statements: list[str], params: Any) -> dict[str, Any]:
        """What the statements would do, by running them in a transaction that is rolled back:
        `rows` they change (cascades, triggers, dropped and created tables included), `all_rows`
        (tables of at least 2 rows every row of which they update or delete) and `creates_trigger`."""
        file, st = self._file()
        if st is None:
            return {"rows": 0, "all_rows": [], "creates_trigger": False}
        conn = self._work_connection(file, st)
        try:
            conn.execute("BEGIN")
            ddl = any(not (a := analyse(s, self.dialect))["parsed"] or a["ddl"] for s in statements)
            nullable = {} if ddl else self._shape(conn)[2]  # (DDL keeps the image anyway)
            nulls = _null_keyed(conn, nullable, nullable)
            effect, _, authorizer, touched = self._measured(conn, statements, params, ddl)
            self._found = (file, st)
            self._reshapes = authorizer.reshapes or _unrecorded(conn, nullable, nulls, set(touched.fresh))
            return effect
        except apsw.Error as exc:
            raise _error(self.name, exc, "nothing was applied") from None
        finally:
            self._release(conn, None)

    def _measured(self, conn: apsw.Connection, statements: list[str], params: Any,
                  ddl: bool) -> tuple[dict[str, Any], dict[str, Any], _Authorizer, _Touched]:
        """Run the statements in the open transaction under the preupdate hook and the authorizer:
        their effect (`dry_run`'s), their output, the authorizer and the hook."""
        authorizer = _Authorizer()
        counts = _row_counts(conn) if ddl else {}  # whole tables appear or vanish only through DDL
        touched = _Touched(self._keyed_tables(conn))
        conn.preupdate_hook(touched)
        conn.authorizer = authorizer
        try:
            output, changed = _execute(conn, statements, params)
        finally:
            conn.authorizer = None
            conn.preupdate_hook(None)  # gone before a session is made on this connection
        after = _row_counts(conn) if ddl else {}
        moved = sum(abs(after.get(t, 0) - counts.get(t, 0)) for t in set(counts) | set(after)
                    if t not in counts or t not in after)  # tables dropped or created whole
        effect = {"rows": changed + moved, "all_rows": touched.every_row(conn),
                  "creates_trigger": authorizer.creates_trigger}
        return effect, output, authorizer, touched

    def agent_privileges(self) -> dict[str, Any]:
        """What agent SQL may do on this database: it runs on goex's own connection under the
        authorizer, which is probed here (on a scratch database) rather than assumed."""
        probe = apsw.Connection(":memory:")
        try:
            probe.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0)
            extensions = bool(probe.config(apsw.SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, -1))
            probe.authorizer = _authorize
            dangerous = [name for name, sql in _PROBES.items() if _allowed(probe, sql)]
        finally:
            probe.close()
        if extensions:
            dangerous.append("load_extension enabled")
        where = ("opened inside the workspace through the confined resolver (no symlinks, no journal)"
                 if self.inside is not None else "a file outside the workspace, named by the user")
        return {"runs_as": "sqlite authorizer", "safe": not dangerous, "dangerous": dangerous,
                "detail": "agent SQL runs on goex's connection under an authorizer (no ATTACH, transaction control, "
                          f"PRAGMA settings, TEMP objects or extensions); the file is {where}"}

    # -- doing -----------------------------------------------------------------------------------

    def before(self, statements: list[str], analyses: list[dict[str, Any]], put_blob: PutBlob) -> dict[str, Any]:
        file, st, _ = self._file_of_action()
        if st is None:
            return {"mode": "image", "absent": True}
        # row changes only (sqlglot's reading, and SQLite's own in the dry run): a session records them
        if not self._reshapes and all(a.get("parsed") and not a.get("ddl") for a in analyses):
            return {"mode": "changeset"}
        image = _image(file)
        chunks = [put_blob(image[i:i + CHUNK]) for i in range(0, len(image), CHUNK)]
        return {"mode": "image", "absent": False, "size": len(image), "sha": hashlib.sha256(image).hexdigest(),
                "chunks": chunks, "checksums": _checksums(file)}

    def read(self, statements: list[str], params: Any, analyses: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The output of statements that only read: run, and rolled back."""
        staged = self.stage(statements, params, analyses, {})
        staged.abort()
        return staged.output

    def stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
              before: dict[str, Any], held: Staged | None = None, expect: dict[str, Any] | None = None) -> Staged:
        """The statements run in an open transaction, a session recording them when `before` says
        so; or `held`, the transaction `rehearse` ran them in, still open: it is the action's run.

        `expect`: the preview the policy (or a person) judged, from an earlier run (the dry run,
        or the run released while a person was asked). Statements can do something else each time
        they run (random(), the time): this run is refused, nothing applied, when its effect is
        not that preview's: its `rows` differ, or (with a session, whose changeset says which
        tables certainly lost or changed every row) it changed a table whole the preview did not
        name; without a session the dry run's own measure is taken again and must be equal."""
        if held is not None:
            return held
        if before.get("absent"):  # the action creates the database: no earlier run measured it
            expect = None
        file, st, checked = self._file_of_action()
        self._found = None  # used once: what follows (undo, the next action) checks again
        conn = self._work_connection(file, st, checked)
        session = None
        try:
            writes = any(a["kind"] != "select" for a in analyses)
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            sequence = _sequence(conn)
            counted, nullable, nulls, ran = _Counted(), {}, set(), None
            if before.get("mode") == "changeset":
                nullable = self._shape(conn)[2]
                nulls = _null_keyed(conn, nullable, nullable)
                session = _session(conn)
                conn.set_update_hook(counted)
            if expect is not None and session is None:
                ddl = any(not a.get("parsed") or a.get("ddl") for a in analyses)
                effect, output, _, _ = self._measured(conn, statements, params, ddl)
                effect["all_rows"] = sorted(effect["all_rows"])
                self._as_previewed(effect, expect)
            else:
                conn.authorizer = _authorize
                output, changed = _execute(conn, statements, params)
                conn.authorizer = None
            if _unrecorded(conn, nullable, nulls, counted.written):
                raise ActionFailed(f"sql.execute on {self.name}: run again, the statements wrote a row whose primary "
                                   "key is NULL (a session cannot record it for undo), which their dry run did not; "
                                   "nothing was applied")
            if expect is not None and session is not None:
                changeset = session.changeset()
                ran = (changeset, None)
                whole = set(expect["all_rows"]) | set(_wholly(conn, changeset))
                self._as_previewed({"rows": changed, "all_rows": sorted(whole)}, expect)
        except apsw.Error as exc:
            self._release(conn, session)
            raise _error(self.name, exc) from None
        except BaseException:
            self._release(conn, session)
            raise
        conn.set_update_hook(None)
        return self._staged(conn, session, sequence, output, ran)

    def _as_previewed(self, effect: dict[str, Any], expect: dict[str, Any]) -> None:
        """Refuse a run whose effect is not the preview that was judged (see `stage`)."""
        differs = [f"{k} {effect[k]!r}, previewed {expect[k]!r}" for k in ("rows", "all_rows", "creates_trigger")
                   if k in effect and k in expect and effect[k] != expect[k]]
        if differs:
            raise ActionFailed(f"sql.execute on {self.name}: run again, the statements did something else than in "
                               f"the run the policy judged ({'; '.join(differs)}): their effect varies from run to "
                               "run; nothing was applied")

    def _staged(self, conn: apsw.Connection, session: apsw.Session | None, sequence: list[list[Any]] | None,
                output: dict[str, Any], ran: tuple[bytes, dict[str, str] | None] | None = None) -> Staged:
        """The open transaction on the work connection as a `Staged`: its capture (the session's
        changeset, or the after-state's checksums without a session), commit and rollback. `ran`:
        the changeset, already read, and the tables' SQL when it is known the run did not change it."""

        def capture(put_blob: PutBlob) -> dict[str, Any]:
            out: dict[str, Any] = {"sequence": sequence}
            if session is not None:
                rows = session.changeset() if ran is None else ran[0]
                out["changeset"] = {"chunks": [put_blob(rows[i:i + CHUNK]) for i in range(0, len(rows), CHUNK)]}
                tables = sorted({change.name for change in apsw.Changeset.iter(rows)})
                known = ran[1] if ran is not None else None
                schema = _schema(conn, tables) if known is None else {t: known.get(t) for t in tables}
                out["after"] = {"changeset": hashlib.sha256(rows).hexdigest(), "schema": schema}
            else:
                out["after"] = {"checksums": _checksums_conn(conn)}
            return out

        def commit() -> None:
            self._found = None  # what the run checked is not trusted after it
            try:
                conn.execute("COMMIT")
            finally:
                self._release(conn, session)

        def abort() -> None:
            self._found = None
            self._release(conn, session)

        return Staged(output, capture, commit, abort)

    # -- undoing ---------------------------------------------------------------------------------

    def conflicts(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> list[tuple[str, str]]:
        file, st = self._file()  # a file swapped for a link is refused here, before undo writes anything
        if before.get("mode") == "changeset":
            if st is None:
                return [(self.name, f"the database file {self.path} is gone")]
            reshaped = self._reshaped(self._undo_connection(), captured["after"]["schema"])
            inverted = apsw.Changeset.invert(_blob(captured["changeset"]["chunks"], get_blob))
            return reshaped or self._trial(inverted, self._bound(self._undo_connection(), inverted))
        return _differences(captured["after"]["checksums"], _checksums(file) if st is not None else {}, self.name)

    def revert(self, before: dict[str, Any], captured: dict[str, Any] | None, get_blob: GetBlob,
               force: bool) -> None:
        file, st = self._file()
        if captured is None:  # never committed: SQLite rolled it back; only a file it created remains
            if before.get("absent"):
                self._remove(file)
            return
        if before.get("absent"):
            self._remove(file)
            return
        if before["mode"] == "image":
            _restore_image(file, b"".join(get_blob(c) for c in before["chunks"]))
            self._remember(file)
            return
        inverted = apsw.Changeset.invert(_blob(captured["changeset"]["chunks"], get_blob))
        self._apply_undo((file, st), inverted, captured.get("sequence"), force)

    def _apply_undo(self, found: tuple[_File, os.stat_result | None], inverted: bytes,
                    sequence: list[list[Any]] | None, force: bool) -> None:
        """Apply an undo changeset in one transaction, with `sqlite_sequence` as it was before.
        `found`: the file as the caller's `_file` checked it moments ago, in this same call."""
        file = found[0]
        conn = self._undo_connection(found)
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

            bound = self._bound(conn, inverted)
            held = _violations(conn, bound)
            try:
                apsw.Changeset.apply(inverted, conn, conflict=conflict,
                                     flags=_APPLY_FLAGS)
            except apsw.AbortError:
                conn.execute("ROLLBACK")
                raise ActionFailed(f"undo on {self.name} stopped: {'; '.join(problems)}") from None
            broken = self._broken(conn, bound, held)
            if broken:  # forced or not: undo takes back the entry's rows only, never others' that need them
                conn.execute("ROLLBACK")
                raise UndoRefused(f"undo on {self.name} would break foreign keys, nothing was undone: "
                                  + "; ".join(f"{t}: {why}" for t, why in broken), forceable=False)
            _restore_sequence(conn, sequence)
            conn.execute("COMMIT")
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            self._remember(file)

    # -- undoing a range of entries as one -------------------------------------------------------

    def range_conflicts(self, captureds: list[dict[str, Any]], get_blob: GetBlob) -> list[list[tuple[str, str]]]:
        """For changeset entries, newest first: the conflicts each meets if undone right after the
        newer ones. The composed undo is applied first, in a transaction left open: when it is
        clean, `revert_range` of these entries commits it (after the caller wrote its `undoing`
        record) and `end_range` rolls it back otherwise. Only when it is not clean is each entry
        tried in turn, in a transaction rolled back, to say exactly which one meets what."""
        self.end_range()
        checked = self._file()
        if checked[1] is None:
            return [[(self.name, f"the database file {self.path} is gone")]] + [[] for _ in captureds[1:]]
        conn = self._undo_connection(checked)
        changesets = [_blob(c["changeset"]["chunks"], get_blob) for c in captureds]
        if self._composes_cleanly(conn, captureds, changesets):
            return [[] for _ in captureds]
        out: list[list[tuple[str, str]]] = []
        try:
            conn.execute("BEGIN")
            for captured, changeset in zip(captureds, changesets, strict=True):
                inverted = apsw.Changeset.invert(changeset)
                found = self._reshaped(conn, captured["after"]["schema"]) or \
                    self._checked_apply(conn, inverted, self._bound(conn, inverted))
                out.append(found)
                if found:  # undo stops here: what older entries would meet does not matter
                    break
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
        return out + [[] for _ in captureds[len(out):]]

    def revert_range(self, captureds: list[dict[str, Any]], get_blob: GetBlob) -> None:
        """Undo changeset entries, newest first, as one composed changeset in one transaction: the
        one `range_conflicts` left open for these same entries, on this same file, is committed;
        otherwise the composed undo is applied now."""
        found = self._file()
        changesets = [_blob(c["changeset"]["chunks"], get_blob) for c in captureds]
        key = _composed_key(changesets)
        held = self._undo
        if (self._pending == key and held is not None and not held[0].get_autocommit()
                and found[1] is not None and held[1] == _identity(found[1])):
            self._pending = None
            conn = held[0]
            try:
                _restore_sequence(conn, captureds[-1].get("sequence"))
                conn.execute("COMMIT")
            finally:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                self._remember(found[0])
            return
        self.end_range()
        self._apply_undo(found, self._composed(changesets), captureds[-1].get("sequence"), False)

    def end_range(self) -> None:
        """Let go of a range's undo `range_conflicts` applied and `revert_range` did not commit:
        rolled back, nothing of it stays."""
        self._pending = None
        if self._undo is not None and not self._undo[0].get_autocommit():
            try:
                self._undo[0].execute("ROLLBACK")
            except BaseException:  # a connection that cannot roll back is closed: SQLite rolls it back
                self._undo[0].close()
                self._undo = None
                self._sidecars = {}
                raise

    def _composed(self, changesets: list[bytes]) -> bytes:
        """The composed undo of `changesets` (newest first); the last one is kept, as the check of
        a range is followed by its undo."""
        key = _composed_key(changesets)
        if self._last_composed[0] != key:
            self._last_composed = (key, compose_inverse(changesets))
        return self._last_composed[1]

    def _composes_cleanly(self, conn: apsw.Connection, captureds: list[dict[str, Any]],
                          changesets: list[bytes]) -> bool:
        """Whether undoing the entries as one composed changeset is exact and meets no conflict:
        the tables keep their schema, every row's states link from entry to entry, rows the
        composition drops are as the newest entry left them, and the composed undo applies
        cleanly. All checked in one write transaction; when clean, the undo stays applied in it,
        uncommitted (`_pending`), for `revert_range` to commit."""
        schemas: dict[str, str | None] = {}
        for captured in captureds:
            for table, sql in captured["after"]["schema"].items():
                if schemas.setdefault(table, sql) != sql:
                    return False
        chain = RowChain()
        for changeset in reversed(changesets):
            chain.add(changeset)
        if chain.broken is not None:
            return False
        composed = self._composed(changesets)
        conn.execute("BEGIN IMMEDIATE")  # no other writer until it is committed or rolled back
        try:
            if self._reshaped(conn, schemas) or not all(
                    row_matches(conn, table, chain.columns[table], key, chain.pks[table], state)
                    for (table, key), state in chain.dropped(composed)):
                return False
            if self._checked_apply(conn, composed, self._bound(conn, composed)):
                return False
            self._pending = self._last_composed[0]  # the key `_composed` just kept these changesets under
            return True
        finally:
            if self._pending is None and not conn.get_autocommit():
                conn.execute("ROLLBACK")

    def _reshaped(self, conn: apsw.Connection, then: dict[str, str | None]) -> list[tuple[str, str]]:
        now = _schema(conn, list(then))
        return [(f"{self.name}.{t}", "dropped since the action" if now[t] is None else
                 "schema changed since the action") for t in then if now[t] != then[t]]

    def committed(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> tuple[str, str]:
        file, st = self._file()
        if st is None:
            return ("reverted", "") if before.get("absent") else ("review", f"{self.path} is gone")
        if before.get("mode") == "changeset":
            changeset = _blob(captured["changeset"]["chunks"], get_blob)
            if not self._trial(apsw.Changeset.invert(changeset)):
                return "applied", ""
            if not self._trial(changeset):
                return "reverted", ""
            return "review", f"{self.name} matches neither the state before nor the state after the action"
        now = _checksums(file)
        if now == captured["after"]["checksums"]:
            return "applied", ""
        if not before.get("absent") and now == before["checksums"]:
            return "reverted", ""
        return "review", f"{self.name} matches neither the state before nor the state after the action"

    def _trial(self, changeset: bytes, bound: list[str] | None = None,
               conn: apsw.Connection | None = None) -> list[tuple[str, str]]:
        """Apply `changeset` in a transaction that is rolled back; the conflicts it would meet, and
        the rows of the tables `bound` whose foreign keys it would break. `conn`: the undo
        connection the caller took (and checked) moments ago, in this same call."""
        conn = conn or self._undo_connection()
        try:
            conn.execute("BEGIN")
            return self._checked_apply(conn, changeset, bound or [])
        finally:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")

    def _checked_apply(self, conn: apsw.Connection, changeset: bytes, bound: list[str]) -> list[tuple[str, str]]:
        """Apply `changeset` inside the open transaction, skipping what conflicts; the conflicts."""
        found: list[tuple[str, str]] = []

        def conflict(reason: int, change: apsw.TableChange) -> int:
            found.append((f"{self.name}.{change.name}", _describe(reason, change)))
            return apsw.SQLITE_CHANGESET_OMIT

        held = _violations(conn, bound)
        try:
            apsw.Changeset.apply(changeset, conn, conflict=conflict, flags=_APPLY_FLAGS)
        except apsw.SQLError as exc:  # a table it names is gone or reshaped
            found.append((self.name, f"schema changed since the action ({exc})"))
        else:
            found += self._broken(conn, bound, held)
        return found

    def _bound(self, conn: apsw.Connection, changeset: bytes) -> list[str]:
        """The tables whose foreign keys applying `changeset` could break: those it changes that
        refer to another table, and those that refer to a table it changes."""
        version = _fetch(conn, "PRAGMA schema_version")[0][0]
        if self._linked[0] != version:
            links: dict[str, set[str]] = {}
            for (child,) in _fetch(conn, "SELECT name FROM sqlite_master WHERE type = 'table'"):
                for (parent,) in _fetch(conn, 'SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)', (child,)):
                    links.setdefault(child.lower(), set()).add(child)  # it refers to another table
                    links.setdefault(parent.lower(), set()).add(child)  # a table refers to it
            self._linked = (version, links)
        if not self._linked[1]:  # no foreign key in the database: nothing to read
            return []
        changed = {change.name.lower() for change in apsw.Changeset.iter(changeset)}
        return sorted({t for name in changed for t in self._linked[1].get(name, ())})

    def _broken(self, conn: apsw.Connection, bound: list[str],
                held: collections.Counter[tuple[Any, ...]]) -> list[tuple[str, str]]:
        """Rows whose foreign key is broken now and was not before (`held`): what undo would orphan."""
        new = _violations(conn, bound) - held
        out: list[tuple[str, str]] = []
        for (table, rowid, parent, fkid), _ in sorted(new.items(), key=repr):
            action = conn.execute("SELECT on_delete FROM pragma_foreign_key_list(?) WHERE id = ?",
                                  (table, fkid)).fetchall()
            reach = f" (its ON DELETE {action[0][0]} would reach a row the entry did not write)" \
                if action and action[0][0] != "NO ACTION" else ""
            row = f"row {rowid}" if rowid is not None else "a row"
            out.append((f"{self.name}.{table}", Unforceable(f"{row} refers to {parent}, which undo would leave "
                                                            f"without the row it needs{reach}; change or delete that "
                                                            "row first")))
        return out

    def dump(self) -> str:
        file, st = self._file()
        return _dump(file) if st is not None else "-- absent\n"

    def close(self) -> None:
        for held in (self._undo, self._work):
            if held is not None:
                held[0].close()
        self._undo = self._work = self._found = self._pending = None
        self._sidecars = {}
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)
            self._marker = None

    # -- the file and goex's connections to it ---------------------------------------------------

    def _file(self) -> tuple[_File, os.stat_result | None]:
        """The database file as the confined resolver finds it now, and its status (None when
        absent). Refused when it is a symlink, leads out of the workspace or into the journal, or
        has sidecar files goex did not expect. Called before every use: files change between actions."""
        if self.inside is not None and self.workspace is not None:
            try:
                parts, st = self.workspace.regular_file(self.inside)
            except PathRefused as exc:
                raise DatabaseRefused(self.name, exc.reason if exc.path == self.inside else str(exc)) from None
            file = _File(Path(self.workspace.root, *parts), parts, self.workspace)
        else:  # named by the user outside the workspace: where its links lead is their choice
            real = os.path.realpath(self.path)
            if self._outside is None or str(self._outside.path) != real:
                self._outside = _File(Path(real), None, None)
            file = self._outside
            st = file.lstat()
        self._check_sidecars(file, st)
        return file, st

    def _check_sidecars(self, file: _File, st: os.stat_result | None) -> None:
        """Refuse sidecars SQLite would read into the database that goex did not write: a hot
        journal nobody is writing, -wal/-shm beside a database not in WAL mode, or ones replaced
        while goex held the database open."""
        found = {suffix: file.lstat(suffix) for suffix in SIDECARS}
        for suffix, side in found.items():
            if side is not None and not stat.S_ISREG(side.st_mode):
                raise self._stray(suffix, "is not a regular file")
        journal = found["-journal"]
        if (journal is not None and journal.st_size > 0 and file.head("-journal", 1) != b"\0"
                and not _writer_active(st) and not self._left_by_dead_goex(file)):
            raise self._stray("-journal", "is a hot journal goex did not write: SQLite would replay it into the "
                              "database")
        if found["-wal"] is None and found["-shm"] is None:
            return
        if st is None or file.head("", 20)[18:20] != b"\x02\x02":  # header bytes 18-19: 2 in WAL mode
            suffix = "-wal" if found["-wal"] is not None else "-shm"
            raise self._stray(suffix, "lies beside a database not in WAL mode: SQLite would read it as part of the "
                              "database")
        for suffix in ("-wal", "-shm"):
            then = self._sidecars.get(suffix)
            if then is not None and found[suffix] is not None and _identity(found[suffix]) != then:
                raise self._stray(suffix, "was replaced since goex last used the database")

    def _stray(self, suffix: str, why: str) -> DatabaseRefused:
        shown = f"{self.inside or self.path}{suffix}"
        return DatabaseRefused(self.name, f"{shown} {why}. If a program of yours was writing this database and "
                                          "stopped, open the database once with that program or the sqlite3 shell "
                                          "so SQLite recovers it; if you do not know where the file came from, "
                                          "delete it. Then run the action again")

    def _remember(self, file: _File) -> None:
        """The -wal / -shm goex's open connections use: replacing them later is refused."""
        self._sidecars = {suffix: key for suffix in ("-wal", "-shm") if (key := _identity(file.lstat(suffix)))}

    def _open(self, file: _File, st: os.stat_result | None) -> tuple[apsw.Connection, tuple[int, int]]:
        """A new connection to the checked file; refused if what it opened is not that file."""
        dead = self._mark(file)
        try:
            conn = _connect(file.path, file.confined)
        except apsw.CantOpenError:
            raise GoexError(f"database {self.name}: SQLite cannot open {self.inside or self.path}: does its folder "
                            "exist? Create the folder first (fs.mkdir), then run the action again") from None
        now = file.lstat()
        if now is None or not stat.S_ISREG(now.st_mode) or (st is not None and _identity(now) != _identity(st)):
            conn.close()
            raise DatabaseRefused(self.name, f"{self.inside or self.path} changed while goex opened it")
        if dead:  # SQLite has read (and recovered) the database: the dead process's marks are done
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            for marker in dead:
                marker.unlink(missing_ok=True)
        return conn, (now.st_dev, now.st_ino)

    def _work_connection(self, file: _File, st: os.stat_result | None, checked: bool = False) -> apsw.Connection:
        """The connection actions run on, kept open between them (opening one and reading the
        schema again costs more than a small statement). Reopened when the file was replaced, or
        if it holds a TEMP object (the authorizer refuses them: this is the second line; `checked`:
        this action's dry run found none on it)."""
        key = _identity(st)
        if self._work is not None and (key is None or self._work[1] != key
                                       or (not checked and not _temp_empty(self._work[0]))):
            self._drop_work()
        if self._work is None:
            self._work = self._open(file, st)
        self._held = file
        return self._work[0]

    def _drop_work(self) -> None:
        if self._work is not None:
            self._work[0].close()
        self._work = self._held = None
        self._sidecars = {}

    def _release(self, conn: apsw.Connection, session: Any) -> None:
        """Done with the work connection: its session closed, any open transaction rolled back;
        on any trouble it is closed, and the next action opens a new one."""
        try:
            if session is not None:
                session.close()
            conn.authorizer = None
            conn.set_update_hook(None)
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
        except BaseException:
            if self._work is not None and self._work[0] is conn:
                self._work = None
            conn.close()
            raise
        if self._held is not None:
            self._remember(self._held)

    def _undo_connection(self, found: tuple[_File, os.stat_result | None] | None = None) -> apsw.Connection:
        """The connection undo uses, kept open between entries (a rollback of many entries opens
        it once): foreign-key actions and triggers off, so nothing fires from goex's own undo.
        Checked like the work connection before each use (`found`: the file as the caller's
        `_file` checked it moments ago, in the same call); reopened when the file was replaced."""
        if self._pending is not None:  # a range's undo left open and not committed: let go of it first
            self.end_range()
        file, st = found or self._file()
        if st is None:
            raise ActionFailed(f"undo on {self.name}: the database file {self.inside or self.path} is gone")
        key = _identity(st)
        if self._undo is not None and (self._undo[1] != key or not _temp_empty(self._undo[0])):
            self._undo[0].close()
            self._undo = None
            self._sidecars = {}
        if self._undo is None:
            conn, key = self._open(file, st)
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
            self._undo = (conn, key)
        return self._undo[0]

    def _remove(self, file: _File) -> None:
        """Remove a database the action created, and its sidecars: the names themselves, never
        what a link points to."""
        self._drop_work()
        if self._undo is not None:
            self._undo[0].close()
            self._undo = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            file.unlink(suffix)

    def _keyed_tables(self, conn: apsw.Connection) -> dict[str, list[int]]:
        """WITHOUT ROWID tables and their primary-key columns (rows are told apart by them),
        read again only when the schema changed."""
        version = _fetch(conn, "PRAGMA schema_version")[0][0]
        if self._keyed[0] != version:
            names = [r[0] for r in conn.execute("SELECT name FROM pragma_table_list WHERE schema = 'main' AND wr")]
            self._keyed = (version, {n: [r[0] for r in conn.execute(
                "SELECT cid FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", (n,))] for n in names})
        return self._keyed[1]

    # -- a goex process that died with the database open -----------------------------------------

    def _markers(self, file: _File) -> tuple[Path, str] | None:
        if self.workspace is None or self.workspace.hidden is None or not os.path.isdir(self.workspace.hidden):
            return None
        return Path(self.workspace.hidden, "sqlite-open"), hashlib.sha256(str(file.path).encode()).hexdigest()[:24]

    def _mark(self, file: _File) -> list[Path]:
        """Note in the journal folder that this process holds the database open (a hot journal
        it leaves when killed is its own); return the marks of dead processes on it."""
        found = self._markers(file)
        if found is None:
            return []
        folder, key = found
        if self._marker is None:
            folder.mkdir(exist_ok=True)
            self._marker = folder / f"{key}.{os.getpid()}"
            self._marker.touch()
        return [m for m in folder.glob(f"{key}.*") if m != self._marker and not _alive(m.suffix[1:])]

    def _left_by_dead_goex(self, file: _File) -> bool:
        """Whether a goex process died holding this database open, so SQLite may replay the hot
        journal it left. Never while this engine holds the database open itself: then no
        transaction of goex's is open, and the journal came from elsewhere."""
        if self._work is not None or self._undo is not None:
            return False
        found = self._markers(file)
        if found is None:
            return False
        folder, key = found
        return any(not _alive(m.suffix[1:]) for m in folder.glob(f"{key}.*") if m != self._marker)


# -- helpers -------------------------------------------------------------------------------------


def _fetch(conn: apsw.Connection, sql: str, params: Any = None) -> list[Any]:
    """The rows of a query of goex's own (catalog values: their types are known)."""
    return list(conn.execute(sql, params).fetchall())


def _session(conn: apsw.Connection) -> apsw.Session:
    """A session recording every row change of the main database, from now on."""
    session = apsw.Session(conn, "main")
    session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)  # tables without a primary key too
    session.attach()
    return session


def _execute(conn: apsw.Connection, statements: list[str], params: Any) -> tuple[dict[str, Any], int]:
    """Run the statements: the output (the rows of the last one that returns rows, else the rows
    changed) and the rows changed (SQLite's count: triggers and foreign-key actions included)."""
    output: dict[str, Any] = {}
    start = conn.total_changes()
    for sql in statements:
        columns, cursor = _query(conn, sql, params)
        if columns:
            output = format_rows(columns, cursor)
    changed = conn.total_changes() - start
    return output or {"rows_changed": changed}, changed


def _query(conn: apsw.Connection, sql: str, params: Any) -> tuple[list[str], apsw.Cursor]:
    """Run `sql`; its result columns (none for a statement that returns no rows) and the cursor.
    The columns are read as SQLite prepares the statement: a query that finds no row has
    finished by the time `execute` returns, and its cursor no longer knows them."""
    columns: list[str] = []

    def prepared(cursor: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
        columns[:] = [d[0] for d in cursor.get_description()]
        return True

    cursor = conn.cursor()
    cursor.exec_trace = prepared
    if isinstance(params, dict):
        cursor.execute(sql, params)
    else:
        cursor.execute(sql, tuple(params) if params is not None else None)
    return columns, cursor


def _composed_key(changesets: list[bytes]) -> bytes:
    """What names a range's changesets (newest first): its composed undo is kept under it."""
    return hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in changesets)).digest()


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


def changed_rows(captured: dict[str, Any], get_blob: GetBlob, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` row changes of a captured changeset, as {table, op, before, after} with the
    columns named from the journaled schema (SQLite records only the key and the changed columns
    of an UPDATE's old row); and how many changes there are in all."""
    if "changeset" not in captured:
        return [], 0
    schema = (captured.get("after") or {}).get("schema") or {}
    names: dict[str, list[str]] = {}
    out: list[dict[str, Any]] = []
    total = 0
    for change in apsw.Changeset.iter(_blob(captured["changeset"]["chunks"], get_blob)):
        total += 1
        if len(out) >= limit:
            continue
        if change.name not in names:
            names[change.name] = _columns(schema.get(change.name))
        cols = names[change.name]
        out.append({"table": change.name, "op": _OPCODES.get(change.opcode, str(change.opcode)),
                    "before": _named(change.old, cols), "after": _named(change.new, cols)})
    return out, total


_OPCODES = {apsw.SQLITE_INSERT: "INSERT", apsw.SQLITE_UPDATE: "UPDATE", apsw.SQLITE_DELETE: "DELETE"}


def _named(row: Any, cols: list[str]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {(cols[i] if i < len(cols) else f"#{i}"): v for i, v in enumerate(row) if v is not apsw.no_change}


def _columns(create: str | None) -> list[str]:
    """The column names of a CREATE TABLE statement, in order (empty when it cannot be read)."""
    import sqlglot
    from sqlglot import exp

    try:
        schema = sqlglot.parse_one(create or "", read="sqlite").find(exp.Schema)
    except sqlglot.errors.SqlglotError:
        return []
    return [c.name for c in schema.expressions if isinstance(c, exp.ColumnDef)] if schema is not None else []


def _schema(conn: apsw.Connection, tables: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for table in tables:
        rows = _fetch(conn, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        out[table] = rows[0][0] if rows else None
    return out


def _violations(conn: apsw.Connection, tables: list[str]) -> collections.Counter[tuple[Any, ...]]:
    """Foreign-key violations in `tables` (SQLite's own check, whether or not foreign_keys is on):
    (table, rowid, parent, foreign key id)."""
    return collections.Counter(tuple(r) for t in tables
                               for r in conn.execute("SELECT * FROM pragma_foreign_key_check(?)", (t,)))


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
    return {n: _fetch(conn, f"SELECT count(*) FROM {_quoted(n)}")[0][0] for n in names}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Counted:
    """SQLite's update hook: per table of the main database, how many times a row was updated or
    deleted. A row there before the action that it updated or deleted was touched at least once:
    the count bounds those rows from above (where the hook sees every change: `_shape`)."""

    def __init__(self) -> None:
        self.touches: collections.Counter[str] = collections.Counter()
        self.written: set[str] = set()  # every table of main a row was inserted into, updated or deleted

    def __call__(self, op: int, database: str, table: str, rowid: int) -> None:
        if database == "main":
            self.written.add(table)
            if op != apsw.SQLITE_INSERT:
                self.touches[table] += 1

    def every_row(self, conn: apsw.Connection, changeset: bytes) -> list[str] | None:
        """`_Touched.every_row`, from the run itself: tables that held at least 2 rows, every one
        of which the action updated or deleted; None when the bounds do not settle a table. The
        changeset names each row there before that the action changed or deleted (a lower bound:
        a row updated to the values it had is not in it) and the net rows inserted."""
        candidates = {table for table, most in self.touches.items() if most >= 2}
        if not candidates:
            return []
        changed, net = _changed(changeset, candidates)
        out = []
        for table in sorted(candidates):
            try:
                held = _fetch(conn, f"SELECT count(*) FROM {_quoted(table)}")[0][0] - net[table]
            except apsw.SQLError:  # not a table of main after all: the dry run reads it
                return None
            if held < 2 or self.touches[table] < held:
                continue
            if changed[table] < held:
                return None  # between the bounds: only the dry run's hook can tell
            out.append(table)
        return out


def _changed(changeset: bytes, tables: set[str] | None = None) -> tuple[collections.Counter[str],
                                                                      collections.Counter[str]]:
    """Per table (of `tables`, or all): rows there before that the changeset updates or deletes,
    and rows it inserts minus rows it deletes."""
    changed: collections.Counter[str] = collections.Counter()
    net: collections.Counter[str] = collections.Counter()
    for change in apsw.Changeset.iter(changeset):
        if tables is None or change.name in tables:
            if change.op != "INSERT":
                changed[change.name] += 1
            if change.op != "UPDATE":
                net[change.name] += 1 if change.op == "INSERT" else -1
    return changed, net


def _wholly(conn: apsw.Connection, changeset: bytes) -> list[str]:
    """Tables of at least 2 rows every one of which the changeset (inside its transaction)
    changed or deleted: what a run certainly did, whatever hooks miss."""
    changed, net = _changed(changeset)
    out = []
    for table, n in changed.items():
        held = _fetch(conn, f"SELECT count(*) FROM {_quoted(table)}")[0][0] - net[table]
        if 2 <= held <= n:
            out.append(table)
    return sorted(out)


class _Touched:
    """A preupdate hook: per table, the rows that existed before the action and that it updated
    or deleted (by rowid, or by primary key for WITHOUT ROWID tables; rows the action inserted
    itself do not count), and rows inserted minus rows deleted."""

    def __init__(self, keyed: dict[str, list[int]]):
        self.keyed = keyed
        self.old: dict[str, set[Any]] = {}
        self.fresh: dict[str, set[Any]] = {}  # where rows the action put (or moved) are
        self.net: dict[str, int] = {}

    def __call__(self, change: apsw.PreUpdate) -> None:
        if change.database_name != "main":
            return
        table, op = change.table_name, change.op
        fresh = self.fresh.setdefault(table, set())
        if op == "INSERT":
            fresh.add(self._key(table, change, after=True))
            self.net[table] = self.net.get(table, 0) + 1
            return
        key = self._key(table, change, after=False)
        if key not in fresh:
            self.old.setdefault(table, set()).add(key)
        fresh.discard(key)
        if op == "DELETE":
            self.net[table] = self.net.get(table, 0) - 1
        else:
            moved = self._key(table, change, after=True)
            if moved != key:  # the row now lives elsewhere: touching it there is not another row
                fresh.add(moved)
            elif key not in self.old.get(table, ()):
                fresh.add(key)

    def _key(self, table: str, change: apsw.PreUpdate, after: bool) -> Any:
        pk = self.keyed.get(table)
        if pk is None:
            return change.rowid_new if after else change.rowid
        old = change.old or ()
        new = change.new or ()
        if not after:
            return tuple(old[i] for i in pk)
        return tuple(old[i] if new[i] is apsw.no_change else new[i] for i in pk)

    def every_row(self, conn: apsw.Connection) -> list[str]:
        """Tables that held at least 2 rows, every one of which was updated or deleted."""
        out = []
        for table, keys in self.old.items():
            if len(keys) < 2:
                continue
            try:
                now = _fetch(conn, f'SELECT count(*) FROM "{table.replace(chr(34), chr(34) * 2)}"')[0][0]
            except apsw.SQLError:  # dropped by the action: `drops` says so
                continue
            held = now - self.net.get(table, 0)
            if held >= 2 and len(keys) >= held:
                out.append(table)
        return sorted(out)


# rowid tables whose declared primary key (not the rowid itself: it has an index of its own) may hold NULL
_NULLABLE_KEYS = """SELECT t.name, k.name FROM pragma_table_list t JOIN pragma_table_info(t.name) k ON k.pk > 0
  WHERE t.schema = 'main' AND t.type = 'table' AND NOT t.wr
  AND EXISTS (SELECT 1 FROM pragma_index_list(t.name) i WHERE i.origin = 'pk')
  AND EXISTS (SELECT 1 FROM pragma_table_info(t.name) c WHERE c.pk > 0 AND NOT c."notnull")
  ORDER BY t.name, k.pk"""
_Keys = dict[str, tuple[str, ...]]  # table: its primary key's columns


def _null_keyed(conn: apsw.Connection, nullable: _Keys, tables: Any) -> set[str]:
    """Of `tables`, those of `nullable` that hold a row whose key is NULL now (one seek in the
    key's index), or whose key has several columns (not looked at: a scan)."""
    return {t for t in tables if t in nullable and (len(nullable[t]) > 1 or _fetch(
        conn, f"SELECT EXISTS (SELECT 1 FROM {_quoted(t)} WHERE {_quoted(nullable[t][0])} IS NULL)")[0][0])}


def _unrecorded(conn: apsw.Connection, nullable: _Keys, before: set[str], written: set[str]) -> bool:
    """Whether a run that wrote `written` may have changed a row a session does not record: a
    session records no row whose key is NULL, and what it records of the others is the
    difference between their first and last states; that is the whole change when the tables it
    wrote held no NULL key before the run (`before`: those that did) and hold none after it."""
    return not written.isdisjoint(before) or bool(_null_keyed(conn, nullable, written))

# what the authorizer must refuse, probed by agent_privileges on a scratch database
_PROBES = {"ATTACH": "ATTACH ':memory:' AS other", "TEMP objects": "CREATE TEMP TABLE t(a)",
           "load_extension": "SELECT load_extension('x')", "PRAGMA settings": "PRAGMA journal_mode = off",
           "transaction control": "COMMIT"}


def _allowed(conn: apsw.Connection, sql: str) -> bool:
    try:
        conn.execute(sql).fetchall()
    except apsw.Error as exc:  # refused functions come back as SQLError "not authorized to use function"
        return not isinstance(exc, apsw.AuthError) and "not authorized" not in str(exc)
    return True


def _temp_empty(conn: apsw.Connection) -> bool:
    return not conn.execute("SELECT 1 FROM temp.sqlite_master LIMIT 1").fetchall()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _writer_active(st: os.stat_result | None) -> bool:
    """Whether a process holds SQLite's PENDING or RESERVED lock on the file (read from
    /proc/locks, so no descriptor of ours is closed, which would drop this process's own locks):
    its transaction is live and its journal is not hot."""
    if st is None:
        return False
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->" or fields[5] != where:
            continue
        end = (1 << 63) if fields[7] == "EOF" else int(fields[7])
        if int(fields[6]) <= _PENDING_BYTE + 1 and end >= _PENDING_BYTE:
            return True
    return False


def _image(file: _File) -> bytes:
    source = file.open()
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


def _restore_image(file: _File, image: bytes) -> None:
    source = apsw.Connection(":memory:")
    try:
        source.deserialize("main", image)
        target = file.open()
        target.set_busy_timeout(30_000)
        try:
            with target.backup("main", source, "main") as backup:
                backup.step()
        finally:
            target.close()
    finally:
        source.close()


def _checksums(file: _File) -> dict[str, str]:
    conn = file.open(apsw.SQLITE_OPEN_READONLY)
    try:
        return _checksums_conn(conn)
    finally:
        conn.close()


def _checksums_conn(conn: apsw.Connection) -> dict[str, str]:
    """sha256 per schema object: its SQL, and for tables every row: with its rowid when the table
    has no primary key (the rowid is then the row's identity, kept by undo), else sorted by value
    (a hidden rowid behind a declared key is not state: undo of a key update gives a new one)."""
    out = {"pragma:user_version": str(conn.execute("PRAGMA user_version").fetchall()[0][0]),
           "pragma:application_id": str(conn.execute("PRAGMA application_id").fetchall()[0][0])}
    for kind, name, sql in _fetch(conn, "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"):
        h = hashlib.sha256((sql or "").encode())
        if kind == "table":
            keyed = any(r[5] for r in conn.execute(f"PRAGMA table_info({_quoted(name)})").fetchall())
            if keyed:  # (WITHOUT ROWID tables always have one)
                rows = sorted(repr(tuple(r)) for r in conn.execute(f"SELECT * FROM {_quoted(name)}"))
            else:
                rows = [repr(tuple(r)) for r in conn.execute(f"SELECT rowid, * FROM {_quoted(name)} ORDER BY rowid")]
            for row in rows:
                h.update(row.encode())
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
    return _dump(_File(path, None, None))


def fingerprint_path(path: Path) -> str:
    """sha256 of what `dump_path` lists, with each table's rows written and sorted by SQLite itself
    (each row as its columns' `quote()`, exact for every type, text, blob and real alike): a
    large table costs no Python per row. Equal for equal logical states, like the dump."""
    if not path.exists():
        return hashlib.sha256(b"-- absent\n").hexdigest()
    return hashlib.sha256(_dump(_File(path, None, None), _rows_in_sql).encode()).hexdigest()


def _rows_in_python(conn: apsw.Connection, table: str) -> list[str]:
    return [f"  {r}" for r in sorted(repr(tuple(r)) for r in conn.execute(f"SELECT * FROM {_quoted(table)}"))]


def _rows_in_sql(conn: apsw.Connection, table: str) -> list[str]:
    """The rows in primary-key order, then by their text (which sorts rows a key does not tell
    apart; SQLite skips that sort where the key is unique). A different set of rows always gives a
    different text: every value is quoted unambiguously and the count comes first."""
    info = _fetch(conn, "SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", (table,))
    row = " || ',' || ".join(f"quote({_quoted(c)})" for c, _ in info) or "''"
    name = _quoted(table)
    order = [f"{name}.{_quoted(c)}" for c, _ in sorted((i for i in info if i[1]), key=lambda i: i[1])]
    text = _fetch(conn, f"SELECT count(*), group_concat(goex_row, char(10)) FROM (SELECT {row} AS goex_row "
                        f"FROM {name} ORDER BY {', '.join(order + ['goex_row'])})")[0]
    return [f"  {text[0]} rows", text[1] or ""]


def _dump(file: _File, rows_of: Callable[[apsw.Connection, str], list[str]] = _rows_in_python) -> str:
    conn = file.open(apsw.SQLITE_OPEN_READONLY)
    try:
        lines = [f"user_version {conn.execute('PRAGMA user_version').fetchall()[0][0]}",
                 f"application_id {conn.execute('PRAGMA application_id').fetchall()[0][0]}"]
        objects = _fetch(conn, "SELECT type, name, tbl_name, sql FROM sqlite_master "
                               "WHERE name NOT LIKE 'sqlite_autoindex%' ORDER BY type, name")
        for kind, name, table, sql in objects:
            if name.lower().startswith("goex_"):
                continue
            lines.append(f"{kind} {name} on {table}: {' '.join((sql or '').split())}")
            if kind == "table":
                lines.extend(rows_of(conn, name))
        return "\n".join(lines) + "\n"
    finally:
        conn.close()


def sqlite_path(url: str, root: Path | None = None) -> Path:
    raw = url[len("sqlite:///"):]
    if raw.startswith("/"):
        return Path(raw)
    return (root or Path(os.getcwd())) / raw
