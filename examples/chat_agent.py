"""An agent loop on any OpenAI-compatible chat endpoint, with goex as its tools.

The model gets one strict tool per action type (`rt.tools(format="openai")`) plus two of goex's
own (`goex_checkpoint`, `goex_undo`); every tool call it makes runs through a goex session: checked
against the policy, journaled, applied, and undoable. What the policy refuses comes back to the
model as the tool's result, with the rule that refused it, so it can change course.

Run:
    python examples/chat_agent.py --root DIR "tidy up the logs folder"
        [--base-url http://127.0.0.1:8000/v1] [--model NAME] [--policy strict] [--db main=sqlite:///app.db]
        [--yes] [--max-turns 20] [--rollback]

The endpoint is `$OPENAI_BASE_URL` (default https://api.openai.com/v1) with `$OPENAI_API_KEY`;
any server speaking `POST /chat/completions` with tools works (a local model server, a proxy).
The root's settings (`goex init`) apply; --policy and --db override them. At the end it prints
what the session did; --rollback undoes all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

import goex

CONTROL_TOOLS = [
    {"type": "function", "function": {
        "name": "goex_checkpoint", "strict": True,
        "description": "Mark a checkpoint; goex_undo can go back to it.",
        "parameters": {"type": "object", "properties": {"label": {"type": ["string", "null"]}},
                       "required": ["label"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "goex_undo", "strict": True,
        "description": "Undo your last `steps` changes, or everything after checkpoint `to`.",
        "parameters": {"type": "object", "properties": {"steps": {"type": ["integer", "null"]},
                                                        "to": {"type": ["string", "null"]}},
                       "required": ["steps", "to"], "additionalProperties": False}}},
]

SYSTEM = ("You act on a workspace through tools. Every call is checked by a policy and can be undone; "
          "if a call is refused, read why and choose a safer way. Undo your own mistakes with goex_undo.")


def run_tool(session: goex.Session, name: str, arguments: str) -> dict[str, Any]:
    """One tool call, run through goex; the result the model sees."""
    try:
        args = json.loads(arguments or "{}")
        if name == "goex_checkpoint":
            return {"ok": True, "checkpoint": session.checkpoint(args.get("label"))}
        if name == "goex_undo":
            if args.get("to"):
                return {"ok": True, "undone": session.rollback(to=args["to"])}
            return {"ok": True, "undone": session.undo(int(args.get("steps") or 1))}
        action = goex.action_from_call(name, args, extra=session.runtime.custom_tools.schemas())
        return session.execute(action).to_json()
    except (goex.GoexError, ValueError) as exc:  # a malformed call, an undo conflict: told to the model
        return {"ok": False, "status": "error", "error": str(exc)}


def chat(client: httpx.Client, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict:
    response = client.post("/chat/completions", json={"model": model, "messages": messages, "tools": tools,
                                                      "tool_choice": "auto", "parallel_tool_calls": False})
    response.raise_for_status()
    return response.json()["choices"][0]["message"]


def agent_loop(rt: goex.Runtime, client: httpx.Client, model: str, task: str, max_turns: int) -> goex.Session:
    session = rt.session(actor=f"chat:{model}")
    tools = rt.tools(format="openai") + CONTROL_TOOLS
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task}]
    for _ in range(max_turns):
        reply = chat(client, model, messages, tools)
        messages.append({k: v for k, v in reply.items() if k in ("role", "content", "tool_calls")})
        calls = reply.get("tool_calls") or []
        if not calls:
            print(f"assistant: {reply.get('content') or ''}")
            return session
        for call in calls:
            fn = call["function"]
            result = run_tool(session, fn["name"], fn.get("arguments") or "{}")
            shown = result.get("status", "ok" if result.get("ok") else "error")
            why = f" ({', '.join(result['rules'])})" if result.get("rules") and not result.get("ok") else ""
            print(f"tool {fn['name']}: {shown}{why}")
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": json.dumps(result, ensure_ascii=False, default=str)})
    print(f"stopped after {max_turns} turns")
    return session


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("--root", default=os.environ.get("GOEX_ROOT"), required=not os.environ.get("GOEX_ROOT"))
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"))
    p.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    p.add_argument("--policy", help="policy pack (default: the root's settings, else default)")
    p.add_argument("--db", action="append", default=[], metavar="NAME=URL")
    p.add_argument("--yes", action="store_true", help="approve what the policy would ask about (else refused)")
    p.add_argument("--max-turns", type=int, default=20)
    p.add_argument("--rollback", action="store_true", help="undo everything the agent did, at the end")
    args = p.parse_args(argv)

    overrides: dict[str, Any] = {"approver": (lambda request: True) if args.yes else None}
    if args.policy:
        overrides["policy"] = args.policy
    if args.db:
        overrides["databases"] = dict(spec.split("=", 1) for spec in args.db)
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'none')}"}
    with goex.Runtime.open(args.root, **overrides) as rt, \
            httpx.Client(base_url=args.base_url, headers=headers, timeout=120) as client:
        session = agent_loop(rt, client, args.model, args.task, args.max_turns)
        print("journal:")
        for entry in session.log():
            print(f"  {entry['id']:>5}  {entry['type']:<12} {entry['target'][:40]:<40} {entry['status']}")
        if args.rollback:
            print(f"rolled back: {', '.join(session.rollback()) or 'nothing'}")
        rt.verify()
    return 0


if __name__ == "__main__":
    sys.exit(main())
