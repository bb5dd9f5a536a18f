"""What age encryption of backups (CTX_BACKUP_RECIPIENTS) costs: the same store backed up and restored in clear
and encrypted, side by side in one run.

Run: .venv/bin/python bench/bench_backup_crypt.py [--records 20000] [--repeat 2] [--no-restore] [--keep]
The store is built as bench_backup.py builds its own (its helpers and bench_search's grow): the samples migrated
without embedding, then synthetic messages with random unit vectors up to --records. Timed, alternating clear and
encrypted, best of --repeat (bench_backup.py times each once, beside its baseline): `ctx backup`; decryption alone
of every file into a staging folder (what restore adds before its usual path); `ctx restore`. Each encrypted figure
is printed with its ratio to the clear one. Figures only, no pass/fail.

`with_encryption(settings, folder)` gives settings that encrypt to a new key and restore with it: what another
bench calls to add encrypted rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backup import fresh_store, mb, remove_store  # noqa: E402
from bench_search import grow, record_count  # noqa: E402

from coditect_ctx.backup import create_backup, decrypt_backup, identities_for, load_manifest, staging_folder  # noqa: E402
from coditect_ctx.config import Settings  # noqa: E402
from coditect_ctx.restore import restore_backup  # noqa: E402
from coditect_ctx.stores import Store  # noqa: E402
from coditect_ctx.stores.chroma import COLLECTIONS  # noqa: E402


def with_encryption(settings: Settings, folder: Path) -> Settings:
    """`settings` that encrypt backups to a new age key and decrypt them with it (identity file 0600 in `folder`)."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path = Path(folder) / "bench-age-identity.txt"
    path.touch(mode=0o600)
    path.write_text(f"{identity}\n")
    return replace(settings, backup_recipients=str(identity.to_public()), backup_identity=str(path))


def best(runs: list[float]) -> float:
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-restore", action="store_true", help="time backups and decryption only")
    ap.add_argument("--keep", action="store_true", help="leave the store and backups behind")
    args = ap.parse_args()
    clear = fresh_store("ctx-bench-crypt-")
    encrypted = with_encryption(clear, clear.home)
    print(f"store: {clear.home}")
    try:
        from coditect_ctx.migrate import run_migrate

        run_migrate(clear, [REPO / "coditect_ctx" / "samples" / "coditect-demo"], embed=False)
        grow(clear, args.records)
        with Store(clear) as store:
            with store.pg() as conn:
                records = record_count(conn)
            vectors = sum(store.chroma.count(n) for n in COLLECTIONS.values())
        print(f"{records} records, {vectors} vectors")

        times: dict[str, list[float]] = {k: [] for k in ("backup", "backup_enc", "decrypt", "restore", "restore_enc")}
        sizes: dict[str, int] = {}
        for _ in range(args.repeat):
            for key, settings in (("backup", clear), ("backup_enc", encrypted)):
                t = time.perf_counter()
                made = create_backup(settings)
                times[key].append(time.perf_counter() - t)
                sizes[key] = made.size_bytes
                latest = made
            manifest = load_manifest(latest.path)
            identities = identities_for(encrypted, latest.path, manifest)
            t = time.perf_counter()
            with staging_folder(encrypted) as staging:
                decrypt_backup(latest.path, manifest, staging, identities)
                times["decrypt"].append(time.perf_counter() - t)
        if not args.no_restore:
            clear_made = create_backup(clear)
            for _ in range(args.repeat):
                for key, settings, made in (("restore", clear, clear_made), ("restore_enc", encrypted, latest)):
                    t = time.perf_counter()
                    restore_backup(settings, made.path, yes=True)
                    times[key].append(time.perf_counter() - t)

        print()
        print(f"{'best of ' + str(args.repeat):36}{'seconds':>10}{'ratio':>8}{'size':>14}")
        rows = (("ctx backup, clear", "backup", "backup"), ("ctx backup, encrypted (age)", "backup_enc", "backup"),
                ("  decrypt every file alone", "decrypt", "restore"),
                ("ctx restore, clear", "restore", "restore"), ("ctx restore, encrypted", "restore_enc", "restore"))
        for label, key, base in rows:
            if not times[key]:
                continue
            ratio = best(times[key]) / best(times[base]) if times[base] else float("nan")
            size = mb(sizes[key]) if key in sizes else ""
            print(f"{label:36}{best(times[key]):10.2f}{ratio:8.3f}{size:>14}")
    finally:
        if not args.keep:
            remove_store(clear)


if __name__ == "__main__":
    main()
