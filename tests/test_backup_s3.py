"""Backups in S3-compatible object storage, against real S3 servers started here on 127.0.0.1: moto's server mode
(with its IAM checks on, so wrong keys are refused as by AWS) and, as a second implementation, the npm package
s3rver (installed by .ci/run; skipped elsewhere when absent). Every user-visible step goes through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from coditect_ctx import backup as bk
from coditect_ctx import stack as stack_job
from coditect_ctx.kinds import COLLECTIONS
from coditect_ctx.stores import Store

from .conftest import REPO, SAMPLES, _short_tmp, _start, free_port, make_settings, settings_env
from .test_backup import pg_snapshot

DEMO = SAMPLES / "coditect-demo"
BUCKET = "ctx-backups"
S3RVER = REPO / ".ci" / "s3rver" / "node_modules" / ".bin" / "s3rver"
QUERIES = ("retry policy for the embedding batch", "redis cache eviction", "schema migration checkpoint")


class Server:
    """A running S3 server: its endpoint and a pair of keys it accepts."""

    def __init__(self, kind: str, proc: subprocess.Popen, endpoint: str, key_id: str, secret: str):
        self.kind, self.proc, self.endpoint, self.key_id, self.secret = kind, proc, endpoint, key_id, secret

    def env(self, **changes: str) -> dict[str, str]:
        """What ctx needs to reach it: the standard AWS variables, nothing from ~/.aws."""
        env = {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "us-east-1",
               "CTX_S3_ENDPOINT_URL": self.endpoint, "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE":
               "/nonexistent"}
        env.update(changes)
        return env

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret,
                            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents") or [])


def _wait_port(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"S3 server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("S3 server did not start")


def _start_moto(tmp: Path) -> Server:
    """moto_server with authentication on after the first three requests: those create the IAM user, its policy
    and its keys, so from then on it refuses unknown keys and bad signatures as AWS does."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "moto.log", "w"))
    _wait_port(port, proc)
    endpoint = f"http://127.0.0.1:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap")
    iam.create_user(UserName="ctx")
    iam.put_user_policy(UserName="ctx", PolicyName="backups", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="ctx")["AccessKey"]
    server = Server("moto", proc, endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    server.client().create_bucket(Bucket=BUCKET)
    return server


def _start_s3rver(tmp: Path) -> Server:
    if not S3RVER.exists():
        message = f"s3rver not installed at {S3RVER} (.ci/run installs it with npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen([str(S3RVER), "-d", str(tmp / "s3rver"), "-a", "127.0.0.1", "-p", str(port),
                             "--configure-bucket", BUCKET], stdout=subprocess.DEVNULL, stderr=open(tmp / "s3rver.log", "w"))
    _wait_port(port, proc)
    return Server("s3rver", proc, f"http://127.0.0.1:{port}", "S3RVER", "S3RVER")


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module")
def moto():
    tmp = _short_tmp("ctx-moto-")
    server = _start_moto(tmp)
    yield server
    _stop(server)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", params=["moto", "s3rver"])
def any_s3(request):
    """Each S3 implementation in turn: the same round trip must pass on both."""
    if request.param == "moto":
        yield request.getfixturevalue("moto")
        return
    tmp = _short_tmp("ctx-s3rver-")
    server = _start_s3rver(tmp)
    yield server
    _stop(server)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def demo(models_dir):
    """A store of this module's own with the sample data migrated and embedded."""
    settings = make_settings(_short_tmp("ctx-s3-"))
    _start(settings, models_dir)
    done = _ctx(settings, {}, "migrate", str(DEMO), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    yield settings
    stack_job.down(settings, volumes=True)


def _ctx(settings, env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coditect_ctx", *args],
                          env={**os.environ, **settings_env(settings), **env}, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, **kw)


def _answers(settings) -> list:
    """What search answers for a few questions: ids, in order, with their text (the user's view)."""
    out = []
    for query in QUERIES:
        proc = _ctx(settings, {}, "search", query, "--json", "--limit", "5")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        found = json.loads(proc.stdout)
        assert found["degraded"] == [] and found["results"], found
        out.append([(h["id"], h["title"], h["snippet"], round(h["score"], 6)) for h in found["results"]])
    return out


def _backed_up(settings, env: dict, repo: str) -> str:
    """`ctx backup --to repo`, which must succeed; the backup's name."""
    made = _ctx(settings, env, "backup", "--to", repo, "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    return json.loads(made.stdout)["name"]


def _one_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Exit `code`, one `Error:` line naming `words` and a `Hint:`, no traceback."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stdout}{err}"
    assert "Traceback" not in err and err.count("Error:") == 1 and "Hint:" in err, err
    line = next(ln for ln in err.splitlines() if ln.startswith("Error:"))
    for word in words:
        assert word in line, line
    return line


@contextmanager
def _library_repo(settings, server: Server, url: str):
    """The repository as the library opens it, with the server's keys in this process's environment meanwhile
    (what the CLI cannot do: prune as if a day had passed)."""
    from coditect_ctx.config import load_settings
    from coditect_ctx.repos import open_repo

    env = server.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield open_repo(load_settings(home=str(settings.home)), url)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _local(settings) -> list[str]:
    """What the local backups folder holds (a staging copy would show here)."""
    root = settings.backups_path
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _staged(settings) -> list[str]:
    root = settings.home / "staging"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _counts(settings) -> tuple:
    with Store(settings) as store:
        return pg_snapshot(store), {n: store.chroma.count(n) for n in COLLECTIONS.values()}


# -- the round trip, on each implementation ----------------------------------------------------------------
def test_round_trip_through_object_storage(demo, any_s3):
    settings, server = demo, any_s3
    repo = f"s3://{BUCKET}/rt-{server.kind}"
    env = server.env()
    before, answers = _counts(settings), _answers(settings)
    local_before = _local(settings)

    made = _ctx(settings, env, "backup", "--to", repo, "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    result = json.loads(made.stdout)
    name = result["name"]
    assert result["repos"] == [f"{repo}/{name}"] and result["path"] == f"{repo}/{name}"
    keys = server.keys(f"rt-{server.kind}/{name}/")
    assert f"rt-{server.kind}/{name}/manifest.json" in keys
    assert f"rt-{server.kind}/{name}/postgres.dump" in keys
    # no local repository asked for: the staging copy is gone, and nothing local counts as a backup
    assert _local(settings) == local_before

    listed = _ctx(settings, env, "backup", "list", "--repo", repo, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["complete"], r["repo"]) for r in rows] == [(name, True, repo)]
    assert rows[0]["size_bytes"] > 0 and rows[0]["verified"] is None

    checked = _ctx(settings, env, "backup", "verify", f"{repo}/{name}", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
    tested = _ctx(settings, env, "backup", "verify", f"{repo}/{name}", "--restore", "--json")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    listed = json.loads(_ctx(settings, env, "backup", "list", "--repo", repo, "--json").stdout)
    assert listed[0]["verified"] is True  # verified.json went back beside the manifest

    health = _ctx(settings, {**env, "CTX_BACKUP_REPOS": repo}, "health", "--json")
    check = next(c for c in json.loads(health.stdout)["checks"] if c["name"] == f"backup {repo}")
    assert check["status"] == "OK" and name in check["message"], check
    prom = _ctx(settings, {**env, "CTX_BACKUP_REPOS": repo}, "health", "--format", "prometheus").stdout
    assert f'ctx_backup_age_seconds{{repo="{repo}"}} ' in prom, prom

    # the store is lost; a new one is restored from object storage
    down = _ctx(settings, {}, "down", "--volumes", "--yes")
    assert down.returncode == 0, down.stdout + down.stderr
    stack_job.setup(settings, prepare_model=False)
    restored = _ctx(settings, env, "restore", f"{repo}/{name}", "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert json.loads(restored.stdout)["backup"] == f"{repo}/{name}"
    assert _staged(settings) == []  # the downloaded copy is removed
    check = _ctx(settings, {}, "validate")
    assert check.returncode == 0, check.stdout + check.stderr
    assert _counts(settings) == before
    assert _answers(settings) == answers


# -- a run killed half-way through its upload ---------------------------------------------------------------
def test_killed_upload_is_never_listed_restored_or_counted(demo, moto):
    settings, env = demo, moto.env()
    repo = f"s3://{BUCKET}/killed"
    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "backup", "--to", repo],
                            env={**os.environ, **settings_env(settings), **env, "CTX_PAUSE_AT": "backup-upload"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == "point: backup-upload":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    keys = moto.keys("killed/")
    assert keys and not any(k.endswith("/manifest.json") for k in keys)  # some data went up, no manifest
    name = keys[0].split("/")[1]

    listed = json.loads(_ctx(settings, env, "backup", "list", "--repo", repo, "--json").stdout)
    assert [(r["name"], r["complete"], r["unfinished"]) for r in listed] == [(name, False, True)]
    refused = _ctx(settings, env, "restore", f"{repo}/{name}", "--yes")
    _one_error(refused, 2, f"{repo}/{name}", "not a complete ctx backup")
    health = _ctx(settings, {**env, "CTX_BACKUP_REPOS": repo}, "health", "--json")
    check = next(c for c in json.loads(health.stdout)["checks"] if c["name"] == f"backup {repo}")
    assert check["status"] == "WARNING" and "no complete backup" in check["message"]
    # the staging folder left on local disk is an unfinished backup there too, never a complete one
    assert [b.complete for b in bk.list_backups(settings.backups_path)] == [False]

    again = _ctx(settings, env, "backup", "--to", repo, "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    listed = json.loads(_ctx(settings, env, "backup", "list", "--repo", repo, "--json").stdout)
    assert sorted((r["complete"], r["unfinished"]) for r in listed) == [(False, True), (True, False)]

    # a day later prune removes the unfinished backup and aborts a multipart upload a killed run left
    from coditect_ctx.backup import utc_now

    s3c = moto.client()
    stale = s3c.create_multipart_upload(Bucket=BUCKET, Key=f"killed/{name}/postgres.dump")["UploadId"]
    with _library_repo(settings, moto, repo) as repository:
        plan = repository.prune(7, 4, 6, now=utc_now() + timedelta(days=2))
    assert plan.partial_delete == [name] and plan.delete == []
    assert plan.aborted_uploads == [f"killed/{name}/postgres.dump"]
    assert not any(u["UploadId"] == stale for u in s3c.list_multipart_uploads(Bucket=BUCKET).get("Uploads") or [])
    listed = json.loads(_ctx(settings, env, "backup", "list", "--repo", repo, "--json").stdout)
    assert [r["complete"] for r in listed] == [True]


# -- a tampered object ---------------------------------------------------------------------------------------
def test_tampered_object_is_refused_and_the_store_unchanged(demo, moto):
    settings, env = demo, moto.env()
    repo = f"s3://{BUCKET}/tamper"
    name = _backed_up(settings, env, repo)
    s3c = moto.client()
    key = f"tamper/{name}/chroma/{COLLECTIONS['message']}.jsonl.gz"
    data = bytearray(s3c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3c.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    before = _counts(settings)

    checked = _ctx(settings, env, "backup", "verify", f"{repo}/{name}")
    _one_error(checked, 5, key.split("/", 1)[1], "checksum mismatch")
    refused = _ctx(settings, env, "restore", f"{repo}/{name}", "--yes")
    line = _one_error(refused, 5, "checksum mismatch")
    # named where the operator finds it (not the staging copy, removed by then), the hint naming its repository
    flat = " ".join(refused.stderr[refused.stderr.index("Error:"):].split())
    assert f"{repo}/{name}/" in flat and str(settings.home / "staging") not in flat, line
    assert f"ctx backup list --repo {repo}" in flat, flat
    assert _counts(settings) == before
    assert _staged(settings) == []


def test_a_manifest_naming_a_path_outside_the_backup_is_refused_before_anything_is_fetched(demo, moto, tmp_path):
    """Anyone who can write to the bucket can re-sign a manifest (its checksum needs no secret): a file named
    `../../x` must never be downloaded, decrypted or read outside the staging folder."""
    settings, env = demo, moto.env()
    repo = f"s3://{BUCKET}/escape"
    name = _backed_up(settings, env, repo)
    s3c = moto.client()
    manifest = json.loads(s3c.get_object(Bucket=BUCKET, Key=f"escape/{name}/manifest.json")["Body"].read())
    target = tmp_path / "written-by-a-bucket-writer"
    payload = b"not from ctx"
    rel = "../" * 12 + str(target).lstrip("/")
    manifest = {k: v for k, v in manifest.items() if k != "checksum"}
    manifest["files"][rel] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    manifest["checksum"] = bk.manifest_checksum(manifest)
    s3c.put_object(Bucket=BUCKET, Key=f"escape/{name}/{rel}", Body=payload)
    s3c.put_object(Bucket=BUCKET, Key=f"escape/{name}/manifest.json", Body=json.dumps(manifest).encode())
    before = _counts(settings)

    for args in (("backup", "verify", f"{repo}/{name}", "--restore"), ("restore", f"{repo}/{name}", "--yes")):
        refused = _ctx(settings, env, *args)
        _one_error(refused, 5, "outside a ctx backup's layout")
        assert not target.exists(), f"ctx {args[0]} wrote {target}"
    assert _counts(settings) == before
    assert _staged(settings) == []


# -- prune per repository ------------------------------------------------------------------------------------
def test_prune_applies_the_retention_plan_in_object_storage(demo, moto, tmp_path):
    settings, env = demo, moto.env()
    repo = f"s3://{BUCKET}/gfs"
    s3c = moto.client()
    names = ["20261101T020000Z", "20261120T020000Z", "20261128T020000Z", "20261129T020000Z", "20261129T140000Z"]
    for name in names:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "postgres.dump").write_bytes(b"dump " + name.encode())
        ended = f"{name[:4]}-{name[4:6]}-{name[6:8]}T{name[9:11]}:{name[11:13]}:00Z"
        bk.write_manifest(folder, {"format": bk.FORMAT, "name": name, "ended_at": ended,
                                   "files": {"postgres.dump": {"sha256": bk.file_sha256(folder / "postgres.dump"),
                                                               "bytes": (folder / "postgres.dump").stat().st_size}}})
        for rel in ("postgres.dump", "manifest.json"):
            s3c.upload_file(str(folder / rel), BUCKET, f"gfs/{name}/{rel}")

    unconfirmed = _ctx(settings, env, "backup", "prune", "--repo", repo, "--keep-daily", "2", "--keep-weekly", "0",
                       "--keep-monthly", "0")
    _one_error(unconfirmed, 2, "prune would remove 3")
    dry = _ctx(settings, env, "backup", "prune", "--repo", repo, "--keep-daily", "2", "--keep-weekly", "0",
               "--keep-monthly", "0", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert sorted(json.loads(dry.stdout)[0]["delete"]) == ["20261101T020000Z", "20261120T020000Z", "20261129T020000Z"]
    assert len(moto.keys("gfs/")) == 10
    done = _ctx(settings, env, "backup", "prune", "--repo", repo, "--keep-daily", "2", "--keep-weekly", "0",
                "--keep-monthly", "0", "--yes", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [plan] = json.loads(done.stdout)  # a list however many repositories (a script breaks on no new shape)
    assert plan["repo"] == repo and plan["deleted"] is True
    assert sorted({k.split("/")[1] for k in moto.keys("gfs/")}) == ["20261128T020000Z", "20261129T140000Z"]

    # a second store writing to the same prefix never overwrites a backup of the first, file by file
    from coditect_ctx.errors import ConfigError

    folder = tmp_path / "20261128T020000Z"
    with _library_repo(settings, moto, repo) as repository, pytest.raises(ConfigError, match="already exists"):
        repository.put(folder, folder / "manifest.json", folder.name)
    assert len(moto.keys("gfs/20261128T020000Z/")) == 2


# -- wrong keys, a missing bucket, an unreachable endpoint -------------------------------------------------
def test_wrong_credentials_missing_bucket_and_unreachable_endpoint(demo, moto):
    settings = demo
    repo = f"s3://{BUCKET}/errors"
    local_before = _local(settings)
    wrong_secret = "wrong-secret-" + "x" * 20
    bad = moto.env(AWS_SECRET_ACCESS_KEY=wrong_secret)
    for args in (("backup", "--to", repo), ("backup", "list", "--repo", repo),
                 ("restore", f"{repo}/20261129T020000Z", "--yes"), ("backup", "verify", f"{repo}/20261129T020000Z")):
        proc = _ctx(settings, bad, *args)
        line = _one_error(proc, 2, repo, "credentials were refused")
        assert wrong_secret not in proc.stdout + proc.stderr and moto.secret not in proc.stdout + proc.stderr, line
    unknown = _ctx(settings, moto.env(AWS_ACCESS_KEY_ID="AKIAUNKNOWN0000000"), "backup", "--to", repo)
    _one_error(unknown, 2, repo, "credentials were refused")
    nokeys = {k: v for k, v in moto.env().items() if not k.startswith("AWS_ACCESS") and "SECRET" not in k}
    proc = _ctx(settings, {**nokeys, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "backup", "--to", repo)
    _one_error(proc, 2, repo, "no S3 credentials")

    missing = _ctx(settings, moto.env(), "backup", "--to", "s3://no-such-bucket-here/x")
    _one_error(missing, 2, "s3://no-such-bucket-here/x", "does not exist")
    down = _ctx(settings, moto.env(CTX_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"), "backup", "list",
                "--repo", repo)
    _one_error(down, 3, repo, "unreachable")
    # a repository refused up front: nothing dumped, no staging copy left behind
    assert _local(settings) == local_before

    # health: a repository that cannot be reached is a WARNING naming it, the other checks unaffected
    health = _ctx(settings, {**bad, "CTX_BACKUP_REPOS": repo}, "health", "--json")
    report = json.loads(health.stdout)
    check = next(c for c in report["checks"] if c["name"] == f"backup {repo}")
    assert check["status"] == "WARNING" and "credentials were refused" in check["message"]
    assert {c["name"]: c["status"] for c in report["checks"]}["postgres"] == "OK"
    assert wrong_secret not in health.stdout + health.stderr


# -- an encrypted backup is just files to a repository ----------------------------------------------------
def test_encrypted_backup_through_object_storage_needs_its_identity(demo, moto, tmp_path):
    from pyrage import x25519

    settings = demo
    repo = f"s3://{BUCKET}/sealed"
    keys = {}
    for who in ("right", "wrong"):
        identity = x25519.Identity.generate()
        keys[who] = tmp_path / f"{who}.txt"
        keys[who].write_text(f"{identity}\n")
        keys[who].chmod(0o600)
        keys[f"{who}-public"] = str(identity.to_public())
    env = moto.env(CTX_BACKUP_RECIPIENTS=keys["right-public"])
    name = _backed_up(settings, env, repo)
    stored = moto.keys(f"sealed/{name}/")
    assert f"sealed/{name}/postgres.dump.age" in stored and f"sealed/{name}/postgres.dump" not in stored
    assert moto.client().get_object(Bucket=BUCKET, Key=f"sealed/{name}/postgres.dump.age")["Body"].read(21) == \
        b"age-encryption.org/v1"

    checked = _ctx(settings, env, "backup", "verify", f"{repo}/{name}", "--json")  # no key needed
    assert checked.returncode == 0, checked.stdout + checked.stderr
    drill = _ctx(settings, env, "backup", "verify", f"{repo}/{name}", "--restore")  # asked to test-restore: no key
    _one_error(drill, 2, f"{repo}/{name} is encrypted")
    assert "download:" not in drill.stderr
    before = _counts(settings)
    refused = _ctx(settings, env, "restore", f"{repo}/{name}", "--yes")  # refused before anything is downloaded
    _one_error(refused, 2, f"{repo}/{name} is encrypted")
    assert "download:" not in refused.stderr
    refused = _ctx(settings, env, "restore", f"{repo}/{name}", "--yes", "--identity", str(keys["wrong"]))
    _one_error(refused, 2, "opens none of the recipients")
    assert "download:" not in refused.stderr
    assert _counts(settings) == before and _staged(settings) == []
    restored = _ctx(settings, env, "restore", f"{repo}/{name}", "--yes", "--identity", str(keys["right"]), "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert _counts(settings) == before and _staged(settings) == []


# -- several repositories in one run ---------------------------------------------------------------------------
def test_one_run_writes_every_configured_repository(demo, moto, tmp_path):
    settings = demo
    local, repo = tmp_path / "local-backups", f"s3://{BUCKET}/multi"
    env = moto.env(CTX_BACKUP_REPOS=f"{local},{repo}")
    made = _ctx(settings, env, "backup", "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    name = json.loads(made.stdout)["name"]
    assert json.loads(made.stdout)["repos"] == [str(local / name), f"{repo}/{name}"]
    assert bk.load_manifest(local / name)["name"] == name  # the local copy is a complete backup of its own
    listed = json.loads(_ctx(settings, env, "backup", "list", "--json").stdout)
    assert sorted((r["repo"], r["name"], r["complete"]) for r in listed) == sorted(
        [(str(local), name, True), (repo, name, True)])
    # the object in storage and the local file are the same bytes
    dump = moto.client().get_object(Bucket=BUCKET, Key=f"multi/{name}/postgres.dump")["Body"].read()
    assert dump == (local / name / "postgres.dump").read_bytes()
    text = _ctx(settings, env, "health").stdout
    assert f"backup {repo}" in text and f"backup {local}" in text


def test_a_repository_lost_mid_run_fails_the_run_and_keeps_the_others(demo, tmp_path):
    """Object storage stops answering while the backup uploads: the run exits 3 naming it and where the backup was
    written; the local repository holds a complete backup, the bucket no manifest."""
    settings = demo
    server = _start_moto(tmp_path)
    local, repo = tmp_path / "kept", f"s3://{BUCKET}/lost"
    release = tmp_path / "release"
    env = {**os.environ, **settings_env(settings), **server.env(), "CTX_PAUSE_AT": "backup-upload",
           "CTX_PAUSE_RELEASE": str(release)}
    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", "backup", "--to", str(local), "--to", repo],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == "point: backup-upload":
                break
        assert any("point: backup-upload" in ln for ln in seen), "".join(seen)
        keys = server.keys("lost/")
        _stop(server)  # the service goes away between two files
        release.touch()
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        _stop(server)
    assert keys and not any(k.endswith("manifest.json") for k in keys)
    err = "".join(seen) + err
    assert proc.returncode == 3, err
    line = " ".join(err[err.index("Error:"):err.index("Hint:")].split())  # the error, as one line however wrapped
    assert repo in line and "unreachable" in line and f"was written to {local}" in line, line
    assert "Traceback" not in err
    done = [b for b in bk.list_backups(local)]
    assert [b.complete for b in done] == [True] and done[0].name in line


def test_a_repository_that_cannot_be_written_is_named_and_the_others_written(demo, moto, tmp_path):
    settings = demo
    good, blocked, repo = tmp_path / "good", tmp_path / "blocked", f"s3://{BUCKET}/partly"
    blocked.write_text("a file where a folder should be")
    proc = _ctx(settings, moto.env(), "backup", "--to", str(good), "--to", str(blocked / "backups"), "--to", repo)
    line = " ".join(proc.stderr[proc.stderr.index("Error:"):proc.stderr.index("Hint:")].split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"Cannot write backups to {blocked / 'backups'}" in line and f"was written to {good}" in line, line
    name = next(b.name for b in bk.list_backups(good) if b.complete)
    assert f"{repo}/{name}" in line  # the repository after the failed one was still written
    assert f"partly/{name}/manifest.json" in moto.keys(f"partly/{name}/")


def test_an_unreachable_repository_does_not_stop_the_local_backup_nor_hide_it(demo, moto, tmp_path):
    """Object storage down at backup time: the local repository still gets the backup (exit 3 naming the
    repository that failed and where the backup went); `backup list` shows the local backups and names the other."""
    settings = demo
    local, repo = tmp_path / "here", f"s3://{BUCKET}/away"
    env = moto.env(CTX_BACKUP_REPOS=f"{local},{repo}", CTX_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    proc = _ctx(settings, env, "backup", "--portable")
    _one_error(proc, 3, repo, "unreachable")
    line = " ".join(proc.stderr[proc.stderr.index("Error:"):proc.stderr.index("Hint:")].split())
    assert f"was written to {local}" in line, line
    name = next(b.name for b in bk.list_backups(local) if b.complete)
    assert name in line and _staged(settings) == []
    listed = _ctx(settings, env, "backup", "list", "--json")
    _one_error(listed, 3, repo, "unreachable")
    assert [(b["repo"], b["name"]) for b in json.loads(listed.stdout)] == [(str(local), name)]
    # object storage alone and down: refused before the dump, as before
    only = _ctx(settings, env, "backup", "--to", repo)
    _one_error(only, 3, repo, "unreachable")


def test_keys_typed_into_a_repository_url_are_never_echoed(demo, moto):
    settings = demo
    for args in (("backup", "--to", f"s3://AKIAINURL:TopSecretInUrl@{BUCKET}/p"),
                 ("restore", f"s3://AKIAINURL:TopSecretInUrl@{BUCKET}/p/20261201T203556Z", "--yes"),
                 ("backup", "list", "--repo", f"s3://TopSecretInUrl@{BUCKET}/p")):
        proc = _ctx(settings, moto.env(), *args)
        _one_error(proc, 2, f"s3://***@{BUCKET}/p")
        proc = _ctx(settings, moto.env(), *args, "--json")
        assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "UsageError", proc.stdout
        for out in (proc.stdout + proc.stderr, _ctx(settings, moto.env(), *args).stderr):
            assert "TopSecretInUrl" not in out and "AKIAINURL" not in out, out


def test_a_name_taken_in_object_storage_is_never_overwritten(demo, moto):
    """Another host (or a run in the same second) already has a backup under this second's name in the prefix:
    the new backup takes the next free name, the older one is left as it was."""
    from datetime import datetime, timezone

    settings = demo
    repo, s3c = f"s3://{BUCKET}/taken", moto.client()
    now = datetime.now(timezone.utc)
    precious = b'{"precious": "an earlier backup from host B"}'
    names = [(now + timedelta(seconds=i)).strftime(bk.NAME_FORMAT) for i in range(-2, 120)]
    for name in names:
        s3c.put_object(Bucket=BUCKET, Key=f"taken/{name}/manifest.json", Body=precious)
    made = _ctx(settings, moto.env(), "backup", "--portable", "--to", repo, "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    name = json.loads(made.stdout)["name"]
    assert name.rpartition("-")[0] in names and name.endswith("-2"), name
    assert all(s3c.get_object(Bucket=BUCKET, Key=f"taken/{n}/manifest.json")["Body"].read() == precious for n in names)
    assert f"taken/{name}/manifest.json" in moto.keys(f"taken/{name}/")


def test_a_killed_backups_staging_copy_is_removed_by_the_next_backup(demo, moto):
    """An S3-only backup killed mid-upload leaves its staging `.NAME.partial` (a full dump) in the backups folder;
    the next backup removes it once over a day old, whatever repositories it writes to; a recent one stays."""
    settings = demo
    root = settings.backups_path
    stale, fresh = root / ".20261101T020000Z.partial", root / ".20261101T030000Z.partial"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "postgres.dump").write_bytes(b"PGDMP a full dump in clear")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))
    try:
        made = _ctx(settings, moto.env(), "backup", "--portable", "--to", f"s3://{BUCKET}/sweep")
        assert made.returncode == 0, made.stdout + made.stderr
        assert not stale.exists() and fresh.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)


def test_a_manifest_without_its_end_time_is_listed_with_a_problem(demo, moto):
    settings = demo
    manifest = {"format": bk.FORMAT, "files": {}}
    manifest["checksum"] = bk.manifest_checksum(manifest)
    moto.client().put_object(Bucket=BUCKET, Key="odd/20261201T000002Z/manifest.json", Body=json.dumps(manifest).encode())
    listed = _ctx(settings, moto.env(), "backup", "list", "--repo", f"s3://{BUCKET}/odd", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "20261201T000002Z" and not entry["complete"] and "ended_at" in entry["problem"], entry


def test_an_empty_repository_is_a_usage_error(demo, moto, tmp_path):
    """`--to "$DIR"` with DIR unset: exit 2, nothing written into the current folder."""
    settings = demo
    for args in (("backup", "--portable", "--to", ""), ("backup", "list", "--repo", " ")):
        _one_error(_ctx(settings, moto.env(), *args, cwd=tmp_path), 2, "empty repository")
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_bucket_name_is_a_usage_error(demo, moto):
    for url in (f"s3://{BUCKET}:99/p", "s3://a b/p"):
        _one_error(_ctx(demo, moto.env(), "backup", "--portable", "--to", url), 2, "Invalid bucket name")


def test_prometheus_label_values_are_escaped(demo, moto):
    """A repository URL holding `"` or `\\` (legal in S3 keys) stays one valid label: an unescaped one makes
    node_exporter drop every metric of the file."""
    url = f's3://{BUCKET}/a"b\\c'
    proc = _ctx(demo, moto.env(CTX_BACKUP_REPOS=url), "health", "--format", "prometheus")
    lines = [ln for ln in proc.stdout.splitlines() if "backup s3://" in ln or "repo=" in ln]
    assert lines and all(f'="backup s3://{BUCKET}/a\\"b\\\\c"}}' in ln or f'repo="s3://{BUCKET}/a\\"b\\\\c"' in ln
                         for ln in lines), lines


def test_a_name_listed_from_object_storage_is_accepted_by_verify(demo, moto):
    """`ctx backup list` shows bare names for every configured repository: those of object storage work too."""
    settings = demo
    repo = f"s3://{BUCKET}/named"
    env = moto.env(CTX_BACKUP_REPOS=repo)
    made = _ctx(settings, env, "backup", "--portable", "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    name = json.loads(made.stdout)["name"]
    assert name in [b["name"] for b in json.loads(_ctx(settings, env, "backup", "list", "--json").stdout)]
    checked = _ctx(settings, env, "backup", "verify", name, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["backup"] == f"{repo}/{name}" and _staged(settings) == []
    missing = _ctx(settings, env, "restore", "20250101T000000Z", "--yes")
    _one_error(missing, 2, "No backup at 20250101T000000Z")


def test_health_warns_when_a_configured_local_repository_has_no_backup(demo, tmp_path):
    """CTX_BACKUP_REPOS names the backups folder (with a trailing slash, as written in a crontab): no backup there
    yet is a WARNING, as for any configured repository; the default folder of a new store stays silent."""
    empty = tmp_path / "backups"
    empty.mkdir()
    env = {"CTX_BACKUP_DIR": str(empty)}
    quiet = json.loads(_ctx(demo, env, "health", "--json").stdout)
    assert not [c for c in quiet["checks"] if c["name"].startswith("backup")], quiet["checks"]
    named = json.loads(_ctx(demo, {**env, "CTX_BACKUP_REPOS": f"{empty}/"}, "health", "--json").stdout)
    [check] = [c for c in named["checks"] if c["name"].startswith("backup")]
    assert check["name"] == "backup" and check["status"] == "WARNING" and "no complete backup" in check["message"]


def test_a_download_that_cannot_fit_is_refused_before_it_starts(demo, moto):
    """The manifest gives every file's size: a backup larger than the free space of the staging disk is one clear
    error naming the folder (exit 2), before anything is downloaded, never exit 70 half-way."""
    settings, s3c = demo, moto.client()
    repo = f"s3://{BUCKET}/huge"
    made = _ctx(settings, moto.env(), "backup", "--portable", "--to", repo, "--json")
    assert made.returncode == 0, made.stdout + made.stderr
    name = json.loads(made.stdout)["name"]
    key = f"huge/{name}/manifest.json"
    manifest = json.loads(s3c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    manifest["files"]["postgres.dump"]["bytes"] = 10 ** 18  # more than any disk here: what a 1 EB dump would say
    manifest["checksum"] = bk.manifest_checksum(manifest)
    s3c.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(manifest).encode())
    before = _counts(settings)
    proc = _ctx(settings, moto.env(), "restore", f"{repo}/{name}", "--yes")
    _one_error(proc, 2)
    flat = " ".join(proc.stderr[proc.stderr.index("Error:"):].split())
    assert f"{repo}/{name} needs" in flat and f"MB in {settings.home / 'staging'};" in flat, flat
    assert "download:" not in proc.stderr and _staged(settings) == [] and _counts(settings) == before


def test_objects_that_are_not_ctxs_are_neither_listed_nor_pruned(demo, moto):
    """Someone else's files under a backup-shaped folder name in the prefix: not an "unfinished" backup of ctx's,
    never deleted by prune, however old."""
    from coditect_ctx.backup import utc_now

    settings, s3c = demo, moto.client()
    repo = f"s3://{BUCKET}/shared"
    s3c.put_object(Bucket=BUCKET, Key="shared/20250101T000000Z/notes.txt", Body=b"not ctx's")
    s3c.put_object(Bucket=BUCKET, Key="shared/20250102T000000Z/postgres.dump", Body=b"a killed upload of ctx's")
    listed = _ctx(settings, moto.env(), "backup", "list", "--repo", repo, "--json")
    assert [b["name"] for b in json.loads(listed.stdout)] == ["20250102T000000Z"], listed.stdout
    with _library_repo(settings, moto, repo) as repository:
        plan = repository.prune(7, 4, 6, now=utc_now() + timedelta(days=2))
    assert plan.partial_delete == ["20250102T000000Z"]
    assert moto.keys("shared/") == ["shared/20250101T000000Z/notes.txt"]


def test_health_gives_a_hung_repository_one_deadline(demo, moto):
    """An endpoint that accepts connections and never answers: the repository check ends at CTX_TIMEOUT as a
    WARNING saying so, the other checks unaffected."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        repo = f"s3://{BUCKET}/hung"
        proc = _ctx(demo, moto.env(CTX_S3_ENDPOINT_URL=endpoint, CTX_BACKUP_REPOS=repo, CTX_TIMEOUT="1"),
                    "health", "--json")
    report = json.loads(proc.stdout)
    check = next(c for c in report["checks"] if c["name"] == f"backup {repo}")
    assert check["status"] == "WARNING" and "did not answer within 1 s (CTX_TIMEOUT)" in check["message"], check
    assert {c["name"]: c["status"] for c in report["checks"]}["postgres"] == "OK"
