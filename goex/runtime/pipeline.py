"""Runtime and Session: every action goes prepare -> decide -> journal -> apply -> report.

The runtime drives the adapter contract (`goex/adapters/base.py`) and knows no domain by name:
adapters are found by action prefix in the registry and made on first use. The journal is the
only record: undo, recovery, the log and the spans all read from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from opentelemetry import trace

from .. import telemetry
from ..actions import DEFAULT_MAX_ACTION_BYTES, action_to_json, parse_action, parse_json_action
from ..adapters.base import Adapter, Context, Judged, Prepared
from ..adapters.fs.workspace import Workspace
from ..adapters.registry import domains
from ..custom import FunctionTool, Tool, Tools
from ..errors import ActionError, ActionFailed, GoexError, OutcomeUnknown, Refused
from ..journal.store import APPLIED, CHUNK, Journal, Transaction, checkpoint_id, entry_id, entry_seq
from ..journal.verify import VerifyReport, verify
from ..policy import ALLOW, Decision, Policy, RuleMatch, WorkspaceRules, load_policy
from ..telemetry import tracer as make_tracer
from .approvals import Approvals
from .recovery import Recovery
from .results import Approver, ConfirmationRequest, Result
from .undo import Undo

if TYPE_CHECKING:
    from ..adapters.http.adapter import HttpConfig

_INLINE_LIMIT = 4096  # action strings longer than this are journaled as blobs
_DEFAULTS: dict[str, Any] = {"sandbox": "auto", "allow_unsafe": False}  # other settings default to None
_NOT_SPENT = ("denied", "failed", "awaiting_approval", "rejected", "approved")  # entries that spent no budget
_NO_SPAN = nullcontext(trace.INVALID_SPAN)  # when nothing would record the action's span


class Runtime(Approvals, Undo, Recovery):
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
    `allow_unsafe=True`, and journaled as unsafe). `sandbox_options`: `image` (docker's image;
    bwrap runs in its root folder), `root` (bwrap's root folder instead), `pool_size` (warm
    containers), `max_output_bytes`, `docker_url`. `adapters`: settings of installed
    adapters, by prefix (`{"kv": {"path": "..."}}`).
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
        http: "HttpConfig | None" = None,
        approver: "Approver | str | None" = None,
        protected: "list[str] | tuple[str, ...]" = (),
        databases: dict[str, str] | None = None,
        sandbox: str = "auto",
        allow_unsafe: bool = False,
        sandbox_options: dict[str, Any] | None = None,
        adapters: dict[str, dict[str, Any]] | None = None,
    ):
        root_path = Path(root)
        if not root_path.is_dir():
            raise GoexError(f"workspace root {root_path} is not an existing folder; create it first")
        self.root = root_path.resolve()
        folder = (Path(journal) if journal is not None else self.root / ".goex").resolve()
        if folder == self.root or self.root.is_relative_to(folder):
            raise GoexError(f"the journal folder {folder} cannot be the workspace root or hold it: actions "
                            "could reach it. Keep it in a folder of its own (default: ROOT/.goex)")
        if approver is not None and approver != "pending" and not callable(approver):
            raise ValueError("approver is a callable, 'pending', or None")
        self.policy = load_policy(policy)
        self.journal = Journal(Path(journal) if journal is not None else self.root / ".goex", durability=durability)
        self.workspace = Workspace(self.root, hidden=self.journal.folder)
        self.max_action_bytes = max_action_bytes
        self._tracer = make_tracer(tracer_provider)
        self._stuck = False  # an interrupted entry could not be reverted: act on nothing until it is
        self.approver = approver
        self._usage: dict[str, dict[str, int]] = {}  # budget spent per session, as of journal record _usage_seq
        self._usage_seq = 0
        self._written_entry: dict[str, Any] = {}  # the last `entry` record this runtime committed
        self.journal.listeners.append(self._count_written)
        self._lock = threading.RLock()
        self.custom_tools = Tools()
        settings = {"http": http, "databases": databases, "sandbox": sandbox, "allow_unsafe": allow_unsafe,
                    "sandbox_options": sandbox_options, "adapters": adapters, "tools": self.custom_tools}
        self._context = Context(self.root, self.workspace, self.journal.read_blob, settings, self.adapter)
        self._adapters: dict[str, Adapter] = {}
        self._owned: dict[str, str] | None = None
        self.rules = WorkspaceRules(protected, self._owned_paths)
        given = {name for name, value in settings.items() if value != _DEFAULTS.get(name) and name != "tools"}
        # Made now when given settings (they are checked, and may own paths), and every installed
        # domain (its settings are its own: it may own a workspace path with none given).
        for prefix, domain in domains().items():
            if given & set(domain.settings) or prefix in (adapters or {}) or domain.source != "goex":
                self.adapter(prefix)

    @classmethod
    def open(cls, root: str | os.PathLike[str], **overrides: Any) -> "Runtime":
        """The runtime of `root` with its settings (`<journal>/config.toml`, written by `goex
        init`); keyword arguments (those of `Runtime`) override them."""
        from ..config import load_settings

        options = load_settings(root, overrides.get("journal")).runtime_options(Path(root))
        return cls(root, **{**options, **overrides})

    def undo_last(self, steps: int, *, force: bool = False) -> list[str]:
        """Undo the last `steps` actions on this root that changed something, whichever session
        made them. Returns the ids undone, newest first (fewer when fewer are left)."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        return self._undo_selected(force, limit=steps)

    # -- custom tools --------------------------------------------------------------------------

    def tool(self, fn: "Callable[..., Any] | None" = None, *, name: str | None = None,
             undo: "Callable[[Any, Any], Any] | None" = None, preview: "Callable[[Any], dict[str, Any]] | None" = None,
             targets: "Callable[[Any], list[str]] | None" = None, description: str | None = None) -> Any:
        """Decorator: the function becomes the action type `tool.<name>` (arguments from its
        parameters, description from its docstring). `undo(args, output)` takes its effect back;
        without it the tool is irreversible. `preview(args)` is what an approver sees;
        `targets(args)` what it acts on. Returns the function unchanged."""
        def register(func: "Callable[..., Any]") -> "Callable[..., Any]":
            self.add_tool(FunctionTool(func, name=name, undo=undo, preview=preview, targets=targets,
                                       description=description))
            return func

        return register(fn) if fn is not None else register

    def add_tool(self, tool: Tool) -> str:
        """Register a custom tool (a `goex.Tool`); returns its action type, `tool.<name>`."""
        return self.custom_tools.add(tool)

    def tools(self, format: str = "openai", *, union: bool = False) -> list[dict[str, Any]]:
        """Tool definitions of every action type, this runtime's custom tools included (see `goex.tools`)."""
        from ..tool_schemas import tools

        return tools(format=format, union=union, extra=self.custom_tools.schemas())

    def _parse(self, action: Any) -> Any:
        """The action model: one of this runtime's custom tools, or a built-in action."""
        if isinstance(action, (str, bytes, bytearray)) and self.custom_tools.models:
            action = parse_json_action(action, self.max_action_bytes)
        return self.custom_tools.parse(action) or parse_action(action, max_bytes=self.max_action_bytes)

    # -- adapters ------------------------------------------------------------------------------

    def adapter(self, prefix: str) -> Adapter:
        """This runtime's adapter for actions `<prefix>.*`, made on first use."""
        adapter = self._adapters.get(prefix)
        if adapter is None:
            with self._lock:
                adapter = self._adapters.get(prefix)
                if adapter is None:
                    domain = domains().get(prefix)
                    if domain is None:
                        raise GoexError(f"no adapter handles {prefix}.* actions; known: {', '.join(domains())}")
                    adapter = domain.load().create(self._context)
                    self._adapters[prefix] = adapter
                    self._owned = None
        return adapter

    def _owned_paths(self) -> dict[str, str]:
        if self._owned is None:
            self._owned = {path: why for a in list(self._adapters.values()) for path, why in a.owned_paths().items()}
        return self._owned

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        for adapter in list(self._adapters.values()):
            adapter.close()
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
        try:
            model = self._parse(action)
            adapter = self._adapter_for(model.type)
        except ActionError as exc:  # a malformed action gets a span too
            with self._tracer.start_as_current_span(telemetry.action_span_name(None)) as span:
                if span.is_recording():
                    telemetry.malformed(span, session.id, session.actor, self._redacted(str(exc)))
            raise
        with self._tracer.start_as_current_span(telemetry.action_span_name(model.type),
                                                kind=telemetry.span_kind(adapter.span_kind)) \
                if self._tracing() else _NO_SPAN as span:
            if span.is_recording():
                span.set_attributes(telemetry.action_attributes(model.type, session.id, session.actor))
            with self.journal.exclusive():
                self._ensure_consistent()
                try:
                    result = self._run(session, model, adapter, approval)
                except GoexError:
                    raise
                except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as exc:
                    # input a library refused before anything was applied: malformed, and its text redacted
                    why = (f"{type(exc).__name__}: {adapter.redact(str(exc))}" if not isinstance(exc, RecursionError)
                           else "it reaches a folder tree or value nested too deeply")
                    error = f"{model.type}: cannot be run as given ({why}); nothing was applied"
                    if span.is_recording():
                        telemetry.malformed(span, session.id, session.actor, error)
                    raise ActionError(error) from None
            if span.is_recording():
                telemetry.end_action(span, result, adapter.redact(", ".join(model.targets())), self.journal.head()[1],
                                     adapter.span_attributes(model, result.output if result.ok else None))
        return result

    def _tracing(self) -> bool:
        """Whether an action's span could be recorded: no when this runtime's tracer is the API's
        proxy and no provider was set globally (no exporter: the span would record nothing)."""
        return not (isinstance(self._tracer, trace.ProxyTracer)
                    and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider))

    def _redacted(self, text: str) -> str:
        for adapter in list(self._adapters.values()):
            text = adapter.redact(text)
        return text

    def _run(self, session: "Session", model: Any, adapter: Adapter, approval: dict[str, Any] | None) -> Result:
        outcome = _Outcomes(self, session, model, adapter)
        spelled = model.targets()
        try:
            prepared = adapter.prepare(model)
        except Refused as exc:
            return outcome.refused(exc, spelled)
        except ActionFailed as exc:
            return outcome.failed(exc, spelled)
        try:
            decision = self._decide(session, adapter, model.type, prepared)
            if decision.verdict != "allow":
                adapter.release(prepared)  # nothing held open while it is asked about, parked or refused
            return self._run_decided(outcome, prepared, decision, approval)
        finally:
            adapter.release(prepared)  # what prepare holds and the run did not take over

    def _run_decided(self, outcome: "_Outcomes", prepared: Prepared, decision: Decision,
                     approval: dict[str, Any] | None) -> Result:
        session, model, adapter = outcome.session, outcome.model, outcome.adapter
        spent = adapter.spends(model.type, prepared.preview)
        if approval is not None and "entry" in approval:
            reparked = self._recheck_approval(session, model, adapter, prepared, decision, approval)
            if reparked is not None:
                return reparked
        if decision.verdict == "confirm" and approval is None:
            answer = self._ask(session, model, adapter, prepared, decision)
            if answer is None:
                eid = self._journal_outcome(session, model, adapter, prepared.targets, decision, "awaiting_approval",
                                            preview=prepared.preview,
                                            parked=self._parked_under())
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
            if approval is not None and "entry" in approval:
                error += f"; {approval['entry']} stays awaiting approval (approve it again, or reject it)"
            return outcome.denied(error, prepared, decision)
        extra = {"usage": spent, **({"approval": approval} if approval else {})}
        if not prepared.effect:
            try:
                applied = adapter.apply(prepared)
            except Refused as exc:
                return outcome.refused(exc, prepared.targets)
            except ActionFailed as exc:
                return outcome.failed(exc, prepared.targets, decision)
            eid = self._journal_outcome(session, model, adapter, prepared.targets, decision, APPLIED,
                                        after=applied.after, **extra)
            return Result(True, eid, applied.output, session=session.id, type=model.type, decision=decision)
        if adapter.judged_after_run:
            return self._run_judged(outcome, prepared, decision, extra)
        return self._apply(outcome, prepared, decision, extra)

    def _run_judged(self, outcome: "_Outcomes", prepared: Prepared, decision: Decision,
                    extra: dict[str, Any]) -> Result:
        """An action whose effects are known once it ran (a code run): staged in isolation, then
        judged as the actions it amounts to (rules, protected paths, owned paths, budgets) before
        anything of it lands."""
        session, model, adapter = outcome.session, outcome.model, outcome.adapter
        try:
            staged = adapter.stage(prepared)
        except Refused as exc:
            return outcome.refused(exc, prepared.targets)
        except ActionFailed as exc:
            return outcome.failed(exc, prepared.targets, decision)
        except Exception as exc:  # noqa: BLE001 - nothing reached the workspace
            return outcome.failed(ActionFailed(_reason(model.type, exc)), prepared.targets, decision)
        try:
            judged = adapter.judge(prepared, staged)
            prepared.preview = {**prepared.preview, **judged.preview}
            spent = adapter.spends(model.type, prepared.preview)
            verdict = self._judge(session, decision, judged, spent)
            error = self._judged_refusal(session, model, adapter, prepared, decision, verdict, judged)
        except BaseException:
            staged.abort()
            raise
        if error is not None:
            staged.abort()
            return outcome.denied(error, prepared, verdict)
        return self._apply(outcome, prepared, verdict, {**extra, "usage": spent}, staged=staged)

    def _judge(self, session: "Session", decision: Decision, judged: Judged, spent: dict[str, int]) -> Decision:
        """The decision on a finished run: its own rules plus those of the actions it amounts to."""
        matches = list(decision.matches)
        seen = {m.id for m in matches}
        for action_type, paths, preview in judged.actions:
            for m in self.policy.decide(action_type, paths, preview).matches:
                if m.id not in seen:
                    seen.add(m.id)
                    matches.append(m)
        matches += [m for m in self.rules.matches(judged.changed) + self._over_budget(session.id, spent)
                    if m.id not in seen]
        return self.policy.verdict(matches)

    def _judged_refusal(self, session: "Session", model: Any, adapter: Adapter, prepared: Prepared,
                        before: Decision, judged: Decision, effects: Judged) -> str | None:
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
                                      adapter.summarize(prepared) + "\n" + effects.summary)
        if not self._answer(request):
            return f"refused by policy: {reason} (rejected by the approver){undone}"
        return None

    def _check(self, session: "Session", action: Any) -> tuple[Decision, dict[str, Any]]:
        model = self._parse(action)
        adapter = self._adapter_for(model.type)
        try:
            prepared = adapter.prepare(model)
        except Refused as exc:
            return Decision("deny", (RuleMatch(exc.rule, "deny", "severe", 1.0, exc.reason),)), {}
        adapter.release(prepared)  # only checked: nothing of it runs
        return self._decide(session, adapter, model.type, prepared), prepared.preview

    def _decide(self, session: "Session", adapter: Adapter, action_type: str, prepared: Prepared) -> Decision:
        """The pack's rules, then the workspace's and the session's limits: one code path for every entry point."""
        paths = prepared.targets + prepared.covers  # a folder's contents and a database file count too
        matches = list(self.policy.decide(action_type, paths, prepared.preview).matches)
        if prepared.effect and adapter.edits_files:
            matches += self.rules.matches(paths)
        elif prepared.effect and prepared.covers:  # a file written through another domain (a database): protection only
            matches += self.rules.matches(prepared.covers, owned=False)
        matches += self._over_budget(session.id, adapter.spends(action_type, prepared.preview))
        return self.policy.verdict(matches)

    # -- budgets -------------------------------------------------------------------------------

    def _over_budget(self, session_id: str, spent: dict[str, int]) -> list[RuleMatch]:
        if not self.policy.counts(spent):  # nothing to count: no journal read
            return []
        return self.policy.over_budget(spent, self._session_usage(session_id))

    def _session_usage(self, session_id: str) -> dict[str, int]:
        """What a session spent, from the journal (any runtime's or process's actions): records newer
        than the last look are read. Decisions run under the journal lock, so this is current."""
        with self.journal._thread_lock:  # the lock `_execute` already holds: one order, no deadlock with `check`
            if not self._usage:  # nothing known yet: nothing to bring up to date
                self._usage_seq = self.journal.head()[0]
            else:
                # the deferred records (`applied`) spend nothing; the listener counts them once written
                for seq, body, _ in self.journal.records(self._usage_seq, flush=False):
                    self._count_usage(json.loads(body))
                    self._usage_seq = seq
            if session_id not in self._usage:
                self._usage[session_id] = self._load_usage(session_id, self._usage_seq)
            return dict(self._usage[session_id])

    def _count_written(self, start: int, records: list[dict[str, Any]]) -> None:
        """Records this runtime just committed: counted from memory when the counts stood where they
        begin (nothing to read back); otherwise `_session_usage` reads them from the journal."""
        for record in records:
            if record["kind"] == "entry":
                self._written_entry = record
        if not self._usage or self._usage_seq != start:
            return
        try:
            for record in records:
                self._count_usage(record)
        except Exception:  # noqa: BLE001 - counted again from the journal on the next look
            self._usage.clear()
            return
        self._usage_seq = records[-1]["seq"]

    def _load_usage(self, session_id: str, upto: int) -> dict[str, int]:
        totals: dict[str, int] = {}
        for entry in self.journal.entries(session=session_id, upto_seq=upto, exclude=_NOT_SPENT):
            for name, value in self.journal.record(entry.seq).get("usage", {}).items():
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

    # -- applying ------------------------------------------------------------------------------

    def _apply(self, outcome: "_Outcomes", prepared: Prepared, decision: Decision, extra: dict[str, Any],
               staged: Any = None) -> Result:
        session, model, adapter = outcome.session, outcome.model, outcome.adapter
        # A judged run, staged in isolation before it is journaled, is journaled with its capture in
        # the entry's own commit, and so is a run `prepare` holds open (nothing of it is visible
        # before its commit). An entry whose stage changes nothing until its commit need not be
        # durable yet: the capture's durable commit, before the effect, makes it durable too.
        if staged is None and adapter.staged and adapter.holds_run(prepared):
            staged = adapter.stage(prepared)  # adopts the held run: runs nothing
        durable = staged is not None or not (adapter.staged and adapter.isolated_stage(prepared))
        staging = False
        try:
            with self.journal.transaction(durable=durable) as tx:
                plan = adapter.capture(prepared, tx.put_blob)
                seq, _ = tx.append("entry", status="pending", plan=plan, preview=prepared.preview, **extra,
                                   **self._entry_fields(tx, session, model, adapter, prepared.targets, decision))
                if staged is not None:
                    staging = True
                    captured = staged.capture(tx.put_blob)
                    cseq, _ = tx.append("captured", entry=entry_id(seq), plan=captured)
        except BaseException as exc:
            if staged is not None:  # staged (and judged) already: its transaction or layer goes
                staged.abort()
            if staging and isinstance(exc, Exception):  # nothing was journaled: the entry says it failed
                return outcome.failed(ActionFailed(_reason(model.type, exc)), prepared.targets, decision)
            if isinstance(exc, Refused):
                return outcome.refused(exc, prepared.targets)
            if isinstance(exc, (ActionFailed, OSError)):
                return outcome.failed(exc if isinstance(exc, ActionFailed) else ActionFailed(f"{model.type}: {exc}"),
                                      prepared.targets, decision)
            raise
        eid = entry_id(seq)
        if staged is not None:
            return self._commit_staged(outcome, decision, eid, plan, staged, captured, cseq)
        if adapter.staged:
            return self._apply_staged(outcome, prepared, decision, eid, plan)
        try:
            applied = adapter.apply(prepared)
        except OutcomeUnknown as exc:
            return self._settle_unknown(session, model, adapter, eid, plan, exc, decision)
        except BaseException as exc:  # noqa: BLE001 - revert on anything, even KeyboardInterrupt
            reason = _reason(model.type, exc)
            self._revert_pending(adapter, eid, plan, reason)
            if not isinstance(exc, Exception):
                raise
            status = "denied" if isinstance(exc, Refused) else "failed"
            return Result(False, eid, error=reason, status=status, session=session.id, type=model.type,
                          decision=decision)
        # written with the next commit (where the journal defers, or recovery would keep it anyway)
        self.journal.defer("applied", entry=eid, after=applied.after, settled=adapter.settles(plan))
        return Result(True, eid, applied.output, session=session.id, type=model.type, decision=decision)

    def _apply_staged(self, outcome: "_Outcomes", prepared: Prepared, decision: Decision, eid: str,
                      plan: dict[str, Any]) -> Result:
        """Run in an open transaction; journal what was captured inside it, durably; then commit.
        Every committed change has its undo data on disk, whenever the process dies."""
        session, model, adapter = outcome.session, outcome.model, outcome.adapter

        def failure(exc: BaseException) -> Result:
            reason = _reason(model.type, exc)
            self._revert_pending(adapter, eid, plan, reason)
            if not isinstance(exc, Exception):
                raise exc
            return Result(False, eid, error=reason, status="failed", session=session.id, type=model.type,
                          decision=decision)

        try:
            staged = adapter.stage(prepared)
        except BaseException as exc:  # noqa: BLE001 - nothing committed
            return failure(exc)
        try:
            with self.journal.transaction(durable=True) as tx:
                captured = staged.capture(tx.put_blob)
                cseq, _ = tx.append("captured", entry=eid, plan=captured)
        except BaseException as exc:  # noqa: BLE001 - not committed: roll it back
            staged.abort()
            return failure(exc)
        return self._commit_staged(outcome, decision, eid, plan, staged, captured, cseq)

    def _commit_staged(self, outcome: "_Outcomes", decision: Decision, eid: str, plan: dict[str, Any],
                       staged: Any, captured: dict[str, Any], cseq: int) -> Result:
        """Commit a staged run whose capture is journaled (durably)."""
        session, model, adapter = outcome.session, outcome.model, outcome.adapter
        try:
            staged.commit()
        except BaseException as exc:  # noqa: BLE001 - did the commit happen? the adapter reads it off the world
            settled, _, why = adapter.recover({**plan, "captured": captured}, {}, self.journal.read_blob)
            if settled != "applied":
                error = f"{model.type}: the commit failed ({exc}){'; ' + why if why else ''}"
                if settled == "review":
                    self.journal.append("review", entry=eid, error=error, durable=True)
                    return Result(False, eid, error=error, status="needs_review", session=session.id,
                                  type=model.type, decision=decision)
                self.journal.append("failed", entry=eid, error=error, reverted=True, durable=True)
                if not isinstance(exc, Exception):
                    raise
                return Result(False, eid, error=error, status="failed", session=session.id, type=model.type,
                              decision=decision)
        self.journal.defer("applied", entry=eid, after={"captured": cseq},  # written with the next commit
                           settled=adapter.settles({**plan, "captured": captured}))
        return Result(True, eid, staged.output, session=session.id, type=model.type, decision=decision)

    # -- journaling ----------------------------------------------------------------------------

    def _journal_outcome(self, session: "Session", model: Any, adapter: Adapter, targets: list[str],
                         decision: Decision | None, status: str, **extra: Any) -> str:
        with self.journal.transaction(durable=False) as tx:
            seq, _ = tx.append("entry", status=status,
                               **self._entry_fields(tx, session, model, adapter, targets, decision), **extra)
        return entry_id(seq)

    def _entry_fields(self, tx: Transaction, session: "Session", model: Any, adapter: Adapter, targets: list[str],
                      decision: Decision | None) -> dict[str, Any]:
        # a secret's value written out goes back to its placeholder
        action = adapter.redact_action(action_to_json(model))
        return {
            "session": session.id, "actor": session.actor, "action": _journal_form(action, tx),
            "target": adapter.redact(adapter.shown_target(model.type, targets)),
            "targets": [adapter.redact(t) for t in targets],
            "decision": (decision or Decision("allow")).to_json(), "pid": os.getpid(),
        }

    # -- reading the journal -------------------------------------------------------------------

    def entry_record(self, eid: str) -> dict[str, Any]:
        """The `entry` record of `eid`: the one this runtime just committed, from memory (read only,
        do not change it), else as the journal's chain vouches for it."""
        written = self._written_entry
        return written if written.get("seq") == entry_seq(eid) else self.journal.entry_record(eid)

    def log(self, session: str | None = None) -> list[dict[str, Any]]:
        """Every entry, oldest first: id, time, session, actor, type, target, decision, status."""
        return [e.to_json() for e in self.journal.entries(session=session)]

    def checkpoints(self, session: str | None = None) -> list[dict[str, Any]]:
        return [c.to_json() for c in self.journal.checkpoints(session=session)]

    def fingerprint(self) -> str:
        """sha256 of the workspace's files, folders, modes and symlinks (the journal excluded)."""
        return self.workspace.fingerprint()

    def compact(self, before: str | None = None) -> dict[str, Any]:
        """Fold the journal's history before an entry or checkpoint (`before`: an entry id, a
        checkpoint id or a checkpoint label; None: all of it) into one verified `compacted` record,
        and remove the before-images nothing references any more. Only finished history folds:
        undone, refused, failed, or applied and accepted (or not undoable); `CompactionRefused`
        names what is open. Returns what was folded: `upto` (the last record folded), `records`,
        `entries` (by status), `blobs_removed`."""
        if before is None:
            with self.journal.exclusive():
                self._ensure_consistent()
                return self.journal.compact(self.journal.verified_head()[0] + 1)
        seq = entry_seq(before)
        if seq < 0 or self.journal.entry(before) is None:
            found = self.journal.checkpoints(name=before, newest_first=True)
            if not found:
                raise GoexError(f"{before!r} names no entry or checkpoint of this journal; `goex log` lists the "
                                "entries, `goex log --checkpoints` the checkpoints")
            seq = found[0].seq
        with self.journal.exclusive():
            self._ensure_consistent()
            return self.journal.compact(seq)

    def verify(self, expect_head: str | None = None) -> VerifyReport:
        """Check the whole journal; raises `JournalCorrupt` naming the first bad record."""
        return verify(self.journal, expect_head=expect_head)


class _Outcomes:
    """How one action ends when it does not apply: refused by its adapter, failed, or denied."""

    def __init__(self, runtime: Runtime, session: "Session", model: Any, adapter: Adapter):
        self.runtime, self.session, self.model, self.adapter = runtime, session, model, adapter

    def _end(self, status: str, error: str, targets: list[str], decision: Decision, **extra: Any) -> Result:
        eid = self.runtime._journal_outcome(self.session, self.model, self.adapter, targets, decision, status,
                                            error=error, **extra)
        return Result(False, eid, error=error, status=status, session=self.session.id, type=self.model.type,
                      decision=decision)

    def refused(self, exc: Refused, targets: list[str]) -> Result:
        decision = Decision("deny", (RuleMatch(exc.rule, "deny", "severe", 1.0, exc.reason),))
        return self._end("denied", str(exc), targets, decision)

    def failed(self, exc: Exception, targets: list[str], decision: Decision = ALLOW) -> Result:
        return self._end("failed", str(exc), targets, decision)

    def denied(self, error: str, prepared: Prepared, decision: Decision) -> Result:
        return self._end("denied", error, prepared.targets, decision, preview=prepared.preview)


def _reason(action_type: str, exc: BaseException) -> str:
    """What an action's failure says: goex's own errors speak for themselves; anything else is
    named with its type (a driver's error class tells the user where it came from)."""
    if isinstance(exc, (ActionFailed, Refused)):
        return str(exc)
    return f"{action_type}: {exc}" if isinstance(exc, GoexError) else f"{action_type}: {exc!r}"


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
        from ..review import review

        return review(self.runtime, self.id)

    def accept(self, *, by: str = "human") -> list[str]:
        """Mark every entry of this session reviewed (post-facto validation: it stays)."""
        ids = [e["id"] for e in self.log()]
        if ids:
            self.runtime.journal.append("reviewed", session=self.id, entries=ids, by=by, durable=True)
        return ids

    def undo_from(self, entry_id: str, *, force: bool = False, by: str | None = None) -> list[str]:
        """Undo this session's changes from `entry_id` on (it included), newest first; `by` (who
        asked) is journaled with each undo."""
        entry = self.runtime.journal.entry(entry_id)
        if entry is None or entry.session != self.id:
            raise GoexError(f"entry {entry_id} is not in session {self.id}; `goex log --session {self.id}` lists them")
        return self.runtime._undo_selected(force, session=self.id, from_seq=entry.seq, by=by)

    def check(self, action: Any) -> tuple[Decision, dict[str, Any]]:
        """The decision on `action` (rules and this session's budgets) and its preview, without
        acting or journaling anything."""
        return self.runtime._check(self, action)

    def charge(self, cost: float, rules: list[str], *, by: str = "gym") -> None:
        """Journal a cost charged to this session outside the policy (the gym's damage and
        deception costs, `rules` the violations' ids); `goex audit serve` shows the total."""
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not cost > 0:
            raise ValueError("a charge is a positive number")
        self.runtime.journal.append("cost", session=self.id, cost=float(cost), rules=[str(r) for r in rules], by=by)

    def checkpoint(self, label: str | None = None) -> str:
        """Mark this point of the session; `rollback(to=…)` takes its id or its label."""
        seq, _ = self.runtime.journal.append("checkpoint", session=self.id, label=label)
        return checkpoint_id(seq)

    def undo(self, steps: int = 1, *, force: bool = False) -> list[str]:
        """Undo the last `steps` actions of this session that changed something (reads and refused
        actions are skipped). Returns the ids undone, newest first."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        return self.runtime._undo_selected(force, limit=steps, session=self.id)

    def rollback(self, to: str | None = None, *, force: bool = False) -> list[str]:
        """Undo everything this session did after checkpoint `to` (an id or a label), or all of it."""
        after = 0 if to is None else self._checkpoint_seq(to)
        return self.runtime._undo_selected(force, session=self.id, after_seq=after)

    def _checkpoint_seq(self, to: str) -> int:
        found = self.runtime.journal.checkpoints(session=self.id, name=to, newest_first=True)
        if not found:
            known = ", ".join(f"{c['id']}" + (f" ({c['label']})" if c["label"] else "")
                              for c in self.runtime.checkpoints(self.id)) or "none"
            raise GoexError(f"session {self.id} has no checkpoint {to!r}; its checkpoints: {known}")
        return found[0].seq

    def log(self) -> list[dict[str, Any]]:
        return self.runtime.log(self.id)

    def budgets(self) -> dict[str, dict[str, int]]:
        """Each budget of the policy: its limit, what this session spent of it, and what is left."""
        with self.runtime.journal.exclusive():
            spent = dict(self.runtime._session_usage(self.id))
        return {name: {"limit": limit, "spent": spent.get(name, 0), "left": max(limit - spent.get(name, 0), 0)}
                for name, limit in self.runtime.policy.budgets.items()}


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

