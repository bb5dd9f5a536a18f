"""Which image each container runs, and getting it onto the engine: the docker runtime's image references (tag,
optional pinned digest, optional registry mirror) and the streamed pull `ctx setup` does for missing ones.

A reference is what a setting holds (`postgres:18.6`, `postgres:18.6@sha256:...`, `registry.example.com/pg:18`).
With a digest, the container runs `name@digest` (the engine verifies the content), whatever the tag points to
now. `CTX_DOCKER_REGISTRY=host:port/prefix` serves every image that names no registry of its own from a mirror:
`postgres:18.6` becomes `host:port/prefix/library/postgres:18.6` (Docker Hub's path). Credentials are Docker's own
(~/.docker/config.json and its credential helpers, which the SDK reads when given no auth_config); ctx never
takes one. The SDK is imported inside functions: `ctx health` must stay light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..config import Settings
from ..errors import ConfigError, CtxError, ServiceError
from .base import Progress

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
PULL_MODES = ("missing", "never")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

Report = Callable[[str], None]


@dataclass(frozen=True)
class ImageRef:
    """One image reference, split: `registry` is "" for Docker Hub, `path` the repository inside it."""

    registry: str
    path: str
    tag: str
    digest: str
    written: str  # the reference as the setting (plus the mirror) spells it

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.path}" if self.registry else self.path

    @property
    def run(self) -> str:
        """What the container is created from: the digest when there is one (the tag may move), else as written."""
        return f"{self.name}@{self.digest}" if self.digest else self.written

    @property
    def by_tag(self) -> str:
        return f"{self.name}:{self.tag or 'latest'}"

    @property
    def where(self) -> str:
        return self.registry or "docker.io"


def parse(reference: str, setting: str = "") -> ImageRef:
    """Split `[host[:port]/]path[:tag][@sha256:...]`; a malformed digest is a ConfigError naming the setting."""
    rest, _, digest = reference.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ConfigError(f"{setting or 'image'}={reference}: {digest!r} is not a sha256 digest",
                          hint="Write the digest as `sha256:` and 64 hex digits, as `docker inspect` shows it.")
    slash = rest.rfind("/")
    tag = ""
    if ":" in rest[slash + 1:]:
        rest, tag = rest.rsplit(":", 1)
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = "", rest
    if not path or not re.match(r"^[a-z0-9]+([._/-]+[a-z0-9]+)*$", path):
        raise ConfigError(f"{setting or 'image'}={reference!r} is not an image reference",
                          hint="Write it as `name:tag`, `host:port/name:tag`, optionally with `@sha256:<digest>`.")
    return ImageRef(registry, path, tag, digest, reference)


def resolve(reference: str, mirror: str, setting: str = "") -> ImageRef:
    """The reference a setting names, served by `mirror` (host:port/prefix) when it names no registry of its own."""
    ref = parse(reference, setting)
    if not mirror or (ref.registry and ref.registry not in DOCKER_HUB_HOSTS):
        return ref
    if "://" in mirror:
        raise ConfigError(f"CTX_DOCKER_REGISTRY={mirror} has a scheme",
                          hint="Give host[:port][/prefix], e.g. registry.example.com:5000/dockerhub (Docker chooses https).")
    path = ref.path if "/" in ref.path else f"library/{ref.path}"  # Docker Hub's path of an official image
    written = f"{mirror.rstrip('/')}/{path}" + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    return parse(written, "CTX_DOCKER_REGISTRY")


def check_pull_mode(settings: Settings) -> str:
    mode = settings.docker_pull.lower()
    if mode not in PULL_MODES:
        raise ConfigError(f"CTX_DOCKER_PULL={settings.docker_pull!r}: unknown", hint="Use missing (the default) or never.")
    return mode


# ---------------------------------------------------------------- the engine side


def present(client, ref: ImageRef) -> bool:
    import docker

    try:
        client.images.get(ref.run)
        return True
    except docker.errors.ImageNotFound:
        return False


def pull_all(client, wanted: dict[str, tuple[str, ImageRef]], report: Report, progress: Progress) -> None:
    """Pull each image of `wanted` (service -> (setting, ref)) the engine lacks. The registry is asked about every
    one of them first, so a wrong name, digest or login fails before a byte is downloaded."""
    missing = {service: pair for service, pair in wanted.items() if not present(client, pair[1])}
    for service, (setting, ref) in missing.items():
        _check_remote(client, service, setting, ref, report)
    for service, (setting, ref) in missing.items():
        _pull(client, service, setting, ref, report, progress)


def _check_remote(client, service: str, setting: str, ref: ImageRef, report: Report) -> None:
    import docker

    try:
        found = client.api.inspect_distribution(ref.run)["Descriptor"]["digest"]
    except docker.errors.APIError as exc:
        error = pull_error(service, setting, ref, exc.explanation or str(exc))
        if not (ref.digest and ref.tag and isinstance(error, ConfigError)):
            raise error from None
        try:  # the pinned digest is gone: say what the tag is now
            now = client.api.inspect_distribution(ref.by_tag)["Descriptor"]["digest"]
        except docker.errors.APIError:
            raise error from None
        raise ConfigError(
            f"{service}: digest mismatch: {ref.where} has no {ref.run}; its tag {ref.by_tag} is {now}",
            hint=f"Nothing was pulled or created. If {now} is the image you trust, put that digest in {setting}; "
            "else point CTX_DOCKER_REGISTRY at a mirror that keeps the pinned image.",
            service=service,
        ) from None
    if ref.digest and found != ref.digest:  # the engine verifies content by digest; this catches a lying mirror
        raise ConfigError(f"{service}: digest mismatch: {ref.where} answers {found} for {ref.run}",
                          hint="Check the registry or mirror (CTX_DOCKER_REGISTRY); nothing was pulled or created.",
                          service=service)
    if ref.digest and ref.tag:
        _quietly_note_moved_tag(client, service, ref, report)


def _quietly_note_moved_tag(client, service: str, ref: ImageRef, report: Report) -> None:
    import docker

    try:
        now = client.api.inspect_distribution(ref.by_tag)["Descriptor"]["digest"]
    except docker.errors.APIError:
        return
    if now != ref.digest:
        report(f"{service}: {ref.by_tag} now points to {now}; pulling the pinned {ref.digest}")


def _pull(client, service: str, setting: str, ref: ImageRef, report: Report, progress: Progress) -> None:
    import docker

    layers: dict[str, int] = {}  # layer -> bytes downloaded
    here: set[str] = set()  # layers the engine already had
    digest = ref.digest
    try:
        for message in client.api.pull(ref.name, tag=ref.digest or ref.tag, stream=True, decode=True):
            if "error" in message:
                raise pull_error(service, setting, ref, message.get("error") or str(message))
            status, layer = message.get("status", ""), message.get("id", "")
            detail = message.get("progressDetail") or {}
            if status.startswith("Digest: "):
                digest = status.split(" ", 1)[1]
            elif layer and status == "Downloading" and detail.get("total"):
                layers[layer] = detail["total"]
                progress(f"{service} layer {layer}", detail.get("current", 0), detail["total"])
            elif layer and status == "Already exists":
                here.add(layer)
                progress(f"{service} layer {layer}", 1, 1)
            elif layer and status in ("Download complete", "Pull complete") and layer in layers:
                progress(f"{service} layer {layer}", layers[layer], layers[layer])
    except docker.errors.APIError as exc:
        raise pull_error(service, setting, ref, exc.explanation or str(exc)) from None
    if not present(client, ref):
        raise ServiceError(f"{service}: the pull of {ref.written} ended without the image",
                           hint="Run `docker pull` of it to see the engine's own message.", service=service)
    size = sum(layers.values()) / 1e6
    report(f"{service}: pulled {ref.by_tag} ({digest or 'no digest'}; {len(layers)} layer{'' if len(layers) == 1 else 's'} downloaded, {size:.1f} MB;"
           f" {len(here)} already here)")


def pull_error(service: str, setting: str, ref: ImageRef, text: str) -> CtxError:
    """What went wrong with a registry, said so a person can act on it (first line of the engine's text)."""
    text = (text.strip().splitlines() or ["?"])[0][:300]
    low = text.lower()
    login = f"`docker login {ref.where}` (ctx uses Docker's own credentials: ~/.docker/config.json, credential helpers)"
    if "no space left on device" in low:
        return ServiceError(
            f"{service}: the disk filled up while pulling {ref.written} ({text})",
            hint="Free space where Docker keeps images (`docker system df`, `docker image prune`), then run "
            "`ctx setup --runtime docker` again.", service=service)
    if any(k in low for k in ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                              "connection reset", "tls handshake", "server misbehaving", "timeout exceeded")):
        return ServiceError(
            f"{service}: registry {ref.where} is unreachable, so {ref.written} cannot be pulled ({text})",
            hint="Check the network or the mirror in CTX_DOCKER_REGISTRY; on a host without a registry, "
            f"`docker load` the image and run `ctx setup --runtime docker --no-pull`.", service=service)
    if "may require 'docker login'" in low:
        return ConfigError(f"{service}: {ref.written} does not exist on {ref.where} or needs a login ({text})",
                           hint=f"Check the name in {setting}, or log in with {login}.", service=service)
    if any(k in low for k in ("unauthorized", "authentication required", "no basic auth credentials", "denied")):
        return ConfigError(f"{service}: registry {ref.where} wants credentials for {ref.written} ({text})",
                           hint=f"Log in with {login}; never on ctx's command line.", service=service)
    if any(k in low for k in ("manifest unknown", "not found", "name unknown", "does not exist")):
        return ConfigError(f"{service}: {ref.written} is not on registry {ref.where} ({text})",
                           hint=f"Check the tag and digest in {setting}, or the mirror in CTX_DOCKER_REGISTRY.",
                           service=service)
    return ServiceError(f"{service}: pulling {ref.written} failed ({text})",
                        hint=f"Run `docker pull {ref.written}` to see the engine's own message.", service=service)
