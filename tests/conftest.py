"""Shared fixtures. In CI (CI=true) a skipped test fails the run: skips hide missing parts."""

from __future__ import annotations

import io
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shutil
import tempfile

import pytest

# goex keeps per-user state (journal anchors, database account secrets) in GOEX_STATE_DIR: the
# suite's hundreds of journals keep theirs in a folder of its own, removed at the end
_STATE = os.environ.setdefault("GOEX_STATE_DIR", tempfile.mkdtemp(prefix="goex-test-state-"))

import goex  # noqa: E402

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _STATE.startswith(tempfile.gettempdir()) and "goex-test-state-" in _STATE:
        shutil.rmtree(_STATE, ignore_errors=True)
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        print(f"\nCI: {len(_skipped)} test(s) skipped; in CI every test must run: {', '.join(_skipped[:10])}")
        session.exitstatus = 1


def snapshot(root: Path, *, exclude: str = ".goex") -> dict[str, tuple]:
    """Everything observable about a tree: type, permission bits, bytes, symlink targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == exclude or rel_dir.startswith(exclude + os.sep):
            continue
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel == exclude:
                continue
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode)
            else:
                out[rel] = ("file", mode, path.read_bytes())
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def rt(root: Path):
    runtime = goex.Runtime(root, policy="permissive")
    yield runtime
    runtime.close()


def seed_tree(root: Path) -> None:
    """A small tree with every kind of thing undo must restore."""
    (root / "src/pkg").mkdir(parents=True)
    (root / "src/pkg/mod.py").write_text("x = 1\n")
    (root / "src/main.py").write_text("print('hi')\n")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o755)
    (root / "secret.txt").write_text("s3cret\n")
    os.chmod(root / "secret.txt", 0o600)
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty").mkdir()
    os.symlink("src/main.py", root / "link-to-main")
    os.symlink("missing-target", root / "dangling")


@dataclass
class CliRun:
    """What one `goex ...` command did: its exit code and what it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "surrogateescape")


_cli_lock = threading.Lock()


def run_cli(*args: str, stdin: bytes | str | None = None) -> CliRun:
    """`goex ARGS...` run in this process through `goex.cli.main`, with `stdin` as its standard
    input (not a terminal) and its output captured, as the command line would run it. One
    command at a time: the standard streams it swaps are the whole process's."""
    from goex.cli import main

    with _cli_lock:
        return _run_main(main, list(args), stdin)


def _run_main(main: Any, args: list[str], stdin: bytes | str | None) -> CliRun:
    data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    out, err = io.BytesIO(), io.BytesIO()
    saved = (sys.stdin, sys.stdout, sys.stderr)
    given = (io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"),
             io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", write_through=True),
             io.TextIOWrapper(err, encoding="utf-8", errors="surrogateescape", write_through=True))
    sys.stdin, sys.stdout, sys.stderr = given
    try:
        code = main(args)
    except SystemExit as exc:  # argparse: --help, --version, a malformed flag
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    run = CliRun(code, out.getvalue(), err.getvalue())
    for stream in given:
        if not stream.closed:
            stream.detach()  # the captured bytes stay readable; nothing closes them under the caller
    return run
