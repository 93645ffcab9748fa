"""The interpreter that waits in a warm sandbox; each run is a fresh child forked from it.

This file runs INSIDE the sandbox, on the sandbox's own Python (standard library only), started
as `python3 -c BOOT <this source>` (see `backends.ZYGOTE_COMMAND`): BOOT executes this source in
a namespace of its own, and in the child, when this source returns, executes the run's code in
the untouched `__main__` module, exactly as `python3 -c` would (the same `sys.argv`, `sys.path`,
`__main__` globals and traceback lines). Python's start-up is paid before the request comes.

It talks to goex over an AF_UNIX SOCK_SEQPACKET socket (fd 3, or `/sandbox/ctl`, which goex
listens on): it says `ready`, then for each request `uid=.. gid=.. caps=0|1 fresh=0|1
lang=python|bash reap=0|1 rlimits=which:value,...` carrying the run's stdout and stderr pipes
(SCM_RIGHTS), it forks a child and answers `exit <wait status>` when
the child ended (with `reap`, as the sandbox's pid 1: once every process the run left was killed
and reaped too), or `fail <why>` when the child could not be prepared (the code never ran).

The child, before any of the run's code: a session of its own (in the sandbox's cgroup, which
holds the run's limits, since the interpreter waits there); with
`fresh`, new mount and IPC namespaces with an empty /tmp and /dev/shm (so nothing a run leaves
there, nor System V or POSIX IPC objects, reaches a later run of the same sandbox); the pipes as
stdout and stderr, /dev/null as stdin, every other descriptor closed; the rlimits; /workspace as
its folder; then the privilege drop `setpriv` did: supplementary groups cleared, the run's uid
and gid, capability bounding set, inheritable and ambient sets reduced to DAC_OVERRIDE and
FOWNER when `caps` (a root-owned workspace) and emptied otherwise, no-new-privileges. Modules this
file imported are dropped from `sys.modules`, so the run finds the modules a fresh interpreter
has. The parent holds no state of a run: it keeps nothing of a request once it answered.

When goex goes away (the socket closes), it exits at once; mid-run, it first kills every process
of the run's user, so the sandbox ends (bwrap's init exits once it has no child left).
"""

import os
import sys

_BEFORE = set(sys.modules)

import _socket  # noqa: E402 - the modules present before these are what the run keeps
import ctypes  # noqa: E402
import gc  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402

_libc = ctypes.CDLL(None, use_errno=True)
_CAPSET = {"x86_64": 126, "aarch64": 91, "riscv64": 91, "ppc64le": 184, "s390x": 185}.get(os.uname().machine)
_PR_CAPBSET_DROP, _PR_SET_KEEPCAPS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 24, 8, 38, 47
_PR_CAP_AMBIENT_RAISE, _PR_CAP_AMBIENT_CLEAR_ALL = 2, 4
_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_SLAVE = 2, 4, 16384, 1 << 19
_KEPT_CAPS = (1, 3)  # CAP_DAC_OVERRIDE, CAP_FOWNER
with open("/proc/sys/kernel/cap_last_cap") as _f:
    _LAST_CAP = int(_f.read())


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), what)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def _drop_privileges(uid: int, gid: int, caps: bool) -> None:
    if uid == 0:
        raise PermissionError("the run's code never runs as root")
    kept = _KEPT_CAPS if caps else ()
    for cap in range(_LAST_CAP + 1):  # needs CAP_SETPCAP, so before the capabilities go
        if cap not in kept:
            _prctl(_PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")
    if kept:
        _prctl(_PR_SET_KEEPCAPS, 1, "keep capabilities across the uid change")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    mask = sum(1 << c for c in kept)
    data = (_CapData * 2)(_CapData(mask, mask, mask), _CapData(0, 0, 0))
    if _CAPSET is None:
        raise OSError(0, f"capset: unknown system call number on {os.uname().machine}")
    _check(_libc.syscall(_CAPSET, ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities")
    for cap in kept:
        _check(_libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_RAISE), ctypes.c_ulong(cap),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)), f"raise ambient capability {cap}")
    if kept:
        _prctl(_PR_SET_KEEPCAPS, 0, "stop keeping capabilities")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "set no-new-privileges")


def _fresh_namespaces() -> None:
    """New mount and IPC namespaces: an empty /tmp and /dev/shm, no IPC object of an earlier run."""
    _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC), "unshare mount and IPC namespaces")
    _mount("none", "/", None, _MS_REC | _MS_SLAVE, None)
    for where in ("/tmp", "/dev/shm"):
        _mount("tmpfs", where, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755")


def _prepare(req: dict[str, str], fds: list[int], report: int) -> None:
    """In the child: everything between the fork and the run's code (see the module's doc)."""
    os.setsid()
    out, err = fds
    if req["fresh"] == "1":
        _fresh_namespaces()
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.closerange(3, report)
    os.closerange(report + 1, 1 << 20)
    for item in filter(None, req["rlimits"].split(",")):
        which, value = (int(x) for x in item.split(":"))
        resource.setrlimit(which, (value, value))
    os.chdir("/workspace")
    try:  # when the run exhausts its memory, the kernel kills the run's processes, never the waiting interpreter
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    _drop_privileges(int(req["uid"]), int(req["gid"]), req["caps"] == "1")
    if req["lang"] == "bash":
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; a fresh program does not
            signal.signal(sig, signal.SIG_DFL)
        os.execve("/bin/bash", ["bash", "/sandbox/code"], dict(os.environ))


def _recv(sock: "_socket.socket") -> tuple[dict[str, str], list[int]] | None:
    msg, anc, _, _ = sock.recvmsg(4096, _socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data) - 3, 4)]
    if not msg:
        return None
    return dict(item.split("=", 1) for item in msg.decode().split()), fds


def _run(sock: "_socket.socket", req: dict[str, str], fds: list[int]) -> bool:
    """Fork the run's child; True in the child (which goes on to run the code), False once the
    parent answered."""
    r, w = os.pipe()
    gc.freeze()  # the child's collections then leave these objects' pages unwritten (no copy-on-write)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _prepare(req, fds, w)
        except BaseException as exc:  # noqa: BLE001 - reported to goex; the code never runs
            os.write(w, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:1000])
            os._exit(125)
        os.close(w)
        for name in set(sys.modules) - _BEFORE:
            del sys.modules[name]
        return True
    os.close(w)
    for fd in fds:
        os.close(fd)
    why = b""
    while chunk := os.read(r, 1000):
        why += chunk
    os.close(r)
    if not _wait(sock, pid):  # goex went away (or broke the protocol): the run ends, and the sandbox
        _kill_all(int(req["uid"]))
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    if req["reap"] == "1":
        _kill_all(int(req["uid"]))
        while True:  # as the sandbox's pid 1, every process ends up a child: reap until none is left
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    sock.send(b"fail " + why if why else f"exit {status}".encode())
    return False


def _wait(sock: "_socket.socket", pid: int) -> bool:
    """Until `pid` ended (True), or until the socket stirs first (False)."""
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([sock.fileno(), pidfd], [], [])
    ended = pidfd in ready
    os.close(pidfd)
    return ended


def _kill_all(uid: int) -> None:
    """Kill every process of the run's user in this pid namespace: from a child that becomes
    that user (this interpreter may not signal it otherwise), as kill(-1) spares only the caller
    and pid 1."""
    for _ in range(3000):  # a fork bomb holds every process slot: one comes free as its processes come and go
        try:
            killer = os.fork()
            break
        except BlockingIOError:
            select.select([], [], [], 0.001)
    else:  # none did: the sandbox's own end kills them (the container goes, the cgroup is killed)
        return
    if killer == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(killer, 0)


def serve() -> None:
    fd = int(os.environ.pop("GOEX_CTL_FD", "-1"))
    if fd >= 0:
        sock = _socket.socket(fileno=fd)
    else:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        sock.connect("/sandbox/ctl")
    os.set_inheritable(sock.fileno(), False)
    sock.send(b"ready")
    while True:
        got = _recv(sock)
        if got is None:
            os._exit(0)
        if _run(sock, *got):
            sock.detach()  # its descriptor is closed already
            return


if __name__ == "goex-zygote":  # as the sandbox starts it (never when goex imports this module)
    serve()
