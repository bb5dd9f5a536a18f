"""The wheel a newcomer's `pip install .` builds holds every module, every schema file and the samples."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from .conftest import REPO


def test_wheel_contents(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("coditect_ctx-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (REPO / "coditect_ctx").rglob("*.py"):
        assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel"
    for path in (REPO / "sql").glob("*.sql"):
        assert f"coditect_ctx/_sql/{path.name}" in names
    samples = [p for p in (REPO / "coditect_ctx" / "samples").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in samples:
        assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel"
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_finds_its_schema_and_samples(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("coditect_ctx-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import coditect_ctx, sys; assert coditect_ctx.__file__.startswith(sys.argv[1]), coditect_ctx.__file__\n"
            "from coditect_ctx.stores.postgres import load_migrations\n"
            "from coditect_ctx.samples import demo_path\n"
            "print(len(load_migrations()), (demo_path() / 'MEMORY-CONTEXT').is_dir())")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, samples = proc.stdout.split()
    assert int(count) == len(list((REPO / "sql").glob("*.sql"))) and samples == "True"
