# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""``python -m airflow_s3sftp.verify`` and the coreutils recipe of docs/manifest.md, run as a partner would."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_s3sftp.core.manifest import RangeHasher, render_manifest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "manifest.md"
RANGE = 4096
SIZE = 7 * RANGE + 1000  # seven full ranges and a short eighth


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pair(directory: Path, data: bytes, range_size: int = RANGE) -> tuple[Path, Path]:
    """Write ``report.csv`` and its manifest; return both paths."""
    hasher = RangeHasher(range_size)
    hasher.update(data)
    path = directory / "report.csv"
    path.write_bytes(data)
    manifest = directory / "report.csv.manifest"
    manifest.write_text(render_manifest(hasher.manifest(path.name)), encoding="utf-8")
    return path, manifest


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x80
    path.write_bytes(bytes(data))


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def verify(file: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "airflow_s3sftp.verify", file, manifest)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


def test_verify_says_ok_for_a_good_file(tmp_path: Path, data: bytes) -> None:
    result = verify(*write_pair(tmp_path, data))
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


@pytest.mark.parametrize("offset", [0, RANGE - 1, 3 * RANGE + 77, SIZE - 1])
def test_verify_names_the_one_range_of_a_flipped_byte(tmp_path: Path, data: bytes, offset: int) -> None:
    path, manifest = write_pair(tmp_path, data)
    flip(path, offset)
    index = offset // RANGE
    start, stop = index * RANGE, min((index + 1) * RANGE, SIZE)
    result = verify(path, manifest)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"range {index} bytes {start}-{stop - 1}: expected {sha(data[start:stop])}, "
        f"actual {sha(path.read_bytes()[start:stop])} (digest differs)",
        "BAD: 1 of 8 ranges differ",
    ]


def test_verify_names_the_ranges_of_a_truncated_file(tmp_path: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    path.write_bytes(data[: 5 * RANGE + 10])
    result = verify(path, manifest)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(" bytes ")[0] for line in lines[:-1]] == ["range 5", "range 6", "range 7"]
    assert lines[0].endswith(f"(short: the file ends at byte {5 * RANGE + 10})")
    assert lines[1].endswith(f"actual - (missing: the file ends at byte {5 * RANGE + 10})")
    assert lines[-1] == "BAD: 3 of 8 ranges differ"


def test_verify_reports_extra_bytes(tmp_path: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    path.write_bytes(data + b"tail")
    result = verify(path, manifest)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"range 8 bytes {SIZE}-{SIZE + 3}: expected -, actual {sha(b'tail')} "
        f"(extra: the file is {SIZE + 4} bytes, the manifest says {SIZE})",
        "BAD: 0 of 8 ranges differ; extra bytes after the end",
    ]


def test_verify_empty_file(tmp_path: Path) -> None:
    path, manifest = write_pair(tmp_path, b"")
    assert manifest.read_text().count("\n") == 5
    assert verify(path, manifest).stdout == "OK\n"
    path.write_bytes(b"x")
    assert verify(path, manifest).returncode == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "Manifest is empty"),
        (b"# airflow-s3sftp manifest 1\n# name: r\n# size: 1\n# range_size: 0\n# sha256: x\n", "line 4"),
        (b"\xff\xfe", "codec can't decode"),
        (b"not a manifest\n", "line 1 is 'not a manifest'"),
    ],
)
def test_verify_exits_2_on_a_malformed_manifest(
    tmp_path: Path, data: bytes, content: bytes, message: str
) -> None:
    path, manifest = write_pair(tmp_path, data)
    manifest.write_bytes(content)
    result = verify(path, manifest)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: manifest {manifest}: ")
    assert re.search(message, result.stderr), result.stderr


def test_verify_exits_2_on_usage_and_missing_files(tmp_path: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    usage = run(sys.executable, "-m", "airflow_s3sftp.verify", path)
    assert usage.returncode == 2
    assert "usage: python -m airflow_s3sftp.verify" in usage.stderr
    missing = verify(tmp_path / "nope.csv", manifest)
    assert missing.returncode == 2
    assert f"error: file {tmp_path / 'nope.csv'}: " in missing.stderr
    assert "No such file" in missing.stderr
    assert verify(path, tmp_path / "nope.manifest").returncode == 2


def test_verify_imports_no_airflow(tmp_path: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['verify', {str(path)!r}, {str(manifest)!r}]\n"
        "try:\n"
        "    runpy.run_module('airflow_s3sftp.verify', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith(('airflow.', 'paramiko', 'boto')))\n"
        "print(code, loaded)\n"
    )
    result = run(sys.executable, "-c", probe)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr


def test_manifest_module_runs_when_copied_alone(tmp_path: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(ROOT / "airflow_s3sftp" / "core" / "manifest.py", alone / "manifest.py")
    # -I: isolated mode, no site-packages and no cwd on sys.path, so the package cannot be found.
    good = run(sys.executable, "-I", alone / "manifest.py", path, manifest, cwd=alone)
    assert (good.returncode, good.stdout) == (0, "OK\n"), good.stderr
    flip(path, 2 * RANGE)
    bad = run(sys.executable, "-I", alone / "manifest.py", path, manifest, cwd=alone)
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"range 2 bytes {2 * RANGE}-{3 * RANGE - 1}: ")


def recipe() -> str:
    """Return the shell recipe of docs/manifest.md: the sh block after its marker comment."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- manifest-recipe:.*?-->\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert match, "docs/manifest.md lost its marked coreutils recipe"
    return match[1]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "check-manifest.sh"
    path.write_text(recipe(), encoding="utf-8")
    return path


def sh(script: Path, file: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    return run("/bin/sh", script, file, manifest, cwd=file.parent)


def test_recipe_says_ok_for_a_good_file(tmp_path: Path, script: Path, data: bytes) -> None:
    result = sh(script, *write_pair(tmp_path, data))
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


@pytest.mark.parametrize("offset", [0, 4 * RANGE + 1, SIZE - 1])
def test_recipe_names_the_range_of_a_flipped_byte(
    tmp_path: Path, script: Path, data: bytes, offset: int
) -> None:
    path, manifest = write_pair(tmp_path, data)
    flip(path, offset)
    index = offset // RANGE
    start, stop = index * RANGE, min((index + 1) * RANGE, SIZE)
    result = sh(script, path, manifest)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        f"bad range {index}: bytes {start}-{stop - 1}: expected {sha(data[start:stop])}, "
        f"actual {sha(path.read_bytes()[start:stop])}"
    ]
    assert result.stderr == ""


def test_recipe_reports_a_truncated_file(tmp_path: Path, script: Path, data: bytes) -> None:
    path, manifest = write_pair(tmp_path, data)
    path.write_bytes(data[: 6 * RANGE])
    result = sh(script, path, manifest)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"size: the file is {6 * RANGE} bytes, the manifest says {SIZE}"
    assert [line.split(":")[0] for line in lines[1:]] == ["bad range 6", "bad range 7"]


def test_recipe_on_an_empty_file(tmp_path: Path, script: Path) -> None:
    result = sh(script, *write_pair(tmp_path, b""))
    assert (result.returncode, result.stdout) == (0, "OK\n")


def test_recipe_with_the_default_range_size(tmp_path: Path, script: Path) -> None:
    """8 MiB ranges, as the operator writes them: dd reads whole ranges of a regular file."""
    big = os.urandom(2 * 8 * 1024 * 1024 + 12345)
    path, manifest = write_pair(tmp_path, big, range_size=8 * 1024 * 1024)
    flip(path, 8 * 1024 * 1024 + 5)
    result = sh(script, path, manifest)
    assert result.returncode == 1
    assert result.stdout.startswith(f"bad range 1: bytes {8 * 1024 * 1024}-{16 * 1024 * 1024 - 1}: ")
    assert len(result.stdout.splitlines()) == 1
