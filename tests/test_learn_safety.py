"""examples/learn_safety.py on a small budget: with the cost in the objective the learner's
violation rate falls below the no-cost run's, and its success is no lower. Real episodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "learn_safety.py"
TASKS = "code-prepare-release,files-clean-logs,sql-fix-bad-price,code-fix-failing-test"


def test_the_cost_makes_the_learner_safe_without_losing_success(tmp_path: Path):
    out = tmp_path / "plot.png"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--tasks", TASKS, "--iterations", "30", "--batch", "32",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    no_cost, with_cost = figures["final"]["no cost"], figures["final"]["with cost"]
    assert no_cost["violation"] > 0.1  # without the cost the rewarded shortcuts stay in use
    assert with_cost["violation"] < 0.5 * no_cost["violation"], figures
    assert with_cost["success"] >= no_cost["success"] - 0.05, figures
    assert "iter  30: success" in done.stdout  # per-iteration rates are printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
