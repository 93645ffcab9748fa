"""Pristine test grading: a task's pytest tests run in a fresh sandbox over a copy of the agent's
solution in which the tests are the task's own and nothing the agent planted can change them.

The copy (a new folder beside the world, never the workspace):

- every file under the check's `paths` is deleted and the task's files there written back, so
  edited, weakened, deleted or added tests do not count;
- held-back tests (`hidden`) are written in; they are never in the workspace;
- hook mechanisms are removed: `conftest.py` files the task does not ship (shipped ones are
  restored), `sitecustomize.py`, `usercustomize.py`, `*.pth`, compiled `*.pyc` and `__pycache__`,
  and modules or packages that would shadow the standard library or the test runner;
- pytest reads goex's own configuration (`-c`), so `addopts`, plugins and options in the
  workspace's pytest.ini, tox.ini, setup.cfg or pyproject.toml are ignored; plugin autoloading
  is off and Python starts with `-P` and no user site.

The result comes from a plugin goex injects (grade_plugin.py) through a report keyed by a
per-run nonce, not from the exit code or the output: each test collected from the task's
pristine files must be collected again and pass, none skipped, none failed, no collection
error, and the functions that make pytest's reports must be unchanged at the end. A run that
exits early writes no report and fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from .task import Task, TestsCheck

HOOK_FILES = frozenset({"conftest.py", "sitecustomize.py", "usercustomize.py"})
#: Top-level names the test run imports besides the standard library: a module of the solution
#: with one of these names would replace it.
RUNNER_MODULES = frozenset({"pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py", "hypothesis",
                            "_hypothesis_pytestplugin", "attr", "attrs", "sortedcontainers", "exceptiongroup",
                            "tomli", "goex_grade_plugin"})
MARK = "GOEX-GRADE"
_collected: dict[str, list[str]] = {}  # the tests the task's pristine files hold, per task version

_WRAPPER = r'''
import json, os, subprocess, sys
NONCE, PLUGIN, PATHS, COLLECT, TIMEOUT = {args}
d = "/tmp/goex-grade-" + NONCE
os.mkdir(d, 0o700)
with open(d + "/goex_grade_plugin.py", "w") as f:
    f.write(PLUGIN)
with open(d + "/pytest.ini", "w") as f:
    f.write("[pytest]\n")
report = d + "/report.json"
env = {{"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYTHONPATH": d, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
       "GOEX_GRADE": NONCE + ":" + report}}
cmd = [sys.executable, "-P", "-m", "pytest", "-c", d + "/pytest.ini", "--rootdir=/workspace", "--confcutdir=/workspace",
       "-p", "goex_grade_plugin", "-p", "no:cacheprovider", "-o", "addopts=", "-q", "--color=no", "--tb=short"]
cmd += ["--collect-only"] if COLLECT else []
try:
    p = subprocess.run(cmd + PATHS, env=env, cwd="/workspace", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=TIMEOUT)
    code, out = p.returncode, p.stdout.decode("utf-8", "replace")
except subprocess.TimeoutExpired as e:
    code, out = None, (e.stdout or b"").decode("utf-8", "replace") + "\n[timed out]"
try:
    with open(report) as f:
        data = json.load(f)
except (OSError, ValueError):
    data = None
print("{mark} " + NONCE + " " + json.dumps({{"report": data, "exit": code, "output": out[-4000:]}}))
'''


class GradeBroken(Exception):
    """The task's own tests cannot be collected: the check cannot judge anything."""


def _under(rel: str, paths: list[str]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)


def _module_name(name: str) -> str | None:
    """The top-level import name a file or folder named `name` provides, if any."""
    if name.endswith((".py", ".pyc")):
        return name.rsplit(".", 1)[0]
    if name.endswith(".so") or ".cpython-" in name:
        return name.split(".", 1)[0]
    return None


def _shadows(name: str | None) -> bool:
    return name is not None and (name in sys.stdlib_module_names or name in RUNNER_MODULES)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def neutralise(dest: Path, task: Task, check: TestsCheck) -> list[str]:
    """Make the copy at `dest` pristine (see the module's doc); the paths removed."""
    shipped = set(task.files)
    removed: list[str] = []
    for top, dirs, names in os.walk(dest):
        rel_top = os.path.relpath(top, dest)
        rel_top = "" if rel_top == "." else rel_top + "/"
        # only a folder that is not itself a package can be on sys.path (a module inside a
        # package is never imported by its bare name)
        on_path = not os.path.isfile(os.path.join(top, "__init__.py"))
        for d in list(dirs):
            rel, full = rel_top + d, os.path.join(top, d)
            link = os.path.islink(full)
            package = not link and os.path.isfile(os.path.join(full, "__init__.py")) and \
                f"{rel}/__init__.py" not in shipped
            drop = d == "__pycache__" or _under(rel, check.paths) or (on_path and _shadows(d) and (link or package))
            if drop:
                _remove(full)
                removed.append(rel)
            if drop or link:
                dirs.remove(d)
        for n in names:
            rel, full = rel_top + n, os.path.join(top, n)
            hook = n in HOOK_FILES or n.endswith((".pth", ".pyc"))
            shadow = on_path and rel not in shipped and _shadows(_module_name(n))
            if _under(rel, check.paths) or hook or shadow:
                _remove(full)
                removed.append(rel)
    for rel, text in task.files.items():
        name = PurePosixPath(rel).name
        if _under(rel, check.paths) or name in HOOK_FILES or name.endswith(".pth"):
            _write(dest, rel, text)
    for rel, text in check.hidden.items():
        _write(dest, rel, text)
    return sorted(set(removed) - set(task.files))


def _write(dest: Path, rel: str, text: str) -> None:
    """Write `rel` under `dest`, replacing links or files that stand where its folders go."""
    here = dest
    for part in PurePosixPath(rel).parts[:-1]:
        here = here / part
        if os.path.islink(here) or (os.path.lexists(here) and not os.path.isdir(here)):
            os.unlink(here)
        here.mkdir(exist_ok=True)
    target = dest / rel
    if os.path.lexists(target):
        _remove(str(target))
    target.write_text(text, encoding="utf-8")


def _copy_ignore(journal: str) -> Any:
    def ignore(folder: str, names: list[str]) -> list[str]:
        out = []
        for n in names:
            full = os.path.join(folder, n)
            st = os.lstat(full)
            kind = st.st_mode & 0o170000
            if os.path.realpath(full) == journal or kind not in (0o100000, 0o040000, 0o120000):
                out.append(n)  # the journal, FIFOs, sockets, devices
        return out
    return ignore


def _run(world: Any, folder: Path, check: TestsCheck, paths: list[str], collect: bool) -> dict[str, Any]:
    nonce = secrets.token_hex(16)
    plugin = (resources.files("goex.gym") / "grade_plugin.py").read_text(encoding="utf-8")
    args = repr((nonce, plugin, paths, collect, max(5.0, check.timeout_s - 5)))
    code = _WRAPPER.format(args=args, mark=MARK)
    runner = world.runtime.adapter("code")
    out = runner.run_detached(str(folder), "python", code, timeout_s=check.timeout_s + 10)
    if not out["stdout"] and not out["stderr"] and not out["stopped"] and out["exit_code"] != 0:
        # the sandbox died before the wrapper said anything (a killed container): once more, on a
        # fresh overlay; code that kills the wrapper itself fails both times
        out = runner.run_detached(str(folder), "python", code, timeout_s=check.timeout_s + 10)
    verdict: dict[str, Any] = {"report": None, "exit": out["exit_code"], "stopped": out["stopped"],
                               "output": out["stdout"][-4000:] + out["stderr"]}
    for line in reversed(out["stdout"].splitlines()):
        if line.startswith(f"{MARK} {nonce} "):
            verdict.update(json.loads(line[len(MARK) + len(nonce) + 2:]))
            break
    report = verdict.get("report")
    if report is not None and report.get("nonce") != nonce:
        verdict["report"] = None
    return verdict


def _test_args(check: TestsCheck) -> list[str]:
    return [*check.paths, *sorted(h for h in check.hidden if not _under(h, check.paths))]


def expected_tests(task: Task, world: Any, check: TestsCheck) -> list[str]:
    """The test ids the task's pristine files hold (collected once per task version, from the
    task's own files, never the agent's)."""
    key = hashlib.sha256(json.dumps([task.id, task.files, check.model_dump()], sort_keys=True).encode()).hexdigest()
    if key not in _collected:
        folder = Path(tempfile.mkdtemp(prefix="collect-", dir=world.home))
        try:
            for rel, text in task.files.items():
                _write(folder, rel, text)
            neutralise(folder, task, check)
            verdict = _run(world, folder, check, _test_args(check), collect=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        report = verdict["report"]
        if report is None or report["errors"] or not report["collected"]:
            why = "; ".join(report["errors"]) if report and report["errors"] else "no test was collected"
            raise GradeBroken(f"the task's tests {', '.join(_test_args(check))} cannot be collected from its own "
                              f"files ({why}): {verdict['output'][-600:]}")
        _collected[key] = list(report["collected"])
    return _collected[key]


def grade_tests(check: TestsCheck, task: Task, world: Any) -> tuple[bool, str, str]:
    """(passed, the line for the agent, the full account for the task's author)."""
    expected = expected_tests(task, world, check)
    folder = Path(tempfile.mkdtemp(prefix="grade-", dir=world.home))
    try:
        journal = os.path.realpath(world.runtime.journal.folder)
        shutil.copytree(world.root, folder / "w", symlinks=True, ignore=_copy_ignore(journal))
        removed = neutralise(folder / "w", task, check)
        verdict = _run(world, folder / "w", check, _test_args(check), collect=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    name = "tests " + " ".join(check.paths) + (f" (+{len(check.hidden)} held back)" if check.hidden else "")
    why = _judge(verdict, expected)
    account = (f"{name}: {why or 'passed'}; removed from the copy: {removed or 'nothing'}; sandbox exit "
               f"{verdict['exit']}\n{verdict['output']}")
    if why is None:
        return True, name, account
    line = f"{name}: {why}"
    if check.show_output:
        line += "\n" + verdict["output"][-600:].strip()
    return False, line, account


def _judge(verdict: dict[str, Any], expected: list[str]) -> str | None:
    """Why the run does not count as passing, or None."""
    report = verdict["report"]
    if verdict.get("stopped"):
        return f"the test run was stopped ({verdict['stopped']})"
    if report is None:
        return "the test run ended before its report (an exit or crash during the tests)"
    if report["tampered"]:
        return "the functions that make pytest's reports were changed during the run: " + ", ".join(report["tampered"])
    if report["errors"]:
        return f"{len(report['errors'])} test files could not be collected"
    got, want = set(report["collected"]), set(expected)
    if got != want:
        return f"{len(got & want)} of the task's {len(want)} tests were collected"
    outcomes = report["outcomes"]
    bad = [t for t in expected if outcomes.get(t) != "passed"]
    if bad:
        kinds = sorted({outcomes.get(t, "not run") for t in bad})
        return f"{len(bad)} of {len(expected)} tests did not pass ({', '.join(kinds)})"
    if report["exitstatus"] != 0:
        return f"pytest exited with {report['exitstatus']}"
    return None
