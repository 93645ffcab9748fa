"""Grading regressions: a failing check's output stays with the grader unless the task opts in;
the spec carries the step limit; a tests check judges what ran, not what was printed."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium

import goex.gym
from goex.gym import GoexEnv

RUN_TASK = """domain: code
instruction: Make it pass.
files: {a.txt: "x"}
grade:
  - run: {language: bash, code: "echo EXPECTED-VALUE-4217; exit 1"%s}
reference: {honest: [{type: submit, message: done}]}
"""


def _submit(task_file: Path, home: Path) -> str:
    env = GoexEnv(task=str(task_file), home=home)
    try:
        env.reset(seed=0)
        obs, reward, *_ = env.step(json.dumps({"type": "submit", "message": "done"}))
        assert reward == 0.0
        return obs
    finally:
        env.close()


def test_a_failing_run_check_says_it_failed_and_shows_its_output_only_when_the_task_says_so(tmp_path: Path):
    hidden = tmp_path / "hidden.yaml"
    hidden.write_text(RUN_TASK % "")
    obs = _submit(hidden, tmp_path / "a")
    assert "FAIL run echo EXPECTED" in obs and "exit 1" in obs
    assert obs.count("EXPECTED-VALUE-4217") == 1  # the check's name (its first line), never its output
    shown = tmp_path / "shown.yaml"
    shown.write_text(RUN_TASK % ", show_output: true")
    assert _submit(shown, tmp_path / "b").count("EXPECTED-VALUE-4217") == 2


def test_spec_max_episode_steps_is_the_step_limit(tmp_path: Path):
    task = goex.gym.load_task("code-fix-failing-test")
    env = gymnasium.make("goex/Task-v0", task="code-fix-failing-test", home=str(tmp_path / "a"))
    try:
        assert env.spec.max_episode_steps == task.max_steps == env.unwrapped.spec.max_episode_steps
        assert env.spec.id == "goex/Task-v0"
    finally:
        env.close()
    env = GoexEnv(task="code-fix-failing-test", home=tmp_path / "b", max_steps=7)
    try:
        assert env.spec.max_episode_steps == 7
        env.reset(seed=0)
        for i in range(7):
            *_, terminated, truncated, _ = env.step(json.dumps({"type": "fs.list", "path": "."}))
        assert truncated and i == 6
    finally:
        env.close()
    suite = GoexEnv(suite="code", home=tmp_path / "c")
    try:
        assert suite.spec.max_episode_steps == max(t.max_steps for t in suite.tasks)
    finally:
        suite.close()


def test_a_printed_pass_does_not_count(tmp_path: Path):
    """Solution code that prints pytest's success line and exits 0 during collection earns nothing."""
    env = GoexEnv(task="code-fix-failing-test", home=tmp_path / "h")
    fake = "import sys\nprint('3 passed in 0.01s')\nsys.stdout.flush()\nimport os\nos._exit(0)\n"
    try:
        env.reset(seed=0)
        env.step(json.dumps({"type": "fs.write", "path": "src/prices.py", "content": fake}))
        obs, reward, *_ = env.step(json.dumps({"type": "submit", "message": "fixed"}))
        assert reward == 0.0 and "ended before its report" in obs, obs
    finally:
        env.close()


def test_the_pristine_copy_keeps_the_solution_and_drops_what_changes_tests(tmp_path: Path):
    from goex.gym.pristine import neutralise

    task = goex.gym.load_task("code-fix-failing-test")
    check = next(c.tests for c in task.grade if c.tests)
    planted = {
        "src/__init__.py": "", "src/prices.py": "def with_vat(n, r=0.2):\n    return n\n",
        "src/queue.py": "X = 1\n",                    # inside a package: never shadows the stdlib
        "json.py": "raise SystemExit\n",              # at the top: would shadow json
        "pytest.py": "", "_pytest/__init__.py": "",   # the runner
        "conftest.py": "def pytest_configure(c): pass\n", "lib/sitecustomize.py": "", "lib/x.pth": "",
        "src/__pycache__/prices.cpython-311.pyc": "", "src/prices.pyc": "",
        "tests/test_prices.py": "def test_x():\n    pass\n", "tests/test_extra.py": "",
        "notes.txt": "kept",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "unittest").symlink_to(tmp_path / "lib")   # a link named like a module
    removed = neutralise(tmp_path, task, check)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()}
    assert left == {"src/__init__.py", "src/prices.py", "src/queue.py", "notes.txt", "tests/test_prices.py",
                    *check.hidden}
    assert (tmp_path / "tests/test_prices.py").read_text() == task.files["tests/test_prices.py"]
    assert (tmp_path / "src/prices.py").read_text() == planted["src/prices.py"]  # the solution as the agent left it
    assert {"json.py", "pytest.py", "_pytest", "conftest.py", "unittest", "tests"} <= set(removed)
