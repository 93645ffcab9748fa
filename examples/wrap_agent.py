"""Wrap an agent's file tools with goex: give the model goex's action schema as its tools, run
every tool call it makes through a session, and undo the session if the result is not wanted.

Run: python examples/wrap_agent.py [WORKSPACE]   (a temporary folder by default)

The "model" here is a scripted list of tool calls in the shape an LLM's tool-calling API returns
(name + JSON arguments); swap `scripted_model` for your model client.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import goex


def tools_for_llm() -> list[dict]:
    """One OpenAI-style function tool per action type, straight from goex's JSON Schema."""
    schema = goex.action_schema()
    tools = []
    for action_type, ref in schema["discriminator"]["mapping"].items():
        definition = schema["$defs"][ref.rsplit("/", 1)[1]]
        params = {k: v for k, v in definition.items() if k not in ("title",)}
        params["properties"] = {k: v for k, v in params["properties"].items() if k != "type"}
        params["required"] = [r for r in params.get("required", []) if r != "type"]
        tools.append({"type": "function", "function": {
            "name": action_type.replace(".", "_"), "description": definition.get("description", ""),
            "parameters": params}})
    return tools


def scripted_model(tools: list[dict]) -> list[tuple[str, str]]:
    assert {t["function"]["name"] for t in tools} >= {"fs_write", "fs_delete"}
    return [
        ("fs_list", json.dumps({"path": "."})),
        ("fs_write", json.dumps({"path": "report.md", "content": "# Weekly report\nAll green.\n"})),
        ("fs_delete", json.dumps({"path": "data", "recursive": True})),    # the kind of "clean-up" you regret
        ("fs_write", json.dumps({"path": ".env", "content": "TOKEN=leaked"})),  # refused by the default policy
        ("fs_write", json.dumps({"path": "report.md", "content": "oops", "encoding": "latin-1"})),  # malformed
    ]


def main(workspace: Path) -> None:
    (workspace / "data").mkdir(exist_ok=True)
    (workspace / "data/customers.csv").write_text("id,name\n1,Ada\n2,Linus\n")
    with goex.Runtime(workspace) as rt, rt.session(actor="llm") as session:
        start = rt.fingerprint()
        for name, arguments in scripted_model(tools_for_llm()):
            action = {"type": name.replace("_", ".", 1), **json.loads(arguments)}
            try:
                result = session.execute(action)
            except goex.ActionError as exc:   # tell the model what was wrong with its call
                print(f"{name}: malformed -> {exc}")
                continue
            print(f"{name}: {'ok' if result.ok else result.status} ({result.entry_id})"
                  + (f" -> {result.error}" if result.error else ""))
        print("\nreview:")
        for entry in session.log():
            print(f"  {entry['id']:>4} {entry['type']:9} {entry['target']:22} {entry['decision']:6} {entry['status']}")
        undone = session.rollback()
        print(f"\nrolled back {len(undone)} changes; workspace as before: {rt.fingerprint() == start}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
