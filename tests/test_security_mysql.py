"""Confinement on MySQL/MariaDB, attacked through the public Runtime API: executable comments,
the least-privilege account agent SQL runs as, session state between actions, and the preview's
effect fields. Each test checks the real effect (rows, files, bytes the agent sees)."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pymysql
import pytest

import goex
from goex.adapters.sql.mysql import MysqlEngine, agent_account, dangerous_grants, drop_agent_account

HOST, PORT = "127.0.0.1", 3306


def _admin(database: str | None = None):
    return pymysql.connect(host=HOST, port=PORT, user="root", password="", database=database, autocommit=True)


def _rows(database: str, sql: str) -> list[tuple]:
    with _admin(database) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


@pytest.fixture
def host_file():
    """A file the server's OS user can read (outside pytest's private tmp), with random bytes."""
    folder = Path("/tmp") / f"goex-sec-{secrets.token_hex(6)}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    path = folder / "host-secret.txt"
    token = secrets.token_hex(16)
    path.write_text(token)
    path.chmod(0o644)
    yield path, token
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture
def dbs(tmp_path: Path):
    """Two fresh databases: `mine` (declared to the runtime) and `other` (not), each with 20 rows."""
    names = {k: f"goex_sec_{k}_{secrets.token_hex(4)}" for k in ("mine", "other")}
    with _admin() as conn, conn.cursor() as cur:
        for name in names.values():
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"CREATE TABLE `{name}`.t (id INT PRIMARY KEY, v VARCHAR(20))")
            cur.execute(f"INSERT INTO `{name}`.t VALUES " + ",".join(f"({i}, 'v{i}')" for i in range(1, 21)))
    url = f"mysql://root@{HOST}:{PORT}/{names['mine']}"
    root = tmp_path / "ws"
    root.mkdir()
    try:
        yield names, url, root
    finally:
        drop_agent_account(url)
        with _admin() as conn, conn.cursor() as cur:
            for name in names.values():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def _run(root: Path, url: str, sql: str, policy: str = "permissive", **kw) -> goex.Result:
    with goex.Runtime(root, policy=policy, databases={"my": url}, **kw) as rt:
        return rt.session().execute({"type": "sql.execute", "db": "my", "sql": sql})


# -- finding 4: executable comments ----------------------------------------------------------


def test_executable_comment_cannot_delete_rows_in_another_database(dbs):
    names, url, root = dbs
    other = names["other"]
    for sql in (f"SELECT 1 /*!50000 , (SELECT 1 FROM DUAL) */; /*! DELETE FROM `{other}`.t */",
                f"DELETE FROM t WHERE id = 999 /*! OR 1 */",
                f"/*M! DELETE FROM `{other}`.t */ SELECT 1",
                f"UPDATE t SET v = 'x' WHERE id = 1 /*!100000 ; DELETE FROM `{other}`.t */"):
        result = _run(root, url, sql)
        assert not result.ok and "executable comment" in (result.error or ""), sql
    assert len(_rows(other, "SELECT * FROM t")) == 20
    assert len(_rows(names["mine"], "SELECT * FROM t")) == 20
    assert _rows(names["mine"], "SELECT v FROM t WHERE id = 1") == [("v1",)]


def test_executable_comment_text_inside_literals_is_data(dbs):
    names, url, root = dbs
    result = _run(root, url, "UPDATE t SET v = '/*! x */' WHERE id = 2")
    assert result.ok, result.error
    assert _rows(names["mine"], "SELECT v FROM t WHERE id = 2") == [("/*! x */",)]
    result = _run(root, url, "SELECT `/*!`.id FROM t AS `/*!` WHERE id = 3 -- /*! not run */")
    assert result.ok, result.error
    assert result.output["rows"] == [[3]]


# -- least privilege -----------------------------------------------------------------------------


def test_load_file_never_reaches_the_agent(dbs, host_file):
    names, url, root = dbs
    secret, token = host_file
    # the server itself can read it (as root): the agent must not, whatever the spelling
    assert _rows(names["mine"], f"SELECT LOAD_FILE('{secret}')")[0][0] == token.encode()
    for sql in (f"SELECT LOAD_FILE('{secret}')",
                f"SELECT load_file /* x */ ('{secret}')",
                f"SELECT `load_file`('{secret}')",
                f"INSERT INTO t VALUES (100, LOAD_FILE('{secret}'))"):
        result = _run(root, url, sql)
        seen = repr(result.output) + repr(result.error)
        assert token not in seen, sql
    assert token not in repr(_rows(names["mine"], "SELECT * FROM t"))


def test_load_file_is_out_of_reach_by_privilege(dbs, host_file, tmp_path):
    """Past the text checks (the engine's own run, no check), the account still cannot read it."""
    names, url, root = dbs
    secret, token = host_file
    engine = MysqlEngine(url)
    try:
        staged = engine.stage([f"SELECT LOAD_FILE('{secret}') AS x"], None, [{"kind": "select", "parsed": True}], {})
        staged.abort()
        assert staged.output["rows"] == [[None]]
        with pytest.raises(goex.ActionFailed):
            staged = engine.stage([f"SELECT 1 INTO OUTFILE '{tmp_path}/out-{secrets.token_hex(3)}'"], None,
                                  [{"kind": "select", "parsed": True}], {})
        with pytest.raises(goex.ActionFailed):
            engine.stage([f"DELETE FROM `{names['other']}`.t"], None, [{"kind": "delete", "parsed": True}], {})
        with pytest.raises(goex.ActionFailed):
            engine.stage(["SET GLOBAL max_connections = 7"], None, [{"kind": "set", "parsed": True}], {})
    finally:
        engine.close()
    assert len(_rows(names["other"], "SELECT * FROM t")) == 20
    assert _rows(names["mine"], "SELECT @@global.max_connections")[0][0] != 7


def test_into_outfile_creates_no_file(dbs):
    names, url, root = dbs
    target = f"/tmp/goex-outfile-{secrets.token_hex(6)}"
    for sql in (f"SELECT * FROM t INTO OUTFILE '{target}'",
                f"SELECT * FROM t INTO DUMPFILE '{target}'",
                f"SELECT 1--1 INTO OUTFILE '{target}'"):
        result = _run(root, url, sql)
        assert not result.ok, sql
    probe = subprocess.run(["ls", target], capture_output=True)
    assert probe.returncode != 0 and not Path(target).exists()


def test_table_files_cannot_be_put_in_a_server_folder(dbs, tmp_path):
    """DATA/INDEX DIRECTORY would have the server write the agent's rows into any folder it can
    write, without the FILE privilege: refused by the text, and ignored by the agent session's
    sql_mode past the text check."""
    names, url, root = dbs
    target = tmp_path / "server-folder"
    target.mkdir()
    target.chmod(0o777)
    create = (f"CREATE TABLE planted (line CHAR(40) NOT NULL) ENGINE=MyISAM DATA DIRECTORY='{target}' "
              f"INDEX DIRECTORY='{target}'")
    result = _run(root, url, create, policy="default")
    assert not result.ok and result.status == "denied"
    engine = MysqlEngine(url)
    try:  # the engine's own run, no statement check: the session ignores the directories (and says so)
        with pytest.raises(goex.ActionFailed, match="DATA DIRECTORY"):
            engine.stage([create.replace("planted", "planted2"), "INSERT INTO planted2 VALUES ('agent bytes')"],
                         None, [{"kind": "create", "parsed": True}, {"kind": "insert", "parsed": True}], {})
    finally:
        engine.close()
    assert list(target.iterdir()) == []


def test_writes_to_another_database_have_no_effect(dbs):
    names, url, root = dbs
    other = names["other"]
    for sql in (f"DELETE FROM `{other}`.t",
                f"DELETE FROM {other} . t",
                f"UPDATE t AS a JOIN `{other}`.t AS b ON a.id = b.id SET b.v = 'gone'",
                f"INSERT INTO `{other}`.t VALUES (99, 'x')",
                f"CREATE TABLE `{other}`.x (a INT)",
                "DELETE FROM mysql.user"):
        result = _run(root, url, sql)
        assert not result.ok, sql
    assert _rows(other, "SELECT COUNT(*), MIN(v), MAX(v) FROM t") == [(20, "v1", "v9")]
    assert _rows(other, "SHOW TABLES") == [("t",)]


def test_set_global_and_kill_refused_with_no_effect(dbs):
    names, url, root = dbs
    before = _rows(names["mine"], "SELECT @@global.max_connections, @@global.general_log")
    for sql in ("SET GLOBAL max_connections = 7", "SET @@global.general_log = 1", "KILL 1",
                "SELECT 1 FROM t WHERE (SELECT @@global.max_connections := 7)"):
        result = _run(root, url, sql)
        assert not result.ok, sql
    assert _rows(names["mine"], "SELECT @@global.max_connections, @@global.general_log") == before


def test_agent_account_holds_privileges_on_the_database_only(dbs):
    names, url, root = dbs
    engine = MysqlEngine(url)
    try:
        found = engine.agent_privileges()
    finally:
        engine.close()
    assert found["safe"] and found["dangerous"] == [], found
    assert found["runs_as"].startswith(agent_account(names["mine"]) + "@")
    grants = _rows(None, f"SHOW GRANTS FOR '{agent_account(names['mine'])}'@'%'")
    text = " ".join(g[0] for g in grants)
    for forbidden in ("FILE", "SUPER", "PROCESS", "GRANT OPTION", "CREATE USER", "`mysql`", "*.* TO", "ALL"):
        if forbidden == "*.* TO":
            assert "USAGE ON *.*" in text and text.count("ON *.*") == 1
        else:
            assert forbidden not in text.replace("USAGE ON *.*", ""), (forbidden, text)


def test_dangerous_grants_are_named():
    db = "shop_1"
    assert dangerous_grants(["GRANT USAGE ON *.* TO `a`@`%`",
                             "GRANT SELECT, INSERT ON `shop\\_1`.* TO `a`@`%`"], db) == []
    found = dangerous_grants(["GRANT FILE, PROCESS ON *.* TO `a`@`%`",
                              "GRANT SELECT ON `shop_1`.* TO `a`@`%`",  # a pattern: matches shopX1 too
                              "GRANT SELECT ON `mysql`.`user` TO `a`@`%`",
                              "GRANT SELECT ON `shop\\_1`.* TO `a`@`%` WITH GRANT OPTION",
                              "GRANT `admin` TO `a`@`%`"], db)
    assert "FILE ON *.*" in found and "PROCESS ON *.*" in found and "GRANT OPTION" in found
    assert any(f.startswith("SELECT ON `shop_1`.* (a name pattern") for f in found)
    assert "SELECT ON `mysql`.`user`" in found and "role `admin`" in found


def test_named_account_with_dangerous_privileges_is_refused(dbs):
    names, url, root = dbs
    user, password = f"goexsec_{secrets.token_hex(4)}", secrets.token_hex(8)
    with _admin() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        escaped = names["mine"].replace("_", "\\_")
        cur.execute(f"GRANT SELECT, DELETE ON `{escaped}`.* TO %s@'%%'", (user,))
        cur.execute("GRANT FILE ON *.* TO %s@'%%'", (user,))
    try:
        named = f"{url}?goex_account={user}&goex_password={password}"
        result = _run(root, named, "DELETE FROM t WHERE id = 1")
        assert not result.ok and "FILE ON *.*" in (result.error or "")
        assert len(_rows(names["mine"], "SELECT * FROM t")) == 20
        with _admin() as conn, conn.cursor() as cur:
            cur.execute("REVOKE FILE ON *.* FROM %s@'%%'", (user,))
        result = _run(root, named, "DELETE FROM t WHERE id = 1")
        assert result.ok, result.error
        assert len(_rows(names["mine"], "SELECT * FROM t")) == 19
    finally:
        with _admin() as conn, conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))


def test_forgotten_password_is_set_again(dbs, monkeypatch, tmp_path):
    """Another process (another state directory) rotated the password: this one sets its own."""
    names, url, root = dbs
    assert _run(root, url, "UPDATE t SET v = 'a' WHERE id = 1").ok
    monkeypatch.setenv("GOEX_STATE_DIR", str(tmp_path / "elsewhere"))
    assert _run(root, url, "UPDATE t SET v = 'b' WHERE id = 1").ok
    monkeypatch.delenv("GOEX_STATE_DIR")
    result = _run(root, url, "UPDATE t SET v = 'c' WHERE id = 1")
    assert result.ok, result.error
    assert _rows(names["mine"], "SELECT v FROM t WHERE id = 1") == [("c",)]


# -- session state -------------------------------------------------------------------------------


#: the agent session's sql_mode is the server's plus NO_DIR_IN_CREATE (the server orders the names)
_AGENT_MODE = ("REPLACE(CONCAT(',', @@session.sql_mode, ','), ',NO_DIR_IN_CREATE,', ',') = "
               "CONCAT(',', @@global.sql_mode, ',') AND FIND_IN_SET('NO_DIR_IN_CREATE', @@session.sql_mode) > 0")


def test_session_state_does_not_carry_over_between_actions(dbs):
    names, url, root = dbs
    with goex.Runtime(root, policy="permissive", databases={"my": url}) as rt:
        s = rt.session()
        first = s.execute({"type": "sql.execute", "db": "my", "sql": "SELECT @leak := 42 AS x, @@session.sql_mode"})
        assert first.ok, first.error
        second = s.execute({"type": "sql.execute", "db": "my",
                            "sql": "SELECT @leak AS x, " + _AGENT_MODE + " AS same"})
        assert second.ok, second.error
        assert second.output["rows"] == [[None, 1]]
        # a write between them, then undo: the undo runs on a clean session too
        assert s.execute({"type": "sql.execute", "db": "my", "sql": "UPDATE t SET v = @leak := 'y' WHERE id = 4"}).ok
        third = s.execute({"type": "sql.execute", "db": "my", "sql": "SELECT @leak AS x"})
        assert third.output["rows"] == [[None]]
        assert len(s.undo(1)) == 1
    assert _rows(names["mine"], "SELECT v FROM t WHERE id = 4") == [("v4",)]


def test_session_settings_and_temp_tables_are_reset_on_the_kept_connection(dbs):
    """What text checks refuse (SET, temporary tables) could still reach the kept connection
    some other way; the reset before each use removes it."""
    names, url, root = dbs
    engine = MysqlEngine(url)
    try:
        staged = engine.stage(["SELECT 1"], None, [{"kind": "select", "parsed": True}], {})
        staged.abort()
        conn = engine._spare  # the connection kept for the next action
        with conn.cursor() as cur:
            cur.execute("SET SESSION foreign_key_checks = 0, sql_mode = '', @x = 5")
            with pytest.raises(pymysql.err.OperationalError):  # no CREATE TEMPORARY TABLES privilege
                cur.execute("CREATE TEMPORARY TABLE t (id INT)")
        staged = engine.stage(["SELECT @x, @@foreign_key_checks, " + _AGENT_MODE], None,
                              [{"kind": "select", "parsed": True}], {})
        staged.abort()
        assert staged.output["rows"] == [[None, 1, 1]]
    finally:
        engine.close()


# -- finding 9: the effect, not the syntax -------------------------------------------------------


def _preview(root: Path, url: str, sql: str) -> dict:
    """The preview an approver sees (every write asks; the answer is no, so nothing runs)."""
    policy = root.parent / "ask.yaml"
    policy.write_text("name: ask\nrules:\n  - id: ask\n    match: {type: [sql.execute], preview: {writes: true}}\n"
                      "    decision: confirm\n    severity: mild\n    cost: 0.1\n    message: ask\n")
    seen: list[dict] = []

    def approver(request):
        seen.append(request.preview)
        return False

    result = _run(root, url, sql, policy=str(policy), approver=approver)
    assert not result.ok and seen, result.error
    return seen[0]


def test_preview_all_rows_judges_the_effect(dbs):
    names, url, root = dbs
    with _admin(names["mine"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, n INT)")
        cur.execute("CREATE TABLE kid (id INT PRIMARY KEY, t_id INT, FOREIGN KEY (t_id) REFERENCES t(id) "
                    "ON DELETE CASCADE)")
        cur.execute("INSERT INTO kid VALUES (1, 1), (2, 2)")
        cur.execute("CREATE TABLE nokey (a INT)")
        cur.execute("INSERT INTO nokey VALUES (1), (2), (3)")
    every = ["DELETE FROM t WHERE 1", "UPDATE t SET v = 'z' WHERE true", "UPDATE t SET v = 'z' WHERE id = id",
             "DELETE FROM t WHERE 1=1 OR id > 3", "DELETE FROM t WHERE id IN (SELECT id FROM (SELECT id FROM t) x)",
             "REPLACE INTO t SELECT id, 'r' FROM t",
             "INSERT INTO t SELECT id, 'u' FROM t ON DUPLICATE KEY UPDATE v = 'u'"]
    for sql in every:
        assert "t" in _preview(root, url, sql)["all_rows"], sql
    assert _preview(root, url, "DELETE FROM t WHERE id = 1")["all_rows"] == []
    assert _preview(root, url, "UPDATE t SET v = 'z' WHERE id > 1")["all_rows"] == []
    assert _preview(root, url, "UPDATE nokey SET a = a + 10")["all_rows"] == ["nokey"]
    assert _preview(root, url, "DELETE FROM nokey WHERE a > 1")["all_rows"] == []
    # cascades: deleting both parents of kid's rows empties kid
    assert "kid" in _preview(root, url, "DELETE FROM t WHERE id IN (1, 2)")["all_rows"]
    assert len(_rows(names["mine"], "SELECT * FROM t")) == 20


def test_preview_flags_trigger_creation_and_a_trigger_that_changes_every_row(dbs):
    names, url, root = dbs
    with _admin(names["mine"]) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE side (id INT PRIMARY KEY, n INT)")
        cur.execute("INSERT INTO side VALUES (1, 0), (2, 0), (3, 0)")
    trigger = "CREATE TRIGGER wipe AFTER INSERT ON t FOR EACH ROW UPDATE side SET n = n + 1"
    preview = _preview(root, url, trigger)
    assert preview["creates_trigger"] is True
    assert _run(root, url, trigger).ok
    preview = _preview(root, url, "INSERT INTO t VALUES (500, 'new')")
    assert preview["creates_trigger"] is False and preview["all_rows"] == ["side"]
    assert _rows(names["mine"], "SELECT SUM(n) FROM side") == [(0,)]
