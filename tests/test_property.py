"""Property: after any sequence of file actions, checkpoints and rollbacks, the tree is
byte-identical to the state recorded at the checkpoint rolled back to."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goex
from conftest import seed_tree, snapshot

NAMES = ["a", "b", "src", "src/pkg", "empty", "bin/tool", "blob.bin", "secret.txt", "link-to-main", "new/x"]
paths = st.sampled_from(NAMES)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
blobs = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())

actions = st.one_of(
    st.builds(lambda p, c, app: {"type": "fs.write", "path": p, "content": c, "append": app}, paths, texts, st.booleans()),
    st.builds(lambda p, c: {"type": "fs.write", "path": p, "content": c, "encoding": "base64"}, paths, blobs),
    st.builds(lambda p, r: {"type": "fs.delete", "path": p, "recursive": r}, paths, st.booleans()),
    st.builds(lambda s, d, o: {"type": "fs.move", "src": s, "dst": d, "overwrite": o}, paths, paths, st.booleans()),
    st.builds(lambda p: {"type": "fs.mkdir", "path": p}, paths),
    st.builds(lambda p, m: {"type": "fs.chmod", "path": p, "mode": m}, paths, st.sampled_from(["0600", "0644", "0755", "0700"])),
    st.builds(lambda p: {"type": "fs.read", "path": p}, paths),
)
steps = st.lists(
    st.one_of(actions, st.just({"checkpoint": True}), st.builds(lambda k: {"rollback": k}, st.integers(0, 5))),
    min_size=1, max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_rollback_restores_every_checkpoint_exactly(plan):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seed_tree(root)
        with goex.Runtime(root, policy="permissive", durability="process") as rt:
            session = rt.session()
            start = snapshot(root)
            marks: list[tuple[str, dict]] = []
            for step in plan:
                if "checkpoint" in step:
                    marks.append((session.checkpoint(), snapshot(root)))
                elif "rollback" in step:
                    if marks:
                        cp, expected = marks[step["rollback"] % len(marks)]
                        session.rollback(to=cp)
                        assert snapshot(root) == expected
                        marks = marks[: marks.index((cp, expected)) + 1]
                else:
                    before = snapshot(root)
                    result = session.execute(step)
                    if not result.ok:
                        assert snapshot(root) == before, (step, result.error)
            session.rollback()
            assert snapshot(root) == start
            rt.verify()
