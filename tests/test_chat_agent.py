"""examples/chat_agent.py against a small local OpenAI-compatible server that scripts the model's
tool calls: a useful write, destructive calls the policy stops, a checkpoint and a rollback."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chat_agent.py"

SCRIPT: list[tuple[str, dict[str, Any]] | str] = [
    ("fs_write", {"path": "notes/plan.md", "content": "1. clean logs\n", "encoding": None, "append": None}),
    ("fs_delete", {"path": "project", "recursive": True}),  # holds .git: refused
    ("sql_execute", {"db": "main", "sql": "DELETE FROM orders", "params": None}),  # no WHERE: asks, nobody approves
    ("fs_write", {"path": ".env", "content": "TOKEN=x", "encoding": None, "append": None}),
    ("goex_checkpoint", {"label": "before-cleanup"}),
    ("fs_delete", {"path": "logs", "recursive": True}),
    ("goex_undo", {"steps": None, "to": "before-cleanup"}),
    "Done: wrote the plan; the risky steps were refused and the cleanup undone.",
]


class FakeModel:
    """An OpenAI-compatible `/v1/chat/completions` that answers from SCRIPT, one step per request,
    and keeps every request it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ok = self.path == "/v1/chat/completions" and self.headers.get("Authorization") == "Bearer test-key"
                model.requests.append(body)
                step = SCRIPT[min(len(model.requests) - 1, len(SCRIPT) - 1)]
                if isinstance(step, str):
                    message: dict[str, Any] = {"role": "assistant", "content": step}
                else:
                    name, args = step
                    message = {"role": "assistant", "content": None, "tool_calls": [{
                        "id": f"call_{len(model.requests)}", "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)}}]}
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                                   "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tool_results(self) -> list[dict[str, Any]]:
        last = self.requests[-1]["messages"]
        return [json.loads(m["content"]) for m in last if m["role"] == "tool"]


def workspace(root: Path) -> None:
    (root / "project" / ".git").mkdir(parents=True)
    (root / "project" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "logs").mkdir()
    for n in range(3):
        (root / "logs" / f"{n}.log").write_text("x" * n)
    con = sqlite3.connect(root / "app.db")
    con.executescript("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); INSERT INTO orders VALUES (1, 'a');")
    con.commit()
    con.close()


def run_example(root: Path, fake: FakeModel, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLE), "--root", str(root), "--base-url", fake.url, "--model",
                           "scripted", "--db", "main=sqlite:///app.db", *flags, "clean up the workspace"],
                          capture_output=True, text=True, timeout=120, env={"OPENAI_API_KEY": "test-key",
                                                                             "PATH": "/usr/bin:/bin"})


def test_chat_agent_refusals_and_rollback(root: Path):
    workspace(root)
    fake = FakeModel()
    try:
        done = run_example(root, fake)
    finally:
        fake.server.shutdown()
    assert done.returncode == 0, done.stderr
    tools = {t["function"]["name"]: t["function"] for t in fake.requests[0]["tools"]}
    assert tools["fs_write"]["strict"] is True and "goex_undo" in tools and "sql_execute" in tools
    results = fake.tool_results()
    assert [r.get("status", "ok" if r.get("ok") else "") for r in results] == [
        "applied", "denied", "denied", "denied", "ok", "applied", "ok"]
    assert "fs.git-internals" in results[1]["rules"]
    assert "sql.no-where" in results[2]["rules"] and "fs.env-files" in results[3]["rules"]
    assert (root / "notes" / "plan.md").read_text() == "1. clean logs\n"
    assert (root / "project" / ".git" / "HEAD").exists() and not (root / ".env").exists()
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["0.log", "1.log", "2.log"]
    con = sqlite3.connect(root / "app.db")
    assert con.execute("SELECT * FROM orders").fetchall() == [(1, "a")]
    con.close()
    assert "tool fs_delete: denied" in done.stdout and "assistant: Done" in done.stdout
    assert "journal:" in done.stdout


def test_chat_agent_rollback_flag_undoes_the_session(root: Path):
    workspace(root)
    fake = FakeModel()
    try:
        done = run_example(root, fake, "--rollback")
    finally:
        fake.server.shutdown()
    assert done.returncode == 0, done.stderr
    assert "rolled back:" in done.stdout and not (root / "notes").exists()
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["0.log", "1.log", "2.log"]
