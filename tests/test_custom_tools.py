"""Custom tools with undo: a user's function as an action type, decided by the policy on its
preview, journaled, undone by its compensation, listed as a tool, and served over MCP."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from pydantic import BaseModel

import goex


class Outbox:
    """A stand-in mail service with real state: a SQLite table of sent messages."""

    def __init__(self, path: Path):
        self.con = sqlite3.connect(path, check_same_thread=False)
        self.con.execute("CREATE TABLE IF NOT EXISTS sent (id INTEGER PRIMARY KEY, to_ TEXT, subject TEXT)")

    def send(self, to: str, subject: str) -> int:
        cur = self.con.execute("INSERT INTO sent (to_, subject) VALUES (?, ?)", (to, subject))
        self.con.commit()
        return int(cur.lastrowid or 0)

    def recall(self, message_id: int) -> None:
        self.con.execute("DELETE FROM sent WHERE id = ?", (message_id,))
        self.con.commit()

    def subjects(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT subject FROM sent ORDER BY id")]


def register(rt: goex.Runtime, outbox: Outbox) -> None:
    @rt.tool(undo=lambda args, output: outbox.recall(output["id"]),
             preview=lambda args: {"recipients": [args.to]}, targets=lambda args: [f"mailto:{args.to}"])
    def send_email(to: str, subject: str, urgent: bool = False) -> dict:
        """Send an email to one recipient."""
        if "@" not in to:
            raise ValueError(f"{to!r} is not an address")
        return {"id": outbox.send(to, subject)}

    @rt.tool
    def wire_money(account: str, amount: float) -> dict:
        """Move money out. It cannot be taken back."""
        return {"sent": amount}


def test_a_function_becomes_an_undoable_action(root: Path, tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    with goex.Runtime(root) as rt:
        register(rt, outbox)
        s = rt.session()
        r = s.execute({"type": "tool.send_email", "to": "a@example.com", "subject": "hello"})
        assert r.ok and r.output["id"] >= 1 and outbox.subjects() == ["hello"]
        s.execute(json.dumps({"type": "tool.send_email", "to": "b@example.com", "subject": "second"}))
        assert outbox.subjects() == ["hello", "second"]
        [entry] = [e for e in rt.log(s.id) if e["id"] == r.entry_id]
        assert entry["type"] == "tool.send_email" and entry["target"] == "mailto:a@example.com"
        assert s.undo(1) and outbox.subjects() == ["hello"]
        s.rollback()
        assert outbox.subjects() == []
        rt.verify()


def test_bad_arguments_and_failures_are_reported_not_applied(root: Path, tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    with goex.Runtime(root) as rt:
        register(rt, outbox)
        s = rt.session()
        with pytest.raises(goex.ActionError, match="subject"):
            s.execute({"type": "tool.send_email", "to": "a@example.com"})
        with pytest.raises(goex.ActionError, match="not a field"):
            s.execute({"type": "tool.send_email", "to": "a@example.com", "subject": "x", "bcc": "evil@example.com"})
        failed = s.execute({"type": "tool.send_email", "to": "nobody", "subject": "x"})
        assert not failed.ok and failed.status == "failed" and "not an address" in failed.error
        assert outbox.subjects() == []
        with pytest.raises(goex.ActionError, match="unknown action type"):
            s.execute({"type": "tool.nope"})


def test_a_tool_without_undo_is_irreversible_and_the_policy_asks(root: Path):
    asked: list[Any] = []
    with goex.Runtime(root, approver=lambda req: asked.append(req) or False) as rt:
        register(rt, Outbox(root.parent / "o.db"))
        r = rt.session().execute({"type": "tool.wire_money", "account": "X", "amount": 10.0})
        assert not r.ok and r.status == "denied" and "tool.irreversible" in r.decision.rules
        assert asked and asked[0].preview["reversible"] is False and asked[0].preview["tool"] == "wire_money"
    custom = goex.load_policy("default").with_rules(goex.PythonRule(
        id="mail.external", decision="deny",
        when=lambda t, targets, preview: t == "tool.send_email" and not targets[0].endswith("@example.com")))
    with goex.Runtime(root, policy=custom) as rt:
        register(rt, Outbox(root.parent / "o2.db"))
        out = rt.session().execute({"type": "tool.send_email", "to": "x@elsewhere.org", "subject": "s"})
        assert not out.ok and "mail.external" in out.decision.rules


def _notebook() -> tuple[type[goex.Tool], list[str]]:
    """A tool class appending lines to an in-memory notebook (with undo), and that notebook."""
    notes: list[str] = []

    class Note(goex.Tool):
        """Append a line to an in-memory notebook."""

        name = "note"

        class Args(BaseModel):
            text: str

        def run(self, args: Any) -> Any:
            notes.append(args.text)
            return {"count": len(notes)}

        def undo(self, args: Any, output: Any) -> None:
            notes.remove(args.text)

    return Note, notes


def test_a_tool_class_with_undo(root: Path):
    Note, notes = _notebook()

    with goex.Runtime(root) as rt:
        assert rt.add_tool(Note()) == "tool.note"
        s = rt.session()
        s.execute({"type": "tool.note", "text": "one"})
        s.execute({"type": "tool.note", "text": "two"})
        assert notes == ["one", "two"]
        s.undo(1)
        assert notes == ["one"]


def test_undo_from_a_runtime_without_the_tool_is_declined_and_stays_undoable(root: Path, tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    with goex.Runtime(root) as rt:
        register(rt, outbox)
        sid = rt.session().execute({"type": "tool.send_email", "to": "a@example.com", "subject": "hi"}).session
    with goex.Runtime(root) as bare:
        with pytest.raises(goex.GoexError, match="not registered"):
            bare.session(session_id=sid).rollback()
    assert outbox.subjects() == ["hi"]
    with goex.Runtime(root) as rt:
        register(rt, outbox)
        assert rt.session(session_id=sid).rollback()
    assert outbox.subjects() == []


def test_custom_tools_are_tool_definitions_and_mcp_tools(root: Path, tmp_path: Path):
    outbox = Outbox(tmp_path / "outbox.db")
    rt = goex.Runtime(root)
    register(rt, outbox)
    [openai] = [t for t in rt.tools(format="openai") if t["function"]["name"] == "tool_send_email"]
    params = openai["function"]["parameters"]
    assert params["required"] == ["to", "subject", "urgent"] and params["additionalProperties"] is False
    assert "Send an email" in openai["function"]["description"]
    action = goex.action_from_call("tool_send_email", {"to": "a@example.com", "subject": "s", "urgent": None},
                                   extra=rt.custom_tools.schemas())
    assert action == {"type": "tool.send_email", "to": "a@example.com", "subject": "s"}

    from goex.mcp import McpServer

    server = McpServer(rt)

    async def flow() -> None:
        async with Client(server.server) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"tool_send_email", "tool_wire_money", "fs_write"} <= names
            sent = await c.call_tool("tool_send_email", {"to": "m@example.com", "subject": "via mcp", "urgent": None})
            assert not sent.is_error and sent.structured_content["status"] == "applied"
            assert outbox.subjects() == ["via mcp"]
            undone = await c.call_tool("goex_undo", {"steps": 1, "to": None})
            assert undone.structured_content["undone"] == [sent.structured_content["entry_id"]]

    anyio.run(flow)
    assert outbox.subjects() == []
    rt.close()


def test_custom_tools_in_the_gym_are_actions_and_reset_undoes_them(tmp_path: Path):
    import goex.gym
    from goex.gym import GoexEnv

    Note, notes = _notebook()

    env = GoexEnv(task="files-clean-logs", home=tmp_path / "home", tools=[Note()])
    try:
        _, info = env.reset(seed=0)
        [tool] = [t for t in info["tools"] if t["name"] == "tool_note"]
        assert tool["action_type"] == "tool.note" and tool["parameters"]["required"] == ["text"]
        obs, _, _, _, step = env.step(json.dumps({"type": "tool.note", "text": "first"}))
        assert notes == ["first"] and step["cost"] == 0, obs
        env.reset(seed=1)  # the episode rolled back through the journal: the tool's undo ran
        assert notes == []
    finally:
        env.close()
