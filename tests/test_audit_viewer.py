"""The audit viewer in a real headless Chromium (Debian's `chromium`, driven by Playwright): a root
with file, SQL, HTTP and code entries, browsed, approved, undone, watched live; no secret value on
any page; screenshots of each page kept under tests/artifacts/audit/."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

import goex
from goex.service import serve as serve_shop

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts" / "audit"
SECRET = "tok-5ecret-V4lue-9931"  # never shown on a page: only its placeholder

playwright_sync = pytest.importorskip("playwright.sync_api")


class Viewer:
    """`goex audit serve` running as a process, with the agent's runtime beside it."""

    def __init__(self, tmp: Path, shop: str, databases: dict[str, str] | None = None):
        self.root = tmp / "ws"
        self.root.mkdir()
        self.shop = shop
        self.openapi = tmp / "openapi.json"
        self.openapi.write_text(httpx.get(shop + "/openapi.json").text)
        self.secrets = tmp / "secrets.yaml"
        self.secrets.write_text(f"SHOP_TOKEN: {{value: {SECRET}, hosts: [127.0.0.1]}}\n")
        self.databases = {"main": "sqlite:///app.db", **(databases or {})}
        self.args = ["--root", str(self.root), *(a for n, u in self.databases.items() for a in ("--db", f"{n}={u}")),
                     "--allow-host", "127.0.0.1", "--openapi", str(self.openapi), "--secrets", str(self.secrets)]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.sessions = 0

    def runtime(self, **kw) -> goex.Runtime:
        return goex.Runtime(self.root, databases=self.databases, http=goex.HttpConfig(
            allow_hosts=["127.0.0.1"], openapi=str(self.openapi), secrets=str(self.secrets)), sandbox="bwrap", **kw)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "goex.cli", "audit", "serve", *self.args, "--port", "0",
                                      "--by", "reviewer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"(http://\S+)", line)
        assert found, f"no URL printed: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.url = found.group(1).rstrip("/")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def shop() -> Iterator[str]:
    with serve_shop() as base:
        yield base


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory, shop: str) -> Iterator[Viewer]:
    v = Viewer(tmp_path_factory.mktemp("audit"), shop)
    with v.runtime() as rt:  # the journal exists before the viewer opens it
        rt.session(actor="setup").execute({"type": "sql.execute", "db": "main",
                                           "sql": "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"})
    v.start()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    pg = context.new_page()
    yield pg
    context.close()


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def agent_session(v: Viewer) -> tuple[str, dict[str, str]]:
    """One session with file, SQL, HTTP and code entries, a checkpoint and a parked DELETE; its
    files are named after its number (notes-N.md, made-N.txt)."""
    v.sessions += 1
    n = v.sessions
    ids: dict[str, str] = {}
    with v.runtime(approver="pending") as rt:
        s = rt.session(actor="agent-7")
        ids["write1"] = s.execute({"type": "fs.write", "path": f"notes-{n}.md", "content": "alpha\nbeta\n"}).entry_id
        s.checkpoint("drafted")
        ids["write2"] = s.execute({"type": "fs.write", "path": f"notes-{n}.md",
                                   "content": "alpha\nBETA changed\ngamma\n"}).entry_id
        r = s.execute({"type": "sql.execute", "db": "main", "sql": "INSERT INTO orders (item) VALUES (?), (?)",
                       "params": ["pen", "ink"]})
        assert r.ok, r.error
        ids["insert"] = r.entry_id
        parked = s.execute({"type": "sql.execute", "db": "main", "sql": "DELETE FROM orders"})
        assert parked.status == "awaiting_approval", parked
        ids["delete"] = parked.entry_id
        r = s.execute({"type": "http.request", "method": "POST", "url": v.shop + "/orders",
                       "headers": {"Authorization": "Bearer {{secret:SHOP_TOKEN}}", "X-Pasted": SECRET},
                       "json": {"item": "A-1", "qty": 2}})
        assert r.ok, r.error
        ids["http"] = r.entry_id
        r = s.execute({"type": "code.run", "language": "python",
                       "code": f"open('made-{n}.txt', 'w').write('made\\n'); print('hello from the sandbox')"})
        assert r.ok, r.error
        ids["code"] = r.entry_id
        return s.id, ids


def rows(v: Viewer) -> list[tuple]:
    with sqlite3.connect(v.root / "app.db") as c:
        return c.execute("SELECT item FROM orders ORDER BY id").fetchall()


def test_sessions_page_timeline_and_diff(viewer: Viewer, page: object):
    sid, ids = agent_session(viewer)
    page.goto(viewer.url + "/")  # type: ignore[attr-defined]
    row = page.locator("tr", has=page.get_by_role("link", name=sid))  # type: ignore[attr-defined]
    row.wait_for()
    assert "agent-7" in row.inner_text() and "awaiting_approval 1" in row.inner_text()
    shot(page, "sessions")
    page.get_by_role("link", name=sid).click()  # type: ignore[attr-defined]
    page.wait_for_url(f"**/sessions/{sid}")  # type: ignore[attr-defined]
    timeline = page.locator("#timeline")  # type: ignore[attr-defined]
    for kind in ("fs.write", "sql.execute", "http.request", "code.run"):
        assert timeline.locator("tr.entry", has_text=kind).count() >= 1, kind
    assert "drafted" in timeline.inner_text()  # the checkpoint
    shot(page, "timeline")
    page.locator(f"#{ids['write2']} a.entry-link").click()  # type: ignore[attr-defined]
    page.wait_for_url(f"**/entries/{ids['write2']}")  # type: ignore[attr-defined]
    added = page.locator("pre.diff span.add").all_inner_texts()  # type: ignore[attr-defined]
    removed = page.locator("pre.diff span.del").all_inner_texts()  # type: ignore[attr-defined]
    assert added == ["+BETA changed", "+gamma"] and removed == ["-beta"]
    shot(page, "entry-diff")
    page.goto(f"{viewer.url}/entries/{ids['code']}")  # type: ignore[attr-defined]
    text = page.locator("pre.describe").inner_text()  # type: ignore[attr-defined]
    assert "hello from the sandbox" in text and f"made-{viewer.sessions}.txt" in text and "exit code 0" in text
    shot(page, "entry-code")
    page.goto(f"{viewer.url}/entries/{ids['http']}")  # type: ignore[attr-defined]
    text = page.locator("pre.describe").inner_text()  # type: ignore[attr-defined]
    assert re.search(r"POST \S+/orders -> 201; undo: DELETE \S+/orders/\S+", text), text
    shot(page, "entry-http")
    page.goto(f"{viewer.url}/entries/{ids['insert']}")  # type: ignore[attr-defined]
    text = page.locator("pre.describe").inner_text()  # type: ignore[attr-defined]
    inserted = [json.loads(m) for m in re.findall(r"after: (\{.*\})", text)]
    assert [r["item"] for r in inserted] == ["pen", "ink"] and "INSERT orders" in text
    shot(page, "entry-sql")


def test_timeline_filters(viewer: Viewer, page: object):
    sid, ids = agent_session(viewer)
    page.goto(f"{viewer.url}/sessions/{sid}")  # type: ignore[attr-defined]
    page.select_option("select[name=type]", "sql.execute")  # type: ignore[attr-defined]
    page.select_option("select[name=status]", "awaiting_approval")  # type: ignore[attr-defined]
    page.get_by_role("button", name="filter").click()  # type: ignore[attr-defined]
    page.wait_for_url("**status=awaiting_approval*")  # type: ignore[attr-defined]
    assert [r.get_attribute("id") for r in page.locator("tr.entry").all()] == [ids["delete"]]  # type: ignore
    page.goto(f"{viewer.url}/sessions/{sid}?decision=allow&type=fs.")  # type: ignore[attr-defined]
    assert [r.get_attribute("id") for r in page.locator("tr.entry").all()] == [ids["write1"], ids["write2"]]  # type: ignore
    shot(page, "filtered")


def test_approve_a_parked_action_from_the_timeline(viewer: Viewer, page: object):
    sid, ids = agent_session(viewer)
    assert len(rows(viewer)) >= 2
    page.goto(f"{viewer.url}/sessions/{sid}")  # type: ignore[attr-defined]
    page.locator(f"#{ids['delete']} button.approve").click()  # type: ignore[attr-defined]
    page.locator(".message").wait_for()  # type: ignore[attr-defined]
    assert f"{ids['delete']} approved" in page.locator(".message").inner_text()  # type: ignore[attr-defined]
    assert rows(viewer) == []  # the DELETE ran
    assert "approved by reviewer" in page.locator("#timeline").inner_text()  # type: ignore[attr-defined]
    shot(page, "approved")
    with viewer.runtime() as rt:
        records = rt.journal.detail(ids["delete"], with_records=True).records
    assert any(r["kind"] == "approved" and r["by"] == "reviewer" for r in records)


def test_undo_from_an_entry_updates_the_timeline_and_the_disk(viewer: Viewer, page: object):
    sid, ids = agent_session(viewer)
    page.goto(f"{viewer.url}/sessions/{sid}")  # type: ignore[attr-defined]
    assert page.locator(f"#{ids['write2']}").get_attribute("data-status") == "applied"  # type: ignore[attr-defined]
    page.locator(f"#{ids['write2']} button.undo").click()  # type: ignore[attr-defined]
    page.locator(".message").wait_for()  # type: ignore[attr-defined]
    for key in ("write2", "insert", "http", "code"):
        assert page.locator(f"#{ids[key]}").get_attribute("data-status") == "undone", key  # type: ignore
    assert page.locator(f"#{ids['write1']}").get_attribute("data-status") == "applied"  # type: ignore
    assert (viewer.root / f"notes-{viewer.sessions}.md").read_text() == "alpha\nbeta\n"
    assert not (viewer.root / f"made-{viewer.sessions}.txt").exists()
    assert "started by reviewer" in page.locator("#timeline").inner_text()  # type: ignore[attr-defined]
    shot(page, "undone")


def test_undo_refused_shows_the_conflict(viewer: Viewer, page: object):
    with viewer.runtime() as rt:
        s = rt.session(actor="agent-c")
        eid = s.execute({"type": "fs.write", "path": "conflict.txt", "content": "agent\n"}).entry_id
    (viewer.root / "conflict.txt").write_text("edited by someone else\n")
    page.goto(f"{viewer.url}/entries/{eid}")  # type: ignore[attr-defined]
    page.locator("button.undo").click()  # type: ignore[attr-defined]
    page.locator(".conflict").wait_for()  # type: ignore[attr-defined]
    assert "conflict.txt" in page.locator(".conflict").inner_text()  # type: ignore[attr-defined]
    assert (viewer.root / "conflict.txt").read_text() == "edited by someone else\n"
    shot(page, "conflict")


def test_timeline_updates_live_while_the_agent_works(viewer: Viewer, page: object):
    with viewer.runtime() as rt:
        s = rt.session(actor="agent-live")
        s.execute({"type": "fs.write", "path": "live1.txt", "content": "1"})
        page.goto(f"{viewer.url}/sessions/{s.id}")  # type: ignore[attr-defined]
        page.locator("#live.on").wait_for()  # type: ignore[attr-defined]
        assert page.locator("tr.entry").count() == 1  # type: ignore[attr-defined]
        r = s.execute({"type": "fs.write", "path": "live2.txt", "content": "2"})
        page.locator(f"#{r.entry_id}").wait_for(timeout=10_000)  # type: ignore[attr-defined]
    assert page.locator("tr.entry").count() == 2  # type: ignore[attr-defined]
    shot(page, "live")


def test_no_secret_value_on_any_page(viewer: Viewer, page: object):
    sid, ids = agent_session(viewer)
    seen = []
    for path in ["/", "/verify", f"/sessions/{sid}", *(f"/entries/{e}" for e in ids.values())]:
        page.goto(viewer.url + path)  # type: ignore[attr-defined]
        html = page.content()  # type: ignore[attr-defined]
        assert SECRET not in html, path
        for d in page.locator("details").all():  # type: ignore[attr-defined]
            d.evaluate("el => el.open = true")
        assert SECRET not in page.inner_text("body"), path  # type: ignore[attr-defined]
        seen.append(path)
    page.goto(f"{viewer.url}/entries/{ids['http']}")  # type: ignore[attr-defined]
    assert "{{secret:SHOP_TOKEN}}" in page.content()  # type: ignore[attr-defined]
    shot(page, "verify-secret-placeholders")
    assert len(seen) == 3 + len(ids)


def test_verify_page_names_the_head_and_the_anchor(viewer: Viewer, page: object):
    page.goto(viewer.url + "/verify")  # type: ignore[attr-defined]
    with viewer.runtime() as rt:
        head = rt.verify().head
    assert "journal OK" in page.locator("#verify-status").inner_text()  # type: ignore[attr-defined]
    assert head in page.inner_text("body")  # type: ignore[attr-defined]
    shot(page, "verify")


def test_state_changes_need_the_csrf_token_and_a_loopback_host(viewer: Viewer, page: object):
    with viewer.runtime(approver="pending") as rt:
        parked = rt.session().execute({"type": "sql.execute", "db": "main", "sql": "DELETE FROM orders"})
    eid = parked.entry_id
    before = rows(viewer)
    no_token = httpx.post(f"{viewer.url}/entries/{eid}/approve", data={})
    wrong = httpx.post(f"{viewer.url}/entries/{eid}/approve", data={"csrf": "guess"})
    page.goto(f"{viewer.url}/entries/{eid}")  # type: ignore[attr-defined]
    token = page.locator("input[name=csrf]").first.get_attribute("value")  # type: ignore[attr-defined]
    cross = httpx.post(f"{viewer.url}/entries/{eid}/approve", data={"csrf": token},
                       headers={"Origin": "http://evil.example"})
    rebound = httpx.get(viewer.url + "/", headers={"Host": "evil.example"})
    page.goto(f"{viewer.url}/?note=x&message=all+undone&conflict=none")  # type: ignore[attr-defined]
    assert page.locator(".message, .conflict").count() == 0  # type: ignore[attr-defined]
    assert (no_token.status_code, wrong.status_code, cross.status_code, rebound.status_code) == (403, 403, 403, 421)
    assert rows(viewer) == before
    with viewer.runtime() as rt:
        assert rt.journal.entry(eid).status == "awaiting_approval"
    ok = httpx.post(f"{viewer.url}/entries/{eid}/reject", data={"csrf": token, "reason": "no"})
    assert ok.status_code == 303
    with viewer.runtime() as rt:
        assert rt.journal.entry(eid).status == "rejected"


def test_binding_off_loopback_needs_a_token(viewer: Viewer, tmp_path: Path):
    run = subprocess.run([sys.executable, "-m", "goex.cli", "audit", "serve", "--root", str(viewer.root),
                          "--host", "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "--token" in run.stderr
    proc = subprocess.Popen([sys.executable, "-m", "goex.cli", "audit", "serve", "--root", str(viewer.root),
                             "--host", "0.0.0.0", "--port", "0", "--token", "t0k-for-tests"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        port = re.search(r":(\d+)/", line).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").status_code == 401
        with httpx.Client() as c:
            first = c.get(base + "/?token=t0k-for-tests")
            assert first.status_code == 303 and "t0k-for-tests" not in first.headers["location"]
            assert c.get(base + "/").status_code == 200  # the cookie carries it now
    finally:
        proc.terminate()
        proc.wait(10)


def test_session_export_and_log_formats(viewer: Viewer):
    from conftest import run_cli

    sid, ids = agent_session(viewer)
    out = run_cli("audit", "export", "--root", str(viewer.root), "--session", sid)
    assert out.returncode == 0, out.err
    doc = json.loads(out.out)
    assert doc["session"] == sid and doc["journal"]["verified"] is True
    assert [e["id"] for e in doc["entries"]] == list(ids.values())
    import hashlib

    for r in doc["records"]:  # every record re-hashes to its chain hash from the previous one
        body = json.dumps(r["record"], sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256((r["prev_hash"] + body).encode()).hexdigest() == r["hash"]
    assert {r["record"]["kind"] for r in doc["records"]} >= {"entry", "checkpoint", "applied", "captured"}
    assert SECRET not in out.out
    jsonl = run_cli("log", "--root", str(viewer.root), "--session", sid, "--format", "jsonl")
    lines = [json.loads(x) for x in jsonl.out.splitlines()]
    assert [x["id"] for x in lines] == list(ids.values())
    csv_out = run_cli("log", "--root", str(viewer.root), "--session", sid, "--format", "csv")
    import csv
    import io

    parsed = list(csv.DictReader(io.StringIO(csv_out.out)))
    assert [x["id"] for x in parsed] == list(ids.values()) and parsed[0]["time"] == lines[0]["time"]
    assert run_cli("audit", "export", "--root", str(viewer.root), "--session", "nope").returncode == 1


@pytest.fixture(autouse=True, scope="module")
def _chromium_present() -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: `./dev test` installs Debian's chromium package")
    time.sleep(0)


def test_verify_page_names_the_first_bad_record(tmp_path: Path, shop: str, page: object):
    v = Viewer(tmp_path, shop)
    with v.runtime() as rt:
        s = rt.session()
        s.execute({"type": "fs.write", "path": "a.txt", "content": "one"})
        eid = s.execute({"type": "fs.write", "path": "b.txt", "content": "two"}).entry_id
    v.start()
    try:
        seq = int(eid[1:])
        with sqlite3.connect(v.root / ".goex" / "journal.db") as c:
            (body,) = c.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
            c.execute("UPDATE records SET body = ? WHERE seq = ?", (body.replace("b.txt", "c.txt"), seq))
        c.close()
        page.goto(v.url + "/verify")  # type: ignore[attr-defined]
        assert "journal CORRUPT" in page.locator("#verify-status").inner_text()  # type: ignore[attr-defined]
        assert page.locator("dd").first.inner_text() == str(seq)  # type: ignore[attr-defined]
        shot(page, "verify-corrupt")
        response = page.goto(v.url + "/")  # type: ignore[attr-defined]
        assert response.status == 500 and "fails verification" in page.inner_text("body")  # type: ignore
    finally:
        v.stop()


def test_names_an_agent_chose_are_shown_as_text(viewer: Viewer, page: object):
    name = "<img src=x onerror=window.__xss=1>.md"
    with viewer.runtime() as rt:
        s = rt.session(actor="<script>window.__xss=2</script>")
        eid = s.execute({"type": "fs.write", "path": name, "content": "<script>window.__xss=3</script>\n"}).entry_id
    for path in ("/", f"/sessions/{s.id}", f"/entries/{eid}"):
        page.goto(viewer.url + path)  # type: ignore[attr-defined]
        page.wait_for_load_state("load")  # type: ignore[attr-defined]
        assert page.evaluate("window.__xss") is None, path  # type: ignore[attr-defined]
    assert name in page.locator("h1").inner_text()  # type: ignore[attr-defined]
    assert "+<script>window.__xss=3</script>" in page.locator("pre.describe").inner_text()  # type: ignore


def test_serve_needs_a_journal(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([sys.executable, "-m", "goex.cli", "audit", "serve", "--root", str(empty), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no journal" in run.stderr
    assert list(empty.iterdir()) == []


PG_URL = os.environ.get("GOEX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("GOEX_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def test_sql_rows_before_and_after_on_each_server(tmp_path: Path, shop: str, page: object):
    import psycopg
    import pymysql

    table = f"audit_rows_{os.getpid()}"
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, item text)")
        c.execute(f"INSERT INTO {table} VALUES (1, 'pen'), (2, 'ink'), (3, 'nib')")
    my = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test", autocommit=True)
    with my.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, item text)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 'pen'), (2, 'ink'), (3, 'nib')")
    v = Viewer(tmp_path, shop, {"pg": PG_URL, "my": MY_URL})
    sql = f"UPDATE {table} SET item = 'quill' WHERE id = 1; DELETE FROM {table} WHERE id = 2"
    try:
        with v.runtime() as rt:
            s = rt.session()
            ids = {db: s.execute({"type": "sql.execute", "db": db, "sql": sql}).entry_id for db in ("pg", "my")}
        v.start()
        shown = {}
        for db, eid in ids.items():
            page.goto(f"{v.url}/entries/{eid}")  # type: ignore[attr-defined]
            shown[db] = page.locator("pre.describe").inner_text()  # type: ignore[attr-defined]
            shot(page, f"entry-sql-{db}")
        befores = {db: re.findall(r"before: (.*)", text) for db, text in shown.items()}
        afters = {db: re.findall(r"after: (.*)", text) for db, text in shown.items()}
        assert befores == {"pg": ["(1,pen)", "(2,ink)"], "my": ["'1','pen'", "'2','ink'"]}, shown
        assert afters == {"pg": ["(1,quill)"], "my": ["'1','quill'"]}, shown
    finally:
        v.stop()
        with psycopg.connect(PG_URL, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")
        with my.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        my.close()


def test_accept_a_session(viewer: Viewer, page: object):
    with viewer.runtime() as rt:
        s = rt.session(actor="agent-accept")
        ids = [s.execute({"type": "fs.write", "path": f"acc-{n}.txt", "content": str(n)}).entry_id for n in range(2)]
    page.goto(f"{viewer.url}/sessions/{s.id}")  # type: ignore[attr-defined]
    page.get_by_role("button", name="accept the session").click()  # type: ignore[attr-defined]
    page.locator(".message").wait_for()  # type: ignore[attr-defined]
    for eid in ids:
        assert "reviewed by reviewer" in page.locator(f"#{eid}").inner_text()  # type: ignore[attr-defined]
    assert "2 entries accepted by reviewer" in page.locator("#timeline").inner_text()  # type: ignore[attr-defined]
    with viewer.runtime() as rt:
        assert [e.reviewed for e in rt.journal.entries(session=s.id)] == ["reviewer", "reviewer"]
    shot(page, "accepted")
