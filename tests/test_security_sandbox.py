"""Sandbox confinement attacks (issue finding 12), on a real Docker engine and real bubblewrap:
overlay metadata forged by the code, modes `fs.chmod` refuses, fork bombs and memory hogs, and
`goex doctor` measuring which limits hold. No mocks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import goex
from goex.adapters.code import backends
from goex.cli import main as cli

from conftest import snapshot

BACKENDS = ["docker", "bwrap"]
REFUSED_BITS = 0o7002  # setuid, setgid, sticky, other-write: what fs.chmod's rules refuse


@pytest.fixture(params=BACKENDS)
def sbx(request, root: Path):
    rt = goex.Runtime(root, policy="permissive", sandbox=request.param, sandbox_options={"pool_size": 1})
    yield rt, rt.session()
    rt.close()


def run(s, code: str, **kw):
    return s.execute({"type": "code.run", "code": code, **kw})


def _seed_folder(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (root / "d" / name).write_text(f"keep {name}\n")
    (root / "d2").mkdir()
    (root / "d2" / "x.txt").write_text("keep x\n")


# -- overlay metadata the code forges ------------------------------------------------------------

FORGE = r"""
import os
tried = {}
for path in ('d', 'd/sub', 'd2'):
    for name, value in (('user.overlay.opaque', b'y'), ('trusted.overlay.opaque', b'y'),
                        ('user.overlay.redirect', b'/elsewhere'), ('trusted.overlay.redirect', b'/elsewhere'),
                        ('user.overlay.metacopy', b''), ('trusted.overlay.metacopy', b''),
                        ('user.overlay.origin', b'\0' * 16), ('user.overlay.whiteout', b'')):
        try:
            os.setxattr(path, name, value)
            tried[f'{path}:{name}'] = 'set'
        except OSError as e:
            tried[f'{path}:{name}'] = e.errno
try:  # a whiteout made by hand: a 0/0 character device over a file
    os.mknod('d/b.txt.wh', 0o20000, os.makedev(0, 0)); os.rename('d/b.txt.wh', 'd2/x.txt')
except OSError as e:
    tried['mknod'] = e.errno
open('d/new.txt', 'w').write('new\n')
open('d2/new.txt', 'w').write('new\n')
print(tried)
"""


def test_forged_overlay_xattrs_keep_every_file_of_the_folder(sbx, root: Path):
    rt, s = sbx
    _seed_folder(root)
    before = snapshot(root)
    r = run(s, FORGE)
    assert r.ok and r.output["exit_code"] == 0, r.output
    assert "'d:user.overlay.opaque': 'set'" in r.output["stdout"], r.output  # the attack did land in the layer
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        assert (root / "d" / name).read_text() == f"keep {name}\n", name
    assert (root / "d2" / "x.txt").read_text() == "keep x\n"
    assert (root / "d" / "new.txt").read_text() == "new\n"
    assert sorted(r.output["files"]["created"]) == ["d/new.txt", "d2/new.txt"], r.output["files"]
    assert r.output["files"]["deleted"] == [] and r.output["files_deleted"] == 0
    s.undo()
    assert snapshot(root) == before


def test_a_folder_the_code_really_replaced_is_still_replaced(sbx, root: Path):
    """The kernel's own opaque marker (rmtree + mkdir) is still read: the old files go."""
    rt, s = sbx
    _seed_folder(root)
    before = snapshot(root)
    r = run(s, "import shutil, os\nshutil.rmtree('d')\nos.mkdir('d')\nopen('d/only.txt','w').write('1')")
    assert r.ok and r.output["exit_code"] == 0, r.output
    assert sorted(os.listdir(root / "d")) == ["only.txt"]
    s.undo()
    assert snapshot(root) == before


# -- modes fs.chmod refuses ----------------------------------------------------------------------

MODES = r"""
import os
os.chmod('old.txt', 0o666)
os.chmod('olddir', 0o2777)
for name, mode in (('rwx.txt', 0o777), ('suid', 0o4755), ('sgid', 0o2755), ('sticky.txt', 0o1644)):
    open(name, 'w').write(name)
    os.chmod(name, mode)
os.mkdir('newdir'); os.chmod('newdir', 0o3777)
open('newdir/inner', 'w').write('i'); os.chmod('newdir/inner', 0o6777)
os.chmod('same.txt', 0o646)
print('ok')
"""


def test_modes_fs_chmod_refuses_never_land(sbx, root: Path):
    rt, s = sbx
    (root / "old.txt").write_text("old")
    (root / "old.txt").chmod(0o644)
    (root / "same.txt").write_text("same")
    (root / "same.txt").chmod(0o644)
    (root / "olddir").mkdir()
    (root / "olddir").chmod(0o755)
    before = snapshot(root)
    r = run(s, MODES)
    assert r.ok and r.output["stdout"] == "ok\n", r.output
    for path in root.rglob("*"):
        if ".goex" in path.parts:
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & REFUSED_BITS == 0, f"{path.relative_to(root)} landed as {mode:04o}"
    assert stat.S_IMODE((root / "rwx.txt").stat().st_mode) == 0o775
    assert stat.S_IMODE((root / "olddir").stat().st_mode) == 0o775
    assert stat.S_IMODE((root / "newdir" / "inner").stat().st_mode) == 0o775
    assert stat.S_IMODE((root / "same.txt").stat().st_mode) == 0o644
    assert "same.txt" not in r.output["files"]["changed"]  # only a refused bit changed: nothing to apply
    stripped = r.output["modes_stripped"]
    assert {e["path"] for e in stripped} >= {"rwx.txt", "suid", "sgid", "sticky.txt", "olddir", "newdir",
                                             "newdir/inner", "old.txt", "same.txt"}, stripped
    olddir = next(e for e in stripped if e["path"] == "olddir")  # the kernel may clear setgid itself
    assert olddir["mode"] in ("2777", "0777") and olddir["applied"] == "0775", olddir
    assert "suid" in r.output["setuid_removed"]
    assert set(r.output["setuid_removed"]) <= {"suid", "sgid", "newdir", "newdir/inner"}
    s.undo()
    assert snapshot(root) == before


# -- resource limits under bwrap -----------------------------------------------------------------

FORK_BOMB = r"""
import os, time
n = 0
try:
    for _ in range(5000):
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        n += 1
except OSError as e:
    print('fork refused after', n, e.errno)
print('forked', n)
"""

MEMORY_HOG = r"""
chunks = []
for i in range(64):
    chunks.append(bytearray(b'x' * (16 << 20)))
print('allocated', len(chunks) * 16, 'MiB')
"""


def _host_alive() -> None:
    out = subprocess.run(["true"], capture_output=True, timeout=10)  # the host can still fork
    assert out.returncode == 0


def _limited_run(root: Path, code: str, **kw):
    with goex.Runtime(root, policy="permissive", sandbox="bwrap") as rt:
        return rt.session().execute({"type": "code.run", "code": code, "timeout_s": 20, **kw})


def test_fork_bomb_is_stopped_under_bwrap(root: Path):
    r = _limited_run(root, FORK_BOMB)
    assert r.ok, r.error
    out = r.output["stdout"]
    assert "fork refused after" in out, r.output
    assert int(out.split("forked ")[1]) <= backends.PIDS_MAX
    _host_alive()


def test_memory_hog_is_stopped_under_bwrap(root: Path):
    r = _limited_run(root, MEMORY_HOG, memory_mb=64)
    assert r.ok, r.error
    assert "allocated" not in r.output["stdout"], r.output
    assert r.output["stopped"] == "memory" or "MemoryError" in r.output["stderr"], r.output
    _host_alive()


def test_bwrap_under_cgroup_v2_only(root: Path):
    """A private mount namespace where only the cgroup2 hierarchy is mounted (as on a v2-only host):
    the fork bomb and the memory hog are still stopped, and what cannot be enforced is said."""
    script = r"""
import json, os, subprocess, sys
for line in reversed(open('/proc/self/mountinfo').read().splitlines()):
    fields = line.split()
    fstype = fields[fields.index('-') + 1]
    if fstype == 'cgroup':
        subprocess.run(['umount', '-l', fields[4]], check=True)
assert not [l for l in open('/proc/self/mountinfo') if ' - cgroup ' in l]
import goex
out = {}
for name, code, mem in ((('fork', sys.argv[2], 512)), ('memory', sys.argv[3], 64)):
    with goex.Runtime(sys.argv[1], policy='permissive', sandbox='bwrap') as rt:
        r = rt.session().execute({'type': 'code.run', 'code': code, 'timeout_s': 20, 'memory_mb': mem})
        out[name] = r.output
print(json.dumps(out))
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
                           str(root), FORK_BOMB, MEMORY_HOG], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert "fork refused after" in out["fork"]["stdout"], out["fork"]
    assert "allocated" not in out["memory"]["stdout"], out["memory"]
    # this kernel's cgroup2 hierarchy has no memory/pids/cpu controllers: the run says what did not hold
    unenforced = out["fork"].get("limits_not_enforced", {})
    assert "cpu" in unenforced, out["fork"]
    _host_alive()


# -- doctor --------------------------------------------------------------------------------------


def test_doctor_measures_the_limits_of_each_backend(capsys):
    assert cli(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sandboxes = report["sandboxes"]
    assert report["code_run_uses"] == "docker"
    for name in BACKENDS:
        b = sandboxes[name]
        assert b["works"] is True, b
        for limit in ("memory", "pids", "cpu", "network_off", "read_only_system", "no_root", "xattr_protection",
                      "modes"):
            assert b["limits"][limit]["holds"] is True, (name, limit, b["limits"][limit])
            assert b["limits"][limit]["detail"]
    assert sandboxes["process"]["limits"]["network_off"]["holds"] is False
    assert cli(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "docker   works" in text and "bwrap    works" in text and "code.run uses: docker" in text
    assert "memory" in text and "holds" in text


def test_doctor_says_when_a_limit_does_not_hold(tmp_path: Path):
    """Without cgroup v1 (only a controller-less cgroup2 here): bwrap works, the cpu and memory limits do
    not hold, and doctor says so. (Docker cannot see overlays mounted in this private namespace.)"""
    script = r"""
import subprocess, sys
for line in reversed(open('/proc/self/mountinfo').read().splitlines()):
    fields = line.split()
    if fields[fields.index('-') + 1] == 'cgroup':
        subprocess.run(['umount', '-l', fields[4]], check=True)
from goex.cli import main
sys.exit(main(['doctor']))
"""
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("bwrap "))
    assert line.startswith("bwrap    works but") and "the cpu limit does not hold" in line, proc.stdout
    assert "the memory limit does not hold" in line, proc.stdout  # an rlimit holds each process, not the run
    assert "pids              holds" in proc.stdout  # RLIMIT_NPROC stands in for pids.max
