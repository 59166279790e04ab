# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Smoke test of ``python -m benchmarks.inbound --quick``: every method runs and lands the right bytes (no speed asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.inbound import LATENCY_METHODS, MANY_METHODS, METHODS

REPO_ROOT = Path(__file__).resolve().parents[3]


# Benchmarks live outside the default run (`pytest -m benchmark`, `make bench-smoke`).
pytestmark = pytest.mark.benchmark


@pytest.mark.timeout(400)
def test_quick_inbound_benchmark_runs_every_method_and_verifies_bytes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.inbound", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "inbound-8MiB.json").read_text())
    rows = {(row["label"], row["method"]): row for row in result["summary"]}
    names = {method.name for method in METHODS if method.name != "rclone" or result["rclone"]}
    expected = {("loopback", name) for name in names}
    expected |= {("latency", name) for name in LATENCY_METHODS if name in names}
    expected |= {("many", name) for name in MANY_METHODS if name in names}
    assert set(rows) == expected
    for row in rows.values():
        assert row["status"] == "ok" and row["sha256_verified"] is True and row["mb_per_s"] > 0, row
        assert not row["open_uploads"], row
    assert rows[("loopback", "ours")]["peak_temp_bytes"] == 0
    assert rows[("loopback", "stock-temp-file")]["peak_temp_bytes"] >= 8 * 1024 * 1024  # measured
    assert "| loopback | ours |" in (tmp_path / "inbound-8MiB.md").read_text()
