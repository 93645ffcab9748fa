"""What the server engines (PostgreSQL, MariaDB/MySQL) share: their connection pools, parameter
conversion, the refusal checks as class data, the conflicts-then-revert template and errors.

Each engine keeps only what truly differs: how it captures undo data, how it dumps, and how it
sets up the role or account agent SQL runs as.

* Pools: agent connections (`_take` / `_give`) and goex's own connections for undo, conflict
  checks and recovery (`_own`). A kept connection is reset (`_reset`, `_reset_own`) before it is
  used again; one that cannot be reset is closed, never repaired in place.
* Text: statements are split and read by one tokenizer, sqlglot's (`common.tokens`): comments,
  placeholders and the words the refusal tables match.
* Undo: examine the rows an action changed, refuse when they changed since (unless forced), undo
  them, check that no reference is left dangling, refuse again when one is; all in one
  transaction that the engine commits.
"""

from __future__ import annotations

import contextlib
import re
import threading
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Iterator, Mapping, TypeVar

from sqlglot.tokens import TokenType

from ...errors import ActionFailed
from .common import QUOTED, SqlRefused, SqlSyntaxError, UndoRefused, is_goex_name, read_tokens, split_tokens, words

__all__ = ["Dirty", "ServerEngine", "convert_params"]

Conn = TypeVar("Conn")
#: one table of an undo, as the engine describes it, and the state examining it found
Plan = tuple[Any, str]


class Dirty(Exception):
    """A kept connection's session is not as goex left it: it is closed, not repaired in place."""


def convert_params(statement: str, params: Any, dialect: str,
                   name: str = r"[A-Za-z_][A-Za-z0-9_]*") -> tuple[str, Any]:
    """`statement` and `params` in the drivers' style (psycopg and PyMySQL alike): `?` becomes
    `%s` (params a list), `:name` becomes `%(name)s` (params a mapping; `name` is the pattern a
    name matches), a literal `%` becomes `%%`. Placeholders are found with sqlglot's tokenizer, so
    a `?` or `:x` inside a string or comment, and a `::` cast, stay as they are. Without params
    the statement is returned unchanged."""
    if params is None:
        return statement, None
    found = read_tokens(statement, dialect)
    pieces: list[str] = []
    last = 0
    positional = named = 0
    skip = -1
    for i, tok in enumerate(found):
        nxt = found[i + 1] if i + 1 < len(found) else None
        if i == skip:
            continue
        if tok.token_type == TokenType.PLACEHOLDER and tok.text == "?":
            start, end, mark = tok.start, tok.end, "%s"
            positional += 1
        elif tok.token_type == TokenType.PLACEHOLDER and tok.text.startswith(":") and len(tok.text) > 1:
            start, end, mark = tok.start, tok.end, f"%({tok.text[1:]})s"
            named += 1
        elif (tok.token_type == TokenType.COLON and nxt is not None and nxt.start == tok.end + 1
              and nxt.token_type not in QUOTED and nxt.token_type != TokenType.IDENTIFIER
              and re.fullmatch(name, statement[nxt.start:nxt.end + 1])
              and not (i > 0 and found[i - 1].token_type == TokenType.COLON and found[i - 1].end + 1 == tok.start)):
            start, end, mark = tok.start, nxt.end, f"%({statement[nxt.start:nxt.end + 1]})s"
            named += 1
            skip = i + 1
        else:
            continue
        pieces += [statement[last:start].replace("%", "%%"), mark]
        last = end + 1
    pieces.append(statement[last:].replace("%", "%%"))
    text = "".join(pieces)
    if isinstance(params, dict):
        if positional:
            raise ActionFailed("sql.execute: 'params' is a mapping but the SQL uses '?' placeholders; use :name")
        return text, dict(params)
    if isinstance(params, (list, tuple)):
        if named:
            raise ActionFailed("sql.execute: 'params' is a list but the SQL uses :name placeholders; use '?'")
        if positional != len(params):
            raise ActionFailed(f"sql.execute: the SQL has {positional} '?' placeholders but 'params' has "
                               f"{len(params)} values; nothing was applied")
        return text, tuple(params)
    raise ActionFailed("sql.execute: 'params' must be a list (for '?') or a mapping (for :name)")


class ServerEngine(ABC, Generic[Conn]):
    """A database server goex acts on through a driver: see the module's text."""

    kind: ClassVar[str]
    dialect: ClassVar[str]
    #: what a `:name` placeholder's name matches
    PARAM_NAME: ClassVar[str] = r"[A-Za-z_][A-Za-z0-9_]*"
    #: statements refused by their first word: the word, and why (`{word}`: the word in capitals)
    REFUSED_FIRST: ClassVar[Mapping[str, str]] = {}
    #: statements refused by their first words: the words, and why (`{words}`: them in capitals)
    REFUSED_PHRASES: ClassVar[Mapping[str, str]] = {}
    #: functions a statement may not call, and why (`{name}`: the function)
    REFUSED_CALLS: ClassVar[Mapping[str, str]] = {}
    #: why a statement may not name goex's own objects (`{name}`: the name as written)
    GOEX_OBJECTS: ClassVar[str] = "{name} is goex's own object: actions may not read or change it"
    #: the schema that holds goex's own objects, a name refused like them
    GOEX_SCHEMA: ClassVar[str | None] = None
    #: connections kept: agent ones, goex's own ones
    AGENT_POOL: ClassVar[int] = 1
    OWN_POOL: ClassVar[int] = 1
    #: what examining an action's tables may find without that being a conflict
    SETTLED: ClassVar[frozenset[str]] = frozenset({"after"})
    #: the driver's errors: a kept connection that raises one while it is reset is closed
    DRIVER_ERROR: ClassVar[type[Exception]] = Exception

    name: str  # the database, in messages

    def __init__(self) -> None:
        self._idle: list[Conn] = []
        self._idle_own: list[Conn] = []
        self._lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------------

    @abstractmethod
    def _agent_connect(self) -> Conn:
        """A new connection as the role or account agent SQL runs as."""

    @abstractmethod
    def _own_connect(self, fresh: bool) -> Conn:
        """A new connection for goex's own work; `fresh`: one that will not be kept."""

    @abstractmethod
    def _reset(self, conn: Conn) -> None:
        """Make a kept agent connection's session as goex left it; raises Dirty (or the driver's
        error) when it cannot."""

    @abstractmethod
    def _reset_own(self, conn: Conn) -> None:
        """The same for one of goex's own connections."""

    @abstractmethod
    def _is_open(self, conn: Conn) -> bool: ...

    @abstractmethod
    def _rollback(self, conn: Conn) -> None:
        """End an open transaction; close the connection when that fails."""

    @abstractmethod
    def _close(self, conn: Conn) -> None: ...

    def _take(self) -> Conn:
        """An agent connection: a kept one, reset, or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            try:
                self._reset(conn)
                return conn
            except (Dirty, ActionFailed, self.DRIVER_ERROR):  # gone, or not clean: a new session is
                self._close(conn)
        conn = self._agent_connect()
        try:
            self._reset(conn)
        except BaseException:
            self._close(conn)
            raise
        return conn

    def _give(self, conn: Conn, reuse: bool = True) -> None:
        """An agent connection back: kept (its transaction rolled back) or closed."""
        self._keep(conn, self._idle, self.AGENT_POOL if reuse else 0)

    def _keep(self, conn: Conn, pool: list[Conn], size: int) -> None:
        if not self._is_open(conn):
            return
        self._rollback(conn)
        with self._lock:
            if self._is_open(conn) and len(pool) < size:
                pool.append(conn)
                return
        self._close(conn)

    def _owned(self, fresh: bool = False) -> Conn:
        """One of goex's own connections: a kept one, reset, or a new one (`fresh`: always new)."""
        with self._lock:
            conn = self._idle_own.pop() if self._idle_own and not fresh else None
        if conn is not None:
            try:
                self._reset_own(conn)
                return conn
            except (Dirty, ActionFailed, self.DRIVER_ERROR):  # the server ended it, or it is not clean
                self._close(conn)
        return self._own_connect(fresh)

    @contextlib.contextmanager
    def _own(self, fresh: bool = False) -> Iterator[Conn]:
        """One of goex's own connections (agent SQL never runs on it) for the block: kept after
        it (`fresh`: closed), closed when the block raises."""
        conn = self._owned(fresh)
        try:
            yield conn
        except BaseException:
            self._close(conn)
            raise
        self._keep(conn, self._idle_own, 0 if fresh else self.OWN_POOL)

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._idle_own = self._idle + self._idle_own, [], []
        for conn in idle:
            self._close(conn)

    # -- analysis --------------------------------------------------------------------------------

    def split(self, sql: str) -> list[str]:
        return split_tokens(sql, self.dialect)

    def begin(self) -> None:
        """Nothing is kept from one action to the next but the session, reset before each use."""

    def convert(self, statement: str, params: Any) -> tuple[str, Any]:
        return convert_params(statement, params, self.dialect, self.PARAM_NAME)

    def check(self, statement: str, analysis: dict[str, Any]) -> None:
        """Refuse what reaches beyond the action's transaction and database: by the tables of
        refused first words, phrases and calls, goex's own names, and the engine's own checks."""
        self._screen(statement)
        said = words(statement, self.dialect)
        first = said[0] if said else ""
        if first in self.REFUSED_FIRST:
            raise SqlRefused(self.REFUSED_FIRST[first].format(word=first.upper()))
        for phrase, why in self.REFUSED_PHRASES.items():
            if said[:len(phrase.split())] == phrase.split():
                raise SqlRefused(why.format(words=phrase.upper()))
        self._check_words(statement, said, analysis)
        found = read_tokens(statement, self.dialect)
        for i, tok in enumerate(found):
            if tok.token_type in QUOTED or tok.token_type == TokenType.NUMBER:
                continue
            text = tok.text.lower()
            if is_goex_name(text) or text == self.GOEX_SCHEMA:
                raise SqlRefused(self.GOEX_OBJECTS.format(name=tok.text))
            nxt = found[i + 1] if i + 1 < len(found) else None
            refused = self._refused_call(text) if nxt is not None and nxt.token_type == TokenType.L_PAREN else None
            if refused:
                raise SqlRefused(refused.format(name=text))
            self._check_token(found, i, analysis)

    def _screen(self, statement: str) -> None:
        """Checks of the raw text, before it is read as words."""

    def _check_words(self, statement: str, said: list[str], analysis: dict[str, Any]) -> None:
        """The engine's checks of the statement's words."""

    def _refused_call(self, name: str) -> str | None:
        return self.REFUSED_CALLS.get(name)

    def _check_token(self, found: tuple[Any, ...], i: int, analysis: dict[str, Any]) -> None:
        """The engine's check of one token (a name, not a value)."""

    # -- undo: examine, conflicts, undo rows, integrity ------------------------------------------

    @abstractmethod
    def _examine(self, conn: Conn, table: Any, lock: bool) -> tuple[str, str, list[str]]:
        """Where the rows an action changed in `table` stand: ("after" | "before" | "conflict" |
        "gone", the table's name, what differs)."""

    @abstractmethod
    def _undo_rows(self, conn: Conn, plans: list[Plan], force: bool, evidence: Any) -> None:
        """Set the rows of `plans` back to their state before the action."""

    def _evidence(self, conn: Conn, plans: list[Plan], force: bool, context: Any) -> Any:
        """What the integrity check needs read before the rows change (`context`: what the
        engine passed to `_revert_rows`)."""
        return context

    @abstractmethod
    def _broken(self, conn: Conn, plans: list[Plan], force: bool, evidence: Any) -> list[str]:
        """After `_undo_rows`, in its transaction: references it would leave dangling."""

    def _row_conflicts(self, conn: Conn, tables: list[Any]) -> tuple[list[tuple[str, str]], list[Plan]]:
        """What changed since the action in the rows it changed: (target, what) pairs, and the
        tables with their states."""
        found: list[tuple[str, str]] = []
        plans: list[Plan] = []
        for table in tables:
            state, name, problems = self._examine(conn, table, lock=False)
            if state not in self.SETTLED:
                found += [(f"{self.name}.{name}", p) for p in problems]
            plans.append((table, state))
        return found, plans

    def _revert_rows(self, conn: Conn, tables: list[Any], force: bool, problems: list[str],
                     context: Any = None) -> list[Plan]:
        """The conflicts-then-revert template, inside the caller's transaction: examine the
        tables (locking their rows), refuse when they changed since (`problems`: the engine's own
        found already) unless `force`, undo the rows, refuse when a reference would be left
        dangling (forced too). Returns the tables undone, with the state each was found in."""
        plans: list[Plan] = []
        for table in tables:
            state, name, found = self._examine(conn, table, lock=True)
            if state == "gone" or (state == "conflict" and not force):
                problems = problems + [f"{name}: {p}" for p in found]
            if state != "before":  # undone already (an undo run again, or recovery finishing one)
                plans.append((table, state))
        if problems:
            raise UndoRefused(f"undo on {self.name} stopped, the data changed since the action; nothing was "
                              f"undone: {'; '.join(problems)}")
        evidence = self._evidence(conn, plans, force, context)
        self._undo_rows(conn, plans, force, evidence)
        broken = self._broken(conn, plans, force, evidence)
        if broken:
            raise UndoRefused(f"undo on {self.name} stopped, nothing of it was applied: {'; '.join(broken)}",
                              forceable=False)
        return plans

    # -- errors ----------------------------------------------------------------------------------

    @abstractmethod
    def _describe(self, exc: Exception) -> tuple[str, str | None, bool]:
        """The server's message for `exc`, where in the statement it points (or None), and
        whether it is a syntax error."""

    def _failed(self, exc: Exception, applied: str = "nothing of it was applied", index: int | None = None,
                count: int = 1) -> ActionFailed:
        """`exc` as the action's error: the server's message, which statement and where."""
        text, position, syntax = self._describe(exc)
        where = [f"statement {index + 1}"] if index is not None and count > 1 else []
        if position:
            where.append(position)
        if where:
            text += " at " + ", ".join(where)
        cls = SqlSyntaxError if syntax else ActionFailed
        return cls(f"sql.execute on {self.name}: {text}; {applied}")
