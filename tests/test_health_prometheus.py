"""`ctx health --format prometheus` passes Prometheus' own linter (`promtool check metrics`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from coditect_ctx.health import OK, PROMETHEUS_METRICS, Check, HealthReport, render_prometheus

from .conftest import settings_env


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool missing (Debian package `prometheus`; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _lint(promtool: str, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def test_live_health_output_passes_promtool(stack, promtool):
    env = {**os.environ, **settings_env(stack)}
    proc = subprocess.run([sys.executable, "-m", "coditect_ctx", "health", "--format", "prometheus"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lint = _lint(promtool, proc.stdout)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    assert "ctx_disk_used_ratio " in proc.stdout and "ctx_disk_used_pct" not in proc.stdout


def test_every_metric_has_help_type_and_base_units(promtool):
    """Every perfdata label ctx knows (backup age too, which needs a backup to appear live), converted to base units."""
    perf = {"disk_used_pct": 93.5, "backup_age_hours": 1.5}
    checks = [Check(label, OK, "", {label: (perf.get(label, 1), "", None, None, 0, None)}) for label in PROMETHEUS_METRICS]
    text = render_prometheus(HealthReport(checks, 0.25, "local"))
    lint = _lint(promtool, text)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples["ctx_disk_used_ratio"] == "0.935"
    assert samples["ctx_backup_age_seconds"] == "5400"
    for name, _help, _factor in PROMETHEUS_METRICS.values():
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in text
