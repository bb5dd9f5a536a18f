"""`ctx setup --runtime docker` pulls missing images from a real registry: Debian's `docker-registry` (Distribution
v2.8) on a free 127.0.0.1 port, started here with its own config and storage, holding the offline test images of
.ci/build-images.sh under `127.0.0.1:PORT/ctx-test/...`, reached through CTX_DOCKER_REGISTRY.

The engine keeps the `ctx-test/*` images other tests use; only the registry's names are removed (untagged) before
each test, so each pull is a real pull through the registry. Those share their layers with the ctx-test/* images,
so the redis image gets one more layer of random bytes that the engine never keeps: its pull downloads for real.
The last test stops the registry.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import _short_tmp, free_port, make_settings
from .test_docker_e2e import ctx_env, ok, remove_ours, run_ctx
from .test_docker_runtime import IMAGE_KEYS, NOTHING, _our_resources, test_images  # noqa: F401 (a fixture)

pytestmark = pytest.mark.docker
SERVICES = tuple(IMAGE_KEYS)


@dataclass
class Registry:
    address: str  # 127.0.0.1:PORT
    process: subprocess.Popen
    images: dict[str, str]  # CTX_DOCKER_*_IMAGE -> the image's name in the registry, without the registry
    digests: dict[str, str]  # CTX_DOCKER_*_IMAGE -> the digest the registry holds for it

    def name(self, image: str) -> str:
        return f"{self.address}/{image}"

    def untag(self) -> None:
        """Remove the registry's names of the test images from the engine (the ctx-test/* names stay)."""
        import docker

        client = docker.from_env()
        for key, image in self.images.items():
            for name in (self.name(image), f"{self.name(image.rpartition(':')[0])}@{self.digests[key]}"):
                try:
                    client.api.remove_image(name)  # an untag: the image keeps its ctx-test/* name
                except docker.errors.ImageNotFound:
                    pass


def _answers(address: str) -> bool:
    """Does the registry answer (200, or 401 when it wants a login)?"""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False


def _with_fresh_layer(client, image: str, name: str) -> None:
    """Build `name`: `image` plus a layer of random bytes, which no engine has until it pulls it."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for path, data in (("Dockerfile", f"FROM {image}\nCOPY noise /usr/share/ctx-pull-test-noise\n".encode()),
                           ("noise", os.urandom(3_000_000))):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=name, rm=True, pull=False)


@contextmanager
def running_registry(auth: tuple[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`docker-registry serve` with a config file of its own, temp storage and a free 127.0.0.1 port; with `auth`
    (user, password) it wants a login (htpasswd). Yields its address and process; removed at the end."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.fail("no docker-registry binary: `apt-get install docker-registry` (.ci/docker.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="ctx-registry-"))
    address = f"127.0.0.1:{free_port()}"
    config = (
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n"
    )
    if auth:
        import bcrypt

        (root / "htpasswd").write_text(f"{auth[0]}:{bcrypt.hashpw(auth[1].encode(), bcrypt.gensalt()).decode()}\n")
        config += f"auth:\n  htpasswd:\n    realm: ctx-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(config)
    log = open(root / "registry.log", "wb")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if _answers(address) or process.poll() is not None:
                break
            time.sleep(0.2)
        assert _answers(address), (root / "registry.log").read_text()[-2000:]
        yield address, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _push(client, address: str, images: dict[str, str], auth_config: dict | None = None) -> dict[str, str]:
    """Push each image (already tagged `address/...`, or tagged so here) and return the registry's digests."""
    digests = {}
    for key, image in images.items():
        repository, _, tag = f"{address}/{image}".rpartition(":")
        try:
            client.images.get(f"{repository}:{tag}")
        except Exception:
            client.images.get(image).tag(repository, tag)
        for message in client.api.push(repository, tag, stream=True, decode=True, auth_config=auth_config):
            assert "error" not in message, message
            digests[key] = (message.get("aux") or {}).get("Digest", digests.get(key))
    return digests


@pytest.fixture(scope="module")
def registry(test_images):
    """A registry holding the three test images (redis with a fresh layer of its own)."""
    import docker

    with running_registry() as (address, process):
        client = docker.from_env()
        images = {key: test_images[key] for key in IMAGE_KEYS.values()}
        redis = IMAGE_KEYS["redis"]
        images[redis] = images[redis].replace("ctx-test/redis:", "ctx-test/redis-pull:")
        _with_fresh_layer(client, test_images[redis], f"{address}/{images[redis]}")
        made = Registry(address, process, images, _push(client, address, images))
        made.untag()  # the redis image with it: its last layer is now only in the registry
        yield made
        made.untag()


@pytest.fixture
def store(registry, test_images, models_dir):
    """A CTX_HOME of its own whose images come from the registry, which the engine does not have by that name."""
    registry.untag()
    settings = make_settings(_short_tmp("ctx-p-"), runtime="docker", docker_network_mode="host")
    (settings.home / "models").symlink_to(models_dir, target_is_directory=True)
    env = ctx_env(settings, registry.images, CTX_DOCKER_REGISTRY=registry.address)
    try:
        yield settings, env
    finally:
        remove_ours(settings)
        shutil.rmtree(settings.home, ignore_errors=True)


def _engine_has(name: str) -> bool:
    import docker

    try:
        docker.from_env().images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_setup_pulls_each_missing_image_from_the_registry_then_runs_and_a_second_setup_pulls_nothing(
        registry, store):
    settings, env = store
    pg_key = IMAGE_KEYS["postgres"]
    env[pg_key] = f"{registry.images[pg_key]}@{registry.digests[pg_key]}"  # postgres pinned by tag and digest
    setup = ok(run_ctx(env, "setup", "--runtime", "docker"))
    pulled = [line for line in setup.stderr.splitlines() if ": pulled " in line]
    assert len(pulled) == 3, setup.stderr  # not a terminal: one line per image, no progress bars
    assert "━" not in setup.stderr
    for service, line in zip(SERVICES, pulled):
        key = IMAGE_KEYS[service]
        assert line.startswith(f"{service}: pulled {registry.name(registry.images[key])}")
        assert registry.digests[key] in line
    assert re.search(r"; 1 layer downloaded, 3\.0 MB; [1-9][0-9]* already here\)$", pulled[2])  # the fresh layer
    assert "; 0 layers downloaded, 0.0 MB;" in pulled[0]  # the engine had its content under the ctx-test/* name
    assert setup.stderr.index("pulled") < setup.stderr.index("created container")

    status = json.loads(ok(run_ctx(env, "status", "--json")).stdout)
    running = {svc["name"]: svc["extra"] for svc in status["services"]}
    for service in SERVICES:
        key = IMAGE_KEYS[service]
        assert running[service]["digest"] == registry.digests[key]
    pg_name = registry.name(registry.images[pg_key]).rpartition(":")[0]
    assert running["postgres"]["image"] == f"{pg_name}@{registry.digests[pg_key]}"  # runs the digest, not the tag
    assert running["redis"]["image"] == registry.name(registry.images[IMAGE_KEYS["redis"]])

    health = json.loads(run_ctx(env, "health", "--json").stdout)
    checks = {c["name"]: c["status"] for c in health["checks"]}
    assert checks["postgres"] == checks["chroma"] == checks["redis"] == "OK"

    again = ok(run_ctx(env, "setup"))
    assert "pulled" not in again.stderr and "already running" in again.stderr


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run ctx with its stderr on a pseudo-terminal (as a person at a shell sees it): exit code and that output."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "coditect_ctx", *args], env={**env, "TERM": "xterm"},
                               cwd=env["CTX_HOME"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=600), shown.decode("utf-8", "replace")


def test_at_a_terminal_the_pull_shows_a_progress_bar_per_layer(registry, store):
    settings, env = store
    with socket.socket() as squatter:  # setup stops right after the pulls, at the taken port: nothing to start
        squatter.bind(("127.0.0.1", settings.pg_port))
        squatter.listen()
        code, shown = _on_a_terminal(env, "setup", "--runtime", "docker")
    assert code == 3 and f"port {settings.pg_port}" in shown
    assert re.search(r"redis layer [0-9a-f]{12} +━+", shown), shown[-3000:]  # Rich's bar for the downloaded layer
    assert "redis: pulled " in shown and "; 1 layer downloaded" in shown
    assert _our_resources(settings) == NOTHING


def test_a_wrong_digest_or_tag_is_refused_before_anything_is_pulled_or_created(registry, store):
    settings, env = store
    pg_key, chroma_key = IMAGE_KEYS["postgres"], IMAGE_KEYS["chroma"]
    wrong = "sha256:" + hashlib.sha256(b"not the image the registry has").hexdigest()
    env[pg_key] = f"{registry.images[pg_key]}@{wrong}"
    refused = ok(run_ctx(env, "setup", "--runtime", "docker"), 2)
    message = " ".join(refused.stderr.split())
    assert "Error: postgres: digest mismatch" in message
    assert wrong in message and registry.digests[pg_key] in message  # the pinned one and what the tag is now
    assert "CTX_DOCKER_PG_IMAGE" in message and "Traceback" not in message
    assert _our_resources(settings) == NOTHING
    assert not any(_engine_has(registry.name(registry.images[key])) for key in IMAGE_KEYS.values())

    env[pg_key] = registry.images[pg_key]
    env[chroma_key] = registry.images[chroma_key].rpartition(":")[0] + ":no-such-tag"
    absent = ok(run_ctx(env, "setup", "--runtime", "docker"), 2)
    assert f"Error: chroma: {registry.name(env[chroma_key])} is not on registry {registry.address}" in absent.stderr
    assert "CTX_DOCKER_CHROMA_IMAGE" in absent.stderr
    assert _our_resources(settings) == NOTHING
    assert not _engine_has(registry.name(registry.images[pg_key]))  # asked about every image before pulling one


def test_no_pull_names_the_docker_pull_and_docker_load_and_creates_nothing(registry, store):
    settings, env = store
    names = [registry.name(registry.images[key]) for key in IMAGE_KEYS.values()]
    for refused in (ok(run_ctx(env, "setup", "--runtime", "docker", "--no-pull"), 3),
                    ok(run_ctx({**env, "CTX_DOCKER_PULL": "never"}, "setup", "--runtime", "docker"), 3)):
        text = " ".join(refused.stderr.split())
        assert f"Error: postgres: image {names[0]} is not on this machine, and pulling is off" in text
        assert f"`docker pull {' '.join(names)}`" in text and "docker load" in text
        assert _our_resources(settings) == NOTHING
    assert not any(_engine_has(name) for name in names)


def test_auto_prefers_local_when_images_are_missing_and_says_how_to_get_docker(registry, store):
    settings, env = store
    from coditect_ctx.runtime import resolve_runtime_name
    from dataclasses import replace

    said: list[str] = []
    auto = replace(settings, runtime="auto", docker_registry=registry.address,
                   **{f"docker_{s if s != 'postgres' else 'pg'}_image": registry.images[IMAGE_KEYS[s]] for s in SERVICES})
    assert resolve_runtime_name(auto, report=said.append) == "local"
    assert len(said) == 1 and "`ctx setup --runtime docker` pulls them" in said[0]
    assert not any(_engine_has(registry.name(registry.images[key])) for key in IMAGE_KEYS.values())


def test_a_stopped_registry_is_a_clear_error_and_nothing_is_created(registry, store):
    settings, env = store
    registry.process.terminate()
    registry.process.wait(timeout=30)
    refused = ok(run_ctx(env, "setup", "--runtime", "docker"), 3)
    text = " ".join(refused.stderr.split())
    assert f"Error: postgres: registry {registry.address} is unreachable" in text
    assert registry.name(registry.images[IMAGE_KEYS["postgres"]]) in text
    assert "CTX_DOCKER_REGISTRY" in text and "--no-pull" in text and "Traceback" not in text
    assert _our_resources(settings) == NOTHING


def test_a_registry_that_wants_a_login_is_named_and_dockers_own_credentials_are_used(test_images, tmp_path):
    import docker

    login = ("ctx-test", uuid.uuid4().hex)
    images = {key: test_images[key] for key in IMAGE_KEYS.values()}
    settings = make_settings(_short_tmp("ctx-p-"), runtime="docker", docker_network_mode="host")
    with running_registry(auth=login) as (address, _):
        client = docker.from_env()
        names = [f"{address}/{image}" for image in images.values()]
        try:
            _push(client, address, images, auth_config={"username": login[0], "password": login[1]})
            for name in names:
                client.api.remove_image(name)
            no_login = tmp_path / "no-login"
            no_login.mkdir()
            env = ctx_env(settings, images, CTX_DOCKER_REGISTRY=address, DOCKER_CONFIG=str(no_login))
            refused = ok(run_ctx(env, "setup", "--runtime", "docker"), 2)
            text = " ".join(refused.stderr.split())
            assert f"Error: postgres: registry {address} wants credentials for {names[0]}" in text
            assert f"docker login {address}" in text and "Traceback" not in text
            assert _our_resources(settings) == NOTHING

            logged_in = tmp_path / "logged-in"  # what `docker login` writes (no credential helper here)
            logged_in.mkdir()
            token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            (logged_in / "config.json").write_text(json.dumps({"auths": {address: {"auth": token}}}))
            with socket.socket() as squatter:  # setup stops right after the pulls, at the taken port
                squatter.bind(("127.0.0.1", settings.pg_port))
                squatter.listen()
                pulled = ok(run_ctx({**env, "DOCKER_CONFIG": str(logged_in)}, "setup", "--runtime", "docker"), 3)
            assert [line.split(" (")[0] for line in pulled.stderr.splitlines() if ": pulled " in line] == [
                f"{service}: pulled {name}" for service, name in zip(SERVICES, names)]
            assert login[1] not in pulled.stderr
        finally:
            for name in names:
                try:
                    client.api.remove_image(name)
                except docker.errors.ImageNotFound:
                    pass
            remove_ours(settings)
            shutil.rmtree(settings.home, ignore_errors=True)
