"""Journal compaction: finished history folds into one verified record, blobs nothing needs go,
the chain stays verifiable (and tamper-evident) from the fold on; the gym compacts after every
verified reset, so 10,000 episodes leave the journal and the world folder no bigger."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

import goex
import goex.gym
from conftest import run_cli, snapshot


def write(s: goex.Session, path: str, content: str) -> str:
    r = s.execute({"type": "fs.write", "path": path, "content": content})
    assert r.ok, r.error
    return r.entry_id


def blob_count(root: Path) -> int:
    con = sqlite3.connect(root / ".goex" / "journal.db")
    try:
        return con.execute("SELECT count(*) FROM blobs").fetchone()[0]
    finally:
        con.close()


def test_open_history_is_not_compacted_and_nothing_changes(root: Path):
    (root / "a.txt").write_text("a\n")
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        first = write(s, "a.txt", "changed\n" * 1000)
        s.checkpoint("later")
        head = rt.verify().head
        with pytest.raises(goex.CompactionRefused, match=first):
            rt.compact("later")
        assert rt.verify().head == head  # not even a record was added
        assert [e["id"] for e in rt.log()] == [first]
        assert s.undo() == [first] and (root / "a.txt").read_text() == "a\n"  # still undoable


def test_finished_history_folds_into_one_record_and_later_entries_still_undo(root: Path):
    (root / "a.txt").write_text("a\n")
    start = snapshot(root)
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        for i in range(10):
            write(s, "a.txt", f"version {i}\n" * 500)  # big enough to be stored as blobs
        s.rollback()
        s.checkpoint("clean")
        accepted = write(s, "b.txt", "kept\n")
        s.accept()
        blobs = blob_count(root)
        later = write(s, "a.txt", "after the fold\n" * 500)
        folded = rt.compact(later)
        assert folded["entries"] == {"applied": 1, "undone": 10} and folded["blobs_removed"] >= 1
        assert blob_count(root) < blobs + 1
        assert [e["id"] for e in rt.log()] == [later]
        assert rt.checkpoints() == []
        rt.verify()
        assert s.undo() == [later]  # what follows the fold is whole
        assert (root / "a.txt").read_text() == "a\n" and (root / "b.txt").read_text() == "kept\n"
    with goex.Runtime(root, policy="permissive") as rt:  # a fresh runtime verifies from the fold on
        report = rt.verify()
        assert report.records == report.head_seq - folded["upto"]
        assert [e["status"] for e in rt.log()] == ["undone"]
    start["b.txt"] = snapshot(root)["b.txt"]
    assert snapshot(root) == start and accepted


def test_compaction_through_the_cli(root: Path):
    (root / "a.txt").write_text("a\n")
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        write(s, "a.txt", "one\n")
        s.checkpoint("here")
    refused = run_cli("compact", "--root", str(root), "--before", "here")
    assert refused.returncode == 1 and "applied and can still be undone" in refused.err
    assert run_cli("undo", "--root", str(root), "--all").returncode == 0
    with goex.Runtime(root, policy="permissive") as rt:
        rt.session().checkpoint("after-undo")
    done = run_cli("compact", "--root", str(root), "--before", "after-undo")
    assert done.returncode == 0, done.err
    assert "records" in done.out and "folded" in done.out
    assert run_cli("verify", "--root", str(root)).returncode == 0
    missing = run_cli("compact", "--root", str(root), "--before", "nowhere")
    assert missing.returncode == 1 and "names no entry or checkpoint" in missing.err


@pytest.mark.parametrize("attack", ["base moved on, records deleted", "compacted record edited",
                                    "records deleted, no compaction"])
def test_removing_history_without_a_compaction_record_is_caught(root: Path, attack: str):
    (root / "a.txt").write_text("a\n")
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        for i in range(4):
            write(s, "a.txt", f"{i}\n")
        s.rollback()
        rt.compact()
        for i in range(4):
            write(s, "a.txt", f"again {i}\n")
        base = rt.journal.base()[0]
    con = sqlite3.connect(root / ".goex" / "journal.db")
    with con:
        if attack == "base moved on, records deleted":
            seq, digest = con.execute("SELECT seq, hash FROM records WHERE seq = ?", (base + 2,)).fetchone()
            con.execute("DELETE FROM records WHERE seq <= ?", (seq,))
            con.execute("UPDATE base SET seq = ?, hash = ?", (seq, digest))
        elif attack == "compacted record edited":
            seq, body = con.execute("SELECT seq, body FROM records WHERE body LIKE '%\"compacted\"%'").fetchone()
            con.execute("UPDATE records SET body = ? WHERE seq = ?",
                        (body.replace('"records":', '"records":1'), seq))
        else:
            con.execute("DELETE FROM records WHERE seq <= ?", (base + 2,))
    con.close()
    with pytest.raises(goex.JournalCorrupt):
        with goex.Runtime(root, policy="permissive") as rt:
            rt.verify()
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.JournalCorrupt):
            rt.rollback_all()
    assert run_cli("verify", "--root", str(root)).returncode == 1


SOAK_TASK = """
id: soak
domain: files
instruction: Write a note.
files:
  notes/a.txt: "a\\n"
databases:
  main:
    setup: |
      CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER);
      INSERT INTO t VALUES (1, 0), (2, 0);
max_steps: 10
grade:
  - file: {path: notes/a.txt, exists: true}
reference:
  honest: [{type: submit}]
"""

SOAK_EPISODES = int(os.environ.get("GOEX_SOAK_EPISODES", "10000"))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _journal_sizes(folder: Path) -> tuple[int, int]:
    """journal.db, and its write-ahead log (SQLite folds it back into journal.db every 1,000 pages)."""
    return (folder / "journal.db").stat().st_size, (folder / "journal.db-wal").stat().st_size


WAL_BOUND = 1000 * (4096 + 24) + 32 + 64 * 4096  # 1,000 pages and their frame headers, with room for one commit


def test_soak_ten_thousand_episodes_leave_the_journal_and_the_world_no_bigger(tmp_path: Path):
    """Short episodes (one file write and one row update each, then a reset) so the run stays in
    minutes; sizes are read once warmed up (SQLite's pages and WAL at their working size) and at
    the end."""
    (tmp_path / "task.yaml").write_text(SOAK_TASK)
    env = goex.gym.GoexEnv(task=tmp_path / "task.yaml", home=tmp_path / "home")
    try:
        env.reset(seed=0)
        home = tmp_path / "home" / "soak"
        journal = home / "workspace" / ".goex"
        warm = min(500, SOAK_EPISODES // 4)
        sizes: dict[int, tuple[int, int]] = {}
        t0 = time.perf_counter()
        for episode in range(SOAK_EPISODES):
            _, _, _, _, info = env.step(json.dumps({"type": "fs.write", "path": "notes/a.txt",
                                                    "content": f"episode {episode}\n" * 200}))
            assert info["status"] == "applied", info
            _, _, _, _, info = env.step(json.dumps({"type": "sql.execute", "db": "main",
                                                    "sql": "UPDATE t SET v = ? WHERE id = 1", "params": [episode]}))
            assert info["status"] == "applied", info
            env.reset()
            db, wal = _journal_sizes(journal)
            assert wal <= WAL_BOUND, f"episode {episode}: the journal's write-ahead log is {wal} bytes"
            if episode + 1 in (warm, SOAK_EPISODES):
                sizes[episode + 1] = (db, _size(home) - _size(journal))
        elapsed = time.perf_counter() - t0
        (warm_journal, warm_world), (end_journal, end_world) = sizes[warm], sizes[SOAK_EPISODES]
        print(f"\n{SOAK_EPISODES} episodes in {elapsed:.0f} s; journal.db {warm_journal} -> {end_journal} bytes, "
              f"world {warm_world} -> {end_world} bytes (after {warm} and {SOAK_EPISODES} episodes)")
        assert end_journal <= warm_journal, "the journal grew across episodes"
        assert end_world <= warm_world, "the world folder grew across episodes"
        rt = env._world.runtime if env._world is not None else None
        assert rt is not None and rt.verify().records < 20  # the history of past episodes was folded
    finally:
        env.close()
