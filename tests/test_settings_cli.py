"""Per-root settings (`goex init`, `.goex/config.toml`, `Runtime.open`) and the CLI as its users
expect it: GOEX_ROOT, --json everywhere, log filters, undo --steps across sessions, conflicts that
name who changed what, help without arguments, shell completion."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import CliRun, run_cli

import goex


def goex_cli(*args: str, stdin: str | None = None) -> CliRun:
    return run_cli(*args, stdin=stdin)


def results(done: CliRun) -> list[dict]:
    return [json.loads(line) for line in done.out.splitlines() if line.strip()]


def make_db(root: Path) -> None:
    con = sqlite3.connect(root / "app.db")
    con.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    con.commit()
    con.close()


def rows(root: Path) -> list[tuple]:
    con = sqlite3.connect(root / "app.db")
    try:
        return con.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        con.close()


def test_init_writes_settings_every_command_reads(root: Path):
    make_db(root)
    r = str(root)
    done = goex_cli("init", "--root", r, "--db", "main=sqlite:///app.db", "--policy", "strict", "--protect", "keep/**",
                    "--allow-host", "127.0.0.1:9")
    assert done.returncode == 0, done.err
    text = (root / ".goex" / "config.toml").read_text()
    assert "strict" in text and "main" in text and "keep/**" in text
    # exec with no --db: the settings name the database
    upd = json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = 'z' WHERE id = 1"})
    ran = goex_cli("exec", "--root", r, upd)
    assert ran.returncode == 0, ran.out + ran.err
    assert rows(root) == [(1, "z"), (2, "b")]
    # the protected glob from the settings refuses a write
    refused = goex_cli("exec", "--root", r, json.dumps({"type": "fs.write", "path": "keep/x", "content": "1"}))
    assert refused.returncode == 3 and not (root / "keep").exists()
    # strict (from the settings) asks before a delete; a flag overrides the pack
    (root / "f").write_text("x")
    asked = goex_cli("exec", "--root", r, json.dumps({"type": "fs.delete", "path": "f"}))
    assert results(asked)[0]["status"] == "awaiting_approval" and (root / "f").exists()
    allowed = goex_cli("exec", "--root", r, "--policy", "default", json.dumps({"type": "fs.delete", "path": "f"}))
    assert allowed.returncode == 0 and not (root / "f").exists()
    # undo of the SQL change reads the database from the settings too
    assert goex_cli("undo", "--root", r, "--all").returncode == 0
    assert rows(root) == [(1, "a"), (2, "b")] and (root / "f").exists()
    again = goex_cli("init", "--root", r)
    assert again.returncode == 1 and "--force" in again.err


def test_runtime_open_reads_settings_and_keywords_override(root: Path):
    make_db(root)
    assert goex_cli("init", "--root", str(root), "--db", "main=sqlite:///app.db", "--policy", "strict").returncode == 0
    with goex.Runtime.open(root) as rt:
        assert rt.policy.name == "strict"
        r = rt.session().execute({"type": "sql.execute", "db": "main", "sql": "SELECT v FROM t WHERE id = 2"})
        assert r.ok and r.output["rows"] == [["b"]]
    with goex.Runtime.open(root, policy="permissive") as rt:
        assert rt.policy.name == "permissive"


def test_settings_are_out_of_the_agents_reach(root: Path):
    assert goex_cli("init", "--root", str(root), "--policy", "strict").returncode == 0
    with goex.Runtime.open(root) as rt:
        s = rt.session()
        w = s.execute({"type": "fs.write", "path": ".goex/config.toml", "content": "policy = 'permissive'\n"})
        assert not w.ok
        code = s.execute({"type": "code.run", "language": "bash",
                          "code": "echo \"policy = 'permissive'\" > .goex/config.toml"})
        assert not code.ok or code.output["exit_code"] != 0 or "permissive" not in (
            root / ".goex" / "config.toml").read_text()
    assert "strict" in (root / ".goex" / "config.toml").read_text()


def test_a_broken_settings_file_is_a_clear_error(root: Path):
    (root / ".goex").mkdir()
    (root / ".goex" / "config.toml").write_text("polcy = 'strict'\n")
    done = goex_cli("exec", "--root", str(root), '{"type": "fs.list", "path": "."}')
    assert done.returncode == 1 and "config.toml" in done.err and "polcy" in done.err
    with pytest.raises(goex.GoexError, match="polcy"):
        goex.Runtime.open(root)
    (root / ".goex" / "config.toml").write_text("policy = [\n")
    broken = goex_cli("exec", "--root", str(root), '{"type": "fs.list", "path": "."}')
    assert broken.returncode == 1 and "not valid TOML" in broken.err


def test_goex_root_is_the_default_root(root: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GOEX_ROOT", str(root))
    assert goex_cli("exec", '{"type": "fs.write", "path": "a", "content": "1"}').returncode == 0
    assert (root / "a").read_text() == "1"
    assert len(json.loads(goex_cli("log", "--json").out)) == 1


def test_no_arguments_prints_help_and_succeeds():
    done = goex_cli()
    assert done.returncode == 0 and "exec" in done.out and "mcp" in done.out and "init" in done.out


def test_undo_steps_without_session_undoes_the_roots_last_changes(root: Path):
    r = str(root)
    for n in range(3):
        goex_cli("exec", "--root", r, json.dumps({"type": "fs.write", "path": f"f{n}", "content": "x"}))
    goex_cli("exec", "--root", r, '{"type": "fs.list", "path": "."}')  # a newest session with nothing to undo
    done = goex_cli("undo", "--root", r, "--steps", "2", "--json")
    assert done.returncode == 0, done.err
    assert len(results(done)[0]["undone"]) == 2
    assert (root / "f0").exists() and not (root / "f1").exists() and not (root / "f2").exists()
    short = goex_cli("undo", "--root", r, "--steps", "3")
    assert short.returncode == 1 and "undid 1 of the 3" in short.err and not (root / "f0").exists()


def test_conflict_names_the_entry_and_session_that_changed_it(root: Path):
    r = str(root)
    goex_cli("exec", "--root", r, "--session", "first", '{"type": "fs.write", "path": "f", "content": "1"}')
    goex_cli("exec", "--root", r, "--session", "second", '{"type": "fs.write", "path": "f", "content": "2"}')
    second = json.loads(goex_cli("log", "--root", r, "--json", "--session", "second").out)[0]["id"]
    done = goex_cli("undo", "--root", r, "--session", "first")
    assert done.returncode == 4
    assert f"entry {second} of session second" in done.err
    make_db(root)
    update = 'UPDATE t SET v = {!r} WHERE id = 1'
    for session, value in (("sql1", "x"), ("sql2", "y")):
        sql = json.dumps({"type": "sql.execute", "db": "main", "sql": update.format(value)})
        assert goex_cli("exec", "--root", r, "--db", "main=sqlite:///app.db", "--session", session, sql).returncode == 0
    later = json.loads(goex_cli("log", "--root", r, "--json", "--session", "sql2").out)[0]["id"]
    sql_conflict = goex_cli("undo", "--root", r, "--db", "main=sqlite:///app.db", "--session", "sql1")
    assert sql_conflict.returncode == 4 and f"main.t was changed since by entry {later} of session sql2" in (
        sql_conflict.err)
    (root / "g").write_text("0")
    goex_cli("exec", "--root", r, "--session", "third", '{"type": "fs.write", "path": "g", "content": "3"}')
    (root / "g").write_text("by hand")
    outside = goex_cli("undo", "--root", r, "--session", "third")
    assert outside.returncode == 4 and "outside goex" in outside.err


def test_log_filters_limit_and_full_times(root: Path):
    r = str(root)
    write = '{"type": "fs.write", "path": "a", "content": "1"}'
    goex_cli("exec", "--root", r, "--session", "A", "--actor", "bot", write)
    goex_cli("exec", "--root", r, "--session", "B", '{"type": "fs.write", "path": ".env", "content": "1"}')
    goex_cli("exec", "--root", r, "--session", "B", '{"type": "fs.list", "path": "."}')

    def log(*flags: str) -> list[dict]:
        done = goex_cli("log", "--root", r, "--json", *flags)
        assert done.returncode == 0, done.err
        return json.loads(done.out)

    assert [e["session"] for e in log("--session", "B")] == ["B", "B"]
    assert [e["type"] for e in log("--type", "fs.list")] == ["fs.list"]
    assert [e["type"] for e in log("--type", "fs.")] == ["fs.write", "fs.write", "fs.list"]
    assert [e["target"] for e in log("--status", "denied")] == [".env"]
    assert [e["actor"] for e in log("--actor", "bot")] == ["bot"]
    assert [e["type"] for e in log("--limit", "1")] == ["fs.list"]
    assert log("--since", "1h") and not log("--since", "2999-01-01T00:00")
    assert goex_cli("log", "--root", r, "--since", "yesterday").returncode == 2
    table = goex_cli("log", "--root", r).out.splitlines()
    assert len(table[1].split()[1]) >= len("2026-01-01T00:00:00.000+00:00") and "\x1b[" not in "".join(table)


def test_log_follow_prints_new_entries(root: Path, tmp_path: Path):
    import sys

    r = str(root)
    goex_cli("exec", "--root", r, '{"type": "fs.write", "path": "a", "content": "1"}')
    script = Path(sys.executable).with_name("goex")
    follower = subprocess.Popen([str(script), "log", "--root", r, "--follow", "--json"], stdout=subprocess.PIPE,
                                text=True)
    try:
        first = json.loads(follower.stdout.readline())
        assert first["target"] == "a"
        goex_cli("exec", "--root", r, '{"type": "fs.write", "path": "b", "content": "1"}')
        second = json.loads(follower.stdout.readline())
        assert second["target"] == "b" and second["status"] == "applied"
        goex_cli("undo", "--root", r, "--steps", "1")
        again = json.loads(follower.stdout.readline())
        assert again["target"] == "b" and again["status"] == "undone"
    finally:
        follower.kill()
        follower.wait()


def test_json_on_every_command_that_prints(root: Path):
    r = str(root)
    goex_cli("exec", "--root", r, "--session", "S", '{"type": "fs.write", "path": "a", "content": "1"}')
    cp = results(goex_cli("checkpoint", "--root", r, "--session", "S", "--label", "l", "--json"))[0]
    assert cp["id"].startswith("c") and cp["label"] == "l"
    ver = results(goex_cli("verify", "--root", r, "--json"))[0]
    assert ver["ok"] is True and ver["records"] >= 2
    rec = results(goex_cli("recover", "--root", r, "--json"))[0]
    assert rec == {"ok": True, "outcomes": {}}
    rev = results(goex_cli("review", "--root", r, "--session", "S", "--json"))[0]
    assert [e["target"] for e in rev["entries"]] == ["a"]
    pack = root / "pack.yaml"
    pack.write_text("name: mine\nextends: default\n")
    lint = results(goex_cli("policy", "lint", str(pack), "--json"))[0]
    assert lint["ok"] is True and lint["pack"] == "mine"
    parked = results(goex_cli("exec", "--root", r, '{"type": "fs.delete", "path": "a", "recursive": false}',
                              "--policy", "strict"))[0]
    rej = results(goex_cli("reject", "--root", r, parked["entry_id"], "--json"))[0]
    assert rej["rejected"] == parked["entry_id"]
    undo = results(goex_cli("undo", "--root", r, "--all", "--json"))[0]
    assert len(undo["undone"]) == 1 and not (root / "a").exists()
    init = results(goex_cli("init", "--root", r, "--json"))[0]
    assert init["settings"]["policy"] == "default"


def test_an_approval_the_policy_refuses_leaves_the_action_parked(root: Path):
    make_db(root)
    r = str(root)
    delete = json.dumps({"type": "sql.execute", "db": "main", "sql": "DELETE FROM t"})
    parked = results(goex_cli("exec", "--root", r, "--db", "main=sqlite:///app.db", delete))[0]
    assert parked["status"] == "awaiting_approval", parked
    refused = goex_cli("approve", "--root", r, "--policy", "training", parked["entry_id"])
    assert refused.returncode == 3 and rows(root) == [(1, "a"), (2, "b")]
    assert "stays awaiting approval" in results(refused)[0]["error"]
    status = {e["id"]: e["status"] for e in json.loads(goex_cli("log", "--root", r, "--json").out)}
    assert status[parked["entry_id"]] == "awaiting_approval"  # refused, not consumed
    ok = goex_cli("approve", "--root", r, parked["entry_id"])  # the pack it was parked under: default
    assert ok.returncode == 0 and rows(root) == []


def test_approve_fills_in_the_parked_database_and_hosts(root: Path):
    make_db(root)
    r = str(root)
    delete = json.dumps({"type": "sql.execute", "db": "main", "sql": "DELETE FROM t"})
    parked = results(goex_cli("exec", "--root", r, "--db", "main=sqlite:///app.db", delete))[0]
    assert parked["status"] == "awaiting_approval"
    detail = goex.Runtime(root, policy="permissive")
    try:
        assert detail.parked(parked["entry_id"])["databases"] == {"main": "sqlite:///app.db"}
    finally:
        detail.close()
    ok = goex_cli("approve", "--root", r, parked["entry_id"])
    assert ok.returncode == 0, ok.out + ok.err
    assert rows(root) == []


def test_bash_completion_names_commands_and_flags(tmp_path: Path):
    script = goex_cli("completion", "bash").out
    probe = tmp_path / "probe.sh"
    probe.write_text(script + '\nCOMP_WORDS=(goex lo); COMP_CWORD=1; _goex; echo "${COMPREPLY[@]}"\n'
                     'COMP_WORDS=(goex log --fol); COMP_CWORD=2; _goex; echo "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert out[0].split() == ["log"] and out[1].split() == ["--follow"]


def test_files_named_by_flags_are_relative_to_the_current_folder(root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    here = tmp_path / "elsewhere"
    here.mkdir()
    (here / "mine.yaml").write_text("name: mine\nextends: strict\n")
    monkeypatch.chdir(here)
    assert goex_cli("init", "--root", str(root), "--policy", "mine.yaml").returncode == 0
    monkeypatch.chdir(tmp_path)
    with goex.Runtime.open(root) as rt:
        assert rt.policy.name == "mine"
    (root / "f").write_text("x")
    asked = results(goex_cli("exec", "--root", str(root), json.dumps({"type": "fs.delete", "path": "f"})))[0]
    assert asked["status"] == "awaiting_approval"  # strict, through the pack the settings name


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The output of `goex ARGS` run with a pseudo-terminal as its standard output."""
    import os
    import pty
    import sys

    goex_bin = str(Path(sys.executable).with_name("goex"))
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the command
        os.execve(goex_bin, [goex_bin, *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    os.close(fd)
    return b"".join(chunks).decode()


def test_statuses_are_coloured_only_on_a_terminal(root: Path):
    import os

    r = str(root)
    goex_cli("exec", "--root", r, '{"type": "fs.write", "path": "a", "content": "1"}')
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[32mapplied" in _on_a_terminal(["log", "--root", r], env)
    assert "\x1b[" not in _on_a_terminal(["log", "--root", r], {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in goex_cli("log", "--root", r).out  # not a terminal
