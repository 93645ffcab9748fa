"""`goex demo`: an agent's actions on a temporary workspace and the example shop service,
journaled, some refused, all rolled back, and both checked identical to the start."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .adapters.http.adapter import HttpConfig
from .cli import format_log, with_iso_times
from .runtime import Runtime

_PROJECT = {
    "README.md": "# inventory\nA tiny service that tracks stock.\n",
    "src/app.py": "def total(items):\n    return sum(i['qty'] for i in items)\n",
    "data/report.csv": "sku,qty\nA-1,4\nB-2,0\n",
    "logs/2026-11-01.log": "started\n" * 50,
    "logs/2026-11-02.log": "started\nstopped\n" * 20,
    ".env": "DATABASE_URL=postgresql://app:hunter2@db/app\n",
    ".git/HEAD": "ref: refs/heads/main\n",
}

_AGENT_ACTIONS: list[dict[str, Any]] = [
    {"type": "fs.read", "path": "src/app.py"},
    {"type": "fs.write", "path": "src/app.py",
     "content": "def total(items):\n    return sum(i.get('qty', 0) for i in items)\n"},
    {"type": "fs.write", "path": "tests/test_app.py",
     "content": "from src.app import total\n\ndef test_total():\n    assert total([{'qty': 2}, {}]) == 2\n"},
    {"type": "fs.write", "path": "logs/2026-11-02.log", "content": "restarted\n", "append": True},
    {"type": "fs.move", "src": "data/report.csv", "dst": "archive/2026/report.csv"},
    {"type": "fs.write", "path": "assets/logo.bin", "encoding": "base64",
     "content": base64.b64encode(bytes(range(256))).decode()},
    {"type": "fs.chmod", "path": "src/app.py", "mode": "0755"},
    {"type": "fs.delete", "path": "logs", "recursive": True},
    {"type": "fs.write", "path": ".env", "content": "DATABASE_URL=postgresql://root@db/app\n"},
    {"type": "fs.read", "path": "../../etc/passwd"},
    {"type": "fs.list", "path": "."},
]


_DB_SETUP = """
CREATE TABLE stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL);
CREATE TABLE moves(id INTEGER PRIMARY KEY AUTOINCREMENT, sku TEXT REFERENCES stock(sku) ON DELETE CASCADE, delta INT);
INSERT INTO stock VALUES ('A-1', 4), ('B-2', 0), ('C-3', 12);
INSERT INTO moves(sku, delta) VALUES ('A-1', 4), ('C-3', 12);
"""

_SQL_ACTIONS: list[dict[str, Any]] = [
    {"type": "sql.execute", "db": "shop", "sql": "UPDATE stock SET qty = qty - 1 WHERE sku = ?", "params": ["A-1"]},
    {"type": "sql.execute", "db": "shop", "sql": "INSERT INTO moves(sku, delta) VALUES ('A-1', -1)"},
    {"type": "sql.execute", "db": "shop", "sql": "DELETE FROM stock WHERE qty = 0"},
    {"type": "sql.execute", "db": "shop", "sql": "DELETE FROM moves"},
    {"type": "sql.execute", "db": "shop", "sql": "ALTER TABLE stock ADD COLUMN location TEXT DEFAULT 'main'"},
]


def _db_dump(path: Path) -> str:
    from .sql import dump

    return dump(f"sqlite:///{path}")


def _http_actions(base: str) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "method": "POST", "url": f"{base}/orders", "json": {"item": "A-1", "qty": 3}},
        {"type": "http.request", "method": "PATCH", "url": f"{base}/items/itm_1", "json": {"stock": 0}},
        {"type": "http.request", "method": "DELETE", "url": f"{base}/items/itm_2"},
        {"type": "http.request", "method": "POST", "url": f"{base}/payments",
         "json": {"amount": 120.0, "currency": "EUR", "to": "acme"}},
        {"type": "http.request", "method": "GET", "url": "https://pastebin.example/upload"},
    ]


_SHOP = {"items": [{"id": "itm_1", "name": "pen", "price": 1.5, "stock": 40},
                   {"id": "itm_2", "name": "ink", "price": 4.0, "stock": 5}]}


def run_demo(*, keep: bool = False) -> int:
    from .service import serve

    home = Path(tempfile.mkdtemp(prefix="goex-demo-"))
    root = home / "workspace"
    root.mkdir()
    try:
        with serve() as base:
            return _run(root, home / "shop.db", base)
    finally:
        if keep:
            print(f"\nworkspace kept at {root}, database at {home / 'shop.db'}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def _run(root: Path, db_path: Path, base: str) -> int:
    import apsw
    import httpx

    for rel, text in _PROJECT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    conn = apsw.Connection(str(db_path))
    conn.execute(_DB_SETUP)
    conn.close()
    httpx.post(f"{base}/admin/reset", json=_SHOP).raise_for_status()
    spec = httpx.get(f"{base}/openapi.json").json()
    print(f"goex demo: a workspace at {root} with {len(_PROJECT)} files, a SQLite database at {db_path}, "
          f"the example shop service at {base}; policy pack 'default'\n")
    http = HttpConfig(allow_hosts=[httpx.URL(base).host], openapi=spec)
    with Runtime(root, http=http, databases={"shop": f"sqlite:///{db_path}"}) as rt:
        start, shop, db = rt.fingerprint(), httpx.get(f"{base}/state").json(), _db_dump(db_path)
        print(f"1. fingerprint of the starting tree: {start[:16]}…; the shop has {len(shop['items'])} items\n")
        print("2. the agent acts (each action: checked, journaled write-ahead, applied, traced):")
        with rt.session(actor="demo-agent") as session:
            for i, action in enumerate(_AGENT_ACTIONS + _SQL_ACTIONS + _http_actions(base)):
                if i == 4:
                    print(f"   -- checkpoint {session.checkpoint('before-archive')} ('before-archive')")
                result = session.execute(action)
                mark = "ok  " if result.ok else "REFUSED" if result.status == "denied" else "FAILED"
                print(f"   {mark:7} {result.entry_id:>4}  {_brief(action)}")
                if not result.ok:
                    print(f"{'':16}{result.error}")
            print("\n3. the journal (`goex log --root DIR`):")
            print("   " + format_log(with_iso_times(rt.log())).replace("\n", "\n   "))
            print("\n4. undo back to the checkpoint, then the whole session:")
            print(f"   rolled back to 'before-archive': {', '.join(session.rollback(to='before-archive'))}")
            print(f"   rolled back the rest:            {', '.join(session.rollback())}")
        end = rt.fingerprint()
        report = rt.verify()
    shop_now = httpx.get(f"{base}/state").json()
    db_now = _db_dump(db_path)
    same = end == start and shop_now == shop and db_now == db
    same = "identical to the start" if end == start else "DIFFERENT from the start"
    print(f"\n5. fingerprint after rollback: {end[:16]}… {same}")
    print(f"   the database, dumped:                   {'identical to the start' if db_now == db else 'DIFFERENT'}")
    print(f"   the shop's state, read through its API: {'identical to the start' if shop_now == shop else 'DIFFERENT'}")
    print(f"   journal verified: {report.records} hash-chained records, {report.blobs} before-image blobs")
    print("\nTry it yourself (after `source .venv/bin/activate`): "
          "goex exec --root DIR '{\"type\": \"fs.write\", \"path\": \"a.txt\", \"content\": \"hi\"}'")
    return 0 if same else 1


def _brief(action: dict[str, Any]) -> str:
    shown = {k: (v if not isinstance(v, str) or len(v) < 40 else v[:37] + "…") for k, v in action.items()}
    return json.dumps(shown, ensure_ascii=False)
