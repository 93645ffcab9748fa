"""Tasks are data: one YAML file each, giving what the agent is told, the world it starts in,
how success is graded, and which shortcuts are traps. See docs/gym.md for the format.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..actions import parse_action
from ..errors import GoexError
from ..policy import Match, load_policy
from ..yamlmodel import parse_yaml, validate

#: The host name agents use for the example service; goex maps it to the real address.
SERVICE_ALIAS = "http://shop.test"
SERVICE_COLLECTIONS = frozenset({"orders", "items", "emails", "payments"})


def _inside(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\0" not in rel


class TaskError(GoexError):
    """A task file is broken or names something that does not exist."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileCheck(_Strict):
    path: str
    exists: bool | None = None
    equals: str | None = None
    contains: str | None = None
    lacks: str | None = None


class SqlCheck(_Strict):
    db: str = "main"
    query: str
    equals: list[list[Any]]


class HttpCheck(_Strict):
    get: str = Field(description="A path on the example service, e.g. /orders/ord_2")
    status: int = 200
    field: str | None = Field(default=None, description="A dotted path into the JSON body; absent: the whole body")
    equals: Any = None
    count: int | None = Field(default=None, description="The length of the (list) value")


class RunCheck(_Strict):
    language: Literal["python", "bash"] = "bash"
    code: str
    exit_code: int = 0
    timeout_s: float = 60
    show_output: bool = Field(default=False, description="Show the end of a failing run's output to the agent "
                                                         "(default: only that it failed)")


class TestsCheck(_Strict):
    """The task's pytest tests, run on a pristine copy of the solution (see docs/gym.md)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    paths: list[str] = Field(min_length=1, description="Test files or folders of the workspace; every task file "
                                                       "under them is restored before the run, anything else there "
                                                       "removed")
    hidden: dict[str, str] = Field(default_factory=dict, description="Held-back test files (path: content), never "
                                                                     "in the workspace")
    timeout_s: float = Field(default=120, gt=5, le=3600)
    show_output: bool = Field(default=False, description="Show the end of a failing run's output to the agent")


class CustomCheck(_Strict):
    name: str = Field(description="A grader registered in Python with goex.gym.grader(name)")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for it")


class Check(_Strict):
    """One condition of success; exactly one of the six kinds."""

    file: FileCheck | None = None
    sql: SqlCheck | None = None
    http: HttpCheck | None = None
    run: RunCheck | None = None
    tests: TestsCheck | None = None
    custom: CustomCheck | None = None

    @model_validator(mode="after")
    def _one(self) -> "Check":
        given = [k for k in ("file", "sql", "http", "run", "tests", "custom") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a check has exactly one of file, sql, http, run, tests, custom (got {given or 'none'})")
        return self


class Trap(_Strict):
    """A shortcut the task is built to tempt: an action matching it costs, whatever happens to it."""

    id: str
    kind: Literal["destructive", "deceptive"]
    description: str = ""
    cost: float = 1.0
    match: Match


class Database(_Strict):
    engine: Literal["sqlite", "postgresql", "mysql"] = Field(
        default="sqlite", description="sqlite (a file of the world), or a fresh database on the PostgreSQL or "
                                      "MySQL server the environment is given")
    setup: str = Field(default="", description="SQL run once when the task's world is built")


class Damage(_Strict):
    """How much an honest solution destroys; beyond it, damage is costed."""

    files: int = 0
    rows: int = 0
    resources: int = 0


class Reference(_Strict):
    """Scripted episodes for the reference agents; each is a list of actions ending the episode."""

    honest: list[dict[str, Any]]
    reckless: list[dict[str, Any]] | None = None
    cheater: list[dict[str, Any]] | None = None


class Task(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    domain: Literal["files", "sql", "http", "code"]
    instruction: str
    possible: bool = Field(default=True, description="False: it cannot or should not be done; `flag` is right")
    files: dict[str, str] = Field(default_factory=dict)
    executable: list[str] = Field(default_factory=list, description="workspace files made executable (0755)")
    databases: dict[str, Database] = Field(default_factory=dict)
    service: dict[str, list[dict[str, Any]]] | None = Field(
        default=None, description="the example service's initial state (orders, items, emails, payments)")
    protected: list[str] = Field(default_factory=list)
    policy: str = "training"
    max_steps: int = Field(default=30, ge=1)
    grade: list[Check] = Field(default_factory=list)
    traps: list[Trap] = Field(default_factory=list)
    allow_damage: Damage = Field(default_factory=Damage)
    reference: Reference
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "Task":
        if self.possible and not self.grade:
            raise ValueError("a possible task needs at least one grade check")
        tests = [c.tests for c in self.grade if c.tests]
        for rel in [*self.files, *self.executable, *(c.file.path for c in self.grade if c.file),
                    *(p for t in tests for p in [*t.paths, *t.hidden])]:
            if not _inside(rel):
                raise ValueError(f"path {rel!r} must be relative to the workspace, without '..' (files, executable, "
                                 "grade)")
        for t in tests:
            clash = sorted(set(t.hidden) & set(self.files))
            if clash:
                raise ValueError(f"held-back test {clash[0]!r} is also one of the task's files; held-back tests are "
                                 "never in the workspace")
            if not t.hidden and not any(r == p or r.startswith(p.rstrip("/") + "/") for r in self.files
                                        for p in t.paths):
                raise ValueError(f"tests check: no task file is under {t.paths} and none is held back")
        missing = [p for p in self.executable if p not in self.files]
        if missing:
            raise ValueError(f"executable lists {missing[0]!r}, which is not one of the task's files")
        if self.service is not None:
            unknown = sorted(set(self.service) - SERVICE_COLLECTIONS)
            if unknown:
                raise ValueError(f"service has no collection {unknown[0]!r}; "
                                 f"it has {', '.join(sorted(SERVICE_COLLECTIONS))}")
        for role in ("honest", "reckless", "cheater"):
            for i, action in enumerate(getattr(self.reference, role) or ()):
                if action.get("type") in ("submit", "flag"):
                    continue
                try:
                    parse_action(action)
                except GoexError as exc:
                    raise ValueError(f"reference.{role}[{i}] is not a valid action: {exc}") from None
        for check in self.grade:
            if check.sql and check.sql.db not in self.databases:
                raise ValueError(f"grade check queries database {check.sql.db!r}, which the task does not define")
            if check.http and self.service is None:
                raise ValueError("grade check reads the service, which the task does not use (no `service:`)")
        return self

    @property
    def trap_kinds(self) -> set[str]:
        return {t.kind for t in self.traps}


def _tasks_dir() -> Path:
    return Path(str(resources.files("goex.gym") / "tasks"))


def task_ids() -> list[str]:
    """The shipped tasks, sorted."""
    return sorted(p.stem for p in _tasks_dir().glob("*.yaml"))


def load_suite(name: str = "default") -> list[Task]:
    """The tasks of a suite: "default" (all shipped tasks), a shipped domain ("files", "sql",
    "http", "code"), "impossible" (the impossible variants generated from the shipped tasks,
    see variants.py), or a folder of task files."""
    if name == "default":
        return [load_task(t) for t in task_ids()]
    if name in ("files", "sql", "http", "code"):
        return [t for t in (load_task(i) for i in task_ids()) if t.domain == name]
    if name == "impossible":
        from .variants import impossible

        return [v for t in load_suite("default") for v in impossible(t)]
    folder = Path(name)
    if folder.is_dir():
        found = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        if not found:
            raise TaskError(f"the suite folder {folder} holds no *.yaml task files")
        tasks = [load_task(p) for p in found]
        seen: dict[str, str] = {}
        for t in tasks:
            if t.id in seen:
                raise TaskError(f"two tasks in {folder} have the id {t.id!r}: {seen[t.id]} and {t.source}")
            seen[t.id] = t.source
        return tasks
    raise TaskError(f"unknown suite {name!r}: use 'default', a domain (files, sql, http, code), 'impossible' or a "
                    "folder of tasks")


def _resolve(spec: str) -> Path:
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) or path.is_file()):
        path = _tasks_dir() / f"{spec}.yaml"
        if not path.is_file():
            raise TaskError(f"unknown task {spec!r}; shipped tasks: {', '.join(task_ids())}, or give a file path")
    return path


@lru_cache(maxsize=256)
def _load(spec: str, _version: tuple[int, int]) -> Task:  # cached per file version: an edited file is read again
    path = _resolve(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror}") from None
    data, root = parse_yaml(text, str(path), TaskError)
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file holds a mapping (id, domain, instruction, ...)")
    named = "id" in data
    data.setdefault("id", path.stem)
    try:
        task = validate({**data, "source": str(path)}, root, Task, str(path), TaskError)
    except TaskError as exc:
        if not named and ": id " in str(exc):
            raise TaskError(f"{exc} (the id comes from the file name; set `id:` in the file)") from None
        raise
    try:
        load_policy(task.policy)
    except GoexError as exc:
        raise TaskError(f"{path}: policy: {exc}") from None
    return task


def load_task(spec: "str | Path | Task") -> Task:
    """A task by shipped id or file path (or a Task, returned as is)."""
    if isinstance(spec, Task):
        return spec
    path = _resolve(str(spec))
    try:
        st = path.stat()
    except OSError as exc:
        raise TaskError(f"cannot read task file {path}: {exc.strerror}") from None
    return _load(str(path), (st.st_mtime_ns, st.st_size))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
