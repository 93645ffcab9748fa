"""code.run on a real Docker engine and real bubblewrap: containment (the abuse corpus), exact
undo of file effects, the journal out of reach, and clear failures. No mocks: these need
dockerd, the goex-sandbox image and bwrap, which `./dev test` installs, starts and builds."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import goex
from goex.adapters.code import backends
from goex.cli import main as cli

from conftest import seed_tree, snapshot

BACKENDS = ["docker", "bwrap"]


def _containers(owner: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=goex.owner={owner}"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def _procs(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(int(pid))
    return found


@pytest.fixture(params=BACKENDS)
def sbx(request, root: Path):
    """(runtime, session) on the given backend; on teardown: no container or process left."""
    rt = goex.Runtime(root, policy="permissive", sandbox=request.param, sandbox_options={"pool_size": 1})
    yield rt, rt.session()
    backend = rt.adapter("code")._backend
    rt.close()
    if isinstance(backend, backends.DockerBackend):
        assert _containers(backend.owner) == [], "a sandbox container leaked"
    assert not [p for p in _procs("goex-abuse-marker") if p != os.getpid()], "a sandboxed process leaked"


def run(s, code: str, **kw):
    return s.execute({"type": "code.run", "code": code, **kw})


# -- what a user gets ------------------------------------------------------------------------------


def test_output_and_exit_code(sbx):
    rt, s = sbx
    r = run(s, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert r.ok, r.error
    assert r.output["exit_code"] == 3
    assert r.output["stdout"] == "out\n" and r.output["stderr"] == "err\n"
    assert r.output["stopped"] is None and r.output["duration_s"] > 0
    assert r.output["backend"] == rt.adapter("code").backend().name
    r = run(s, "echo $((6*7)); pwd", language="bash")
    assert r.output["stdout"] == "42\n/workspace\n"


def test_undo_restores_the_tree_exactly(sbx, root: Path):
    rt, s = sbx
    seed_tree(root)
    (root / "big").mkdir()
    for i in range(20):
        (root / "big" / f"f{i}").write_text(str(i))
    before = snapshot(root)
    code = """
import os, shutil
open('src/main.py', 'a').write('more\\n')           # changed
open('new.txt', 'w').write('new')                   # created
os.makedirs('made/deep'); open('made/deep/x', 'w').write('x')
os.unlink('secret.txt')                             # deleted (mode 0600)
shutil.rmtree('big')                                # a whole folder deleted
os.chmod('bin/tool', 0o700)                         # mode only
os.chmod('src', 0o700)                              # a folder's mode
os.unlink('link-to-main'); os.symlink('blob.bin', 'link-to-main')
os.rmdir('empty'); open('empty', 'w').write('now a file')
"""
    r = run(s, code)
    assert r.ok and r.output["exit_code"] == 0, (r.error, r.output)
    files = r.output["files"]
    assert "new.txt" in files["created"] and "made" in files["created"]
    assert {"secret.txt", "big"} <= set(files["deleted"])
    assert {"src/main.py", "bin/tool", "link-to-main", "empty"} <= set(files["changed"])
    assert (root / "src/main.py").read_text() == "print('hi')\nmore\n"
    assert stat.S_IMODE((root / "bin/tool").stat().st_mode) == 0o700
    assert not (root / "big").exists() and (root / "made/deep/x").read_text() == "x"
    assert s.undo() == [r.entry_id]
    assert snapshot(root) == before
    rt.verify()


def test_undo_conflict_when_changed_since(sbx, root: Path):
    rt, s = sbx
    r = run(s, "open('a.txt','w').write('A')")
    (root / "a.txt").write_text("someone else")
    with pytest.raises(goex.UndoConflict):
        s.undo()
    assert (root / "a.txt").read_text() == "someone else"


def test_journal_folder_is_invisible(sbx, root: Path):
    rt, s = sbx
    run(s, "open('x','w').write('1')")
    journal = {p: p.read_bytes() for p in (root / ".goex").rglob("*") if p.is_file()}
    code = """
import os
print(sorted(os.listdir('.')))
for p in ['.goex', '.goex/journal.db', '/workspace/.goex']:
    print(p, os.path.exists(p))
os.makedirs('.goex', exist_ok=True)
open('.goex/journal.db', 'w').write('overwritten')
"""
    r = run(s, code)
    assert r.ok, r.error
    assert r.output["stdout"].splitlines()[0] == "['x']"
    assert "True" not in "".join(r.output["stdout"].splitlines()[1:])
    assert any(".goex" in n for n in r.output.get("not_applied", []))
    after = {p: p.read_bytes() for p in journal}
    assert all(after[p] == journal[p] or p.name.startswith("journal") for p in journal)
    assert (root / ".goex").is_dir() and not (root / ".goex/journal.db").read_bytes().startswith(b"overwritten")
    rt.verify()


# -- the abuse corpus ------------------------------------------------------------------------------


def test_network_is_off(sbx):
    rt, s = sbx
    code = """
import socket
for host in [('1.1.1.1', 53), ('127.0.0.1', 22), ('8.8.8.8', 443)]:
    try:
        socket.create_connection(host, timeout=2); print('CONNECTED', host)
    except OSError as e:
        print('blocked', type(e).__name__)
print([n for _, n in socket.if_nameindex()])
"""
    r = run(s, code)
    assert r.ok and "CONNECTED" not in r.output["stdout"], r.output
    assert r.output["stdout"].count("blocked") == 3
    assert r.output["stdout"].strip().splitlines()[-1] == "['lo']"


def test_host_files_outside_the_workspace_are_out_of_reach(sbx, root: Path, tmp_path: Path):
    rt, s = sbx
    secret = tmp_path / "host-secret.txt"
    secret.write_text("TOP SECRET")
    code = f"""
import os
for p in ['/etc/shadow', '/root', {str(secret)!r}, {str(root)!r}, '/proc/1/root/etc/shadow', '/var/run/docker.sock']:
    try:
        data = open(p).read() if not os.path.isdir(p) else os.listdir(p)
        print('READ', p, data[:40])
    except OSError as e:
        print('no', p, type(e).__name__)
"""
    r = run(s, code)
    assert r.ok and "READ" not in r.output["stdout"] and "TOP SECRET" not in r.output["stdout"], r.output


def test_writes_outside_the_workspace_fail(sbx, tmp_path: Path):
    rt, s = sbx
    target = tmp_path / "planted"
    code = f"""
import os
for p in ['/etc/planted', '/usr/planted', '/planted', {str(target)!r}, '/proc/sys/kernel/core_pattern']:
    try:
        open(p, 'w').write('x'); print('WROTE', p)
    except OSError as e:
        print('no', p, type(e).__name__)
open('/tmp/scratch', 'w').write('tmp is private')
"""
    r = run(s, code)
    assert r.ok and "WROTE" not in r.output["stdout"], r.output
    assert not target.exists() and not Path("/etc/planted").exists() and not Path("/planted").exists()
    r = run(s, "import os; print(os.path.exists('/tmp/scratch'))")
    assert r.output["stdout"] == "False\n"  # nothing passes from one run to the next


# A run plants state everywhere it can reach; the next run looks for it. Warm sandboxes fork each
# run from a waiting interpreter (bwrap reuses the sandbox itself): none of it may pass.
PLANT = r"""
import builtins, ctypes, os, subprocess, sys, threading, time
planted = []
sys.modules['goex_planted'] = type(sys)('goex_planted'); planted.append('module')
import json, sqlite3; planted.append('imports')
builtins.goex_planted = 1; planted.append('builtin')
goex_planted_global = 1; planted.append('global')
os.environ['GOEX_PLANTED'] = '1'; os.putenv('GOEX_PLANTED_C', '1'); planted.append('env')
sys.setrecursionlimit(4321); sys.path.append('/goex-planted'); planted.append('interpreter')
for path in ('/tmp/goex-planted', '/dev/shm/goex-planted'):
    try:
        open(path, 'w').write('x'); planted.append(path)
    except OSError as e:
        print('could not plant', path, e)
threading.Thread(target=time.sleep, args=(300,), daemon=True, name='goex-planted').start(); planted.append('thread')
subprocess.Popen(['bash', '-c', 'exec -a goex-abuse-marker sleep 300'], start_new_session=True)
planted.append('process')
libc = ctypes.CDLL(None, use_errno=True)
if libc.shmget(0x60E7, 4096, 0o1000 | 0o666) >= 0:  # IPC_CREAT: a System V segment outlives its creator
    planted.append('sysv-shm')
print(' '.join(planted))
"""

FIND = r"""
import builtins, ctypes, json, os, sys, threading, time
time.sleep(0.2)
libc = ctypes.CDLL(None, use_errno=True)
procs = []
for pid in os.listdir('/proc'):
    try:
        if pid.isdigit() and b'goex-abuse-marker' in open(f'/proc/{pid}/cmdline', 'rb').read():
            procs.append(pid)
    except OSError:
        pass
print(json.dumps({
    'module': 'goex_planted' in sys.modules, 'builtin': hasattr(builtins, 'goex_planted'),
    'global': 'goex_planted_global' in globals(), 'env': [k for k in os.environ if k.startswith('GOEX_PLANTED')],
    'recursionlimit': sys.getrecursionlimit(), 'path': '/goex-planted' in sys.path,
    'files': [p for p in ('/tmp/goex-planted', '/dev/shm/goex-planted', '/tmp/goex-planted-sh') if os.path.exists(p)],
    'threads': [t.name for t in threading.enumerate()], 'processes': procs,
    'sysv-shm': libc.shmget(0x60E7, 0, 0) >= 0,
}))
"""


def test_a_run_leaves_nothing_for_the_next(sbx):
    rt, s = sbx
    clean = json.loads(run(s, FIND).output["stdout"])
    backend = rt.adapter("code").backend()
    sandboxes = _warm_sandboxes(backend)
    r = run(s, PLANT)
    assert r.ok and r.output["exit_code"] == 0, r.output
    assert r.output["stdout"].split() == ["module", "imports", "builtin", "global", "env", "interpreter",
                                          "/tmp/goex-planted", "/dev/shm/goex-planted", "thread", "process",
                                          "sysv-shm"], r.output
    r = run(s, "echo x > /tmp/goex-planted-sh; (exec -a goex-abuse-marker sleep 300 &); export GOEX_PLANTED_SH=1",
            language="bash")
    assert r.ok and r.output["exit_code"] == 0, r.output
    after = json.loads(run(s, FIND).output["stdout"])
    assert after == clean, (after, clean)
    assert after["threads"] == ["MainThread"] and after["processes"] == [] and not after["sysv-shm"]
    assert "json" not in run(s, "import sys; print(sorted(sys.modules))").output["stdout"]
    if isinstance(backend, backends.BwrapBackend):  # the same sandbox served every run
        assert _warm_sandboxes(backend) == sandboxes and sandboxes


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_ends_when_goex_dies_mid_run(root: Path, backend: str):
    """goex killed (SIGKILL) in the middle of a run: the sandbox kills the run instead of letting
    it go on with nobody to stop it."""
    script = f"""
import os, sys, threading, time, goex
rt = goex.Runtime(sys.argv[1], policy='permissive', sandbox={backend!r}, sandbox_options={{'pool_size': 1}})
s = rt.session()
s.execute({{'type': 'code.run', 'code': 'print(1)'}})
code = "(exec -a goex-abuse-marker sleep 300 &)\\nexec -a goex-abuse-marker sleep 301"
threading.Thread(target=s.execute, args=({{'type': 'code.run', 'code': code, 'language': 'bash', 'timeout_s': 600}},),
                 daemon=True).start()
def running():
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and open(f'/proc/{{p}}/cmdline', 'rb').read().startswith(b'goex-abuse-marker\\x00301'):
                return True
        except OSError:
            pass
while not running():
    time.sleep(0.05)
print('running', flush=True)
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert "running" in proc.stdout, proc.stderr
    end = time.monotonic() + 10
    while _procs("goex-abuse-marker") and time.monotonic() < end:
        time.sleep(0.1)
    assert _procs("goex-abuse-marker") == []


def _warm_sandboxes(backend: backends.Backend) -> list[int]:
    if isinstance(backend, backends.BwrapBackend):
        return sorted(w.proc.pid for idle in backend._idle.values() for w in idle)
    return []


def test_fork_bomb_is_contained(sbx):
    rt, s = sbx
    r = run(s, "goex_abuse_marker() { goex_abuse_marker | goex_abuse_marker & }; goex_abuse_marker; sleep 3; echo survived",
            language="bash", timeout_s=8)
    assert r.ok, r.error
    assert r.output["duration_s"] < 15
    # the host still forks, and nothing of the bomb is left (the fixture checks the marker too)
    assert subprocess.run(["true"]).returncode == 0


def test_memory_bomb_is_stopped(sbx):
    rt, s = sbx
    r = run(s, "x = []\nwhile True:\n    x.append(bytearray(16 << 20))", memory_mb=128, timeout_s=30)
    assert r.ok, r.error
    assert r.output["exit_code"] != 0
    assert r.output["stopped"] == "memory" or "MemoryError" in r.output["stderr"], r.output


def test_infinite_loop_times_out(sbx):
    rt, s = sbx
    t0 = time.monotonic()
    r = run(s, "while True:\n    pass", timeout_s=1)
    assert r.output["stopped"] == "timeout" and r.output["exit_code"] == 137
    assert time.monotonic() - t0 < 6


def test_gigabytes_of_output_are_truncated(sbx):
    rt, s = sbx
    r = run(s, "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(4096):\n    sys.stdout.write(chunk)", timeout_s=60)
    assert r.output["stopped"] == "output" and r.output["truncated"]
    assert len(r.output["stdout"]) < (1 << 20) + 200
    assert r.output["stdout"].endswith("[goex: output truncated at 1,048,576 bytes]\n")


def test_a_child_that_outlives_the_timeout_is_killed(sbx):
    rt, s = sbx
    code = "(exec -a goex-abuse-marker sleep 300 &)\nnohup bash -c 'exec -a goex-abuse-marker sleep 301' &\nsleep 300"
    r = run(s, code, language="bash", timeout_s=1)
    assert r.output["stopped"] == "timeout"
    assert _procs("goex-abuse-marker") == []


def test_a_child_left_behind_after_a_normal_exit_is_killed(sbx, root: Path):
    rt, s = sbx
    code = "(exec -a goex-abuse-marker bash -c 'sleep 2; echo late > late.txt') &\necho done"
    r = run(s, code, language="bash", timeout_s=10)
    assert r.output["stdout"] == "done\n" and r.output["stopped"] is None
    time.sleep(2.5)
    assert _procs("goex-abuse-marker") == [] and not (root / "late.txt").exists()


def test_setuid_attempts_fail(sbx, root: Path):
    rt, s = sbx
    code = """
import os
try:
    os.setuid(0); print('ROOT')
except OSError as e:
    print('setuid refused', e.errno)
print('uid', os.getuid())
open('tool', 'w').write('#!/bin/sh\\nid -u\\n')
os.chmod('tool', 0o4755)
print(oct(os.stat('tool').st_mode & 0o7777))
"""
    r = run(s, code)
    assert r.ok and "ROOT" not in r.output["stdout"] and "uid 0" not in r.output["stdout"], r.output
    assert r.output.get("setuid_removed") == ["tool"]
    assert stat.S_IMODE((root / "tool").stat().st_mode) == 0o755  # the bit never reaches the workspace
    r = run(s, "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])")
    assert r.output["stdout"] == "1\n"


def test_symlink_planted_pointing_outside_is_not_written_through(sbx, root: Path, tmp_path: Path):
    rt, s = sbx
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    r = run(s, f"import os\nos.symlink({str(outside)!r}, 'evil')\nos.symlink('/etc/passwd', 'pw')")
    assert r.ok and os.readlink(root / "evil") == str(outside)
    w = s.execute({"type": "fs.write", "path": "evil", "content": "pwned"})
    assert not w.ok and w.status == "denied" and "outside the workspace" in w.error
    w = s.execute({"type": "fs.write", "path": "pw", "content": "pwned"})
    assert not w.ok and w.status == "denied"
    assert outside.read_text() == "keep me"
    r = run(s, "open('evil', 'w').write('through the link')")  # inside the sandbox the link leads nowhere real
    assert outside.read_text() == "keep me"
    rt.verify()


# -- failures: clear errors, the journal consistent -------------------------------------------------


def test_image_missing_is_a_clear_error(root: Path):
    (root / "a.txt").write_text("A")
    before = snapshot(root)
    with goex.Runtime(root, policy="permissive", sandbox="docker",
                      sandbox_options={"image": "goex-sandbox:does-not-exist"}) as rt:
        r = rt.session().execute({"type": "code.run", "code": "open('a.txt','w').write('B')"})
        assert not r.ok and r.status == "failed"
        assert "goex-sandbox:does-not-exist" in r.error and "sandbox/build.sh" in r.error
        rt.verify()
    assert snapshot(root) == before


def test_engine_down_is_a_clear_error(root: Path, tmp_path: Path):
    with goex.Runtime(root, policy="permissive", sandbox="docker",
                      sandbox_options={"docker_url": f"unix://{tmp_path}/no-engine.sock"}) as rt:
        r = rt.session().execute({"type": "code.run", "code": "print(1)"})
        assert not r.ok and "Docker engine is not answering" in r.error
        rt.verify()


class _EngineLink:
    """A unix-socket relay to the real Docker engine that can be cut, to take the engine away
    from goex in the middle of a run (the engine itself keeps running for other users)."""

    def __init__(self, path: str):
        self.path = path
        self.conns: list[socket.socket] = []
        self.up()

    def up(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            engine.connect("/var/run/docker.sock")
            self.conns += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self) -> None:
        self.server.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns.clear()
        os.unlink(self.path)


def test_engine_lost_mid_run(root: Path, tmp_path: Path):
    (root / "a.txt").write_text("A")
    before = snapshot(root)
    link = _EngineLink(str(tmp_path / "engine.sock"))
    rt = goex.Runtime(root, policy="permissive", sandbox="docker",
                      sandbox_options={"docker_url": f"unix://{link.path}", "pool_size": 1})
    timer = threading.Timer(2.0, link.cut)
    timer.start()
    r = rt.session().execute({"type": "code.run", "code": "open('a.txt','w').write('B')\nimport time; time.sleep(30)",
                              "timeout_s": 20})
    timer.join()
    assert not r.ok and r.status == "failed" and "Docker engine" in r.error, r
    assert snapshot(root) == before  # nothing of the run reached the workspace
    rt.verify()
    assert rt.log()[-1]["status"] == "failed"
    owner = rt.adapter("code")._backend.owner
    link.up()  # the engine is back: closing removes what is left
    rt.close()
    assert _containers(owner) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_workspace_unwritable_is_a_clear_error(root: Path, tmp_path: Path, backend: str):
    (root / "a.txt").write_text("A")
    before = snapshot(root)
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True)
        with goex.Runtime(root, journal=tmp_path / "journal", policy="permissive", sandbox=backend,
                          sandbox_options={"pool_size": 1}) as rt:
            r = rt.session().execute({"type": "code.run", "code": "open('a.txt','w').write('B')"})
            assert not r.ok and r.status == "failed" and "read-only" in r.error, r
            rt.verify()
            assert rt.log()[-1]["status"] == "failed"
    finally:
        subprocess.run(["umount", str(root)], check=True)
    assert snapshot(root) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_immutable_file_stays_as_it_was(root: Path, backend: str):
    (root / "locked.txt").write_text("locked")
    subprocess.run(["chattr", "+i", str(root / "locked.txt")], check=True)
    try:
        with goex.Runtime(root, policy="permissive", sandbox=backend, sandbox_options={"pool_size": 1}) as rt:
            s = rt.session()
            r = s.execute({"type": "code.run", "code": "open('a.txt','w').write('B')\nopen('locked.txt','w').write('C')"})
            assert r.ok and "PermissionError" in r.output["stderr"] and r.output["files"]["created"] == ["a.txt"]
            assert (root / "locked.txt").read_text() == "locked"
            s.undo()
            assert not (root / "a.txt").exists()
            rt.verify()
    finally:
        subprocess.run(["chattr", "-i", str(root / "locked.txt")], check=True)


# -- configuration, policy, doctor -----------------------------------------------------------------


def test_process_backend_is_refused_unless_enabled(root: Path):
    with goex.Runtime(root, policy="permissive", sandbox="process") as rt:
        r = rt.session().execute({"type": "code.run", "code": "print(1)"})
        assert not r.ok and r.status == "denied" and r.decision.rules == ["code.unsafe"]
    with goex.Runtime(root, policy="permissive", sandbox="process", allow_unsafe=True) as rt:
        s = rt.session()
        r = s.execute({"type": "code.run", "code": "open('p.txt','w').write('p'); print(1)"})
        assert r.ok and r.output["unsafe"] is True and r.output["stdout"] == "1\n"
        assert (root / "p.txt").read_text() == "p"
        entry = rt.journal.record(rt.journal.entry(r.entry_id)["seq"])
        assert entry["plan"]["unsafe"] is True and entry["preview"]["unsafe"] is True
        s.undo()
        assert not (root / "p.txt").exists()


def test_policy_on_network(root: Path):
    action = {"type": "code.run", "code": "print(1)", "network": True}
    for pack, verdict in (("default", "confirm"), ("strict", "deny"), ("training", "deny")):
        with goex.Runtime(root, policy=pack) as rt:
            decision, preview = rt.session().check(action)
            assert decision.verdict == verdict and "code.network" in decision.rules
            assert preview["network"] is True and preview["language"] == "python"
            r = rt.session().execute(action)
            assert not r.ok and r.status == "denied"
    with goex.Runtime(root, policy="default") as rt:
        assert rt.session().check({"type": "code.run", "code": "print(1)"})[0].verdict == "allow"


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_when_allowed(root: Path, backend: str):
    with goex.Runtime(root, policy="permissive", sandbox=backend) as rt:
        r = rt.session().execute({"type": "code.run", "network": True,
                                  "code": "import socket; print(len(socket.if_nameindex()) > 1)"})
        assert r.ok and r.output["stdout"] == "True\n", r.output


def test_malformed_actions():
    for bad in ({"type": "code.run"}, {"type": "code.run", "code": "x", "language": "ruby"},
                {"type": "code.run", "code": "x", "timeout_s": 0}, {"type": "code.run", "code": "x", "shell": True}):
        with pytest.raises(goex.ActionError):
            goex.actions.parse_action(bad)


def test_doctor(capsys):
    assert cli(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "docker   works" in out and "bwrap    works" in out and "code.run uses: docker" in out


def test_exec_cli_with_a_backend(root: Path, capsys):
    rc = cli(["exec", "--root", str(root), "--sandbox", "bwrap", "--policy", "permissive",
              '{"type": "code.run", "language": "bash", "code": "echo hi > f; cat f"}'])
    assert rc == 0 and '"stdout": "hi\\n"' in capsys.readouterr().out
    assert (root / "f").read_text() == "hi\n"
