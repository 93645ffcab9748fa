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
