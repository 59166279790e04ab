# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Smoke test of ``python -m benchmarks --quick``: every method runs and lands the right bytes (no speed asserts)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.runner import MAIN_METHODS, THROTTLED_METHODS

REPO_ROOT = Path(__file__).resolve().parents[2]


# Benchmarks live outside the default run (`pytest -m benchmark`, `make bench-smoke`).
pytestmark = pytest.mark.benchmark


@pytest.mark.timeout(420)
def test_quick_benchmark_runs_every_method_and_verifies_bytes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "benchmark-8MiB.json").read_text())

    rows = {row["method"]: row for row in result["summary"]}
    assert set(rows) == {method.name for method in MAIN_METHODS}
    for name, row in rows.items():
        if name == "rclone" and not shutil.which("rclone"):
            assert row["status"] == "not installed"
            continue
        if name == "rclone" and "rclone" in result["skipped"]:
            # An optional comparison tool that does not work here is reported, never a failure.
            assert result["skipped"]["rclone"], result["skipped"]
            continue
        assert row["status"] == "ok", row
        assert row["mb_per_s"] > 0, row
        assert row["sha256_verified"] is True, row
        assert row["peak_rss_mib"] > 0, row
    assert rows["stock-operator"]["peak_temp_bytes"] >= 8 * 1024 * 1024  # its temp file, measured
    assert rows["ours-default"]["peak_temp_bytes"] == 0
    assert rows["ours-default"]["verified"] == "size"
    assert rows["ours-verify-checksum"]["verified"] == "checksum"

    throttled = {row["method"]: row for row in result["throttled_summary"]}
    assert set(throttled) == set(THROTTLED_METHODS)
    for row in throttled.values():
        assert row["mb_per_s"] > 0, row
        assert row["sha256_verified"] is True, row
    assert "| ours-default |" in (tmp_path / "benchmark-8MiB.md").read_text()

    latency = {row["method"]: row for row in result["latency_summary"]}
    assert set(latency) == {"openssh-sftp", "ours-default"}
    assert all(row["sha256_verified"] is True for row in latency.values())

    many = {row["method"]: row for row in result["many_summary"]}
    expected = {"openssh-sftp", "ours", "stock-operator"} | (
        {"rclone"} if "rclone" not in result["skipped"] else set()
    )
    assert set(many) == expected
    for row in many.values():
        assert row["status"] == "ok" and row["all_verified"] is True and row["files_per_s"] > 0, row
    assert many["ours"]["ssh_handshakes"] <= 4  # sessions are reused across objects
    assert many["ours"]["round_trips_per_file"] > 0

    # The long-link scenario, tiny: SFTP through the delay proxy, every method side by side.
    long_link = {(row["data"], row["method"]): row for row in result["long_link_summary"]}
    rclone_ok = "rclone" not in result["skipped"]
    expected_long = {
        ("1x64KiB", "ours-one-64KiB"),
        *(("8MiB", name) for name in ("openssh-sftp", "ours", "ours-1-channel", "ours-4-channels")),
        *(("5x64KiB", name) for name in ("openssh-sftp", "ours", "ours-1-channel")),
    } | ({("8MiB", "rclone"), ("5x64KiB", "rclone")} if rclone_ok else set())
    assert set(long_link) == expected_long
    for row in long_link.values():
        assert row["status"] == "ok" and row["verified"] is True and row["seconds"] > 0, row
        assert row["delay_ms"] == 20 and row["ssh_connections"] >= 1, row  # counted at the proxy
    assert long_link["8MiB", "openssh-sftp"]["ssh_connections"] == 1
    assert long_link["8MiB", "ours-4-channels"]["copy_data_requests"] == 8  # 8 stripes joined on the server
    assert long_link["8MiB", "ours"]["copy_data_requests"] == 0  # below the auto threshold: one channel
    small = long_link["1x64KiB", "ours-one-64KiB"]
    assert small["trace"] and small["trace"][0].startswith("+")  # the first request waits for nothing
    assert small["sftp_round_trips_per_file"] == sum(name.startswith("+") for name in small["trace"])
    assert (
        "### Long link: SFTP through a proxy holding bytes 20 ms each way"
        in (tmp_path / "benchmark-8MiB.md").read_text()
    )
