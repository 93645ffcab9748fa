"""What the MCP server adds to an action: an `fs_write` tool call through the SDK's client (in
process, and over stdio to `goex mcp`) against `session.execute` of the same 1 KiB write, measured
in the same run, interleaved call by call.

Figures (ratios of medians, MCP / direct, durability=process so the journal's fsync does not hide
the protocol's cost):

  in process (the SDK's in-memory client on goex.mcp.McpServer)   vs  session.execute
  stdio (a `goex mcp` process)                                   vs  session.execute

Target: at most 3x in process (the SDK's per-request work: JSON-RPC dispatch, validation, trace
context; and a thread hop per call, since the runtime blocks).
The stdio figure is printed for context (a process boundary and pipes: no target).

    .venv/bin/python benchmarks/mcp_call.py            # full run
    .venv/bin/python benchmarks/mcp_call.py --quick    # smoke run (tiny sample)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

import goex
from goex.mcp import McpServer

TARGET = 3.0


def args_for(i: int) -> dict[str, Any]:
    return {"path": f"f{i % 50}.txt", "content": os.urandom(384).hex()[:1024], "encoding": None, "append": None}


async def interleaved(client: Client, session: goex.Session, n: int, warmup: int) -> tuple[list[int], list[int]]:
    clock = time.perf_counter_ns
    t_mcp: list[int] = []
    t_direct: list[int] = []
    for i in range(n + warmup):
        call = args_for(i)
        action = {"type": "fs.write", **{k: v for k, v in call.items() if v is not None}}
        action["path"] = "direct-" + action["path"]
        t0 = clock()
        result = await client.call_tool("fs_write", call)
        t1 = clock()
        direct = session.execute(action)
        t2 = clock()
        if result.is_error or not direct.ok:
            raise SystemExit(f"a write failed: {result.structured_content} / {direct.error}")
        if i >= warmup:
            t_mcp.append(t1 - t0)
            t_direct.append(t2 - t1)
    return t_mcp, t_direct


async def in_process(root: Path, n: int, warmup: int) -> tuple[list[int], list[int]]:
    with goex.Runtime(root / "mcp", policy="permissive", durability="process") as served, \
            goex.Runtime(root / "direct", policy="permissive", durability="process") as direct:
        async with Client(McpServer(served).server) as client:
            return await interleaved(client, direct.session(), n, warmup)


async def over_stdio(root: Path, n: int, warmup: int) -> tuple[list[int], list[int]]:
    goex_cmd = str(Path(sys.executable).with_name("goex"))
    params = StdioServerParameters(command=goex_cmd, args=["mcp", "--root", str(root / "stdio"), "--policy",
                                                           "permissive", "--durability", "process"])
    with goex.Runtime(root / "direct2", policy="permissive", durability="process") as direct:
        async with Client(params) as client:
            return await interleaved(client, direct.session(), n, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sample, for a smoke run")
    ap.add_argument("-n", type=int, default=None, help="measured calls per case (default 2000, quick 40)")
    args = ap.parse_args()
    n = args.n or (40 if args.quick else 2000)
    warmup = 5 if args.quick else 100
    base = Path(tempfile.mkdtemp(prefix="goex-bench-mcp-"))
    for name in ("mcp", "direct", "stdio", "direct2"):
        (base / name).mkdir()
    summary = []
    try:
        for label, case, target in (("in process", in_process, TARGET), ("stdio", over_stdio, None)):
            tm, td = anyio.run(case, base, n, warmup)
            mm, md = statistics.median(tm), statistics.median(td)
            ratio = mm / md
            verdict = ("meets" if ratio <= target else "MISSES") if target else "no target, for context"
            line = (f"fs_write 1 KiB over MCP {label}: {ratio:.2f}x session.execute (MCP {mm / 1000:.0f} µs, "
                    f"direct {md / 1000:.0f} µs, median of {n}) -- target <= {target or '-'}x: {verdict}")
            print(line)
            summary.append(line)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\nSummary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
