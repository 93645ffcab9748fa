"""MySQL / MariaDB engine, through PyMySQL.

Undo data is a before-image of exactly the rows an action can change, read inside the action's
own transaction with locking reads (so it is the state the statements acted on) and stored as
a content-addressed blob (unchanged images deduplicate across entries):

* A single `UPDATE`/`DELETE` on one table with a primary key, no triggers and no foreign keys
  that cascade from it, whose WHERE is a plain deterministic predicate, images only the rows
  its WHERE selects (`SELECT ... WHERE ... FOR UPDATE`, the same locks the statement takes).
  It runs in three round trips (see `_stage_fast`), several statements written at once on the
  agent connection and their results read in order (`_pipeline`; still one statement per
  command, no multi-statements): the session reset and its check (skipped when the last use of
  the connection left its session as the reset did: `_Connection.clean`), the image, then the
  table's definition, triggers and referring foreign keys read under the image's locks and
  compared with those the kept schema was read under (a difference drops the image and reads the
  schema again); the statement and its after-rows, with the referring foreign keys read again
  when it may set one off (`_may_cascade`: a table created with a foreign key is not held off by
  the image's locks); the commit. One that matches more rows than the image holds, or after
  which the referring foreign keys differ, is rolled back and runs the general way.
* Any other DML images whole tables: every table a statement names, every table reachable from
  them through foreign keys with ON DELETE/UPDATE CASCADE, SET NULL or SET DEFAULT (MySQL does
  not fire triggers for cascaded changes, so trigger-based capture would miss them), every base
  table of a view they name, and every table a trigger on any of those mentions, to a fixpoint.

Either way the entry keeps only the rows that differ after the statements (by primary key, or
as counts of identical rows in a table without one), before and after. Conflicts are per row:
undo checks and rewrites only those rows, and refuses when a row written since would be left
referring to a row it removes, or a row it puts back would refer to one that is gone.
* DDL commits implicitly, also in the middle of an action, so an action with DDL (or SQL
  sqlglot cannot read) images the whole database before it runs: for every table its
  SHOW CREATE TABLE text (AUTO_INCREMENT included) and rows, every view and every trigger.
  Undo drops and recreates exactly the objects the action changed.

Undo runs with FOREIGN_KEY_CHECKS=0 on goex's own connection, so nothing cascades. MySQL
cannot disable triggers, so the user triggers of a table being restored are dropped for the
duration of the undo and recreated afterwards from their SHOW CREATE TRIGGER text, with their
sql_mode, in their original order. While they are dropped (a few milliseconds), writes by
other clients to that table do not fire them.

AUTO_INCREMENT positions are state, not definition: a rolled-back dry run or failed action, and
an undo, set the counter back with ALTER TABLE ... AUTO_INCREMENT = n (InnoDB on MariaDB 10.11
lowers it to any value above the largest key in the table, which is always true of a recorded
position); undo only when no one moved it since; tables rebuilt from their image get it from
the CREATE TABLE text. Sequences are not transactional: goex reads a sequence's exact state by
taking its next value and restarting it there, sets back what a dry run or a failed action took,
and undo sets it back unless another client took values since (a conflict).

Limits: rows are imaged as SQL literals (QUOTE(), hex for binary and spatial columns, numbers
for BIT); TIMESTAMP values are read and written in UTC. Non-transactional tables (MyISAM,
MEMORY) cannot be rolled back if an action fails half-way; goex restores them from the image.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import sqlglot
from pymysql.connections import MAX_PACKET_LEN, TEXT_TYPES
from pymysql.constants import CLIENT, COMMAND, FIELD_TYPE, SERVER_STATUS
from pymysql.protocol import OKPacketWrapper
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import TokenType

from ...errors import ActionFailed, Unforceable
from ...journal.anchor import state_dir
from .common import (
    QUOTED,
    GetBlob,
    PutBlob,
    SqlRefused,
    Staged,
    UndoRefused,
    analyse,
    format_rows,
    is_goex_name,
    read_tokens,
    tokens,
    uncommented,
    words,
)
from .server import Plan, ServerEngine
from .server import convert_params as _convert

__all__ = ["MysqlEngine", "agent_account", "convert_params", "dangerous_grants", "drop_agent_account", "dump",
           "parse_url"]

_READS = {"select", "show", "describe", "explain", "desc"}
_DML = {"insert", "update", "delete", "replace"}
_ALLOWED_FIRST = {"select", "with", "insert", "replace", "update", "delete", "create", "drop", "alter", "rename",
                  "truncate", "show", "describe", "desc", "explain", "values", "table", "("}
_TXN = {"begin", "start", "commit", "rollback", "savepoint", "release", "xa", "end"}
_CREATABLE = {"table", "index", "view", "trigger"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point", "linestring",
           "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection"}
_SAFE_WHERE = (exp.Column, exp.Literal, exp.Placeholder, exp.Identifier, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT,
               exp.LTE, exp.And, exp.Or, exp.Not, exp.Paren, exp.In, exp.Between, exp.Is, exp.Null, exp.Boolean,
               exp.Like, exp.Neg, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Tuple, exp.NullSafeEQ, exp.ILike)
_BLOCK_WORDS = {"IF", "LOOP", "WHILE", "REPEAT"}
_STATEMENT_START = {";", "BEGIN", "THEN", "ELSE", "DO", "LOOP", "REPEAT", ":"}
#: what the agent account may do, on the declared database only: read and change rows, and create,
#: alter and drop the tables, indexes, views and triggers goex undoes (no FILE, SUPER, PROCESS,
#: GRANT OPTION, routines, events, temporary tables or locks)
AGENT_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "INDEX", "CREATE VIEW",
                    "SHOW VIEW", "TRIGGER", "REFERENCES")
_GRANT = re.compile(r"^GRANT (?P<privs>.+?) ON (?:(?:FUNCTION|PROCEDURE|PACKAGE(?: BODY)?) )?"
                    r"(?P<db>`(?:[^`]|``)*`|\*)\.(?P<obj>`(?:[^`]|``)*`|\*) TO ", re.S)
#: session settings a reset returns to the server's, checked before the agent's connection is used
_CLEAN = ("sql_mode", "foreign_key_checks", "unique_checks", "time_zone", "tx_isolation", "max_statement_time",
          "check_constraint_checks", "sql_safe_updates", "big_tables", "sql_select_limit", "max_join_size",
          "character_set_server", "collation_server", "div_precision_increment", "group_concat_max_len")
_COM_RESET_CONNECTION = 0x1F
_AI = re.compile(r" AUTO_INCREMENT=(\d+)")
_BATCH = 1 << 20  # bytes of row literals per INSERT on restore
# what a table's schema depends on beyond its SHOW CREATE TABLE text: its triggers (a trigger's
# body names the tables it writes) and the foreign keys of other tables that reference it
#: a table's triggers (by EVENT_OBJECT_SCHEMA and EVENT_OBJECT_TABLE, the columns the server looks the
#: table up by: only that table's trigger file is read) and the foreign keys that refer to it; sorted
#: here (`_sorted_links`), not by the server (a sort of its temporary table)
_LINKS_OF = ("SELECT TRIGGER_NAME,ACTION_TIMING,EVENT_MANIPULATION,ACTION_ORDER,ACTION_STATEMENT "
             "FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA=%s AND EVENT_OBJECT_TABLE=%s",
             "SELECT CONSTRAINT_NAME,TABLE_NAME,UPDATE_RULE,DELETE_RULE FROM "
             "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA=%s AND UNIQUE_CONSTRAINT_SCHEMA=%s "
             "AND REFERENCED_TABLE_NAME=%s")


# -- public helpers ----------------------------------------------------------------------------


def parse_url(url: str) -> dict[str, Any]:
    """Connection arguments of a mysql://, mariadb:// or mysql+pymysql:// URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("mysql", "mariadb", "mysql+pymysql"):
        raise ActionFailed(f"{url!r} is not a MySQL URL; write mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ActionFailed(f"{url!r} names no database; write mysql://USER@HOST:PORT/DATABASE")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"goex_account", "goex_password"})
    if unknown:
        raise ActionFailed(f"{url!r}: unknown option {unknown[0]!r}; the only options are goex_account=NAME and "
                           "goex_password=PASSWORD (the least-privilege account agent SQL runs as)")
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
            "user": unquote(parts.username or "root"), "password": unquote(parts.password or ""),
            "database": database, "account": (query.get("goex_account") or [""])[-1] or None,
            "account_password": (query.get("goex_password") or [""])[-1]}


def convert_params(statement: str, params: Any, dialect: str = "mysql") -> tuple[str, Any]:
    """`statement` and `params` in PyMySQL's style (see `server.convert_params`)."""
    return _convert(statement, params, dialect, MysqlEngine.PARAM_NAME)


def dump(url: str) -> str:
    """Canonical text of the database at `url` (see `MysqlEngine.dump`)."""
    engine = MysqlEngine(url)
    try:
        return engine.dump()
    finally:
        engine.close()


def agent_account(database: str) -> str:
    """Name of goex's least-privilege account for `database` (one per database name, so every
    process acting on it shares it; `goex_` names are refused in agent SQL)."""
    return "goex_a_" + hashlib.sha256(database.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def drop_agent_account(url: str) -> None:
    """Drop goex's agent account for the database at `url` and forget its password (for a
    database that is being dropped)."""
    args = parse_url(url)
    user = agent_account(args["database"])
    conn = pymysql.connect(host=args["host"], port=args["port"], user=args["user"], password=args["password"],
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
    finally:
        _close(conn)
    _secret_file(args["host"], args["port"], user).unlink(missing_ok=True)


def dangerous_grants(grants: list[str], database: str) -> list[str]:
    """What SHOW GRANTS lines give beyond `database`: global privileges (FILE, SUPER, PROCESS,
    CREATE USER, ALL, ...), privileges on any other database (mysql.* included) or on a name
    pattern, GRANT OPTION, PROXY, and roles."""
    out: list[str] = []
    for line in grants:
        found = _GRANT.match(line)
        if found is None:
            role = re.match(r"GRANT (PROXY ON|[`'].*?[`']) ", line)
            if role:
                out.append("PROXY" if role.group(1) == "PROXY ON" else f"role {role.group(1)}")
            continue
        if "WITH GRANT OPTION" in line[found.end():] and "GRANT OPTION" not in out:
            out.append("GRANT OPTION")
        privileges = [p.strip() for p in re.split(r",(?![^(]*\))", found.group("privs"))]
        db = found.group("db")
        if db == "*":
            out.extend(f"{p} ON *.*" for p in privileges if p.upper() != "USAGE")
        elif _grant_db(db) != database:
            pattern = " (a name pattern: write _ and % in it as \\_ and \\%)" if _grant_db(db) is None else ""
            out.append(f"{', '.join(privileges)} ON {db}.{found.group('obj')}{pattern}")
    return out


def _grant_db(quoted: str) -> str | None:
    """The database a GRANT's `db` names, or None when it is a pattern (unescaped _ or %)."""
    name = quoted[1:-1].replace("``", "`")
    out = []
    i = 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name):
            out.append(name[i + 1])
            i += 2
            continue
        if name[i] in "_%":
            return None
        out.append(name[i])
        i += 1
    return "".join(out)


def _grant_target(database: str) -> str:
    """`database` quoted for GRANT ... ON `db`.*, its _ and % escaped (they are patterns there)."""
    return _q(re.sub(r"([_%\\])", r"\\\1", database))


def _create_account(cur: Any, user: str, password: str, database: str) -> None:
    """Create the agent account if missing, set its password, grant it the database (idempotent)."""
    cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (user, password))
    cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (user, password))
    cur.execute(f"GRANT {', '.join(AGENT_PRIVILEGES)} ON {_grant_target(database)}.* TO %s@'%%'", (user,))


def _secret_file(host: str, port: int, user: str) -> Path:
    return state_dir() / "mysql-accounts" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}_{port}_{user}"


def _write_secret(path: Path, password: str) -> None:
    """Atomically, readable by this user only: processes sharing the state directory share it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.write(fd, password.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _can_login(engine: "MysqlEngine", user: str, password: str) -> bool:
    try:
        _close(engine._connect(user, password))
        return True
    except ActionFailed:
        return False


# -- small helpers -----------------------------------------------------------------------------


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _lit(column: str, dtype: str) -> str:
    """An SQL expression giving the column's value as an SQL literal that restores it exactly."""
    q = _q(column)
    if dtype in _BINARY:
        return f"IF({q} IS NULL,'NULL',CONCAT('X''',HEX({q}),''''))"
    if dtype == "bit":
        return f"IF({q} IS NULL,'NULL',CAST({q}+0 AS CHAR))"
    return f"CONVERT(QUOTE({q}) USING utf8mb4)"


class _NoBackslashEscapes(MySQL.Tokenizer):  # sql_mode NO_BACKSLASH_ESCAPES
    STRING_ESCAPES = ["'", '"']


class _AnsiQuotes(MySQL.Tokenizer):  # sql_mode ANSI_QUOTES: "..." is a name
    QUOTES = ["'"]
    IDENTIFIERS = ["`", '"']


def _executable_comment(sql: str) -> bool:
    """Whether the server would run an executable comment (`/*! ... */`, `/*M! ... */`) in `sql`,
    under any sql_mode's quoting, as sqlglot's MySQL tokenizer reads it in each. Text that one of
    them cannot read counts as holding one (the server could read it another way)."""
    if "/*!" not in sql and "/*M!" not in sql:
        return False
    for tokenizer in (MySQL.Tokenizer, _NoBackslashEscapes, _AnsiQuotes):
        try:
            found = tokenizer().tokenize(sql)
        except sqlglot.errors.TokenError:
            return True
        if any(c.startswith(("!", "M!")) for tok in found for c in tok.comments):
            return True
    return False


def _refuse_executable(sql: str) -> None:
    if _executable_comment(sql):
        raise SqlRefused("executable comments (/*! ... */, /*M! ... */) are not allowed: the server runs their "
                         "text, which goex's checks would not see; write the statement without them")


def _uncommented(sql: str) -> str:
    """`sql` without its comments, as sqlglot's MySQL tokenizer reads them."""
    return uncommented(sql, "mysql")


def _words(statement: str) -> list[str]:
    return words(statement, "mysql")


def _tokens(statement: str) -> tuple[Any, ...]:
    try:
        return tokens(statement, "mysql")
    except sqlglot.errors.TokenError:
        return ()


def _names(statement: str) -> set[str]:
    """Every identifier the statement mentions, lowercased (over-approximates the tables it names)."""
    return {tok.text.lower() for tok in _tokens(statement) if tok.token_type not in QUOTED} | set(_words(statement))


class _Meta:
    """The schema of the database, read from information_schema in one query."""

    def __init__(self, cur: Any, db: str, only: str | None = None,
                 found: list[tuple[Any, ...]] | None = None):
        # `only`: just one table's columns, key, triggers and foreign keys (a cheaper read);
        # `found`: the rows of `query(db, only)`, read already
        if found is None:
            cur.execute(*self.query(db, only))
            found = list(cur.fetchall())
        self._read(found)

    @staticmethod
    def query(db: str, only: str | None = None) -> tuple[str, tuple[str, ...]]:
        """The one query the schema is read with, and its arguments."""
        one = " AND TABLE_NAME=%s" if only else ""
        args: tuple[str, ...] = (db, only) if only else (db,)
        parts = [
            ("SELECT 'T',TABLE_NAME,TABLE_TYPE,NULL,NULL,NULL,0 FROM information_schema.TABLES "
             "WHERE TABLE_SCHEMA=%s" + one, args),
            ("SELECT 'C',TABLE_NAME,COLUMN_NAME,DATA_TYPE,IS_GENERATED,CONCAT(EXTRA,'|',IFNULL(COLUMN_DEFAULT,'')),"
             "ORDINAL_POSITION FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s" + one, args),
            ("SELECT 'P',TABLE_NAME,COLUMN_NAME,NULL,NULL,NULL,SEQ_IN_INDEX FROM information_schema.STATISTICS "
             "WHERE TABLE_SCHEMA=%s AND INDEX_NAME='PRIMARY'" + one, args),
            ("SELECT 'R',REFERENCED_TABLE_NAME,TABLE_NAME,UPDATE_RULE,DELETE_RULE,CONSTRAINT_NAME,0 FROM "
             "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA=%s AND UNIQUE_CONSTRAINT_SCHEMA=%s"
             + (" AND (REFERENCED_TABLE_NAME=%s OR TABLE_NAME=%s)" if only else ""),
             (db, db, only, only) if only else (db, db)),
            ("SELECT 'G',EVENT_OBJECT_TABLE,TRIGGER_NAME,ACTION_STATEMENT,NULL,NULL,0 FROM information_schema.TRIGGERS "
             "WHERE TRIGGER_SCHEMA=%s" + (" AND EVENT_OBJECT_TABLE=%s" if only else ""), args),
        ]
        if not only:
            parts.append(("SELECT 'V',TABLE_NAME,VIEW_DEFINITION,NULL,NULL,NULL,0 FROM information_schema.VIEWS "
                          "WHERE TABLE_SCHEMA=%s", (db,)))
        return " UNION ALL ".join(q for q, _ in parts), tuple(a for _, values in parts for a in values)

    def _read(self, found: list[tuple[Any, ...]]) -> None:
        self.tables: dict[str, str] = {}
        self.views: set[str] = set()
        self.sequences: dict[str, str] = {}  # lowercased name -> name
        self.columns: dict[str, list[tuple[str, str, bool]]] = {}
        self.auto: set[str] = set()  # tables with an AUTO_INCREMENT column
        self.defaults: dict[str, list[str]] = {}  # column DEFAULT texts (a DEFAULT NEXTVAL(seq) names its sequence)
        self.pk: dict[str, list[str]] = {}
        self.children: dict[str, set[str]] = {}  # parent -> children whose foreign key cascades or sets
        self.references: dict[str, set[str]] = {}  # parent -> every child table with a foreign key to it
        self.parents: dict[str, set[str]] = {}  # child -> every parent table
        self.triggers: dict[str, list[tuple[str, str]]] = {}
        self.view_sql: dict[str, str] = {}
        for kind, table, a, b, c, d, _order in sorted(found, key=lambda r: (r[0], r[1] or "", int(r[6] or 0))):
            if kind == "T":
                if is_goex_name(table):
                    continue
                if a == "VIEW":
                    self.views.add(table)
                elif a == "SEQUENCE":
                    self.sequences[table.lower()] = table
                else:
                    self.tables[table.lower()] = table
            elif kind == "C":
                self.columns.setdefault(table, []).append((a, b.lower(), c == "ALWAYS"))
                extra, _, default = (d or "").partition("|")
                if "auto_increment" in extra.lower():
                    self.auto.add(table)
                if default:
                    self.defaults.setdefault(table, []).append(default)
            elif kind == "P":
                self.pk.setdefault(table, []).append(a)
            elif kind == "R":
                if {b, c} - {"RESTRICT", "NO ACTION"}:
                    self.children.setdefault(table, set()).add(a)
                self.references.setdefault(table, set()).add(a)
                self.parents.setdefault(a, set()).add(table)
            elif kind == "G":
                self.triggers.setdefault(table, []).append((a, b))
            elif kind == "V":
                self.view_sql[table] = a
        for table in self.sequences.values():  # a sequence is a table to information_schema.COLUMNS
            self.columns.pop(table, None)

    def resolve(self, names: set[str]) -> set[str]:
        """Base tables among `names` and the views they name, closed over cascading foreign keys
        and the tables triggers on them mention."""
        lower_views = {v.lower(): v for v in self.views}
        todo = set(names)
        seen_views: set[str] = set()
        out: set[str] = set()
        while todo:
            name = todo.pop().lower()
            if name in self.tables:
                table = self.tables[name]
                if table in out:
                    continue
                out.add(table)
                todo.update(self.children.get(table, ()))
                for _, body in self.triggers.get(table, ()):
                    todo.update(_names(body))
            elif name in lower_views and name not in seen_views:
                seen_views.add(name)
                todo.update(_names(self.view_sql.get(lower_views[name]) or ""))
        return out

    def insertable(self, table: str) -> list[tuple[str, str]]:
        return [(c, t) for c, t, generated in self.columns.get(table, []) if not generated]


def _row_sql(meta: _Meta, table: str) -> tuple[str, list[str], list[str] | None]:
    """SELECT list (key literal, row literal), insertable columns, primary key columns."""
    cols = meta.insertable(table)
    types = dict(cols)
    pk = meta.pk.get(table)
    row = "CONCAT_WS(','," + ",".join(_lit(c, t) for c, t in cols) + ")"
    key = ("CONCAT_WS(','," + ",".join(_lit(c, types.get(c, "")) for c in pk) + ")") if pk else "NULL"
    return f"{key},{row}", [c for c, _ in cols], pk


def _fp(create: str | None, rows: list[str]) -> str:
    """A table's fingerprint: its definition, its rows, and its AUTO_INCREMENT position apart (a
    counter is state that undo restores, never a change of someone else's to refuse: `_core`)."""
    counter = _AI.search(create or "")
    return (f"{_sha(_definition(create) if create else '')[:24]}:{_sha(chr(10).join(sorted(rows)))[:40]}"
            + (f":{counter.group(1)}" if counter else ""))


def _core(fp: str | None) -> str | None:
    """A fingerprint without the counter: what undo compares to find another client's change."""
    return ":".join(fp.split(":")[:2]) if fp else fp


def _differs(object_: str, then: str | None, now: str | None) -> str:
    if now is None:
        return f"{object_} is gone"
    if then is None:
        return f"{object_} was created since"
    if then.split(":")[0] != now.split(":")[0]:
        return f"the definition of {object_} changed since the action"
    return f"rows of {object_} changed since the action"


# -- the engine --------------------------------------------------------------------------------


class _Connection(pymysql.connections.Connection):
    """PyMySQL's connection with its default TLS context (TLS when the server offers it) built
    once per process: building one reads the system's CA store, about 20 ms per connection."""

    _preferred: Any = None
    ended = False  # the last command was a COMMIT or ROLLBACK: no transaction is open
    #: the session is as its reset and check left it: since them only goex's own reads and one
    #: fast statement that `_effects` finds pure ran on it, and the transaction was committed; set by
    #: that commit, cleared whenever the connection is taken again
    clean = False

    def query(self, sql: Any, unbuffered: bool = False) -> int:
        self.ended = False
        return super().query(sql, unbuffered)

    def begin(self) -> None:
        self.ended = False
        super().begin()

    def commit(self) -> None:
        super().commit()
        self.ended = True

    def rollback(self) -> None:
        """ROLLBACK, unless the last command ended the transaction already (one round trip less)."""
        if not self.ended:
            super().rollback()
            self.ended = True

    def _create_ssl_ctx(self, sslp: Any) -> Any:
        if sslp != {}:  # TLS options of the caller's own: as PyMySQL builds them
            return super()._create_ssl_ctx(sslp)
        if _Connection._preferred is None:
            _Connection._preferred = super()._create_ssl_ctx({})
        return _Connection._preferred


_TXN_REFUSED = "{word} is not allowed: goex runs each action as one transaction and ends it itself; send the " \
    "statements without transaction control"


class MysqlEngine(ServerEngine[Any]):
    kind = "mysql"
    dialect = "mysql"
    PARAM_NAME = r"\w+"
    REFUSED_FIRST = {
        **dict.fromkeys(_TXN, _TXN_REFUSED),
        "set": "SET is not allowed: session and global variables (autocommit, foreign_key_checks, sql_log_bin, "
               "...) change how statements behave outside what goex can undo; write the statements without it",
        "use": "USE is not allowed: an action acts on the database it names; name another database as its own "
               "entry in the runtime's databases",
        **dict.fromkeys(("lock", "unlock"), "LOCK/UNLOCK TABLES is not allowed: goex's transaction takes the locks "
                        "it needs"),
        "load": "LOAD DATA/XML is not allowed: it reads files outside the database; insert the rows with INSERT "
                "instead",
        "handler": "HANDLER is not allowed: use SELECT",
    }
    REFUSED_CALLS = dict.fromkeys(("load_file", "get_lock", "release_lock", "release_all_locks", "sys_exec",
                                   "sys_eval"),
                                  "{name}() is not allowed: it reaches outside the action's transaction (files or "
                                  "session locks)")
    DRIVER_ERROR = pymysql.Error

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.args = parse_url(url)
        self.db = self.name = self.args["database"]
        self._recent: dict[str, bytes] = {}  # blobs of the latest DDL image: a failed stage restores from them
        self._databases: set[str] | None = None
        self._agent: tuple[str, str] | None = None  # (user, password) agent statements log in as
        self._clean = list(_CLEAN)  # the settings this server knows, of those a reset is checked on
        self._metas: dict[str, tuple[Any, _Meta]] = {}  # table -> (what it was read under, its schema)

    # -- connections -----------------------------------------------------------------------------

    def _connect(self, user: str | None = None, password: str | None = None) -> Any:
        """A connection as the owner (the URL's account), or as `user`. One statement per call
        (no multi-statements) and no LOCAL INFILE, whatever the text."""
        try:
            conn = _Connection(host=self.args["host"], port=self.args["port"], user=user or self.args["user"],
                                   password=self.args["password"] if password is None else password,
                                   database=self.db, charset="utf8mb4", autocommit=False, local_infile=False)
        except pymysql.Error as exc:
            where = f"{self.args['host']}:{self.args['port']} as {user or self.args['user']}"
            raise ActionFailed(f"cannot connect to MySQL database {self.db!r} at {where}: {exc}; "
                               "nothing was applied") from None
        assert not conn.client_flag & CLIENT.MULTI_STATEMENTS
        return conn

    @property
    def _spare(self) -> Any:
        """The agent connection kept for the next action."""
        return self._idle[-1] if self._idle else None

    @_spare.setter
    def _spare(self, conn: Any) -> None:
        self._idle = [conn] if conn is not None else []

    def _describe(self, exc: Exception) -> tuple[str, str | None, bool]:
        args = exc.args
        return (f"{args[1]} (error {args[0]})" if len(args) >= 2 else str(exc)), None, False

    def _own_connect(self, fresh: bool) -> Any:
        return self._admin()

    def _reset_own(self, conn: Any) -> None:
        _own_session(conn)

    def _is_open(self, conn: Any) -> bool:
        return bool(conn.open)

    def _rollback(self, conn: Any) -> None:
        _rollback(conn)

    def _close(self, conn: Any) -> None:
        _close(conn)

    def _reset(self, conn: Any) -> None:
        """COM_RESET_CONNECTION (user variables, session settings, temporary tables, prepared
        statements, locks, roles all gone), then one statement that fails unless the session is
        clean, turns autocommit off (the reset turns it on) and adds NO_DIR_IN_CREATE to sql_mode."""
        conn.clean = False
        conn._execute_command(_COM_RESET_CONNECTION, b"")
        conn._read_ok_packet()
        while True:
            try:
                with conn.cursor() as cur:
                    cur.execute(self._clean_check())
                return
            except pymysql.err.OperationalError as exc:
                unknown = re.search(r"Unknown system variable '(\w+)'", str(exc))
                if exc.args[0] != 1193 or not unknown or unknown.group(1).lower() not in self._clean:
                    raise
                self._clean.remove(unknown.group(1).lower())  # not on this server version
            except pymysql.Error as exc:
                if exc.args and exc.args[0] == 1231:  # NULL: some check failed
                    raise ActionFailed(f"sql.execute on {self.db}: the agent connection's session still held "
                                       "settings after a reset; nothing was applied") from None
                raise

    def _clean_check(self) -> str:
        """The statement that follows a reset (see `_reset`)."""
        same = " AND ".join(f"@@session.{v} <=> @@global.{v}" for v in self._clean)
        # NO_DIR_IN_CREATE: the server ignores DATA/INDEX DIRECTORY, which would put table files in
        # any server folder without the FILE privilege
        return (f"SET autocommit = IF({same} AND CURRENT_ROLE() IS NULL AND @@in_transaction = 0 "
                "AND @@character_set_client = 'utf8mb4', 0, NULL), "
                "sql_mode = CONCAT_WS(',', NULLIF(@@global.sql_mode, ''), 'NO_DIR_IN_CREATE')")

    def _kept(self, plain: bool) -> tuple[Any, str | None]:
        """An agent connection and what it still needs: a kept one that is `clean` (see
        `_Connection`) needs no reset ("clean"); another kept one its reset ("reset"), when what
        will be sent on it is `plain` (quoted the same whatever the session's NO_BACKSLASH_ESCAPES,
        which the reset may change); else one `_take` reset (None)."""
        with self._lock:
            conn = self._idle.pop() if self._idle and (plain or self._idle[-1].clean) else None
        if conn is None:
            return self._take(), None
        clean, conn.clean = conn.clean, False
        return conn, "clean" if clean else "reset"

    def _after_reset(self, conn: Any, queries: list[str], reset: bool = True) -> tuple[Any, list[Any]]:
        """`queries` run on a kept connection (see `_pipeline`) right after its reset and the
        check that follows it (`reset`; else on a clean one as it is), all in one round trip.
        Were the reset or its check to fail, or the connection to be gone (a server restart, its
        idle timeout), the queries' results are dropped (they only read) and the connection
        closed; a new one runs them."""
        try:
            if not reset:
                return conn, _pipeline(conn, queries)
            results = _pipeline(conn, [(_COM_RESET_CONNECTION, b""), self._clean_check(), *queries])
            if not any(isinstance(r, Exception) for r in results[:2]):
                return conn, results[2:]
        except pymysql.Error:
            pass
        _close(conn)
        conn = self._take()
        try:
            return conn, _pipeline(conn, queries)
        except BaseException:
            _close(conn)
            raise

    def _agent_connect(self, checked: bool = True) -> Any:
        """A connection as the least-privilege account agent statements run as (see `_account`);
        refused when that account holds privileges beyond the database (`checked`)."""
        if self._agent is None:
            self._agent = self._account()
        try:
            conn = self._connect(*self._agent)
        except ActionFailed:
            if self.args.get("account") or self._agent[0] == self.args["user"]:
                raise
            self._agent = self._account(rotate=True)  # another process set a password this one does not know
            conn = self._connect(*self._agent)
        if checked:
            dangerous = self._privileges(conn)["dangerous"]
            if dangerous:
                _close(conn)
                raise ActionFailed(f"sql.execute on {self.db}: the account agent SQL runs as ({self._agent[0]}) holds "
                                   f"{', '.join(dangerous)}; it may hold privileges on {self.db} only: revoke them, "
                                   "or name another account with ?goex_account=NAME&goex_password=PASSWORD; "
                                   "nothing was applied")
        return conn

    def _account(self, rotate: bool = False) -> tuple[str, str]:
        """(user, password) of the agent account: the one the URL names (goex_account), else
        goex's own per-database account, created (or its password set) by the owner when this
        process does not know its password; else the owner itself when it is least-privilege.

        The password is random, set by whichever process finds it unknown, under a server lock
        (GET_LOCK), and kept in the user's state directory (mode 0600), so processes of one user
        share it; a process with another state directory sets a new one, and the others set theirs
        again at their next new connection (open connections stay logged in)."""
        named = self.args.get("account")
        if named:
            return named, self.args.get("account_password") or ""
        user = agent_account(self.db)
        secret = _secret_file(self.args["host"], self.args["port"], user)
        if not rotate and secret.exists():
            return user, secret.read_text().strip()
        owner = self._connect()
        try:
            with owner.cursor() as cur:
                cur.execute("SELECT GET_LOCK(%s, 60)", (f"goex:account:{user}",))
                try:
                    known = secret.read_text().strip() if secret.exists() else None
                    if known is not None and _can_login(self, user, known):
                        return user, known  # another process of this user set it meanwhile
                    password = secrets.token_urlsafe(24)
                    try:
                        _create_account(cur, user, password, self.db)
                    except pymysql.Error as exc:
                        if exc.args and exc.args[0] not in (1044, 1045, 1142, 1227, 1396):
                            raise
                        return self._owner_as_agent(owner, exc)
                    _write_secret(secret, password)
                    return user, password
                finally:
                    cur.execute("SELECT RELEASE_LOCK(%s)", (f"goex:account:{user}",))
        finally:
            _close(owner)

    def _owner_as_agent(self, owner: Any, why: Exception) -> tuple[str, str]:
        """The owner runs agent statements only when it is least-privilege itself."""
        dangerous = self._privileges(owner)["dangerous"]
        if not dangerous:
            return self.args["user"], self.args["password"]
        raise ActionFailed(f"sql.execute on {self.db}: the account {self.args['user']!r} holds "
                           f"{', '.join(dangerous)} and cannot create the least-privilege account agent SQL runs as "
                           f"({why.args[-1] if why.args else why}); give it CREATE USER and GRANT OPTION on the "
                           "database, or name an account with privileges on this database only: "
                           "?goex_account=NAME&goex_password=PASSWORD; nothing was applied")

    def _privileges(self, conn: Any) -> dict[str, Any]:
        with conn.cursor() as cur:
            cur.execute("SHOW GRANTS FOR CURRENT_USER()")
            grants = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT CURRENT_USER()")
            runs_as = cur.fetchone()[0]
        return {"runs_as": runs_as, "dangerous": dangerous_grants(grants, self.db), "grants": grants}

    def agent_privileges(self) -> dict[str, Any]:
        """The account agent statements run as and the dangerous privileges it holds (SHOW GRANTS)."""
        try:
            conn = self._agent_connect(checked=False)
            try:
                found = self._privileges(conn)
            finally:
                _close(conn)
        except (ActionFailed, pymysql.Error) as exc:
            return {"runs_as": self.args.get("account") or agent_account(self.db), "safe": False,
                    "dangerous": [], "detail": f"cannot check: {exc}"}
        dangerous = found["dangerous"]
        detail = (f"privileges on {self.db} only" if not dangerous
                  else f"holds {', '.join(dangerous)} beyond the database {self.db}")
        return {"runs_as": found["runs_as"], "safe": not dangerous, "dangerous": dangerous, "detail": detail,
                "grants": found["grants"]}

    def _admin(self) -> Any:
        """A new connection for goex's own work (see `_own`)."""
        conn = self._connect()
        _own_session(conn)
        return conn

    # -- analysis --------------------------------------------------------------------------------

    def split(self, sql: str) -> list[str]:
        """Statements split on top-level semicolons; CREATE TRIGGER/PROCEDURE/FUNCTION/EVENT bodies
        (BEGIN ... END, with IF/CASE/LOOP/WHILE/REPEAT blocks inside) stay whole."""
        _refuse_executable(sql)
        tokens = read_tokens(sql, "mysql")
        out: list[str] = []
        start = None
        end = 0
        depth = 0
        compound = False
        head: list[str] = []
        prev = ";"
        skip = -1
        for i, tok in enumerate(tokens):
            word = tok.text.upper() if tok.token_type not in QUOTED and tok.token_type != TokenType.IDENTIFIER else ""
            if tok.token_type == TokenType.SEMICOLON and depth == 0:
                if start is not None:
                    out.append(sql[start:end + 1].strip())
                start, compound, head, prev = None, False, [], ";"
                continue
            if start is None:
                start = tok.start
            end = tok.end
            if len(head) < 8 and word:
                head.append(word)
                if head[0] == "CREATE" and word in ("TRIGGER", "PROCEDURE", "FUNCTION", "EVENT"):
                    compound = True
            if compound and i != skip and word:
                if word == "END":
                    depth = max(0, depth - 1)
                    if i + 1 < len(tokens) and tokens[i + 1].text.upper() in _BLOCK_WORDS | {"CASE"}:
                        skip = i + 1
                elif word in ("BEGIN", "CASE"):
                    depth += 1
                elif word in _BLOCK_WORDS and prev in _STATEMENT_START:
                    depth += 1
            prev = word or tok.text
        if start is not None:
            out.append(sql[start:end + 1].strip())
        if not out:
            raise ActionFailed("sql.execute: no statement in 'sql'")
        return out

    def _other_databases(self) -> set[str]:
        if self._databases is None:
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW DATABASES")
                    self._databases = {r[0].lower() for r in cur.fetchall()} - {self.db.lower()}
            finally:
                _close(conn)
        return self._databases

    def _screen(self, statement: str) -> None:
        _refuse_executable(statement)

    def _check_words(self, statement: str, said: list[str], analysis: dict[str, Any]) -> None:
        first = said[0] if said else ""
        flat = " ".join(said)
        if first in _READS | {"with", "values", "table", "("} and analysis.get("kind") in _READS and \
                re.search(r"\b(nextval|setval|next\s+value\s+for)\b", _uncommented(statement), re.I):
            raise SqlRefused("a query that takes or sets sequence values (NEXTVAL, SETVAL, NEXT VALUE FOR) changes "
                             "the sequence, which goex records only for writes: take the value in the INSERT or "
                             "UPDATE that uses it (VALUES (NEXTVAL(s), ...)), or use LASTVAL to read it")
        if first not in _ALLOWED_FIRST:
            raise SqlRefused(f"{first.upper() or 'this statement'} is not allowed: goex runs SELECT, INSERT, "
                             "REPLACE, UPDATE, DELETE and CREATE/ALTER/DROP/RENAME/TRUNCATE of tables, indexes, "
                             "views and triggers")
        if first in ("create", "drop", "alter"):
            obj = next((w for w in said[1:8] if w in _CREATABLE | {"event", "sequence", "server", "tablespace",
                                                                     "procedure", "function", "database", "schema",
                                                                     "user", "role", "package", "logfile"}), "")
            if obj not in _CREATABLE:
                raise SqlRefused(f"{first.upper()} {obj.upper() or '...'} is not allowed: goex undoes tables, "
                                 "indexes, views and triggers only")
        if re.search(r"\b(data|index) directory\b", flat):  # the agent session's sql_mode also ignores them
            raise SqlRefused("DATA/INDEX DIRECTORY is not allowed: it puts a table's files in a server folder "
                             "outside the database; create the table without it")
        if re.search(r"\binto (outfile|dumpfile)\b", flat):
            raise SqlRefused("SELECT ... INTO OUTFILE/DUMPFILE is not allowed: it writes files outside the "
                             "database; select the rows and write them with a file action")

    def _check_token(self, found: tuple[Any, ...], i: int, analysis: dict[str, Any]) -> None:
        tok = found[i]
        name = tok.text.lower()
        follows_dot = i + 1 < len(found) and found[i + 1].token_type == TokenType.DOT
        after_dot = i > 0 and found[i - 1].token_type == TokenType.DOT
        if follows_dot and not after_dot and name in self._other_databases():
            if name == "information_schema" and analysis.get("kind") in _READS:
                return
            raise SqlRefused(f"{tok.text}.… names another database: an action acts only on the database it "
                             f"targets ({self.db}); add the other database to the runtime and act on it there")

    # -- dry run ---------------------------------------------------------------------------------

    def dry_run(self, statements: list[str], params: Any) -> dict[str, Any]:
        """The statements' effect, by running the DML in a transaction that is rolled back: `rows`
        they would change, cascades and triggers included (DDL is never run here: a dropped or
        truncated table counts its rows, a created one 0); `all_rows`, the tables whose every row
        (of at least 2) they change or, for UPDATE, match; `creates_trigger`."""
        every: set[str] = set()
        conn = self._take()
        counters: dict[str, int | None] = {}
        sequences: dict[str, Any] = {}
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION")
                target = _target(statements[0]) if len(statements) == 1 else None
                meta = _Meta(cur, self.db, only=target) if target else None
                if meta is None or target is None or meta.triggers or meta.children or \
                        target.lower() not in meta.tables or \
                        _may_use_sequence(statements, meta):
                    meta = _Meta(cur, self.db)  # cascades, triggers or sequences: the whole schema
                sequences = self._peek_sequences(conn, meta, statements)
                total = 0
                for sql in statements:
                    words = _words(sql)
                    first = words[0] if words else ""
                    if first in _READS or first in ("with", "values", "table", "("):
                        continue
                    if first not in _DML:  # DDL: counted from the tables, never run
                        if first == "truncate" or (first == "drop" and "table" in words[:4]):
                            for table in sorted(meta.resolve(_names(sql)) & set(meta.tables.values())):
                                if table.lower() in _names(sql):
                                    cur.execute(f"SELECT COUNT(*) FROM {_q(table)}")
                                    total += cur.fetchone()[0]
                        break  # what follows DDL acts on a schema that does not exist yet
                    tables = sorted(meta.resolve(_names(sql)))
                    for t in tables:
                        if t in meta.auto and t not in counters:  # an insert or a key update moves it
                            counters[t] = _auto_increment(cur, t)
                    simple = first in ("update", "delete") and all(not meta.triggers.get(t) for t in tables) and \
                        len(tables) == 1 and not meta.children.get(tables[0])
                    if simple:
                        query, args = convert_params(sql, params)
                        count = cur.execute(query, args)
                        total += count
                        if _every_row(cur, tables[0], first, _matched(cur, count)):
                            every.add(tables[0])
                        continue
                    images = {t: _keyed(cur, meta, t) for t in tables}
                    query, args = convert_params(sql, params)
                    cur.execute(query, args)
                    for t in tables:
                        now = _keyed(cur, meta, t)
                        total += _count_changes(images[t], now, bool(meta.pk.get(t)))
                        if _all_changed(images[t], now, bool(meta.pk.get(t))):
                            every.add(t)
                return {"rows": total, "all_rows": sorted(every),
                        "creates_trigger": any(_creates_trigger(s) for s in statements)}
        except pymysql.Error as exc:
            raise self._failed(exc, "nothing was applied") from None
        finally:
            _rollback(conn)
            self._reset_counters(conn, counters)
            self._settle_sequences(conn, sequences, statements)
            self._give(conn)

    # -- doing -----------------------------------------------------------------------------------

    def before(self, statements: list[str], analyses: list[dict[str, Any]], put_blob: PutBlob) -> dict[str, Any]:
        if all(a.get("parsed") and a.get("kind") in _READS | _DML for a in analyses):
            return {"mode": "dml"}
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                self._recent = {}

                def keep(data: bytes) -> str:
                    blob_id = put_blob(data)
                    self._recent[blob_id] = data
                    return blob_id

                image = _database_image(cur, self.db, keep)
                meta = _Meta(cur, self.db)
            sequences = self._peek_sequences(conn, meta, statements)
            names = set()
            for s in statements:
                names |= _names(s)
            return {"mode": "ddl", "image": image, "names": sorted(names),
                    **({"sequences": sequences} if sequences else {})}
        finally:
            _rollback(conn)
            _close(conn)

    def read(self, statements: list[str], params: Any, analyses: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The output of statements that only read: run, and rolled back."""
        staged = self.stage(statements, params, analyses, {})
        staged.abort()
        return staged.output

    def stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
              before: dict[str, Any]) -> Staged:
        return self._stage(statements, params, analyses, before)[0]

    def rehearse(self, statements: list[str], params: Any) -> tuple[dict[str, Any], Staged | None]:
        """A single INSERT, UPDATE, DELETE or REPLACE runs once: its before-images taken, the
        statement run, the effect read, in the transaction that stays open as the action's run
        (a separate dry run cost a session reset, a schema read and the statement again). Other
        statements: a dry run."""
        analyses = [analyse(s, self.dialect) for s in statements]
        if len(statements) != 1 or not analyses[0]["parsed"] or analyses[0]["kind"] not in _DML:
            return self.dry_run(statements, params), None
        staged, plan, cur = self._stage(statements, params, analyses, {"mode": "dml"})
        try:
            meta = plan["meta"]
            first = _words(statements[0])[0]
            tables = sorted(meta.resolve(_names(statements[0])))
            simple = first in ("update", "delete") and all(not meta.triggers.get(t) for t in tables) and \
                len(tables) == 1 and not meta.children.get(tables[0])
            if simple:  # as the dry run counts it: the rows the server matched
                every = [tables[0]] if _every_row(cur, tables[0], first, plan["matched"]) else []
                total = plan["count"]
            else:  # the whole tables were imaged: compared with what they hold now
                every, total = [], 0
                for t in tables:
                    then, now = plan["tables"][t]["rows"], _keyed(cur, meta, t)
                    total += _count_changes(then, now, bool(meta.pk.get(t)))
                    every += [t] if _all_changed(then, now, bool(meta.pk.get(t))) else []
        except pymysql.Error as exc:
            staged.abort()
            raise self._failed(exc, "nothing was applied") from None
        except BaseException:
            staged.abort()
            raise
        return {"rows": total, "all_rows": sorted(every), "creates_trigger": False}, staged

    def _stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
               before: dict[str, Any]) -> tuple[Staged, dict[str, Any], Any]:
        """`stage`, with the plan (before-images) and the transaction's cursor."""
        reads = all(a.get("kind") in _READS for a in analyses) and all(a.get("parsed") for a in analyses)
        ddl = before.get("mode") == "ddl"
        plan: dict[str, Any] = {}
        fast = None
        if not ddl and len(statements) == 1 and analyses[0].get("parsed") and \
                analyses[0].get("kind") in ("update", "delete"):
            fast = self._stage_fast(statements, params, before)
        if fast is not None:
            conn, plan, output = fast
            cur = conn.cursor()
        else:
            try:
                conn, cur, plan, output = self._stage_slow(statements, params, analyses, before, reads, ddl)
            except _NewCascade:  # rolled back: planned again, with the schema as it is now
                conn, cur, plan, output = self._stage_slow(statements, params, analyses, before, reads, ddl)
        return self._staged(conn, cur, plan, output, before, statements, ddl), plan, cur

    def _stage_slow(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
                    before: dict[str, Any], reads: bool, ddl: bool) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        """The statements run one by one in a new transaction, after their plan is taken."""
        conn = self._take()
        cur = conn.cursor()
        plan: dict[str, Any] = {}
        try:
            # the reset left autocommit off and no transaction open: the first statement opens it
            if ddl:
                cur.execute("START TRANSACTION")
                now = _state(cur, self.db)
                if now != before["image"]["state"]:
                    moved = sorted(k for k in set(now) | set(before["image"]["state"])
                                   if now.get(k) != before["image"]["state"].get(k))
                    raise ActionFailed(f"sql.execute on {self.db}: {', '.join(moved)} changed between the preview "
                                       "and the run; nothing was applied; run the action again")
            elif not reads:
                plan = self._plan(cur, statements, params, analyses)
            output: dict[str, Any] = {}
            changed = 0
            for sql in statements:
                query, args = convert_params(sql, params)
                count = cur.execute(query, args)
                plan["count"], plan["matched"] = count, _matched(cur, count)
                if cur.description is not None:
                    output = format_rows([d[0] for d in cur.description], cur.fetchall())
                elif count and count > 0:
                    changed += count
            if not output:
                output = {"rows_changed": changed}
            if not ddl and not reads and plan.get("tables") and any(_may_set_off(s) for s in statements):
                moved = _new_cascades(cur, self.db, plan["tables"])
                if moved:
                    with self._lock:
                        self._metas.clear()
                    raise _NewCascade(moved)
        except pymysql.Error as exc:
            self._fail(conn, before, plan, statements)
            raise self._failed(exc) from None
        except BaseException:
            self._fail(conn, before, plan, statements)
            raise
        return conn, cur, plan, output

    def _staged(self, conn: Any, cur: Any, plan: dict[str, Any], output: dict[str, Any], before: dict[str, Any],
                statements: list[str], ddl: bool) -> Staged:
        """The open transaction as the pipeline takes it: capture, commit, abort."""

        def capture(put_blob: PutBlob) -> dict[str, Any]:
            sequences = _sequences_after(cur, plan.get("sequences") or before.get("sequences") or {}, statements)
            if ddl:
                return {"mode": "ddl", "after": _state(cur, self.db), **({"sequences": sequences} if sequences else {})}
            tables: dict[str, Any] = {}
            for table, entry in plan.get("tables", {}).items():
                before_rows = entry.pop("rows")
                whole = entry.pop("whole")
                keys = None if whole else [k for k, _ in before_rows]
                after_rows = entry.pop("after_rows", None)  # read with the statement, when it ran pipelined
                if after_rows is None:
                    after_rows = _select_rows(cur, table, entry, keys) if whole or keys else []
                diff = _diff(before_rows, after_rows, bool(entry["pk"]))
                counter = entry.pop("counter_after", None)
                if entry["auto_increment"] is not None:
                    entry["auto_after"] = counter if counter is not None else _auto_increment(cur, table)
                if not diff["keyed"] and not diff["counts"] and entry.get("auto_after") == entry["auto_increment"]:
                    continue  # neither a row nor the counter moved (rows a trigger added and removed move it)
                if plan["meta"].triggers.get(table):  # undo drops them for its duration: kept here for recovery
                    entry["triggers"] = _trigger_defs(cur, self.db, table)
                entry["blob"] = put_blob(json.dumps(diff).encode())
                entry["before"], entry["after"] = _diff_fp(diff, 1), _diff_fp(diff, 2)
                tables[table] = entry
            return {"mode": "dml", "tables": tables, "after": {t: e["after"] for t, e in tables.items()},
                    **({"sequences": sequences} if sequences else {})}

        def commit() -> None:
            try:
                conn.commit()
            except pymysql.Error as exc:
                _close(conn)
                raise self._failed(exc, "the commit failed") from None
            cur.close()
            self._recent = {}
            conn.clean = bool(plan.get("pure"))  # no reset before its next fast statement
            self._give(conn)

        def abort() -> None:
            cur.close()
            self._fail(conn, before, plan, statements)

        return Staged(output, capture, commit, abort)

    def _stage_fast(self, statements: list[str], params: Any,
                    before: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
        """A single UPDATE/DELETE whose own WHERE selects its rows (see `_fast`) on a table whose
        schema this engine has read, in three round trips: (1) the session reset and its check
        (unless the connection is `clean`), the before-image of the rows (`SELECT ... FOR
        UPDATE`), the table's SHOW CREATE TABLE text and its triggers and the foreign keys
        referring to it; (2) the statement and the rows with the same keys after it (and its
        AUTO_INCREMENT position, and the referring foreign keys again when it may set one off:
        see `_run_fast`); (3) the commit. The image is read with the schema kept from an earlier
        action, the schema then read again in the same transaction after the row locks, which
        also hold the table's metadata lock (no ALTER, trigger or DROP on it can land until the
        commit; a foreign key of another table can, hence the second read): when it differs,
        the image is dropped and taken again with the schema read now. None: the usual path
        (`_plan`) runs it."""
        shape = _shape(statements[0])
        if shape is None or _SEQUENCE_CALL.search(_uncommented(statements[0])):
            return None
        name = shape[0]
        with self._lock:
            cached = self._metas.get(name.lower())
        if cached is not None and (self._fast(statements, params, cached[1]) is None or
                                   _may_use_sequence(statements, cached[1])):
            return None  # the usual path: triggers, cascades, sequences or keys that change
        plan: dict[str, Any] = {}
        conn, kept = self._kept(_plain([params, self.db]))
        try:
            for _ in range(3):
                fast = None
                if cached is not None:
                    fast = self._fast(statements, params, cached[1])
                    if fast is None or _may_use_sequence(statements, cached[1]):
                        break
                with conn.cursor() as cur:
                    keyed = self._key_queries(cur, name)
                    if cached is None or fast is None:  # the key, then the schema: a change between reads again
                        queries = [*keyed, cur.mogrify(*_Meta.query(self.db, only=name))]
                    else:  # the image (its locks), then what the schema was kept under, read under them
                        table, where, args = fast
                        head = f"SELECT {_row_sql(cached[1], table)[0]} FROM {_q(table)} "
                        queries = [cur.mogrify((head.replace("%", "%%") if args is not None else head)
                                               + f"{where}\nFOR UPDATE", args), *keyed]
                if kept is not None:
                    conn, results = self._after_reset(conn, queries, reset=kept == "reset")
                    kept = None
                else:
                    results = _pipeline(conn, queries)
                if cached is None or fast is None:
                    key = _schema_key(results[:-1])
                    if key is None or isinstance(results[-1], Exception):
                        break  # not a table (gone, or never was): the usual path says what it is
                    cached = self._keep_meta(name, key, _Meta(None, self.db, only=name, found=_rows(results[-1])))
                    continue
                key = _schema_key(results[1:])
                if key != cached[0]:
                    _rollback(conn)  # the schema changed since it was kept: read again, image again
                    with self._lock:
                        self._metas.pop(name.lower(), None)
                    cached = None
                    continue
                if isinstance(results[0], Exception):
                    break  # the usual path runs it and reports the server's error
                done = self._run_fast(conn, statements[0], params, cached, fast[0], _rows(results[0]),
                                      _rows(results[1])[0][1], plan)
                if done is None:  # rows the image does not hold, or a new foreign key: the usual path runs it
                    self._fail(conn, before, plan, statements)
                    return None
                return conn, *done
        except pymysql.Error as exc:
            self._fail(conn, before, plan, statements)
            raise self._failed(exc) from None
        except BaseException:
            self._fail(conn, before, plan, statements)
            raise
        self._give(conn)
        return None

    def _run_fast(self, conn: Any, sql: str, params: Any, cached: tuple[Any, _Meta], table: str,
                  image: list[tuple[Any, ...]], create: str,
                  plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The statement, with the rows it changed read after it in the same round trip, and,
        when it may set off another table's foreign key (`_may_cascade`), the foreign keys that
        refer to the table read again after it: a table created with one that cascades is not
        held off by this transaction's locks, so one may have come since they were read before
        the statement; its cascade, transactional, is then rolled back with the statement (and
        once a cascade has changed rows, the key cannot be dropped before the commit). None when
        it matched another number of rows than the image holds (a row that slipped in between,
        as under READ COMMITTED, which takes no gap locks) or the referring foreign keys changed:
        the caller rolls it back."""
        meta = cached[1]
        entry = _image_of(create, meta, table, image, whole=False)
        plan.update({"meta": meta, "tables": {table: entry}, "counters": {table: entry["auto_increment"]},
                     "sequences": {}})
        keys = [k for k, _ in image]
        assigned, pure = _effects(sql)
        with conn.cursor() as cur:
            queries = [cur.mogrify(*convert_params(sql, params)), *_rows_queries(table, entry, keys)]
            rows_end = len(queries)
            if entry["auto_increment"] is not None:
                queries.append(f"SHOW CREATE TABLE {_q(table)}")
            cascade = _may_cascade(create, assigned)
            if cascade:
                queries.append(self._key_queries(cur, table)[2])
        results = _pipeline(conn, queries)
        if isinstance(results[0], Exception):
            raise results[0]
        count = results[0].affected_rows
        found = re.search(rb"Rows matched: (\d+)", results[0].message or b"")
        plan["count"], plan["matched"] = count, int(found.group(1)) if found else count
        if plan["matched"] != len(image):
            return None
        if cascade and _sorted_links(results[-1]) != cached[0][2]:
            with self._lock:  # read again by the usual path
                self._metas.pop(table.lower(), None)
            return None
        entry["after_rows"] = [row for r in results[1:rows_end] for row in _rows(r)]
        if entry["auto_increment"] is not None:
            counter = _AI.search(_rows(results[rows_end])[0][1])
            entry["counter_after"] = int(counter.group(1)) if counter else None
        plan["pure"] = pure
        return plan, {"rows_changed": count if count and count > 0 else 0}

    def _plan(self, cur: Any, statements: list[str], params: Any, analyses: list[dict[str, Any]]) -> dict[str, Any]:
        """Take the before-images (locking reads) of what the statements can change: the rows a
        plain UPDATE/DELETE's WHERE selects, else whole tables; with each table's definition and
        AUTO_INCREMENT position."""
        fast = None
        target = _target(statements[0]) if len(statements) == 1 else None
        if target is not None:
            meta = self._table_meta(cur, target)
            fast = None if _may_use_sequence(statements, meta) else self._fast(statements, params, meta)
        if fast is None:
            meta = _Meta(cur, self.db)
        plan: dict[str, Any] = {"meta": meta, "tables": {}, "counters": {},
                                "sequences": self._peek_sequences(cur.connection, meta, statements)}
        if fast is not None:
            table, where, args = fast
            select, _, _ = _row_sql(meta, table)
            head = f"SELECT {select} FROM {_q(table)} "
            # on a line of its own: a comment the WHERE's text ends with (`-- ...`, `# ...`) stops at the line's end
            cur.execute((head.replace("%", "%%") if args is not None else head) + f"{where}\nFOR UPDATE", args)
            plan["tables"][table] = _image(cur, meta, table, list(cur.fetchall()), whole=False)
        else:
            names: set[str] = set()
            for s in statements:
                names |= _names(s)
            for table in sorted(meta.resolve(names)):
                select, _, _ = _row_sql(meta, table)
                cur.execute(f"SELECT {select} FROM {_q(table)} FOR UPDATE")
                plan["tables"][table] = _image(cur, meta, table, list(cur.fetchall()), whole=True)
        plan["counters"] = {t: e["auto_increment"] for t, e in plan["tables"].items()}
        return plan

    def _table_meta(self, cur: Any, table: str) -> _Meta:
        """One table's schema (`_Meta(only=table)`), read again only when its definition (SHOW
        CREATE TABLE), its triggers or the foreign keys that reference it changed since it was
        read (`_schema_key`: three cheap reads, in one round trip, instead of information_schema's
        column and key tables). The key is read before the schema, so a change in between makes
        the next look-up read it again."""
        results = _pipeline(cur.connection, self._key_queries(cur, table))
        key = _schema_key(results)
        if key is None:  # not a table (gone, or never was): read as before
            return _Meta(cur, self.db, only=table)
        with self._lock:
            cached = self._metas.get(table.lower())
        if cached is not None and cached[0] == key:
            return cached[1]
        return self._keep_meta(table, key, _Meta(cur, self.db, only=table))[1]

    def _key_queries(self, cur: Any, table: str) -> list[str]:
        """What a table's schema is kept under (see `_schema_key`): SHOW CREATE TABLE, the
        table's triggers, the foreign keys that refer to it."""
        return [f"SHOW CREATE TABLE {_q(table)}", cur.mogrify(_LINKS_OF[0], (self.db, table)),
                cur.mogrify(_LINKS_OF[1], (self.db, self.db, table))]

    def _keep_meta(self, name: str, key: Any, meta: _Meta) -> tuple[Any, _Meta]:
        """One table's schema kept under its key (see `_schema_key`)."""
        with self._lock:
            if len(self._metas) >= 256:
                self._metas.clear()
            self._metas[name.lower()] = (key, meta)
        return key, meta

    def _fast(self, statements: list[str], params: Any, meta: _Meta) -> tuple[str, str, Any] | None:
        """A single UPDATE/DELETE whose rows its own WHERE identifies: (table, WHERE text, its params)."""
        shape = _shape(statements[0])
        if shape is None:
            return None
        name, start, marks, assigned = shape
        table = meta.tables.get(name.lower())
        if table is None or not meta.pk.get(table) or meta.triggers.get(table) or meta.children.get(table):
            return None
        if assigned & {c.lower() for c in meta.pk[table]}:  # keys stay put, so the after-rows are found by them
            return None
        query, args = convert_params(statements[0][start:], _where_params(params, marks))
        return table, query, args

    def _peek_sequences(self, conn: Any, meta: _Meta, statements: list[str]) -> dict[str, Any]:
        """The exact state of every sequence the statements may take values from or set (named,
        in a column's DEFAULT, in a trigger): {name: {"before": [next value, round], "increment"}}.
        `conn`'s transaction, which has only read metadata, is ended first: reading a table whose
        DEFAULT names a sequence locks the sequence's definition until it ends."""
        names = _sequences_of(meta, statements)
        if not names:
            return {}
        conn.rollback()
        with self._own() as own, own.cursor() as cur:
            out = {}
            for name in names:
                state = _seq_peek(cur, name)
                if state is not None:
                    (increment,), = _fetch(cur, f"SELECT increment FROM {_q(name)}")
                    out[name] = {"before": list(state), "increment": int(increment)}
            return out

    def _settle_sequences(self, conn: Any, sequences: dict[str, Any], statements: list[str]) -> None:
        """After statements that were rolled back: set each sequence back to where it was, unless
        another client took values from it meanwhile (they keep theirs; the ones taken here are a gap)."""
        if not sequences:
            return
        with conn.cursor() as cur:
            last = {name: _fetch(cur, f"SELECT PREVIOUS VALUE FOR {_q(name)}")[0][0] for name in sequences}
        conn.rollback()  # reading a sequence locks its definition until the transaction ends
        with self._own() as own, own.cursor() as cur:
            for name, info in sequences.items():
                now = _seq_next(cur, name)
                if now is None:
                    continue
                expected = last[name] + info["increment"] if last[name] is not None else info["before"][0]
                mine = now[0] == expected or _sets_sequence(statements, name)
                _seq_set(cur, name, info["before"] if mine else now)

    def _fail(self, conn: Any, before: dict[str, Any], plan: dict[str, Any], statements: list[str]) -> None:
        """Roll back; put back AUTO_INCREMENT positions and whatever DDL committed."""
        _rollback(conn)
        try:
            self._reset_counters(conn, plan.get("counters") or {})
            self._settle_sequences(conn, plan.get("sequences") or before.get("sequences") or {}, statements)
            if before.get("mode") == "ddl":
                self._restore_image(before, None, image_blobs=self._recent)
        finally:
            self._recent = {}
            self._give(conn)

    def _reset_counters(self, conn: Any, counters: dict[str, int | None]) -> None:
        if not any(v is not None for v in counters.values()):
            return
        with conn.cursor() as cur:
            for table, value in counters.items():
                if value is not None and _auto_increment(cur, table) != value:
                    cur.execute(f"ALTER TABLE {_q(table)} AUTO_INCREMENT={int(value)}")

    # -- undoing ---------------------------------------------------------------------------------
    #
    # An entry of DML records, per table, only the rows the action changed (by primary key, or as
    # counts of identical rows for a table without one), with their before and after values, the
    # table's definition (SHOW CREATE TABLE without its AUTO_INCREMENT position) and counters.
    # Conflicts are per row: a row the action changed that is no longer as it left it; other rows
    # of the table are never compared, and undo writes only the rows the action changed.

    def conflicts(self, before: dict[str, Any], captured: dict[str, Any],
                  get_blob: GetBlob | None = None) -> list[tuple[str, str]]:
        found = []
        if captured.get("sequences"):
            with self._own() as conn, conn.cursor() as cur:
                for name, info in sorted(captured["sequences"].items()):
                    problem = _seq_problem(name, info, _seq_peek(cur, name))
                    if problem:
                        found.append((f"{self.db}.{name}", problem))
        if captured.get("mode") == "ddl" or _legacy(captured):
            return found + self._legacy_conflicts(before, captured)
        assert get_blob is not None
        with self._own() as conn:
            return found + self._row_conflicts(conn, _items(captured["tables"], get_blob))[0]

    def revert(self, before: dict[str, Any], captured: dict[str, Any] | None, get_blob: GetBlob,
               force: bool) -> None:
        if captured is None:  # never committed: the transaction rolled back; undo DDL that committed
            if before.get("mode") == "ddl":
                self._restore_image(before, None, get_blob=get_blob)
            return
        legacy = captured.get("mode") == "ddl" or _legacy(captured)
        tables = {} if legacy else captured["tables"]
        sequences = captured.get("sequences") or {}
        if not tables and not sequences:
            if legacy:
                self._legacy_revert(before, captured, get_blob, force)
            return
        with self._own() as conn, conn.cursor() as cur:
            now = {name: _seq_next(cur, name) for name in sequences}  # taken: every path below sets it
            done = False
            try:
                problems = [_seq_problem(name, info, now[name]) for name, info in sorted(sequences.items())]
                problems = [p for p in problems if p and not force]
                if problems:
                    raise UndoRefused(f"undo on {self.db} stopped, nothing was undone: {'; '.join(problems)}")
                if legacy:
                    self._legacy_revert(before, captured, get_blob, force)
                elif tables:
                    self._restore_tables(conn, cur, _items(tables, get_blob), force)
                done = True
            finally:
                for name, state in now.items():
                    if state is not None:
                        _seq_set(cur, name, sequences[name]["before"] if done else state)

    # -- a range of row entries of this database, undone as one transaction -----------------------

    @staticmethod
    def coalescable(before: dict[str, Any], captured: dict[str, Any]) -> bool:
        """Row changes without sequences (setting one back is DDL, which commits in MariaDB)."""
        return isinstance(captured.get("tables"), dict) and captured.get("mode") != "ddl" \
            and not _legacy(captured) and not captured.get("sequences")

    def range_conflicts(self, captureds: list[dict[str, Any]],
                        get_blob: GetBlob) -> list[list[tuple[str, str]]] | None:
        """For row entries, newest first: what each would meet if it were undone right after the
        newer ones (each checked, then undone, in one transaction that is rolled back). None when
        a table has triggers: a trial would fire them, and the undo must drop them around each
        restore, which commits; such entries are undone one by one."""
        found: list[list[tuple[str, str]]] = [[] for _ in captureds]
        with self._own() as conn, conn.cursor() as cur:
            try:
                links = self._range_links(cur, captureds)
                if links["triggers"]:
                    return None
                for i, captured in enumerate(captureds):
                    problems, plans = self._row_conflicts(conn, _items(captured["tables"], get_blob))
                    plans = [(t, state) for t, state in plans if state != "before"]
                    if not problems and plans:
                        evidence = self._evidence(conn, plans, False, links)
                        self._undo_rows(conn, plans, False, evidence)
                        first = plans[0][0]["table"]
                        problems = [(f"{self.db}.{first}", Unforceable(w))
                                    for w in self._broken(conn, plans, False, evidence)]
                    if problems:
                        found[i] = problems
                        break
            finally:
                _rollback(conn)
        return found

    def _range_links(self, cur: Any, captureds: list[dict[str, Any]]) -> dict[str, Any]:
        names = sorted({t for c in captureds for t in c["tables"]})
        return _links(cur, self.db, names) if names else {"triggers": set(), "fks": []}

    def revert_range(self, captureds: list[dict[str, Any]], get_blob: GetBlob) -> None:
        """Undo row entries, newest first, in one transaction: each one's rows checked (locked) and
        set back as `revert` does, one commit; then each table's AUTO_INCREMENT counter set as
        undoing the entries one by one would set it. A row changed since, or a trigger added since
        the check, stops it (UndoRefused) with nothing applied."""
        counters: dict[str, int | None] = {}
        with self._own() as conn, conn.cursor() as cur:
            try:
                links = self._range_links(cur, captureds)
                if links["triggers"]:
                    raise UndoRefused(f"undo on {self.db} stopped, nothing was undone: a table has triggers now, "
                                      "which its undo drops around each entry")
                for captured in captureds:
                    items = _items(captured["tables"], get_blob)
                    self._revert_rows(conn, items, False, [], links)
                    for item in items:  # as the newest entry's check read it
                        counters.setdefault(item["table"], item["counter"])
                conn.commit()
            finally:
                _rollback(conn)
            for table, now in sorted(counters.items()):
                start = now
                for captured in captureds:  # newest first, as each entry's undo would move it
                    entry = captured["tables"].get(table)
                    value = entry.get("auto_increment") if entry else None
                    if value is not None and now is not None and now != value and now == entry.get("auto_after"):
                        now = value
                if now != start and now is not None:
                    cur.execute(f"ALTER TABLE {_q(table)} AUTO_INCREMENT={int(now)}")

    def _restore_tables(self, conn: Any, cur: Any, items: list[dict[str, Any]], force: bool) -> None:
        """Put back the rows an entry changed, with the tables' triggers dropped meanwhile."""
        tables = {item["table"]: item["entry"] for item in items}
        links = _links(cur, self.db, sorted(tables))
        # triggers would fire on the restore: dropped for its duration and recreated exactly after
        # (the recorded ones first, in their order: an undo a crash interrupted after dropping
        # them finds them recorded; then any added since)
        recorded: dict[str, list[dict[str, Any]]] = {}
        for table in sorted(links["triggers"]):
            current = _trigger_defs(cur, self.db, table)
            names = {d["name"] for d in tables[table].get("triggers") or []}
            recorded[table] = list(tables[table].get("triggers") or []) + [d for d in current if d["name"] not in names]
            for trig in current:
                cur.execute(f"DROP TRIGGER IF EXISTS {_q(trig['name'])}")
        for table, entry in tables.items():  # dropped by a crashed undo, not there now
            if table not in recorded and entry.get("triggers"):
                recorded[table] = list(entry["triggers"])
        try:
            self._revert_rows(conn, items, force, [], links)
            conn.commit()
        finally:
            _rollback(conn)
            existing = {n for (n,) in _fetch(cur, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                                                  "WHERE TRIGGER_SCHEMA=%s", (self.db,))} if recorded else set()
            for table in sorted(recorded):
                for trig in recorded[table]:
                    if trig["name"] not in existing:
                        _create_trigger(cur, trig)
        counters = {item["table"]: item["counter"] for item in items}
        for table, entry in sorted(tables.items()):  # counters are state: set back when no one moved them since
            value, now = entry.get("auto_increment"), counters.get(table)
            if value is not None and now is not None and now != value and (force or now == entry.get("auto_after")):
                cur.execute(f"ALTER TABLE {_q(table)} AUTO_INCREMENT={int(value)}")

    # the template's steps (see ServerEngine._revert_rows); a table is {"table", "entry", "diff", "counter"}

    def _examine(self, conn: Any, table: Any, lock: bool) -> tuple[str, str, list[str]]:
        with conn.cursor() as cur:
            state, detail, table["counter"] = _rows_now(cur, table["table"], table["entry"], table["diff"], lock)
        if state in ("changed", "definition"):
            state = "conflict"
        return state, table["table"], [detail or "the rows the action changed are as they were before it"]

    def _evidence(self, conn: Any, plans: list[Plan], force: bool, context: Any) -> Any:
        """The values rows of other tables refer to in the rows undo removes or changes (read
        before the restore), with the links (see `_links`)."""
        tables, diffs = _tables_of(plans)
        with conn.cursor() as cur:
            return context, {} if force else _referenced_values(cur, tables, diffs, context)

    def _undo_rows(self, conn: Any, plans: list[Plan], force: bool, evidence: Any) -> None:
        with conn.cursor() as cur:
            for table, _ in sorted(plans, key=lambda p: p[0]["table"]):
                _put_back(cur, table["table"], table["entry"], table["diff"])

    def _broken(self, conn: Any, plans: list[Plan], force: bool, evidence: Any) -> list[str]:
        """Rows left referring to a row that is gone (not checked when forced)."""
        if force:
            return []
        tables, diffs = _tables_of(plans)
        with conn.cursor() as cur:
            return _orphans(cur, tables, diffs, evidence[0], evidence[1])

    def committed(self, before: dict[str, Any], captured: dict[str, Any],
                  get_blob: GetBlob | None = None) -> tuple[str, str]:
        if captured.get("mode") == "ddl" or _legacy(captured):
            return self._legacy_committed(before, captured)
        assert get_blob is not None
        with self._own() as conn, conn.cursor() as cur:
            states = {t: _rows_now(cur, t, e, json.loads(get_blob(e["blob"])))[0]
                      for t, e in captured["tables"].items()}
        if all(v == "after" for v in states.values()):
            return "applied", ""
        if all(v == "before" for v in states.values()):
            return "reverted", ""
        odd = sorted(t for t, v in states.items() if v not in ("after", "before"))
        return "review", (f"{self.db} matches neither the state before nor the state after the action"
                          + (f" ({', '.join(odd)})" if odd else " (some tables show one, some the other)"))

    # -- undoing entries of DDL, and of DML recorded before rows were compared one by one -----------

    def _legacy_conflicts(self, before: dict[str, Any], captured: dict[str, Any]) -> list[tuple[str, str]]:
        with self._own() as conn, conn.cursor() as cur:
            now = self._now(cur, before, captured)
        changed = self._changed(before, captured)
        return [(f"{self.db}.{obj}", _differs(obj, captured["after"].get(obj), now.get(obj)))
                for obj in sorted(changed) if _core(now.get(obj)) != _core(captured["after"].get(obj))]

    def _changed(self, before: dict[str, Any], captured: dict[str, Any]) -> set[str]:
        """The objects the action changed."""
        then = self._before_fps(before, captured)
        after = captured["after"]
        return {k for k in set(then) | set(after) if then.get(k) != after.get(k)}

    def _now(self, cur: Any, before: dict[str, Any], captured: dict[str, Any]) -> dict[str, str | None]:
        """Current fingerprints of what the action changed."""
        if captured.get("mode") == "ddl":
            state = _state(cur, self.db)
            keys = set(captured["after"]) | set(before["image"]["state"])
            return {k: state.get(k) for k in keys}
        out: dict[str, str | None] = {}
        meta = _Meta(cur, self.db)
        for table, entry in captured["tables"].items():
            if table not in meta.tables.values():
                out[table] = None
            elif entry["scope"] == "keys":
                try:
                    out[table] = _fp(None, _rows_by_keys(cur, meta, table, entry["keys"]) if entry["keys"] else [])
                except pymysql.Error:
                    out[table] = "schema:changed"
            else:
                out[table] = _fp(_show_create(cur, table), [r for _, r in _keyed(cur, meta, table)])
        return out

    def _legacy_revert(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob,
                       force: bool) -> None:
        if not force:
            with self._own() as conn, conn.cursor() as cur:
                now = self._now(cur, before, captured)
            then = self._before_fps(before, captured)
            after = captured["after"]
            problems = [_differs(obj, after.get(obj), now.get(obj)) for obj in sorted(self._changed(before, captured))
                        if _core(now.get(obj)) not in (_core(after.get(obj)), _core(then.get(obj)))]
            if problems:
                raise UndoRefused(f"undo on {self.db} stopped, nothing was undone: {'; '.join(problems)}")
        if captured.get("mode") == "ddl":
            self._restore_image(before, captured, get_blob=get_blob)
        else:
            self._restore_legacy(captured, get_blob)

    def _before_fps(self, before: dict[str, Any], captured: dict[str, Any]) -> dict[str, str | None]:
        if captured.get("mode") == "ddl":
            return dict(before["image"]["state"])
        return {t: e["before"] for t, e in captured["tables"].items()}

    def _legacy_committed(self, before: dict[str, Any], captured: dict[str, Any]) -> tuple[str, str]:
        with self._own() as conn, conn.cursor() as cur:
            now = self._now(cur, before, captured)
        after = captured["after"]
        then = self._before_fps(before, captured)
        keys = self._changed(before, captured)
        if all(now.get(k) == after.get(k) for k in keys):
            return "applied", ""
        if all(now.get(k) == then.get(k) for k in keys):
            return "reverted", ""
        odd = sorted(k for k in keys if now.get(k) not in (after.get(k), then.get(k)))
        return "review", (f"{self.db} matches neither the state before nor the state after the action"
                          + (f" ({', '.join(odd)})" if odd else " (some objects show one, some the other)"))

    def _restore_legacy(self, captured: dict[str, Any], get_blob: GetBlob) -> None:
        tables = captured["tables"]
        if not tables:
            return
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                meta = _Meta(cur, self.db)
                # triggers would fire on the restore: dropped for its duration and recreated exactly
                # after (the recorded ones first, in their order: an undo a crash interrupted after
                # dropping them finds them recorded; then any added since)
                recorded: dict[str, list[dict[str, Any]]] = {}
                for table, entry in tables.items():
                    current = _trigger_defs(cur, self.db, table) if meta.triggers.get(table) else []
                    names = {d["name"] for d in entry.get("triggers") or []}
                    recorded[table] = list(entry.get("triggers") or []) + [d for d in current if d["name"] not in names]
                    for trig in current:
                        cur.execute(f"DROP TRIGGER IF EXISTS {_q(trig['name'])}")
                cur.execute("START TRANSACTION")
                for table, entry in sorted(tables.items()):
                    rows = json.loads(get_blob(entry["blob"]))
                    if entry["scope"] == "keys":
                        pk = entry["pk"]
                        for i in range(0, len(entry["keys"]), 500):
                            chunk = entry["keys"][i:i + 500]
                            cols = ",".join(_q(c) for c in pk)
                            cur.execute(f"DELETE FROM {_q(table)} WHERE ({cols}) IN ("
                                        + ",".join(f"({k})" for k in chunk) + ")")
                    else:
                        cur.execute(f"DELETE FROM {_q(table)}")
                    _insert(cur, table, entry["columns"], rows)
                conn.commit()
                for table, entry in sorted(tables.items()):
                    value = entry.get("auto_increment")
                    if value is not None and _auto_increment(cur, table) != value:
                        cur.execute(f"ALTER TABLE {_q(table)} AUTO_INCREMENT={int(value)}")
                existing = {n for ts in _Meta(cur, self.db).triggers.values() for n, _ in ts}
                for table in sorted(tables):
                    for trig in recorded.get(table) or []:
                        if trig["name"] not in existing:
                            _create_trigger(cur, trig)
        finally:
            _rollback(conn)
            _close(conn)

    def _restore_image(self, before: dict[str, Any], captured: dict[str, Any] | None,
                       get_blob: GetBlob | None = None, image_blobs: dict[str, bytes] | None = None) -> None:
        """Drop and recreate exactly the objects the action changed (all that differ from the image
        among those its statements name, when it never committed)."""
        image = before["image"]
        then = image["state"]
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                now = _state(cur, self.db)
                if captured is not None:
                    scope = {k for k in set(then) | set(captured["after"]) if then.get(k) != captured["after"].get(k)}
                else:
                    names = {n.lower() for n in before.get("names", [])}
                    meta = _Meta(cur, self.db)
                    related = {t.lower() for t in meta.resolve(names)} | names
                    for t, info in image["tables"].items():  # what the image's tables cascade to
                        if t.lower() in related:
                            related |= {c.lower() for c in info.get("children", [])}
                    scope = set()
                    for key in set(then) | set(now):
                        kind, name = key.split(":", 1)
                        table = (image["triggers"].get(name) or {}).get("table") if kind == "trigger" else name
                        owner = table or next((t for t, ts in meta.triggers.items() if name in [n for n, _ in ts]), "")
                        if name.lower() in related or (owner or "").lower() in related:
                            scope.add(key)
                todo = {k for k in scope if now.get(k) != then.get(k)}
                if not todo:
                    return
                get = get_blob
                tables = {k.split(":", 1)[1] for k in todo if k.startswith("table:")}
                views = {k.split(":", 1)[1] for k in todo if k.startswith("view:")}
                # trigger groups that differ are rebuilt whole, to keep their order
                groups = set()
                for k in todo:
                    if k.startswith("trigger:"):
                        name = k.split(":", 1)[1]
                        for source in (image["triggers"].get(name), _current_trigger(cur, self.db, name)):
                            if source:
                                groups.add((source["table"], source["event"], source["timing"]))
                current_views = {k.split(":", 1)[1] for k in now if k.startswith("view:")}
                current_tables = {k.split(":", 1)[1] for k in now if k.startswith("table:")}
                for v in sorted(views | (tables & current_views)):
                    if v in current_views:
                        cur.execute(f"DROP VIEW IF EXISTS {_q(v)}")
                for t in sorted(tables | (views & current_tables)):
                    if t in current_tables:
                        cur.execute(f"DROP TABLE IF EXISTS {_q(t)}")
                for group in sorted(groups):
                    cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s AND "
                                "EVENT_OBJECT_TABLE=%s AND EVENT_MANIPULATION=%s AND ACTION_TIMING=%s",
                                (self.db, *group))
                    for (name,) in cur.fetchall():
                        cur.execute(f"DROP TRIGGER IF EXISTS {_q(name)}")
                for t in sorted(tables):
                    info = image["tables"].get(t)
                    if info is None:
                        continue
                    cur.execute(info["create"])
                    rows: list[str] = []
                    for blob in info["blobs"]:
                        if image_blobs and blob in image_blobs:
                            data = image_blobs[blob]
                        else:
                            assert get is not None, "an image's blobs come from the stage or the journal"
                            data = get(blob)
                        rows.extend(json.loads(data))
                    cur.execute("START TRANSACTION")
                    _insert(cur, t, info["columns"], rows)
                    conn.commit()
                pending = [v for v in sorted(views) if v in image["views"]]
                for _ in range(len(pending) + 1):  # views on views: until all exist
                    left = []
                    for v in pending:
                        try:
                            cur.execute(image["views"][v]["create"])
                        except pymysql.Error:
                            left.append(v)
                    pending = left
                    if not pending:
                        break
                existing = {n for ts in _Meta(cur, self.db).triggers.values() for n, _ in ts}
                for trig in sorted(image["triggers"].values(), key=lambda d: (d["table"], d["event"], d["timing"],
                                                                               d["order"])):
                    if trig["name"] in existing:
                        continue
                    if trig["table"] in tables or (trig["table"], trig["event"], trig["timing"]) in groups:
                        _create_trigger(cur, trig)
        finally:
            _rollback(conn)
            _close(conn)

    # -- inspection ------------------------------------------------------------------------------

    def dump(self) -> str:
        """Canonical text of the database: for every table (goex's own excluded) its SHOW CREATE
        TABLE text, AUTO_INCREMENT position included, and its rows as SQL literals, sorted
        (duplicates repeated); every view's definition; every trigger with its timing, event,
        order and sql_mode."""
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                meta = _Meta(cur, self.db)
                out = []
                for table in sorted(meta.tables.values()):
                    out.append(f"-- table {table}\n{_show_create(cur, table)}")
                    cols = meta.columns.get(table, [])
                    cur.execute("SELECT CONCAT_WS(','," + ",".join(_lit(c, t) for c, t, _ in cols) + ") FROM "
                                + _q(table))
                    out.extend(sorted(f"  ({r[0]})" for r in cur.fetchall()))
                for view in sorted(meta.views):
                    cur.execute(f"SHOW CREATE VIEW {_q(view)}")
                    out.append(f"-- view {view}\n{cur.fetchone()[1]}")
                for trig in sorted(_all_triggers(cur, self.db).values(),
                                   key=lambda d: (d["table"], d["event"], d["timing"], d["order"])):
                    out.append(f"-- trigger {trig['name']} {trig['timing']} {trig['event']} ON {trig['table']} "
                               f"#{trig['order']} sql_mode={trig['sql_mode']}\n{trig['create']}")
                return "\n".join(out) + "\n"
        finally:
            _rollback(conn)
            _close(conn)



# -- module helpers ------------------------------------------------------------------------------


def _target(sql: str) -> str | None:
    """The table a plain single-table UPDATE/DELETE names, from its first words."""
    found = re.match(r"\s*(?:update\s+|delete\s+from\s+)`?([A-Za-z0-9_$]+)`?\s+(?:set|where)\b", sql, re.I)
    return found.group(1) if found else None


@functools.lru_cache(maxsize=512)
def _shape(sql: str) -> tuple[str, int, int, frozenset[str]] | None:
    """What a single UPDATE/DELETE's rows depend on, read from its text alone (parsed once per
    text): the table it names, where its top-level WHERE starts, how many `?` come before it, and
    the columns an UPDATE sets. None unless its own plain, deterministic WHERE selects its rows."""
    try:
        tree = sqlglot.parse_one(sql, read="mysql")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return None
    if not isinstance(tree, (exp.Update, exp.Delete)):
        return None
    target = tree.this if isinstance(tree, exp.Update) else tree.args.get("this")
    if not isinstance(target, exp.Table) or target.alias or target.args.get("db"):
        return None
    if (_target(sql) or "").lower() != target.name.lower():  # the table its first words name, as the regex reads
        return None
    if any(tree.args.get(k) for k in ("from", "joins", "order", "limit", "using", "tables", "with")):
        return None
    where = tree.args.get("where")
    if where is None or any(not isinstance(node, _SAFE_WHERE + (exp.Where,)) for node in where.walk()):
        return None
    assigned: frozenset[str] = frozenset()
    if isinstance(tree, exp.Update):
        assigned = frozenset(e.this.name.lower() for e in tree.expressions if isinstance(e, exp.EQ)
                             and isinstance(e.this, exp.Column))
        if len(assigned) != len(tree.expressions):
            return None
    level = marks = 0
    for tok in _tokens(sql):
        if tok.token_type == TokenType.L_PAREN:
            level += 1
        elif tok.token_type == TokenType.R_PAREN:
            level -= 1
        elif tok.token_type == TokenType.WHERE and level == 0:
            return target.name, tok.start, marks, assigned
        elif tok.token_type == TokenType.PLACEHOLDER and tok.text == "?":
            marks += 1
    return None


#: what the values an UPDATE sets may be made of for the statement to leave the session as it
#: found it (no user variable, function, subquery or DEFAULT): see `_effects`
_PURE_SET = (exp.Column, exp.Literal, exp.Placeholder, exp.Identifier, exp.Null, exp.Boolean, exp.Paren, exp.Neg,
             exp.Add, exp.Sub, exp.Mul, exp.Div)


@functools.lru_cache(maxsize=512)
def _effects(sql: str) -> tuple[frozenset[str] | None, bool]:
    """Of a statement `_shape` accepts: the columns it sets (None: a DELETE), and whether it
    leaves the session as it found it: its WHERE is plain (`_SAFE_WHERE`) and each value an
    UPDATE sets is columns, literals, parameters and arithmetic. Such a statement, on a table
    with no trigger, sets no user variable, session setting, lock or temporary table, so the
    connection needs no reset after it (see `_Connection.clean`)."""
    shape = _shape(sql)
    if shape is None:  # not a fast statement: taken as one that may do anything
        return None, False
    tree = sqlglot.parse_one(sql, read="mysql")
    if isinstance(tree, exp.Delete):
        return None, True
    return shape[3], all(isinstance(node, _PURE_SET) and not _is_default(node)
                         for e in tree.expressions for node in e.expression.walk())


def _is_default(node: Any) -> bool:
    """`DEFAULT` (read as a column): the column's default, an expression of the table's own."""
    name = node.this if isinstance(node, exp.Column) else node
    return isinstance(name, exp.Identifier) and not name.quoted and name.name.upper() == "DEFAULT"


_SYSTEM_VERSIONING = re.compile(r"\bWITH\s+SYSTEM\s+VERSIONING\b", re.I)


def _may_cascade(create: str, assigned: frozenset[str] | None) -> bool:
    """Whether a statement on the table `create` (its SHOW CREATE TABLE text) defines may set off
    another table's foreign key (CASCADE, SET NULL, SET DEFAULT): a DELETE (`assigned` None) may;
    an UPDATE only when it may change a column of one of the table's keys, since a foreign key
    refers to the leading columns of a key of the table it refers to, and acts only when they
    change. Read conservatively: the UPDATE may when one of the columns it sets is named on any
    line of the text that is not a column's own (keys, constraints, periods), or when the table
    has generated columns, columns set ON UPDATE, or system versioning (a change of their own)."""
    if assigned is None or _SYSTEM_VERSIONING.search(create):
        return True
    names = {"`" + c.replace("`", "``") + "`" for c in assigned}
    for line in create.split("\n")[1:]:
        if line.startswith("  `"):  # a column
            upper = line.upper()
            if " GENERATED " in upper or " AS (" in upper or " ON UPDATE " in upper:
                return True
        elif any(name in line.lower() for name in names):
            return True
    return False


def _pipeline(conn: Any, commands: list[Any]) -> list[Any]:
    """Several commands written in one go, their results read in order: one round trip instead
    of one per command. Each command is a statement (text: a COM_QUERY) or (command, payload);
    each is still one statement, run by the server one after the other exactly as if sent one
    by one (the connection has no multi-statements). A statement that fails does not stop the
    ones after it: its error takes its place in the list. A broken connection raises."""
    if conn._sock is None:
        raise pymysql.err.InterfaceError(0, "")
    if conn._result is not None and (conn._result.unbuffered_active or conn._result.has_next):
        raise pymysql.err.InterfaceError(0, "a result is still being read")
    conn._result = None
    conn.ended = False
    packets: list[bytes] = []
    kinds: list[tuple[int, int]] = []
    for item in commands:
        command, data = (COMMAND.COM_QUERY, item.encode(conn.encoding)) if isinstance(item, str) else item
        payload = bytes([command]) + data
        seq = 0
        while True:  # a payload of 16 MiB or more goes in several packets, numbered on
            chunk, payload = payload[:MAX_PACKET_LEN], payload[MAX_PACKET_LEN:]
            packets.append(struct.pack("<I", len(chunk))[:3] + bytes([seq % 256]) + chunk)
            seq += 1
            if len(chunk) < MAX_PACKET_LEN:
                break
        kinds.append((command, seq))
    conn._write_bytes(b"".join(packets))
    out: list[Any] = []
    for command, seq in kinds:
        conn._next_seq_id = seq % 256
        try:
            if command == COMMAND.COM_QUERY:
                result = _read_result(conn)
                while result.has_next:  # more result sets (none of goex's statements makes them)
                    result.has_next = _read_result(conn).has_next
                conn._result = result
                if result.server_status is not None:
                    conn.server_status = result.server_status
                out.append(result)
            else:
                out.append(conn._read_ok_packet())
        except pymysql.err.MySQLError as exc:
            if conn._sock is None:  # the connection is gone, not just the statement
                raise
            out.append(exc)
    return out


class _NewCascade(ActionFailed):
    """A foreign key that cascades from a table the statements changed, to a table not imaged,
    came while they ran (a table created with one is not held off by the images' locks)."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"sql.execute: foreign keys that cascade ({', '.join(keys)}) were created while the "
                         "statements ran; nothing was applied; run the action again")


def _may_set_off(statement: str) -> bool:
    """Whether a DML statement may set off a foreign key of another table: all but a plain INSERT."""
    said = _words(statement)
    return not (said[:1] == ["insert"] and "duplicate" not in said)


def _new_cascades(cur: Any, db: str, tables: dict[str, Any]) -> list[str]:
    """After the statements, in their transaction: the foreign keys that cascade (or set) from a
    table they may have changed to one that was not imaged. Such a key came after the schema
    was read (`_Meta.resolve` images every table one reaches); once its cascade changed rows it
    cannot be dropped before the commit, so this read sees every cascade that ran."""
    cur.execute("SELECT REFERENCED_TABLE_NAME,TABLE_NAME,CONSTRAINT_NAME,UPDATE_RULE,DELETE_RULE FROM "
                "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA=%s AND UNIQUE_CONSTRAINT_SCHEMA=%s",
                (db, db))
    return sorted(f"{child}.{name}" for parent, child, name, update, delete in cur.fetchall()
                  if parent in tables and child not in tables and {update, delete} - {"RESTRICT", "NO ACTION"})


class _Result:
    """What `_read_result` reads of one statement's response: as PyMySQL's `MySQLResult` has it
    (`rows`, `affected_rows`, `insert_id`, `server_status`, `warning_count`, `message`,
    `has_next`), without the column descriptions."""

    unbuffered_active = False

    def __init__(self) -> None:
        self.rows: tuple[tuple[Any, ...], ...] | None = None
        self.affected_rows: int | None = None
        self.insert_id: int | None = None
        self.server_status: int | None = None
        self.warning_count = 0
        self.message: bytes | None = None
        self.has_next: bool | None = None


def _read_result(conn: Any) -> _Result:
    """One COM_QUERY response, read as PyMySQL's `MySQLResult.read` reads it (its packets through
    `conn._read_packet`, which raises the server's error; each value decoded and converted by
    its column's type and character set the same way), but of each column description only the
    type and character set, from its fixed-length end: a pipeline's results are read for their
    rows and counts only."""
    out = _Result()
    first = conn._read_packet()
    if first.is_ok_packet():
        ok = OKPacketWrapper(first)
        out.affected_rows, out.insert_id, out.server_status = ok.affected_rows, ok.insert_id, ok.server_status
        out.warning_count, out.message, out.has_next = ok.warning_count, ok.message, ok.has_next
        return out
    if first.is_load_local_packet():  # never asked for: the server waits for a file; the session is lost
        conn._force_close()
        raise pymysql.err.OperationalError(2014, "Command Out of Sync: the server asked for a local file")
    columns = first.read_length_encoded_integer()
    encoding = conn.encoding
    converters: list[tuple[str | None, Any]] = []
    for _ in range(columns):
        data = conn._read_packet()._data  # ... 0x0c, charset (2), length (4), type (1), flags (2), decimals, 0 0
        kind, charset = data[-6], data[-12] | data[-11] << 8
        if not conn.use_unicode:
            decode = None
        elif kind == FIELD_TYPE.JSON:
            decode = encoding
        elif kind in TEXT_TYPES:
            decode = None if charset == 63 else encoding
        else:
            decode = "ascii"
        convert = conn.decoders.get(kind)
        converters.append((decode, None if convert is pymysql.converters.through else convert))
    if not conn._read_packet().is_eof_packet():
        conn._force_close()
        raise pymysql.err.OperationalError(2014, "Command Out of Sync: no end of the column descriptions")
    rows = []
    while True:
        packet = conn._read_packet()
        data = packet._data
        if data[0] == 0xFE and len(data) < 9:  # the end: 0xfe, warnings (2), status (2)
            out.warning_count = data[1] | data[2] << 8
            out.has_next = bool((data[3] | data[4] << 8) & SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS)
            break
        row = []
        at = 0
        for decode, convert in converters:
            if at >= len(data):  # no more columns in this row (as PyMySQL reads it)
                break
            value, at = _lenenc_string(data, at)
            if value is not None:
                if decode is not None:
                    value = value.decode(decode)
                if convert is not None:
                    value = convert(value)
            row.append(value)
        rows.append(tuple(row))
    out.affected_rows, out.rows = len(rows), tuple(rows)
    return out


def _lenenc_string(data: bytes, at: int) -> tuple[Any, int]:
    """The length-encoded string at `at` of a row packet (None: NULL), and where the next starts."""
    size = data[at]
    if size < 0xFB:
        return data[at + 1:at + 1 + size], at + 1 + size
    if size == 0xFB:
        return None, at + 1
    width = 2 if size == 0xFC else 3 if size == 0xFD else 8
    size = int.from_bytes(data[at + 1:at + 1 + width], "little")
    start = at + 1 + width
    return data[start:start + size], start + size


_SPECIAL = re.compile(r"[\\'\"\x00\n\r\x1a]")


def _plain(value: Any) -> bool:
    """Whether `value` is quoted the same with and without NO_BACKSLASH_ESCAPES: no string in it
    holds a character either mode escapes (bytes are hex, numbers and dates have none)."""
    if isinstance(value, str):
        return not _SPECIAL.search(value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    return True


def _schema_key(results: list[Any]) -> tuple[Any, ...] | None:
    """What a table's schema is kept under, from the results of `_key_queries`: its SHOW CREATE
    TABLE text without the AUTO_INCREMENT position (columns, keys, engine, its own foreign keys,
    defaults), its triggers and the foreign keys of other tables that refer to it. None when
    one of them failed (not a table)."""
    if any(isinstance(r, Exception) for r in results):
        return None
    return _AI.sub("", _rows(results[0])[0][1]), _sorted_links(results[1]), _sorted_links(results[2])


def _sorted_links(result: Any) -> tuple[tuple[Any, ...], ...]:
    """The rows of one of `_LINKS_OF`, in a fixed order."""
    return tuple(sorted(_rows(result), key=repr))


def _rows(result: Any) -> list[tuple[Any, ...]]:
    """A pipelined statement's rows; its error raised."""
    if isinstance(result, Exception):
        raise result
    return list(result.rows or ())


def _own_session(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks=0, sql_mode='NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', "
                    "lock_wait_timeout=60, innodb_lock_wait_timeout=60")


def _fetch(cur: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    cur.execute(sql, args)
    return list(cur.fetchall())


def _legacy(captured: dict[str, Any]) -> bool:
    """An entry of DML recorded before rows were compared one by one (whole tables, or keys)."""
    return any(e.get("scope") != "rows" for e in captured.get("tables", {}).values())


def _definition(create: str) -> str:
    """A table's definition, without its AUTO_INCREMENT position (a counter is state, not definition)."""
    return _sha(_AI.sub("", create))[:24]


def _image(cur: Any, meta: _Meta, table: str, rows: list[tuple[str | None, str]], whole: bool) -> dict[str, Any]:
    return _image_of(_show_create(cur, table), meta, table, rows, whole)


def _image_of(create: str, meta: _Meta, table: str, rows: list[tuple[str | None, str]],
              whole: bool) -> dict[str, Any]:
    """A table's before-image: its rows, with its definition and AUTO_INCREMENT position from `create`."""
    counter = _AI.search(create)
    cols = meta.insertable(table)
    return {"scope": "rows", "whole": whole, "columns": [c for c, _ in cols], "types": [t for _, t in cols],
            "pk": meta.pk.get(table), "definition": _definition(create), "rows": rows,
            "auto_increment": int(counter.group(1)) if counter and table in meta.auto else None}


def _row_expr(entry: dict[str, Any]) -> str:
    return "CONCAT_WS(','," + ",".join(_lit(c, t) for c, t in zip(entry["columns"], entry["types"], strict=False)) + ")"


def _key_expr(entry: dict[str, Any]) -> str:
    types = dict(zip(entry["columns"], entry["types"], strict=False))
    return "CONCAT_WS(','," + ",".join(_lit(c, types.get(c, "")) for c in entry["pk"]) + ")"


def _select_rows(cur: Any, table: str, entry: dict[str, Any], keys: list[str] | None,
                 lock: bool = False) -> list[tuple[str | None, str]]:
    """(key literal, row literal) of the whole table, or of the rows with these keys."""
    if keys is None:
        return _fetch(cur, _rows_queries(table, entry, None, lock)[0])
    return [row for query in _rows_queries(table, entry, keys, lock) for row in _fetch(cur, query)]


def _rows_queries(table: str, entry: dict[str, Any], keys: list[str] | None, lock: bool = False) -> list[str]:
    """The queries `_select_rows` reads with (none for no keys)."""
    head = f"SELECT {_key_expr(entry) if entry['pk'] else 'NULL'},{_row_expr(entry)} FROM {_q(table)}"
    tail = " FOR UPDATE" if lock else ""
    if keys is None:
        return [head + tail]
    cols = ",".join(_q(c) for c in entry["pk"])
    return [f"{head} WHERE ({cols}) IN (" + ",".join(f"({k})" for k in keys[i:i + 500]) + f"){tail}"
            for i in range(0, len(keys), 500)]


def _counts(cur: Any, table: str, entry: dict[str, Any], rows: list[str], lock: bool = False) -> Counter:
    """How many rows of a table without a primary key equal each of `rows` (row literals)."""
    expr = _row_expr(entry).replace("%", "%%")
    out: Counter = Counter()
    for i in range(0, len(rows), 200):
        chunk = rows[i:i + 200]
        out.update(r for (r,) in _fetch(cur, f"SELECT {expr} FROM {_q(table).replace('%', '%%')} WHERE {expr} IN ("
                                        + ",".join(["%s"] * len(chunk)) + ")" + (" FOR UPDATE" if lock else ""), chunk))
    return out


def changed_rows(captured: dict[str, Any], get_blob: GetBlob, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` rows a captured action changed, as {table, op, before, after} (a keyed row
    before and after it, or a row of a table without a key with how many copies there were and
    are); and how many in all. Empty for DDL, kept as a database image."""
    if captured.get("mode") != "dml":
        return [], 0
    out: list[dict[str, Any]] = []
    total = 0
    for table, entry in (captured.get("tables") or {}).items():
        diff = json.loads(get_blob(entry["blob"]))
        name = f"{table} ({', '.join(entry.get('columns') or [])})"
        items = [(b, a) for _, b, a in diff["keyed"]] or [(f"{r} x{nb}" if nb else None, f"{r} x{na}" if na else None)
                                                          for r, nb, na in diff["counts"]]
        for before, after in items:
            total += 1
            if len(out) < limit:
                out.append({"table": name, "op": "", "before": before, "after": after})
    return out, total


def _diff(before: list[tuple[str | None, str]], after: list[tuple[str | None, str]], keyed: bool) -> dict[str, Any]:
    """The rows that differ: [key, before row or None, after row or None] by primary key; for a
    table without one, [row, copies before, copies after]."""
    if keyed:
        b, a = dict(before), dict(after)
        return {"keyed": [[k, b.get(k), a.get(k)] for k in sorted(set(b) | set(a), key=str) if b.get(k) != a.get(k)],
                "counts": []}
    bc, ac = Counter(r for _, r in before), Counter(r for _, r in after)
    return {"keyed": [], "counts": [[r, bc[r], ac[r]] for r in sorted(set(bc) | set(ac)) if bc[r] != ac[r]]}


def _diff_fp(diff: dict[str, Any], side: int) -> str:
    items = diff["keyed"] or diff["counts"]
    return _fp(None, [f"{item[0]}\t{item[side]}" for item in items if item[side]])


def _rows_now(cur: Any, table: str, entry: dict[str, Any], diff: dict[str, Any],
              lock: bool = False) -> tuple[str, str, int | None]:
    """Where the rows an entry changed stand now: ("after" | "before" | "changed" | "definition" |
    "gone", what differs, the table's AUTO_INCREMENT position). `lock`: with locking reads."""
    keyed = [k for k, _, _ in diff["keyed"]]
    # the definition and the rows by key in one round trip (the rows are not used unless the
    # definition is the action's)
    results = _pipeline(cur.connection, [f"SHOW CREATE TABLE {_q(table)}",
                                         *(_rows_queries(table, entry, keyed, lock) if keyed else [])])
    if isinstance(results[0], pymysql.Error) and results[0].args and results[0].args[0] == 1146:
        return "gone", f"{table} is gone", None
    create = _rows(results[0])[0][1]
    found = _AI.search(create)
    counter = int(found.group(1)) if found else None
    if _definition(create) != entry["definition"]:
        return "definition", f"the definition of {table} changed since the action", counter
    if diff["keyed"]:
        now: dict[Any, Any] = dict(row for r in results[1:] for row in _rows(r))
        differ = [k for k, _, a in diff["keyed"] if now.get(k) != a]
        if differ and all(now.get(k) == b for k, b, _ in diff["keyed"]):
            return "before", "", counter
        shown = ", ".join(f"({k})" for k in differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        what = f"rows of {table} the action changed were changed since (key {shown})"
    else:
        now = _counts(cur, table, entry, [r for r, _, _ in diff["counts"]], lock)
        differ = [r for r, _, a in diff["counts"] if now.get(r, 0) != a]
        if differ and all(now.get(r, 0) == b for r, b, _ in diff["counts"]):
            return "before", "", counter
        what = f"rows of {table} the action changed were changed since ({len(differ)} of them)"
    return ("changed" if differ else "after"), what, counter


def _links(cur: Any, db: str, tables: list[str]) -> dict[str, Any]:
    """Which of `tables` have triggers, and the foreign keys from or to them (columns in order)."""
    marks = ",".join(["%s"] * len(tables))
    found = _fetch(cur, "SELECT 'G',EVENT_OBJECT_TABLE FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s "
                        f"AND EVENT_OBJECT_TABLE IN ({marks}) UNION ALL SELECT 'R',TABLE_NAME FROM "
                        "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA=%s AND "
                        f"UNIQUE_CONSTRAINT_SCHEMA=%s AND (TABLE_NAME IN ({marks}) OR "
                        f"REFERENCED_TABLE_NAME IN ({marks}))",
                   (db, *tables, db, db, *tables, *tables))
    triggers = {t for kind, t in found if kind == "G"}
    children = sorted({t for kind, t in found if kind == "R"})
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    if children:
        for name, child, col, parent, ref in _fetch(
                cur, "SELECT CONSTRAINT_NAME,TABLE_NAME,COLUMN_NAME,REFERENCED_TABLE_NAME,REFERENCED_COLUMN_NAME "
                     "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA=%s AND TABLE_NAME IN ("
                     + ",".join(["%s"] * len(children)) + ") AND REFERENCED_TABLE_SCHEMA=%s "
                     "ORDER BY TABLE_NAME,CONSTRAINT_NAME,ORDINAL_POSITION", (db, *children, db)):
            fk = keys.setdefault((child, name),
                                 {"name": name, "child": child, "parent": parent, "cols": [], "refs": []})
            fk["cols"].append(col)
            fk["refs"].append(ref)
    fks = [fk for fk in keys.values() if fk["child"] in tables or fk["parent"] in tables]
    return {"triggers": triggers, "fks": fks}


def _items(tables: dict[str, Any], get_blob: GetBlob) -> list[dict[str, Any]]:
    """The tables of an entry, as undo's template takes them."""
    return [{"table": t, "entry": e, "diff": json.loads(get_blob(e["blob"])), "counter": None}
            for t, e in sorted(tables.items())]


def _tables_of(plans: list[Plan]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {t["table"]: t["entry"] for t, _ in plans}, {t["table"]: t["diff"] for t, _ in plans}


def _put_back(cur: Any, table: str, entry: dict[str, Any], diff: dict[str, Any]) -> None:
    """The rows of `table` an entry changed, set back to their values before it."""
    columns = entry["columns"]
    if diff["keyed"]:
        cols = ",".join(_q(c) for c in entry["pk"])
        keys = [k for k, _, _ in diff["keyed"]]
        # the deletes and inserts in one round trip: inside undo's transaction, which any error
        # among them rolls back whole
        for result in _pipeline(cur.connection, [
                *(f"DELETE FROM {_q(table)} WHERE ({cols}) IN (" + ",".join(f"({k})" for k in keys[i:i + 500]) + ")"
                  for i in range(0, len(keys), 500)),
                *_insert_queries(table, columns, [b for _, b, _ in diff["keyed"] if b is not None])]):
            if isinstance(result, Exception):
                raise result
        return
    expr = _row_expr(entry)
    now = _counts(cur, table, entry, [r for r, _, _ in diff["counts"]])
    for row, was, left in diff["counts"]:
        cur.execute(f"DELETE FROM {_q(table)} WHERE {expr} = %s", (row,))
        keep = max(0, now.get(row, 0) + was - left)  # others' copies of the same row stay
        _insert(cur, table, columns, [row] * keep)


def _referenced_values(cur: Any, tables: dict[str, Any], diffs: dict[str, Any],
                       links: dict[str, Any]) -> dict[int, list[str]]:
    """Per foreign key to a table being restored: the values its rows that undo removes or
    changes are referred to by (read before the restore)."""
    out: dict[int, list[str]] = {}
    for i, fk in enumerate(links["fks"]):
        entry = tables.get(fk["parent"])
        if entry is None:
            continue
        diff = diffs[fk["parent"]]
        types = dict(zip(entry["columns"], entry["types"], strict=False))
        refs = "CONCAT_WS(','," + ",".join(_lit(c, types.get(c, "")) for c in fk["refs"]) + ")"
        present = " AND ".join(f"{_q(c)} IS NOT NULL" for c in fk["refs"])
        if diff["keyed"]:
            keys = [k for k, _, a in diff["keyed"] if a is not None]
            cols = ",".join(_q(c) for c in entry["pk"])
            where = f"({cols}) IN (" + ",".join(f"({k})" for k in keys) + ")" if keys else "FALSE"
            out[i] = [v for (v,) in _fetch(cur, f"SELECT DISTINCT {refs} FROM {_q(fk['parent'])} WHERE {where} "
                                                f"AND {present}")]
        else:
            rows = [r for r, _, a in diff["counts"] if a]
            expr = _row_expr(entry)
            out[i] = [v for (v,) in _fetch(
                cur, f"SELECT DISTINCT {refs.replace('%', '%%')} FROM {_q(fk['parent']).replace('%', '%%')} WHERE "
                     f"{expr.replace('%', '%%')} IN (" + ",".join(["%s"] * len(rows))
                     + f") AND {present.replace('%', '%%')}",
                rows)] if rows else []
    return out


def _orphans(cur: Any, tables: dict[str, Any], diffs: dict[str, Any], links: dict[str, Any],
             referenced: dict[int, list[str]]) -> list[str]:
    """After the restore, inside its transaction: rows left referring to a row that is gone."""
    out = []
    for i, fk in enumerate(links["fks"]):
        child, parent = _q(fk["child"]), _q(fk["parent"])
        match = " AND ".join(f"p.{_q(r)} = c.{_q(c)}" for c, r in zip(fk["cols"], fk["refs"], strict=False))
        dangling = f"NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match})"
        cols = ",".join(f"c.{_q(c)}" for c in fk["cols"])
        if referenced.get(i):
            (n,), = _fetch(cur, f"SELECT COUNT(*) FROM {child} c WHERE ({cols}) IN ("
                                + ",".join(f"({v})" for v in referenced[i]) + f") AND {dangling}")
            if n:
                out.append(f"{n} row(s) of {fk['child']} written since refer to rows of {fk['parent']} the undo "
                           f"removes (foreign key {fk['name']}); undo them first, or delete or change those rows")
        entry = tables.get(fk["child"])
        if entry is not None and entry["pk"] and diffs[fk["child"]]["keyed"]:
            keys = [k for k, b, _ in diffs[fk["child"]]["keyed"] if b is not None]
            if not keys:
                continue
            pk = ",".join(f"c.{_q(c)}" for c in entry["pk"])
            present = " AND ".join(f"c.{_q(c)} IS NOT NULL" for c in fk["cols"])
            (n,), = _fetch(cur, f"SELECT COUNT(*) FROM {child} c WHERE ({pk}) IN ("
                                + ",".join(f"({k})" for k in keys) + f") AND {present} AND {dangling}")
            if n:
                out.append(f"{n} row(s) of {fk['child']} the undo puts back refer to rows of {fk['parent']} that "
                           f"are gone since (foreign key {fk['name']})")
    return out


# -- sequences: not transactional; their state is the next value NEXTVAL gives, and its round ------

_SEQUENCE_CALL = re.compile(r"\b(nextval|setval|lastval|next\s+value\s+for|previous\s+value\s+for)\b", re.I)


def _may_use_sequence(statements: list[str], meta: _Meta) -> bool:
    """Whether statements on a table (a one-table metadata read) may take or set sequence values."""
    return any(_SEQUENCE_CALL.search(_uncommented(s)) for s in statements) or \
        any("nextval" in d.lower() for ds in meta.defaults.values() for d in ds)


def _sequences_of(meta: _Meta, statements: list[str]) -> list[str]:
    """The sequences statements name, or that a DEFAULT or a trigger of a table they change names."""
    if not meta.sequences:
        return []
    names: set[str] = set()
    for statement in statements:
        names |= _names(statement)
    for table in meta.resolve(names):
        for default in meta.defaults.get(table, []):
            names |= _names(default)
        for _, body in meta.triggers.get(table, ()):
            names |= _names(body)
    return sorted(meta.sequences[n] for n in names if n in meta.sequences)


def _sets_sequence(statements: list[str], name: str) -> bool:
    return any("setval" in _uncommented(s).lower() and name.lower() in _names(s) for s in statements)


def _seq_next(cur: Any, name: str) -> list[int] | None:
    """[next value, round] of a sequence, taking that value; None when it has run out."""
    try:
        (value,), = _fetch(cur, f"SELECT NEXTVAL({_q(name)})")
    except pymysql.Error as exc:
        if exc.args and exc.args[0] == 4084:  # ER_SEQUENCE_RUN_OUT: nothing was taken
            return None
        raise
    (round_,), = _fetch(cur, f"SELECT cycle_count FROM {_q(name)}")
    return [int(value), int(round_)]


def _seq_set(cur: Any, name: str, state: list[int]) -> None:
    """Make `state[0]` the value NEXTVAL gives next, in round `state[1]` (RESTART also writes the
    sequence's cached position through to its table)."""
    cur.execute(f"ALTER SEQUENCE {_q(name)} RESTART WITH {int(state[0])}")
    if state[1]:
        cur.execute(f"SELECT SETVAL({_q(name)}, {int(state[0])}, 0, {int(state[1])})")


def _seq_peek(cur: Any, name: str) -> list[int] | None:
    """[next value, round] of a sequence, without spending it."""
    state = _seq_next(cur, name)
    if state is not None:
        _seq_set(cur, name, state)
    return state


def _sequences_after(cur: Any, sequences: dict[str, Any], statements: list[str]) -> dict[str, Any]:
    """Inside the action's transaction: where it leaves each sequence it took values from (the
    last value it took, one step on); unknown (None) for a sequence it set with SETVAL."""
    out = {}
    for name, info in sequences.items():
        if _sets_sequence(statements, name):
            out[name] = {**info, "after": None}
            continue
        (last,), = _fetch(cur, f"SELECT PREVIOUS VALUE FOR {_q(name)}")
        if last is not None:
            out[name] = {**info, "after": int(last) + info["increment"]}
    return out


def _seq_problem(name: str, info: dict[str, Any], now: list[int] | None) -> str:
    """Why undo may not set a sequence back: another client took values from it since."""
    if now is None or now[0] == info["before"][0] or info.get("after") is None or now[0] == info["after"]:
        return ""
    return (f"sequence {name} was used since the action (it would give {now[0]} next; the action left it at "
            f"{info['after']}): setting it back would hand out those values again")


def _where_params(params: Any, skip: int) -> Any:
    if isinstance(params, (list, tuple)):
        return list(params)[skip:]
    return params


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 -- closing a connection that is gone already: nothing is left to do
        pass


def _rollback(conn: Any) -> None:
    try:
        if conn.open:
            conn.rollback()
    except pymysql.Error:
        _close(conn)


def _show_create(cur: Any, table: str) -> str:
    cur.execute(f"SHOW CREATE TABLE {_q(table)}")
    return cur.fetchone()[1]


def _auto_increment(cur: Any, table: str) -> int | None:
    try:
        found = _AI.search(_show_create(cur, table))
    except pymysql.Error:
        return None
    return int(found.group(1)) if found else None


def _keyed(cur: Any, meta: _Meta, table: str) -> list[tuple[str | None, str]]:
    select, _, _ = _row_sql(meta, table)
    cur.execute(f"SELECT {select} FROM {_q(table)}")
    return list(cur.fetchall())


def _rows_by_keys(cur: Any, meta: _Meta, table: str, keys: list[str]) -> list[str]:
    select, _, pk = _row_sql(meta, table)
    assert pk
    cols = ",".join(_q(c) for c in pk)
    out: list[str] = []
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        cur.execute(f"SELECT {select} FROM {_q(table)} WHERE ({cols}) IN (" + ",".join(f"({k})" for k in chunk) + ")")
        out.extend(r for _, r in cur.fetchall())
    return out


def _count_changes(then: list[tuple[str | None, str]], now: list[tuple[str | None, str]], keyed: bool) -> int:
    if keyed:
        a = {k: r for k, r in then}
        b = {k: r for k, r in now}
        return sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
    a_c, b_c = Counter(r for _, r in then), Counter(r for _, r in now)
    return max(sum((a_c - b_c).values()), sum((b_c - a_c).values()))


def _all_changed(then: list[tuple[str | None, str]], now: list[tuple[str | None, str]], keyed: bool) -> bool:
    """Whether no row of the table's (at least 2) rows before is left as it was."""
    if len(then) < 2:
        return False
    if keyed:
        after = dict(now)
        return all(after.get(k) != r for k, r in then)
    return not (Counter(r for _, r in then) & Counter(r for _, r in now))


def _matched(cur: Any, count: int) -> int:
    """The rows the statement just run matched: an UPDATE's server message says (it counts
    rows it changed), else `count`."""
    found = re.search(rb"Rows matched: (\d+)", cur.connection._result.message or b"")
    return int(found.group(1)) if found else count


def _every_row(cur: Any, table: str, first: str, count: int) -> bool:
    """After a plain UPDATE/DELETE that matched `count` rows: whether it matched every row of
    the table (at least 2). Reads at most as many rows as the statement matched."""
    if count < 2:
        return False
    if first == "delete":
        cur.execute(f"SELECT 1 FROM {_q(table)} LIMIT 1")
        return cur.fetchone() is None
    cur.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {_q(table)} LIMIT {count + 1}) AS goex_rows")
    return cur.fetchone()[0] == count


def _creates_trigger(statement: str) -> bool:
    words = _words(statement)
    return bool(words) and words[0] == "create" and "trigger" in words[1:8]


def _insert(cur: Any, table: str, columns: list[str], rows: list[str]) -> None:
    for query in _insert_queries(table, columns, rows):
        cur.execute(query)


def _insert_queries(table: str, columns: list[str], rows: list[str]) -> list[str]:
    """INSERTs of row literals, in batches of about `_BATCH` bytes."""
    head = f"INSERT INTO {_q(table)} (" + ",".join(_q(c) for c in columns) + ") VALUES "
    out: list[str] = []
    batch: list[str] = []
    size = 0
    for row in rows:
        batch.append(f"({row})")
        size += len(row) + 3
        if size >= _BATCH:
            out.append(head + ",".join(batch))
            batch, size = [], 0
    if batch:
        out.append(head + ",".join(batch))
    return out


def _all_triggers(cur: Any, db: str) -> dict[str, dict[str, Any]]:
    cur.execute("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORDER "
                "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA=%s", (db,))
    out = {}
    for name, table, event, timing, order in cur.fetchall():
        if is_goex_name(name):
            continue
        cur.execute(f"SHOW CREATE TRIGGER {_q(name)}")
        row = cur.fetchone()
        out[name] = {"name": name, "table": table, "event": event, "timing": timing, "order": int(order),
                     "sql_mode": row[1], "create": row[2]}
    return out


def _trigger_defs(cur: Any, db: str, table: str) -> list[dict[str, Any]]:
    defs = [d for d in _all_triggers(cur, db).values() if d["table"] == table]
    return sorted(defs, key=lambda d: (d["event"], d["timing"], d["order"]))


def _current_trigger(cur: Any, db: str, name: str) -> dict[str, Any] | None:
    cur.execute("SELECT EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA=%s AND TRIGGER_NAME=%s", (db, name))
    row = cur.fetchone()
    return {"table": row[0], "event": row[1], "timing": row[2]} if row else None


def _create_trigger(cur: Any, trig: dict[str, Any]) -> None:
    cur.execute("SELECT @@SESSION.sql_mode")
    mode = cur.fetchone()[0]
    cur.execute("SET SESSION sql_mode=%s", (trig["sql_mode"],))
    try:
        cur.execute(trig["create"])
    finally:
        cur.execute("SET SESSION sql_mode=%s", (mode,))


def _state(cur: Any, db: str) -> dict[str, str]:
    """Fingerprint of every table, view and trigger (goex's own excluded)."""
    meta = _Meta(cur, db)
    out = {}
    for table in meta.tables.values():
        out[f"table:{table}"] = _fp(_show_create(cur, table), [r for _, r in _keyed(cur, meta, table)])
    for view in meta.views:
        cur.execute(f"SHOW CREATE VIEW {_q(view)}")
        out[f"view:{view}"] = _fp(cur.fetchone()[1], [])
    for name, trig in _all_triggers(cur, db).items():
        out[f"trigger:{name}"] = _fp(json.dumps(trig, sort_keys=True), [])
    return out


def _database_image(cur: Any, db: str, put_blob: PutBlob) -> dict[str, Any]:
    meta = _Meta(cur, db)
    tables = {}
    state = {}
    for table in meta.tables.values():
        create = _show_create(cur, table)
        select, columns, _ = _row_sql(meta, table)
        cur.execute(f"SELECT {select} FROM {_q(table)}")
        rows = sorted(r for _, r in cur.fetchall())
        blobs = []
        chunk: list[str] = []
        size = 0
        for row in rows:
            chunk.append(row)
            size += len(row)
            if size >= 4 * _BATCH:
                blobs.append(put_blob(json.dumps(chunk).encode()))
                chunk, size = [], 0
        if chunk or not blobs:
            blobs.append(put_blob(json.dumps(chunk).encode()))
        tables[table] = {"create": create, "columns": columns, "blobs": blobs,
                         "children": sorted(meta.children.get(table, ()))}
        state[f"table:{table}"] = _fp(create, rows)
    views = {}
    for view in meta.views:
        cur.execute(f"SHOW CREATE VIEW {_q(view)}")
        create = cur.fetchone()[1]
        views[view] = {"create": create}
        state[f"view:{view}"] = _fp(create, [])
    triggers = _all_triggers(cur, db)
    for name, trig in triggers.items():
        state[f"trigger:{name}"] = _fp(json.dumps(trig, sort_keys=True), [])
    return {"tables": tables, "views": views, "triggers": triggers, "state": state}
