"""The sandbox image: one Debian root serving Docker and bubblewrap, so the usual test commands
(`python -m pytest`, hypothesis, git) run, and run the same, in both. Needs the image built by
sandbox/build.sh (`./dev test` builds it once)."""

from __future__ import annotations

import json
from pathlib import Path

import goex
from goex.adapters.code import backends
from goex.cli import main as cli

PROJECT = """
import json, os, platform, shutil, subprocess, sys
import hypothesis, pytest
os.makedirs("t", exist_ok=True)
open("t/test_x.py", "w").write(
    "from hypothesis import given, strategies as st\\n"
    "@given(st.integers())\\n"
    "def test_abs(n):\\n    assert abs(n) >= 0\\n"
    "def test_fails():\\n    assert 1 + 1 == 3\\n")
r = subprocess.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "t"], capture_output=True, text=True)
git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[:2]
print(json.dumps({"python": platform.python_version(), "pytest": pytest.__version__, "hypothesis": hypothesis.__version__,
                  "git": git, "python_on_path": shutil.which("python"), "exit": r.returncode,
                  "summary": r.stdout.strip().splitlines()[-1].split(" in ")[0],
                  "tools": sorted(t for t in ("make", "diff", "patch", "grep", "sed", "find", "xz", "ps")
                                  if shutil.which(t))}))
"""


def _run(root: Path, backend: str) -> dict:
    with goex.Runtime(root, policy="permissive", sandbox=backend, sandbox_options={"pool_size": 0}) as rt:
        r = rt.session().execute({"type": "code.run", "language": "python", "code": PROJECT})
        assert r.ok, r.error
        assert r.output["backend"] == backend
        assert r.output["exit_code"] == 0, r.output["stderr"]
        return json.loads(r.output["stdout"].strip().splitlines()[-1])


def test_python_pytest_hypothesis_and_git_behave_the_same_in_both_backends(tmp_path: Path):
    seen = {}
    for backend in ("docker", "bwrap"):
        root = tmp_path / backend
        root.mkdir()
        seen[backend] = _run(root, backend)
    docker, bwrap = seen["docker"], seen["bwrap"]
    assert docker == bwrap, seen
    assert docker["python_on_path"] == "/usr/bin/python"
    assert docker["git"][0] == "git"
    assert docker["exit"] == 1 and docker["summary"].startswith("1 failed, 1 passed"), docker  # pytest really ran both
    assert docker["tools"] == ["diff", "find", "grep", "make", "patch", "ps", "sed", "xz"]


def test_bwrap_runs_in_the_image_root_not_the_host(tmp_path: Path):
    marker = Path(backends.image_root()) / "etc" / "debian_version"
    code = "print(open('/etc/debian_version').read().strip()); import os; print(os.path.exists('/etc/goex-host-only'))"
    host_only = Path("/etc/goex-host-only")
    host_only.write_text("x")
    try:
        with goex.Runtime(tmp_path, policy="permissive", sandbox="bwrap") as rt:
            r = rt.session().execute({"type": "code.run", "language": "python", "code": code})
    finally:
        host_only.unlink()
    assert r.ok, r.error
    assert r.output["stdout"].split() == [marker.read_text().strip(), "False"]


def test_a_named_root_that_is_not_one_is_refused_with_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GOEX_SANDBOX_ROOT", str(tmp_path / "nothing-here"))
    with goex.Runtime(tmp_path, policy="permissive", sandbox="bwrap") as rt:
        r = rt.session().execute({"type": "code.run", "code": "true"})
    assert not r.ok and "sandbox/build.sh" in r.error and "nothing-here" in r.error


def test_doctor_names_the_order_and_the_root_each_backend_uses(capsys):
    cli(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    works = [n for n in backends.AUTO_ORDER if report["sandboxes"][n]["works"]]
    assert report["code_run_uses"] == works[0]
    assert report["sandboxes"]["docker"]["root"] == f"image {backends.DEFAULT_IMAGE}"
    assert report["sandboxes"]["bwrap"]["root"] == f"root {backends.image_root()}"


def test_the_gym_uses_what_auto_means_everywhere(tmp_path: Path):
    import goex.gym

    env = goex.gym.GoexEnv(task="code-fix-failing-test", home=tmp_path / "gym")
    try:
        env.reset(seed=0)
        obs, _, _, _, _ = env.step({"type": "code.run", "language": "bash", "code": "python -m pytest --version"})
    finally:
        env.close()
    out = json.loads(obs)["output"]
    assert out["exit_code"] == 0 and out["backend"] == backends.AUTO_ORDER[0], out


def test_image_root_follows_the_image_name(monkeypatch):
    monkeypatch.delenv("GOEX_SANDBOX_ROOT", raising=False)
    assert backends.image_root("my/img:3") == "/var/lib/goex/sandbox/my-img-3"


def test_a_named_image_is_the_default_everywhere(tmp_path: Path):
    """GOEX_SANDBOX_IMAGE names the image of every runtime (and bwrap's root folder with it)."""
    import subprocess
    import sys

    code = ("from goex.adapters.code import backends; b = backends.make('bwrap'); "
            "print(backends.DEFAULT_IMAGE, b.root)")
    env = {**__import__("os").environ, "GOEX_SANDBOX_IMAGE": "mine:7"}
    env.pop("GOEX_SANDBOX_ROOT", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["mine:7", "/var/lib/goex/sandbox/mine-7"]
