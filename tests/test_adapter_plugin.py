"""A new domain is one package: the example key-value store (examples/kvstore), installed with
pip, is found through the `goex.adapters` entry point and runs through the whole pipeline:
policy (rules on its preview fields, budgets), journal, undo with conflicts, review, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import goex
from goex.adapters import registry
from goex.policy import PolicyError, parse_pack

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kvstore"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    sys.path.insert(0, str(target))
    registry.refresh()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("goex_kvstore")]:
        del sys.modules[name]
    registry.refresh()


def store(root: Path) -> dict:
    return json.loads((root / "kv.json").read_text())


def test_the_domain_runs_through_the_pipeline(installed: Path, tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    pack = tmp_path / "kv.yaml"
    pack.write_text("name: kv\nbudgets: {kv_writes: 3}\nrules:\n"
                    "  - id: kv.no-secrets\n    match: {type: [kv.set], path: ['secret*']}\n    decision: deny\n"
                    "  - id: kv.deletes\n    match: {type: [kv.delete], preview: {exists: true}}\n"
                    "    decision: confirm\n")
    with goex.Runtime(root, policy=pack, approver=lambda request: True) as rt:
        s = rt.session()
        assert s.execute({"type": "kv.set", "key": "a", "value": "1"}).ok
        second = s.execute({"type": "kv.set", "key": "a", "value": "2"})
        assert second.ok
        assert store(root) == {"a": "2"}
        denied = s.execute({"type": "kv.set", "key": "secret-x", "value": "v"})
        assert denied.status == "denied" and denied.decision.rules == ["kv.no-secrets"]
        deleted = s.execute({"type": "kv.delete", "key": "a"})
        assert deleted.ok and deleted.decision.rules == ["kv.deletes"] and store(root) == {}
        over = s.execute({"type": "kv.set", "key": "b", "value": "x"})  # the adapter's own budget
        assert over.status == "denied" and over.decision.rules == ["budget.kv_writes"]
        assert s.execute({"type": "kv.get", "key": "a"}).output == {"key": "a", "value": None}
        # the store file belongs to the adapter: file actions may not write it
        assert s.execute({"type": "fs.write", "path": "kv.json", "content": "{}"}).status == "denied"
        assert "was '1'" in [i.detail for i in s.review() if i.type == "kv.set"][1]
        assert s.undo(2) == [deleted.entry_id, second.entry_id]
        assert store(root) == {"a": "1"}
        store_now = store(root) | {"a": "changed elsewhere"}
        (root / "kv.json").write_text(json.dumps(store_now))
        with pytest.raises(goex.UndoConflict):
            s.undo()
        assert store(root) == {"a": "changed elsewhere"}
        s.undo(force=True)
        assert store(root) == {}


def test_rules_on_its_preview_are_checked(installed: Path):
    with pytest.raises(PolicyError, match="preview field 'exsts' is not in the previews of kv.delete; did you mean 'exists'"):
        parse_pack("name: p\nrules:\n  - {id: r, decision: deny, match: {type: [kv.delete], preview: {exsts: true}}}\n")
    with pytest.raises(PolicyError, match="unknown budget 'kv_write'"):
        parse_pack("name: p\nbudgets: {kv_write: 1}\n")
    assert "kv.set" in json.dumps(goex.action_schema())


def test_the_cli_finds_it(installed: Path, tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}
    run = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root),
                          '{"type": "kv.set", "key": "k", "value": "v"}'], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "applied" and store(root) == {"k": "v"}
    undo = subprocess.run([sys.executable, "-m", "goex.cli", "undo", "--root", str(root), "--steps", "1"],
                          env=env, capture_output=True, text=True)
    assert undo.returncode == 0, undo.stderr
    assert store(root) == {}
    # the store is the adapter's from the first command on, even when no kv action ran in that process
    overwrite = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root),
                                '{"type": "fs.write", "path": "KV.json", "content": "{\\"k\\": \\"forged\\"}"}'],
                               env=env, capture_output=True, text=True)
    assert overwrite.returncode == 3, overwrite.stdout + overwrite.stderr
    assert "kv store" in overwrite.stdout and store(root) == {}
