"""The `goex` command as a user runs it: exit codes, JSON output, undo variants, log, verify.

Commands run in this process through `goex.cli.main` (`run_cli`); a few run as real processes of
the installed `goex` script, to show the command itself works end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CliRun, run_cli, seed_tree, snapshot

GOEX = [str(Path(sys.executable).with_name("goex"))]


def goex(*args: str, stdin: bytes | str | None = None) -> CliRun:
    return run_cli(*args, stdin=stdin)


def goex_process(*args: str, stdin: bytes | None = None) -> CliRun:
    """`goex ARGS...` as a separate process of the installed script."""
    done = subprocess.run(GOEX + list(args), input=stdin, capture_output=True, timeout=120)
    return CliRun(done.returncode, done.stdout, done.stderr)


def results(done: CliRun) -> list[dict]:
    return [json.loads(line) for line in done.out.splitlines() if line.strip()]


def test_the_installed_command_runs_exec_log_and_help(root: Path):
    done = goex_process("exec", "--root", str(root), '{"type": "fs.write", "path": "a.txt", "content": "hi"}')
    assert done.returncode == 0, done.err
    [r] = results(done)
    assert r["ok"] is True and r["status"] == "applied" and (root / "a.txt").read_text() == "hi"
    [row] = json.loads(goex_process("log", "--root", str(root), "--json").out)
    assert row["id"] == r["entry_id"] and row["target"] == "a.txt" and row["status"] == "applied"
    usage = goex_process("--help")
    assert usage.returncode == 0 and "exec" in usage.out and "undo" in usage.out
    assert goex_process("undo", "--root", str(root), "--steps", "0").returncode == 2  # argparse, as a process


def test_exec_one_action_prints_one_result(root: Path):
    done = goex("exec", "--root", str(root), '{"type": "fs.write", "path": "a.txt", "content": "hi"}')
    assert done.returncode == 0, done.err
    [r] = results(done)
    assert r["ok"] is True and r["entry_id"] and r["status"] == "applied" and r["session"]
    assert (root / "a.txt").read_text() == "hi"


def test_exec_exit_codes(root: Path):
    ok = '{"type": "fs.write", "path": "a.txt", "content": "hi"}'
    assert goex("exec", "--root", str(root), ok).returncode == 0
    assert goex("exec", "--root", str(root), '{"type": "fs.nope"}').returncode == 2
    assert goex("exec", "--root", str(root), "{broken").returncode == 2
    refused = goex("exec", "--root", str(root), '{"type": "fs.write", "path": ".git/x", "content": "x"}')
    assert refused.returncode == 3 and "fs.git-internals" in results(refused)[0]["error"]
    escaped = goex("exec", "--root", str(root), '{"type": "fs.read", "path": "../../etc/passwd"}')
    assert escaped.returncode == 3
    failed = goex("exec", "--root", str(root), '{"type": "fs.read", "path": "missing.txt"}')
    assert failed.returncode == 1 and "no such file" in results(failed)[0]["error"]


def test_exec_json_lines_from_stdin(root: Path):
    lines = "\n".join([
        '{"type": "fs.write", "path": "one", "content": "1"}',
        '{"type": "fs.write", "path": "two", "content": "2"}',
        "not json",
        '{"type": "fs.write", "path": ".env", "content": "x"}',
        '{"type": "fs.read", "path": "one"}',
    ]) + "\n"
    done = goex("exec", "--root", str(root), "--session", "s1", "-", stdin=lines)
    rs = results(done)
    assert [r["ok"] for r in rs] == [True, True, False, False, True]
    assert rs[2]["status"] == "malformed" and rs[3]["status"] == "denied" and rs[4]["output"] == "1"
    assert [r["line"] for r in rs] == [1, 2, 3, 4, 5]
    assert {r["session"] for r in rs} == {"s1"}
    assert done.returncode == 2  # malformed outranks refused


def test_exec_non_utf8_stdin_is_malformed_and_applies_nothing(root: Path):
    done = goex("exec", "--root", str(root), "-", stdin=b'{"type": "fs.write", "path": "x", "content": "\xff"}\n')
    assert done.returncode == 2 and "not UTF-8" in results(done)[0]["error"]
    assert not (root / "x").exists()


def test_undo_variants(root: Path):
    seed_tree(root)
    start = snapshot(root)
    r = str(root)
    w = lambda p, c: json.dumps({"type": "fs.write", "path": p, "content": c})  # noqa: E731
    assert goex("exec", "--root", r, "--session", "A", w("src/main.py", "1")).returncode == 0
    cp = goex("checkpoint", "--root", r, "--session", "A", "--label", "mid").out.strip()
    assert cp.startswith("c")
    mid = snapshot(root)
    goex("exec", "--root", r, "--session", "A", w("a2", "2"))
    goex("exec", "--root", r, "--session", "A", w("a3", "3"))
    goex("exec", "--root", r, "--session", "B", w("b1", "1"))
    assert goex("undo", "--root", r, "--steps", "1", "--session", "A").returncode == 0
    assert not (root / "a3").exists() and (root / "a2").exists()
    assert goex("undo", "--root", r, "--to", "mid").returncode == 0
    assert not (root / "a2").exists() and (root / "b1").exists()
    assert goex("undo", "--root", r, "--session", "B").returncode == 0
    assert snapshot(root) == mid
    assert goex("undo", "--root", r, "--all").returncode == 0
    assert snapshot(root) == start
    assert goex("undo", "--root", r, "--to", "nope").returncode == 1


def test_undo_conflict_exit_code_and_force(root: Path):
    r = str(root)
    goex("exec", "--root", r, '{"type": "fs.write", "path": "f", "content": "goex"}')
    (root / "f").write_text("edited by a human")
    done = goex("undo", "--root", r, "--all")
    assert done.returncode == 4 and "f: expected" in done.err and "--force" in done.err
    assert (root / "f").read_text() == "edited by a human"
    assert goex("undo", "--root", r, "--all", "--force").returncode == 0
    assert not (root / "f").exists()


def test_log_table_and_json(root: Path):
    r = str(root)
    goex("exec", "--root", r, "--session", "S", "--actor", "bot", '{"type": "fs.write", "path": "f", "content": "x"}')
    goex("exec", "--root", r, "--session", "S", '{"type": "fs.write", "path": ".env", "content": "x"}')
    goex("undo", "--root", r, "--steps", "1")
    rows = json.loads(goex("log", "--root", r, "--json").out)
    assert [set(row) for row in rows] == [{"id", "time", "session", "actor", "type", "target", "decision", "status"}] * 2
    assert [(x["actor"], x["target"], x["decision"], x["status"]) for x in rows] == [
        ("bot", "f", "allow", "undone"), ("agent", ".env", "deny", "denied")]
    assert rows[0]["time"].endswith("+00:00")
    table = goex("log", "--root", r).out.splitlines()
    assert table[0].split() == ["id", "time", "session", "actor", "type", "target", "decision", "status"]
    assert len(table) == 3
    goex("checkpoint", "--root", r, "--session", "S", "--label", "here")
    [cp] = json.loads(goex("log", "--root", r, "--json", "--checkpoints").out)
    assert cp["label"] == "here" and cp["session"] == "S" and cp["id"].startswith("c")


def test_verify_and_recover(root: Path):
    r = str(root)
    goex("exec", "--root", r, '{"type": "fs.write", "path": "f", "content": "x"}')
    ok = goex("verify", "--root", r)
    assert ok.returncode == 0 and "journal OK" in ok.out
    assert "nothing to recover" in goex("recover", "--root", r).out


def test_missing_root_is_a_clear_error(tmp_path: Path):
    done = goex("exec", "--root", str(tmp_path / "nope"), '{"type": "fs.list", "path": "."}')
    assert done.returncode == 1 and "not an existing folder" in done.err


def test_journal_elsewhere(root: Path, tmp_path: Path):
    j = str(tmp_path / "journal")
    goex("exec", "--root", str(root), "--journal", j, '{"type": "fs.write", "path": "f", "content": "x"}')
    assert not (root / ".goex").exists() and os.path.exists(os.path.join(j, "journal.db"))
    assert goex("undo", "--root", str(root), "--journal", j, "--all").returncode == 0
    assert not (root / "f").exists()


def test_schema_command():
    schema = json.loads(goex("schema").out)
    assert "fs.write" in schema["discriminator"]["mapping"]


def test_demo_runs_end_to_end():
    done = goex_process("demo")
    assert done.returncode == 0, done.err
    assert "identical to the start" in done.out and "REFUSED" in done.out


def test_exec_oversized_stdin_line_is_malformed_and_the_rest_runs(root: Path):
    huge = '{"type": "fs.write", "path": "huge", "content": "' + "x" * (33 * 1024 * 1024) + '"}\n'
    ok = '{"type": "fs.write", "path": "small", "content": "fine"}\n'
    done = goex("exec", "--root", str(root), "-", stdin=huge + ok)
    rs = results(done)
    assert done.returncode == 2 and rs[0]["status"] == "malformed" and "over the limit" in rs[0]["error"]
    assert rs[1]["ok"] and (root / "small").read_text() == "fine" and not (root / "huge").exists()


def test_undo_refuses_ambiguous_or_unknown_targets(root: Path):
    r = str(root)
    goex("exec", "--root", r, "--session", "A", '{"type": "fs.write", "path": "a", "content": "1"}')
    goex("exec", "--root", r, "--session", "B", '{"type": "fs.write", "path": "b", "content": "1"}')
    both = goex("undo", "--root", r, "--all", "--session", "A")
    assert both.returncode == 1 and "only --session" in both.err
    unknown = goex("undo", "--root", r, "--session", "nosuch")
    assert unknown.returncode == 1 and "no entries" in unknown.err
    assert goex("undo", "--root", r, "--steps", "0").returncode == 2
    assert goex("verify", "--root", r, "--expect", "garbage").returncode == 2
    assert (root / "a").exists() and (root / "b").exists()
    steps = goex("undo", "--root", r, "--steps", "5")  # the root's last changes, whichever session: 2 of 5
    assert steps.returncode == 1 and "undid 2 of the 5 requested" in steps.err
    assert not (root / "a").exists() and not (root / "b").exists()


def test_names_that_are_not_utf8_round_trip(root: Path):
    bad = os.fsencode(str(root / "d")) + b"/bad\xffname"
    os.mkdir(root / "d")
    with open(bad, "wb") as f:
        f.write(b"data")
    listed = results(goex("exec", "--root", str(root), '{"type": "fs.list", "path": "d"}'))[0]
    name = listed["output"][0]["name"]
    assert name == "bad\udcffname"
    # addressing such a name directly is not supported (actions are Unicode); whole folders move and undo fine
    assert goex("exec", "--root", str(root), '{"type": "fs.delete", "path": "d", "recursive": true}').returncode == 0
    assert not (root / "d").exists()
    assert goex("undo", "--root", str(root), "--all").returncode == 0
    assert open(bad, "rb").read() == b"data"
    assert goex("verify", "--root", str(root)).returncode == 0


def test_review_shows_diffs_then_accepts_or_undoes(root: Path):
    r = str(root)
    (root / "app.py").write_text("x = 1\ny = 2\n")
    goex("exec", "--root", r, "--session", "R", '{"type": "fs.write", "path": "app.py", "content": "x = 1\\ny = 3\\n"}')
    goex("exec", "--root", r, "--session", "R", '{"type": "fs.write", "path": "notes.md", "content": "hi\\n"}')
    goex("exec", "--root", r, "--session", "R", '{"type": "fs.write", "path": "more.md", "content": "more\\n"}')
    report = goex("review", "--root", r, "--session", "R")
    assert report.returncode == 0 and "-y = 2" in report.out and "+y = 3" in report.out and "+hi" in report.out
    ids = [e["id"] for e in json.loads(goex("log", "--root", r, "--json").out)]
    undone = goex("review", "--root", r, "--session", "R", "--undo-from", ids[1])
    assert undone.returncode == 0 and not (root / "notes.md").exists() and not (root / "more.md").exists()
    assert (root / "app.py").read_text() == "x = 1\ny = 3\n"
    accepted = goex("review", "--root", r, "--session", "R", "--accept", "--by", "carol")
    assert accepted.returncode == 0 and "accepted 3 entries" in accepted.out
    assert "reviewed by carol" in goex("review", "--root", r, "--session", "R").out
    assert goex("verify", "--root", r).returncode == 0
    assert goex("review", "--root", r, "--session", "nobody").returncode == 1


def test_review_shows_row_images_and_run_output(root: Path):
    """The review names what SQL changed row by row and what a code run printed, from the journal."""
    r, db = str(root), "--db=main=sqlite:///app.db"
    for sql in ("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO t VALUES (1, 'old')",
                "UPDATE t SET v = 'new' WHERE id = 1"):
        assert goex("exec", "--root", r, db, "--session", "S", json.dumps(
            {"type": "sql.execute", "db": "main", "sql": sql})).returncode == 0
    ran = goex("exec", "--root", r, "--session", "S", "--sandbox", "bwrap", json.dumps(
        {"type": "code.run", "language": "python", "code": "print('printed-by-the-run')"}))
    assert ran.returncode == 0, ran.err
    report = goex("review", "--root", r, db, "--session", "S")
    assert report.returncode == 0, report.err
    update = report.out[report.out.index("UPDATE t SET"):]
    assert '"v": "old"' in update and '"v": "new"' in update  # before and after of the changed row
    assert "printed-by-the-run" in report.out and "exit code 0" in report.out


@pytest.mark.parametrize("command", [["undo", "--steps", "1"], ["undo", "--all"], ["recover"], ["review", "--session", "s"],
                                     ["approve", "e1"], ["reject", "e1"], ["log"], ["verify"],
                                     ["policy", "check", '{"type": "fs.read", "path": "a.txt"}']])
def test_commands_that_only_read_or_settle_never_make_a_journal(tmp_path: Path, command: list[str]):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli(*command, "--root", str(empty))
    assert list(empty.iterdir()) == [], (command, done.err)
    if command[0] in ("undo", "review", "approve", "reject", "verify"):
        assert done.returncode == 1 and "there is no journal in" in done.err, done.err
    else:
        assert done.returncode == 0, done.err
