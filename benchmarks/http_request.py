"""Overhead of a wrapped `http.request` against a raw httpx request to the same loopback service.

Figures (ratios of medians, measured in the same run, goex and raw interleaved request by request):

  GET /items/itm_1                 goex (a journaled read)  vs  httpx.Client.get       target <= 1.15x
  POST /orders                     goex (journaled, with its compensation computed)
                                   vs  httpx.Client.post                               target <= 2x

Both sides use a keep-alive httpx.Client against the example service, run in its own process
(`python -m goex.service`) so that the server does not compete with the client for the GIL.

A GET is one journal record, committed after the response. On the shared 2-core machine GET ran
at 1.24-1.28x (process) after the hot-path pass, 1.32-1.33x before, in alternating runs: about
290 µs of overhead, over half of it the record's commit; where the rest goes is in
docs/journal.md, "The hot-path pass".

    .venv/bin/python benchmarks/http_request.py            # full run
    .venv/bin/python benchmarks/http_request.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import httpx

import goex


@contextlib.contextmanager
def serve() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "goex.service", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/state", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def measure(n: int, durability: str) -> None:
    with serve() as base, tempfile.TemporaryDirectory() as tmp, httpx.Client() as raw:
        raw.post(f"{base}/admin/reset", json={"items": [{"id": "itm_1", "name": "pen", "price": 1.0, "stock": 1}]})
        http = goex.HttpConfig(allow_hosts=[httpx.URL(base).host], openapi=raw.get(f"{base}/openapi.json").json())
        with goex.Runtime(tmp, policy="permissive", durability=durability, http=http) as rt:
            session = rt.session()
            cases = {
                "GET": (lambda: session.execute({"type": "http.request", "method": "GET", "url": f"{base}/items/itm_1"}),
                        lambda: raw.get(f"{base}/items/itm_1"), 1.15),
                "POST": (lambda: session.execute({"type": "http.request", "method": "POST", "url": f"{base}/orders",
                                                  "json": {"item": "x", "qty": 1}}),
                         lambda: raw.post(f"{base}/orders", json={"item": "x", "qty": 1}), 2.0),
            }
            for name, (wrapped, plain, target) in cases.items():
                g, r = [], []
                for i in range(n + n // 10):
                    order = (wrapped, plain) if i % 2 else (plain, wrapped)
                    times = {}
                    for fn in order:
                        t = time.perf_counter_ns()
                        result = fn()
                        times[fn] = time.perf_counter_ns() - t
                        if fn is wrapped:
                            assert result.ok, result.error
                    if i >= n // 10:  # warm-up excluded
                        g.append(times[wrapped])
                        r.append(times[plain])
                gm, rm = statistics.median(g) / 1e3, statistics.median(r) / 1e3
                ratio = gm / rm
                verdict = "meets" if ratio <= target else "MISSES"
                print(f"http {name}, durability={durability}: {ratio:.2f}x raw httpx (goex {gm:.0f} µs, raw {rm:.0f} µs, "
                      f"median of {len(g)}) -- target <= {target}x: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 30 if args.quick else 600
    for durability in ("process", "fsync"):
        measure(n, durability)


if __name__ == "__main__":
    main()
