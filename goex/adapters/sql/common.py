"""What every SQL engine shares: the engine protocol, statement splitting and analysis, errors,
and result formatting.

An engine (SQLite, PostgreSQL, MySQL/MariaDB) runs an action in four steps the adapter drives:

0. `begin()`: a new action starts (the engine forgets what it checked for the previous one).
1. `dry_run(statements, params)`: the statements' effect, by running them in a transaction that
   is rolled back: `rows` they would change (cascades and triggers included where the engine can
   tell), `all_rows` (the tables of at least 2 rows whose every row they change, whatever the
   WHERE says) and `creates_trigger`.
2. `before(statements, analyses, put_blob)`: undo data that must exist before anything runs
   (for example a dump taken before DDL an engine commits on its own); journaled with the entry.
3. `stage(statements, params, analyses, before)`: run the statements in one open transaction and
   return a `Staged`: the output, `capture(put_blob)` (the undo data and the after-state
   fingerprint, read inside the transaction), `commit()` and `abort()`. The runtime journals
   what `capture` returns durably before it calls `commit`, so every committed change has its
   undo data on disk.
4. `conflicts(before, captured, get_blob)`, `revert(before, captured, get_blob, force)`,
   `committed(before, captured, get_blob)`: undo, and settling an action a crash interrupted.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from typing import Any, Callable, Protocol

import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from ...errors import ActionFailed, Refused, UndoDeclined

PutBlob = Callable[[bytes], str]
GetBlob = Callable[[str], bytes]

MAX_ROWS = 1000  # rows a query returns; more are cut with a truncation marker
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # its "falling back to Command" notes are not for users

#: statement kinds no engine can take back: refused unless a policy rule allows `irreversible`
IRREVERSIBLE = {"grant", "revoke", "create_database", "drop_database", "create_user", "drop_user", "alter_user",
                "create_role", "drop_role", "alter_system", "copy_to_program", "load_data", "set_global",
                "create_schema", "drop_schema", "alter_database", "create_extension", "drop_extension",
                "create_function", "drop_function", "create_procedure", "drop_procedure", "call", "do",
                "vacuum_into", "lock", "unlock", "set_password", "flush", "kill", "shutdown", "install", "uninstall"}


class SqlRefused(Refused):
    """SQL that would reach beyond its own transaction and database (ATTACH, VACUUM INTO,
    COMMIT, PRAGMA writes, extensions): refused before anything runs."""

    rule = "sql.confinement"

    def __init__(self, reason: str):
        super().__init__(reason, f"SQL refused: {reason}")


class UndoRefused(UndoDeclined, ActionFailed):
    """Undo found a row the action changed that was changed since, or rows written since that
    its undo would leave referring to nothing: nothing was undone (an `UndoConflict` to the
    runtime, forced or not)."""

    def __init__(self, reason: str, forceable: bool = True):
        UndoDeclined.__init__(self, reason, conflict=True, forceable=forceable)


class SqlSyntaxError(ActionFailed):
    """The SQL does not parse; the message gives line and column."""


class Staged:
    """Statements run in an open transaction, not yet committed: the output, `capture` (undo data
    and {"after": fingerprint}, JSON), `commit` and `abort`."""

    def __init__(self, output: Any, capture: Callable[[PutBlob], dict[str, Any]], commit: Callable[[], None],
                 abort: Callable[[], None]) -> None:
        self.output = output
        self.capture = capture
        self.commit = commit
        self.abort = abort


class Engine(Protocol):
    @property
    def kind(self) -> str:
        """One of sqlite, postgresql, mysql."""

    @property
    def dialect(self) -> str:
        """sqlglot's dialect"""

    def split(self, sql: str) -> list[str]: ...

    def begin(self) -> None: ...

    def check(self, statement: str, analysis: dict[str, Any]) -> None: ...

    def dry_run(self, statements: list[str], params: Any) -> dict[str, Any]: ...

    def before(self, statements: list[str], analyses: list[dict[str, Any]], put_blob: PutBlob) -> dict[str, Any]: ...

    def read(self, statements: list[str], params: Any, analyses: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Run statements that only read; their output, or None when they write after all (they
        then run as a write)."""

    def stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
              before: dict[str, Any]) -> Staged: ...

    def conflicts(self, before: dict[str, Any], captured: dict[str, Any],
                  get_blob: GetBlob) -> list[tuple[str, str]]: ...

    def revert(self, before: dict[str, Any], captured: dict[str, Any] | None, get_blob: GetBlob,
               force: bool) -> None: ...

    def committed(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> tuple[str, str]: ...

    def dump(self) -> str: ...

    def agent_privileges(self) -> dict[str, Any]:
        """Who agent SQL runs as ("runs_as") and whether that is safe ("safe", "dangerous": what
        it holds beyond the database, "detail"): for `goex doctor`."""

    def close(self) -> None: ...


_CACHED_TEXT = 8192  # longer texts (bulk inserts) are tokenized each time rather than kept
#: tokens holding a value, not a word of the statement
QUOTED = frozenset({TokenType.STRING, TokenType.NATIONAL_STRING, TokenType.RAW_STRING, TokenType.HEREDOC_STRING,
                    TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.BYTE_STRING})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*|\(")


def tokens(sql: str, dialect: str) -> tuple[Any, ...]:
    """sqlglot's tokens of `sql` in `dialect`, also inside statements it reads as commands (it
    hands their text over as one string token: here it is tokenized too), positions relative to
    `sql`. Short texts are cached, since an action's text is read several times (split, checks,
    placeholders) and agents repeat the same statements. Raises sqlglot's TokenError."""
    if len(sql) > _CACHED_TEXT:
        return _tokenize(sql, dialect)
    return _tokens(sql, dialect)


@functools.lru_cache(maxsize=1024)
def _tokens(sql: str, dialect: str) -> tuple[Any, ...]:
    return _tokenize(sql, dialect)


def _tokenize(sql: str, dialect: str) -> tuple[Any, ...]:
    tokenizer = sqlglot.Dialect.get_or_raise(dialect)
    found = list(tokenizer.tokenize(sql))
    commands = tokenizer.tokenizer_class.COMMANDS
    for i, tok in enumerate(found[:-1]):
        if tok.token_type in commands and found[i + 1].token_type == TokenType.STRING and \
                (i == 0 or found[i - 1].token_type == TokenType.SEMICOLON):
            offset = tok.end + 1
            rest = _tokenize(sql[offset:], dialect)
            for inner in rest:
                inner.start += offset
                inner.end += offset
            return tuple(found[:i + 1]) + rest
    return tuple(found)


def uncommented(sql: str, dialect: str, values: bool = True) -> str:
    """`sql` without its comments, as sqlglot's tokenizer for `dialect` reads it (tokens joined by
    a space); `values`: string literals kept (else left out). `sql` itself when it cannot be read."""
    try:
        found = tokens(sql, dialect)
    except sqlglot.errors.TokenError:
        return sql
    return " ".join(sql[t.start:t.end + 1] for t in found if values or t.token_type not in QUOTED)


def words(sql: str, dialect: str) -> list[str]:
    """The bare words of `sql`, lowercased, and its opening parentheses: comments, literals and
    quoted names left out."""
    try:
        found = tokens(sql, dialect)
    except sqlglot.errors.TokenError:
        return _WORD.findall(sql.lower())
    return [w for t in found if t.token_type not in QUOTED and t.token_type != TokenType.IDENTIFIER
            for w in _WORD.findall(sql[t.start:t.end + 1].lower())]


def read_tokens(sql: str, dialect: str) -> tuple[Any, ...]:
    """`tokens`, with a tokenizer error as the action's SqlSyntaxError."""
    try:
        return tokens(sql, dialect)
    except sqlglot.errors.TokenError as exc:
        raise SqlSyntaxError(f"sql.execute: cannot read the SQL: {exc}") from None


def split_tokens(sql: str, dialect: str) -> list[str]:
    """Statements of `sql` split on top-level semicolons by sqlglot's tokenizer for `dialect`
    (quotes, comments and dollar quoting respected); each is the original text."""
    found = read_tokens(sql, dialect)
    out, start = [], None
    end = 0
    for tok in found:
        if tok.token_type == TokenType.SEMICOLON:
            if start is not None:
                out.append(sql[start:end + 1].strip())
            start = None
            continue
        if start is None:
            start = tok.start
        end = tok.end
    if start is not None:
        out.append(sql[start:end + 1].strip())
    if not out:
        raise ActionFailed("sql.execute: no statement in 'sql'")
    return out


def kind_of(tree: exp.Expression, statement: str) -> str:
    """A statement kind: select, insert, update, delete, create, drop, alter, truncate, ...;
    for sqlglot's generic commands the first words (grant, create_database, ...)."""
    words = statement.lower().split()
    first = words[0] if words else ""
    if isinstance(tree, exp.Command) or first in ("grant", "revoke", "call", "do", "lock", "unlock", "flush", "kill"):
        two = "_".join(words[:2])
        for candidate in (two, "_".join(words[:3]), first):
            if candidate in IRREVERSIBLE:
                return candidate
        return first
    if isinstance(tree, (exp.Create, exp.Drop)):
        what = (tree.args.get("kind") or "").lower()
        base = "create" if isinstance(tree, exp.Create) else "drop"
        if what in ("database", "schema", "function", "procedure", "user", "role", "extension"):
            return f"{base}_{what}"
        return base
    if isinstance(tree, exp.TruncateTable):
        return "truncate"
    return type(tree).__name__.lower()


def analyse(statement: str, dialect: str) -> dict[str, Any]:
    """kind, tables, whether a WHERE exists, whether it drops a column; from sqlglot. The same
    statement text (new parameters) is parsed once."""
    return dict(_analyse(statement, dialect))


@functools.lru_cache(maxsize=512)
def _analyse(statement: str, dialect: str) -> dict[str, Any]:
    flat = " ".join(statement.lower().split())
    try:
        tree = sqlglot.parse_one(statement, read=dialect)
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as exc:  # e.g. an unclosed quote
        err = exc.errors[0] if isinstance(exc, sqlglot.errors.ParseError) and exc.errors else {}
        where = f" at line {err.get('line')}, column {err.get('col')}" if err.get("line") else ""
        # The engine is the authority on its own syntax: its dry run reports the error, or runs
        # what sqlglot does not know. The analysis falls back to the words.
        return {"kind": flat.split(" ", 1)[0], "tables": [], "where": " where " in f" {flat} ",
                "drop_column": "drop column" in flat, "parsed": False,
                "parse_error": f"{err.get('description', exc)}{where}"}
    # one statement the engine keeps whole, read by sqlglot as several: a compound statement
    # (CREATE TRIGGER ... BEGIN ...; END); its head says what it is
    head = tree.expressions[0] if isinstance(tree, exp.Block) and tree.expressions else tree
    kind = kind_of(head, statement) if isinstance(head, exp.Expression) else "command"
    drop_column = isinstance(tree, exp.Alter) and any(isinstance(a, exp.Drop) for a in tree.args.get("actions") or [])
    if kind == "alter" and "drop column" in flat:
        drop_column = True
    tables = sorted({t.name for t in tree.find_all(exp.Table) if t.name})
    return {"kind": kind, "tables": tables, "where": tree.args.get("where") is not None, "drop_column": drop_column,
            "parsed": True, "ddl": kind in ("create", "drop", "alter", "truncate", "rename", "command")
            or kind.startswith(("create_", "drop_", "alter_"))}


# what a WHERE may hold for goex to read the rows it selects: columns, values, comparisons and
# boolean logic; no function calls and no subqueries (they could do anything)
_PLAIN_WHERE = (exp.Where, exp.Column, exp.Literal, exp.Placeholder, exp.Identifier, exp.EQ, exp.NEQ, exp.GT,
                exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not, exp.Paren, exp.In, exp.Between, exp.Is,
                exp.Null, exp.Boolean, exp.Like, exp.ILike, exp.Neg, exp.Add, exp.Sub, exp.Mul, exp.Div,
                exp.Tuple, exp.NullSafeEQ)


def sample_query(statement: str, params: Any, dialect: str, limit: int) -> tuple[str, list[Any] | None]:
    """`SELECT * FROM <table> WHERE <the statement's WHERE> LIMIT <limit>`: the rows a single-table
    UPDATE or DELETE selects, with the WHERE's own parameters (as `?` and a list). Raises
    ValueError saying why when that cannot be read safely (joins, functions, subqueries, ...)."""
    try:
        tree = sqlglot.parse_one(statement, read=dialect)
    except sqlglot.errors.SqlglotError:
        raise ValueError("the statement does not parse") from None
    if not isinstance(tree, (exp.Update, exp.Delete)):
        raise ValueError("not a plain UPDATE or DELETE")
    target = tree.this if isinstance(tree, exp.Update) else tree.args.get("this")
    if not isinstance(target, exp.Table) or not target.name:
        raise ValueError("its target is not a single table")
    if any(tree.args.get(k) for k in ("from", "joins", "using", "tables", "with", "order", "limit", "returning")):
        raise ValueError("it reads other tables, orders, limits or returns rows")
    where = tree.args.get("where")
    if where is not None and any(not isinstance(node, _PLAIN_WHERE) for node in where.walk()):
        raise ValueError("its WHERE calls functions or holds subqueries")
    before = [n for e in (tree.expressions if isinstance(tree, exp.Update) else [])
              for n in e.find_all(exp.Placeholder)]
    marks = [n for n in where.find_all(exp.Placeholder, bfs=False)] if where is not None else []
    values: list[Any] = []
    for mark in marks:
        name = mark.args.get("this")
        if name and isinstance(params, dict) and name in params:
            values.append(params[name])
        elif not name and isinstance(params, (list, tuple)) and len(before) + len(marks) == len(params):
            values.append(params[len(before) + len(values)])
        else:
            raise ValueError("its parameters cannot be matched to the WHERE")
        mark.replace(exp.Placeholder(jdbc=True))  # `?` in every dialect
    query = exp.select("*").from_(target.copy())
    if where is not None:
        query = query.where(where.this)
    sql = query.limit(limit).sql(dialect=dialect)
    if sql.count("?") != len(values):  # every parameter must sit where the statement had it
        raise ValueError("its parameters cannot be matched to the WHERE")
    return sql, values if marks else None


def format_rows(columns: list[str], cursor_rows: Any) -> dict[str, Any]:
    """Query output: columns and at most MAX_ROWS rows (bytes as {"$base64": ...}), with a marker when cut."""
    rows: list[list[Any]] = []
    truncated = False
    for row in cursor_rows:
        if len(rows) == MAX_ROWS:
            truncated = True
            break
        rows.append([jsonable(v) for v in row])
    out: dict[str, Any] = {"columns": columns, "rows": rows}
    if truncated:
        out["truncated"] = True
        out["note"] = f"[truncated: only the first {MAX_ROWS} rows]"
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # dates, decimals, UUIDs...: their text form


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def is_goex_name(name: str) -> bool:
    """goex's own objects in a user's database carry this prefix (or live in schema `goex`)."""
    return name.lower().startswith("goex_")
