"""Coalesced undo: a range of entries (files, SQLite rows, HTTP requests, code runs) is undone as
one operation, with the outcome undoing each entry in turn would have, conflicts included, and
crash-safe: a process killed inside it is settled exactly by `recover`."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import apsw
import httpx
import pytest

import goex
from conftest import snapshot
from goex.adapters.base import Adapter
from goex.service import serve
from goex.sql import dump

SETUP = """
CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER, w TEXT);
CREATE TABLE log (msg TEXT);  -- no primary key: rows are told apart by rowid
INSERT INTO t VALUES (1, 0, 'a'), (2, 0, 'b'), (3, 0, 'c');
INSERT INTO log VALUES ('start');
"""


def make_world(root: Path) -> str:
    for i in range(4):
        (root / f"f{i}.txt").write_text(f"original {i}\n")
    (root / "docs").mkdir()
    (root / "docs" / "readme.md").write_text("read me\n")
    conn = apsw.Connection(str(root / "app.db"))
    conn.execute(SETUP)
    conn.close()
    return "sqlite:///app.db"


def outside_sql(root: Path, sql: str) -> None:
    """A change made outside goex (APSW: the same SQLite library goex uses, see sqlite.py)."""
    conn = apsw.Connection(str(root / "app.db"))
    try:
        conn.execute(sql)
    finally:
        conn.close()


def records(rt: goex.Runtime, kind: str) -> list[dict]:
    return [r for r in (json.loads(b) for _, b, _ in rt.journal.records()) if r["kind"] == kind]


def state(root: Path) -> tuple[dict, str]:
    files = {k: v for k, v in snapshot(root).items() if not k.startswith("app.db")}
    return files, dump(f"sqlite:///{root / 'app.db'}")


def write(s: goex.Session, path: str, content: str) -> str:
    r = s.execute({"type": "fs.write", "path": path, "content": content})
    assert r.ok, r.error
    return r.entry_id


def sql(s: goex.Session, statement: str, params: list | None = None) -> str:
    r = s.execute({"type": "sql.execute", "db": "main", "sql": statement, "params": params or []})
    assert r.ok, r.error
    return r.entry_id


def test_a_range_of_file_and_sqlite_entries_is_undone_as_one_with_one_record(root: Path):
    url = make_world(root)
    start = state(root)
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        s = rt.session()
        ids = []
        for i in range(30):
            ids.append(write(s, f"f{i % 4}.txt", f"step {i}\n"))
            ids.append(sql(s, "UPDATE t SET v = ? WHERE id = ?", [i, i % 3 + 1]))
        ids.append(sql(s, "INSERT INTO t VALUES (9, 9, 'new')"))
        ids.append(sql(s, "DELETE FROM t WHERE id = 9"))  # cancels out with the insert
        ids.append(sql(s, "INSERT INTO log VALUES ('x'), ('y')"))
        ids.append(sql(s, "DELETE FROM t WHERE id = 2"))
        ids.append(s.execute({"type": "fs.delete", "path": "docs", "recursive": True}).entry_id)
        ids.append(write(s, "new/deep/file.txt", "created with its folders\n"))
        assert state(root) != start
        undone = s.rollback()
        assert undone == ids[::-1]
        assert state(root) == start
        ranges = [r for r in records(rt, "undoing") if "entries" in r]
        assert len(ranges) == 1 and sorted(ranges[0]["entries"]) == sorted(ids)
        assert [r["entries"] for r in records(rt, "undone") if "entries" in r] == [ranges[0]["entries"]]
        assert {e["status"] for e in rt.log()} == {"undone"}
        rt.verify()
        detail = rt.journal.detail(ids[1], with_records=True)  # a SQL entry: it has a "captured" record
        assert [r["kind"] for r in detail.records] == ["captured", "applied", "undoing", "undone"]


def test_an_outside_file_change_in_the_middle_stops_the_range_at_the_entry_it_concerns(root: Path):
    make_world(root)
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        e1 = write(s, "f0.txt", "one\n")
        (root / "f0.txt").write_text("outside\n")  # between e1 and e2, outside goex
        e2 = write(s, "f0.txt", "two\n")
        e3 = write(s, "f1.txt", "three\n")
        e4 = write(s, "f2.txt", "four\n")
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == e1
        assert caught.value.undone == [e4, e3, e2]
        assert [c[0] for c in caught.value.conflicts] == ["f0.txt"]
        # the newer entries were undone, e1 was not: the outside change is what e2 found
        assert (root / "f0.txt").read_text() == "outside\n"
        assert (root / "f1.txt").read_text() == "original 1\n"
        assert {e["id"]: e["status"] for e in rt.log()} == {e1: "applied", e2: "undone", e3: "undone",
                                                             e4: "undone"}
        rt.verify()


@pytest.mark.parametrize("case", ["changed-between", "reinserted-after-delete", "set-back-then-changed",
                                  "other-column-changed"])
def test_an_outside_row_change_in_the_middle_is_a_conflict_naming_the_entry(root: Path, case: str):
    url = make_world(root)
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        s = rt.session()
        newer: list[str] = []
        if case == "changed-between":
            expected = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
            outside_sql(root, "UPDATE t SET v = 99 WHERE id = 1")
            newer.append(sql(s, "UPDATE t SET v = 2 WHERE id = 1"))
        elif case == "reinserted-after-delete":  # the composition drops the row: it must still be checked
            sql(s, "INSERT INTO t VALUES (7, 7, 'seven')")
            expected = sql(s, "DELETE FROM t WHERE id = 7")
            outside_sql(root, "INSERT INTO t VALUES (7, 70, 'outside')")
        elif case == "set-back-then-changed":
            sql(s, "UPDATE t SET v = 5 WHERE id = 2")
            expected = sql(s, "UPDATE t SET v = 0 WHERE id = 2")
            outside_sql(root, "UPDATE t SET v = 42 WHERE id = 2")
        else:  # each entry changes another column of the same row; the outside change hits the older one's
            expected = sql(s, "UPDATE t SET w = 'mine' WHERE id = 3")
            outside_sql(root, "UPDATE t SET w = 'theirs' WHERE id = 3")
            newer.append(sql(s, "UPDATE t SET v = 3 WHERE id = 3"))
        newer.append(write(s, "f3.txt", "after\n"))
        newer.append(sql(s, "UPDATE t SET v = 8 WHERE id = 1"))
        before_undo = dump(f"sqlite:///{root / 'app.db'}")
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == expected, (case, caught.value)
        assert caught.value.undone == newer[::-1]
        assert caught.value.conflicts and all(c[0].startswith("main.") for c in caught.value.conflicts)
        assert (root / "f3.txt").read_text() == "original 3\n"
        after = dump(f"sqlite:///{root / 'app.db'}")
        assert after != before_undo  # the newer entries' rows were put back ...
        assert {e["id"]: e["status"] for e in rt.log() if e["id"] in newer} == {e: "undone" for e in newer}
        assert rt.journal.entry(expected).status == "applied"  # ... the conflicting one's were not
        rt.verify()


def test_coalesced_and_entry_by_entry_undo_agree_on_random_histories(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """Differential: the same random history (goex actions and outside changes) undone with
    coalescing and with it switched off ends the same way: same entries undone, same conflict,
    same files and rows."""

    def run(seed: int, coalesce: bool) -> tuple:
        rng = random.Random(seed)
        root = tmp_path / f"{seed}-{coalesce}"
        root.mkdir()
        url = make_world(root)
        with monkeypatch.context() as m:
            if not coalesce:
                m.setattr(Adapter, "coalesce", lambda self, plan, after: None)
                for cls in Adapter.__subclasses__():
                    m.setattr(cls, "coalesce", lambda self, plan, after: None, raising=False)
            with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
                s = rt.session()
                for step in range(rng.randrange(5, 25)):
                    kind = rng.random()
                    if kind < 0.3:
                        write(s, rng.choice(["f0.txt", "f1.txt", "docs/readme.md", f"n{step % 3}.txt"]), f"{step}\n")
                    elif kind < 0.4:
                        s.execute({"type": "fs.delete", "path": rng.choice(["f2.txt", "docs", "f0.txt"]),
                                   "recursive": True})
                    elif kind < 0.8:
                        sql(s, rng.choice(["UPDATE t SET v = ? WHERE id = 1", "UPDATE t SET w = ? WHERE id = 2",
                                           "INSERT OR REPLACE INTO t VALUES (5, ?, 'five')",
                                           "DELETE FROM t WHERE v = ?", "INSERT INTO log VALUES (?)"]), [step])
                    elif kind < 0.9:
                        (root / rng.choice(["f0.txt", "f1.txt"])).write_text(f"outside {step}\n")
                    else:
                        outside_sql(root, rng.choice(["UPDATE t SET v = 100 WHERE id = 1",
                                                      "DELETE FROM t WHERE id = 5", "INSERT INTO log VALUES ('o')"]))
                try:
                    outcome: tuple = ("ok", s.rollback())
                except goex.UndoConflict as exc:
                    outcome = ("conflict", exc.entry_id, exc.undone, sorted(t for t, _ in exc.conflicts))
                statuses = [(e["id"], e["status"]) for e in rt.log()]
                rt.verify()
            return outcome, statuses, state(root)

    conflicts = 0
    for seed in range(int(os.environ.get("GOEX_COALESCE_SEEDS", "40"))):
        coalesced, one_by_one = run(seed, True), run(seed, False)
        assert coalesced == one_by_one, f"seed {seed}"
        conflicts += coalesced[0][0] == "conflict"
    assert conflicts >= 3, "the histories never met a conflict: the test did not test conflicts"


# -- a range that mixes files, SQL, HTTP and code runs ---------------------------------------------


@pytest.fixture(scope="module")
def service():
    with serve() as base:
        yield base


def test_a_range_mixing_files_sql_http_and_code_runs_is_undone_exactly(root: Path, service: str):
    httpx.post(service + "/admin/reset", json={"orders": [], "items": [], "emails": [], "payments": []})
    shop = httpx.get(service + "/state").json()
    url = make_world(root)
    start = state(root)
    http = goex.HttpConfig(allow_hosts=[httpx.URL(service).host], openapi=httpx.get(service + "/openapi.json").json())
    with goex.Runtime(root, policy="permissive", databases={"main": url}, http=http, sandbox="bwrap") as rt:
        s = rt.session()
        write(s, "f0.txt", "one\n")
        sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        r = s.execute({"type": "http.request", "method": "POST", "url": service + "/orders",
                       "json": {"item": "pen", "qty": 1}})
        assert r.ok, r.error
        write(s, "f1.txt", "two\n")
        r = s.execute({"type": "code.run", "language": "python",
                       "code": "open('f2.txt', 'w').write('from code\\n'); open('made.txt', 'w').write('x')"})
        assert r.ok and r.output["exit_code"] == 0, r
        write(s, "f2.txt", "after the run\n")
        sql(s, "UPDATE t SET v = 2 WHERE id = 1")
        assert httpx.get(service + "/state").json() != shop
        s.rollback()
        assert state(root) == start
        assert httpx.get(service + "/state").json()["orders"] == shop["orders"]
        ranged = [r["entries"] for r in records(rt, "undoing") if "entries" in r]
        single = [r["entry"] for r in records(rt, "undoing") if "entry" in r]
        assert any(len(r) >= 3 for r in ranged)  # the newest file, run and SQL entries went as one
        assert len(single) >= 1  # the request is undone on its own (its compensation is a request)
        rt.verify()


# -- killed in the middle of a coalesced undo ------------------------------------------------------

UNDOER = r'''
import sys, goex
root = sys.argv[1]
with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
    print("ready", flush=True)
    sys.stdin.readline()
    rt.rollback_all()
print("done", flush=True)
'''

KILL_ITERATIONS = int(os.environ.get("GOEX_CRASH_RANGE_ITERATIONS", "8"))


def test_killed_inside_a_coalesced_undo_is_settled_exactly_by_recover(tmp_path: Path):
    script = tmp_path / "undoer.py"
    script.write_text(UNDOER)
    killed_inside = 0
    for i in range(KILL_ITERATIONS):
        rng = random.Random(f"range-kill-{i}")
        root = tmp_path / f"k{i}"
        root.mkdir()
        url = make_world(root)
        start = state(root)
        with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
            s = rt.session()
            for step in range(150):
                if step % 2:
                    write(s, f"f{step % 4}.txt", f"{step}\n" * (1 + step % 50))
                else:
                    sql(s, "UPDATE t SET v = ? WHERE id = ?", [step, step % 3 + 1])
        proc = subprocess.Popen([sys.executable, str(script), str(root)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        journal = root / ".goex" / "journal.db"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and not _undoing(journal):
            time.sleep(0.0002)
        time.sleep(rng.uniform(0, 0.0015))  # the range undoes in a few milliseconds
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
            statuses = {e["status"] for e in rt.log()}
            killed_inside += "undoing" in statuses
            report = rt.recover()
            assert report.ok, report.outcomes
            rt.rollback_all()
            assert state(root) == start, f"iteration {i}: not restored"
            assert {e["status"] for e in rt.log()} == {"undone"}
            rt.verify()
    assert killed_inside >= 2, "no kill landed inside the coalesced undo: the test did not test recovery"


def _undoing(journal: Path) -> bool:
    try:
        con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM entries WHERE status = 'undoing'").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.OperationalError:
        return False


def test_a_fault_inside_a_coalesced_undo_leaves_it_for_recover(root: Path, monkeypatch: pytest.MonkeyPatch):
    url = make_world(root)
    start = state(root)
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        s = rt.session()
        for step in range(12):
            write(s, f"f{step % 4}.txt", f"{step}\n")
            sql(s, "UPDATE t SET v = ? WHERE id = 1", [step])
        from goex.adapters.fs import tree

        real, calls = tree.restore, []

        def failing(dfd: int, name: str, node: dict, get) -> None:
            calls.append(name)
            if len(calls) == 3:
                raise OSError(5, "Input/output error (injected)")
            real(dfd, name, node, get)

        monkeypatch.setattr(tree, "restore", failing)
        with pytest.raises(goex.RecoveryNeeded):
            s.rollback()
        monkeypatch.setattr(tree, "restore", real)
        assert {e["status"] for e in rt.log()} == {"undoing"}
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        assert rt.recover().ok
        assert state(root) == start
        assert {e["status"] for e in rt.log()} == {"undone"}
        rt.verify()


def test_a_range_stopped_by_a_file_conflict_leaves_the_database_unlocked_and_exact(root: Path):
    """The SQLite part of a range is checked by applying it in a transaction held open for the
    undo; when a file entry of the range meets a conflict, that transaction is let go: the rows
    older than the conflict stay as their entries left them, and the database is free at once."""
    url = make_world(root)
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        s = rt.session()
        e1 = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        e2 = write(s, "f0.txt", "one\n")
        (root / "f0.txt").write_text("outside\n")  # between e2 and e3, outside goex
        e3 = write(s, "f0.txt", "two\n")
        e4 = sql(s, "UPDATE t SET v = 2 WHERE id = 2")
        e5 = write(s, "f1.txt", "five\n")
        e6 = sql(s, "UPDATE t SET v = 3 WHERE id = 3")  # newest: the database's group is checked first
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == e2
        assert caught.value.undone == [e6, e5, e4, e3]
        conn = apsw.Connection(str(root / "app.db"))  # no busy timeout: a lock still held fails at once
        try:
            assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, 1), (2, 0), (3, 0)]
            conn.execute("UPDATE t SET w = 'outside' WHERE id = 3")
        finally:
            conn.close()
        assert (root / "f0.txt").read_text() == "outside\n"
        assert {e["id"]: e["status"] for e in rt.log()} == {e1: "applied", e2: "applied", e3: "undone",
                                                             e4: "undone", e5: "undone", e6: "undone"}
        sql(s, "UPDATE t SET v = 9 WHERE id = 1")
        rt.verify()


def test_a_range_whose_newest_entry_conflicts_lets_the_checked_database_undo_go(root: Path):
    """The database's group is checked (its undo held open) although the newest entry, a file,
    already stops the range: nothing of the database's undo stays, and nothing holds it locked."""
    url = make_world(root)
    with goex.Runtime(root, policy="permissive", databases={"main": url}) as rt:
        s = rt.session()
        e1 = sql(s, "UPDATE t SET v = 1 WHERE id = 1")
        e2 = sql(s, "UPDATE t SET v = 2 WHERE id = 2")
        e3 = write(s, "f0.txt", "three\n")
        (root / "f0.txt").write_text("outside\n")
        with pytest.raises(goex.UndoConflict) as caught:
            s.rollback()
        assert caught.value.entry_id == e3 and caught.value.undone == []
        conn = apsw.Connection(str(root / "app.db"))  # no busy timeout: a lock still held fails at once
        try:
            assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, 1), (2, 2), (3, 0)]
            conn.execute("UPDATE t SET w = 'outside' WHERE id = 3")
        finally:
            conn.close()
        assert {e["id"]: e["status"] for e in rt.log()} == {e1: "applied", e2: "applied", e3: "applied"}
        rt.verify()
