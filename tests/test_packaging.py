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
