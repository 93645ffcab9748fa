"""The adapter contract: what the runtime asks of each domain (files, SQL, HTTP, code, or a
user's package registered under the `goex.adapters` entry point group).

The runtime drives every action through the same steps and never looks inside a domain:

1. `prepare(action)`: analyse without side effects; say what the action targets and what it
   would do (`Prepared.preview`, an instance of the adapter's `preview` model as a dict; the
   policy reads it).
2. `capture(prepared, put_blob)`: gather everything needed to undo it, as a JSON plan; blobs go
   into the journal in the same transaction as the entry, before anything changes. A plan with
   no `ops` is not undoable.
3. `apply(prepared)`: do it; return the output and the after-state fingerprint. Adapters whose
   `staged` is True instead `stage(prepared)`: the effect happens in an open transaction (or an
   isolated layer), what it captured is journaled, then it is committed. Adapters whose
   `judged_after_run` is True are staged before they are journaled: their effects are known
   only once they ran, and `judge(prepared, staged)` says what they amount to.
4. `conflicts(plan, after)`: what differs now from the after-state (empty means undo is exact).
5. `revert(plan, after, get_blob, force)`: put the before-state back; `after` is None when the
   action never recorded one (recovery). Must be idempotent: recovery may run it on a
   half-applied action, or again after a crash during undo. Returns details for the journal.
6. `recover(plan, action, get_blob)`: settle an action journaled but not finished:
   ("reverted", {}, ""), ("applied", after, ""), or ("review", {}, why). By default it reverts.
7. Optionally, coalesced undo of a range: `coalesce(plan, after)` says an entry can be undone
   together with others (`Coalesced`: which adapter undoes the group, under which key);
   `range_conflicts(items)` and `revert_range(items, get_blob)` then check and undo the whole
   group as one operation, with the outcome of undoing each entry in turn, newest first;
   `end_range(items)` follows both, whatever happened. A forced undo is never coalesced.

Each adapter also answers, once for every caller: what an action spends (`spends`, the
policy's budgets), what it destroys (`destroys`, the gym's damage), how to describe it to a
person (`summarize` before it runs, `describe` from its journal entry), what of it must not be
written out (`redact`), and which workspace paths belong to it (`owned_paths`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..journal.read import EntryDetail
    from .fs.workspace import Workspace

PutBlob = Callable[[bytes], str]
GetBlob = Callable[[str], bytes]
Outcome = tuple[str, dict[str, Any], str]  # ("reverted" | "applied" | "review", after, why)


@dataclass
class Prepared:
    action: Any  # the action model (a pydantic model with a `type` field)
    targets: list[str]
    preview: dict[str, Any] = field(default_factory=dict)
    effect: bool = True  # False for reads: journaled, nothing to undo
    state: Any = None  # adapter-private analysis carried to capture/apply
    covers: list[str] = field(default_factory=list)  # more paths it changes: a folder's contents, a database file


@dataclass
class Applied:
    output: Any
    after: dict[str, Any] = field(default_factory=dict)


class Staged(Protocol):
    """An effect made in an open transaction (or an isolated layer), not yet committed."""

    @property
    def output(self) -> Any: ...

    @property
    def capture(self) -> Callable[[PutBlob], dict[str, Any]]:
        """Reads the undo data inside the transaction, as JSON."""

    @property
    def commit(self) -> Callable[[], None]: ...

    @property
    def abort(self) -> Callable[[], None]: ...


@dataclass
class Judged:
    """What a staged run amounts to, judged before anything of it lands: the actions of other
    domains it equals (each `(action type, paths, preview)`, decided by the policy like those
    actions), the workspace paths it changes, preview fields known only now, and a summary for
    an approver."""

    actions: list[tuple[str, list[str], dict[str, Any]]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    preview: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True)
class Damage:
    """What an action destroys: files, rows, remote resources (the gym charges it, even undone)."""

    files: int = 0
    rows: int = 0
    resources: int = 0

    def add(self, other: "Damage") -> "Damage":
        return Damage(self.files + other.files, self.rows + other.rows, self.resources + other.resources)

    def over(self, allowed: Any) -> bool:
        return self.files > allowed.files or self.rows > allowed.rows or self.resources > allowed.resources


@dataclass
class Context:
    """What an adapter is built from: the confined workspace, the journal's blobs, the runtime's
    settings (`http`, `databases`, `sandbox`, ... and `adapters={"<prefix>": {...}}` for a
    user's domain), and the other adapters, by prefix."""

    root: Path
    workspace: "Workspace"
    read_blob: GetBlob
    settings: dict[str, Any]
    adapter: Callable[[str], "Adapter"]

    def options(self, prefix: str) -> dict[str, Any]:
        """The settings given for one domain: `Runtime(adapters={prefix: {...}})`."""
        return dict((self.settings.get("adapters") or {}).get(prefix) or {})


@dataclass(frozen=True)
class Coalesced:
    """An entry whose undo can be merged with others': entries with the same `adapter` and `key`
    are checked and undone together by that adapter, from `plan` and `after` in its terms."""

    adapter: "Adapter"
    key: str
    plan: dict[str, Any]
    after: dict[str, Any]


class Preview(BaseModel):
    """Base of every adapter's preview model. Fields a policy rule may match are bool, str,
    numbers and lists of str; others (nested detail) are shown, not matched."""

    model_config = ConfigDict(extra="forbid")


class Adapter(abc.ABC):
    """Base class of every domain. Subclasses set `prefix`, `actions` and `preview`, and
    implement `prepare`, `capture`, `apply` (or `stage`) and `revert`; the rest has defaults."""

    prefix: ClassVar[str]
    actions: ClassVar[tuple[type[BaseModel], ...]] = ()
    preview: ClassVar[type[BaseModel]] = Preview
    budgets: ClassVar[tuple[str, ...]] = ()  # budget names `spends` may report beyond the shipped ones
    edits_files: ClassVar[bool] = False  # its effects are file operations: the workspace's owned paths are off limits
    staged: ClassVar[bool] = False  # applied through `stage` (an open transaction), not `apply`
    judged_after_run: ClassVar[bool] = False  # staged before it is journaled, judged on what it did
    span_kind: ClassVar[str] = "internal"  # its actions' span kind: "client" when each calls a remote server

    @classmethod
    def create(cls, context: Context) -> "Adapter":
        """The adapter for one runtime."""
        return cls()

    # -- the lifecycle ---------------------------------------------------------------------------

    @abc.abstractmethod
    def prepare(self, action: Any) -> Prepared:
        """Required."""

    @abc.abstractmethod
    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        """Required."""

    def stage(self, prepared: Prepared) -> Staged:
        raise NotImplementedError(f"{type(self).__name__} is not staged")

    def judge(self, prepared: Prepared, staged: Any) -> Judged:
        return Judged()

    @abc.abstractmethod
    def apply(self, prepared: Prepared) -> Applied:
        """Required."""

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        return []

    @abc.abstractmethod
    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> dict[str, Any] | None:
        """Required."""

    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        self.revert(plan, None, get_blob, True)
        return "reverted", {}, ""

    def settles(self, plan: dict[str, Any]) -> bool:
        """Whether `recover` of this entry, once its effect completed, finds that off the world and
        keeps it as applied (never reverts it). Then its `applied` record may wait for the next
        journal commit (`Journal.defer(settled=True)`): a result already returned survives a kill."""
        return False

    # -- coalesced undo of a range (optional) ----------------------------------------------------

    def coalesce(self, plan: dict[str, Any], after: dict[str, Any]) -> Coalesced | None:
        """How this entry joins a coalesced undo, or None: it is undone on its own."""
        return None

    def joins(self, group: list[Coalesced], item: Coalesced) -> bool:
        """Whether `item` (older than every entry of `group`, same key) can be undone with them."""
        return True

    def range_conflicts(self, items: list[Coalesced]) -> list[list[tuple[str, str]]] | None:
        """For entries of one key, newest first: what each would meet (as `conflicts` says it) if
        it were undone right after the newer ones. Nothing is committed: an adapter may keep the
        undo it checked applied in an open transaction, for `revert_range` of the same entries to
        commit after the `undoing` record is durable (`end_range` rolls it back otherwise). None:
        these entries cannot be undone together after all (found only now); they are undone one
        by one."""
        raise NotImplementedError(f"{type(self).__name__} does not coalesce undo")

    def revert_range(self, items: list[Coalesced], get_blob: GetBlob) -> None:
        """Undo entries of one key, newest first, that `range_conflicts` found free of conflicts,
        as one operation ending where undoing each in turn would. Recovery may finish an
        interrupted one entry by entry (each entry's `revert`, forced, newest first)."""
        raise NotImplementedError(f"{type(self).__name__} does not coalesce undo")

    def end_range(self, items: list[Coalesced]) -> None:
        """Called once the check and undo of a group of entries are over, whatever happened:
        anything `range_conflicts` left prepared for `revert_range` (an uncommitted transaction
        holding the undo) and `revert_range` did not finish is let go, changing nothing."""
        return None

    def summarize(self, prepared: Prepared) -> str:
        """What the action would do, for a person deciding whether to allow it."""
        return f"{prepared.action.type} {self.shown_target(prepared.action.type, prepared.targets)}"

    def fingerprint(self) -> str | None:
        """A digest of the state this domain manages, or None when it keeps none of its own."""
        return None

    def isolated_stage(self, prepared: Prepared) -> bool:
        """Whether `stage(prepared)` changes nothing anyone can see until its `commit`, and nothing
        at all when it is aborted or the process dies (one database transaction): its entry is then
        journaled together with the capture, in one commit, once it is staged. False (the default):
        the entry is journaled durably before `stage` runs, as for any effect."""
        return False

    def holds_run(self, prepared: Prepared) -> bool:
        """Whether `prepare` already ran the effect in an open transaction that `stage` adopts (it
        changes nothing anyone can see until its `commit`): the entry is then journaled together
        with the capture, in one commit. False (the default)."""
        return False

    def release(self, prepared: Prepared) -> None:  # noqa: B027 - optional: most hold nothing between steps
        """The prepared action is not going to be staged now (refused, parked, asked about, only
        checked, or failed first): let go of what `prepare` holds open for it; nothing by default."""

    def close(self) -> None:  # noqa: B027 - optional: most adapters hold nothing to release
        """Release what the adapter holds (connections, files); nothing by default."""

    # -- one answer each, for the policy, the gym and review ------------------------------------

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        """What the action spends of each budget (only the non-zero ones)."""
        return {}

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        return Damage()

    def describe(self, entry: "EntryDetail") -> str:
        """What a journaled action did, for review."""
        return entry.error or f"{entry.type} {entry.target}"

    def span_attributes(self, action: Any, output: Any) -> dict[str, Any]:
        """OpenTelemetry semantic-convention attributes of one action's span (`output` is None when
        it did not apply); never a secret's value."""
        return {}

    def redact(self, text: str) -> str:
        """`text` with what must never be written out (a secret's value) taken out."""
        return text

    def redact_action(self, action: dict[str, Any]) -> dict[str, Any]:
        """The action's JSON form as journaled and shown."""
        return action

    def shown_target(self, action_type: str, targets: list[str]) -> str:
        """The targets as one line (the journal's `target` column, `goex log`)."""
        return ", ".join(targets)

    def owned_paths(self) -> dict[str, str]:
        """Workspace paths (lower case) that belong to this domain, with why: file actions may not change them."""
        return {}
