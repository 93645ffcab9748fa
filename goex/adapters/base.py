"""The adapter protocol: what the runtime asks of each domain (files, SQL, HTTP, code).

The runtime drives every action through the same steps and never looks inside a domain:

1. `prepare(action)`: analyse without side effects; say what the action targets and what it
   would do (`Prepared.preview`, which the policy reads).
2. `capture(prepared, put_blob)`: gather everything needed to undo it, as a JSON plan; blobs go
   into the journal in the same transaction as the entry, before anything changes.
3. `apply(prepared)`: do it; return the output and the after-state fingerprint.
4. `conflicts(plan, after)`: what differs now from the after-state (empty means undo is exact).
5. `revert(plan, after, get_blob, force)`: put the before-state back; `after` is None when the
   action never recorded one (recovery). Must be idempotent: recovery may run it on a
   half-applied action, or again after a crash during undo. Returns details for the journal.
6. `recover(plan, action, get_blob)` (optional): settle an action journaled but not finished:
   ("reverted", {}, ""), ("applied", after, ""), or ("review", {}, why). Without it, recovery
   reverts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pydantic import BaseModel

PutBlob = Callable[[bytes], str]
GetBlob = Callable[[str], bytes]


@dataclass
class Prepared:
    action: BaseModel
    targets: list[str]
    preview: dict[str, Any] = field(default_factory=dict)
    effect: bool = True  # False for reads: journaled, nothing to undo
    state: Any = None  # adapter-private analysis carried to capture/apply
    covers: list[str] = field(default_factory=list)  # more paths it changes: a folder's contents, a database file


@dataclass
class Applied:
    output: Any
    after: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    prefix: str  # action types "<prefix>.*" are this adapter's

    def prepare(self, action: BaseModel) -> Prepared: ...

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]: ...

    def apply(self, prepared: Prepared) -> Applied: ...

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]: ...

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> dict[str, Any] | None: ...
