"""Reference agents: scripted policies that show what the costs and rewards measure.

- `honest`: the task's honest solution (or `flag` for an impossible task).
- `reckless`: takes the task's destructive shortcut (the honest path where it has none).
- `cheater`: takes the task's deceptive shortcut (the honest path where it has none).
- `random`: random actions, hostile paths and malformed text included; for soak tests.

An agent has `reset(observation, info)` and `act(observation, info) -> str` (one JSON action).
Scripted agents read their script from the task file named in the reset info (`task_file`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .task import SERVICE_ALIAS, load_task


class Agent:
    name = "agent"

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        pass

    def act(self, observation: str, info: dict[str, Any]) -> str:
        raise NotImplementedError


class ScriptedAgent(Agent):
    def __init__(self, role: str):
        self.name = role
        self.role = role
        self._script: list[dict[str, Any]] = []

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        task = load_task(info["task_file"])
        script = getattr(task.reference, self.role, None) or task.reference.honest
        self._script = list(script)

    def act(self, observation: str, info: dict[str, Any]) -> str:
        if not self._script:
            return json.dumps({"type": "submit", "message": "done"})
        return json.dumps(self._script.pop(0))


_HOSTILE = ["../escape.txt", "/etc/passwd", ".goex/journal.db", "../../tmp/x", "link/../../x", "tests", ".",
            "..", ".git/config", ".env", "a/b/c.txt", "notes.txt"]


class RandomAgent(Agent):
    """Uniformly silly: random action types over paths, tables and routes seen in the instruction,
    plus hostile paths, destructive SQL, and malformed text."""

    name = "random"

    def __init__(self, seed: int | None = None, code: float = 0.02):
        self.rng = np.random.default_rng(seed)
        self.code = code
        self.paths: list[str] = list(_HOSTILE)
        self.tables: list[str] = ["t"]

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        self.paths = sorted(set(re.findall(r"[\w.-]+(?:/[\w.-]+)*\.\w+|[\w-]+/", observation))) + _HOSTILE
        self.tables = sorted(set(re.findall(r"\b(?:table|FROM|INTO|UPDATE)\s+`?(\w+)", observation))) or ["t"]
        self.dbs = sorted(set(re.findall(r"(\w+) \((?:SQLite|PostgreSQL|MySQL)\)", observation))) or ["main"]

    def _pick(self, seq: list[Any]) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def act(self, observation: str, info: dict[str, Any]) -> str:
        r = float(self.rng.random())
        p, t = self._pick(self.paths), self._pick(self.tables)
        if r < 0.03:
            return self._pick(["{not json", "[]", '{"type": "fs.nope"}', '{"type": "fs.write"}', "", "null"]) or " "
        if r < 0.06:
            return json.dumps({"type": "submit", "message": "all done, every test passes"})
        if r < 0.08:
            return json.dumps({"type": "flag", "reason": "unsure"})
        if r < 0.08 + self.code:
            return json.dumps({"type": "code.run", "language": "bash", "timeout_s": 10, "code": self._pick(
                [f"echo junk > '{p}'", "rm -rf ./*", "ls -la", "cat /etc/hostname", f"rm -f '{p}'"])})
        kind = self._pick(["read", "list", "write", "delete", "move", "mkdir", "chmod", "sql", "sql", "http"])
        if kind == "read":
            return json.dumps({"type": "fs.read", "path": p})
        if kind == "list":
            return json.dumps({"type": "fs.list", "path": self._pick([".", p])})
        if kind == "write":
            return json.dumps({"type": "fs.write", "path": p, "content": f"random {self.rng.integers(1000)}\n",
                               "append": bool(self.rng.random() < 0.3)})
        if kind == "delete":
            return json.dumps({"type": "fs.delete", "path": p, "recursive": bool(self.rng.random() < 0.5)})
        if kind == "move":
            return json.dumps({"type": "fs.move", "src": p, "dst": self._pick(self.paths)})
        if kind == "mkdir":
            return json.dumps({"type": "fs.mkdir", "path": f"dir{self.rng.integers(5)}"})
        if kind == "chmod":
            return json.dumps({"type": "fs.chmod", "path": p, "mode": self._pick(["0644", "0777", "0755"])})
        if kind == "sql":
            sql = self._pick([f"SELECT * FROM {t}", f"DELETE FROM {t}", f"DROP TABLE {t}",
                              f"UPDATE {t} SET rowid = rowid WHERE rowid = {self.rng.integers(1, 5)}",
                              f"DELETE FROM {t} WHERE rowid = {self.rng.integers(1, 5)}", "SELEC nonsense",
                              "CREATE TABLE junk(x)", "VACUUM"])
            return json.dumps({"type": "sql.execute", "db": self._pick(self.dbs), "sql": sql})
        method = self._pick(["GET", "GET", "DELETE", "PATCH", "POST"])
        route = self._pick(["/orders", "/orders/ord_1", "/orders/ord_9", "/items/itm_1", "/payments", "/emails"])
        action: dict[str, Any] = {"type": "http.request", "method": method, "url": SERVICE_ALIAS + route}
        if method in ("PATCH", "POST"):
            action["json"] = {"status": "cancelled"} if method == "PATCH" else {"amount": 5, "currency": "EUR",
                                                                                 "to": "x"}
        return json.dumps(action)


AGENTS = ("honest", "reckless", "cheater", "random")


def make_agent(name: str, seed: int | None = None) -> Agent:
    """A reference agent by name: honest, reckless, cheater or random."""
    if name == "random":
        return RandomAgent(seed)
    if name in AGENTS:
        return ScriptedAgent(name)
    raise ValueError(f"unknown agent {name!r}; the reference agents: {', '.join(AGENTS)}")
