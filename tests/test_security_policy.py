"""Policy-side confinement: approvals cover the previewed effect, code runs are judged as the file
actions they amount to, budgets hold across runtimes and processes, a database's own files are
out of reach, and the packs judge SQL by its effect. Every test attacks through the public API or
the CLI and checks the real files and rows."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

import goex
from conftest import CliRun, run_cli
from goex.policy import Match, Pack, Policy, Rule, load_policy

SANDBOX = "bwrap"


def _cli(*args: str) -> CliRun:
    return run_cli(*args)


def _rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _entry(rt: goex.Runtime, eid: str) -> dict:
    return rt.journal.record(rt.journal.entry(eid)["seq"])


# -- finding 10: an approval is for the previewed effect ---------------------------------------------


def _moves_db(root: Path, rows: int) -> Path:
    db = root / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE moves (id INTEGER PRIMARY KEY, san TEXT)")
    conn.executemany("INSERT INTO moves (san) VALUES (?)", [(f"m{i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return db


def test_cli_approval_of_a_grown_effect_reparks_instead_of_running(root: Path):
    db = _moves_db(root, 3)
    parked = _cli("exec", "--root", str(root), "--db", "main=sqlite:///app.db",
                  '{"type": "sql.execute", "db": "main", "sql": "DELETE FROM moves"}')
    out = json.loads(parked.out)
    assert out["status"] == "awaiting_approval", out
    conn = sqlite3.connect(db)  # the agent (or anyone) adds rows while the action waits
    conn.executemany("INSERT INTO moves (san) VALUES (?)", [(f"x{i}",) for i in range(1800)])
    conn.commit()
    conn.close()
    approved = _cli("approve", "--root", str(root), "--db", "main=sqlite:///app.db", out["entry_id"])
    again = json.loads(approved.out)
    assert approved.returncode == 3 and again["status"] == "awaiting_approval", again
    assert _rows(db, "moves") == 1803  # nothing was deleted
    with goex.Runtime(root, databases={"main": "sqlite:///app.db"}) as rt:
        new = _entry(rt, again["entry_id"])
        assert new["status"] == "awaiting_approval" and new["preview"]["rows"] == 1803
        assert "sql.many-rows" in [m["id"] for m in new["decision"]["rules"]]
        statuses = {e["id"]: e["status"] for e in rt.log()}
        assert statuses[out["entry_id"]] == "rejected"  # the old approval request is closed, not run
        assert "rows 3 -> 1,803" in again["error"] and "sql.many-rows" in again["error"]
    # approving the new preview runs exactly that
    done = _cli("approve", "--root", str(root), "--db", "main=sqlite:///app.db", again["entry_id"])
    assert done.returncode == 0, done.out + done.err
    assert _rows(db, "moves") == 0


def test_approval_runs_an_unchanged_or_smaller_effect(root: Path):
    db = _moves_db(root, 5)
    with goex.Runtime(root, approver="pending", databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        parked = s.execute({"type": "sql.execute", "db": "main", "sql": "DELETE FROM moves"})
        assert parked.status == "awaiting_approval"
        sqlite3.connect(db).execute("DELETE FROM moves WHERE id > 3").connection.commit()  # it shrank
        done = rt.approve(parked.entry_id, by="alice")
        assert done.ok, done.error
        assert _rows(db, "moves") == 0
        assert {e["id"]: e["status"] for e in rt.log()}[parked.entry_id] == "approved"


def test_approval_of_a_file_delete_that_grew_is_parked_again(root: Path):
    (root / "logs").mkdir()
    for i in range(120):
        (root / f"logs/{i}.log").write_text("x")
    with goex.Runtime(root, approver="pending") as rt:
        parked = rt.session().execute({"type": "fs.delete", "path": "logs", "recursive": True})
        assert parked.status == "awaiting_approval"
        for i in range(120, 400):
            (root / f"logs/{i}.log").write_text("x")
        again = rt.approve(parked.entry_id)
        assert again.status == "awaiting_approval" and "files_deleted 120 -> 280" not in again.error
        assert "files_deleted 120 -> 400" in again.error
        assert len(list((root / "logs").iterdir())) == 400
        with pytest.raises(goex.GoexError, match="not awaiting approval"):
            rt.approve(parked.entry_id)  # the first request is closed


# -- finding 11: a code run's file effects are judged before they land -----------------------------


def _project(root: Path) -> None:
    (root / ".git").mkdir()
    (root / ".git/config").write_text("[core]\n\tbare = false\n")
    (root / "data").mkdir()
    for i in range(300):
        (root / f"data/{i}.csv").write_text(f"{i}\n")
    (root / "tests").mkdir()
    (root / "tests/test_app.py").write_text("assert True\n")


ATTACKS = {
    "bulk-delete": ("rm -rf data", "fs.bulk-delete-files"),
    "git-config": ("printf '[core]\\n\\tfsmonitor = evil\\n' >> .git/config", "fs.git-internals"),
    "env-file": ("echo TOKEN=stolen > .env", "fs.env-files"),
    "protected": ("echo 'assert False' > tests/test_app.py", "workspace.protected"),
}


@pytest.mark.parametrize("pack", ["strict", "training"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_code_runs_effects_are_refused_like_the_file_actions_they_amount_to(root: Path, pack: str, attack: str):
    _project(root)
    code, rule = ATTACKS[attack]
    with goex.Runtime(root, policy=pack, sandbox=SANDBOX, protected=["tests/**"],
                      sandbox_options={"pool_size": 1}) as rt:
        s = rt.session()
        r = s.execute({"type": "code.run", "language": "bash", "code": code + "; echo side > side.txt"})
        assert not r.ok and r.status == "denied", (r.status, r.error)
        assert rule in r.decision.rules and "nothing it changed was copied" in r.error
        log = {e["id"]: e for e in rt.log()}
        assert log[r.entry_id]["status"] == "denied" and log[r.entry_id]["decision"] == "deny"
        assert rule in [m["id"] for m in _entry(rt, r.entry_id)["decision"]["rules"]]
    assert len(list((root / "data").iterdir())) == 300
    assert (root / ".git/config").read_text() == "[core]\n\tbare = false\n"
    assert not (root / ".env").exists() and not (root / "side.txt").exists()
    assert (root / "tests/test_app.py").read_text() == "assert True\n"


def test_a_harmless_run_lands_and_its_usage_is_charged_to_the_budgets(root: Path, tmp_path: Path):
    pack = tmp_path / "small.yaml"
    pack.write_text("name: small\nextends: permissive\nbudgets: {files_deleted: 5, bytes_written: 1000}\nrules: []\n")
    for i in range(8):
        (root / f"f{i}").write_text("x")
    with goex.Runtime(root, policy=pack, sandbox=SANDBOX, sandbox_options={"pool_size": 1}) as rt:
        s = rt.session()
        r = s.execute({"type": "code.run", "language": "bash", "code": "rm f0 f1 f2; head -c 600 /dev/zero > big"})
        assert r.ok, r.error
        assert _entry(rt, r.entry_id)["usage"] == {"files_deleted": 3, "bytes_written": 600}
        over = s.execute({"type": "code.run", "language": "bash", "code": "rm f3 f4 f5"})  # 6 > 5
        assert not over.ok and "budget.files_deleted" in over.decision.rules
        assert all((root / f"f{i}").exists() for i in (3, 4, 5))
        more = s.execute({"type": "fs.write", "path": "w", "content": "y" * 500})  # 1,100 > 1,000 bytes
        assert not more.ok and more.decision.rules == ["budget.bytes_written"]
        assert not (root / "w").exists()
        s.undo()  # undone, it still counts
        assert (root / "f0").exists()
        assert s.execute({"type": "fs.delete", "path": "f6"}).ok  # 4 of 5
        assert s.execute({"type": "fs.delete", "path": "f7"}).ok  # 5 of 5
        assert not s.execute({"type": "fs.delete", "path": "f0"}).ok


def test_a_finished_run_that_needs_confirmation_asks_a_synchronous_approver_or_is_refused(root: Path):
    for i in range(150):
        (root / f"{i}.tmp").write_text("x")
    code = {"type": "code.run", "language": "bash", "code": "rm -f *.tmp"}
    with goex.Runtime(root, approver="pending", sandbox=SANDBOX, sandbox_options={"pool_size": 1}) as rt:
        r = rt.session().execute(code)
        assert r.status == "denied" and "cannot be parked" in r.error and "Re-run it" in r.error
        assert "fs.bulk-delete-files" in r.decision.rules
    assert len(list(root.glob("*.tmp"))) == 150
    asked = []
    with goex.Runtime(root, approver=lambda q: asked.append(q) or False, sandbox=SANDBOX,
                      sandbox_options={"pool_size": 1}) as rt:
        r = rt.session().execute(code)
        assert r.status == "denied" and "rejected by the approver" in r.error
        assert asked[0].preview["files_deleted"] == 150 and "delete 0.tmp" in asked[0].summary
    assert len(list(root.glob("*.tmp"))) == 150
    with goex.Runtime(root, approver=lambda q: True, sandbox=SANDBOX, sandbox_options={"pool_size": 1}) as rt:
        s = rt.session()
        r = s.execute(code)
        assert r.ok, r.error
        assert not list(root.glob("*.tmp"))
        s.undo()
    assert len(list(root.glob("*.tmp"))) == 150


# -- finding 13: budgets are read from the journal at decision time ---------------------------------


def _budget_pack(tmp_path: Path, limit: int) -> Path:
    pack = tmp_path / "budget.yaml"
    pack.write_text(f"name: b\nextends: permissive\nbudgets: {{files_deleted: {limit}}}\nrules: []\n")
    return pack


def test_two_runtimes_on_one_session_share_its_budget(root: Path, tmp_path: Path):
    pack = _budget_pack(tmp_path, 3)
    for i in range(6):
        (root / f"f{i}").write_text("x")
    with goex.Runtime(root, policy=pack) as a, goex.Runtime(root, policy=pack) as b:
        sa, sb = a.session(session_id="shared"), b.session(session_id="shared")
        results = [sa.execute({"type": "fs.delete", "path": "f0"}), sb.execute({"type": "fs.delete", "path": "f1"}),
                   sa.execute({"type": "fs.delete", "path": "f2"}), sb.execute({"type": "fs.delete", "path": "f3"}),
                   sa.execute({"type": "fs.delete", "path": "f4"})]
        assert [r.ok for r in results] == [True, True, True, False, False]
        assert results[3].decision.rules == ["budget.files_deleted"]
    assert sorted(p.name for p in root.iterdir() if p.name != ".goex") == ["f3", "f4", "f5"]


def _spend(root: str, pack: str, start: int, count: int) -> None:
    with goex.Runtime(root, policy=pack, durability="process") as rt:
        s = rt.session(session_id="shared")
        for i in range(start, start + count):
            s.execute({"type": "fs.delete", "path": f"f{i}"})


def test_two_processes_on_one_session_never_exceed_its_budget(root: Path, tmp_path: Path):
    pack = _budget_pack(tmp_path, 10)
    for i in range(40):
        (root / f"f{i}").write_text("x")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_spend, args=(str(root), str(pack), n * 10, 10)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    left = [p for p in root.iterdir() if p.name.startswith("f")]
    assert len(left) == 30  # exactly the budget was spent, by whichever processes got there first
    with goex.Runtime(root, policy=pack) as rt:
        assert sum(1 for e in rt.log() if e["status"] == "applied") == 10


# -- database sidecar files -----------------------------------------------------------------------


@pytest.mark.parametrize("pack", ["permissive", "default"])
def test_file_actions_cannot_plant_or_touch_a_databases_own_files(root: Path, pack: str):
    db = _moves_db(root, 50)
    (root / "data").mkdir()
    with goex.Runtime(root, policy=pack, databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        for action in ({"type": "fs.write", "path": "app.db-journal", "content": "x" * 600},
                       {"type": "fs.write", "path": "APP.DB-WAL", "content": "x"},
                       {"type": "fs.move", "src": "app.db", "dst": "app.db-shm"}):
            r = s.execute(action)
            assert not r.ok and r.status == "denied" and "workspace.database-file" in r.decision.rules, action
        assert s.execute({"type": "fs.write", "path": "app.db-notes", "content": "x"}).ok  # a harmless twin
        assert s.execute({"type": "sql.execute", "db": "main", "sql": "SELECT COUNT(*) FROM moves"}).ok
    assert not (root / "app.db-journal").exists() and not (root / "APP.DB-WAL").exists()
    assert _rows(db, "moves") == 50


def test_a_code_run_cannot_plant_a_hot_journal(root: Path):
    db = _moves_db(root, 50)
    journal = "app.db-journal"
    with goex.Runtime(root, policy="permissive", sandbox=SANDBOX, databases={"main": "sqlite:///app.db"},
                      sandbox_options={"pool_size": 1}) as rt:
        s = rt.session()
        r = s.execute({"type": "code.run", "language": "bash", "code": f"head -c 4096 /dev/urandom > {journal}"})
        assert not r.ok and r.status == "denied" and "workspace.database-file" in r.decision.rules
        assert not (root / journal).exists()
        assert s.execute({"type": "sql.execute", "db": "main", "sql": "SELECT COUNT(*) FROM moves"}).ok
    assert _rows(db, "moves") == 50


# -- finding 9, policy side: the packs judge the effect ---------------------------------------------


@pytest.mark.parametrize("pack,verdict", [("default", "confirm"), ("strict", "confirm"), ("training", "deny")])
def test_all_rows_and_trigger_previews_are_confirmed(pack: str, verdict: str):
    policy = load_policy(pack)
    every = policy.decide("sql.execute", ["main"], {"kinds": ["update"], "where_missing": False, "rows": 2,
                                                    "all_rows": ["orders"]})
    assert "sql.all-rows" in every.rules
    assert _verdict(policy, every) == verdict
    trigger = policy.decide("sql.execute", ["main"], {"kinds": ["create"], "rows": 0, "all_rows": [],
                                                      "creates_trigger": True})
    assert trigger.rules == ["sql.trigger"] and _verdict(policy, trigger) == verdict
    some = policy.decide("sql.execute", ["main"], {"kinds": ["update"], "rows": 2, "all_rows": [],
                                                   "creates_trigger": False})
    assert some.verdict == "allow"


def _verdict(policy: Policy, decision: goex.Decision) -> str:
    return "deny" if decision.verdict == "confirm" and policy.confirm == "deny" else decision.verdict


def test_list_preview_fields_compare_by_length():
    policy = Policy(Pack(name="t", rules=[Rule(id="r", decision="deny",
                                               match=Match(type=["sql.*"], preview={"all_rows": {"gt": 0}}))]))
    assert policy.decide("sql.execute", [], {"all_rows": ["a"]}).rules == ["r"]
    assert policy.decide("sql.execute", [], {"all_rows": []}).rules == []
    assert policy.decide("sql.execute", [], {}).rules == []
