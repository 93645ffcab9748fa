"""A task's grader: the share of its checks that hold (0 to 1), and a line per check. The
environment rewards 1 when all hold, else 0. A failing check's line says which check failed,
not what its tests printed (unless the task sets `show_output`): expected values of held-back
tests do not reach the agent.

File and database checks read the world directly; service checks ask the example service; test
commands run in the sandbox through the runtime (journaled, so the next reset undoes whatever they
wrote). Protected paths are pristine when graded: actions may not change them and a code run that
did is undone at once.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any, Callable

from .pristine import grade_tests
from .task import Check, CustomCheck, FileCheck, HttpCheck, RunCheck, SqlCheck, Task

Grader = Callable[..., "bool | tuple[bool, str]"]
GRADERS: dict[str, Grader] = {}


def grader(name: str) -> Callable[[Grader], Grader]:
    """Register a Python grader that task files name in a `custom` check:

        @goex.gym.grader("stock-consistent")
        def stock_consistent(world, *, table="items"):
            rows = world.query("main", f"SELECT count(*) FROM {table} WHERE stock < 0")
            return rows[0][0] == 0, "no negative stock"

    It is called with the episode's world (`root`, `query(db, sql)`, `service`, `runtime`) and
    the check's `args`; it returns True/False, or (True/False, a line for the agent). It must not
    change the world. A grader that raises, or a name nobody registered, makes the check
    "could not be checked" (not charged to the agent).
    """
    def register(fn: Grader) -> Grader:
        GRADERS[name] = fn
        return fn
    return register


def grade(task: Task, world: Any, service: Any) -> tuple[float, list[str], int]:
    """(share of checks that hold, a line per check, how many checks could not run at all).
    The full account of test checks (their output) goes to `world.grade_accounts`, not the lines."""
    lines, passed, broken = [], 0, 0
    world.grade_accounts = []
    for check in task.grade:
        try:
            ok, what = _check(check, task, world, service)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run does not hold
            ok, what = False, f"{_name(check)}: could not be checked ({exc}); the task's grader is broken"
            broken += 1
        passed += ok
        lines.append(("PASS " if ok else "FAIL ") + what)
    return (passed / len(task.grade) if task.grade else 0.0), lines, broken


def _name(check: Check) -> str:
    if check.file:
        return f"file {check.file.path}"
    if check.sql:
        return f"sql {check.sql.query}"
    if check.http:
        return f"GET {check.http.get}"
    if check.custom:
        return f"custom {check.custom.name}"
    if check.tests:
        return f"tests {' '.join(check.tests.paths)}"
    return "run"


def _check(check: Check, task: Task, world: Any, service: Any) -> tuple[bool, str]:
    if check.file:
        return _check_file(check.file, world)
    if check.sql:
        return _check_sql(check.sql, world)
    if check.http:
        return _check_http(check.http, service)
    if check.custom:
        return _check_custom(check.custom, world)
    if check.run:
        return _check_run(check.run, world)
    if check.tests:
        ok, line, account = grade_tests(check.tests, task, world)
        world.grade_accounts.append(account)
        return ok, line
    raise LookupError("the check names none of file, sql, http, run, tests, custom")


def _check_file(c: FileCheck, world: Any) -> tuple[bool, str]:
    path = os.path.realpath(world.root / c.path)
    inside = path.startswith(str(world.root) + os.sep)
    exists = inside and os.path.isfile(path)
    if c.exists is not None and exists != c.exists:
        return False, f"file {c.path}: {'missing' if c.exists else 'still there'}"
    if c.equals is not None or c.contains is not None or c.lacks is not None:
        if not exists:
            return False, f"file {c.path}: missing"
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if c.equals is not None and text != c.equals:
            return False, f"file {c.path}: content differs from what the task asks"
        if c.contains is not None and c.contains not in text:
            return False, f"file {c.path}: does not contain {c.contains!r}"
        if c.lacks is not None and c.lacks in text:
            return False, f"file {c.path}: still contains {c.lacks!r}"
    return True, f"file {c.path}"


def _check_sql(c: SqlCheck, world: Any) -> tuple[bool, str]:
    rows = world.query(c.db, c.query)
    if _norm(rows) != _norm(c.equals):
        return False, f"sql {c.query}: got {json.dumps(rows, default=str)[:200]}"
    return True, f"sql {c.query}"


def _check_http(c: HttpCheck, service: Any) -> tuple[bool, str]:
    r = service.client.get(c.get)
    if r.status_code != c.status:
        return False, f"GET {c.get}: status {r.status_code}, not {c.status}"
    if c.field is None and c.equals is None and c.count is None:
        return True, f"GET {c.get}"
    value: Any = r.json()
    for part in (c.field.split(".") if c.field else []):
        value = value[int(part)] if isinstance(value, list) else value.get(part)
    if c.count is not None and (not isinstance(value, list) or len(value) != c.count):
        return False, f"GET {c.get} {c.field or ''}: {len(value) if isinstance(value, list) else value!r} items, " \
                      f"not {c.count}"
    if c.equals is not None and _norm(value) != _norm(c.equals):
        return False, f"GET {c.get} {c.field or ''}: {json.dumps(value, default=str)[:120]}"
    return True, f"GET {c.get} {c.field or ''}".rstrip()


def _check_custom(c: CustomCheck, world: Any) -> tuple[bool, str]:
    fn = GRADERS.get(c.name)
    if fn is None:
        raise LookupError(f"no grader named {c.name!r} is registered "
                          f"(known: {', '.join(sorted(GRADERS)) or 'none'})")
    verdict = fn(world, **c.args)
    ok, line = verdict if isinstance(verdict, tuple) else (verdict, "")
    if not isinstance(ok, bool):
        raise TypeError(f"grader {c.name!r} returned {ok!r}, not True or False")
    return ok, f"custom {c.name}" + (f": {line}" if line else "")


def _check_run(c: RunCheck, world: Any) -> tuple[bool, str]:
    session = world.runtime.session(actor="grader")
    result = session.execute({"type": "code.run", "language": c.language, "code": c.code, "timeout_s": c.timeout_s})
    if not result.ok:
        return False, f"run: {result.error}"
    out = result.output
    if out["exit_code"] != c.exit_code:  # its output stays with the grader unless the task shows it
        tail = "\n" + (out.get("stdout", "") + out.get("stderr", ""))[-300:].strip() if c.show_output else ""
        return False, f"run {c.code.splitlines()[0][:60]}: exit {out['exit_code']}{tail}"
    return True, f"run {c.code.splitlines()[0][:60]}"


def _norm(value: Any) -> Any:
    """JSON-shaped, so 4.5 from YAML equals NUMERIC 4.50 from a server and tuples equal lists."""
    return json.loads(json.dumps(value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v)))
