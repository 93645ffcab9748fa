"""The code adapter: `code.run` in a sandbox, its file effects journaled before they land.

The run is staged (see `Runtime._apply_staged`):

1. `stage`: the code runs on an overlay of the workspace (see `overlay.py`); the workspace itself
   is untouched. When every sandboxed process is dead, the upper layer is read: what the code
   created, changed or deleted, at a cost in proportion to those changes.
2. `capture` (of the staged run): a before-image of each of those workspace paths goes into the
   journal with the digests they will have, committed durably.
3. `commit`: only then the changes are copied into the workspace, without following links.

Undo restores the before-images (the file adapter's `restore` ops); conflicts compare the
digests. An interrupted run is reverted by recovery from the same capture.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from ...errors import ActionFailed, Refused
from ..base import Adapter, Applied, Coalesced, Context, Damage, GetBlob, Judged, Outcome, Prepared, PutBlob
from ..fs import tree
from ..fs.adapter import FileAdapter
from ..fs.workspace import Workspace, show
from . import backends, overlay
from .actions import CODE_ACTIONS, CodePreview, CodeRun

if TYPE_CHECKING:
    from ...journal.read import EntryDetail


class SandboxRefused(Refused):
    """The configured sandbox may not run code: the unsafe `process` backend was not enabled."""

    rule = "code.unsafe"


@dataclass
class StagedRun:
    output: dict[str, Any]
    capture: Callable[[PutBlob], dict[str, Any]]
    commit: Callable[[], None]
    abort: Callable[[], None]
    effects: "RunEffects | None" = None  # what committing would do, for the runtime to judge first


@dataclass
class RunEffects:
    """A finished run's file effects, as the file actions they amount to: judged by the runtime
    (path rules, protected paths, database files, budgets) before anything is copied in."""

    written: list[str] = field(default_factory=list)  # created or changed, new folders' contents included
    deleted: list[str] = field(default_factory=list)  # deleted or replaced, deleted folders' contents included
    modes: list[tuple[str, int]] = field(default_factory=list)  # folder mode changes, world-writable files
    files_deleted: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    overwrites: bool = False


class CodeAdapter(Adapter):
    prefix = "code"
    actions = CODE_ACTIONS
    preview = CodePreview
    staged = True
    judged_after_run = True

    @classmethod
    def create(cls, context: Context) -> "CodeAdapter":
        files = context.adapter("fs")
        assert isinstance(files, FileAdapter)
        return cls(context.workspace, files, context.settings.get("sandbox", "auto"),
                   allow_unsafe=bool(context.settings.get("allow_unsafe")),
                   **(context.settings.get("sandbox_options") or {}))

    def __init__(self, workspace: Workspace, files: FileAdapter, sandbox: str = "auto", *, allow_unsafe: bool = False,
                 image: str = backends.DEFAULT_IMAGE, pool_size: int = 2, max_output_bytes: int = 1 << 20,
                 docker_url: str | None = None, root: str | None = None):
        if sandbox not in ("auto",) + backends.BACKENDS:
            raise ValueError(f"unknown sandbox {sandbox!r}; choose auto, {', '.join(backends.BACKENDS)}")
        self.ws = workspace
        self.files = files
        self.sandbox = sandbox
        self.allow_unsafe = allow_unsafe
        self.image = image
        self.pool_size = pool_size
        self.max_output_bytes = max_output_bytes
        self.docker_url = docker_url
        self.root = root  # bwrap's root folder (default: the image's, see backends.image_root)
        self._backend: backends.Backend | None = None
        self._lock = threading.Lock()

    # -- backend -------------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        if self._backend is not None:
            return self._backend.name
        return self.sandbox if self.sandbox != "auto" else "auto"

    def backend(self) -> backends.Backend:
        with self._lock:
            if self._backend is None:
                self._backend = self._choose()
            return self._backend

    def _choose(self) -> backends.Backend:
        kw = {"image": self.image, "pool_size": self.pool_size, "base_url": self.docker_url, "root": self.root}
        if self.sandbox != "auto":
            b = backends.make(self.sandbox, **kw)
            why = b.unavailable()
            if why:
                b.close()
                raise ActionFailed(f"the {self.sandbox} sandbox does not work here: {why} "
                                   "(`goex doctor` checks every backend)")
            return b
        reasons = []
        for name in backends.AUTO_ORDER:
            b = backends.make(name, **kw)
            why = b.unavailable()
            if why is None:
                return b
            b.close()
            reasons.append(f"{name}: {why}")
        raise ActionFailed("no sandbox works here (" + "; ".join(reasons) + "); `goex doctor` says more")

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    # -- protocol ------------------------------------------------------------------------------

    def prepare(self, action: CodeRun) -> Prepared:
        unsafe = self.sandbox == "process"
        if unsafe and not self.allow_unsafe:
            raise SandboxRefused("the process backend runs code with no isolation; enable it explicitly "
                                 "(Runtime(sandbox='process', allow_unsafe=True), CLI --sandbox process --unsafe)")
        preview = {"language": action.language, "network": action.network, "timeout_s": action.timeout_s,
                   "memory_mb": action.memory_mb, "backend": self.backend_name, "unsafe": unsafe}
        return Prepared(action, ["."], preview, True, {})

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        return {"staged": True, "ops": [{"op": "code"}], "backend": self.backend_name,
                "unsafe": prepared.preview["unsafe"]}

    def apply(self, prepared: Prepared) -> Applied:  # runs are always staged
        staged = self.stage(prepared)
        staged.abort()
        return Applied(staged.output, {})

    def stage(self, prepared: Prepared) -> StagedRun:
        action: CodeRun = prepared.action
        if os.fstatvfs(self.ws.root_fd).f_flag & os.ST_RDONLY:
            raise ActionFailed(f"code.run: the workspace {self.ws.root} is on a read-only file system; "
                               "nothing was run")
        backend = self.backend()
        layer, result = self._launch(backend, self.ws, action)
        try:
            diff = overlay.changes(layer, self.ws)
        except BaseException:
            layer.remove()
            raise
        files: dict[str, list[str]] = {"created": [], "changed": [], "deleted": []}
        effects = RunEffects()
        for change in diff.changes:
            key = {"created": "created", "deleted": "deleted"}.get(change.kind, "changed")
            files[key].append(show(change.parts))
            _add_effects(effects, self.ws.root, change)
        removed = effects.files_deleted  # files (not folders) the run deleted or replaced, folders' contents counted
        output: dict[str, Any] = {
            "exit_code": result.exit_code, "stdout": result.stdout.decode("utf-8", "replace"),
            "stderr": result.stderr.decode("utf-8", "replace"), "duration_s": round(result.duration_s, 4),
            "stopped": result.stopped, "truncated": result.truncated, "backend": backend.name,
            "files": files, "files_deleted": removed,
        }
        if backend.unsafe:
            output["unsafe"] = True
        if diff.skipped:
            output["not_applied"] = diff.skipped
        if diff.modes_stripped:  # refused mode bits, stripped by the layer's reading
            output["modes_stripped"] = diff.modes_stripped
        if diff.setuid_removed:
            output["setuid_removed"] = diff.setuid_removed
        if result.limits_not_enforced:
            output["limits_not_enforced"] = result.limits_not_enforced

        def capture(put_blob: PutBlob) -> dict[str, Any]:
            ops, after = [], {}
            for change in diff.changes:
                path = show(change.parts)
                if change.kind == "mode":
                    with self.ws.parent(change.parts) as dfd:
                        ops.append({"op": "restore", "path": path, "node": tree.shallow(dfd, change.parts[-1])})
                    after[path] = f"d{change.node['mode']:o}"
                else:
                    ops.append({"op": "restore", "path": path, "node": self.files._capture(change.parts, put_blob)})
                    after[path] = overlay.digest(change.node)
            ops.reverse()
            return {"ops": ops, "after": after, "files": files, "run": _journaled_run(output)}

        def commit() -> None:
            try:
                for change in diff.changes:
                    overlay.apply(self.ws, change)
            finally:
                layer.remove()

        return StagedRun(output, capture, commit, layer.remove, effects)

    def describe(self, entry: "EntryDetail") -> str:
        """Exit code, file effects, stdout and stderr, as journaled when the run was captured."""
        run = next((r["plan"].get("run") for r in entry.records if r.get("kind") == "captured"), None)
        files = (next((r["plan"].get("files") for r in entry.records if r.get("kind") == "captured"), None)
                 or entry.preview.get("files") or {})
        lines = [entry.error] if entry.error else []
        if run:
            stopped = f", stopped: {run['stopped']}" if run.get("stopped") else ""
            lines.append(f"exit code {run['exit_code']} ({run.get('backend', '?')}, {run.get('duration_s', 0):g} s"
                         f"{stopped})")
        lines += [f"files {kind}: {', '.join(paths)}" for kind, paths in files.items() if paths]
        for stream in ("stdout", "stderr"):
            if run and run.get(stream):
                cut = " (cut)" if run.get(f"{stream}_cut") else ""
                lines += [f"--- {stream}{cut} ---", run[stream].rstrip("\n")]
        return "\n".join(lines) or f"{entry.type}: nothing journaled about its run"

    def _launch(self, backend: backends.Backend, ws: Workspace, action: CodeRun) -> tuple[overlay.Layer,
                                                                                           backends.RunResult]:
        """Run `action` on a fresh overlay of `ws`; the layer (kept for reading) and the result."""
        st = os.fstat(ws.root_fd)
        spec = backends.RunSpec(action.language, action.code, action.timeout_s, action.network, action.memory_mb,
                                st.st_uid, st.st_gid, caps=st.st_uid == 0, max_output=self.max_output_bytes)
        layer = overlay.Layer.create()
        try:
            layer.prepare(ws)
            with open(os.path.join(layer.dir, "code"), "w", encoding="utf-8") as f:
                f.write(action.code)
            try:
                return layer, backend.run(spec, layer, ws.root)
            except OSError as exc:
                raise ActionFailed(f"code.run: the {backend.name} sandbox failed: {exc}") from None
        except BaseException:
            layer.remove()
            raise

    def run_detached(self, folder: str, language: Literal["python", "bash"], code: str,
                     timeout_s: float = 60) -> dict[str, Any]:
        """Run `code` in this adapter's sandbox (no network) over an overlay of `folder`, a folder
        outside the workspace; whatever it writes is discarded and nothing is journaled. For
        graders that work on a copy. Returns exit_code, stdout, stderr, stopped, backend."""
        ws = Workspace(folder)
        backend = self.backend()
        try:
            layer, result = self._launch(backend, ws, CodeRun(type="code.run", language=language, code=code,
                                                              timeout_s=float(timeout_s)))
            layer.remove()
        finally:
            ws.close()
        return {"exit_code": result.exit_code, "stdout": result.stdout.decode("utf-8", "replace"),
                "stderr": result.stderr.decode("utf-8", "replace"), "stopped": result.stopped,
                "backend": backend.name}

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        captured = plan.get("captured")
        if not captured:
            return []
        return self.files.conflicts({}, captured["after"])

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> None:
        captured = plan.get("captured")
        if captured:
            self.files.revert(captured, None, get_blob, force)

    def coalesce(self, plan: dict[str, Any], after: dict[str, Any]) -> Coalesced | None:
        """A run's file changes are undone with file actions' when their ops allow it."""
        captured = plan.get("captured")
        if not isinstance(captured, dict) or not isinstance(captured.get("after"), dict):
            return None
        return self.files.coalesce(captured, captured["after"])

    def judge(self, prepared: Prepared, staged: Any) -> Judged:
        """A finished run's file effects, as the file actions they amount to (rules, protected
        paths, database files, budgets judge them before anything is copied in)."""
        effects: RunEffects = staged.effects or RunEffects()
        checks: list[tuple[str, list[str], dict[str, Any]]] = []
        if effects.written:
            checks.append(("fs.write", effects.written, {"paths": effects.written,
                                                         "bytes_written": effects.bytes_written,
                                                         "overwrites": effects.overwrites}))
        if effects.deleted:
            checks.append(("fs.delete", effects.deleted, {"paths": effects.deleted,
                                                          "files_deleted": effects.files_deleted,
                                                          "bytes_deleted": effects.bytes_deleted}))
        for path, mode in effects.modes:
            checks.append(("fs.chmod", [path], {"paths": [path], "mode": f"{mode:04o}",
                                                "world_writable": bool(mode & 0o002), "setuid": bool(mode & 0o6000)}))
        preview = {"files": staged.output.get("files", {}), "files_deleted": effects.files_deleted,
                   "bytes_deleted": effects.bytes_deleted, "bytes_written": effects.bytes_written}
        changed = effects.written + effects.deleted + [p for p, _ in effects.modes]
        return Judged(checks, changed, preview, _effects_summary(effects))

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        return self.files.spends(action_type, preview)  # a run's preview holds its file effects, once it ran

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        return self.files.destroys(action_type, preview)

    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        """Interrupted: before its capture record nothing reached the workspace; after it, the
        before-images are put back (idempotent)."""
        self.revert(plan, None, get_blob, True)
        return "reverted", {}, ""

    def summarize(self, prepared: Prepared) -> str:
        a: CodeRun = prepared.action
        p = prepared.preview
        head = "\n".join(a.code.splitlines()[:40])
        return (f"run {a.language} code in the {p['backend']} sandbox, network {'ON' if a.network else 'off'}, "
                f"timeout {a.timeout_s:g} s, memory {a.memory_mb} MiB:\n{head}")


def _effects_summary(effects: RunEffects, limit: int = 20) -> str:
    """A finished run's file effects, for a person deciding whether they may land."""
    lines = [f"its effects: {len(effects.written)} paths written ({effects.bytes_written:,} bytes), "
             f"{effects.files_deleted} files deleted ({effects.bytes_deleted:,} bytes)"]
    for verb, paths in (("write", effects.written), ("delete", effects.deleted)):
        lines += [f"  {verb} {p}" for p in paths[:limit]]
        if len(paths) > limit:
            lines.append(f"  ... and {len(paths) - limit} more to {verb}")
    lines += [f"  mode {m:04o} {p}" for p, m in effects.modes[:limit]]
    return "\n".join(lines)


def _is_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _add_effects(effects: RunEffects, root: str, change: overlay.Change) -> None:
    path = show(change.parts)
    if change.kind == "mode":
        effects.modes.append((path, change.node["mode"]))
        return
    if change.kind in ("deleted", "replaced"):
        _removed(effects, os.path.join(root, *change.parts), path)
    if change.kind == "deleted":
        return
    effects.overwrites = effects.overwrites or change.kind != "created"
    for sub, node in _new_nodes(path, change.node):
        effects.written.append(sub)
        if node["k"] == "f":
            effects.bytes_written += int(node.get("size") or 0)
        if node["k"] != "l" and node.get("mode", 0) & 0o002:  # a mode fs.chmod would be judged on
            effects.modes.append((sub, node["mode"]))


def _new_nodes(path: str, node: dict[str, Any]) -> Any:
    yield path, node
    for name, child in node.get("children", {}).items():
        yield from _new_nodes(f"{path}/{name}", child)


def _removed(effects: RunEffects, full: str, path: str) -> None:
    """Count and list what the workspace path `full` is or holds (symlinks not followed)."""
    try:
        st = os.lstat(full)
    except OSError:
        return
    effects.deleted.append(path)
    if not stat.S_ISDIR(st.st_mode):
        effects.files_deleted += 1
        effects.bytes_deleted += st.st_size
        return
    for top, dirs, names in os.walk(full):
        rel = path + top[len(full):]
        effects.deleted.extend(f"{rel}/{n}" for n in dirs + names)
        for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:  # files, links counted
            effects.files_deleted += 1
            try:
                effects.bytes_deleted += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass


_JOURNALED_OUTPUT = 64 << 10  # characters of stdout and stderr kept in the journal, each


def _journaled_run(output: dict[str, Any]) -> dict[str, Any]:
    """What the journal keeps of a run's result, for review: exit code, how it ended, and the
    first 64 Ki characters of stdout and stderr."""
    run = {k: output.get(k) for k in ("exit_code", "stopped", "duration_s", "backend")}
    for stream in ("stdout", "stderr"):
        text = output.get(stream) or ""
        run[stream] = text[:_JOURNALED_OUTPUT]
        if len(text) > _JOURNALED_OUTPUT:
            run[f"{stream}_cut"] = True
    return run
