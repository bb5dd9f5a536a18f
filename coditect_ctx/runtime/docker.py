"""The `docker` runtime: PostgreSQL, Chroma and Redis as labelled containers of the official images.

Everything ctx creates here (network, volumes, containers) carries `io.coditect.ctx.project=<hash of CTX_HOME>`
and is found again by that label, so two homes never share a container and cleanup removes exactly what ctx
made. `container_specs()` is the one description of the containers; compose/docker-compose.yml is checked
against it by the tests. The Docker SDK is imported inside functions: `ctx health` must stay light.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ConfigError, ServiceError, UsageError
from . import chroma_server
from .base import (
    SERVICES, Endpoints, Progress, Runtime, ServiceStatus, loopback_endpoints, port_in_use, require_free_port,
    wait_until,
)
from .images import ImageRef, check_pull_mode, present, pull_all, resolve
from .pgtools import database_args, require_tool

LABEL_PROJECT = "io.coditect.ctx.project"
LABEL_SERVICE = "io.coditect.ctx.service"
LABEL_SPEC = "io.coditect.ctx.spec"
LABEL_PORT = "io.coditect.ctx.port"

CONTAINER_PORTS = {"postgres": 5432, "chroma": 8000, "redis": 6379}  # inside the container, bridge mode
DATA_PATHS = {"postgres": "/var/lib/postgresql/data", "chroma": "/data", "redis": "/data"}
MEMORY_LIMITS = {"postgres": "1g", "chroma": "2g", "redis": "512m"}
IMAGE_SETTINGS = {"postgres": "docker_pg_image", "chroma": "docker_chroma_image", "redis": "docker_redis_image"}
PORT_SETTINGS = {"postgres": "pg_port", "chroma": "chroma_port", "redis": "redis_port"}
HEALTH_TIMING = {"interval": "10s", "timeout": "5s", "retries": 3, "start_period": "60s"}
STOP_TIMEOUT = 30  # seconds docker waits for a clean shutdown before it kills
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def env_name(setting: str) -> str:
    return f"CTX_{setting.upper()}"


@dataclass(frozen=True)
class ContainerSpec:
    """What one service's container looks like; `start()` creates exactly this."""

    service: str
    image: str
    command: list[str]
    environment: dict[str, str]
    host_port: int
    container_port: int  # the port the service listens on inside the container (= host_port in host mode)
    volume_target: str
    healthcheck: list[str]
    user: str | None
    mem_limit: str
    network_mode: str  # "host" or "" (a bridge network of our own, ports published on 127.0.0.1)
    health_timing: dict[str, Any] = field(default_factory=lambda: dict(HEALTH_TIMING))
    entrypoint: list[str] | None = None  # None: the image's own

    def digest(self) -> str:
        """Changes whenever the container would be created differently (then it is recreated; data stays)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def project_id(settings: Settings) -> str:
    """A short stable name for this CTX_HOME: containers of two homes never mix."""
    home = Path(settings.home).expanduser().resolve()  # the same before and after setup creates it
    return hashlib.sha256(str(home).encode()).hexdigest()[:12]


def resource_name(settings: Settings, service: str | None = None) -> str:
    return f"ctx-{project_id(settings)}" + (f"-{service}" if service else "")


def image_refs(settings: Settings) -> dict[str, ImageRef]:
    """The image each service runs: its setting, through the mirror of CTX_DOCKER_REGISTRY when one is set (never
    for ctx's own Chroma image, which is built on this machine)."""
    def mirror(setting: str) -> str:
        local = setting == "docker_chroma_image" and settings.docker_chroma_image.startswith(chroma_server.LOCAL_IMAGE + ":")
        return "" if local else settings.docker_registry

    return {service: resolve(getattr(settings, setting), mirror(setting), env_name(setting))
            for service, setting in IMAGE_SETTINGS.items()}


def container_specs(settings: Settings) -> dict[str, ContainerSpec]:
    """The containers for these settings, pure (no engine needed). Redis is left out when the cache is off."""
    host_mode = settings.docker_network_mode == "host"
    listen = "127.0.0.1" if host_mode else "0.0.0.0"
    ports = {s: (getattr(settings, PORT_SETTINGS[s]) if host_mode else CONTAINER_PORTS[s]) for s in SERVICES}

    pg_command = ["postgres"]
    if host_mode:
        pg_command += ["-c", f"port={ports['postgres']}", "-c", "listen_addresses=127.0.0.1"]
    pg_health = f'pg_isready -q -h 127.0.0.1 -p {ports["postgres"]} -U "$POSTGRES_USER" -d "$POSTGRES_DB"'

    # Chroma images need not have curl: ask for the heartbeat with bash's /dev/tcp (HTTP/1.1: the server refuses 1.0).
    chroma_health = (
        f"exec 3<>/dev/tcp/127.0.0.1/{ports['chroma']}"
        ' && printf "GET /api/v2/heartbeat HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n" >&3'
        ' && read -r status <&3 && [[ $status == *" 200 "* ]]'
    )

    # The password reaches redis-server as config on stdin, never as an argument `ps` would show.
    redis_args = f"--port {ports['redis']} --dir /data --appendonly yes --maxmemory 256mb --maxmemory-policy allkeys-lru"
    if host_mode:
        redis_args += " --bind 127.0.0.1"
    redis_script = f'exec redis-server - {redis_args} <<EOF\nrequirepass "$REDIS_PASSWORD"\nEOF\n'
    redis_health = f'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p {ports["redis"]} ping | grep -q PONG'

    images = {service: ref.run for service, ref in image_refs(settings).items()}
    common = {"network_mode": "host" if host_mode else ""}
    specs = {
        "postgres": ContainerSpec(
            service="postgres",
            image=images["postgres"],
            command=pg_command,
            environment={
                "POSTGRES_USER": settings.pg_user,
                "POSTGRES_PASSWORD": settings.pg_password,
                "POSTGRES_DB": settings.pg_db,
                "PGDATA": DATA_PATHS["postgres"],
            },
            host_port=settings.pg_port,
            container_port=ports["postgres"],
            volume_target=DATA_PATHS["postgres"],
            healthcheck=["CMD-SHELL", pg_health],
            user=None,  # the image's entrypoint starts as root, prepares PGDATA, then runs as `postgres`
            mem_limit=MEMORY_LIMITS["postgres"],
            **common,
        ),
        "chroma": ContainerSpec(
            service="chroma",
            image=images["chroma"],
            # chromadb's token-checking Python server, as in the local runtime (`chroma run` checks no token)
            entrypoint=chroma_server.container_entrypoint(),
            command=["--host", listen, "--port", str(ports["chroma"])],
            environment=chroma_server.server_env(DATA_PATHS["chroma"], token=settings.chroma_token),
            host_port=settings.chroma_port,
            container_port=ports["chroma"],
            volume_target=DATA_PATHS["chroma"],
            healthcheck=["CMD", "bash", "-c", chroma_health],
            user=None,
            mem_limit=MEMORY_LIMITS["chroma"],
            **common,
        ),
        "redis": ContainerSpec(
            service="redis",
            image=images["redis"],
            command=["sh", "-c", redis_script],
            environment={"REDIS_PASSWORD": settings.redis_password},
            host_port=settings.redis_port,
            container_port=ports["redis"],
            volume_target=DATA_PATHS["redis"],
            healthcheck=["CMD-SHELL", redis_health],
            user="redis",
            mem_limit=MEMORY_LIMITS["redis"],
            **common,
        ),
    }
    if settings.cache_disabled:
        del specs["redis"]
    return specs


def _duration_ns(text: str) -> int:
    units = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    raise ValueError(text)


# ---------------------------------------------------------------- the engine


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_available(settings: Settings | None = None, timeout: float = 0.8) -> bool:
    """Does a Docker engine answer `/_ping`? Fast and without the SDK, for `--runtime auto`."""
    address = docker_host()
    parts = urlsplit(address)
    request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        elif parts.scheme in ("tcp", "http") and not os.environ.get("DOCKER_TLS_VERIFY"):
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 2375), timeout=timeout)
        else:
            return _sdk_ping(timeout)
        with sock:
            sock.sendall(request)
            return sock.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


def missing_images(settings: Settings) -> dict[str, str] | None:
    """The configured images this engine lacks, by setting name ({} when it has them all); None when no engine
    answers. `--runtime auto` chooses docker only when nothing would need a pull (auto never downloads)."""
    if not docker_available(settings):
        return None
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            missing = {}
            for service, spec in container_specs(settings).items():
                try:
                    client.images.get(spec.image)
                except docker.errors.ImageNotFound:
                    missing[env_name(IMAGE_SETTINGS[service])] = spec.image
            return missing
        finally:
            client.close()
    except Exception:  # an engine we cannot ask (TLS, API version, a broken SDK) is an engine auto does not use
        return None


def _sdk_ping(timeout: float) -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=max(1, int(timeout))).ping())
    except Exception:
        return False


def engine_client(timeout: int = 120):
    """A Docker SDK client, or a ServiceError saying the engine is not reachable and what to do."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).split("\n")[0][:200]
        raise ServiceError(
            f"Docker engine not reachable at {docker_host()}; start it, or use --runtime local ({reason})",
            hint="Start the Docker engine (e.g. `sudo systemctl start docker`; on CI `bash .ci/docker.sh`), "
            "check DOCKER_HOST, or run ctx with --runtime local.",
        ) from None
    return client


# ---------------------------------------------------------------- the runtime


@dataclass
class _Made:
    """What this run of start() created or started, so a failure can undo exactly that."""

    containers: list = field(default_factory=list)
    started: list = field(default_factory=list)
    volumes: list = field(default_factory=list)
    network: Any = None

    def undo(self) -> None:
        for container in self.containers:
            _quietly(lambda: container.remove(force=True, v=True))
        for container in self.started:
            _quietly(lambda: container.stop(timeout=STOP_TIMEOUT))
        for volume in self.volumes:
            _quietly(lambda: volume.remove(force=True))
        if self.network is not None:
            _quietly(self.network.remove)


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception:  # cleanup after a failure must not hide the failure
        pass


class DockerRuntime(Runtime):
    """Containers of the official images, labelled per CTX_HOME; data in named volumes."""

    name = "docker"

    # ------------------------------------------------------------ addresses

    def endpoints(self) -> Endpoints:
        off = "cache off (CTX_REDIS_SERVER=none or CTX_REDIS_URL=none)" if self.settings.cache_disabled else ""
        return loopback_endpoints(self.settings, cache_off=off)

    def labels(self, service: str | None = None) -> dict[str, str]:
        labels = {LABEL_PROJECT: project_id(self.settings)}
        if service:
            labels[LABEL_SERVICE] = service
        return labels

    def _filters(self, service: str | None = None) -> dict:
        return {"label": [f"{k}={v}" for k, v in self.labels(service).items()]}

    def _container(self, client, service: str):
        found = client.containers.list(all=True, filters=self._filters(service))
        return found[0] if found else None

    # ------------------------------------------------------------ images, then start

    def prepare(self, report: Callable[[str], None] = lambda msg: None, progress: Progress = lambda *a: None) -> None:
        """Pull the images the engine lacks (CTX_DOCKER_PULL=missing), or name how to get them (never)."""
        client = engine_client()
        specs = container_specs(self.settings)
        refs = image_refs(self.settings)
        chroma_image = self.settings.docker_chroma_image
        if chroma_image.startswith(chroma_server.LOCAL_IMAGE + ":") and not present(client, refs["chroma"]):
            raise ServiceError(  # no registry serves it: it is built on this machine
                f"chroma: image {chroma_image} is not on this machine; it is built, not pulled",
                hint=f"Build it: `{chroma_server.image_build_command(chroma_image)}` (the official chromadb/chroma "
                "image cannot check a token), or set CTX_DOCKER_CHROMA_IMAGE to an image with chromadb's Python server.",
                service="chroma",
            )
        if check_pull_mode(self.settings) == "never":
            self._require_images(client, specs)
            return
        pull_all(client, {service: (env_name(IMAGE_SETTINGS[service]), refs[service]) for service in specs},
                 report, progress)

    def start(self, report: Callable[[str], None] = lambda msg: None) -> None:
        s = self.settings
        if not s.pg_password or not s.chroma_token or (not s.cache_disabled and not s.redis_password):
            raise ConfigError(
                "The docker runtime needs CTX_PG_PASSWORD, CTX_CHROMA_TOKEN and CTX_REDIS_PASSWORD",
                hint="Run `ctx setup`: it generates them into $CTX_HOME/.env.",
            )
        client = engine_client()
        specs = container_specs(s)
        self._require_images(client, specs)

        # Plan first, so a taken port fails before anything is created, removed or started.
        existing, recreate = {}, []
        for service, spec in specs.items():
            container = self._container(client, service)
            if container is not None and (
                container.labels.get(LABEL_SPEC) != spec.digest() or container.status in ("restarting", "dead")
            ):
                recreate.append(container)
                holds_port = container.status == "running" and container.labels.get(LABEL_PORT) == str(spec.host_port)
                container = None
            else:
                holds_port = container is not None and container.status == "running"
            if not holds_port:
                require_free_port(service, spec.host_port, env_name(PORT_SETTINGS[service]))
            existing[service] = container
        for container in recreate:
            report(f"{container.labels.get(LABEL_SERVICE)}: settings or image changed; recreating the container (data kept)")
            if container.status == "running":
                container.stop(timeout=STOP_TIMEOUT)  # a clean shutdown, not a kill
            container.remove(force=True, v=True)  # v: anonymous volumes only (postgres:18 declares one); ours stay

        made = _Made()
        try:
            network = self._ensure_network(client, made) if not specs["postgres"].network_mode else None
            waiting = []
            for service, spec in specs.items():
                container = existing[service]
                if container is None:
                    container = self._create(client, spec, network, made)
                    made.containers.append(container)
                    report(f"{service}: created container {container.name} ({spec.image})")
                if container.status != "running":
                    self._start_container(container, spec)
                    if container not in made.containers:
                        made.started.append(container)
                        report(f"{service}: started container {container.name}")
                elif container not in made.containers:
                    report(f"{service}: container {container.name} already running")
                waiting.append((service, container))
            deadline = time.monotonic() + s.start_timeout
            for service, container in waiting:
                self._wait_ready(service, container, specs[service], deadline)
                report(f"{service}: ready on 127.0.0.1:{specs[service].host_port}")
        except BaseException:
            made.undo()
            raise

    def _require_images(self, client, specs: dict[str, ContainerSpec]) -> None:
        refs = image_refs(self.settings)
        missing = [service for service in specs if not present(client, refs[service])]
        if missing:
            service, images = missing[0], " ".join(refs[s].run for s in missing)
            setting = env_name(IMAGE_SETTINGS[service])
            off = ", and pulling is off (--no-pull or CTX_DOCKER_PULL=never)" if self.settings.docker_pull == "never" else ""
            raise ServiceError(
                f"{service}: image {refs[service].run} is not on this machine{off}",
                hint=f"Pull with `docker pull {images}` (or `ctx setup --runtime docker`, which pulls); on a host "
                f"without a registry, `docker save` them elsewhere and `docker load -i <file>.tar` here; or build the "
                f"offline test images with `bash .ci/build-images.sh` and set {setting} to the image it prints.",
                service=service,
            )

    def _ensure_network(self, client, made: _Made):
        found = client.networks.list(filters=self._filters())
        if found:
            return found[0]
        made.network = client.networks.create(resource_name(self.settings), driver="bridge", labels=self.labels())
        return made.network

    def _create(self, client, spec: ContainerSpec, network, made: _Made):
        import docker

        volume_name = resource_name(self.settings, spec.service)
        try:
            volume = client.volumes.get(volume_name)
        except docker.errors.NotFound:
            volume = client.volumes.create(volume_name, labels=self.labels(spec.service))
            made.volumes.append(volume)
        host_mode = spec.network_mode == "host"
        return client.containers.create(
            image=spec.image,
            command=spec.command,
            entrypoint=spec.entrypoint,
            name=resource_name(self.settings, spec.service),
            environment=spec.environment,
            labels={**self.labels(spec.service), LABEL_SPEC: spec.digest(), LABEL_PORT: str(spec.host_port)},
            user=spec.user,
            mem_limit=spec.mem_limit,
            restart_policy={"Name": "unless-stopped"},
            healthcheck={
                "test": spec.healthcheck,
                "interval": _duration_ns(spec.health_timing["interval"]),
                "timeout": _duration_ns(spec.health_timing["timeout"]),
                "retries": spec.health_timing["retries"],
                "start_period": _duration_ns(spec.health_timing["start_period"]),
            },
            volumes={volume.name: {"bind": spec.volume_target, "mode": "rw"}},
            network_mode="host" if host_mode else None,
            network=None if host_mode else network.name,
            ports=None if host_mode else {f"{spec.container_port}/tcp": ("127.0.0.1", spec.host_port)},
            log_config={"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
        )

    def _start_container(self, container, spec: ContainerSpec) -> None:
        import docker

        try:
            container.start()
        except docker.errors.APIError as exc:
            text = str(exc)
            if "address already in use" in text or "port is already allocated" in text:
                raise port_in_use(spec.service, spec.host_port, env_name(PORT_SETTINGS[spec.service])) from None
            raise ServiceError(
                f"{spec.service}: Docker could not start container {container.name}: {exc.explanation or text}",
                hint="Read the message above; `docker info` shows the engine's state.",
                service=spec.service,
            ) from None

    def _probe(self, service: str) -> Callable[[], bool]:
        """Readiness is a real round trip from the host (SELECT 1, PING, the heartbeat), not docker's health."""
        from . import probes

        ep = self.endpoints()
        if service == "postgres":
            return lambda: probes.pg_ready(ep.pg_url)
        if service == "chroma":
            return lambda: probes.chroma_ready(ep.chroma_url)
        return lambda: probes.redis_ready(ep.redis_url or "")

    def _wait_ready(self, service: str, container, spec: ContainerSpec, deadline: float) -> None:
        container.reload()
        restarts = container.attrs.get("RestartCount", 0)

        def alive() -> bool:
            container.reload()
            state = container.attrs.get("State", {})
            return (
                state.get("Status") in ("created", "running")
                and not state.get("Restarting")
                and container.attrs.get("RestartCount", 0) == restarts
                and state.get("Health", {}).get("Status") != "unhealthy"
            )

        try:
            wait_until(service, self._probe(service), max(1.0, deadline - time.monotonic()), alive=alive, interval=0.5)
        except ServiceError:
            _quietly(container.reload)
            state = container.attrs.get("State", {})
            running = alive()
            what = f"did not answer within {self.settings.start_timeout:.0f} s" if running else "exited during start-up"
            status = state.get("Status", "?")
            if state.get("Health", {}).get("Status"):
                status += f", health {state['Health']['Status']}"
            if not running and state.get("ExitCode"):
                status += f", exit code {state['ExitCode']}"
            tail = self._log_tail(container)
            setting = env_name(IMAGE_SETTINGS[service])
            raise ServiceError(
                f"{service} {what} (container {container.name}, image {spec.image}: {status})"
                + (f"\n--- last log lines ---\n{tail}" if tail else "\n(the container wrote no log lines)"),
                hint=f"Fix the cause shown in the log lines; check that {setting}={spec.image} is the right image "
                "and that the machine has memory to spare; raise CTX_START_TIMEOUT if the machine is only slow; "
                "then run `ctx setup` again (or use --runtime local). What this attempt created has been removed.",
                service=service,
            ) from None

    @staticmethod
    def _log_tail(container, lines: int = 20) -> str:
        try:
            return container.logs(tail=lines).decode("utf-8", "replace").rstrip()
        except Exception:
            return ""

    # ------------------------------------------------------------ stop, report, logs

    def stop(self, volumes: bool = False, report: Callable[[str], None] = lambda msg: None) -> None:
        client = engine_client()
        for container in client.containers.list(all=True, filters=self._filters()):
            if volumes:
                container.remove(force=True, v=True)
                report(f"removed container {container.name}")
            elif container.status in ("running", "restarting"):
                container.stop(timeout=STOP_TIMEOUT)
                report(f"stopped container {container.name}")
        if volumes:
            for volume in client.volumes.list(filters=self._filters()):
                volume.remove(force=True)
                report(f"removed volume {volume.name}")
            for network in client.networks.list(filters=self._filters()):
                network.remove()
                report(f"removed network {network.name}")

    def services(self) -> list[ServiceStatus]:
        specs = container_specs(self.settings)
        try:
            client = engine_client(timeout=10)
        except ServiceError as exc:
            return [
                ServiceStatus(service, self.name, f"127.0.0.1:{spec.host_port}", False, detail=exc.message)
                for service, spec in specs.items()
            ]
        statuses = []
        for service, spec in specs.items():
            address = f"127.0.0.1:{spec.host_port}"
            container = self._container(client, service)
            if container is None:
                statuses.append(
                    ServiceStatus(service, self.name, address, False, detail="no container (run `ctx setup`)",
                                  extra={"image": spec.image})
                )
                continue
            state = container.attrs.get("State", {})
            health = state.get("Health", {}).get("Status", "")
            mounts = [m.get("Name") or m.get("Source") for m in container.attrs.get("Mounts", [])]
            image_id = container.attrs.get("Image")
            detail = container.status + (f", {health}" if health else "")
            if container.status == "exited":
                detail += f" (exit code {state.get('ExitCode')})"
            statuses.append(
                ServiceStatus(
                    service,
                    self.name,
                    address,
                    running=container.status == "running",
                    version=container.attrs.get("Config", {}).get("Image"),
                    detail=detail,
                    extra={
                        "container": container.name,
                        "image": container.attrs.get("Config", {}).get("Image"),
                        "image_id": image_id,
                        "digest": _repo_digest(client, image_id, spec.image),
                        "health": health or None,
                        "ports": _published_ports(container, spec),
                        "volumes": mounts,
                        "restart_count": container.attrs.get("RestartCount", 0),
                        "spec_current": container.labels.get(LABEL_SPEC) == spec.digest(),
                    },
                )
            )
        return statuses

    def logs(self, service: str, follow: bool = False, lines: int = 50) -> Iterator[str]:
        """The container's last `lines` log lines (stdout and stderr), then new ones while `follow`."""
        client = engine_client()
        container = self._container(client, service)
        if container is None:
            raise UsageError(f"{service}: no container for this CTX_HOME", hint="Has `ctx setup` run with this CTX_HOME?")
        pending = ""
        for chunk in container.logs(stream=True, follow=follow, tail=lines):
            pending += chunk.decode("utf-8", "replace")
            *complete, pending = pending.split("\n")
            yield from complete
        if pending:
            yield pending

    # ------------------------------------------------------------ pg tools

    def run_pg_tool(self, tool, args, *, dbname=None, output=None, input_file=None) -> str:
        """`docker exec` the tool in the postgres container; stdout streams to `output`, `input_file` is its stdin."""
        require_tool(tool)
        client = engine_client()
        container = self._container(client, "postgres")
        if container is None or container.status != "running":
            raise ServiceError("postgres: the container is not running", hint="Run `ctx setup` first.", service="postgres")
        spec = container_specs(self.settings)["postgres"]
        s = self.settings
        command = [tool, "-h", "127.0.0.1", "-p", str(spec.container_port), "-U", s.pg_user, *args,
                   *database_args(tool, dbname, s.pg_db)]
        environment = {"PGPASSWORD": s.pg_password}  # the container's own environment: nothing of ours to scrub
        remote_input = None
        if input_file is not None:
            remote_input = f"/tmp/ctx-input-{uuid.uuid4().hex}"
            _put_file(container, Path(input_file), remote_input)
            environment["CTX_INPUT"] = remote_input
            command = ["sh", "-c", 'exec "$@" < "$CTX_INPUT"', "sh", *command]
        try:
            exit_code, stdout, stderr = _exec_streaming(client, container, command, environment, output)
        finally:
            if remote_input:
                _quietly(lambda: container.exec_run(["rm", "-f", remote_input]))
        if exit_code != 0:
            raise ServiceError(
                f"{tool} failed in container {container.name} (exit code {exit_code}): {stderr.strip()[-2000:]}",
                hint="Read the tool's message above.",
                service="postgres",
            )
        return stdout if output is None else stderr


def _repo_digest(client, image_id: str | None, reference: str) -> str | None:
    """The registry digest of the image a container runs (`sha256:...`): the one of the repository it was created
    from, else any; None for an image that never came from a registry (built or loaded here)."""
    try:
        digests = client.images.get(image_id).attrs.get("RepoDigests") or []
    except Exception:
        return None
    name = resolve(reference, "").name
    for entry in sorted(digests, key=lambda d: not d.startswith(f"{name}@")):
        return entry.rpartition("@")[2]
    return None


def _published_ports(container, spec: ContainerSpec) -> list[str]:
    if spec.network_mode == "host":
        return [f"127.0.0.1:{spec.host_port} (host network)"]
    out = []
    for inside, bindings in (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).items():
        for binding in bindings or []:
            out.append(f"{binding.get('HostIp')}:{binding.get('HostPort')}->{inside}")
    return out


def _put_file(container, source: Path, target: str) -> None:
    """Copy a host file into the container (mode 0600, owned by root) with one tar upload, streamed: a 10 GB dump
    goes through in 1 MB pieces, never whole in memory nor as a tar file on disk."""
    if not container.put_archive(os.path.dirname(target), _tar_stream(source, os.path.basename(target))):
        raise ServiceError(f"Could not copy {source} into container {container.name}", service="postgres")


def _tar_stream(source: Path, arcname: str, block: int = 1 << 20):
    """A one-file tar archive of `source`, piece by piece: header, content, padding to 512 bytes, end marker."""
    size = source.stat().st_size
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime = size, int(source.stat().st_mtime)
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "root", "root"
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    with open(source, "rb") as fh:
        while sent < size:  # exactly the size the header promised, even if the file grows meanwhile
            piece = fh.read(min(block, size - sent))
            if not piece:
                raise ServiceError(f"{source} shrank while it was copied into the container", service="postgres")
            sent += len(piece)
            yield piece
    yield b"\0" * ((-size) % tarfile.BLOCKSIZE) + b"\0" * (2 * tarfile.BLOCKSIZE)


def _exec_streaming(client, container, command: list[str], environment: dict, output: Path | None) -> tuple[int, str, str]:
    """Run `command` in the container as root; stdout goes to `output` (chunk by chunk) or is returned."""
    exec_id = client.api.exec_create(container.id, command, environment=environment, stdout=True, stderr=True)["Id"]
    stdout_parts: list[bytes] = []
    stderr_parts: list[bytes] = []
    sink = open(output, "wb") if output is not None else None
    try:
        for out, err in client.api.exec_start(exec_id, stream=True, demux=True):
            if out:
                if sink is not None:
                    sink.write(out)
                else:
                    stdout_parts.append(out)
            if err:
                stderr_parts.append(err)
    finally:
        if sink is not None:
            sink.close()
    exit_code = client.api.exec_inspect(exec_id).get("ExitCode")
    return (
        exit_code if exit_code is not None else -1,
        b"".join(stdout_parts).decode("utf-8", "replace"),
        b"".join(stderr_parts).decode("utf-8", "replace"),
    )
