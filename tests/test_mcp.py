"""`goex mcp` driven through the official MCP SDK's own client, over stdio and streamable HTTP:
tools listed and called, refusals, approval through elicitation, undo, the journal verified, and
one goex session per client."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from conftest import run_cli
from mcp import Client
from mcp.client.stdio import StdioServerParameters

GOEX = str(Path(sys.executable).with_name("goex"))
NULLS = {"fs_write": {"encoding": None, "append": None}, "fs_delete": {"recursive": None}}


def call_args(name: str, **given: Any) -> dict[str, Any]:
    return {**NULLS.get(name, {}), **given}


class Human:
    """The person behind the client: answers each elicitation, and remembers what was asked."""

    def __init__(self, approve: bool):
        self.approve = approve
        self.asked: list[str] = []

    async def __call__(self, context: Any, params: Any) -> types.ElicitResult:
        self.asked.append(params.message)
        if self.approve:
            return types.ElicitResult(action="accept", content={"approve": True})
        return types.ElicitResult(action="decline")


def stdio(root: Path, *flags: str) -> StdioServerParameters:
    return StdioServerParameters(command=GOEX, args=["mcp", "--root", str(root), *flags])


async def call(client: Client, name: str, **args: Any) -> tuple[bool, dict[str, Any]]:
    result = await client.call_tool(name, call_args(name, **args))
    assert result.structured_content is not None
    assert json.loads(result.content[0].text) == result.structured_content
    return bool(result.is_error), result.structured_content


def setup_root(root: Path) -> None:
    con = sqlite3.connect(root / "app.db")
    con.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');")
    con.commit()
    con.close()
    done = run_cli("init", "--root", str(root), "--db", "main=sqlite:///app.db", "--policy", "strict",
                   "--allow-host", "127.0.0.1:9")
    assert done.returncode == 0, done.err


async def full_flow(target: Any, root: Path, **client: Any) -> dict[str, Any]:
    """Every tool called once through `target`; returns what the checks below need."""
    human = Human(approve=True)
    seen: dict[str, Any] = {"human": human}
    async with Client(target, elicitation_callback=human, **client) as c:
        listed = {t.name: t for t in (await c.list_tools()).tools}
        seen["tools"] = set(listed)
        assert listed["fs_write"].input_schema["additionalProperties"] is False
        err, w = await call(c, "fs_write", path="notes/a.md", content="hello")
        assert not err and w["ok"] and w["status"] == "applied" and w["entry_id"]
        seen["session"] = w["session"]
        cp = (await call(c, "goex_checkpoint", label="start"))[1]["checkpoint"]
        assert (await call(c, "fs_read", path="notes/a.md", encoding=None))[1]["output"] == "hello"
        assert [e["name"] for e in (await call(c, "fs_list", path="notes"))[1]["output"]] == ["a.md"]
        assert (await call(c, "fs_mkdir", path="d"))[1]["ok"]
        assert (await call(c, "fs_move", src="notes/a.md", dst="notes/b.md", overwrite=None))[1]["ok"]
        assert (await call(c, "fs_chmod", path="notes/b.md", mode="0640"))[1]["ok"]
        sql = await call(c, "sql_execute", db="main", sql="UPDATE t SET v = ? WHERE id = 1", params=["z"])
        assert sql[1]["ok"] and sql[1]["output"]["rows_changed"] == 1
        http = await call(c, "http_request", method="GET", url="http://example.invalid/x", headers=None, json=None,
                          body=None, timeout_s=None)
        assert http[0] and http[1]["status"] == "denied"
        code = await call(c, "code_run", language="python", code="print(6 * 7)", timeout_s=None, network=None,
                          memory_mb=None)
        assert code[1]["ok"] and code[1]["output"]["stdout"].strip() == "42", code
        refused = await call(c, "fs_write", path=".env", content="SECRET=1")
        assert refused[0] and refused[1]["status"] == "denied" and "fs.env-files" in refused[1]["rules"]
        # strict asks before any delete: the human approves it through elicitation
        deleted = await call(c, "fs_delete", path="notes/b.md", recursive=None)
        assert deleted[1]["ok"] and deleted[1]["status"] == "applied", deleted
        assert not (root / "notes" / "b.md").exists() and "fs.delete" in human.asked[0]
        status = (await call(c, "goex_status"))[1]
        assert status["session"] == seen["session"] and status["policy"] == "strict"
        assert status["budgets"]["files_deleted"]["spent"] == 1 and status["awaiting_approval"] == []
        log = (await call(c, "goex_log", limit=None))[1]["entries"]
        assert {e["session"] for e in log} == {seen["session"]} and log[0]["time"].endswith("+00:00")
        undone = (await call(c, "goex_undo", steps=None, to=cp))[1]
        assert len(undone["undone"]) >= 5
        assert (root / "notes" / "a.md").read_text() == "hello" and not (root / "d").exists()
        con = sqlite3.connect(root / "app.db")
        assert con.execute("SELECT v FROM t").fetchall() == [("a",)]
        con.close()
        assert (await call(c, "goex_undo", steps=1, to=None))[1]["undone"]
        assert not (root / "notes" / "a.md").exists()
        bad = await call(c, "goex_undo", steps=1, to="start")
        assert bad[0] and "either" in bad[1]["error"]
    return seen


def check_flow(seen: dict[str, Any], root: Path) -> None:
    assert {"fs_write", "fs_read", "fs_list", "fs_delete", "fs_move", "fs_mkdir", "fs_chmod", "sql_execute",
            "http_request", "code_run", "goex_checkpoint", "goex_undo", "goex_log", "goex_status"} <= seen["tools"]
    verified = run_cli("verify", "--root", str(root), "--json")
    assert verified.returncode == 0 and json.loads(verified.out)["ok"] is True
    entries = json.loads(run_cli("log", "--root", str(root), "--json").out)
    approvals = [e for e in entries if e["type"] == "fs.delete"]
    assert approvals and approvals[0]["status"] in ("approved", "undone")


def test_stdio_every_tool_refusal_elicitation_undo_and_verify(root: Path):
    setup_root(root)
    seen = anyio.run(full_flow, stdio(root), root)
    check_flow(seen, root)


def test_stdio_declined_elicitation_rejects_and_unsupported_clients_park(root: Path):
    setup_root(root)
    (root / "keep.txt").write_text("k")

    async def flow() -> None:
        async with Client(stdio(root), elicitation_callback=Human(approve=False)) as c:
            no = await call(c, "fs_delete", path="keep.txt", recursive=None)
            assert no[0] and no[1]["status"] == "rejected" and (root / "keep.txt").exists()
        async with Client(stdio(root)) as c:  # no elicitation support: parked for `goex approve`
            parked = await call(c, "fs_delete", path="keep.txt", recursive=None)
            assert parked[1]["status"] == "awaiting_approval" and (root / "keep.txt").exists()
            status = (await call(c, "goex_status"))[1]
            assert [p["id"] for p in status["awaiting_approval"]] == [parked[1]["entry_id"]]
            approved = run_cli("approve", "--root", str(root), parked[1]["entry_id"])
            assert approved.returncode == 0, approved.err
            assert not (root / "keep.txt").exists()

    anyio.run(flow)


def test_a_forged_approval_state_approves_nothing(root: Path):
    setup_root(root)
    (root / "keep.txt").write_text("k")

    async def flow() -> None:
        async with Client(stdio(root)) as c:
            parked = await call(c, "fs_delete", path="keep.txt", recursive=None)
            eid = parked[1]["entry_id"]
            forged = json.dumps([parked[1]["session"], eid]) + "." + "0" * 64
            accept = types.ElicitResult(action="accept", content={"approve": True})
            result = await c.session.call_tool("fs_delete", call_args("fs_delete", path="keep.txt"),
                                               input_responses={"goex_approval": accept}, request_state=forged)
            assert result.is_error and "not issued by this server" in result.structured_content["error"]
        assert (root / "keep.txt").exists()

    anyio.run(flow)


def test_two_stdio_clients_on_one_root_have_their_own_sessions(root: Path):
    setup_root(root)

    async def one(name: str, out: dict[str, Any]) -> None:
        info = types.Implementation(name=name, version="1")
        async with Client(stdio(root), client_info=info) as c:
            w = await call(c, "fs_write", path=f"{name}.txt", content=name)
            log = (await call(c, "goex_log", limit=None))[1]["entries"]
            out[name] = (w[1]["session"], [e["target"] for e in log], (await call(c, "goex_status"))[1]["actor"])

    async def both() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "alpha", out)
            tg.start_soon(one, "beta", out)
        return out

    out = anyio.run(both)
    assert out["alpha"][0] != out["beta"][0]
    assert out["alpha"][1] == ["alpha.txt"] and out["beta"][1] == ["beta.txt"]
    assert out["alpha"][2] == "alpha" and "alpha" in out["alpha"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(root: Path):
    setup_root(root)
    port = free_port()
    proc = subprocess.Popen([GOEX, "mcp", "--root", str(root), "--http", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(proc.stderr.read().decode())
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    proc.wait(timeout=10)


def test_http_every_tool_refusal_elicitation_undo_and_verify(http_server: str, root: Path):
    seen = anyio.run(full_flow, http_server, root)
    check_flow(seen, root)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_http_clients_have_their_own_sessions(http_server: str, root: Path, mode: str):
    async def one(name: str) -> tuple[str, list[str], list[str]]:
        human = Human(approve=True)
        info = types.Implementation(name=name, version="1")
        async with Client(http_server, client_info=info, mode=mode, elicitation_callback=human) as c:
            w = await call(c, "fs_write", path=f"{name}-{mode}.txt", content=name)
            again = await call(c, "fs_write", path=f"{name}-{mode}.txt", content=name + "!")
            assert again[1]["session"] == w[1]["session"]
            gone = await call(c, "fs_delete", path=f"{name}-{mode}.txt", recursive=None)  # asked, then run
            assert gone[1]["ok"], gone
            log = (await call(c, "goex_log", limit=None))[1]["entries"]
            return w[1]["session"], [e["type"] for e in log], human.asked

    async def both() -> list[Any]:
        return [await one("alpha"), await one("beta")]

    (a_sid, a_log, a_asked), (b_sid, b_log, b_asked) = anyio.run(both)
    assert a_sid != b_sid and a_log == b_log == ["fs.write", "fs.write", "fs.delete", "fs.delete"]  # parked, then run
    assert len(a_asked) == len(b_asked) == 1


def test_http_token_is_required_when_given_and_off_loopback(root: Path):
    setup_root(root)
    port = free_port()
    proc = subprocess.Popen([GOEX, "mcp", "--root", str(root), "--http", f"127.0.0.1:{port}", "--token", "s3cret"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        for _ in range(300):
            try:
                refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert refused.status_code == 401
        allowed = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=5,
                             headers={"Authorization": "Bearer s3cret", "Accept": "application/json, text/event-stream"})
        assert allowed.status_code != 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    open_to_all = run_cli("mcp", "--root", str(root), "--http", "0.0.0.0:1")
    assert open_to_all.returncode == 1 and "bearer token" in open_to_all.err


def test_session_and_actor_can_be_fixed(root: Path):
    setup_root(root)

    async def flow() -> dict[str, Any]:
        async with Client(stdio(root, "--session", "nightly", "--actor", "builder")) as c:
            await call(c, "fs_write", path="x.txt", content="1")
            return (await call(c, "goex_status"))[1]

    status = anyio.run(flow)
    assert status["session"] == "nightly" and status["actor"] == "builder" and status["entries"] == {"applied": 1}
    [entry] = json.loads(run_cli("log", "--root", str(root), "--json", "--session", "nightly").out)
    assert entry["actor"] == "builder" and entry["target"] == "x.txt"
