"""The policy decides before anything happens; denied actions are journaled with no effect."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import goex
from goex.policy import PolicyError, glob_regex, parse_pack
from conftest import run_cli, snapshot

# (rule id, an action it must catch, a harmless twin it must let through)
DEFAULT_RULES = [
    ("fs.git-internals", {"type": "fs.write", "path": ".git/config", "content": "x"},
     {"type": "fs.write", "path": "docs/git.md", "content": "x"}),
    ("fs.git-internals", {"type": "fs.delete", "path": ".git", "recursive": True},
     {"type": "fs.delete", "path": "gitnotes.txt"}),
    ("fs.env-files", {"type": "fs.write", "path": "app/.env", "content": "K=v"},
     {"type": "fs.write", "path": "app/env.py", "content": "K = 1"}),
    ("fs.env-files", {"type": "fs.move", "src": "gitnotes.txt", "dst": ".env.local"},
     {"type": "fs.move", "src": "gitnotes.txt", "dst": "notes.txt"}),
    ("fs.keys-and-certificates", {"type": "fs.write", "path": "certs/site.pem", "content": "x"},
     {"type": "fs.write", "path": "certs/README.md", "content": "x"}),
    ("fs.keys-and-certificates", {"type": "fs.delete", "path": "home/.ssh/id_ed25519"},
     {"type": "fs.delete", "path": "home/notes.txt"}),
    ("fs.world-writable", {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0666"},
     {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0664"}),
    ("fs.setuid", {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "4755"},
     {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0755"}),
    ("fs.env-files", {"type": "fs.write", "path": "app/.ENV", "content": "K=v"},
     {"type": "fs.write", "path": "app/ENV.md", "content": "K=v"}),
    ("fs.bulk-delete-files", {"type": "fs.delete", "path": "many", "recursive": True},
     {"type": "fs.delete", "path": "few", "recursive": True}),
]


def seed(root: Path) -> None:
    (root / ".git").mkdir()
    (root / ".git/HEAD").write_text("ref: main\n")
    (root / "gitnotes.txt").write_text("notes")
    (root / "home/.ssh").mkdir(parents=True)
    (root / "home/.ssh/id_ed25519").write_text("KEY")
    (root / "home/notes.txt").write_text("n")
    (root / "many").mkdir()
    for i in range(101):
        (root / f"many/{i}.log").write_text("x")
    (root / "few").mkdir()
    for i in range(3):
        (root / f"few/{i}.log").write_text("x")


@pytest.mark.parametrize("rule,harmful,harmless", DEFAULT_RULES, ids=[f"{r[0]}-{i}" for i, r in enumerate(DEFAULT_RULES)])
def test_default_pack_catches_harm_and_lets_the_twin_through(root: Path, rule, harmful, harmless):
    seed(root)
    with goex.Runtime(root) as rt:
        s = rt.session()
        before = snapshot(root)
        refused = s.execute(harmful)
        assert not refused.ok and refused.status == "denied"
        assert rule in refused.decision.rules and rule in refused.error
        assert snapshot(root) == before
        allowed = s.execute(harmless)
        assert allowed.ok, allowed.error
        assert allowed.decision.verdict == "allow"
        log = {e["id"]: e for e in rt.log()}
        assert log[refused.entry_id]["decision"] == refused.decision.verdict != "allow"
        assert log[refused.entry_id]["status"] == "denied"


def test_permissive_allows_what_default_refuses(root: Path):
    with goex.Runtime(root, policy="permissive") as rt:
        assert rt.session().execute({"type": "fs.write", "path": ".env", "content": "x"}).ok


def test_project_pack_extends_and_overrides_by_id(root: Path, tmp_path: Path):
    pack = tmp_path / "project.yaml"
    pack.write_text(
        "name: project\nextends: default\nrules:\n"
        "  - id: fs.env-files\n    match: {type: [fs.write], path: [.env]}\n    decision: allow\n"
        "  - id: project.tests-protected\n    match: {type: ['fs.*'], path: ['tests/**']}\n"
        "    decision: deny\n    severity: severe\n    cost: 2\n    message: the tests are protected\n"
    )
    with goex.Runtime(root, policy=pack) as rt:
        s = rt.session()
        assert s.execute({"type": "fs.write", "path": ".env", "content": "x"}).ok
        r = s.execute({"type": "fs.write", "path": "tests/test_x.py", "content": "x"})
        assert not r.ok and r.decision.rules == ["project.tests-protected"] and r.decision.cost == 2
        assert not s.execute({"type": "fs.write", "path": ".git/x", "content": "x"}).ok


@pytest.mark.parametrize("text,where", [
    ("name: p\nrules:\n  - id: r\n    match: {type: [fs.write]}\n    decision: maybe\n", ":5:"),
    ("name: p\nrules:\n  - id: r\n    decision: deny\n", ":3:"),
    ("name: p\nrules:\n  - id: r\n    match: {typo: [x]}\n    decision: deny\n", ":4:"),
    ("name: p\nrules: [\n", ":3:"),
    ("name: p\nrules:\n  - id: r\n    match: {preview: {rowz: {gt: 1}}}\n    decision: deny\n", ":4:"),
    ("- just\n- a list\n", ":1:"),
])
def test_broken_pack_fails_at_load_with_line(tmp_path: Path, text, where):
    pack = tmp_path / "broken.yaml"
    pack.write_text(text)
    with pytest.raises(goex.PolicyError) as info:
        goex.load_policy(pack)
    assert str(pack) + where in str(info.value)


def test_unknown_pack_name_lists_the_shipped_ones():
    with pytest.raises(goex.PolicyError, match="default"):
        goex.load_policy("no-such-pack")


@pytest.mark.parametrize("pattern,yes,no", [
    (".git", [".git", ".git/config", "sub/.git/HEAD"], ["gitx", ".github/x"]),
    ("*.pem", ["a.pem", "x/y/b.pem"], ["a.pem.txt", "pem"]),
    ("tests/**", ["tests/a.py", "tests/x/y.py"], ["src/tests/a.py", "testsuite/a"]),
    ("src/*.py", ["src/a.py"], ["src/x/a.py", "a.py"]),
])
def test_path_globs(pattern, yes, no):
    rx = glob_regex(pattern)
    assert all(rx.match(p) for p in yes) and not any(rx.match(p) for p in no)


def test_decisions_are_deterministic_and_list_every_match():
    policy = goex.Policy(parse_pack(
        "name: p\nrules:\n"
        "  - {id: a, match: {type: ['fs.*']}, decision: allow, severity: info}\n"
        "  - {id: b, match: {path: ['*.key']}, decision: confirm, severity: severe, cost: 0.5}\n"
        "  - {id: c, match: {preview: {bytes_written: {gt: 10}}}, decision: deny, severity: mild, cost: 1}\n"))
    d = policy.decide("fs.write", ["a.key"], {"bytes_written": 11})
    assert d.verdict == "deny" and d.rules == ["a", "b", "c"] and d.severity == "severe" and d.cost == 1.5
    assert policy.decide("fs.write", ["a.key"], {"bytes_written": 11}) == d
    assert policy.decide("fs.write", ["a.key"], {"bytes_written": 3}).verdict == "confirm"


STRICT_RULES = [
    ("strict.any-delete", {"type": "fs.delete", "path": "gitnotes.txt"}, {"type": "fs.read", "path": "gitnotes.txt"}),
    ("strict.overwrite-by-move", {"type": "fs.move", "src": "gitnotes.txt", "dst": "home/notes.txt", "overwrite": True},
     {"type": "fs.move", "src": "gitnotes.txt", "dst": "home/new.txt"}),
]


@pytest.mark.parametrize("rule,harmful,harmless", STRICT_RULES, ids=[r[0] for r in STRICT_RULES])
def test_strict_pack_rules(root: Path, rule, harmful, harmless):
    seed(root)
    with goex.Runtime(root, policy="strict") as rt:
        s = rt.session()
        refused = s.execute(harmful)
        assert not refused.ok and rule in refused.decision.rules
        assert s.execute(harmless).ok


def test_training_pack_refuses_what_would_ask(root: Path):
    seed(root)
    asked = []
    with goex.Runtime(root, policy="training", approver=lambda r: asked.append(r) or True) as rt:
        r = rt.session().execute({"type": "fs.delete", "path": "many", "recursive": True})
        assert not r.ok and r.status == "denied" and r.decision.verdict == "deny"
        assert r.decision.rules == ["fs.bulk-delete-files"] and r.decision.cost == 1.0
        assert "refuses what needs confirmation" in r.error and asked == []
    assert (root / "many").is_dir()


def test_budgets_refuse_the_action_that_would_exceed_them(root: Path, tmp_path: Path):
    pack = tmp_path / "budget.yaml"
    pack.write_text("name: b\nextends: permissive\nbudgets: {files_deleted: 3, bytes_written: 10}\nrules: []\n")
    for i in range(5):
        (root / f"f{i}").write_text("x")
    with goex.Runtime(root, policy=pack) as rt:
        s = rt.session()
        assert all(s.execute({"type": "fs.delete", "path": f"f{i}"}).ok for i in range(3))
        over = s.execute({"type": "fs.delete", "path": "f3"})
        assert not over.ok and over.decision.rules == ["budget.files_deleted"] and "budget of 3" in over.error
        assert (root / "f3").exists()
        assert rt.session().execute({"type": "fs.delete", "path": "f3"}).ok  # budgets are per session
        assert s.execute({"type": "fs.write", "path": "w", "content": "0123456789"}).ok
        assert s.execute({"type": "fs.write", "path": "w", "content": "x"}).decision.rules == ["budget.bytes_written"]
        s.undo()  # undone work still counts: the blast radius happened
    with goex.Runtime(root, policy=pack) as rt:  # spent budget is read back from the journal
        again = rt.session(session_id=s.id).execute({"type": "fs.delete", "path": "f4"})
        assert again.decision.rules == ["budget.files_deleted"]


def test_confirmation_by_callback_pending_approve_and_reject(root: Path):
    seed(root)
    asked = []
    with goex.Runtime(root, approver=lambda r: asked.append(r) or False) as rt:
        r = rt.session().execute({"type": "fs.delete", "path": "many", "recursive": True})
        assert not r.ok and "rejected by the approver" in r.error
        assert asked[0].summary.startswith("delete many: 101 files") and asked[0].decision.verdict == "confirm"
    with goex.Runtime(root, approver=lambda r: True) as rt:
        assert rt.session().execute({"type": "fs.write", "path": "few/0.log", "content": "new\n"}).ok
    with goex.Runtime(root, approver="pending") as rt:
        s = rt.session()
        parked = s.execute({"type": "fs.delete", "path": "many", "recursive": True})
        assert parked.status == "awaiting_approval" and (root / "many").is_dir()
        other = s.execute({"type": "fs.delete", "path": "few", "recursive": True})
        assert other.ok  # few files: no confirmation needed
        with pytest.raises(goex.GoexError, match="not awaiting approval"):
            rt.approve(other.entry_id)
        rt.reject(parked.entry_id, reason="not today")
        with pytest.raises(goex.GoexError, match="rejected"):
            rt.approve(parked.entry_id)
        parked = s.execute({"type": "fs.delete", "path": "many", "recursive": True})
        done = rt.approve(parked.entry_id, by="alice")
        assert done.ok and not (root / "many").exists()
        statuses = {e["id"]: e["status"] for e in rt.log()}
        assert statuses[parked.entry_id] == "approved" and statuses[done.entry_id] == "applied"
        s.rollback()
        assert (root / "many").is_dir() and len(list((root / "many").iterdir())) == 101


def test_write_confirmation_shows_a_diff(root: Path, tmp_path: Path):
    (root / "app.py").write_text("a = 1\nb = 2\n")
    pack = tmp_path / "ask.yaml"
    pack.write_text("name: ask\nrules:\n  - {id: ask, match: {type: [fs.write]}, decision: confirm}\n")
    asked = []
    with goex.Runtime(root, policy=pack, approver=lambda r: asked.append(r) or True) as rt:
        assert rt.session().execute({"type": "fs.write", "path": "app.py", "content": "a = 1\nb = 3\n"}).ok
    assert "-b = 2" in asked[0].summary and "+b = 3" in asked[0].summary


def test_policy_check_and_lint_commands(root: Path, tmp_path: Path):
    import json as _json
    done = run_cli("policy", "check", "--root", str(root), '{"type": "fs.write", "path": ".git/config", "content": "x"}')
    out = _json.loads(done.out)
    assert done.returncode == 3 and out["decision"] == "deny" and out["rules"][0]["id"] == "fs.git-internals"
    assert not (root / ".git").exists()
    with goex.Runtime(root) as rt:
        assert rt.log() == []  # checking journals nothing
    ok = run_cli("policy", "check", "--root", str(root), '{"type": "fs.write", "path": "a.txt", "content": "x"}')
    assert ok.returncode == 0 and _json.loads(ok.out)["decision"] == "allow"
    for name in ("default", "strict", "training", "permissive"):
        lint = run_cli("policy", "lint", str(Path(goex.__file__).parent.parent / "policies" / f"{name}.yaml"))
        assert lint.returncode == 0 and "OK" in lint.out, lint.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrules:\n  - id: a\n    decision: nope\n")
    lint = run_cli("policy", "lint", str(bad))
    assert lint.returncode == 1 and f"{bad}:3:" in lint.err


def test_protected_paths_can_be_read_not_changed(root: Path):
    (root / "tests").mkdir()
    (root / "tests/test_app.py").write_text("assert True\n")
    with goex.Runtime(root, policy="permissive", protected=["tests/**"]) as rt:
        s = rt.session()
        assert s.execute({"type": "fs.read", "path": "tests/test_app.py"}).ok
        for action in ({"type": "fs.write", "path": "tests/test_app.py", "content": "pass\n"},
                       {"type": "fs.delete", "path": "tests", "recursive": True},
                       {"type": "fs.move", "src": "tests/test_app.py", "dst": "elsewhere.py"}):
            r = s.execute(action)
            assert not r.ok and r.decision.rules == ["workspace.protected"], action
        assert s.execute({"type": "fs.write", "path": "src/app.py", "content": "x = 1\n"}).ok
    assert (root / "tests/test_app.py").read_text() == "assert True\n"


def test_rules_and_protection_see_inside_deleted_or_moved_folders(root: Path):
    (root / "proj/.git").mkdir(parents=True)
    (root / "proj/.git/HEAD").write_text("ref\n")
    (root / "proj/src").mkdir()
    (root / "a/b/tests").mkdir(parents=True)
    (root / "a/b/tests/t.py").write_text("assert True\n")
    with goex.Runtime(root) as rt:
        s = rt.session()
        for action in ({"type": "fs.delete", "path": "proj", "recursive": True},
                       {"type": "fs.move", "src": "proj", "dst": "elsewhere/proj"}):
            r = s.execute(action)
            assert not r.ok and "fs.git-internals" in r.decision.rules, action
        assert s.execute({"type": "fs.delete", "path": "proj/src"}).ok  # the harmless twin
    with goex.Runtime(root, policy="permissive", protected=["tests"]) as rt:
        r = rt.session().execute({"type": "fs.delete", "path": "a", "recursive": True})
        assert not r.ok and r.decision.rules == ["workspace.protected"]
    assert (root / "a/b/tests/t.py").exists() and (root / "proj/.git/HEAD").exists()


def test_cli_approval_keeps_the_pack_and_protection_it_was_parked_under(root: Path):
    for d in ("d1", "d2"):
        (root / d).mkdir()
        for i in range(40):
            (root / d / f"{i}.log").write_text("x")
    (root / "tests").mkdir()
    (root / "tests/t.py").write_text("keep\n")
    (root / "lnk").mkdir()
    (root / "lnk/t.py").write_text("other\n")
    ids = []
    for action in ('{"type": "fs.delete", "path": "d1", "recursive": true}',
                   '{"type": "fs.delete", "path": "d2", "recursive": true}',
                   '{"type": "fs.delete", "path": "lnk/t.py"}'):
        done = run_cli("exec", "--root", str(root), "--policy", "strict", "--session", "P",
                       "--protect", "tests/**", action)
        import json as _json
        out = _json.loads(done.out)
        assert out["status"] == "awaiting_approval", out
        ids.append(out["entry_id"])
    approve = lambda eid: run_cli("approve", "--root", str(root), eid)  # noqa: E731
    assert approve(ids[0]).returncode == 0 and not (root / "d1").exists()
    assert approve(ids[1]).returncode == 3 and (root / "d2").exists()  # strict's files_deleted budget of 50
    import shutil
    shutil.rmtree(root / "lnk")
    (root / "lnk").symlink_to("tests")  # the parked path now leads into the protected folder
    assert approve(ids[2]).returncode == 3 and (root / "tests/t.py").read_text() == "keep\n"


# -- rules written in Python -----------------------------------------------------------------------


def _big_write(action_type: str, targets: list[str], preview: dict) -> bool:
    return preview.get("bytes_written", 0) > 10 and any(t.startswith("src/") for t in targets)


BIG_SRC = goex.PythonRule(id="project.small-src-writes", decision="deny", when=_big_write, type=["fs.write"],
                          severity="severe", cost=1.5, message="keep writes to src/ small",
                          description="Large rewrites of src/ go through review.")


def _entry(rt: goex.Runtime, entry_id: str) -> dict:
    return rt.journal.record(rt.journal.entry(entry_id)["seq"])


def test_python_rules_decide_like_pack_rules_and_are_journaled(root: Path):
    policy = goex.load_policy("default").with_rules(BIG_SRC)
    with goex.Runtime(root, policy=policy) as rt:
        s = rt.session()
        refused = s.execute({"type": "fs.write", "path": "src/app.py", "content": "x" * 11})
        assert not refused.ok and refused.status == "denied" and not (root / "src/app.py").exists()
        assert refused.decision.rules == ["project.small-src-writes"] and "keep writes to src/ small" in refused.error
        assert refused.decision.cost == 1.5 and refused.decision.severity == "severe"
        journaled = _entry(rt, refused.entry_id)["decision"]
        assert journaled == {"verdict": "deny", "rules": [{"id": "project.small-src-writes", "decision": "deny",
                                                          "severity": "severe", "cost": 1.5,
                                                          "message": "keep writes to src/ small"}]}
        assert s.execute({"type": "fs.write", "path": "src/app.py", "content": "small"}).ok  # the twin
        assert s.execute({"type": "fs.write", "path": "docs/big.md", "content": "x" * 100}).ok
        both = s.execute({"type": "fs.write", "path": "src/.env", "content": "x" * 11})  # a pack rule matches too
        assert both.decision.rules == ["fs.env-files", "project.small-src-writes"]
        assert both.decision.cost == 2.5 and both.decision.verdict == "deny"
        decision, _ = s.check({"type": "fs.write", "path": "src/x.py", "content": "x" * 11})  # `goex policy check`'s path
        assert decision.rules == ["project.small-src-writes"]


def test_python_rules_allow_confirm_and_the_most_restrictive_wins(root: Path):
    seen = []
    note = goex.PythonRule(id="audit.note", decision="allow", severity="info",
                           when=lambda t, targets, p: seen.append((t, list(targets))) or True)
    ask = goex.PythonRule(id="ask.deletes", decision="confirm", type="fs.delete",
                          when=lambda t, targets, p: p["files_deleted"] > 1, message="more than one file")
    (root / "d").mkdir()
    for i in range(3):
        (root / f"d/{i}").write_text("x")
    asked = []
    with goex.Runtime(root, policy=goex.load_policy("permissive").with_rules(note, ask),
                      approver=lambda r: asked.append(r) or True) as rt:
        s = rt.session()
        ok = s.execute({"type": "fs.write", "path": "a.txt", "content": "a"})
        assert ok.ok and ok.decision.verdict == "allow" and ok.decision.rules == ["audit.note"]
        assert _entry(rt, ok.entry_id)["decision"]["rules"][0]["id"] == "audit.note"  # journaled with the entry
        done = s.execute({"type": "fs.delete", "path": "d", "recursive": True})
        assert done.ok and done.decision.verdict == "confirm" and done.decision.rules == ["audit.note", "ask.deletes"]
        assert asked[0].decision.reason == "ask.deletes: more than one file"
        assert ("fs.delete", {"d", "d/0", "d/1", "d/2"}) in [(t, set(p)) for t, p in seen]  # a folder's contents too
    with goex.Runtime(root, policy=goex.load_policy("training").with_rules(ask)) as rt:  # confirm: deny still applies
        s = rt.session()
        assert s.execute({"type": "fs.write", "path": "b/0", "content": "x"}).ok
        assert s.execute({"type": "fs.write", "path": "b/1", "content": "x"}).ok
        r = s.execute({"type": "fs.delete", "path": "b", "recursive": True})
        assert not r.ok and r.decision.verdict == "deny" and r.decision.rules == ["ask.deletes"]


@pytest.mark.parametrize("when,shown", [
    (lambda t, targets, p: p["no-such-field"] > 1, "KeyError: 'no-such-field'"),
    (lambda t, targets, p: 1 / 0, "ZeroDivisionError: division by zero"),
    (lambda t, targets, p: None, "returned NoneType"),
], ids=["key-error", "zero-division", "returns-none"])
def test_a_python_rule_that_fails_denies_and_says_why(root: Path, when, shown):
    rule = goex.PythonRule(id="project.flaky", decision="allow", when=when, severity="mild", cost=0.5)
    with goex.Runtime(root, policy=goex.load_policy("default").with_rules(rule)) as rt:
        r = rt.session().execute({"type": "fs.write", "path": "a.txt", "content": "a"})
        assert not r.ok and r.status == "denied" and not (root / "a.txt").exists()
        assert r.decision.verdict == "deny" and r.decision.rules == ["project.flaky"]
        assert shown in r.error and "project.flaky" in r.error
        match = _entry(rt, r.entry_id)["decision"]["rules"][0]
        assert match["decision"] == "deny" and shown in match["message"]


def test_python_rule_ids_must_not_collide_unless_replacing(root: Path):
    default = goex.load_policy("default")
    allow_env = goex.PythonRule(id="fs.env-files", decision="allow", when=lambda t, targets, p: True)
    with pytest.raises(goex.PolicyError, match="'fs.env-files' is already a rule of policy 'default'.*replace=True"):
        default.with_rules(allow_env)
    with pytest.raises(goex.PolicyError, match="'project.small-src-writes' is already a rule"):
        default.with_rules(BIG_SRC).with_rules(BIG_SRC)
    with pytest.raises(goex.PolicyError, match="given twice"):
        default.with_rules(BIG_SRC, BIG_SRC)
    replaced = default.with_rules(allow_env, replace=True)
    assert [r.id for r in replaced.rules].count("fs.env-files") == 1 and replaced.rules[-1] is allow_env
    assert len(replaced.rules) == len(default.rules) and "fs.env-files" in [r.id for r in default.rules]
    with goex.Runtime(root, policy=replaced) as rt:
        r = rt.session().execute({"type": "fs.write", "path": ".env", "content": "K=v"})
        assert r.ok and r.decision.rules == ["fs.env-files"] and r.decision.verdict == "allow"
    with goex.Runtime(root, policy=default) as rt:  # the pack it came from is unchanged
        assert not rt.session().execute({"type": "fs.write", "path": ".env", "content": "K=v"}).ok


@pytest.mark.parametrize("kw,problem", [
    ({"decision": "maybe"}, "decision must be"),
    ({"severity": "huge"}, "severity must be"),
    ({"cost": "1"}, "cost must be a number"),
    ({"when": "p['rows'] > 1"}, "when must be a callable"),
    ({"id": ""}, "id must be"),
    ({"type": [""]}, "type is a list"),
])
def test_python_rules_are_checked_when_made(kw, problem):
    args = {"id": "r", "decision": "deny", "when": lambda t, targets, p: True, **kw}
    with pytest.raises(goex.PolicyError, match=problem):
        goex.PythonRule(**args)
    with pytest.raises(goex.PolicyError, match="PythonRule"):
        goex.load_policy("default").with_rules({"id": "r"})  # type: ignore[arg-type]


def test_python_rule_type_globs_limit_what_it_is_asked():
    calls = []
    rule = goex.PythonRule(id="r", decision="deny", type=["sql.*"], when=lambda t, targets, p: calls.append(t) or True)
    policy = goex.load_policy("permissive").with_rules(rule)
    assert policy.decide("fs.write", ["a"], {}).verdict == "allow" and calls == []
    assert policy.decide("sql.execute", ["main"], {}).rules == ["r"] and calls == ["sql.execute"]


# -- every rule of every shipped pack: an action it must catch, a harmless twin it lets through ----
#
# Each case is checked the way `goex policy check` does (`session.check`): the real adapters
# build the preview from a real workspace, a SQLite database and the example service, and
# nothing is run, sent or journaled. `{base}` is the service's URL.

BIG = 104857600  # fs.bulk-delete-bytes: more than 100 MiB

RULE_CASES: dict[str, tuple[dict, dict]] = {
    "fs.git-internals": ({"type": "fs.write", "path": ".git/config", "content": "x"},
                         {"type": "fs.write", "path": "docs/git.md", "content": "x"}),
    "fs.env-files": ({"type": "fs.write", "path": "app/.env", "content": "K=v"},
                     {"type": "fs.write", "path": "app/env.py", "content": "K = 1"}),
    "fs.keys-and-certificates": ({"type": "fs.write", "path": "certs/site.pem", "content": "x"},
                                 {"type": "fs.write", "path": "certs/README.md", "content": "x"}),
    "fs.world-writable": ({"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0666"},
                          {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0664"}),
    "fs.setuid": ({"type": "fs.chmod", "path": "gitnotes.txt", "mode": "4755"},
                  {"type": "fs.chmod", "path": "gitnotes.txt", "mode": "0755"}),
    "fs.bulk-delete-files": ({"type": "fs.delete", "path": "many", "recursive": True},
                             {"type": "fs.delete", "path": "few", "recursive": True}),
    "fs.bulk-delete-bytes": ({"type": "fs.delete", "path": "data/over.bin"},
                             {"type": "fs.delete", "path": "data/limit.bin"}),
    "http.irreversible": ({"type": "http.request", "method": "POST", "url": "{base}/payments",
                           "json": {"amount": 5, "currency": "EUR", "to": "x"}},
                          {"type": "http.request", "method": "POST", "url": "{base}/orders", "json": {"item": "A", "qty": 1}}),
    "http.delete-collection": ({"type": "http.request", "method": "DELETE", "url": "{base}/items"},
                               {"type": "http.request", "method": "DELETE", "url": "{base}/items/itm_1"}),
    "sql.drop": ({"type": "sql.execute", "db": "main", "sql": "DROP TABLE audit"},
                 {"type": "sql.execute", "db": "main", "sql": "CREATE TABLE audit2(msg TEXT)"}),
    "sql.no-where": ({"type": "sql.execute", "db": "main", "sql": "UPDATE pair SET b = 'x'"},
                     {"type": "sql.execute", "db": "main", "sql": "UPDATE pair SET b = 'x' WHERE a = 1"}),
    "sql.drop-column": ({"type": "sql.execute", "db": "main", "sql": "ALTER TABLE pair DROP COLUMN b"},
                        {"type": "sql.execute", "db": "main", "sql": "ALTER TABLE pair ADD COLUMN c"}),
    "sql.all-rows": ({"type": "sql.execute", "db": "main", "sql": "UPDATE pair SET b = 'x' WHERE 1"},
                     {"type": "sql.execute", "db": "main", "sql": "UPDATE pair SET b = 'x' WHERE a = 1"}),
    "sql.trigger": ({"type": "sql.execute", "db": "main",
                     "sql": "CREATE TRIGGER pair_wipe AFTER INSERT ON pair BEGIN DELETE FROM audit; END"},
                    {"type": "sql.execute", "db": "main", "sql": "CREATE INDEX pair_a ON pair(a)"}),
    "sql.many-rows": ({"type": "sql.execute", "db": "main", "sql": "DELETE FROM big WHERE n > ?", "params": [0]},
                      {"type": "sql.execute", "db": "main", "sql": "DELETE FROM big WHERE n > ?", "params": [1]}),
    "code.network": ({"type": "code.run", "code": "print(1)", "network": True},
                     {"type": "code.run", "code": "print(1)"}),
    "strict.any-delete": ({"type": "fs.delete", "path": "gitnotes.txt"}, {"type": "fs.read", "path": "gitnotes.txt"}),
    "strict.overwrite-by-move": ({"type": "fs.move", "src": "gitnotes.txt", "dst": "home/notes.txt", "overwrite": True},
                                 {"type": "fs.move", "src": "gitnotes.txt", "dst": "home/new.txt"}),
    "strict.http-delete": ({"type": "http.request", "method": "DELETE", "url": "{base}/items/itm_1"},
                           {"type": "http.request", "method": "PATCH", "url": "{base}/items/itm_1", "json": {"stock": 1}}),
}

SHIPPED_RULES = [(pack, rule.id) for pack in goex.policy.shipped_packs() for rule in goex.load_policy(pack).rules]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A workspace, a SQLite database in it and the example service, for checking only."""
    import sqlite3

    import httpx

    from goex.service import serve
    root = tmp_path_factory.mktemp("rules") / "ws"
    root.mkdir()
    seed(root)
    (root / "data").mkdir()
    for name, size in (("over.bin", BIG + 1), ("limit.bin", BIG)):  # sparse: sizes without the bytes
        with open(root / "data" / name, "wb") as f:
            f.truncate(size)
    conn = sqlite3.connect(root / "app.db")
    conn.executescript("CREATE TABLE audit(msg TEXT); CREATE TABLE pair(a INT, b TEXT); "
                       "INSERT INTO pair VALUES (1, 'one'), (2, 'two'); CREATE TABLE big(n INT); "
                       "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 1001) "
                       "INSERT INTO big SELECT n FROM c;")
    conn.commit()
    conn.close()
    with serve() as base:
        httpx.post(base + "/admin/reset", json={
            "orders": [{"id": "ord_1", "item": "A-1", "qty": 1, "status": "open"}],
            "items": [{"id": "itm_1", "name": "pen", "price": 1.5, "stock": 10}], "emails": [], "payments": []},
        ).raise_for_status()
        http = goex.HttpConfig(allow_hosts=[httpx.URL(base).host], openapi=httpx.get(base + "/openapi.json").json())
        yield root, base, http


def _world_state(root: Path, base: str) -> tuple:
    import sqlite3

    import httpx
    files = sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mode)
                   for p in root.rglob("*") if ".goex" not in p.parts)
    conn = sqlite3.connect(root / "app.db")
    try:
        rows = list(conn.iterdump())
    finally:
        conn.close()
    return files, rows, httpx.get(base + "/state").json()


def _case(action: dict, base: str) -> dict:
    return {**action, "url": action["url"].format(base=base)} if "url" in action else action


@pytest.mark.parametrize("pack,rule", SHIPPED_RULES, ids=[f"{p}:{r}" for p, r in SHIPPED_RULES])
def test_every_shipped_rule_catches_its_harm_and_lets_its_twin_through(world, pack, rule):
    root, base, http = world
    assert rule in RULE_CASES, f"rule {rule} of the {pack} pack has no (harmful, harmless) case in RULE_CASES"
    harmful, harmless = (_case(a, base) for a in RULE_CASES[rule])
    before = _world_state(root, base)
    with goex.Runtime(root, policy=pack, http=http, databases={"main": "sqlite:///app.db"}) as rt:
        declared = next(r for r in rt.policy.rules if r.id == rule)
        s = rt.session()
        caught, preview = s.check(harmful)
        assert rule in caught.rules, (harmful, caught, preview)
        match = next(m for m in caught.matches if m.id == rule)
        assert (match.decision, match.severity, match.cost) == (declared.decision, declared.severity, declared.cost)
        ranks = {"allow": 0, "confirm": 1, "deny": 2}
        assert ranks[caught.verdict] >= ranks[declared.decision]
        if rt.policy.confirm == "deny":
            assert caught.verdict != "confirm"  # training: what would ask is refused
        passed, preview = s.check(harmless)
        assert rule not in passed.rules, (harmless, passed, preview)
        assert not any(m.id.startswith(("http.host", "http.secret", "sql.conf", "workspace.")) for m in passed.matches)
        if pack == "default":
            assert passed.verdict == "allow", (harmless, passed)
        assert rt.log() == []  # checking journals nothing
    assert _world_state(root, base) == before  # and changes nothing


def test_the_rule_cases_cover_exactly_the_shipped_rules():
    shipped = {rule for _, rule in SHIPPED_RULES}
    assert shipped == set(RULE_CASES), (sorted(shipped - set(RULE_CASES)), sorted(set(RULE_CASES) - shipped))
    assert {"default", "strict", "training", "permissive"} <= set(goex.policy.shipped_packs())
    assert {p for p, _ in SHIPPED_RULES} == {"default", "strict", "training"}  # permissive has no rules


def test_permissive_lets_every_harmful_case_through(world):
    root, base, http = world
    with goex.Runtime(root, policy="permissive", http=http, databases={"main": "sqlite:///app.db"}) as rt:
        assert rt.policy.rules == []
        s = rt.session()
        for rule, (harmful, _) in RULE_CASES.items():
            decision, _ = s.check(_case(harmful, base))
            assert decision.verdict == "allow" and decision.rules == [], (rule, decision)


# -- rules are checked against the adapters' preview models -----------------------------------


@pytest.mark.parametrize("rule, message", [
    ("{type: [fs.wirte], preview: {}}", "action type 'fs.wirte' names no action; did you mean 'fs.write'"),
    ("{type: [sql.execute], preview: {kinds: drop}}", "preview field 'kinds' is a list: kinds: 'drop' would never match"),
    ("{type: [sql.execute], preview: {row: {gt: 1}}}", "preview field 'row' is not in the previews of sql.execute; did you mean 'rows'"),
    ("{type: [fs.write], preview: {rows: {gt: 1}}}", "preview field 'rows' is not in the previews of fs.write"),
    ("{type: [sql.execute], preview: {drops: yes-please}}", "preview field 'drops' is bool, but the rule gives str"),
    ("{type: [sql.execute], preview: {where_missing: {gt: 1}}}", "preview field 'where_missing' is not a number"),
    ("{type: [sql.execute], preview: {statements: {any: x}}}", "holds detail a rule cannot match"),
])
def test_lint_rejects_rules_that_could_never_match(rule: str, message: str):
    text = f"name: p\nrules:\n  - id: r\n    decision: deny\n    match: {rule}\n"
    with pytest.raises(PolicyError, match=re.escape(message)) as info:
        parse_pack(text, "p.yaml")
    assert str(info.value).startswith("p.yaml:5: ")  # the file and the line of the match


def test_list_fields_match_with_any_and_all(tmp_path: Path):
    pack = parse_pack("name: p\nrules:\n"
                      "  - {id: drops, decision: deny, match: {type: [sql.execute], preview: {kinds: {any: drop}}}}\n"
                      "  - {id: reads, decision: allow, match: {type: [sql.execute], preview: {kinds: {all: [select]}}}}\n"
                      "  - {id: ten, decision: confirm, match: {type: [sql.execute], preview: {rows: 10}}}\n")
    policy = goex.Policy(pack)
    assert policy.decide("sql.execute", [], {"kinds": ["select", "drop"], "rows": 0}).rules == ["drops"]
    assert policy.decide("sql.execute", [], {"kinds": ["select"], "rows": 0}).rules == ["reads"]
    assert policy.decide("sql.execute", [], {"kinds": [], "rows": 10}).rules == ["ten"]  # `all` needs an item
    db = tmp_path / "ws"
    db.mkdir()
    with goex.Runtime(db, policy=policy, databases={"main": "sqlite:///app.db"}) as rt:
        s = rt.session()
        assert s.execute({"type": "sql.execute", "db": "main", "sql": "CREATE TABLE t (a INT)"}).ok
        dropped = s.execute({"type": "sql.execute", "db": "main", "sql": "DROP TABLE t"})
        assert dropped.status == "denied" and dropped.decision.rules == ["drops"]
        assert s.execute({"type": "sql.execute", "db": "main", "sql": "SELECT a FROM t"}).ok  # the table is still there


def test_docs_list_every_matchable_preview_field():
    from goex.policy.fields import table

    docs = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    assert table() in docs, "docs/policy.md's field table is stale: paste `python -m goex.policy.fields` into it"


def test_lint_names_the_line_of_each_problem_and_reports_them_all(tmp_path: Path):
    pack = tmp_path / "p.yaml"
    pack.write_text("name: p\nrules:\n"
                    "  - id: a\n    decision: deny\n    match:\n      type: [sql.execute]\n      preview:\n"
                    "        rows: {gt: 1}\n        kinds: drop\n"  # line 9: the field, not the type line
                    "  - id: b\n    decision: deny\n    match:\n      type: [fs.write, fs.wirte]\n")  # line 13
    with pytest.raises(PolicyError) as info:
        goex.load_policy(pack)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{pack}:9", f"{pack}:13"], lines
    assert "rules.0.match.preview.kinds" in lines[0] and "did you mean 'fs.write'" in lines[1]
    lint = run_cli("policy", "lint", str(pack))
    assert lint.returncode == 1 and lint.err.count(f"{pack}:") == 2, lint.err


def test_lint_rejects_duplicate_rule_ids_and_a_misspelled_base(tmp_path: Path):
    pack = tmp_path / "p.yaml"
    pack.write_text("name: p\nrules:\n  - {id: a, decision: deny, match: {type: [fs.write]}}\n"
                    "  - {id: a, decision: deny, match: {type: [fs.delete]}}\n")
    with pytest.raises(PolicyError, match=re.escape(f"{pack}:4: rules.1.id rule id 'a' is already the id of rule 1")):
        goex.load_policy(pack)
    pack.write_text("name: p\ndescription: mine\nextends: defualt\nrules: []\n")
    with pytest.raises(PolicyError, match=re.escape(f"{pack}:3: extends 'defualt' (did you mean 'default'?)")):
        goex.load_policy(pack)
    pack.write_text(f"name: p\nextends: {tmp_path / 'missing.yaml'}\n")
    with pytest.raises(PolicyError, match=re.escape(f"{pack}:2: extends") + ".*cannot read policy pack"):
        goex.load_policy(pack)
