"""An example goex domain: a key-value store (one JSON file) with exact undo.

Everything a domain needs is here, and nothing in goex was edited to add it:

- the actions (`kv.set`, `kv.delete`, `kv.get`): pydantic models, part of `goex schema`;
- the preview model: the fields a policy rule may match (`goex policy lint` checks rules
  against it; `python -m goex.policy.fields` lists them);
- the adapter: prepare, capture, apply, conflicts, revert, and the answers the policy, the gym
  and review ask of every domain (what it spends, destroys, how to describe it, which
  workspace path it owns);
- the registration: the `goex.adapters` entry point in pyproject.toml.

Settings: `Runtime(adapters={"kv": {"path": "store.json"}})` (relative to the root; default
`kv.json`). The store file belongs to the adapter: file actions may not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from goex.adapters.base import Adapter, Applied, Context, Damage, GetBlob, Prepared, Preview, PutBlob
from goex.errors import ActionFailed, PathRefused


class _KvAction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    key: str = Field(min_length=1, max_length=256, description="The key.")

    def targets(self) -> list[str]:
        return [self.key]


class KvSet(_KvAction):
    """Set a key to a string value."""

    type: Literal["kv.set"] = "kv.set"
    value: str = Field(description="The new value.")


class KvDelete(_KvAction):
    """Delete a key (an error when it is missing)."""

    type: Literal["kv.delete"] = "kv.delete"


class KvGet(_KvAction):
    """Read a key's value (null when it is missing)."""

    type: Literal["kv.get"] = "kv.get"


class KvPreview(Preview):
    """What a key-value action would do."""

    key: str = Field(description="The key.")
    exists: bool = Field(description="The key has a value now.")
    bytes_written: int | None = Field(None, description="kv.set: bytes of the new value.")


class KvAdapter(Adapter):
    prefix = "kv"
    actions = (KvSet, KvDelete, KvGet)
    preview = KvPreview
    budgets = ("kv_writes",)

    @classmethod
    def create(cls, context: Context) -> "KvAdapter":
        spelled = str(context.options("kv").get("path") or "kv.json")
        return cls(context.root, spelled)

    def __init__(self, root: Path, spelled: str):
        path = (root / spelled).resolve()
        if not path.is_relative_to(root):
            raise PathRefused(spelled, "the kv store lives inside the workspace root")
        self.path = path
        self.inside = path.relative_to(root).as_posix()

    # -- the store -----------------------------------------------------------------------------

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ActionFailed(f"the kv store {self.inside} cannot be read: {exc}") from None
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True), "utf-8")
        os.replace(tmp, self.path)

    # -- the lifecycle -------------------------------------------------------------------------

    def prepare(self, action: Any) -> Prepared:
        store = self._read()
        exists = action.key in store
        if action.type == "kv.delete" and not exists:
            raise ActionFailed(f"kv.delete: no key {action.key!r}")
        preview: dict[str, Any] = {"key": action.key, "exists": exists}
        if action.type == "kv.set":
            preview["bytes_written"] = len(action.value.encode("utf-8"))
        return Prepared(action, action.targets(), preview, action.type != "kv.get", {"before": store.get(action.key)})

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        return {"ops": [{"op": "put", "key": prepared.action.key, "before": prepared.state["before"]}]}

    def apply(self, prepared: Prepared) -> Applied:
        action, store = prepared.action, self._read()
        if action.type == "kv.get":
            return Applied({"key": action.key, "value": store.get(action.key)})
        if action.type == "kv.set":
            store[action.key] = action.value
        else:
            store.pop(action.key, None)
        self._write(store)
        return Applied({"key": action.key}, {action.key: _digest(store.get(action.key))})

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        store = self._read()
        return [(key, "changed since the action") for key, digest in after.items() if _digest(store.get(key)) != digest]

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> None:
        store = self._read()
        for op in plan["ops"]:
            if op["before"] is None:
                store.pop(op["key"], None)
            else:
                store[op["key"]] = op["before"]
        self._write(store)

    # -- what the policy, the gym and review ask -----------------------------------------------

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        return {} if action_type == "kv.get" else {"kv_writes": 1}

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        return Damage(rows=1) if action_type == "kv.delete" else Damage()

    def describe(self, entry: Any) -> str:
        before = (entry.plan.get("ops") or [{}])[0].get("before")
        was = "missing" if before is None else repr(before)
        return entry.error or f"{entry.type} {entry.target} (was {was})"

    def owned_paths(self) -> dict[str, str]:
        return {self.inside.lower(): "is the kv store; only kv.* actions may change it"}


def _digest(value: str | None) -> str:
    return "-" if value is None else hashlib.sha256(value.encode("utf-8")).hexdigest()
