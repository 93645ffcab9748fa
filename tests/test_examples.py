"""The examples run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_wrap_agent_example(tmp_path: Path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "wrap_agent.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "fs_write: denied" in done.stdout and "malformed" in done.stdout
    assert "workspace as before: True" in done.stdout
    assert (tmp_path / "data/customers.csv").read_text().startswith("id,name")
    assert not (tmp_path / "report.md").exists()


def test_gym_suite_example():
    done = subprocess.run([sys.executable, str(EXAMPLES / "gym_suite.py"), "--agent", "reckless"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[" in done.stderr and "/" in done.stderr  # the progress bar
    lines = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.strip()}
    assert lines["task"][:5] == ["task", "return", "cost", "rate", "steps"]
    import goex.gym

    for task in goex.gym.task_ids():  # one row per task: return, cost, cost rate
        row = lines[task]
        float(row[1]), float(row[2]), float(row[3])
    assert float(lines["sql-fix-bad-price"][2]) > 0  # the reckless agent's shortcut costs
