"""A hostile or careless agent sending malformed input: deep or huge JSON, numbers no column holds,
values of the wrong type, NUL characters, headers no HTTP library can encode, folder trees too
deep to walk. Each is a goex error (ActionError, a typed refusal, or a failed Result), never a
raw Python exception; nothing is applied, the journal verifies, and nothing outside the root
changes. The CLI prints one line and exits 2, never a traceback. A fuzz test drives every action
type with random values and checks the same."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import goex
from conftest import CliRun, run_cli, snapshot
from goex.service import serve

CLOSED = "http://127.0.0.1:9"  # allowed, but nothing listens: a request that got through would fail


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.fixture(scope="module")
def service():
    with serve() as base:
        yield base


@pytest.fixture
def world(tmp_path: Path):
    """A root with a SQLite database, next to an outside folder the root links to."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me\n")
    root = tmp_path / "ws"
    root.mkdir()
    os.symlink("../outside", root / "out-link")
    rt = goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"},
                      http=goex.HttpConfig(allow_hosts=["127.0.0.1"]))
    rt.session().execute({"type": "sql.execute", "db": "main", "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"})
    before = snapshot(outside)
    yield rt, root
    rt.close()
    assert snapshot(outside) == before


SQL = {"type": "sql.execute", "db": "main", "sql": "INSERT INTO t (v) VALUES (?)"}
POST = {"type": "http.request", "method": "POST", "url": CLOSED + "/x"}

MALFORMED: dict[str, Any] = {
    "JSON text nested 100,000 deep": '{"type": "http.request", "method": "POST", "url": "' + CLOSED + '/x", "json": '
                                     + "[" * 100_000 + "]" * 100_000 + "}",
    "JSON value nested 5,000 deep": {**POST, "json": nested(5000)},
    "JSON value nested 65 deep": {**POST, "json": [nested(32)]},  # 1 + 2 * 32 levels
    "JSON text with a 5,000-digit integer": '{"type": "sql.execute", "db": "main", "sql": "SELECT ?", "params": ['
                                            + "9" * 5000 + "]}",
    "JSON text with 1e999": '{"type": "sql.execute", "db": "main", "sql": "SELECT ?", "params": [1e999]}',
    "JSON text with NaN": '{"type": "http.request", "method": "POST", "url": "' + CLOSED + '/x", "json": NaN}',
    "body integer past 64 bits": {**POST, "json": {"n": 2**64}},
    "body NaN": {**POST, "json": [float("nan")]},
    "body with bytes": {**POST, "json": {"b": b"\x00"}},
    "body key not a string": {**POST, "json": {(1, 2): 1}},
    "body with a lone surrogate": {**POST, "body": "x\ud800"},
    "SQL parameter past 64 bits": {**SQL, "params": [2**63]},
    "SQL parameter infinite": {**SQL, "params": [float("inf")]},
    "SQL parameter a list": {**SQL, "params": [[1, 2]]},
    "SQL parameter an object": {**SQL, "params": {"v": {"a": 1}}},
    "SQL parameter a set": {**SQL, "params": [{1}]},
    "SQL parameter a Python object": {**SQL, "params": [object()]},
    "SQL text with NUL": {**SQL, "sql": "SELECT 1\x00; DROP TABLE t"},
    "SQL named parameter missing": {**SQL, "sql": "INSERT INTO t (v) VALUES (:v)", "params": {}},
    "header value not ASCII": {**POST, "headers": {"X-Name": "\u2603"}},
    "header value with a line break": {**POST, "headers": {"X-Name": "a\r\nX-Injected: 1"}},
    "header value with NUL": {**POST, "headers": {"X-Name": "a\x00b"}},
    "header name with a space": {**POST, "headers": {"X Name": "a"}},
    "path 200 folders deep": {"type": "fs.mkdir", "path": "/".join(["d"] * 200)},
}


@pytest.mark.parametrize("action", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_input_is_an_action_error_and_nothing_happens(world, action):
    rt, root = world
    head = rt.journal.head()
    tree = snapshot(root)
    with pytest.raises(goex.ActionError):
        rt.session().execute(action)
    assert rt.journal.head() == head  # nothing journaled: nothing was applied
    assert snapshot(root) == tree  # the database file included
    rt.verify()


def test_values_within_the_limits_still_go_through(world):
    rt, root = world
    s = rt.session()
    ok = s.execute({**SQL, "params": [2**63 - 1]})
    assert ok.ok, ok.error
    assert s.execute({**SQL, "params": [b"\xff\x00"]}).ok  # bytes from Python: a blob, journaled as base64
    assert s.execute({"type": "fs.mkdir", "path": "/".join(["d"] * 100)}).ok
    deep_enough = s.execute({**POST, "json": nested(31)})  # 63 levels: accepted, and fails only to connect
    assert not deep_enough.ok and "cannot connect" in deep_enough.error
    rt.verify()
    s.rollback()
    assert not (root / "d").exists()


@pytest.mark.parametrize("path", ["a\x00b", "out-link/victim.txt", "../outside/victim.txt"])
def test_paths_the_os_would_reject_or_that_escape_are_typed_refusals(world, path):
    rt, root = world
    result = rt.session().execute({"type": "fs.write", "path": path, "content": "gotcha"})
    assert not result.ok and result.status == "denied" and result.decision.rules == ["workspace.confinement"]
    rt.verify()


def test_a_folder_tree_too_deep_to_capture_is_refused_untouched(world):
    rt, root = world
    here = os.open(root, os.O_RDONLY)
    try:
        for name in ["top"] + ["d"] * 1500:  # what a code.run could leave: deeper than any path an action may name
            os.mkdir(name, dir_fd=here)
            deeper = os.open(name, os.O_RDONLY, dir_fd=here)
            os.close(here)
            here = deeper
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, dir_fd=here))
        os.close(here)
        for action in ({"type": "fs.delete", "path": "top", "recursive": True},
                       {"type": "fs.move", "src": "top", "dst": "elsewhere"}):
            try:
                result = rt.session().execute(action)
                assert not result.ok
            except goex.ActionError as exc:
                assert "nested too deeply" in str(exc)
        assert deepest(root / "top") == (1500, ["leaf"])
        rt.verify()
    finally:
        remove_deep(root / "top")  # pytest's own clean-up recurses, and would fail on this tree


def deepest(folder: Path) -> tuple[int, list[str]]:
    """How many single-child levels lie under `folder`, and what the last one holds (no recursion)."""
    here, depth = os.open(folder, os.O_RDONLY), 0
    while "d" in os.listdir(here):
        deeper = os.open("d", os.O_RDONLY, dir_fd=here)
        os.close(here)
        here, depth = deeper, depth + 1
    names = os.listdir(here)
    os.close(here)
    return depth, names


def remove_deep(folder: Path) -> None:
    """Remove a folder tree of any depth: no recursion, one open folder at a time."""
    if not folder.exists():
        return
    here, names = os.open(folder, os.O_RDONLY | os.O_DIRECTORY), []
    while True:
        sub = None
        for entry in list(os.scandir(here)):
            if entry.is_dir(follow_symlinks=False):
                sub = entry.name
                break
            os.unlink(entry.name, dir_fd=here)
        if sub is not None:
            deeper = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=here)
            os.close(here)
            here = deeper
            names.append(sub)
        elif names:
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            os.close(here)
            os.rmdir(names.pop(), dir_fd=up)
            here = up
        else:
            os.close(here)
            os.rmdir(folder)
            return


# -- the CLI ----------------------------------------------------------------------------------------


def goex_cli(*args: str | bytes, stdin: bytes | None = None) -> CliRun:
    """The command, in this process; a bytes argument arrives as a process's would (surrogate-escaped)."""
    return run_cli(*(os.fsdecode(a) for a in args), stdin=stdin)


def one_line_error(done: CliRun) -> str:
    err = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Traceback" not in done.stdout.decode("utf-8", "replace")
    assert len(err.strip().splitlines()) <= 1, err
    return err


def test_the_cli_reports_malformed_input_in_one_line_with_exit_2(tmp_path: Path):
    root = tmp_path / "ws"
    root.mkdir()
    done = goex_cli("exec", "--root", str(root), "[" * 50_000 + "]" * 50_000)
    assert done.returncode == 2 and b'"status": "malformed"' in done.stdout
    one_line_error(done)
    lines = "\n".join([MALFORMED["JSON text nested 100,000 deep"], MALFORMED["JSON text with a 5,000-digit integer"],
                       MALFORMED["JSON text with NaN"], '{"type": "fs.write", "path": "ok.txt", "content": "fine"}'])
    done = goex_cli("exec", "--root", str(root), "--db", "main=sqlite:///app.db", "-", stdin=lines.encode())
    assert done.returncode == 2 and done.stdout.count(b'"malformed"') == 3 and (root / "ok.txt").exists()
    one_line_error(done)
    (tmp_path / "bad.json").write_text("{\n")
    done = goex_cli("exec", "--root", str(root), "--openapi", str(tmp_path / "bad.json"), '{"type": "fs.list"}')
    assert done.returncode == 2 and "invalid input" in one_line_error(done)
    done = goex_cli("approve", "--root", str(root), "e" + "9" * 30)
    assert done.returncode == 2
    one_line_error(done)
    done = goex_cli("checkpoint", "--root", str(root), "--session", "s", "--label", b"\xff\xfe")
    assert done.returncode == 2
    one_line_error(done)
    done = goex_cli("exec", "--root", str(root), "--secrets", str(tmp_path / "bad.json"), '{"type": "fs.list"}')
    assert done.returncode == 1
    one_line_error(done)


# -- fuzz: every action type, any values --------------------------------------------------------------

anything = st.characters(blacklist_categories=())  # lone surrogates and NUL included
texts = st.text(anything, max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts | st.binary(max_size=4)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=8) | st.integers(0, 120).map(nested)
paths = st.sampled_from(["a.txt", "d", "d/e.txt", "out-link", "out-link/victim.txt", "../outside/victim.txt",
                         "/etc/passwd", ".goex/journal.db", "app.db", "app.db-journal", ".", "a\x00b", "d/" * 70 + "f"]) | texts
fs_actions = st.one_of(
    st.fixed_dictionaries({"type": st.just("fs.write"), "path": paths, "content": texts},
                          optional={"encoding": st.sampled_from(["utf-8", "base64", "latin-1"]), "append": values}),
    st.fixed_dictionaries({"type": st.sampled_from(["fs.read", "fs.list", "fs.mkdir"]), "path": paths}),
    st.fixed_dictionaries({"type": st.just("fs.delete"), "path": paths, "recursive": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("fs.move"), "src": paths, "dst": paths, "overwrite": st.booleans()}),
    st.fixed_dictionaries({"type": st.just("fs.chmod"), "path": paths, "mode": st.sampled_from(["0644", "7777", "0o7", ""]) | texts}),
)
statements = st.sampled_from(["SELECT ?", "INSERT INTO t (v) VALUES (?)", "UPDATE t SET v = :v", "DELETE FROM t",
                              "SELECT * FROM t WHERE id = :id", "INSERT INTO t (v) VALUES (:v)", "ATTACH 'x.db' AS x",
                              "PRAGMA writable_schema=1", "SELECT load_extension('x')", "CREATE TEMP TABLE t (v)",
                              "BEGIN", "x"])
sql_actions = st.fixed_dictionaries(
    {"type": st.just("sql.execute"), "db": st.one_of(st.just("main"), st.just("main"), texts),
     "sql": st.one_of(statements, statements, texts),
     "params": st.one_of(st.none(), st.lists(values, max_size=3),
                         st.dictionaries(st.sampled_from(["v", "id"]) | texts, values, max_size=2), values)})


def http_actions(base: str) -> st.SearchStrategy:
    urls = st.sampled_from([base + "/echo", base + "/orders", base + "/items/itm_1", base + "/state",
                            "http://unlisted.example/x", "ftp://127.0.0.1/", base + "/echo?q=%00"]) | texts
    return st.fixed_dictionaries(
        {"type": st.just("http.request"), "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "TRACE"]), "url": urls},
        optional={"headers": st.dictionaries(texts, texts, max_size=2), "json": values, "body": texts,
                  "timeout_s": st.floats(allow_nan=True) | st.just(2.0)})


raw_actions = texts | st.binary(max_size=16) | values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_every_action_type_gives_only_goex_errors(service: str, data: st.DataObject):
    actions = st.one_of(fs_actions, sql_actions, http_actions(service), raw_actions)
    plan = data.draw(st.lists(actions, min_size=1, max_size=8))
    with tempfile.TemporaryDirectory() as tmp:
        outside = Path(tmp, "outside")
        outside.mkdir()
        (outside / "victim.txt").write_text("keep me\n")
        root = Path(tmp, "ws")
        root.mkdir()
        os.symlink("../outside", root / "out-link")
        before = snapshot(outside)
        with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"},
                          http=goex.HttpConfig(allow_hosts=["127.0.0.1"], max_response_bytes=4096)) as rt:
            s = rt.session()
            s.execute({"type": "sql.execute", "db": "main", "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"})
            for action in plan:
                try:
                    result = s.execute(action)
                except goex.GoexError:
                    continue
                assert isinstance(result, goex.Result)
                assert result.ok or result.error
            rt.verify()
            s.rollback(force=True)
            rt.verify()
        assert snapshot(outside) == before

