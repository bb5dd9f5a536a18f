"""Choose the runtime: a flag or CTX_RUNTIME, else the one `ctx setup` recorded, else auto-detection.

Recording the choice in $CTX_HOME/runtime.json lets later commands (health from cron above all) skip probing
for a Docker engine, which would cost time and import the Docker SDK.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..errors import ConfigError
from .base import Endpoints, Runtime, ServiceStatus

__all__ = ["Endpoints", "Runtime", "ServiceStatus", "get_runtime", "resolve_runtime_name", "record_runtime"]


def _state_file(settings: Settings) -> Path:
    return settings.home / "runtime.json"


def recorded_runtime(settings: Settings) -> str | None:
    try:
        return json.loads(_state_file(settings).read_text())["runtime"]
    except (OSError, ValueError, KeyError):
        return None


def record_runtime(settings: Settings, name: str) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    tmp = _state_file(settings).with_suffix(".tmp")
    tmp.write_text(json.dumps({"runtime": name}) + "\n")
    os.replace(tmp, _state_file(settings))


def resolve_runtime_name(settings: Settings, probe: bool = True, report: Callable[[str], None] | None = None) -> str:
    if settings.runtime != "auto":
        return settings.runtime
    recorded = recorded_runtime(settings)
    if recorded:
        return recorded
    if settings.pg_url or settings.chroma_url:
        return "external"
    if probe and docker_usable(settings, report):
        return "docker"
    return "local"


def docker_usable(settings: Settings, report: Callable[[str], None] | None = None) -> bool:
    """An engine answers and has the configured images: auto never chooses a runtime that would need a pull.

    When an engine answers but lacks images, `report` gets one line saying so and how to get the docker runtime
    (setup shows it): an operator who has Docker running would otherwise wonder why auto chose local, and a
    silent gigabyte download is not what auto should do.
    """
    try:
        from .docker import missing_images
    except ImportError:
        return False
    missing = missing_images(settings)
    if missing and report is not None:
        them = "it" if len(missing) == 1 else "them"
        report(f"runtime: auto chose local: the Docker engine answers but has no image {', '.join(missing.values())}"
               f" (auto never downloads: `ctx setup --runtime docker` pulls {them}; or name others with"
               f" {', '.join(missing)})")
    return missing == {}


def get_runtime(settings: Settings, probe: bool = True) -> Runtime:
    name = resolve_runtime_name(settings, probe)
    if name == "local":
        from .local import LocalRuntime

        return LocalRuntime(settings)
    if name == "docker":
        from .docker import DockerRuntime

        return DockerRuntime(settings)
    if name == "external":
        from .external import ExternalRuntime

        return ExternalRuntime(settings)
    raise ConfigError(f"Unknown runtime {name!r}", hint="Use local, docker, external or auto.")
