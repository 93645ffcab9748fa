"""Runtime and Session: every action goes prepare -> decide -> journal -> apply -> report.

The journal is the only record. Undo, recovery, the log and the spans all read from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from .actions import DEFAULT_MAX_ACTION_BYTES, action_to_json, parse_action
from .adapters.base import Adapter, Prepared
from .adapters.code.adapter import CodeAdapter, RunEffects, SandboxRefused
from .adapters.fs.adapter import FileAdapter
from .adapters.fs.workspace import Workspace
from .adapters.http.adapter import CompensationFailed, HostRefused, HttpAdapter, HttpConfig, OutcomeUnknown
from .adapters.http.secrets import SecretRefused
from .adapters.sql.adapter import SqlAdapter, SqlRefused, parse_databases
from .errors import (ActionError, ActionFailed, GoexError, JournalCorrupt, PathRefused, PolicyDenied, RecoveryNeeded,
                     UndoConflict)
from .journal.store import CHUNK, APPLIED, Journal, Transaction, checkpoint_id, entry_id, entry_seq
from .journal.verify import VerifyReport, verify
from .policy import ALLOW, BUDGETS, PREVIEW_FIELDS, Decision, Policy, RuleMatch, glob_regex, load_policy, usage
from .telemetry import tracer as make_tracer

REFUSALS = (PathRefused, HostRefused, SecretRefused, SqlRefused, SandboxRefused)  # well-formed actions the runtime will not run
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")  # a SQLite database's own files: SQLite replays them on open
_INLINE_LIMIT = 4096  # action strings longer than this are journaled as blobs


@dataclass
class Result:
    """What one action did. `ok` is False when it was refused or failed; `error` says why."""

    ok: bool
    entry_id: str | None
    output: Any = None
    error: str | None = None
    status: str = APPLIED
    session: str | None = None
    type: str | None = None
    decision: Decision | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "ok": self.ok, "entry_id": self.entry_id, "session": self.session, "type": self.type,
            "status": self.status, "output": self.output, "error": self.error,
            "decision": d.verdict if d else None, "rules": d.rules if d else [],
        }

    def raise_for_error(self) -> "Result":
        """Raise `PolicyDenied` or `ActionFailed` unless the action succeeded; returns self."""
        if self.ok:
            return self
        if self.status == "denied":
            raise PolicyDenied(self.error or "refused", self.decision.rules if self.decision else [], self.entry_id)
        raise ActionFailed(self.error or "failed", self.entry_id)


@dataclass(frozen=True)
class ConfirmationRequest:
    """What an approver is asked: an action a rule sends to confirmation, and what it would do."""

    session: str
    actor: str
    type: str
    targets: list[str]
    decision: Decision
    preview: dict[str, Any]
    summary: str


Approver = Callable[[ConfirmationRequest], bool]


@dataclass
class RecoveryReport:
    """What `recover` did to each interrupted entry: 'reverted', 'undone', or 'error: …'."""

    outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(v.startswith("error") for v in self.outcomes.values())


class Runtime:
    """The workspace an agent may touch, its journal, and the policy that guards it.

    `root`: the folder actions are confined to. `journal`: where the journal lives (default
    `<root>/.goex`; actions can never reach it). `policy`: a shipped pack name, a YAML path or a
    `Policy`. `durability`: 'fsync' (entries survive power loss before the effect happens) or
    'process' (they survive a killed process; much faster, for training loops). `http`: hosts,
    compensations and secrets for `http.request` actions (none allowed by default). `approver`:
    who answers actions a rule sends to confirmation: a callable taking a `ConfirmationRequest`
    and returning True or False, or "pending" to park them for `approve` / `reject`; with none,
    they are refused. `protected`: path globs (a task's tests, say) no action may change.
    `databases`: names for `sql.execute`, e.g. `{"main": "sqlite:///app.db"}` (relative SQLite
    paths are inside the root). `sandbox`: where `code.run` executes: "auto" (docker if it
    works here, else bwrap), "docker", "bwrap", or "process" (no isolation: refused unless
    `allow_unsafe=True`, and journaled as unsafe). `sandbox_options`: `image`, `pool_size`
    (warm containers), `max_output_bytes`, `docker_url`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        journal: str | os.PathLike[str] | None = None,
        policy: "str | Path | Policy" = "default",
        durability: str = "fsync",
        tracer_provider: Any = None,
        max_action_bytes: int = DEFAULT_MAX_ACTION_BYTES,
        http: HttpConfig | None = None,
        approver: "Approver | str | None" = None,
        protected: "list[str] | tuple[str, ...]" = (),
        databases: dict[str, str] | None = None,
        sandbox: str = "auto",
        allow_unsafe: bool = False,
        sandbox_options: dict[str, Any] | None = None,
    ):
        root_path = Path(root)
        if not root_path.is_dir():
            raise GoexError(f"workspace root {root_path} is not an existing folder; create it first")
        self.root = root_path.resolve()
        folder = (Path(journal) if journal is not None else self.root / ".goex").resolve()
        if folder == self.root or self.root.is_relative_to(folder):
            raise GoexError(f"the journal folder {folder} cannot be the workspace root or hold it: actions "
                            "could reach it. Keep it in a folder of its own (default: ROOT/.goex)")
        self.policy = load_policy(policy)
        self.journal = Journal(Path(journal) if journal is not None else self.root / ".goex", durability=durability)
        self.workspace = Workspace(self.root, hidden=self.journal.folder)
        self.max_action_bytes = max_action_bytes
        self._tracer = make_tracer(tracer_provider)
        self._http = HttpAdapter(http)
        self._adapters: dict[str, Adapter] = {"fs": FileAdapter(self.workspace), "http": self._http,
                                              "sql": SqlAdapter(parse_databases(databases, self.root),
                                                                 self.journal.read_blob, self.workspace)}
        self._adapters["code"] = CodeAdapter(self.workspace, self._adapters["fs"], sandbox,  # type: ignore[arg-type]
                                             allow_unsafe=allow_unsafe, **(sandbox_options or {}))
        self._stuck = False  # an interrupted entry could not be reverted: act on nothing until it is
        if approver is not None and approver != "pending" and not callable(approver):
            raise ValueError("approver is a callable, 'pending', or None")
        self.approver = approver
        self._usage: dict[str, dict[str, int]] = {}  # budget spent per session, as of journal record _usage_seq
        self._usage_seq = 0
        sql: SqlAdapter = self._adapters["sql"]  # type: ignore[assignment]
        self._database_files = {f"{db.inside}{suffix}".lower(): db.name for db in sql.databases.values()
                                if db.kind == "sqlite" and db.inside for suffix in SQLITE_SIDECARS}
        self.protected = tuple(protected)
        self._protected = [(glob_regex(g), _literal_prefix(g)) for g in self.protected]
        self._lock = threading.RLock()

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()
        self._adapters["sql"].close()  # type: ignore[attr-defined]
        self._adapters["code"].close()  # type: ignore[attr-defined]
        self.workspace.close()
        self.journal.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def session(self, actor: str = "agent", session_id: str | None = None) -> "Session":
        """A new session, or the existing one with `session_id` to go on with it."""
        return Session(self, session_id or f"s-{secrets.token_hex(5)}", actor)

    # -- the action pipeline -------------------------------------------------------------------

    def _execute(self, session: "Session", action: Any, approval: dict[str, Any] | None = None) -> Result:
        model = parse_action(action, max_bytes=self.max_action_bytes)
        adapter = self._adapters[model.type.split(".", 1)[0]]
        with self._tracer.start_as_current_span(f"goex {model.type}") as span:
            with self.journal.exclusive():
                self._ensure_consistent()
                try:
                    result = self._run(session, model, adapter, approval)
                except GoexError:
                    raise
                except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as exc:
                    # input a library refused before anything was applied: malformed, and its text redacted
                    why = (f"{type(exc).__name__}: {self._http.secrets.redact(str(exc))}"  # type: ignore[attr-defined]
                           if not isinstance(exc, RecursionError) else "it reaches a folder tree or value nested too deeply")
                    raise ActionError(f"{model.type}: cannot be run as given ({why}); nothing was applied") from None
            if span.is_recording():
                span.set_attributes({
                    "goex.action.type": model.type,
                    "goex.action.target": self._http.secrets.redact(", ".join(model.targets())),  # type: ignore[attr-defined]
                    "goex.decision": result.decision.verdict if result.decision else "allow",
                    "goex.entry.id": result.entry_id or "",
                    "goex.session.id": session.id,
                    "goex.actor": session.actor,
                    "goex.status": result.status,
                    "goex.entry.hash": self.journal.head()[1],
                })
                if result.decision and result.decision.rules:
                    span.set_attribute("goex.rules", result.decision.rules)
                if not result.ok:
                    span.set_attribute("goex.error", result.error or "")
        return result

    def _run(self, session: "Session", model: BaseModel, adapter: Adapter, approval: dict[str, Any] | None) -> Result:
        def refused(exc: Any, targets: list[str]) -> Result:
            decision = Decision("deny", (RuleMatch(exc.rule, "deny", "severe", 1.0, exc.reason),))
            eid = self._journal_outcome(session, model, targets, decision, "denied", error=str(exc))
            return Result(False, eid, error=str(exc), status="denied", session=session.id, type=model.type,
                          decision=decision)

        def failed(exc: Exception, targets: list[str], decision: Decision = ALLOW) -> Result:
            eid = self._journal_outcome(session, model, targets, decision, "failed", error=str(exc))
            return Result(False, eid, error=str(exc), status="failed", session=session.id, type=model.type,
                          decision=decision)

        spelled = model.targets()  # type: ignore[attr-defined]
        try:
            prepared = adapter.prepare(model)
        except REFUSALS as exc:
            return refused(exc, spelled)
        except ActionFailed as exc:
            return failed(exc, spelled)
        decision = self._decide(session, model.type, prepared)
        spent = usage(model.type, prepared.preview)
        if approval is not None and "entry" in approval:
            reparked = self._recheck_approval(session, model, prepared, decision, approval)
            if reparked is not None:
                return reparked
        if decision.verdict == "confirm" and approval is None:
            answer = self._ask(session, model, adapter, prepared, decision)
            if answer is None:
                eid = self._journal_outcome(session, model, prepared.targets, decision, "awaiting_approval",
                                            preview=prepared.preview,
                                            parked={"policy": self.policy.source, "protected": list(self.protected)})
                return Result(False, eid, error=f"needs confirmation ({decision.reason}); approve it with "
                                                f"`goex approve --root DIR {eid}` or reject it with "
                                                f"`goex reject --root DIR {eid}`",
                              status="awaiting_approval", session=session.id, type=model.type, decision=decision)
            if answer:
                approval = {"by": "approver"}
        if decision.verdict == "deny" or (decision.verdict == "confirm" and approval is None):
            error = f"refused by policy: {decision.reason}"
            if decision.verdict == "confirm":
                error += (" (rejected by the approver)" if self.approver is not None else
                          " (needs confirmation, and no approver is configured)")
            elif not any(m.decision == "deny" for m in decision.matches):
                error += " (the pack refuses what needs confirmation)"
            eid = self._journal_outcome(session, model, prepared.targets, decision, "denied", error=error,
                                        preview=prepared.preview)
            return Result(False, eid, error=error, status="denied", session=session.id, type=model.type,
                          decision=decision)
        extra = {"usage": spent, **({"approval": approval} if approval else {})}
        if not prepared.effect:
            try:
                applied = adapter.apply(prepared)
            except REFUSALS as exc:
                return refused(exc, prepared.targets)
            except ActionFailed as exc:
                return failed(exc, prepared.targets, decision)
            eid = self._journal_outcome(session, model, prepared.targets, decision, APPLIED, after=applied.after,
                                        **extra)
            return Result(True, eid, applied.output, session=session.id, type=model.type, decision=decision)
        if isinstance(adapter, CodeAdapter):
            return self._run_code(session, model, adapter, prepared, decision, refused, failed, extra)
        return self._apply(session, model, adapter, prepared, decision, refused, failed, extra)

    def _run_code(self, session: "Session", model: BaseModel, adapter: CodeAdapter, prepared: Prepared,
                  decision: Decision, refused: Callable[..., Result], failed: Callable[..., Result],
                  extra: dict[str, Any]) -> Result:
        """A run's file effects are known once it ran: they are judged as the file actions they
        amount to (rules, protected paths, database files, budgets) before anything is copied in."""
        try:
            staged = adapter.stage(prepared)
        except REFUSALS as exc:
            return refused(exc, prepared.targets)
        except ActionFailed as exc:
            return failed(exc, prepared.targets, decision)
        except Exception as exc:  # noqa: BLE001 - nothing reached the workspace
            return failed(ActionFailed(f"{model.type}: {exc!r}"), prepared.targets, decision)
        try:
            effects = staged.effects or RunEffects()
            prepared.preview = {**prepared.preview, "files": staged.output.get("files", {}),
                                "files_deleted": effects.files_deleted, "bytes_deleted": effects.bytes_deleted,
                                "bytes_written": effects.bytes_written}
            spent = usage(model.type, prepared.preview)
            judged = self._judge_run(session, decision, effects, spent)
            error = self._run_refusal(session, model, adapter, prepared, decision, judged, effects)
        except BaseException:
            staged.abort()
            raise
        if error is not None:
            staged.abort()
            eid = self._journal_outcome(session, model, prepared.targets, judged, "denied", error=error,
                                        preview=prepared.preview)
            return Result(False, eid, error=error, status="denied", session=session.id, type=model.type,
                          decision=judged)
        return self._apply(session, model, adapter, prepared, judged, refused, failed, {**extra, "usage": spent},
                           staged=staged)

    def _judge_run(self, session: "Session", decision: Decision, effects: RunEffects, spent: dict[str, int]) -> Decision:
        """The decision on a finished run: its own rules plus those of the file actions it amounts to."""
        checks: list[tuple[str, list[str], dict[str, Any]]] = []
        if effects.written:
            checks.append(("fs.write", effects.written, {"paths": effects.written, "bytes_written": effects.bytes_written,
                                                         "overwrites": effects.overwrites}))
        if effects.deleted:
            checks.append(("fs.delete", effects.deleted, {"paths": effects.deleted, "files_deleted": effects.files_deleted,
                                                          "bytes_deleted": effects.bytes_deleted}))
        for path, mode in effects.modes:
            checks.append(("fs.chmod", [path], {"paths": [path], "mode": f"{mode:04o}",
                                                "world_writable": bool(mode & 0o002), "setuid": bool(mode & 0o6000)}))
        matches = list(decision.matches)
        seen = {m.id for m in matches}
        for action_type, paths, preview in checks:
            for m in self.policy.decide(action_type, paths, preview).matches:
                if m.id not in seen:
                    seen.add(m.id)
                    matches.append(m)
        changed = effects.written + effects.deleted + [p for p, _ in effects.modes]
        matches += [m for m in self._structural(changed) + self._over_budget(session.id, spent) if m.id not in seen]
        return self._verdict(matches)

    def _run_refusal(self, session: "Session", model: BaseModel, adapter: CodeAdapter, prepared: Prepared,
                     before: Decision, judged: Decision, effects: RunEffects) -> str | None:
        """Why a finished run's effects may not land, or None. What they need confirmed is asked of
        a synchronous approver now: a finished run cannot be parked."""
        undone = "; nothing it changed was copied into the workspace"
        if judged.verdict == "deny":
            error = f"refused by policy: {judged.reason}"
            if not any(m.decision == "deny" for m in judged.matches):
                error += " (the pack refuses what needs confirmation)"
            return error + undone
        asks = [m for m in judged.matches if m.decision == "confirm" and m not in before.matches]
        if not asks:
            return None
        reason = "; ".join(f"{m.id}: {m.message}" for m in asks)
        if self.approver is None:
            return f"refused by policy: {reason} (needs confirmation, and no approver is configured){undone}"
        if self.approver == "pending":
            return (f"refused by policy: {reason} (needs confirmation, and a finished run cannot be parked){undone}. "
                    "Re-run it with an approver that answers at once (e.g. `goex exec --yes` after reviewing "
                    "the code), or make these changes with file actions, which can be parked for approval")
        request = ConfirmationRequest(session.id, session.actor, model.type, prepared.targets,
                                      Decision("confirm", tuple(asks)), prepared.preview,
                                      adapter.summarize(prepared) + "\n" + _effects_summary(effects))
        if self.approver(request) is not True:  # type: ignore[operator]  # anything but True is a no
            return f"refused by policy: {reason} (rejected by the approver){undone}"
        return None

    def _check(self, session: "Session", action: Any) -> tuple[Decision, dict[str, Any]]:
        model = parse_action(action, max_bytes=self.max_action_bytes)
        adapter = self._adapters[model.type.split(".", 1)[0]]
        try:
            prepared = adapter.prepare(model)
        except REFUSALS as exc:
            return Decision("deny", (RuleMatch(exc.rule, "deny", "severe", 1.0, exc.reason),)), {}
        return self._decide(session, model.type, prepared), prepared.preview

    def _decide(self, session: "Session", action_type: str, prepared: Prepared) -> Decision:
        """The pack's rules, then the workspace's and the session's limits: one code path for every entry point."""
        paths = prepared.targets + prepared.covers  # a folder's contents and a database file count too
        matches = list(self.policy.decide(action_type, paths, prepared.preview).matches)
        if prepared.effect and action_type.startswith("fs."):
            matches += self._structural(paths)
        elif prepared.effect and prepared.covers:  # a database file written through SQL: protection only
            matches += self._structural(prepared.covers, database_files=False)
        matches += self._over_budget(session.id, usage(action_type, prepared.preview))
        return self._verdict(matches)

    def _verdict(self, matches: "list[RuleMatch] | tuple[RuleMatch, ...]") -> Decision:
        if not matches:
            return ALLOW
        verdict = max((m.decision for m in matches), key=("allow", "confirm", "deny").index)
        if verdict == "confirm" and self.policy.confirm == "deny":
            verdict = "deny"
        return Decision(verdict, tuple(matches))

    def _structural(self, paths: list[str], *, database_files: bool = True) -> list[RuleMatch]:
        """Rules of the workspace itself, in every pack: protected paths, a database's own files."""
        out = []
        hit = next((t for t in paths for rx, prefix in self._protected
                    if rx.match(t) or (prefix is not None and prefix.startswith(t.rstrip("/") + "/"))), None)
        if hit is not None:
            out.append(RuleMatch("workspace.protected", "deny", "severe", 1.0,
                                 f"{hit} is protected for this run; it may be read, not changed"))
        db_file = next((t for t in paths if t.lower() in self._database_files), None) if database_files else None
        if db_file is not None:
            out.append(RuleMatch("workspace.database-file", "deny", "critical", 1.0,
                                 f"{db_file} belongs to the SQLite database {self._database_files[db_file.lower()]!r} "
                                 "(SQLite would replay it on the next open); only sql.execute may change it"))
        return out

    def _over_budget(self, session_id: str, spent: dict[str, int]) -> list[RuleMatch]:
        if not any(spent.get(name) for name in self.policy.budgets):  # nothing to count: no journal read
            return []
        totals = self._session_usage(session_id)
        out = []
        for name in BUDGETS:
            limit = self.policy.budgets.get(name)
            if limit is not None and spent.get(name) and totals.get(name, 0) + spent[name] > limit:
                out.append(RuleMatch(f"budget.{name}", "deny", "severe", 1.0,
                                     f"the session's {name} budget of {limit:,} would be exceeded "
                                     f"({totals.get(name, 0):,} spent, this action needs {spent[name]:,})"))
        return out

    def _session_usage(self, session_id: str) -> dict[str, int]:
        """What a session spent, from the journal (any runtime's or process's actions): records newer
        than the last look are read. Decisions run under the journal lock, so this is current."""
        with self.journal._thread_lock:  # the lock `_execute` already holds: one order, no deadlock with `check`
            if not self._usage:  # nothing known yet: nothing to bring up to date
                self._usage_seq = self.journal.head()[0]
            else:
                for seq, body, _ in self.journal.records(self._usage_seq):
                    self._count_usage(json.loads(body))
                    self._usage_seq = seq
            if session_id not in self._usage:
                self._usage[session_id] = self._load_usage(session_id, self._usage_seq)
            return dict(self._usage[session_id])

    def _load_usage(self, session_id: str, upto: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        rows = self.journal.select(
            "SELECT seq FROM entries WHERE session = ? AND seq <= ? AND status NOT IN "
            "('denied', 'failed', 'awaiting_approval', 'rejected', 'approved')", (session_id, upto))
        for row in rows:
            for name, value in self.journal.record(row["seq"]).get("usage", {}).items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def _count_usage(self, record: dict[str, Any]) -> None:
        """One new journal record's effect on the sessions' spending: an action that went ahead
        spends; one reverted as failed gives it back (as the index reads it)."""
        kind, sign = record.get("kind"), 1
        if kind == "failed":
            record, sign = self.journal.record(entry_seq(record["entry"])), -1
        elif kind != "entry":
            return
        if record.get("status") in ("denied", "failed", "awaiting_approval"):
            return
        totals = self._usage.get(record.get("session", ""))
        if totals is not None:
            for name, value in (record.get("usage") or {}).items():
                totals[name] = totals.get(name, 0) + sign * value

    def _ask(self, session: "Session", model: BaseModel, adapter: Adapter, prepared: Prepared,
             decision: Decision) -> bool | None:
        """The approver's answer: True, False, or None (parked for `approve` / `reject`)."""
        if self.approver is None or self.policy.confirm == "deny":
            return False
        if self.approver == "pending":
            return None
        summarize = getattr(adapter, "summarize", None)
        request = ConfirmationRequest(session.id, session.actor, model.type, prepared.targets, decision,
                                      prepared.preview, summarize(prepared) if summarize else "")
        return self.approver(request) is True  # type: ignore[operator]  # anything but True is a no

    def parked(self, entry_id: str) -> dict[str, Any]:
        """The policy source and protected paths an action was parked under."""
        row = self.journal.entry(entry_id)
        return self.journal.record(row["seq"]).get("parked", {}) if row is not None else {}

    def approve(self, entry_id: str, *, by: str = "human") -> Result:
        """Run an action parked for confirmation, as approved by `by`. It is prepared and decided
        again against this runtime's policy, budgets and protected paths: rules that deny still
        deny, and an approval covers only the effect it was shown: if the effect grew (more rows,
        files, bytes, other targets) or new rules match, it does not run but is parked again with
        the new preview (the result says what changed)."""
        session, action = self._parked(entry_id)
        return self._execute(session, action, approval={"by": by, "entry": entry_id})

    def _recheck_approval(self, session: "Session", model: BaseModel, prepared: Prepared, decision: Decision,
                          approval: dict[str, Any]) -> Result | None:
        """Under the lock: the parked entry is still waiting, and its effect has not grown. Records
        the approval and returns None, or parks the action again and returns that result."""
        eid = approval["entry"]
        self._parked(eid)  # decided meanwhile by another process: not run twice
        parked = self.journal.record(entry_seq(eid))
        target = " -> ".join(prepared.targets) if model.type == "fs.move" else ", ".join(prepared.targets)
        if model.type == "http.request":
            target = self._http.secrets.redact(target)
        changes = _grown(parked, target, prepared.preview, decision)
        if not changes or decision.verdict == "deny":  # a denial is journaled as it always was
            self.journal.append("approved", entry=eid, by=approval["by"], durable=True)
            return None
        why = "; ".join(changes)
        with self.journal.transaction(durable=True) as tx:
            seq, _ = tx.append("entry", status="awaiting_approval", preview=prepared.preview, reparked=eid,
                               parked={"policy": self.policy.source, "protected": list(self.protected)},
                               **self._entry_fields(tx, session, model, prepared.targets, decision))
            tx.append("rejected", entry=eid, by="goex", reason=f"not run: its effect changed since it was parked "
                                                               f"({why}); parked again as {entry_id(seq)}")
        new = entry_id(seq)
        return Result(False, new, error=f"not run: the effect changed since {eid} was parked ({why}); it is parked "
                                        f"again as {new} with the new preview: approve it with `goex approve --root "
                                        f"DIR {new}` or reject it with `goex reject --root DIR {new}`",
                      status="awaiting_approval", session=session.id, type=model.type, decision=decision)

    def reject(self, entry_id: str, *, by: str = "human", reason: str = "") -> None:
        """Refuse an action parked for confirmation; it never runs."""
        self._parked(entry_id)
        self.journal.append("rejected", entry=entry_id, by=by, reason=reason, durable=True)

    def _parked(self, entry_id: str) -> tuple["Session", dict[str, Any]]:
        row = self.journal.entry(entry_id)
        if row is None or row["status"] != "awaiting_approval":
            state = row["status"] if row is not None else "not in the journal"
            raise GoexError(f"entry {entry_id} is not awaiting approval ({state}); "
                            "`goex log` shows the entries that are")
        entry = self.journal.record(row["seq"])
        return Session(self, row["session"], row["actor"]), self._rehydrate(entry["action"])

    def _apply(self, session: "Session", model: BaseModel, adapter: Adapter, prepared: Prepared,
               decision: Decision, refused: Callable[..., Result], failed: Callable[..., Result],
               extra: dict[str, Any], staged: Any = None) -> Result:
        try:
            with self.journal.transaction(durable=True) as tx:
                plan = adapter.capture(prepared, tx.put_blob)
                seq, _ = tx.append("entry", status="pending", plan=plan, preview=prepared.preview, **extra,
                                   **self._entry_fields(tx, session, model, prepared.targets, decision))
        except BaseException as exc:
            if staged is not None:  # a run staged and judged already: its layer goes
                staged.abort()
            if isinstance(exc, REFUSALS):
                return refused(exc, prepared.targets)
            if isinstance(exc, (ActionFailed, OSError)):
                return failed(exc if isinstance(exc, ActionFailed) else ActionFailed(f"{model.type}: {exc}"),
                              prepared.targets, decision)
            raise
        eid = entry_id(seq)
        if hasattr(adapter, "stage"):
            return self._apply_staged(session, model, adapter, prepared, decision, eid, plan, staged)
        try:
            applied = adapter.apply(prepared)
        except OutcomeUnknown as exc:
            return self._settle_unknown(session, model, adapter, eid, plan, exc, decision)
        except BaseException as exc:  # noqa: BLE001 - revert on anything, even KeyboardInterrupt
            reason = str(exc) if isinstance(exc, (ActionFailed, PathRefused)) else f"{model.type}: {exc!r}"
            self._revert_pending(adapter, eid, plan, reason)
            if not isinstance(exc, Exception):
                raise
            status = "denied" if isinstance(exc, PathRefused) else "failed"
            return Result(False, eid, error=reason, status=status, session=session.id, type=model.type,
                          decision=decision)
        self.journal.append("applied", entry=eid, after=applied.after)
        return Result(True, eid, applied.output, session=session.id, type=model.type, decision=decision)

    def _apply_staged(self, session: "Session", model: BaseModel, adapter: Any, prepared: Prepared,
                      decision: Decision, eid: str, plan: dict[str, Any], staged: Any = None) -> Result:
        """Run in an open transaction; journal what was captured inside it, durably; then commit.
        Every committed change has its undo data on disk, whenever the process dies."""
        def failure(exc: BaseException) -> Result:
            reason = str(exc) if isinstance(exc, ActionFailed) else f"{model.type}: {exc!r}"
            self._revert_pending(adapter, eid, plan, reason)
            if not isinstance(exc, Exception):
                raise exc
            return Result(False, eid, error=reason, status="failed", session=session.id, type=model.type,
                          decision=decision)

        try:
            staged = staged if staged is not None else adapter.stage(prepared)  # a code run: staged and judged
        except BaseException as exc:  # noqa: BLE001 - nothing committed
            return failure(exc)
        try:
            with self.journal.transaction(durable=True) as tx:
                captured = staged.capture(tx.put_blob)
                cseq, _ = tx.append("captured", entry=eid, plan=captured)
        except BaseException as exc:  # noqa: BLE001 - not committed: roll it back
            staged.abort()
            return failure(exc)
        try:
            staged.commit()
        except BaseException as exc:  # noqa: BLE001 - did the commit happen? the database says
            outcome, _, why = adapter.recover({**plan, "captured": captured}, {}, self.journal.read_blob)
            if outcome != "applied":
                error = f"{model.type}: the commit failed ({exc}){'; ' + why if why else ''}"
                if outcome == "review":
                    self.journal.append("review", entry=eid, error=error, durable=True)
                    return Result(False, eid, error=error, status="needs_review", session=session.id,
                                  type=model.type, decision=decision)
                self.journal.append("failed", entry=eid, error=error, reverted=True, durable=True)
                if not isinstance(exc, Exception):
                    raise
                return Result(False, eid, error=error, status="failed", session=session.id, type=model.type,
                              decision=decision)
        self.journal.append("applied", entry=eid, after={"captured": cseq})
        return Result(True, eid, staged.output, session=session.id, type=model.type, decision=decision)

    def _plan(self, entry: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
        """An entry's undo plan, with what was captured inside its transaction when it was staged
        (`captured`, and the record holding it, `captured_seq`)."""
        plan = entry["plan"]
        if not plan.get("staged"):
            return plan
        seq = (after or {}).get("captured")
        if seq is None:  # interrupted before "applied": its capture record, if it was written
            seq = self.journal.captured(entry_id(entry["seq"]))
        if seq is None:
            return plan
        record = self.journal.record(seq)
        if record.get("kind") != "captured" or record.get("entry") != entry_id(entry["seq"]):
            raise JournalCorrupt(f"entry {entry_id(entry['seq'])} names record {seq} as its capture, which it is not; "
                                 "nothing was undone from it. Run `goex verify`", seq=seq)
        return {**plan, "captured": record["plan"], "captured_seq": seq}

    def _revert_pending(self, adapter: Adapter, eid: str, plan: dict[str, Any], reason: str) -> None:
        try:
            adapter.revert(plan, None, self.journal.read_blob)
        except Exception as exc:  # noqa: BLE001 - leave it pending for `recover`
            self._stuck = True
            raise RecoveryNeeded({eid: f"failed ({reason}) and could not be reverted ({exc})"}) from exc
        self.journal.append("failed", entry=eid, error=reason, reverted=True, durable=True)

    def _settle_unknown(self, session: "Session", model: BaseModel, adapter: Adapter, eid: str, plan: dict[str, Any],
                        exc: OutcomeUnknown, decision: Decision) -> Result:
        """The request may have acted and no response came: settle it now as recovery would."""
        outcome, after, why = self._settle(adapter, plan, self.journal.record(int(eid[1:]))["action"])
        if outcome == "applied":
            self.journal.append("applied", entry=eid, after=after, retried=True)
            return Result(True, eid, {"note": f"{exc}; replayed with its idempotency key", "status": after.get("status")},
                          session=session.id, type=model.type, decision=decision)
        error = f"{exc}. {why}" if why else str(exc)
        if outcome == "review":
            self.journal.append("review", entry=eid, error=error, durable=True)
        else:
            self.journal.append("failed", entry=eid, error=error, reverted=True, durable=True)
        status = "needs_review" if outcome == "review" else "failed"
        return Result(False, eid, error=error, status=status, session=session.id, type=model.type, decision=decision)

    def _settle(self, adapter: Adapter, plan: dict[str, Any], action: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """Bring one pending entry to an end (the caller journals it); returns (outcome, after, why)."""
        recover = getattr(adapter, "recover", None)
        if recover is not None:
            outcome, after, why = recover(plan, self._rehydrate(action), self.journal.read_blob)
        else:
            adapter.revert(plan, None, self.journal.read_blob)
            outcome, after, why = "reverted", {}, ""
        return outcome, after, why

    def _rehydrate(self, action: dict[str, Any]) -> dict[str, Any]:
        """The action as the agent sent it: strings journaled as blobs are read back."""
        out = {}
        for key, value in action.items():
            if isinstance(value, dict) and set(value) == {"$blob"}:
                value = b"".join(self.journal.read_blob(c) for c in value["$blob"]["chunks"]).decode("utf-8")
            out[key] = value
        return out

    def _journal_outcome(self, session: "Session", model: BaseModel, targets: list[str], decision: Decision | None,
                         status: str, **extra: Any) -> str:
        with self.journal.transaction(durable=False) as tx:
            seq, _ = tx.append("entry", status=status,
                               **self._entry_fields(tx, session, model, targets, decision), **extra)
        return entry_id(seq)

    def _entry_fields(self, tx: Transaction, session: "Session", model: BaseModel, targets: list[str],
                      decision: Decision | None) -> dict[str, Any]:
        action = action_to_json(model)
        target = " -> ".join(targets) if model.type == "fs.move" else ", ".join(targets)
        if model.type == "http.request":  # a secret's value written out goes back to its placeholder
            action, target = self._http.secrets.redact_json(action), self._http.secrets.redact(target)
        return {
            "session": session.id, "actor": session.actor, "action": _journal_form(action, tx),
            "target": target,
            "decision": (decision or Decision("allow")).to_json(), "pid": os.getpid(),
        }

    # -- undo ----------------------------------------------------------------------------------

    def rollback_all(self, *, force: bool = False) -> list[str]:
        """Undo every applied entry of every session on this root, newest first."""
        return self._undo_selected("", (), force)

    def _undo_selected(self, where: str, params: tuple[Any, ...], force: bool, limit: int | None = None) -> list[str]:
        """Undo, newest first, the undoable entries matching `where` (an SQL condition on `entries`),
        selected under the lock so nothing slips in between."""
        sql = ("SELECT * FROM entries WHERE status IN ('applied', 'undo_failed') AND undoable = 1"
               + (f" AND {where}" if where else "") + " ORDER BY seq DESC" + (" LIMIT ?" if limit else ""))
        select = lambda: self.journal.select(sql, params + ((limit,) if limit else ()))  # noqa: E731
        done: list[str] = []
        unrecorded: list[tuple[str, dict[str, Any]]] = []  # undone, "undone" record not written yet
        with self.journal.exclusive():
            self._ensure_consistent(always=True)
            try:
                for row in select():
                    try:
                        details = self._undo_entry(row, force, finished=unrecorded)
                    except UndoConflict as exc:
                        exc.undone = list(done)  # type: ignore[attr-defined]
                        raise
                    done.append(row["id"])
                    unrecorded.append((row["id"], details))
            finally:
                for eid, details in unrecorded:
                    self.journal.append("undone", entry=eid, **details)
        return done

    def _undo_entry(self, row: sqlite3.Row, force: bool, finished: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Undo one entry. `finished` holds entries already undone whose "undone" records go into
        the same transaction as this one's "undoing" record (one commit per entry); it is emptied."""
        eid = row["id"]
        entry = self.journal.record(row["seq"])
        after = self.journal.record(row["after_seq"])["after"]
        adapter = self._adapters[row["type"].split(".", 1)[0]]
        plan = self._plan(entry, after)
        with self._tracer.start_as_current_span("goex undo") as span:
            conflicts = adapter.conflicts(plan, after)
            if conflicts and not force:
                raise UndoConflict(eid, conflicts)
            self.journal.check_blobs(plan)  # a damaged before-image stops undo before it starts
            with self.journal.transaction(durable=True) as tx:
                for previous, details in finished:
                    tx.append("undone", entry=previous, **details)
                finished.clear()
                tx.append("undoing", entry=eid, forced=bool(conflicts), conflicts=[list(c) for c in conflicts])
            try:
                details = adapter.revert(plan, after, self.journal.read_blob, force) or {}
            except JournalCorrupt as exc:  # a forged plan, refused before its first op: nothing changed
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                raise
            except CompensationFailed as exc:  # nothing changed: say so, never "undone"
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                if exc.conflict:
                    raise UndoConflict(eid, [(row["target"], str(exc))]) from None
                raise
            except Exception as exc:  # noqa: BLE001 - it stays "undoing" for `recover` to finish
                self._stuck = True
                raise RecoveryNeeded({eid: f"undo stopped midway ({exc})"}) from exc
            if span.is_recording():
                span.set_attributes({"goex.entry.id": eid, "goex.session.id": row["session"],
                                     "goex.action.type": row["type"], "goex.action.target": row["target"],
                                     "goex.status": "undone", "goex.forced": bool(conflicts)})
        return details

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Bring every interrupted entry to a consistent end: a pending file action is reverted
        (recorded as failed); a pending request is replayed with its idempotency key (recorded as
        applied) or left for review; an interrupted undo is finished (recorded as undone)."""
        report = RecoveryReport()
        with self.journal.exclusive():
            self._recover_locked(report)
        return report

    def _ensure_consistent(self, *, always: bool = False) -> None:
        """Before acting: close what a dead process left open, or refuse to act at all."""
        if always or self._stuck or self.journal.changed_elsewhere():  # only others leave entries open
            report = RecoveryReport()
            self._recover_locked(report)
            if not report.ok:
                raise RecoveryNeeded({k: v for k, v in report.outcomes.items() if v.startswith("error")})

    def _recover_locked(self, report: RecoveryReport) -> None:
        # Holding the lock proves no live process is mid-action: its owner died.
        rows = self.journal.select("SELECT * FROM entries WHERE status IN ('pending', 'undoing') ORDER BY seq DESC")
        for row in rows:
            eid = row["id"]
            entry = self.journal.record(row["seq"])
            adapter = self._adapters[row["type"].split(".", 1)[0]]
            try:
                if row["status"] == "pending":
                    plan = self._plan(entry, None)
                    outcome, after, why = self._settle(adapter, plan, entry["action"])
                    if outcome == "applied" and "captured_seq" in plan:
                        after = {"captured": plan["captured_seq"]}
                else:
                    after = self.journal.record(row["after_seq"])["after"]
                    adapter.revert(self._plan(entry, after), after, self.journal.read_blob, True)
                    outcome, why = "undone", ""
            except CompensationFailed as exc:  # the compensation did not happen: the world is as before
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                report.outcomes[eid] = "undo_failed"
                continue
            except Exception as exc:  # noqa: BLE001 - report it, keep going with the others
                report.outcomes[eid] = f"error: {exc}"
                continue
            if outcome == "reverted":
                self.journal.append("failed", entry=eid, error="interrupted before it finished; reverted by recovery",
                                    reverted=True, durable=True)
            elif outcome == "applied":
                self.journal.append("applied", entry=eid, after=after, recovered=True, durable=True)
            elif outcome == "review":
                self.journal.append("review", entry=eid, error=why, durable=True)
            else:
                self.journal.append("undone", entry=eid, recovered=True, durable=True)
            report.outcomes[eid] = outcome
        self._stuck = not report.ok

    # -- reading the journal -------------------------------------------------------------------

    def log(self, session: str | None = None) -> list[dict[str, Any]]:
        """Every entry, oldest first: id, time, session, actor, type, target, decision, status."""
        sql = "SELECT id, time, session, actor, type, target, decision, status FROM entries"
        rows = self.journal.select(sql + (" WHERE session = ? ORDER BY seq" if session else " ORDER BY seq"),
                                  (session,) if session else ())
        return [dict(r) for r in rows]

    def checkpoints(self, session: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT id, session, label, time FROM checkpoints"
        rows = self.journal.select(sql + (" WHERE session = ? ORDER BY seq" if session else " ORDER BY seq"),
                                  (session,) if session else ())
        return [dict(r) for r in rows]

    def fingerprint(self) -> str:
        """sha256 of the workspace's files, folders, modes and symlinks (the journal excluded)."""
        return self._adapters["fs"].fingerprint()  # type: ignore[attr-defined]

    def verify(self, expect_head: str | None = None) -> VerifyReport:
        """Check the whole journal; raises `JournalCorrupt` naming the first bad record."""
        return verify(self.journal, expect_head=expect_head)


class Session:
    """One actor's run of actions on a runtime. Leaving the `with` block undoes nothing."""

    def __init__(self, runtime: Runtime, session_id: str, actor: str):
        self.runtime = runtime
        self.id = session_id
        self.actor = actor

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def execute(self, action: Any) -> Result:
        """Run one action (a dict in the JSON form, a JSON string, or an action model).

        Returns a `Result`; raises `ActionError` if the action is malformed (nothing applied).
        """
        return self.runtime._execute(self, action)

    def review(self) -> list[Any]:
        """What this session did, entry by entry, with diffs (`goex.review.ReviewItem`)."""
        from .review import review

        return review(self.runtime, self.id)

    def accept(self, *, by: str = "human") -> list[str]:
        """Mark every entry of this session reviewed (post-facto validation: it stays)."""
        ids = [e["id"] for e in self.log()]
        if ids:
            self.runtime.journal.append("reviewed", session=self.id, entries=ids, by=by, durable=True)
        return ids

    def undo_from(self, entry_id: str, *, force: bool = False) -> list[str]:
        """Undo this session's changes from `entry_id` on (it included), newest first."""
        row = self.runtime.journal.entry(entry_id)
        if row is None or row["session"] != self.id:
            raise GoexError(f"entry {entry_id} is not in session {self.id}; `goex log --session {self.id}` lists them")
        return self.runtime._undo_selected("session = ? AND seq >= ?", (self.id, row["seq"]), force)

    def check(self, action: Any) -> tuple[Decision, dict[str, Any]]:
        """The decision on `action` (rules and this session's budgets) and its preview, without
        acting or journaling anything."""
        return self.runtime._check(self, action)

    def checkpoint(self, label: str | None = None) -> str:
        """Mark this point of the session; `rollback(to=…)` takes its id or its label."""
        seq, _ = self.runtime.journal.append("checkpoint", session=self.id, label=label)
        return checkpoint_id(seq)

    def undo(self, steps: int = 1, *, force: bool = False) -> list[str]:
        """Undo the last `steps` actions of this session that changed something (reads and refused
        actions are skipped). Returns the ids undone, newest first."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        return self.runtime._undo_selected("session = ?", (self.id,), force, limit=steps)

    def rollback(self, to: str | None = None, *, force: bool = False) -> list[str]:
        """Undo everything this session did after checkpoint `to` (an id or a label), or all of it."""
        after = 0 if to is None else self._checkpoint_seq(to)
        return self.runtime._undo_selected("session = ? AND seq > ?", (self.id, after), force)

    def _checkpoint_seq(self, to: str) -> int:
        rows = self.runtime.journal.select(
            "SELECT seq FROM checkpoints WHERE session = ? AND (id = ? OR label = ?) ORDER BY seq DESC LIMIT 1",
            (self.id, to, to))
        if not rows:
            known = ", ".join(f"{c['id']}" + (f" ({c['label']})" if c["label"] else "")
                              for c in self.runtime.checkpoints(self.id)) or "none"
            raise GoexError(f"session {self.id} has no checkpoint {to!r}; its checkpoints: {known}")
        return rows[0]["seq"]

    def log(self) -> list[dict[str, Any]]:
        return self.runtime.log(self.id)


def _grown(parked: dict[str, Any], target: str, preview: dict[str, Any], decision: Decision) -> list[str]:
    """How an action's effect now exceeds what it was parked (and approved) with: new rules that
    match, other targets, preview fields the policy reads that grew or changed."""
    out = []
    before = {m["id"] for m in parked.get("decision", {}).get("rules", ())}
    new = [m.id for m in decision.matches if m.decision != "allow" and m.id not in before]
    if new:
        out.append("now matches " + ", ".join(new))
    if target != parked.get("target"):
        out.append(f"targets {parked.get('target')!r} -> {target!r}")
    old = parked.get("preview") or {}
    for key in sorted(PREVIEW_FIELDS & (set(old) | set(preview))):
        was, now = old.get(key), preview.get(key)
        if was != now and _grew(was, now):
            out.append(f"{key} {_shown(was)} -> {_shown(now)}")
    return out


def _grew(was: Any, now: Any) -> bool:
    if isinstance(was, bool) or isinstance(now, bool):
        return True  # a flag that flipped either way (reversible, overwrites, ...): shown again
    if isinstance(now, (int, float)) and isinstance(was, (int, float, type(None))):
        return now > (was or 0)
    if isinstance(now, list) and isinstance(was, (list, type(None))):
        return not {json.dumps(v, sort_keys=True) for v in now} <= {json.dumps(v, sort_keys=True) for v in was or ()}
    return True


def _shown(value: Any) -> str:
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


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


def _literal_prefix(glob: str) -> str | None:
    """The fixed leading part of an anchored glob (`tests/**` -> `tests/`): a folder holding it
    holds protected paths. None for globs that match at any depth."""
    if "/" not in glob.strip("/"):
        return None
    return re.split(r"[*?\[]", glob.lstrip("/"), maxsplit=1)[0]


def _journal_form(action: dict[str, Any], tx: Transaction) -> dict[str, Any]:
    """The action as journaled: long strings (file content) are stored as blobs, by reference."""
    out: dict[str, Any] = {}
    for key, value in action.items():
        if isinstance(value, str) and len(value) > _INLINE_LIMIT:
            data = value.encode("utf-8")
            chunks = [tx.put_blob(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
            out[key] = {"$blob": {"sha": hashlib.sha256(data).hexdigest(), "size": len(data), "chunks": chunks}}
        else:
            out[key] = value
    return out
