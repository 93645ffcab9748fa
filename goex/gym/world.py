"""A task's world: its workspace, databases and the service state, behind one goex Runtime.

Built once per task and environment; every later episode starts by rolling the previous one back
through the journal and checking the state fingerprint against the one taken when it was built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import apsw
import httpx

from ..adapters.http.adapter import HttpConfig
from ..adapters.sql.sqlite import fingerprint_path
from ..errors import GoexError
from ..journal.anchor import forget_anchor
from ..runtime import Runtime
from ..sql import dump
from .task import SERVICE_ALIAS, Task


class ResetDrift(GoexError):
    """After rolling an episode back, the world differs from the task's starting state."""


class World:
    def __init__(self, task: Task, home: Path, service: "Service | None", sandbox: str,
                 servers: dict[str, str] | None = None):
        self.task = task
        self.home = home
        self.root = home / "workspace"
        self.db_dir = home / "databases"
        self.service = service
        if home.exists():
            shutil.rmtree(home)
        self.root.mkdir(parents=True)
        self.db_dir.mkdir()
        for rel, text in task.files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        for rel in task.executable:
            os.chmod(self.root / rel, 0o755)
        self.urls: dict[str, str] = {}
        self._servers: list[tuple[str, str]] = []  # (engine, database URL) created on a server for this world
        self._drop = weakref.finalize(self, _drop_all, self._servers)  # also if close() is never called
        for name, db in task.databases.items():
            if db.engine == "sqlite":
                self.urls[name] = f"sqlite:///{self.db_dir / (name + '.db')}"
                conn = apsw.Connection(str(self.db_dir / f"{name}.db"))
                try:
                    conn.execute(db.setup)
                except apsw.Error as exc:
                    raise GoexError(f"task {task.id}: the setup SQL of database {name!r} fails: {exc}") from None
                finally:
                    conn.close()
            else:
                self.urls[name] = _create(db.engine, servers.get(db.engine) if servers else None, self._servers)
                try:
                    _setup(db.engine, self.urls[name], db.setup)
                except Exception as exc:  # noqa: BLE001 - the driver's own error, named
                    raise GoexError(f"task {task.id}: the setup SQL of database {name!r} fails: {exc}") from None
        http = None
        if task.service is not None:
            if service is None:
                raise GoexError(f"task {task.id} uses the example service, which is not running")
            service.seed(task.service, self)
            http = HttpConfig(allow_hosts=[service.hostport], openapi=service.openapi)
        self.runtime = Runtime(self.root, policy=task.policy, durability="process", protected=task.protected,
                               databases=self.urls, http=http, sandbox=sandbox)
        # a world is rebuilt or verified at every reset: its `applied` records ride with the next
        # commit (one commit per step); a step's result survives a killed process once it is written
        self.runtime.journal.defers = True
        self.start_parts = self.parts()
        self.start = self.fingerprint(self.start_parts)

    def parts(self) -> dict[str, str]:
        """The state, part by part: the workspace tree's hash, each database's canonical dump (as
        its hash; a SQLite database's rows written and sorted by SQLite) and the service's state
        (as its hash)."""
        out = {"files": self.runtime.fingerprint()}
        for name in sorted(self.urls):
            url = self.urls[name]
            out[f"database {name}"] = fingerprint_path(Path(url[len("sqlite:///"):])) if url.startswith("sqlite:") \
                else hashlib.sha256(dump(url).encode()).hexdigest()
        if self.task.service is not None and self.service is not None and self.service.owner is self:
            out["service"] = hashlib.sha256(self.service.state().encode()).hexdigest()
        return out

    def fingerprint(self, parts: dict[str, str] | None = None) -> str:
        """sha256 over the workspace tree, each database's canonical dump and the service's state."""
        return hashlib.sha256(json.dumps(parts or self.parts(), sort_keys=True).encode()).hexdigest()

    def check(self, when: str) -> None:
        """Raise ResetDrift, naming what differs, unless the world is in its starting state."""
        parts = self.parts()
        if parts != self.start_parts:
            differ = ", ".join(k for k in parts if parts[k] != self.start_parts.get(k))
            raise ResetDrift(f"task {self.task.id}: {when}, the state differs from the task's start in: {differ} "
                             f"(fingerprint {self.fingerprint(parts)[:16]}…, not {self.start[:16]}…): something goex "
                             "could not undo changed it (a change outside goex, or an irreversible action a "
                             "permissive policy let through). reset(options={'rebuild': True}) rebuilds it")

    def rollback(self) -> int:
        """Undo everything done since the world was built; check it is back at the start; then fold
        the journal's finished history into one record, so it stays bounded however many episodes run."""
        # checked under the journal's lock, then the `undone` records and the compaction go in one
        # commit; an entry left open (a request needing review) keeps the history until settled
        undone = self.runtime.rollback_all_and_compact(
            lambda done: self.check(f"after rolling back {len(done)} entries"))
        return len(undone)

    def begin(self) -> None:
        """Start an episode: the service's id counters back to where the task starts them."""
        if self.task.service is not None and self.service is not None:
            self.service.seed(self.task.service, self)

    def close(self) -> None:
        self.runtime.close()
        self._drop()

    def remove(self) -> None:
        """Close the world and delete it: its folder and its journal's anchor."""
        self.close()
        forget_anchor(self.runtime.journal.folder)
        shutil.rmtree(self.home, ignore_errors=True)

    def query(self, db: str, sql: str) -> list[list[Any]]:
        """Rows of a read-only query on one of the world's databases (for graders)."""
        url = self.urls[db]
        if url.startswith("sqlite:"):
            conn = apsw.Connection(url[len("sqlite:///"):], flags=apsw.SQLITE_OPEN_READONLY)
            try:
                return [list(r) for r in conn.execute(sql)]
            finally:
                conn.close()
        return _server_sql("postgresql" if url.startswith("postgresql:") else "mysql", url, sql, fetch=True)


#: Where server databases are created (a fresh database per world), unless the environment is
#: given others: GOEX_GYM_POSTGRESQL / GOEX_GYM_MYSQL, or these.
DEFAULT_SERVERS = {"postgresql": "postgresql://postgres@127.0.0.1:5432/test", "mysql": "mysql://root@127.0.0.1:3306/test"}


def _server(engine: str, given: str | None) -> str:
    return given or os.environ.get(f"GOEX_GYM_{engine.upper()}") or DEFAULT_SERVERS[engine]


def _with_db(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def _mysql(url: str, **kw: Any) -> Any:
    import pymysql

    u = urlsplit(url)
    return pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or "root"),
                           password=unquote(u.password or ""), database=u.path.lstrip("/") or None, autocommit=True,
                           **kw)


def _server_sql(engine: str, url: str, sql: str, *, fetch: bool = False) -> list[list[Any]]:
    """Run `sql` (one or several statements, no parameters) on a server database, autocommit;
    the rows of the last one when `fetch`."""
    if engine == "postgresql":
        import psycopg

        with psycopg.connect(url, autocommit=True) as pg:
            cur = pg.execute(sql)  # several statements: no parameters, one round trip
            return [list(r) for r in cur.fetchall()] if fetch else []
    from pymysql.constants import CLIENT

    conn = _mysql(url, client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            rows = [list(r) for r in cur.fetchall()] if fetch else []
            while cur.nextset():
                pass
            return rows
    finally:
        conn.close()


def _create(engine: str, given: str | None, created: list[tuple[str, str]]) -> str:
    """A new, empty database on the engine's server; its URL."""
    base = _server(engine, given)
    name = f"goex_gym_{uuid.uuid4().hex[:12]}"
    quoted = f'"{name}"' if engine == "postgresql" else f"`{name}`"
    try:
        _server_sql(engine, base, f"CREATE DATABASE {quoted}")
    except Exception as exc:  # noqa: BLE001 - say which server and how to point elsewhere
        raise GoexError(f"cannot create a {engine} database on {base} ({exc}); start the server or set "
                        f"GOEX_GYM_{engine.upper()} to one where databases can be created") from None
    url = _with_db(base, name)
    created.append((engine, url))
    return url


def _setup(engine: str, url: str, sql: str) -> None:
    if sql.strip():
        _server_sql(engine, url, sql)


def _drop_all(created: list[tuple[str, str]]) -> None:
    while created:
        engine, url = created.pop()
        name = urlsplit(url).path.lstrip("/")
        try:
            if engine == "postgresql":
                _server_sql(engine, _with_db(url, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                from ..adapters.sql.mysql import drop_agent_account

                _server_sql(engine, url, f"DROP DATABASE IF EXISTS `{name}`")
                drop_agent_account(url)  # goex's account for that database goes with it
        except Exception:  # noqa: BLE001 - best effort when leaving; the name says what it was
            pass


class Service:
    """The example shop service, run for one environment on a free port of 127.0.0.1."""

    def __init__(self, home: Path):
        from contextlib import ExitStack

        from ..service import serve

        self._stack = ExitStack()
        self.base = self._stack.enter_context(serve(str(home / "service.db")))
        self.hostport = self.base.split("//", 1)[1]
        self.client = httpx.Client(base_url=self.base, trust_env=False, timeout=30)
        self.openapi = self.client.get("/openapi.json").json()
        self.owner: World | None = None  # the world whose state the service holds (its fingerprint covers it)

    def seed(self, state: dict[str, list[dict[str, Any]]], owner: World) -> None:
        body = {k: state.get(k, []) for k in ("orders", "items", "emails", "payments")}
        self.client.post("/admin/reset", json=body).raise_for_status()
        self.owner = owner

    def state(self) -> str:
        return json.dumps(self.client.get("/state").raise_for_status().json(), sort_keys=True)

    def to_real(self, url: str) -> str:
        """A URL on the alias host, on the real address (any other URL as it is)."""
        if url == SERVICE_ALIAS or url.startswith((SERVICE_ALIAS + "/", SERVICE_ALIAS + "?", SERVICE_ALIAS + "#")):
            return self.base + url[len(SERVICE_ALIAS):]
        return url

    def to_alias(self, text: str) -> str:
        """The real address, in any text, back to the alias the agent knows."""
        return text.replace(self.base, SERVICE_ALIAS).replace(self.hostport, SERVICE_ALIAS.split("//", 1)[1])

    def close(self) -> None:
        self.client.close()
        self._stack.close()
