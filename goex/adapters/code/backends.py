"""Sandbox backends: where a `code.run` executes. Each runs the code on the run's overlay of the
workspace (mounted at /workspace), bounds its time, memory, processes and output, and returns
only when every process it started is dead (so the upper layer is final).

- `docker`: a real engine through the `docker` SDK. A warm pool of started, single-use
  containers (network off, read-only root, tmpfs /tmp, memory/CPU/process limits, all
  capabilities dropped but the ones the privilege drop needs, no-new-privileges); the run's overlay
  is mounted into the waiting container through mount propagation. A used container is killed
  and removed, never reused: no state passes from one run to the next.
- `bwrap`: bubblewrap namespaces (pid, net, ipc, uts, mount) over the image's root folder (the
  Debian root `sandbox/build.sh` builds and imports into Docker), read-only, private /tmp,
  cgroup limits. Without that folder, the host's /usr, read-only.
- `process`: a plain subprocess with resource limits and no isolation (unsafe).

Inside every backend the code runs as the workspace owner, or as nobody (65534) with only
CAP_DAC_OVERRIDE and CAP_FOWNER when the workspace belongs to root, via `setpriv` with
no-new-privileges.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import pathlib
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ...errors import ActionFailed
from ..fs.workspace import Workspace
from . import overlay

#: The image docker runs and whose root folder bwrap runs in: GOEX_SANDBOX_IMAGE, else this.
DEFAULT_IMAGE = os.environ.get("GOEX_SANDBOX_IMAGE") or "goex-sandbox:2"
#: What `auto` tries, in order (the runtime, `goex doctor` and the gym agree on it).
AUTO_ORDER = ("docker", "bwrap")
LABEL = "goex.sandbox"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
       "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
PYTHON_BOOT = "exec(compile(open('/sandbox/code','rb').read(),'<code>','exec'))"
PIDS_MAX = 128


@dataclass
class RunSpec:
    language: str
    code: str
    timeout_s: float
    network: bool
    memory_mb: int
    uid: int
    gid: int
    caps: bool  # the workspace belongs to root: run as nobody with DAC_OVERRIDE + FOWNER
    max_output: int = 1 << 20
    cpus: float = 1.0


@dataclass
class RunResult:
    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    stopped: str | None = None  # "timeout" | "memory" | "output"
    truncated: bool = False
    duration_s: float = 0.0
    limits_not_enforced: dict[str, str] = field(default_factory=dict)  # limit -> why it did not hold


@dataclass
class _Output:
    limit: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, stream: int, data: bytes) -> bool:
        """False once a stream went over the limit (the run is then stopped)."""
        buf = self.out if stream == 1 else self.err
        room = self.limit - len(buf)
        if len(data) > room:
            buf += data[:max(room, 0)]
            self.truncated = True
            return False
        buf += data
        return True

    def pump(self, fd: int, fds: dict[int, int]) -> bool:
        """Read what `fd` (one of `fds`: fd -> stream) has into its stream; an ended fd leaves
        `fds`. False once a stream went over the limit: every fd is then dropped."""
        data = os.read(fd, 1 << 16)
        if not data:
            del fds[fd]
        elif not self.add(fds[fd], data):
            fds.clear()
            return False
        return True

    def result(self, exit_code: int | None, stopped: str | None, t0: float) -> RunResult:
        marker = f"\n[goex: output truncated at {self.limit:,} bytes]\n".encode()
        out, err = bytes(self.out), bytes(self.err)
        if self.truncated:
            if len(out) >= self.limit:
                out += marker
            if len(err) >= self.limit:
                err += marker
        return RunResult(exit_code, out, err, stopped, self.truncated, time.perf_counter() - t0)


def setpriv(spec: RunSpec) -> list[str]:
    """Drop to the sandbox user; keep DAC_OVERRIDE + FOWNER only for a root-owned workspace."""
    if spec.caps:
        caps = "-all,+dac_override,+fowner"
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={caps}",
                f"--ambient-caps={caps}", f"--bounding-set={caps}", "--no-new-privs", "--"]
    return ["setpriv", f"--reuid={spec.uid}", f"--regid={spec.gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


# When the program exits, whatever it left running as the sandbox user is killed (kill(-1) spares
# only the caller and pid 1), so a run ends with its program and nothing holds its output open.
REAPER = '"$@"; rc=$?; kill -KILL -1 2>/dev/null; exit $rc'


# The warm interpreter (zygote.py), started as `python3 -c ZYGOTE_BOOT <its source>`: it runs its
# source in a namespace of its own and, in each run's forked child, then the run's code in the
# untouched `__main__`, as `python3 -c PYTHON_BOOT` would (same line 1 in tracebacks, same argv).
ZYGOTE_SOURCE = (pathlib.Path(__file__).parent / "zygote.py").read_text(encoding="utf-8")
ZYGOTE_BOOT = ("exec(__import__('sys').argv.pop(), {'__name__': 'goex-zygote'}); "
               "exec(compile(open('/sandbox/code','rb').read(),'<code>','exec'))")
ZYGOTE_COMMAND = ["python3", "-c", ZYGOTE_BOOT, ZYGOTE_SOURCE]


class SandboxGone(ActionFailed):
    """The sandbox's waiting interpreter went away before it answered (killed, or it broke);
    `result` holds the output read until then."""

    def __init__(self, message: str, result: "RunResult | None" = None):
        super().__init__(message)
        self.result = result


class Zygote:
    """goex's end of a sandbox's waiting interpreter (see zygote.py): one run at a time."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.healthy = True  # answered every request so far: may serve another

    def wait_ready(self, timeout: float, why: Callable[[], str] = lambda: "") -> None:
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(64)
        except OSError as exc:
            msg = b""
            reason = str(exc)
        else:
            reason = "it exited"
        self.sock.settimeout(None)
        if msg != b"ready":
            self.healthy = False
            raise ActionFailed(f"the sandbox's interpreter did not start ({reason}{why()})")

    def run(self, spec: RunSpec, kill: Callable[[], None], *, fresh: bool, reap: bool,
            rlimits: Sequence[tuple[int, int]] = ()) -> RunResult:
        """Run `spec` in a fresh child of the interpreter. When the child ended, whatever the run
        left running is killed: by the interpreter itself with `reap` (the sandbox's pid 1), else
        by `kill`, which also ends the run at a stop. Returns once every process of the run is dead."""
        out = _Output(spec.max_output)
        t0 = time.perf_counter()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        limits = ",".join(f"{which}:{value}" for which, value in [(resource.RLIMIT_CORE, 0), *rlimits])
        uid, gid = (65534, 65534) if spec.caps else (spec.uid, spec.gid)  # as `setpriv` drops to
        request = (f"uid={uid} gid={gid} caps={int(spec.caps)} fresh={int(fresh)} reap={int(reap)} "
                   f"lang={spec.language} rlimits={limits}")
        try:
            self.sock.sendmsg([request.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                     array.array("i", [w_out, w_err]))])
        except OSError as exc:
            self.healthy = False
            for fd in (r_out, w_out, r_err, w_err):
                os.close(fd)
            raise SandboxGone(f"the sandbox's interpreter is gone ({exc}); nothing was run") from None
        os.close(w_out)
        os.close(w_err)
        fds = {r_out: 1, r_err: 2}
        status: int | None = None
        answered = gone = False
        stopped = None
        deadline = time.monotonic() + spec.timeout_s
        try:
            while fds or not answered:
                left = deadline - time.monotonic()
                if left <= 0:
                    stopped = "timeout"
                    break
                watch = list(fds) + ([self.sock.fileno()] if not answered else [])
                ready, _, _ = select.select(watch, [], [], left)
                for fd in ready:
                    if fd == self.sock.fileno():
                        answered = True
                        status = self._answer()
                        gone = status is None
                        if gone or not reap:
                            kill()  # whatever the program left running: its output ends with it
                    elif not out.pump(fd, fds):
                        stopped = "output"
                        break
                if stopped:
                    break
        finally:
            if status is None or stopped is not None:
                kill()
            os.close(r_out)
            os.close(r_err)
            if not answered and self.healthy:
                self._settle()
        if stopped is not None:
            return out.result(137, stopped, t0)
        if gone or status is None:
            raise SandboxGone("the sandbox's interpreter ended before the run did; nothing was applied",
                              out.result(137, None, t0))
        code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return out.result(code, None, t0)

    def _answer(self) -> int | None:
        """The child's wait status; None when the interpreter went away instead."""
        try:
            msg = self.sock.recv(4096)
        except OSError:
            msg = b""
        if msg.startswith(b"exit "):
            return int(msg.split()[1])
        self.healthy = False
        if msg.startswith(b"fail "):
            raise ActionFailed(f"the sandbox could not prepare the run: {msg[5:].decode(errors='replace')}; "
                               "nothing was run")
        return None

    def _settle(self) -> None:
        """After a stop: take the answer about the killed child, so the next request starts clean."""
        ready, _, _ = select.select([self.sock], [], [], 5.0)
        try:
            if not ready or not self.sock.recv(4096).startswith(b"exit "):
                self.healthy = False
        except OSError:
            self.healthy = False

    def close(self) -> None:
        self.healthy = False
        self.sock.close()


def command(spec: RunSpec, code_path: str = "/sandbox/code") -> list[str]:
    if spec.language == "python":
        program = ["python3", "-c", PYTHON_BOOT.replace("/sandbox/code", code_path)]
    else:
        program = ["bash", code_path]
    return ["bash", "-c", REAPER, "goex-run"] + program


class Backend:
    name = "?"
    unsafe = False

    def unavailable(self) -> str | None:
        """None when this backend works here, else why not."""
        raise NotImplementedError

    def run(self, spec: RunSpec, layer: overlay.Layer, lower: str) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- cgroups (v1 or v2) for the subprocess backends ----------------------------------------------

LIMITS = ("memory", "pids", "cpu")


def cgroup_mounts() -> tuple[dict[str, str], str | None]:
    """(v1 controller -> its mount point, the cgroup2 mount point) as this process sees them."""
    v1: dict[str, str] = {}
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index("-") + 1:]
            where = fields[4].replace("\\040", " ")
            if tail[0] == "cgroup":
                for ctrl in set(tail[2].split(",")) & set(LIMITS):
                    v1.setdefault(ctrl, where)
            elif tail[0] == "cgroup2" and v2 is None:
                v2 = where
    return v1, v2


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class Cgroup:
    """A per-run cgroup with memory, pids and CPU limits, each from a cgroup v1 controller, else
    from cgroup v2 (a run cgroup under <cgroup2 mount>/goex, which holds no process so its
    children can get controllers), else an rlimit where one can stand in. `how` says what
    enforces each limit; `missing` says, per limit, why it does not hold for the run as a whole."""

    def __init__(self, spec: RunSpec):
        self.dirs: list[str] = []
        self.how: dict[str, str] = {}
        self.where: dict[str, str] = {}  # controller -> the cgroup dir holding its limit
        self.missing: dict[str, str] = {}
        self.memory: str | None = None  # the dir whose OOM counters tell a memory stop
        self.v2: str | None = None
        self.spec = spec
        name = f"goex-{uuid.uuid4().hex[:12]}"
        v1, v2 = cgroup_mounts()
        for ctrl in LIMITS:
            if ctrl in v1:
                self._v1(ctrl, os.path.join(v1[ctrl], name))
        left = [c for c in LIMITS if c not in self.how]
        if left and v2 is not None:
            self._v2(v2, name, left)
        elif left:
            for ctrl in left:
                self.missing.setdefault(ctrl, f"no {ctrl} cgroup controller is mounted (neither v1 nor v2)")
        self._fallbacks()

    def _settings(self, ctrl: str, v2: bool) -> list[tuple[str, str]]:
        mem, quota = str(self.spec.memory_mb << 20), int(self.spec.cpus * 100000)
        if v2:
            return {"memory": [("memory.max", mem), ("memory.swap.max", "0")], "pids": [("pids.max", str(PIDS_MAX))],
                    "cpu": [("cpu.max", f"{quota} 100000")]}[ctrl]
        return {"memory": [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
                "pids": [("pids.max", str(PIDS_MAX))],
                "cpu": [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", str(quota))]}[ctrl]

    def _v1(self, ctrl: str, d: str) -> None:
        try:
            os.mkdir(d)
        except OSError as exc:
            self.missing[ctrl] = f"cgroup v1 {ctrl}: cannot create {d} ({exc.strerror})"
            return
        self.dirs.append(d)
        for key, value in self._settings(ctrl, v2=False):
            try:
                _write(os.path.join(d, key), value)
            except OSError as exc:
                if key != "memory.memsw.limit_in_bytes":  # swap accounting may be off
                    self.missing[ctrl] = f"cgroup v1 {ctrl}: cannot set {key} ({exc.strerror})"
                    return
        self.how[ctrl] = "cgroup v1"
        self.where[ctrl] = d
        if ctrl == "memory":
            self.memory = d

    def _v2(self, mount: str, name: str, left: list[str]) -> None:
        parent = os.path.join(mount, "goex")
        try:
            with open(os.path.join(mount, "cgroup.controllers")) as f:
                available = set(f.read().split())
            os.makedirs(parent, exist_ok=True)
            d = os.path.join(parent, name)
            os.mkdir(d)
        except OSError as exc:
            for ctrl in left:
                self.missing[ctrl] = f"cgroup v2 at {mount}: cannot create a run cgroup ({exc.strerror})"
            return
        self.dirs.append(d)
        self.v2 = d
        for ctrl in left:
            if ctrl not in available:
                self.missing[ctrl] = (f"cgroup v2 at {mount} has no {ctrl} controller "
                                      "(bound to a cgroup v1 hierarchy, or not delegated to this cgroup namespace)")
                continue
            try:
                for where in (mount, parent):  # the mount root may hold processes only when it is the real root
                    _write(os.path.join(where, "cgroup.subtree_control"), f"+{ctrl}")
                for key, value in self._settings(ctrl, v2=True):
                    try:
                        _write(os.path.join(d, key), value)
                    except FileNotFoundError:
                        if key != "memory.swap.max":  # no swap accounting
                            raise
            except OSError as exc:
                self.missing[ctrl] = (f"cgroup v2 at {mount}: cannot enable {ctrl} below it ({exc.strerror}); "
                                      "start goex in a cgroup with delegated controllers")
                continue
            self.how[ctrl] = "cgroup v2"
            self.where[ctrl] = d
            if ctrl == "memory":
                self.memory = d

    def _fallbacks(self) -> None:
        """rlimits for what no cgroup holds: RLIMIT_AS per process, RLIMIT_NPROC for the sandbox user."""
        self.rlimits: list[tuple[int, int]] = []
        if "memory" not in self.how:
            per_process = (self.spec.memory_mb << 20) + (256 << 20)
            self.rlimits.append((resource.RLIMIT_AS, per_process))
            self.how["memory"] = f"an address-space rlimit of {per_process >> 20} MiB per process"
            self.missing["memory"] += (f"; each process is held to {per_process >> 20} MiB of address space "
                                       "instead, the run's processes together are not")
        if "pids" not in self.how:
            uid = 65534 if self.spec.caps else self.spec.uid
            if uid != 0:
                self.rlimits.append((resource.RLIMIT_NPROC, _tasks_of(uid) + PIDS_MAX))
                self.how["pids"] = f"RLIMIT_NPROC of uid {uid} (what it runs now + {PIDS_MAX})"
                del self.missing["pids"]
        if "cpu" not in self.how:
            self.missing["cpu"] += "; only the timeout bounds the run's CPU"

    def enter(self, rlimits: bool = True) -> None:
        """In the child before exec: move itself into every cgroup, take the fallback rlimits."""
        for d in self.dirs:
            _write(os.path.join(d, "cgroup.procs"), "0")
        for which, value in self.rlimits if rlimits else ():
            resource.setrlimit(which, (value, value))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    found.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return found

    def oom_kills(self) -> int:
        """How many processes the memory limit killed in this cgroup so far."""
        if self.memory is None:
            return 0
        name = "memory.events" if self.memory == self.v2 else "memory.oom_control"
        try:
            with open(os.path.join(self.memory, name)) as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("oom_kill "))
        except OSError:
            return 0

    def oom_killed(self) -> bool:
        return self.oom_kills() > 0

    def limit(self, spec: RunSpec) -> None:
        """Set the memory and CPU limits of `spec` (a warm sandbox's cgroup, between runs)."""
        self.spec = spec
        for ctrl in ("memory", "cpu"):
            if ctrl in self.where:
                d = self.where[ctrl]
                for key, value in self._settings(ctrl, v2=d == self.v2):
                    try:
                        _write(os.path.join(d, key), value)
                    except OSError:
                        pass  # as when the cgroup was made: a setting it lacks (swap) stays unset

    def kill_all(self, deadline: float = 5.0, spare: frozenset[int] = frozenset()) -> None:
        """Kill every process in the cgroup but those in `spare` (a warm sandbox's own)."""
        if self.v2 is not None and not spare:
            try:
                _write(os.path.join(self.v2, "cgroup.kill"), "1")  # the kernel kills all, forks included
            except OSError:
                pass
        end = time.monotonic() + deadline
        while (pids := self.pids() - spare) and time.monotonic() < end:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)
        if self.pids() - spare:
            raise ActionFailed("sandboxed processes survived SIGKILL; the run's effects are not applied")

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


def _tasks_of(uid: int) -> int:
    """How many tasks (threads count, as for RLIMIT_NPROC) `uid` runs on this machine now."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status.get("Uid", "-1 ").split()[0]) == uid:
            count += int(status.get("Threads", "1"))
    return count


def _run_subprocess(cmd: list[str], spec: RunSpec, cwd: str, env: dict[str, str], cg: Cgroup) -> RunResult:
    def child() -> None:
        cg.enter()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=child, start_new_session=True, close_fds=True)
    out = _Output(spec.max_output)
    stopped = None
    deadline = time.monotonic() + spec.timeout_s
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None  # both piped above
    fds = {stdout.fileno(): 1, stderr.fileno(): 2}
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = "timeout"
                break
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                if not out.pump(fd, fds):
                    stopped = "output"
                    break
        if stopped is None:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.001))
            except subprocess.TimeoutExpired:
                stopped = "timeout"
    finally:
        _kill_tree(proc, cg)
        stdout.close()
        stderr.close()
    code = proc.returncode
    if stopped is None and cg.oom_killed():
        stopped = "memory"
    exit_code = 128 - code if code is not None and code < 0 else code
    if stopped in ("timeout", "output") or exit_code is None:
        exit_code = 137
    result = out.result(exit_code, stopped, t0)
    result.limits_not_enforced = dict(cg.missing)
    return result


def _kill_tree(proc: subprocess.Popen[bytes], cg: Cgroup) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    cg.kill_all()


# -- bwrap ---------------------------------------------------------------------------------------


def image_root(image: str = DEFAULT_IMAGE) -> str:
    """The folder holding `image`'s root file system, as `sandbox/build.sh` leaves it:
    GOEX_SANDBOX_ROOT, else /var/lib/goex/sandbox/<image, ':' and '/' as '-'>."""
    return os.environ.get("GOEX_SANDBOX_ROOT") or os.path.join(
        "/var/lib/goex/sandbox", image.replace(":", "-").replace("/", "-"))


def _is_root(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, p)) for p in ("usr/bin/python3", "usr/bin/setpriv", "sandbox/code",
                                                               "workspace"))


@dataclass
class _Warm:
    """A started bwrap sandbox with its interpreter waiting: one run at a time, many runs."""

    proc: subprocess.Popen[bytes]
    zygote: Zygote
    dir: str  # <dir>/ws is the sandbox's /workspace (each run's overlay is mounted there), <dir>/in its /sandbox
    key: tuple[bool, bool, int, float]  # (caps, network, memory_mb, cpus)
    cgroup: "Cgroup"  # the sandbox's, with the runs' limits: a run's child is forked into it, not moved
    own: frozenset[int] = frozenset()  # the sandbox's processes in it (bwrap, its init, the interpreter)


class BwrapBackend(Backend):
    """Warm sandboxes: bwrap namespaces with an interpreter (zygote.py) waiting in them, started at
    the first run and reused; each run is a fresh child of that interpreter, in fresh mount and IPC
    namespaces, under the sandbox's cgroup limits; when it ends, everything it started is killed.

    The sandbox's cgroup, not one per run: moving a process into a cgroup waits for an RCU grace
    period (about 10 ms here), which a child forked inside it never pays."""

    name = "bwrap"
    idle_max = 2  # warm sandboxes kept per kind of run (uid 0 or not, network, memory, CPU)

    def __init__(self, image: str = DEFAULT_IMAGE, root: str | None = None):
        self.image = image
        self.root = root or image_root(image)
        self._idle: dict[tuple[bool, bool, int, float], list[_Warm]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._base: str | None = None

    @property
    def uses_root(self) -> bool:
        """Runs in the image's root folder (else on the host's /usr)."""
        return _is_root(self.root)

    def _system(self) -> list[str]:
        if self.uses_root:
            return ["--ro-bind", self.root, "/"]
        cmd = ["--ro-bind", "/usr", "/usr"]
        for link in ("lib", "lib64", "bin", "sbin"):
            if os.path.islink(f"/{link}"):
                cmd += ["--symlink", os.readlink(f"/{link}").lstrip("/"), f"/{link}"]
        return cmd

    def unavailable(self) -> str | None:
        if shutil.which("bwrap") is None:
            return "bubblewrap is not installed (apt-get install bubblewrap)"
        why = overlay.can_mount()
        if why:
            return why
        if not self.uses_root and os.environ.get("GOEX_SANDBOX_ROOT"):
            return f"GOEX_SANDBOX_ROOT={self.root} is not a sandbox root (build one with sandbox/build.sh)"
        try:
            r = subprocess.run(["bwrap", "--unshare-all", *self._system(), "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap does not run: {exc}"
        if r.returncode != 0:
            return f"bwrap cannot create namespaces here: {r.stderr.decode(errors='replace').strip()}"
        return None

    def base(self) -> str:
        """A shared folder: overlays mounted below it reach the sandboxes' /workspace."""
        if self._base is None:
            base = os.path.join(overlay.state_dir(), "bwrap")
            os.makedirs(base, mode=0o711, exist_ok=True)
            overlay.ensure_shared(base)
            for name in os.listdir(base):  # sandboxes of goex processes that died
                pid = name.split("-")[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    overlay.umount(os.path.join(base, name, "ws"))
                    shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            self._base = base
        return self._base

    def _start(self, spec: RunSpec) -> _Warm:
        d = os.path.join(self.base(), f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
        for sub in ("ws", "in"):
            os.makedirs(os.path.join(d, sub), mode=0o755)
        os.chmod(d, 0o711)
        with open(os.path.join(d, "in", "code"), "w"):
            pass
        cmd = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", "--new-session",
               "--cap-drop", "ALL"]
        # SYS_ADMIN: each run's child makes its own mount and IPC namespaces, then drops every capability
        extra_caps = ("CAP_DAC_OVERRIDE", "CAP_FOWNER") if spec.caps else ()
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SYS_ADMIN") + extra_caps:
            cmd += ["--cap-add", cap]
        if not spec.network:
            cmd.append("--unshare-net")
        cmd += self._system()
        if spec.network:  # the host's name resolution (the image root has its own certificates)
            shared = ("/etc/resolv.conf", "/etc/hosts") if self.uses_root else (
                "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl", "/etc/ca-certificates")
            for path in shared:
                if os.path.exists(path):
                    cmd += ["--ro-bind", path, path]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--tmpfs", "/tmp",
                "--bind", os.path.join(d, "ws"), "/workspace", "--ro-bind", os.path.join(d, "in"), "/sandbox",
                "--chdir", "/", "--hostname", "sandbox", "--remount-ro", "/"]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(ENV, GOEX_CTL_FD=str(theirs.fileno()))
        cg = Cgroup(spec)
        try:
            proc = subprocess.Popen(cmd + ZYGOTE_COMMAND, cwd="/", env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),),
                                    start_new_session=True, preexec_fn=lambda: cg.enter(rlimits=False))
        except (OSError, subprocess.SubprocessError):
            ours.close()
            cg.remove()
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            theirs.close()
        warm = _Warm(proc, Zygote(ours), d, self._key(spec), cg)

        def why() -> str:
            warm.proc.kill()
            assert warm.proc.stderr is not None
            err = warm.proc.stderr.read().decode(errors="replace").strip()
            return f": {err[-500:]}" if err else ""

        try:
            warm.zygote.wait_ready(30, why)
        except ActionFailed:
            self._stop(warm)
            raise
        assert proc.stderr is not None
        proc.stderr.close()  # started: nothing more to learn from it
        warm.own = frozenset(cg.pids())
        return warm

    @staticmethod
    def _key(spec: RunSpec) -> tuple[bool, bool, int, float]:
        return (spec.caps, spec.network, spec.memory_mb, spec.cpus)

    def _stop(self, warm: _Warm) -> None:
        warm.zygote.close()  # the interpreter exits, and the sandbox with it
        try:
            warm.proc.wait(2)
        except subprocess.TimeoutExpired:
            warm.proc.kill()
            warm.proc.wait()
        try:
            warm.cgroup.kill_all()
        except ActionFailed:
            pass  # removing the cgroup below fails too; nothing of a run is applied from here
        warm.cgroup.remove()
        overlay.umount(os.path.join(warm.dir, "ws"))
        shutil.rmtree(warm.dir, ignore_errors=True)

    def _take(self, spec: RunSpec) -> _Warm:
        key = self._key(spec)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            while idle:
                warm = idle.pop()
                if warm.proc.poll() is None and warm.zygote.healthy:
                    return warm
                self._stop(warm)
        return self._start(spec)

    def _give_back(self, warm: _Warm) -> None:
        with self._lock:
            idle = self._idle.setdefault(warm.key, [])
            if not self._closed and warm.zygote.healthy and warm.proc.poll() is None and len(idle) < self.idle_max:
                idle.append(warm)
                return
        self._stop(warm)

    def run(self, spec: RunSpec, layer: overlay.Layer, lower: str) -> RunResult:
        for attempt in (1, 2):
            warm = self._take(spec)
            try:
                return self._run_in(warm, spec, layer, lower)
            except SandboxGone as exc:
                if exc.result is not None or attempt == 2:  # gone mid-run, or twice before: not retried
                    raise
            finally:
                self._give_back(warm)
        raise AssertionError("unreachable")

    def _run_in(self, warm: _Warm, spec: RunSpec, layer: overlay.Layer, lower: str) -> RunResult:
        layer.mount(lower, at=os.path.join(warm.dir, "ws"))
        try:
            code = os.path.join(warm.dir, "in", "code")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(code)  # a new file: rewriting one in place makes ext4 flush it at close
            with open(code, "x", encoding="utf-8") as f:
                f.write(spec.code)
            cg = warm.cgroup
            ooms = cg.oom_kills()
            try:
                result = warm.zygote.run(spec, lambda: cg.kill_all(spare=warm.own), fresh=True, reap=False,
                                         rlimits=cg.rlimits)
            except SandboxGone as exc:  # the memory limit may have taken the waiting interpreter too
                if exc.result is None or cg.oom_kills() == ooms:
                    raise
                result = exc.result
            if cg.oom_kills() > ooms:
                result.stopped = result.stopped or "memory"
            if not cg.dirs:  # no cgroup to find what the run left running: the sandbox ends with the run
                warm.zygote.healthy = False
            result.limits_not_enforced = dict(cg.missing)
            return result
        finally:
            layer.unmount()  # every process of the run is dead: the sandbox is free for the next

    def close(self) -> None:
        with self._lock:
            self._closed = True
            todo = [w for idle in self._idle.values() for w in idle]
            self._idle.clear()
        for warm in todo:
            self._stop(warm)


# -- process (unsafe) ----------------------------------------------------------------------------


class ProcessBackend(Backend):
    """No isolation at all: the code sees the host as the sandbox user does. Only the overlay
    working directory and the limits apply; absolute paths reach the real files."""

    name = "process"
    unsafe = True

    def unavailable(self) -> str | None:
        if shutil.which("setpriv") is None:
            return "setpriv (util-linux) is not installed"
        return overlay.can_mount()

    def run(self, spec: RunSpec, layer: overlay.Layer, lower: str) -> RunResult:
        merged = layer.mount(lower)
        code_path = os.path.join(layer.dir, "code")
        os.chmod(layer.dir, 0o755)
        os.chmod(code_path, 0o644)
        cmd = setpriv(spec) + command(spec, code_path)
        cg = Cgroup(spec)
        try:
            return _run_subprocess(cmd, spec, merged, dict(ENV), cg)
        finally:
            cg.remove()


# -- docker --------------------------------------------------------------------------------------


@dataclass
class _Container:
    id: str
    dir: str
    pidfd: int
    network: bool
    memory_mb: int
    caps: bool
    zygote: Zygote | None = None


class DockerBackend(Backend):
    """Single-use containers from a warm pool; each is killed and removed after its one run."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, pool_size: int = 2, base_url: str | None = None):
        self.image = image
        self.pool_size = pool_size
        self.base_url = base_url
        self._client: Any = None
        self._pool: list[_Container] = []
        self._lock = threading.Lock()
        self._filling = 0
        self._caps: bool | None = None
        self._memory = 512
        self._dead: list[_Container] = []  # killed, not yet removed
        self._reaper: threading.Thread | None = None
        self._closed = False
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._base: str | None = None
        self._gaps: dict[str, str] | None = None

    # -- engine ------------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError:
                raise ActionFailed("the docker Python SDK is not installed (pip install 'docker>=7')") from None
            try:
                self._client = docker.DockerClient(base_url=self.base_url) if self.base_url else docker.from_env()
                self._client.ping()
            except Exception as exc:  # noqa: BLE001 - DockerException, requests errors
                self._client = None
                raise ActionFailed(f"the Docker engine is not answering ({_short(exc)}); start dockerd "
                                   "(`./dev test` starts it) or choose another sandbox backend") from None
        return self._client

    def unavailable(self) -> str | None:
        why = overlay.can_mount()
        if why:
            return why
        try:
            client = self.client()
        except ActionFailed as exc:
            return str(exc)
        try:
            client.images.get(self.image)
        except Exception as exc:  # noqa: BLE001 - any Docker failure means the image cannot be used: said, not raised
            return f"the sandbox image {self.image} is missing ({_short(exc)}); build it with sandbox/build.sh"
        return None

    def base(self) -> str:
        if self._base is None:
            base = os.path.join(overlay.state_dir(), "docker")
            os.makedirs(base, mode=0o711, exist_ok=True)
            overlay.ensure_shared(base)
            self._base = base
            self._sweep()
        return self._base

    def _sweep(self) -> None:
        """Remove containers left by goex processes that died without cleaning up."""
        try:
            for c in self.client().containers.list(all=True, filters={"label": LABEL}):
                pid = c.labels.get("goex.owner", "").split("-")[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    c.remove(force=True)
        except Exception:  # noqa: BLE001 - best effort
            pass

    # -- pool --------------------------------------------------------------------------------

    #: After a run, the refill and the removal of the used container wait this long (seconds), so
    #: that their work in the engine (creating a container costs a few hundred ms of CPU) does not
    #: slow down the end of the action that ran.
    AFTER_RUN_DELAY = 0.1

    def warm(self, spec: RunSpec, delay: float = 0.0) -> None:
        """Start filling the pool for runs like `spec` (called at the first run), after `delay` s."""
        with self._lock:
            if self._caps != spec.caps or self._memory != spec.memory_mb:
                self._caps, self._memory = spec.caps, spec.memory_mb
                stale, self._pool = self._pool, []
                self._dead.extend(stale)
            need = self.pool_size - len(self._pool) - self._filling
            self._filling += max(need, 0)
        for _ in range(max(need, 0)):
            filler = threading.Timer(delay, self._fill_one, args=(spec,))
            filler.daemon = True
            filler.start()

    def _fill_one(self, spec: RunSpec) -> None:
        try:
            c = self._create(spec)
        except Exception:  # noqa: BLE001 - the next run creates one itself and reports the error
            with self._lock:
                self._filling -= 1
            return
        with self._lock:
            self._filling -= 1
            if self._closed or c.caps != self._caps or c.memory_mb != self._memory:
                self._dead.append(c)
            else:
                self._pool.append(c)

    def _create(self, spec: RunSpec) -> _Container:
        import docker

        client = self.client()
        d = os.path.join(self.base(), uuid.uuid4().hex[:16])
        os.makedirs(os.path.join(d, "ws"))
        os.makedirs(os.path.join(d, "in"))
        os.chmod(d, 0o711)
        caps = ["SETUID", "SETGID", "SETPCAP"] + (["DAC_OVERRIDE", "FOWNER"] if spec.caps else [])
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # the zygote connects to /sandbox/ctl
        ctl = os.path.join(d, "in", "ctl")
        listener.bind(ctl)
        listener.listen(1)
        try:
            container = client.containers.run(
                self.image, ZYGOTE_COMMAND, detach=True, user="0:0", working_dir="/",
                network_mode="bridge" if spec.network else "none", read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={spec.memory_mb}m,mode=1777"},
                mem_limit=f"{spec.memory_mb}m", memswap_limit=f"{spec.memory_mb}m", pids_limit=PIDS_MAX,
                nano_cpus=int(spec.cpus * 1e9), cap_drop=["ALL"], cap_add=caps,
                security_opt=["no-new-privileges"], environment=ENV,
                labels={LABEL: "1", "goex.owner": self.owner},
                mounts=[docker.types.Mount("/workspace", os.path.join(d, "ws"), type="bind", propagation="rslave"),
                        docker.types.Mount("/sandbox", os.path.join(d, "in"), type="bind", read_only=True)])
        except docker.errors.ImageNotFound:
            listener.close()
            shutil.rmtree(d, ignore_errors=True)
            raise ActionFailed(f"the sandbox image {self.image} is missing; build it with sandbox/build.sh "
                               "(`./dev test` builds it)") from None
        except Exception as exc:  # noqa: BLE001 - the Docker SDK raises many types: each becomes one ActionFailed
            listener.close()
            shutil.rmtree(d, ignore_errors=True)
            raise ActionFailed(f"the Docker engine could not start a sandbox container ({_short(exc)})") from None
        c = _Container(container.id, d, -1, spec.network, spec.memory_mb, spec.caps)
        try:
            container.reload()
            c.pidfd = os.pidfd_open(container.attrs["State"]["Pid"])
            listener.settimeout(30)
            conn, _ = listener.accept()
            c.zygote = Zygote(conn)
            c.zygote.wait_ready(30)
        except Exception as exc:  # noqa: BLE001 - the Docker SDK raises many types: each becomes one ActionFailed
            self._retire(c)
            raise ActionFailed(f"the sandbox container did not start ({_short(exc)})") from None
        finally:
            listener.close()
            os.unlink(ctl)
        return c

    def _take(self, spec: RunSpec) -> _Container:
        if not spec.network:
            self.warm(spec)
            with self._lock:
                if self._pool:
                    return self._pool.pop(0)  # refilled after the run, not competing with it
        return self._create(spec)

    # -- run ---------------------------------------------------------------------------------

    def run(self, spec: RunSpec, layer: overlay.Layer, lower: str) -> RunResult:
        self.base()
        c = self._take(spec)
        try:
            layer.mount(lower, at=os.path.join(c.dir, "ws"))
            with open(os.path.join(c.dir, "in", "code"), "w", encoding="utf-8") as f:
                f.write(spec.code)
            os.chmod(os.path.join(c.dir, "in", "code"), 0o644)
            assert c.zygote is not None  # set when the container started
            try:
                result = c.zygote.run(spec, lambda: self._kill(c), fresh=False, reap=True)
            except SandboxGone as exc:  # the memory limit may have taken the waiting interpreter too
                if exc.result is None or not self._oom(c):
                    raise
                result = exc.result
                result.stopped = "memory"
            if result.stopped is None and self._oom(c):
                result.stopped = "memory"
            try:  # the engine that holds the container must still answer for the run to count
                self.client().api.ping()
            except Exception as exc:  # noqa: BLE001 - the Docker SDK raises many types: each becomes one ActionFailed
                raise ActionFailed(f"the Docker engine went away mid-run ({_short(exc)}); "
                                   "the run was killed and nothing was applied") from None
            result.limits_not_enforced = self.engine_gaps()
            return result
        finally:
            if c.pidfd >= 0:  # the run is over (every process of it dead): the container goes in the background
                try:
                    signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            layer.mounted = False  # the reaper unmounts it with the container
            self._retire(c, self.AFTER_RUN_DELAY)
            if not spec.network:
                self.warm(spec, self.AFTER_RUN_DELAY)

    def engine_gaps(self) -> dict[str, str]:
        """Limits the engine says it cannot apply (it then starts the container without them)."""
        if self._gaps is None:
            try:
                info = self.client().info()
            except Exception:  # noqa: BLE001 - the run itself reports an engine that went away
                return {}
            flags = {"memory": ("MemoryLimit", "SwapLimit"), "pids": ("PidsLimit",), "cpu": ("CpuCfsQuota",)}
            self._gaps = {limit: f"the Docker engine reports no {', '.join(k for k in keys if not info.get(k, True))} "
                                 "support (cgroup controller missing or not delegated to it)"
                          for limit, keys in flags.items() if not all(info.get(k, True) for k in keys)}
        return dict(self._gaps)

    def _oom(self, c: _Container) -> bool:
        for path in (f"/sys/fs/cgroup/memory/docker/{c.id}/memory.oom_control",
                     f"/sys/fs/cgroup/system.slice/docker-{c.id}.scope/memory.events",
                     f"/sys/fs/cgroup/docker/{c.id}/memory.events"):
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("oom_kill ") and int(line.split()[1]) > 0:
                            return True
                return False
            except OSError:
                continue
        return False

    def _kill(self, c: _Container) -> None:
        """Kill the container's pid 1: the kernel kills everything in its pid namespace first."""
        if c.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(c.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poll = select.poll()
        poll.register(c.pidfd, select.POLLIN)
        if not poll.poll(10_000):
            raise ActionFailed("the sandbox container did not die after SIGKILL; its effects are not applied")
        os.close(c.pidfd)
        c.pidfd = -1

    def _retire(self, c: _Container, delay: float = 0.0) -> None:
        with self._lock:
            self._dead.append(c)
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Timer(delay, self._reap)
                self._reaper.daemon = True
                self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._lock:
                if not self._dead:
                    self._reaper = None
                    return
                c = self._dead.pop(0)
            if not self._remove(c):
                with self._lock:
                    self._dead.append(c)
                    self._reaper = None
                return

    def _remove(self, c: _Container) -> bool:
        try:
            self.client().api.remove_container(c.id, force=True)
        except Exception as exc:  # noqa: BLE001 - any failure: reported by the return
            if "No such container" not in str(exc):
                return False
        if c.pidfd >= 0:
            os.close(c.pidfd)
            c.pidfd = -1
        if c.zygote is not None:
            c.zygote.close()
        overlay.umount(os.path.join(c.dir, "ws"))
        shutil.rmtree(c.dir, ignore_errors=True)
        return True

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the pool is full and no container is being started or removed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._filling and self._reaper is None and len(self._pool) >= self.pool_size:
                    return
            time.sleep(0.005)

    def close(self) -> None:
        """Remove every container of this backend (pooled, used, still filling)."""
        with self._lock:
            self._closed = True
        for _ in range(200):
            with self._lock:
                if not self._filling:
                    break
            time.sleep(0.01)
        reaper = self._reaper
        if reaper is not None:
            reaper.join(30)
        with self._lock:
            todo, self._pool, self._dead = self._pool + self._dead, [], []
        left = [c for c in todo if not self._remove(c)]
        with self._lock:
            self._dead.extend(left)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


BACKENDS = ("docker", "bwrap", "process")


def make(name: str, **kw: Any) -> Backend:
    if name == "docker":
        return DockerBackend(**{k: v for k, v in kw.items() if k in ("image", "pool_size", "base_url")})
    if name == "bwrap":
        return BwrapBackend(**{k: v for k, v in kw.items() if k in ("image", "root")})
    if name == "process":
        return ProcessBackend()
    raise ValueError(f"unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}")


def doctor(image: str = DEFAULT_IMAGE) -> dict[str, str | None]:
    """Each backend: None when it works on this machine, else why not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        backend = make(name, image=image, pool_size=0)
        try:
            out[name] = backend.unavailable()
        finally:
            backend.close()
    return out


# -- measuring which limits hold (goex doctor) ---------------------------------------------------

LIMIT_NAMES = {"memory": "memory", "pids": "pids", "cpu": "cpu", "network_off": "network off",
               "read_only_system": "read-only system", "no_root": "no root", "xattr_protection": "xattr protection",
               "modes": "modes"}

# Run in the sandbox: what the code can reach, as JSON on stdout. Files it manages to create
# outside the workspace are removed again (the unsafe backend reaches the host).
PROBE = r"""
import json, os, socket, time
r = {}
r['interfaces'] = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2).close(); r['reached'] = True
except OSError:
    r['reached'] = False
r['wrote'] = []
for path in ('/usr/goex-probe', '/etc/goex-probe', '/goex-probe', '/usr/bin/goex-probe'):
    try:
        open(path, 'x').close(); r['wrote'].append(path); os.unlink(path)
    except OSError:
        pass
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
r['uid'], r['euid'] = os.getuid(), os.geteuid()
r['caps'], r['nnp'] = int(status['CapEff'], 16), status.get('NoNewPrivs', '0').strip()
r['xattrs'] = []
for name in ('trusted.overlay.opaque', 'user.overlay.opaque'):
    try:
        os.setxattr('d', name, b'y'); r['xattrs'].append(name)
    except OSError:
        pass
open('d/new', 'w').write('n')
open('m', 'w').write('m'); os.chmod('m', 0o4777)
kids = []
try:
    for _ in range(FORKS):
        pid = os.fork()
        if pid == 0:
            time.sleep(30); os._exit(0)
        kids.append(pid)
except OSError:
    pass
r['forked'] = len(kids)
for pid in kids:
    os.kill(pid, 9)
print(json.dumps(r))
"""

# Four processes of 48 MiB each under a 64 MiB limit: only a limit on the whole run stops them.
MEMORY_PROBE = r"""
import os
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        b = bytearray(48 << 20); b[::4096] = b'x' * len(b[::4096]); os._exit(0)
    kids.append(pid)
done = sum(1 for pid in kids if os.waitpid(pid, 0)[1] == 0)
print(done * 48)
"""

CPU_PROBE = r"""
import os, time
t0 = time.monotonic()
while time.monotonic() - t0 < 1.0:
    pass
t = os.times()
print(t.user + t.system, time.monotonic() - t0)
"""

DANGEROUS_CAPS = {12: "net_admin", 16: "sys_module", 17: "sys_rawio", 19: "sys_ptrace", 21: "sys_admin",
                  27: "mknod", 0: "chown", 7: "setuid", 6: "setgid"}


def measure(backend: Backend) -> dict[str, dict[str, Any]]:
    """Which limits hold in `backend`, by running probes in it: limit -> {holds, detail}."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="goex-doctor-") as root:
        os.mkdir(os.path.join(root, "d"))
        with open(os.path.join(root, "d", "keep"), "w") as f:
            f.write("keep")
        ws = Workspace(root)
        try:
            code = PROBE.replace("FORKS", str(PIDS_MAX + 32))
            result, diff = _probe(backend, ws, code, memory_mb=512, cpus=1.0)
            try:
                seen = json.loads(result.stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise ActionFailed(f"the {backend.name} probe failed: "
                                   f"{result.stderr.decode(errors='replace')[-300:]}") from None
            out.update(_judge_probe(seen, diff, result))
            result, _ = _probe(backend, ws, MEMORY_PROBE, memory_mb=64, cpus=1.0)
            out["memory"] = _judge_memory(result)
            result, _ = _probe(backend, ws, CPU_PROBE, memory_mb=512, cpus=0.2)
            out["cpu"] = _judge_cpu(result)
        finally:
            ws.close()
    return {k: out[k] for k in LIMIT_NAMES}


def _probe(backend: Backend, ws: Workspace, code: str, memory_mb: int, cpus: float) -> tuple[RunResult, overlay.Diff]:
    st = os.fstat(ws.root_fd)
    spec = RunSpec("python", code, 20.0, False, memory_mb, st.st_uid, st.st_gid, caps=st.st_uid == 0, cpus=cpus)
    layer = overlay.Layer.create()
    try:
        layer.prepare(ws)
        with open(os.path.join(layer.dir, "code"), "w", encoding="utf-8") as f:
            f.write(code)
        result = backend.run(spec, layer, ws.root)
        return result, overlay.changes(layer, ws)
    finally:
        layer.remove()


def _limit(holds: bool, detail: str) -> dict[str, Any]:
    return {"holds": holds, "detail": detail}


def _judge_probe(seen: dict[str, Any], diff: overlay.Diff, result: RunResult) -> dict[str, dict[str, Any]]:
    out = {}
    others = [i for i in seen["interfaces"] if i != "lo"]
    offline = not others and not seen["reached"]
    out["network_off"] = _limit(offline, "only a loopback interface, 1.1.1.1 unreachable" if offline else
                                f"interfaces {', '.join(others) or 'lo'}; 1.1.1.1 "
                                f"{'reached' if seen['reached'] else 'unreachable'}")
    wrote = seen["wrote"]
    out["read_only_system"] = _limit(not wrote, f"the code created {', '.join(wrote)} (removed again)" if wrote
                                     else "creating files in /, /usr, /etc was refused")
    bad = [n for bit, n in sorted(DANGEROUS_CAPS.items()) if seen["caps"] >> bit & 1]
    kept_caps = [n for bit, n in ((1, "dac_override"), (3, "fowner")) if seen["caps"] >> bit & 1]
    nnp = seen["nnp"] == "1"
    out["no_root"] = _limit(seen["uid"] != 0 and seen["euid"] != 0 and not bad and nnp,
                            f"uid {seen['euid']}, capabilities: {', '.join(kept_caps + bad) or 'none'}, "
                            f"no-new-privileges {'on' if nnp else 'OFF'}")
    kept = not [c for c in diff.changes if c.parts[:1] == ("d",) and c.kind in ("deleted", "replaced")]
    forged = [x for x in seen["xattrs"] if x.startswith("trusted.")]
    effect = ("only trusted.overlay.* is read, out of its reach, and the folder's files stayed" if kept and not forged
              else "a forged marker changed what the run applies")
    out["xattr_protection"] = _limit(kept and not forged,
                                     f"the code could set {', '.join(seen['xattrs']) or 'no overlay xattr'}; {effect}")
    modes = [c.node.get("mode", 0) for c in diff.changes if c.parts == ("m",)]
    out["modes"] = _limit(bool(modes) and not modes[0] & overlay.REFUSED_BITS,
                          f"a file set to 4777 would land as {modes[0]:04o}" if modes else "the probe file is missing")
    forked, refused = seen["forked"], seen["forked"] < PIDS_MAX + 32
    why = result.limits_not_enforced.get("pids") or "no process limit"
    out["pids"] = _limit(refused, f"fork refused after {forked} processes (limit {PIDS_MAX})" if refused
                         else f"{forked} processes forked without refusal: {why}")
    return out


def _judge_memory(result: RunResult) -> dict[str, Any]:
    text = result.stdout.decode().strip()
    got = int(text) if text.isdigit() else 0
    stopped = result.stopped == "memory" or got < 4 * 48
    why = result.limits_not_enforced.get("memory")
    if stopped:
        return _limit(True, f"4 processes of 48 MiB under a 64 MiB limit were stopped"
                            f"{' (out of memory)' if result.stopped == 'memory' else f' after {got} MiB'}")
    return _limit(False, f"4 processes of 48 MiB all ran under a 64 MiB limit{': ' + why if why else ''}")


def _judge_cpu(result: RunResult) -> dict[str, Any]:
    try:
        used, wall = (float(x) for x in result.stdout.decode().split())
    except ValueError:
        return _limit(False, f"the CPU probe failed: {result.stderr.decode(errors='replace')[-200:]}")
    why = result.limits_not_enforced.get("cpu")
    holds = used < 0.5 * wall and not why
    detail = f"a busy loop under a 0.2-CPU quota used {used:.2f} s of CPU in {wall:.2f} s"
    return _limit(holds, detail + (f": {why}" if why else ""))


def report(image: str = DEFAULT_IMAGE) -> dict[str, dict[str, Any]]:
    """Per backend: whether it works here (and why not), and which limits hold, measured."""
    out: dict[str, dict[str, Any]] = {}
    for name in BACKENDS:
        backend = make(name, image=image, pool_size=0)
        try:
            why = backend.unavailable()
            entry: dict[str, Any] = {"works": why is None, "why": why, "unsafe": backend.unsafe, "limits": {},
                                     "root": _root_of(backend)}
            if why is None:
                try:
                    entry["limits"] = measure(backend)
                except (ActionFailed, OSError) as exc:
                    entry.update(works=False, why=f"the probe run failed: {exc}")
        finally:
            backend.close()
        out[name] = entry
    return out


def _root_of(backend: Backend) -> str:
    """What the backend's code sees as its system: the image, the image's root folder, or the host."""
    if isinstance(backend, DockerBackend):
        return f"image {backend.image}"
    if isinstance(backend, BwrapBackend):
        return f"root {backend.root}" if backend.uses_root else "the host's /usr (no image root: sandbox/build.sh)"
    return "the host"
