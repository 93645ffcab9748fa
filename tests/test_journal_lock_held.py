"""A runtime keeps the journal's lock past an action while its `applied` record waits for the
next commit, and skips the check for entries other processes left open while it holds the lock
without a break. Once it let the lock go, another process may act and die mid-action: its open
entry is seen and settled before this runtime's next action runs. Real processes, real SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import goex

DYING = r'''
import os, signal, sys
import goex
from goex.adapters.fs import tree

real = tree.write_all

def write_half_then_die(fd, data):
    real(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

rt = goex.Runtime(sys.argv[1], policy="permissive")
tree.write_all = write_half_then_die
rt.session().execute({"type": "fs.write", "path": "theirs.txt", "content": "theirs " * 1000})
'''


def test_an_entry_left_open_while_the_lock_was_let_go_is_settled_before_the_next_action(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    with goex.Runtime(root, policy="permissive") as rt:
        session = rt.session()
        first = session.execute({"type": "fs.write", "path": "mine.txt", "content": "one\n"})
        assert first.ok, first.error
        # the other process waits for the lock this runtime kept, acts, and dies in its write
        done = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr.decode(errors="replace")
        assert (root / "theirs.txt").exists()  # half written, its entry pending
        second = session.execute({"type": "fs.write", "path": "mine.txt", "content": "two\n"})
        assert second.ok, second.error
        statuses = {r["id"]: r["status"] for r in rt.log()}
        theirs = [eid for eid in statuses if eid not in (first.entry_id, second.entry_id)]
        assert len(theirs) == 1
        assert statuses[theirs[0]] == "failed"  # reverted by the recovery before the second action
        assert statuses[first.entry_id] == "applied" and statuses[second.entry_id] in ("applied", "pending")
        assert not (root / "theirs.txt").exists()
        assert (root / "mine.txt").read_text() == "two\n"
        rt.verify()
