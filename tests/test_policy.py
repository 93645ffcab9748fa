"""The policy decides before anything happens; denied actions are journaled with no effect."""

from __future__ import annotations

from pathlib import Path

import pytest

import goex
from goex.policy import glob_regex, parse_pack
from conftest import snapshot

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
