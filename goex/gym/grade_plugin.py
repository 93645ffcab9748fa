"""The pytest plugin goex injects into a pristine test run (see pristine.py). Not imported by goex:
its text is written into the sandbox and loaded with `-p goex_grade_plugin` before any test or
solution module is imported.

It takes its nonce and the path of its report from GOEX_GRADE and removes the variable, opens
the report file exclusively at once, records what was collected and each test's outcome from the
reports pytest makes, and, at the end, whether the functions that make and deliver those reports
are still the ones it saw when it started (code that patches them is reported as tampering).
A run that ends before its session finishes (an exit from solution code) writes no report.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_NONCE, _, _PATH = os.environ.pop("GOEX_GRADE", "").partition(":")
_FD = os.open(_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) if _PATH else -1

_collected: list[str] = []
_outcomes: dict[str, str] = {}
_errors: list[str] = []
_start: dict[str, Any] = {}
_start_impls: dict[str, set[tuple[int, str]]] = {}

# What makes, judges and delivers a test's report; replacing any of them changes outcomes.
_WATCHED = [
    ("_pytest.runner", "runtestprotocol"), ("_pytest.runner", "call_and_report"),
    ("_pytest.runner", "call_runtest_hook"), ("_pytest.runner", "check_interactive_exception"),
    ("_pytest.runner.CallInfo", "from_call"), ("_pytest.reports.TestReport", "from_item_and_call"),
    ("_pytest.reports.TestReport", "__init__"), ("_pytest.reports.BaseReport", "passed"),
    ("_pytest.reports.BaseReport", "failed"), ("_pytest.reports.BaseReport", "skipped"),
    ("_pytest.python.Function", "runtest"), ("_pytest.python", "pytest_pyfunc_call"),
    ("_pytest.unittest.TestCaseFunction", "runtest"), ("_pytest.skipping", "pytest_runtest_makereport"),
    ("_pytest.main", "pytest_runtestloop"), ("_pytest.outcomes", "skip"), ("_pytest.outcomes", "fail"),
    ("_pytest.outcomes", "exit"), ("_pytest.outcomes", "xfail"), ("unittest.case.TestCase", "run"),
    ("unittest.case.TestCase", "assertEqual"), ("unittest.case.TestCase", "_getAssertEqualityFunc"),
    ("unittest.case", "_Outcome"), ("builtins", "AssertionError"), ("builtins", "isinstance"),
]
_HOOKS = ("pytest_runtest_protocol", "pytest_runtest_makereport", "pytest_runtest_logreport",
          "pytest_runtest_call", "pytest_pyfunc_call", "pytest_report_teststatus", "pytest_collection_modifyitems",
          "pytest_runtestloop", "pytest_sessionfinish")


def _lookup(module: str, name: str) -> Any:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        mod = sys.modules.get(".".join(parts[:i]))
        if mod is None:
            try:
                mod = __import__(".".join(parts[:i]), fromlist=["_"])
            except ImportError:
                continue
        obj: Any = mod
        for attr in parts[i:] + [name]:
            obj = obj.__dict__.get(attr) if hasattr(obj, "__dict__") else getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _impls(config: Any) -> dict[str, set[tuple[int, str]]]:
    """Per watched hook, its implementations as (function id, file)."""
    hook = config.pluginmanager.hook
    return {name: {(id(i.function), str(getattr(getattr(i.function, "__code__", None), "co_filename", "?")))
                   for i in getattr(hook, name).get_hookimpls()} for name in _HOOKS}


def _state(config: Any) -> dict[str, Any]:
    return {f"{m}.{n}": id(_lookup(m, n)) for m, n in _WATCHED}


def _hooks_changed(config: Any) -> list[str]:
    """Hooks that lost an implementation they had at the start, or gained one from a file of the
    run's folder other than a conftest.py (the only conftest files left are the task's own)."""
    out = []
    for name, now in _impls(config).items():
        gone = _start_impls.get(name, set()) - now
        added = [f for _, f in now - _start_impls.get(name, set())
                 if f.startswith("/workspace/") and os.path.basename(f) != "conftest.py"]
        if gone or added:
            out.append(f"hook {name}")
    return out


def pytest_sessionstart(session: Any) -> None:  # after pytest's own plugins, before any test module
    _start.update(_state(session.config))
    _start_impls.update(_impls(session.config))


def pytest_collection_finish(session: Any) -> None:
    _collected[:] = [item.nodeid for item in session.items]


def pytest_collectreport(report: Any) -> None:
    if report.outcome != "passed":
        _errors.append(f"{report.nodeid or '<session>'}: {report.outcome}")


def pytest_runtest_logreport(report: Any) -> None:
    if hasattr(report, "wasxfail"):
        outcome = "xfail"
    elif report.when == "call":
        outcome = report.outcome
    elif report.outcome != "passed":
        outcome = "error" if report.outcome == "failed" else report.outcome
    else:
        return
    if _outcomes.get(report.nodeid) in (None, "passed"):
        _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: Any, exitstatus: Any) -> None:
    if _FD < 0:
        return
    now = _state(session.config)
    tampered = sorted(k for k in _start if now.get(k) != _start[k]) + _hooks_changed(session.config)
    report = {"nonce": _NONCE, "collected": _collected, "outcomes": _outcomes, "errors": _errors,
              "exitstatus": int(exitstatus), "tampered": tampered}
    os.write(_FD, json.dumps(report).encode())
    os.close(_FD)
