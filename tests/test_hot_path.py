"""The per-action fast paths keep their guarantees: a policy derived with `with_rules` decides
afresh (nothing it remembered per action type from its parent leaks into it), a write holds the
folder its path resolution ended in only while it runs (no descriptor outlives an action,
whatever its outcome), and that folder is the one the journal's before-image and the write
both act on, so a folder swapped for a symlink in between cannot lead the write elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import goex


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_policy_derived_after_deciding_decides_with_its_own_rules():
    base = goex.load_policy("default")
    assert base.decide("fs.write", ["app/.env"], {}).verdict == "deny"  # fs.env-files
    assert base.decide("fs.write", ["notes/a.txt"], {}).verdict == "allow"
    lenient = base.with_rules(goex.PythonRule(id="fs.env-files", decision="allow", type=["fs.write"],
                                              when=lambda t, targets, p: False), replace=True)
    strict = base.with_rules(goex.PythonRule(id="project.no-notes", decision="deny", type=["fs.write"],
                                             when=lambda t, targets, p: any(x.startswith("notes/") for x in targets)))
    assert lenient.decide("fs.write", ["app/.env"], {}).verdict == "allow"
    assert strict.decide("fs.write", ["notes/a.txt"], {}).verdict == "deny"
    assert base.decide("fs.write", ["app/.env"], {}).verdict == "deny"  # the parent is unchanged
    assert base.decide("fs.write", ["notes/a.txt"], {}).verdict == "allow"


def test_a_rules_path_globs_match_as_each_would(tmp_path: Path):
    policy = goex.load_policy("default")
    for path, verdict in [(".env", "deny"), ("a/b/.ENV.local", "deny"), ("x/site.PEM", "deny"),
                          (".git/config", "deny"), ("a/.gitignore", "allow"), ("envoy.txt", "allow"),
                          ("keys/readme.md", "allow"), ("a.pem.txt", "allow")]:
        assert policy.decide("fs.write", [path], {}).verdict == verdict, path
        assert policy.decide("fs.write", ["notes/ok.txt", path], {}).verdict == verdict, path


def test_no_descriptor_outlives_a_write_whatever_its_outcome(tmp_path: Path):
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    approvals = iter([True, False] * 100)
    with goex.Runtime(root, durability="process", approver=lambda request: next(approvals)) as rt:
        session = rt.session()
        actions = [
            {"type": "fs.write", "path": "d/a.txt", "content": "x"},  # applied, then overwritten
            {"type": "fs.write", "path": "d/.env", "content": "K=1"},  # refused by the pack
            {"type": "fs.write", "path": "d/sub", "content": "x"},  # a folder: failed
            {"type": "fs.write", "path": "new/deep/b.txt", "content": "y"},  # folders created
            {"type": "fs.write", "path": "../outside.txt", "content": "z"},  # refused: confinement
        ]
        for a in actions:  # warm up: adapters made, statements prepared
            session.execute(a)
        before = _open_fds()
        statuses = set()
        for i in range(40):
            for a in actions:
                statuses.add(session.execute({**a, "content": f"{a['content']}{i}"}).status)
        assert _open_fds() == before
        assert {"applied", "denied", "failed"} <= statuses
    asking = goex.load_policy("default").with_rules(goex.PythonRule(
        id="project.ask-writes", decision="confirm", type=["fs.write"], when=lambda t, targets, p: True))
    for approver in (lambda request: next(approvals), "pending"):  # approved after release, rejected, parked
        with goex.Runtime(root, durability="process", policy=asking, approver=approver) as rt:
            session = rt.session()
            session.execute({"type": "fs.write", "path": "d/c.txt", "content": "warm"})
            before = _open_fds()
            results = [session.execute({"type": "fs.write", "path": "d/c.txt", "content": f"c{i}"}) for i in range(20)]
            assert _open_fds() == before
            landed = [r for r in results if r.ok]
            if approver == "pending":
                assert not landed and {r.status for r in results} == {"awaiting_approval"}
            else:
                assert landed and (root / "d" / "c.txt").read_text() == f"c{results.index(landed[-1])}"


def test_a_write_and_its_undo_act_on_the_folder_prepared(tmp_path: Path):
    """Between prepare and apply the agent's folder is swapped for a symlink leading out: the
    write still lands in the folder that was resolved and captured (never outside), and undo
    restores exactly what was there."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (root / "d" / "a.txt").write_text("before")
    (outside / "a.txt").write_text("secret")
    with goex.Runtime(root, policy="permissive", durability="process") as rt:
        adapter = rt.adapter("fs")
        real_capture = adapter.capture

        def capture_then_swap(prepared, put_blob):
            plan = real_capture(prepared, put_blob)
            os.rename(root / "d", root / "d.moved")
            os.symlink(outside, root / "d")
            return plan

        adapter.capture = capture_then_swap  # type: ignore[method-assign]
        session = rt.session()
        result = session.execute({"type": "fs.write", "path": "d/a.txt", "content": "after"})
        adapter.capture = real_capture  # type: ignore[method-assign]
        assert (outside / "a.txt").read_text() == "secret"
        if result.ok:  # written through the folder held since prepare
            assert (root / "d.moved" / "a.txt").read_text() == "after"
        (root / "d").unlink()
        os.rename(root / "d.moved", root / "d")
        if result.ok:
            session.undo()
        assert (root / "d" / "a.txt").read_text() == "before"
        assert (outside / "a.txt").read_text() == "secret"
        rt.verify()
