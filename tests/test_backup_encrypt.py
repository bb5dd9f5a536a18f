"""Encrypted backups (CTX_BACKUP_RECIPIENTS, age via pyrage): restore and verify with and without the identity,
tampering, bad keys, and files the standard `age` tool decrypts. Real stores, the real CLI as a process."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from coditect_ctx import backup as bk
from coditect_ctx.runtime.pgtools import embedded_pg_bin
from coditect_ctx.stores import Store

from .conftest import SAMPLES, run_ctx, settings_env
from .test_backup import _scratch_left, assert_same_vectors, chroma_snapshot, flip_byte, pg_snapshot, seed

QUERIES = ("backup restore", "privacy manager", "checkpoint script")


def _key(folder: Path, name: str = "key.txt", mode: int = 0o600) -> tuple[Path, str]:
    """A new age identity file (as age-keygen writes it) and its public key."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path = folder / name
    path.write_text(f"# created: by the test\n# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(mode)
    return path, str(identity.to_public())


def _secret(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))


def _ctx(settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`ctx ARGS` as a process with these CTX_* variables set."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return run_ctx(settings, *args)


def _searches(settings) -> dict[str, list[str]]:
    out = {}
    for q in QUERIES:
        proc = run_ctx(settings, "search", q, "--json", "-n", "10")
        assert proc.returncode == 0, proc.stderr
        out[q] = [hit["id"] for hit in json.loads(proc.stdout)["results"]]
    return out


def _no_clear_files(settings) -> None:
    """Nothing decrypted is left behind: the staging folder under $CTX_HOME is empty."""
    staging = settings.home / bk.STAGING_DIR
    assert not staging.exists() or list(staging.iterdir()) == []


def test_encrypted_round_trip_needs_the_right_identity(fresh_stack, tmp_path):
    from coditect_ctx.migrate import run_migrate

    settings = fresh_stack
    report = run_migrate(settings, [SAMPLES / "coditect-demo"])
    assert report.embedded_vectors > 0
    key, public = _key(tmp_path)
    wrong, _ = _key(tmp_path, "wrong.txt")
    with Store(settings) as store:
        rows_before, vectors_before = pg_snapshot(store), chroma_snapshot(store)
    answers_before = _searches(settings)
    assert any(answers_before.values())

    made = _ctx(settings, "backup", "--json", CTX_BACKUP_RECIPIENTS=public)
    assert made.returncode == 0, made.stderr
    folder = Path(json.loads(made.stdout)["path"])
    assert json.loads(made.stdout)["encryption"] == {"format": "age", "recipients": [public]}
    stored = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert stored == sorted(["manifest.json", "postgres.dump.age", "chroma-snapshot.tar.zst.age",
                             *(f"chroma/{n}.jsonl.gz.age" for n in bk.COLLECTIONS.values())])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    manifest = json.loads((folder / "manifest.json").read_text())  # in clear: list and verify need no key
    assert manifest["encryption"] == {"format": "age", "recipients": [public]}
    for rel, meta in manifest["files"].items():
        assert meta["sha256"] == bk.file_sha256(folder / rel) and meta["clear_sha256"] != meta["sha256"]
    for path in folder.rglob("*.age"):  # age files, with no clear dump or gzip stream inside
        data = path.read_bytes()
        assert data.startswith(b"age-encryption.org/v1\n-> X25519 ") and b"PGDMP" not in data
        with pytest.raises(OSError):
            gzip.decompress(data)

    listed = json.loads(run_ctx(settings, "backup", "list", "--json").stdout)
    assert listed[0]["name"] == folder.name and listed[0]["complete"] and listed[0]["encrypted"] is True
    assert "complete, encrypted" in run_ctx(settings, "backup", "list").stdout
    checked = run_ctx(settings, "backup", "verify", folder.name, "--json")
    assert checked.returncode == 0, checked.stderr
    assert "not test-restored" in json.loads(checked.stdout)["detail"]

    # the store moves on after the backup; a refused restore leaves it exactly so
    with Store(settings) as store, store.pg() as conn:
        conn.execute("DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 3)")
        conn.commit()
    with Store(settings) as store:
        moved_on = pg_snapshot(store), chroma_snapshot(store)
    assert len(moved_on[0]["messages"]) == len(rows_before["messages"]) - 3

    refused = run_ctx(settings, "restore", folder.name, "--yes")
    assert refused.returncode == 2, refused.stderr
    assert "is encrypted" in refused.stderr and "--identity" in refused.stderr
    refused = run_ctx(settings, "restore", folder.name, "--yes", "--identity", str(wrong))
    assert refused.returncode == 2, refused.stderr
    assert "opens none of the recipients" in refused.stderr
    assert _secret(wrong) not in refused.stderr + refused.stdout and "Traceback" not in refused.stderr
    with Store(settings) as store:
        assert (pg_snapshot(store), chroma_snapshot(store)) == moved_on
    _no_clear_files(settings)

    key.chmod(0o644)  # readable by others: used, with a warning
    restored = _ctx(settings, "restore", folder.name, "--yes", "--json", CTX_BACKUP_IDENTITY=str(key))
    assert restored.returncode == 0, restored.stderr
    assert "can be read by other users" in restored.stderr and _secret(key) not in restored.stderr + restored.stdout
    with Store(settings) as store:
        assert pg_snapshot(store) == rows_before
        assert_same_vectors(chroma_snapshot(store), vectors_before)
    validate = run_ctx(settings, "validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert _searches(settings) == answers_before
    _no_clear_files(settings)


def _encrypted_backup(settings, dest: Path, public: str, prefix: str) -> bk.BackupResult:
    with Store(settings) as store:
        seed(store, n=6, prefix=prefix)
    return bk.create_backup(replace(settings, backup_recipients=public), dest=dest)


def test_verify_with_and_without_identity_and_tampering(stack, tmp_path):
    settings = stack
    key, public = _key(tmp_path)
    other, other_public = _key(tmp_path, "other.txt")
    made = _encrypted_backup(settings, tmp_path / "b", f"{public}, {other_public}", "enc-verify")
    dest = ("--dest", str(tmp_path / "b"))

    plain = run_ctx(settings, "backup", "verify", made.name, *dest)
    assert plain.returncode == 0, plain.stderr
    assert not (made.path / "verified.json").exists()  # "verified" in `backup list` means test-restored
    full = run_ctx(settings, "backup", "verify", made.name, *dest, "--identity", str(other), "--json")
    assert full.returncode == 0, full.stderr  # either recipient's identity opens it
    assert json.loads((made.path / "verified.json").read_text())["ok"] is True
    assert json.loads(full.stdout)["scratch_database"].startswith("ctx_verify_")
    _no_clear_files(settings)

    # an encrypted file altered: the checksum of the encrypted bytes catches it without a key
    copy = tmp_path / "flipped"
    shutil.copytree(made.path, copy)
    flip_byte(copy / "chroma" / "messages_embeddings.jsonl.gz.age")
    result = run_ctx(settings, "backup", "verify", str(copy))
    assert result.returncode == 5 and "checksum mismatch" in result.stderr, result.stderr
    result = run_ctx(settings, "restore", str(copy), "--yes", "--identity", str(key))
    assert result.returncode == 5 and "checksum mismatch" in result.stderr, result.stderr

    # ... and when the manifest was re-signed to match, age's own authentication refuses it (exit 5, not 2)
    manifest = {k: v for k, v in json.loads((copy / "manifest.json").read_text()).items() if k != "checksum"}
    rel = "chroma/messages_embeddings.jsonl.gz.age"
    manifest["files"][rel]["sha256"] = bk.file_sha256(copy / rel)
    bk.write_manifest(copy, manifest)
    assert run_ctx(settings, "backup", "verify", str(copy)).returncode == 0  # the checksums now agree
    result = run_ctx(settings, "backup", "verify", str(copy), "--identity", str(key))
    assert result.returncode == 5 and "altered or damaged" in result.stderr, result.stderr
    assert json.loads((copy / "verified.json").read_text())["ok"] is False

    # a clear checksum that does not match what decrypts (manifest re-signed)
    copy2 = tmp_path / "clear-sum"
    shutil.copytree(made.path, copy2)
    manifest = {k: v for k, v in json.loads((copy2 / "manifest.json").read_text()).items() if k != "checksum"}
    manifest["files"]["postgres.dump.age"]["clear_sha256"] = "0" * 64
    bk.write_manifest(copy2, manifest)
    result = run_ctx(settings, "backup", "verify", str(copy2), "--identity", str(key))
    assert result.returncode == 5 and "decrypted content does not match" in result.stderr, result.stderr
    _no_clear_files(settings)
    _drop_seed(settings, "enc-verify")


def _drop_seed(settings, prefix: str) -> None:
    with Store(settings) as store:
        with store.pg() as conn:
            conn.execute("DELETE FROM submodule_registry WHERE name = %s", (f"{prefix}-sub",))
            conn.execute("DELETE FROM tags WHERE name = %s", (f"{prefix}-tag",))
            conn.execute("DELETE FROM privacy_audit WHERE record_identity = %s", (f"{prefix}-m-0",))
            conn.commit()
        for name in bk.COLLECTIONS.values():
            store.chroma.delete(name, where={"submodule": f"{prefix}-sub"})


def test_bad_recipients_and_identities_are_clear_errors(stack, tmp_path):
    settings = stack
    key, public = _key(tmp_path)
    dest = ("--dest", str(tmp_path / "b"))
    result = _ctx(settings, "backup", *dest, CTX_BACKUP_RECIPIENTS=f"{public},age1notakey")
    assert result.returncode == 2 and "'age1notakey' is not an age public key" in result.stderr, result.stderr
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example"
    result = _ctx(settings, "backup", *dest, CTX_BACKUP_RECIPIENTS=ssh)
    assert result.returncode == 2 and "SSH keys (ssh-ed25519) are not supported" in " ".join(result.stderr.split())
    result = _ctx(settings, "backup", *dest, CTX_BACKUP_RECIPIENTS=_secret(key))
    assert result.returncode == 2 and "secret key" in result.stderr
    assert _secret(key) not in result.stderr + result.stdout and _secret(key)[20:40] not in result.stderr
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# ops team\n{public}\n{_secret(key)}\n")
    result = _ctx(settings, "backup", *dest, CTX_BACKUP_RECIPIENTS=str(recipients))
    assert result.returncode == 2 and "line 3" in result.stderr and _secret(key) not in result.stderr
    assert not (tmp_path / "b").exists() or bk.list_backups(tmp_path / "b") == []

    recipients.write_text(f"# ops team\n{public}\n")
    made = _ctx(settings, "backup", *dest, CTX_BACKUP_RECIPIENTS=str(recipients), CTX_BACKUP_IDENTITY=str(key))
    assert made.returncode == 0, made.stderr
    assert "identity (CTX_BACKUP_IDENTITY) is kept on the machine that takes the backups" in made.stderr
    assert _secret(key) not in made.stderr + made.stdout
    made = _ctx(settings, "backup", *dest, "--json", CTX_BACKUP_RECIPIENTS=str(recipients))
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["name"]
    public_only = tmp_path / "public.txt"
    public_only.write_text(public + "\n")
    for identity, words in ((public_only, "is a public key"), (tmp_path / "missing.txt", "Cannot read the identity"),
                            (recipients, "is a public key")):
        result = run_ctx(settings, "backup", "verify", name, *dest, "--identity", str(identity))
        assert result.returncode == 2 and words in result.stderr, (identity, result.stderr)
    result = _ctx(settings, "backup", "verify", name, *dest, CTX_BACKUP_IDENTITY=_secret(key))
    assert result.returncode == 2 and "holds a key, not the path" in result.stderr
    assert _secret(key) not in result.stderr + result.stdout
    assert not (Path(json.loads(made.stdout)["path"]) / "verified.json").exists()  # a wrong key fails no backup


def test_an_upper_case_recipient_is_the_same_key(stack, tmp_path):
    """age1... keys are Bech32, valid in upper case too: a backup encrypted to one opens with its identity, and
    the key given in both cases is one recipient."""
    settings = stack
    key, public = _key(tmp_path)
    dest = ("--dest", str(tmp_path / "b"))
    made = _ctx(settings, "backup", "--portable", *dest, "--json", CTX_BACKUP_RECIPIENTS=f"{public.upper()} {public}")
    assert made.returncode == 0, made.stderr
    manifest = json.loads((Path(json.loads(made.stdout)["path"]) / "manifest.json").read_text())
    assert manifest["encryption"]["recipients"] == [public]
    name = json.loads(made.stdout)["name"]
    result = run_ctx(settings, "backup", "verify", name, *dest, "--identity", str(key))
    assert result.returncode == 0, result.stderr


def _age_keygen(folder: Path) -> tuple[Path, str]:
    path = folder / "age-key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return path, public


@pytest.fixture(scope="module")
def age_tool() -> str:
    path = shutil.which("age")
    if path is None or shutil.which("age-keygen") is None:
        message = "age missing (Debian package `age`; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_the_age_tool_decrypts_every_file(stack, tmp_path, age_tool):
    """The format is standard: a key made by age-keygen, files written by ctx, decrypted by `age` alone."""
    settings = stack
    key, public = _age_keygen(tmp_path)
    made = _encrypted_backup(settings, tmp_path / "b", public, "enc-age")
    try:
        dump = tmp_path / "x.dump"
        with open(dump, "wb") as out:
            subprocess.run([age_tool, "-d", "-i", str(key), str(made.path / "postgres.dump.age")], stdout=out, check=True)
        assert bk.file_sha256(dump) == made.manifest["files"]["postgres.dump.age"]["clear_sha256"]
        pg_restore = str(embedded_pg_bin() / "pg_restore")  # the major version that wrote the dump
        listing = subprocess.run([pg_restore, "--list", str(dump)], capture_output=True, text=True)
        assert listing.returncode == 0, listing.stderr
        assert "TABLE DATA public messages" in listing.stdout
        for name, meta in made.manifest["chroma"]["collections"].items():
            clear = subprocess.run([age_tool, "-d", "-i", str(key), str(made.path / (meta["file"] + ".age"))],
                                   capture_output=True, check=True).stdout
            lines = gzip.decompress(clear).decode().splitlines()
            assert len(lines) == meta["vectors"]
            assert all(len(json.loads(line)["embedding_f32le_b64"]) > 0 for line in lines)
        assert made.manifest["chroma"]["collections"]["messages_embeddings"]["vectors"] > 0
        snapshot = made.manifest["chroma"]["snapshot"]  # Chroma's folder as files (local runtime, store idle)
        clear = subprocess.run([age_tool, "-d", "-i", str(key), str(made.path / (snapshot["file"] + ".age"))],
                               capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(clear))) as tar:
            assert any(name.endswith("chroma.sqlite3") for name in tar.getnames()), tar.getnames()
        wrong = subprocess.run([age_tool, "-d", "-i", str(_key(tmp_path, "w.txt")[0]),
                                str(made.path / "postgres.dump.age")], capture_output=True)
        assert wrong.returncode != 0 and wrong.stdout == b""
    finally:
        _drop_seed(settings, "enc-age")


def _paused(settings, point: str, *args: str, **env: str) -> subprocess.Popen:
    """`ctx ARGS` as a process held at the named point (CTX_PAUSE_AT); returns once it is there."""

    proc = subprocess.Popen([sys.executable, "-m", "coditect_ctx", *args],
                            env={**os.environ, **settings_env(settings), **env, "CTX_PAUSE_AT": point},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if line.startswith(f"point: {point}") or (not line and proc.poll() is not None):
            break
    assert f"point: {point}" in seen, (proc.poll(), seen)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_no_clear_copy_on_disk_and_staging_removed_after_a_kill(stack, tmp_path):
    settings = stack
    key, public = _key(tmp_path)
    root = tmp_path / "b"
    with Store(settings) as store:
        seed(store, n=6, prefix="enc-kill")
    try:
        # mid-backup (PostgreSQL dumped, vectors not exported): only the encrypted dump and Chroma snapshot are on disk
        proc = _paused(settings, "backup-dump", "backup", "--dest", str(root), CTX_BACKUP_RECIPIENTS=public)
        try:
            partial = next(root.glob(".*.partial"))
            entries = sorted(str(p.relative_to(partial)) for p in partial.rglob("*"))
            assert entries == ["chroma", "chroma-snapshot.tar.zst.age", "postgres.dump.age"], entries  # no clear copy, no pipe
            assert not list(settings.home.glob("chroma.*"))  # the snapshot's plain copy is gone too
            assert (partial / "postgres.dump.age").read_bytes().startswith(b"age-encryption.org/v1\n")
        finally:
            _kill(proc)
        assert not any(b.complete for b in bk.list_backups(root))

        # a test restore killed while it loads Chroma leaves clear files in $CTX_HOME/staging (0700) ...
        made = bk.create_backup(replace(settings, backup_recipients=public), dest=root)
        staging = settings.home / bk.STAGING_DIR
        proc = _paused(settings, "restore-load", "backup", "verify", str(made.path), "--identity", str(key))
        try:
            left = list(staging.iterdir())
            assert len(left) == 1 and stat.S_IMODE(left[0].stat().st_mode) == 0o700
            assert stat.S_IMODE(staging.stat().st_mode) == 0o700
            assert (left[0] / "postgres.dump").read_bytes().startswith(b"PGDMP")
        finally:
            _kill(proc)
        assert left[0].exists()
        # ... which the next restore or verify removes (their process is gone)
        again = run_ctx(settings, "backup", "verify", str(made.path), "--identity", str(key))
        assert again.returncode == 0, again.stderr
        _no_clear_files(settings)
    finally:
        with Store(settings) as store:
            for name in _scratch_left(store):
                if name.startswith("ctx_verify_"):
                    with store.pg(autocommit=True) as conn:
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                else:
                    store.chroma.delete_collection(name)
        _drop_seed(settings, "enc-kill")
