"""The README's docker lifecycle through the real CLI: everything above the runtime works unchanged on containers.

One store for the module (`docker_store`: `ctx setup --runtime docker` and `ctx migrate` of the samples, in a
subprocess, host networking on free 127.0.0.1 ports, the offline test images of .ci/build-images.sh). The tests
that need it running come first; the last one takes it through backup, down, setup, restore and down --volumes.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, replace

import pytest

from coditect_ctx.config import Settings
from coditect_ctx.runtime import resolve_runtime_name
from coditect_ctx.runtime.docker import LABEL_SERVICE, resource_name

from .conftest import SAMPLES, _short_tmp, make_settings
from .test_docker_runtime import IMAGE_KEYS, NOTHING, _our_resources, remove_ours, test_images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.docker

DEMO = SAMPLES / "coditect-demo"
SERVICES = ("postgres", "chroma", "redis")


def ctx_env(settings: Settings, images: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a `ctx` subprocess for this store: no CTX_* of the caller, no runtime forced."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTX_")}
    env.update({
        "CTX_HOME": str(settings.home),
        "CTX_PG_PORT": str(settings.pg_port),
        "CTX_CHROMA_PORT": str(settings.chroma_port),
        "CTX_REDIS_PORT": str(settings.redis_port),
        "CTX_DOCKER_NETWORK_MODE": "host",
        "CTX_START_TIMEOUT": "90",
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    })
    env.update({key: images[key] for key in IMAGE_KEYS.values()})
    env.update(extra)
    return env


def run_ctx(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coditect_ctx", *args], env=env, cwd=env["CTX_HOME"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def ok(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == code, f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result


@dataclass
class DockerStore:
    settings: Settings
    env: dict[str, str]
    setup: subprocess.CompletedProcess
    migrate: subprocess.CompletedProcess

    def ctx(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_ctx(self.env, *args, **kw)

    def status(self) -> dict:
        result = self.ctx("status", "--json")
        assert result.returncode in (0, 3), result.stderr
        return json.loads(result.stdout)

    def counts(self) -> tuple[dict, dict]:
        data = self.status()
        return data["tables"], data["collections"]


@pytest.fixture(scope="module")
def docker_store(test_images, models_dir):
    """`ctx setup --runtime docker` then `ctx migrate` of the samples, as the README says; removed at the end."""
    settings = make_settings(
        _short_tmp("ctx-d-"), runtime="docker", docker_network_mode="host",
        docker_pg_image=test_images["CTX_DOCKER_PG_IMAGE"], docker_chroma_image=test_images["CTX_DOCKER_CHROMA_IMAGE"],
        docker_redis_image=test_images["CTX_DOCKER_REDIS_IMAGE"],
    )
    (settings.home / "models").symlink_to(models_dir, target_is_directory=True)  # no second ONNX export
    env = ctx_env(settings, test_images)
    try:
        setup = ok(run_ctx(env, "setup", "--runtime", "docker"))
        migrate = ok(run_ctx(env, "migrate", str(DEMO), "--json"))
        yield DockerStore(settings, env, setup, migrate)
    finally:
        remove_ours(settings)
        shutil.rmtree(settings.home, ignore_errors=True)


def _container(settings: Settings, service: str):
    import docker

    return docker.from_env().containers.get(resource_name(settings, service))


# ------------------------------------------------------------------ with the store running


def test_setup_creates_labelled_containers_and_the_store_answers_migrate_validate_and_search(docker_store):
    s = docker_store.settings
    assert "runtime: docker" in docker_store.setup.stderr
    for service in SERVICES:
        assert f"{service}: created container {resource_name(s, service)}" in docker_store.setup.stderr
        assert f"{service}: ready on 127.0.0.1:" in docker_store.setup.stderr
        assert _container(s, service).labels[LABEL_SERVICE] == service
    assert "runtime docker, schema" in docker_store.setup.stdout
    assert json.loads((s.home / "runtime.json").read_text())["runtime"] == "docker"

    report = json.loads(docker_store.migrate.stdout)
    assert report["ok"] is True and report["embedded_records"] > 0 and report["not_embedded"] == 0

    validate = ok(docker_store.ctx("validate", "--json"))
    assert json.loads(validate.stdout)["ok"] is True

    found = json.loads(ok(docker_store.ctx("search", "Cloud SQL connection pool exhaustion", "--json")).stdout)
    assert found["results"] and "Cloud SQL" in found["results"][0]["title"]
    semantic = json.loads(ok(docker_store.ctx("search", "database pool ran out of connections", "--mode", "semantic",
                                              "--json")).stdout)
    assert semantic["results"] and all("semantic" in hit["scores"] for hit in semantic["results"])

    again = ok(docker_store.ctx("setup"))  # the recorded runtime, nothing to change
    assert "ready (nothing to change): runtime docker" in again.stdout
    assert "already running" in again.stderr and "created container" not in again.stderr


def test_status_json_shows_containers_images_health_ports_and_volumes(docker_store):
    s = docker_store.settings
    result = ok(docker_store.ctx("status", "--json"))
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert data["runtime"] == "docker"
    assert data["tables"]["sessions"] > 0 and data["collections"]["sessions_embeddings"] > 0
    ports = {"postgres": s.pg_port, "chroma": s.chroma_port, "redis": s.redis_port}
    images = {"postgres": s.docker_pg_image, "chroma": s.docker_chroma_image, "redis": s.docker_redis_image}
    assert [svc["name"] for svc in data["services"]] == list(SERVICES)
    for svc in data["services"]:
        name, extra = svc["name"], svc["extra"]
        assert svc["running"] is True and svc["address"] == f"127.0.0.1:{ports[name]}"
        assert extra["container"] == resource_name(s, name)
        assert extra["image"] == images[name]
        assert extra["health"] in ("starting", "healthy")
        assert extra["ports"] == [f"127.0.0.1:{ports[name]} (host network)"]
        assert extra["volumes"] == [resource_name(s, name)]
        assert extra["spec_current"] is True

    table = ok(docker_store.ctx("status")).stdout
    assert "containers" in table
    for name in SERVICES:
        assert resource_name(s, name) in table and f"127.0.0.1:{ports[name]} (host network)" in table


def test_logs_show_a_containers_log_and_follow_new_lines(docker_store):
    import psycopg

    shown = ok(docker_store.ctx("logs", "postgres", "--lines", "1000")).stdout
    assert "database system is ready to accept connections" in shown
    assert len(ok(docker_store.ctx("logs", "redis", "-n", "2")).stdout.splitlines()) <= 2
    assert ok(docker_store.ctx("logs", "nginx"), 2).stderr.startswith("Error: Unknown service 'nginx'")

    stranger = f"ctx_follow_{uuid.uuid4().hex[:8]}"
    follow = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "logs", "postgres", "--follow", "-n", "1"],
                              env=docker_store.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
    try:
        lines.get(timeout=60)  # the tail is out: following from here on
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=docker_store.settings.pg_port, user=stranger, password="wrong",
                            dbname="postgres", connect_timeout=5)
        seen = ""
        while stranger not in seen:
            seen = lines.get(timeout=60)  # raises queue.Empty if the new line never comes
        assert follow.poll() is None  # --follow keeps running
    finally:
        follow.kill()
        follow.wait()


def test_a_stopped_container_is_critical_by_name_and_setup_brings_it_back(docker_store):
    s = docker_store.settings
    _container(s, "postgres").stop(timeout=30)

    nagios = ok(docker_store.ctx("health", "--format", "nagios"), 2)
    assert nagios.stdout.startswith("CTX CRITICAL: postgres CRITICAL:")
    assert "chroma CRITICAL" not in nagios.stdout and "redis CRITICAL" not in nagios.stdout
    status = ok(docker_store.ctx("status", "--json"), 3)
    postgres = json.loads(status.stdout)["services"][0]
    assert postgres["running"] is False and postgres["detail"].startswith("exited")

    again = ok(docker_store.ctx("setup"))
    assert f"postgres: started container {resource_name(s, 'postgres')}" in again.stderr
    health = json.loads(docker_store.ctx("health", "--json").stdout)
    assert {c["name"]: c["status"] for c in health["checks"]}["postgres"] == "OK"


# ------------------------------------------------------------------ the rest of the life (takes the store down)


def test_backup_down_setup_restore_and_down_volumes_keep_then_destroy_the_data(docker_store):
    import psycopg

    s = docker_store.settings
    tables, collections = docker_store.counts()
    assert tables["messages"] > 0

    backup = json.loads(ok(docker_store.ctx("backup", "--json")).stdout)
    assert backup["rows"]["messages"] == tables["messages"]
    assert sum(backup["vectors"].values()) == sum(collections.values())
    verified = json.loads(ok(docker_store.ctx("backup", "verify", backup["name"], "--json")).stdout)
    assert verified["ok"] is True  # restored into a scratch database through `docker exec` pg_restore
    checks = {c["name"]: c["status"] for c in json.loads(docker_store.ctx("health", "--json").stdout)["checks"]}
    assert checks["backup"] == checks["drift"] == checks["postgres"] == "OK"  # health reads the new backup

    down = ok(docker_store.ctx("down"))
    assert "Data kept" in down.stderr
    assert not any(svc["running"] for svc in docker_store.status()["services"])
    assert len(_our_resources(s)["volumes"]) == 3

    ok(docker_store.ctx("setup"))
    assert docker_store.counts() == (tables, collections)  # the data came back with the containers

    with psycopg.connect(f"postgresql://{s.pg_user}:{s.pg_password}@127.0.0.1:{s.pg_port}/{s.pg_db}") as conn:
        conn.execute("DELETE FROM messages")
    assert docker_store.counts()[0]["messages"] == 0
    refused = ok(docker_store.ctx("restore", backup["name"]), 2)  # it holds data: asks for --yes
    assert "--yes" in refused.stderr
    restored = json.loads(ok(docker_store.ctx("restore", backup["name"], "--yes", "--json")).stdout)
    assert restored["rows"]["messages"] == tables["messages"]
    assert docker_store.counts() == (tables, collections)
    assert json.loads(ok(docker_store.ctx("validate", "--json")).stdout)["ok"] is True

    kept = ok(docker_store.ctx("down", "--volumes"), 2)  # not at a terminal and no --yes: nothing removed
    assert "--yes" in kept.stderr and len(_our_resources(s)["volumes"]) == 3
    gone = ok(docker_store.ctx("down", "--volumes", "--yes"))
    assert "removed volume" in gone.stderr
    assert _our_resources(s) == NOTHING


# ------------------------------------------------------------------ choosing the runtime


def test_auto_chooses_docker_only_when_the_engine_has_the_configured_images(tmp_path, test_images):
    base = make_settings(tmp_path / "home", runtime="auto")
    present = replace(base, docker_pg_image=test_images["CTX_DOCKER_PG_IMAGE"],
                      docker_chroma_image=test_images["CTX_DOCKER_CHROMA_IMAGE"],
                      docker_redis_image=test_images["CTX_DOCKER_REDIS_IMAGE"])
    said: list[str] = []
    assert resolve_runtime_name(present, report=said.append) == "docker" and said == []
    assert resolve_runtime_name(replace(present, docker_redis_image="ctx-test/absent:0"), report=said.append) == "local"
    assert said == [said[0]] and "has no image ctx-test/absent:0" in said[0] and "CTX_DOCKER_REDIS_IMAGE" in said[0]


def test_auto_says_in_one_line_why_it_chose_local_when_the_engine_lacks_an_image(tmp_path, test_images):
    settings = make_settings(tmp_path / "home", runtime="auto")
    env = ctx_env(settings, test_images, CTX_DOCKER_CHROMA_IMAGE="ctx-test/absent:0")
    with socket.socket() as squatter:  # stops setup right after the choice: no second local store to start here
        squatter.bind(("127.0.0.1", settings.pg_port))
        squatter.listen()
        setup = ok(run_ctx(env, "setup", "--runtime", "auto"), 3)
    lines = setup.stderr.splitlines()
    why = [line for line in lines if line.startswith("runtime: auto chose local")]
    assert len(why) == 1 and "has no image ctx-test/absent:0" in why[0] and "CTX_DOCKER_CHROMA_IMAGE" in why[0]
    assert lines[lines.index(why[0]) + 1] == "runtime: local"
    assert f"port {settings.pg_port}" in setup.stderr
    assert _our_resources(settings) == NOTHING


def test_an_engine_that_does_not_answer_is_a_clear_error_for_docker_and_auto_uses_local(tmp_path, test_images, models_dir):
    settings = make_settings(_short_tmp("ctx-a-"), runtime="auto")  # the local runtime runs PostgreSQL in it
    (settings.home / "models").symlink_to(models_dir, target_is_directory=True)
    dead = f"unix://{tmp_path}/docker.sock"
    env = ctx_env(settings, test_images, DOCKER_HOST=dead)

    refused = ok(run_ctx(env, "setup", "--runtime", "docker"), 3)
    assert f"Error: Docker engine not reachable at {dead}" in " ".join(refused.stderr.split())
    assert "--runtime local" in refused.stderr
    assert not (settings.home / "runtime.json").exists()

    try:
        setup = ok(run_ctx(env, "setup", "--runtime", "auto"))
        assert "runtime: local" in setup.stderr and "auto chose local" not in setup.stderr  # no engine: nothing to explain
        assert json.loads((settings.home / "runtime.json").read_text())["runtime"] == "local"
        status = json.loads(ok(run_ctx(env, "status", "--json")).stdout)
        assert status["runtime"] == "local" and all(svc["running"] for svc in status["services"])
    finally:
        run_ctx(env, "down", "--volumes", "--yes")
        shutil.rmtree(settings.home, ignore_errors=True)
