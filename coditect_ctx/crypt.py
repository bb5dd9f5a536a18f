"""Client-side encryption of backup files in the age format (age-encryption.org/v1), through pyrage.

Who holds what: the host that takes backups holds only public keys (recipients, `age1...`, CTX_BACKUP_RECIPIENTS);
the secret key (the identity, `AGE-SECRET-KEY-1...`) stays off that machine and comes back only to restore or
test-restore (`--identity FILE`, CTX_BACKUP_IDENTITY). Every encrypted file is a plain age file `NAME.age`, so
`age -d -i key.txt postgres.dump.age > postgres.dump` opens it without ctx.

Writing, streamed and with no clear copy on disk: a producer (pg_dump through the runtime's run_pg_tool, which
writes to a path, or the gzip writer of the Chroma export) writes into a named pipe (mkfifo, 0600, inside the
0700 partial folder), and a thread reads the pipe through pyrage.encrypt_io into NAME.age, hashing the clear
bytes on the way. Memory stays flat whatever the size (the pipe's 64 KiB, age's 64 KiB chunks). A clear file
encrypted afterwards would be simpler, but it would sit on disk for as long as the dump takes, in a folder an
operator may sync off the machine, and cost the disk twice the space and writes: the pipe avoids all three.
When the encrypting side fails (disk full), it keeps reading and discarding until the producer ends, so a
producer never blocks on a pipe nobody reads; the error is raised when the file is closed.

Reading: `decrypt_file` streams NAME.age into a clear file (restore needs files: pg_restore reads one, the
docker runtime copies it into the container), returning the clear sha256 to check against the manifest.

Never printed: an identity. Errors name the identity file and a line number, never its text, and a secret key
given where a recipient belongs is refused without being echoed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError, DataError, UsageError

FORMAT = "age"
SUFFIX = ".age"
SECRET_PREFIX = "AGE-SECRET-KEY-"
RECIPIENTS_SETTING = "CTX_BACKUP_RECIPIENTS"
IDENTITY_SETTING = "CTX_BACKUP_IDENTITY"
RECIPIENTS_HINT = ("Give age public keys (age1..., as `age-keygen` prints them, or `age-keygen -y KEYFILE`), "
                   "separated by commas or spaces, or the path of a recipients file (one key per line, # comments).")
IDENTITY_HINT = ("Give the age identity file (AGE-SECRET-KEY-1... lines, made by `age-keygen -o key.txt`) with "
                 "--identity FILE or CTX_BACKUP_IDENTITY; keep it off the machine that takes the backups.")
BLOCK = 1 << 20

Warn = Callable[[str], None]


def _shown(token: str) -> str:
    """A recipient the operator gave, fit to echo: printable, at most 90 characters."""
    text = "".join(ch if ch.isprintable() else "?" for ch in token)
    return text if len(text) <= 90 else text[:87] + "..."


def _looks_secret(text: str) -> bool:
    return SECRET_PREFIX in text.upper()


# -- recipients (public keys: on the host that takes backups) ----------------------------------------------
def parse_recipients(text: str, setting: str = RECIPIENTS_SETTING) -> list[str]:
    """The age public keys `text` names: keys separated by commas or whitespace, or paths of recipients files
    (one key per line, `#` comments), or both. ConfigError (exit 2) naming the first bad one; a secret key is
    refused without being shown."""
    from pyrage import RecipientError, x25519

    text = (text or "").strip()
    if not text:
        return []
    tokens = [text] if Path(text).expanduser().is_file() else [t for t in re.split(r"[,\s]+", text) if t]
    keys: list[tuple[str, str]] = []  # (key, where it came from)
    for token in tokens:
        if _looks_secret(token):
            raise ConfigError(f"{setting} holds a secret key (an age identity, {SECRET_PREFIX}...): only public "
                              "keys belong on the machine that takes backups",
                              hint="Put its public key there instead (`age-keygen -y key.txt` prints it), and keep the "
                                   "identity file off this machine.")
        if token.startswith(("ssh-", "sk-ssh-", "ecdsa-sha2-")):  # `$(cat id_ed25519.pub)`, split on its spaces
            raise ConfigError(f"{setting}: SSH keys ({token}) are not supported as recipients, only age public keys",
                              hint=RECIPIENTS_HINT)
        path = Path(token).expanduser()
        if not token.lower().startswith("age1") and path.is_file():
            keys += _recipients_file(path, setting)
        else:
            keys.append((token, setting))
    found: list[str] = []
    for key, where in keys:
        try:
            key = str(x25519.Recipient.from_str(key))  # canonical: Bech32 is valid in upper case too
        except (RecipientError, ValueError) as exc:
            extra = "" if key.lower().startswith("age1") else " (nor a recipients file)"
            raise ConfigError(f"{where}: {_shown(key)!r} is not an age public key{extra}: {exc}",
                              hint=RECIPIENTS_HINT) from None
        if key not in found:
            found.append(key)
    return found


def _recipients_file(path: Path, setting: str) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{setting}: cannot read recipients file {path}: {getattr(exc, 'strerror', None) or exc}",
                          hint=RECIPIENTS_HINT) from None
    keys = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if _looks_secret(line):
            raise ConfigError(f"{setting}: line {number} of {path} is a secret key (an age identity): only public "
                              "keys belong on the machine that takes backups",
                              hint="Replace it by its public key (`age-keygen -y key.txt`), and keep the identity "
                                   "file off this machine.")
        keys.append((line, f"{setting} ({path}, line {number})"))
    if not keys:
        raise ConfigError(f"{setting}: recipients file {path} holds no key", hint=RECIPIENTS_HINT)
    return keys


# -- identities (secret keys: brought to restore, never kept with the backups) -----------------------------
def load_identities(path_text: str, warn: Warn, setting: str = IDENTITY_SETTING) -> list:
    """The age identities in the file at `path_text` (pyrage x25519.Identity objects). UsageError (exit 2) when
    there is no such file or it holds no identity; a file other users may read is used with a warning."""
    from pyrage import IdentityError, x25519

    if _looks_secret(path_text):
        raise UsageError(f"{setting} (--identity) holds a key, not the path of an identity file",
                         hint="Save the identity in a file of mode 0600 (or on removable media) and give its path.")
    path = Path(path_text).expanduser()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"Cannot read the identity file {path}: {exc.strerror or exc}", hint=IDENTITY_HINT) from None
    if mode & 0o077:
        warn(f"warning: the identity file {path} can be read by other users (mode {mode & 0o777:o}); "
             f"`chmod 600 {path}`, and keep it off the machine that takes the backups")
    if data.startswith(b"age-encryption.org/"):
        raise UsageError(f"The identity file {path} is itself encrypted (with a passphrase)",
                         hint="Decrypt it to a file only you can read (`age -d -o key.txt FILE`), use that, then remove it.")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not an age identity file (not text)", hint=IDENTITY_HINT) from None
    identities = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except (IdentityError, ValueError):
            what = "a public key (age1...), not a secret key" if line.lower().startswith("age1") else "not an age identity"
            raise UsageError(f"line {number} of the identity file {path} is {what}", hint=IDENTITY_HINT) from None
    if not identities:
        raise UsageError(f"The identity file {path} holds no identity", hint=IDENTITY_HINT)
    return identities


def public_keys(identities: list) -> list[str]:
    """The recipients (age1...) the identities open."""
    return [str(i.to_public()) for i in identities]


# -- streaming ---------------------------------------------------------------------------------------------
class _Hashing:
    """A reader or writer that passes bytes through and keeps their sha256 and count."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.digest.update(data)
        self.count += len(data)
        return data

    def write(self, data) -> int:
        self.digest.update(data)
        self.count += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


class Encrypted:
    """What `encrypting` wrote: the clear content's sha256 and size (the encrypted file's are read from disk)."""

    clear_sha256: str = ""
    clear_bytes: int = 0


@contextmanager
def encrypting(target: Path, recipients: list[str]) -> Iterator[tuple[Path, Encrypted]]:
    """Yield (a path to write clear bytes to, the result); what is written there lands encrypted at `target`.

    The path is a named pipe: open it once, write, close it (a subprocess's stdout or a Python file). When the
    block ends the encrypted file is complete and fsynced, and the result holds the clear sha256 and size."""
    from pyrage import encrypt_io, x25519

    keys = [x25519.Recipient.from_str(k) for k in recipients]
    fifo = target.parent / f".{target.name}.fifo"
    os.mkfifo(fifo, 0o600)
    result = Encrypted()
    failure: list[BaseException] = []
    try:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader first, so the writers' opens never block
        keeper = os.open(fifo, os.O_WRONLY)  # EOF only when this block ends, however often writers open and close
        try:
            os.set_blocking(reader, True)
            out = open(target, "xb")
        except BaseException:
            os.close(reader)
            os.close(keeper)
            raise

        def pump() -> None:
            with os.fdopen(reader, "rb", buffering=0) as src, out:
                hashed = _Hashing(src)
                try:
                    encrypt_io(hashed, out, keys)
                    out.flush()
                    os.fsync(out.fileno())
                    result.clear_sha256, result.clear_bytes = hashed.digest.hexdigest(), hashed.count
                except BaseException as exc:  # raised by the block's end; drain so the writer never blocks
                    failure.append(exc)
                    while src.read(BLOCK):
                        pass

        thread = threading.Thread(target=pump, name=f"encrypt {target.name}", daemon=True)
        thread.start()
        try:
            yield fifo, result
        finally:
            os.close(keeper)
            thread.join()
    finally:
        fifo.unlink(missing_ok=True)
    if failure:
        exc = failure[0]
        raise OSError(getattr(exc, "errno", None) or 5, f"encrypting {target.name}: {exc}", str(target)) from exc


def decrypt_file(source: Path, target: Path, identities: list) -> tuple[str, int]:
    """Decrypt the age file `source` into `target` (created 0600), streaming; the clear sha256 and size.

    UsageError when no identity opens it (the backup is fine, the key is not its), DataError when the file is
    not a readable age file or its content fails authentication (damaged or altered). A failure removes `target`."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            hashed = _Hashing(dst)
            _decrypt_io(source, src, hashed, identities)
    except BaseException:
        target.unlink(missing_ok=True)  # no part of a clear file is left behind
        raise
    return hashed.digest.hexdigest(), hashed.count


def _decrypt_io(source: Path, src, dst, identities: list) -> None:
    """pyrage.decrypt_io with its failures as ctx errors."""
    from pyrage import DecryptError, decrypt_io

    damaged = "The backup is damaged (nothing was replaced); use another one (`ctx backup list`)."
    try:
        decrypt_io(src, dst, identities)
    except DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise UsageError(f"{source}: the identity given does not open it (no matching key)",
                             hint="Use the identity whose public key is among the backup's recipients "
                                  "(`age-keygen -y key.txt` prints a key's public key).") from None
        raise DataError(f"{source}: not a readable age file ({exc})", hint=damaged) from None
    except OSError as exc:
        if exc.filename is not None or exc.errno:  # our disk (full, gone), not the file's content
            raise
        raise DataError(f"{source}: decryption failed, the file was altered or damaged ({exc})", hint=damaged) from None
