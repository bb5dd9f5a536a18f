"""How ctx runs a Chroma server that demands its token: one definition for the local and docker runtimes.

`chroma run` (the Rust server of chromadb 1.x, also the official image's) has no authentication at all: anyone who
reaches its port can read or delete every collection. The chromadb package still ships its Python server
(`chromadb.app`, FastAPI on the same Rust core, so the same v2 API and the same files on disk) with token
authentication; ctx runs that under uvicorn (through chroma_app.py, which fixes one bug of it). The token reaches
it in a 0600 file (local) or the container's environment (docker), never on a command line, and the client sends it
as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

MODULE = "coditect_ctx.runtime.chroma_app"  # chromadb.app with one fix, run under uvicorn (see chroma_app.py)
MARK = "chroma_app"  # in the server's command line: tells it from a `chroma run` left by an older ctx
TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthenticationServerProvider"


# The docker runtime's default image: the official chromadb/chroma image runs `chroma run` only (no Python), so ctx
# cannot make it check a token. Any image with python3, chromadb and these packages serves; this one is built with
# `image_build_command()` (the setup error for a missing image prints it).
LOCAL_IMAGE = "ctx-chroma"  # the default image's name (config.py): built locally, never pulled
IMAGE_RECIPE = (
    "FROM python:3.11-slim\n"
    "RUN pip install --no-cache-dir chromadb=={version} fastapi uvicorn opentelemetry-instrumentation-fastapi\n"
    "WORKDIR /data\n"
)


def image_build_command(image: str) -> str:
    """The shell line that builds `image` from IMAGE_RECIPE, with the chromadb version ctx has installed."""
    from importlib.metadata import version as installed

    version = installed("chromadb")
    return f"printf '{IMAGE_RECIPE.format(version=version)}' | docker build -t {image} -".replace("\n", "\\n")


def server_argv(python: str, host: str, port: int) -> list[str]:
    """The local command line: no secret in it."""
    return [python, "-m", MODULE, "--host", host, "--port", str(port)]


def container_entrypoint() -> list[str]:
    """The docker runtime's entrypoint: chroma_app.py's source run by the image's python3 (no file to copy in)."""
    from importlib.resources import files

    return ["python3", "-c", files(__package__).joinpath("chroma_app.py").read_text(encoding="utf-8")]


def server_env(persist_directory: str, *, token: str = "", token_file: str = "") -> dict[str, str]:
    """The settings the server reads from its environment (chromadb.config.Settings). The token is given either in
    the environment (`token`: a container's, like its database password) or as a 0600 file (`token_file`, holding
    the token and no newline: the local runtime's, so the process environment holds no secret)."""
    credentials = (
        {"CHROMA_SERVER_AUTHN_CREDENTIALS_FILE": token_file} if token_file else {"CHROMA_SERVER_AUTHN_CREDENTIALS": token}
    )
    return {
        "CHROMA_SERVER_AUTHN_PROVIDER": TOKEN_PROVIDER,
        **credentials,
        "CHROMA_AUTH_TOKEN_TRANSPORT_HEADER": "Authorization",
        "IS_PERSISTENT": "TRUE",
        "PERSIST_DIRECTORY": persist_directory,
        "ALLOW_RESET": "FALSE",
        "ANONYMIZED_TELEMETRY": "False",
    }
