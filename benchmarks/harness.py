# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""What every benchmark scenario shares: methods, the servers and objects, one measured run of a method.

The scenarios (:mod:`benchmarks.runner`, :mod:`benchmarks.scenarios`, :mod:`benchmarks.write_paths`)
import this module; it imports none of them, and the child side (:mod:`benchmarks.methods`) imports
nothing of the parent side.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.methods import AWS_CONN_ID, RESULT_PREFIX, SFTP_CONN_ID
from testservers.processes import conn_env, start_moto, start_sshd

if TYPE_CHECKING:
    from collections.abc import Iterator

    from testservers.processes import MotoServer, SSHDServer

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BUCKET = "s3sftp-bench"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Method:
    """One way of moving the object: what runs (``kind``) and how it is configured (``variant``)."""

    name: str
    kind: str
    variant: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def parse_size(text: str) -> int:
    """Return bytes for ``"256MiB"``, ``"1GiB"``, ``"100MB"`` or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256MiB, 1GiB, 100MB)")
    number, unit = float(match.group(1)), match.group(2).upper().rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    scale.update({"KI": KiB, "MI": MiB, "GI": GiB, "TI": 1024**4})
    return int(number * scale[unit])


def human(size: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{int(size)} B"


@dataclass
class Bench:
    """The servers, objects and paths shared by every run."""

    sshd: SSHDServer
    moto: MotoServer
    workdir: Path
    remote_dir: Path
    known_hosts: Path
    airflow_home: Path
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rclone: str | None = shutil.which("rclone")

    def known_hosts_for(self, port: int) -> Path:
        """Return a known_hosts file naming the sshd's host key at ``port`` (sshd or a proxy to it)."""
        path = self.workdir / f"known_hosts-{port}"
        if not path.exists():
            path.write_text(f"[127.0.0.1]:{port} {self.sshd.host_key}\n")
        return path

    def sftp_job(self) -> dict[str, Any]:
        return {
            "port": self.sshd.port,
            "user": self.sshd.user,
            "key_file": str(self.sshd.key_file),
            "host_key": self.sshd.host_key,
            "known_hosts": str(self.known_hosts),
        }


@contextlib.contextmanager
def bench_environment(args: argparse.Namespace) -> Iterator[Bench]:
    workdir = Path(tempfile.mkdtemp(prefix="s3sftp-bench-"))
    workdir.chmod(0o755)
    sshd = start_sshd()
    try:
        moto = start_moto()
        try:
            remote_dir = sshd.root / "bench"
            remote_dir.mkdir()
            owner = sshd.root.stat()
            os.chown(remote_dir, owner.st_uid, owner.st_gid)
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
            airflow_home = workdir / "airflow-home"
            airflow_home.mkdir()
            yield Bench(sshd, moto, workdir, remote_dir, known_hosts, airflow_home)
        finally:
            moto.stop()
    finally:
        sshd.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def create_object(bench: Bench, key: str, size: int, source_checksum: str) -> dict[str, Any]:
    """Write ``size`` random bytes to a local file, upload it to moto and return its description."""
    if key in bench.objects:
        return bench.objects[key]
    local = bench.workdir / f"{key}.bin"
    digest = hashlib.sha256()
    with local.open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(16 * MiB, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    local.chmod(0o644)
    client = bench.moto.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    extra = {"ChecksumAlgorithm": "SHA256"} if source_checksum == "sha256" else {}
    started = time.monotonic()
    with local.open("rb") as body:
        client.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
    head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    if int(head["ContentLength"]) != size:
        raise RuntimeError(f"moto stored {head['ContentLength']} bytes for s3://{BUCKET}/{key}, not {size}")
    if (
        source_checksum == "sha256"
        and head.get("ChecksumSHA256") != base64.b64encode(digest.digest()).decode()
    ):
        raise RuntimeError(f"moto's ChecksumSHA256 of s3://{BUCKET}/{key} does not match the bytes")
    print(f"created s3://{BUCKET}/{key}: {human(size)} in {time.monotonic() - started:.1f}s", flush=True)
    bench.objects[key] = {"key": key, "size": size, "sha256": digest.hexdigest(), "local": str(local)}
    return bench.objects[key]


def _disk_used(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _own_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


def _sample_tree(root: psutil.Process, seen: dict[int, float]) -> None:
    """Record the CPU time of every process below ``root`` (the last sample of each counts).

    sshd's own ``children_*`` times miss sessions whose processes it did not wait for, so the
    server side is measured by sampling its process tree while the method runs.
    """
    with contextlib.suppress(psutil.Error):
        for process in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seen[process.pid] = float(times.user + times.system)


def _wait_for_sessions_to_end(sshd: psutil.Process, timeout: float = 15.0) -> None:
    # sshd adds a session's CPU to its children's total only once it has reaped it.
    deadline = time.monotonic() + timeout
    while sshd.children() and time.monotonic() < deadline:
        time.sleep(0.05)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def launch(
    bench: Bench,
    method: Method,
    job: dict[str, Any],
    *,
    package_root: Path,
    timeout: float,
    tag: str,
    sftp_port: int | None = None,
) -> dict[str, Any]:
    """Run ``python -m benchmarks.methods`` for ``job`` in a fresh subprocess and measure it.

    With ``S3SFTP_BENCH_PROFILE=<dir>`` in the environment, the child runs under ``py-spy record``
    (all threads, raw collapsed stacks to ``<dir>/<tag>.txt``; see ``benchmarks/flame.py``);
    ``S3SFTP_BENCH_PROFILE_FLAGS`` adds py-spy flags (``--gil``: only the thread holding the GIL).

    Returns the row: exit code, peak temp disk under the child's ``TMPDIR``, CPU of the sshd
    sessions and of moto during the run, and what the child reported (``BENCH-RESULT``).
    """
    tmpdir = bench.workdir / f"tmp-{tag}"
    tmpdir.mkdir()
    port = sftp_port or bench.sshd.port
    job = {**job, "kind": method.kind, "name": method.name, "variant": method.variant}
    job["sftp"] = {**bench.sftp_job(), "port": port, "known_hosts": str(bench.known_hosts_for(port))}
    job_file = bench.workdir / f"{tag}.job.json"  # a file: thousands of keys overflow an env var
    job_file.write_text(json.dumps(job))
    aws = bench.moto.connection()
    aws["extra"] = {**aws["extra"], "endpoint_url": job["s3_endpoint"]}  # type: ignore[dict-item]
    sftp = bench.sshd.connection(**method.variant.get("sftp_extra", {}))
    sftp["port"] = port
    env = dict(os.environ)
    env.update(
        [conn_env(AWS_CONN_ID, aws), conn_env(SFTP_CONN_ID, sftp)],
        S3SFTP_BENCH="@" + str(job_file),
        TMPDIR=str(tmpdir),
        AIRFLOW_HOME=str(bench.airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join(
            dict.fromkeys(filter(None, [str(package_root), str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        ),
    )
    sshd_proc, moto_proc = psutil.Process(bench.sshd.process.pid), psutil.Process(bench.moto.process.pid)
    _wait_for_sessions_to_end(sshd_proc)
    moto_cpu = _own_cpu(moto_proc)
    sshd_seen: dict[int, float] = {}
    log = bench.workdir / f"{tag}.log"
    load_before = os.getloadavg()[0]  # other work on the machine skews the numbers: record it
    peak_temp = 0
    started = time.monotonic()
    with log.open("wb") as err_out:
        command = [sys.executable, "-m", "benchmarks.methods"]
        if profile_dir := os.environ.get("S3SFTP_BENCH_PROFILE"):
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            out = Path(profile_dir) / f"{tag}.txt"
            command = [
                spy,
                "record",
                "--nonblocking",
                "--threads",
                *os.environ.get("S3SFTP_BENCH_PROFILE_FLAGS", "").split(),  # e.g. --gil
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--",
                *command,
            ]
        child = subprocess.Popen(
            command,
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=err_out,
        )
        stdout_chunks: list[bytes] = []
        reader = _drain_in_background(child, stdout_chunks)
        status, rusage = 0, None
        while True:
            pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
            peak_temp = max(peak_temp, _disk_used(tmpdir))
            _sample_tree(sshd_proc, sshd_seen)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > timeout:
                child.kill()
                _pid, status, rusage = os.wait4(child.pid, 0)
                child.returncode = -9
                break
            time.sleep(0.02)
        reader.join()
    _wait_for_sessions_to_end(sshd_proc)
    row: dict[str, Any] = {
        "method": method.name,
        "exit_code": child.returncode,
        "peak_temp_bytes": peak_temp,
        "sshd_cpu_s": round(sum(sshd_seen.values()), 3),
        "moto_cpu_s": round(_own_cpu(moto_proc) - moto_cpu, 3),
        "process_tree_maxrss_mib": round(rusage.ru_maxrss / 1024, 1) if rusage else None,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    for line in b"".join(stdout_chunks).decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            row.update(json.loads(line[len(RESULT_PREFIX) :]))
    if child.returncode != 0 or "seconds" not in row:
        row["error"] = log.read_text(errors="replace")[-2000:]
    else:
        log.unlink()
    shutil.rmtree(tmpdir, ignore_errors=True)
    job_file.unlink()
    return row


def run_one(
    bench: Bench,
    method: Method,
    obj: dict[str, Any],
    *,
    round_no: int,
    package_root: Path,
    s3_endpoint: str,
    timeout: float,
    label: str,
    sftp_port: int | None = None,
) -> dict[str, Any]:
    """Run ``method`` once on one object in a fresh subprocess; measure it and check what landed."""
    remote = bench.remote_dir / f"{method.name}-{label}-r{round_no}.bin"
    job = {
        "bucket": BUCKET,
        "key": obj["key"],
        "size": obj["size"],
        "local_source": obj["local"],
        "remote_path": str(remote),
        "s3_endpoint": s3_endpoint,
    }
    row = launch(
        bench,
        method,
        job,
        package_root=package_root,
        timeout=timeout,
        tag=f"{method.name}-{label}-r{round_no}",
        sftp_port=sftp_port,
    )
    row.update(label=label, round=round_no, size=obj["size"])
    if method.kind == "imports":
        print(f"  {label:<9} r{round_no} {method.name:<28} rss {row.get('peak_rss_mib')} MiB", flush=True)
        return row
    ok = "error" not in row and remote.exists()
    row["sha256_verified"] = (
        ok and remote.stat().st_size == obj["size"] and _sha256_of(remote) == obj["sha256"]
    )
    row["leftovers"] = sorted(p.name for p in bench.remote_dir.iterdir() if p.name.startswith("."))
    if ok:
        row["mb_per_s"] = round(obj["size"] / row["seconds"] / 1e6, 2)
    elif "error" not in row:
        row["error"] = f"{remote} was not written"
    with contextlib.suppress(FileNotFoundError):
        remote.unlink()
    for leftover in row["leftovers"]:
        with contextlib.suppress(OSError):
            (bench.remote_dir / leftover).unlink()
    print(_progress_line(row), flush=True)
    return row


def _drain_in_background(child: subprocess.Popen[bytes], sink: list[bytes]) -> Any:
    import threading

    def drain() -> None:
        assert child.stdout is not None
        sink.append(child.stdout.read())

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread


def _progress_line(row: dict[str, Any]) -> str:
    if "mb_per_s" not in row:
        return f"  {row['label']:<9} r{row['round']} {row['method']:<28} FAILED (exit {row['exit_code']})"
    return (
        f"  {row['label']:<9} r{row['round']} {row['method']:<28} {row['mb_per_s']:8.1f} MB/s  "
        f"{row['seconds']:7.2f}s  rss {row['peak_rss_mib']:6.1f} MiB  "
        f"sha256 {'ok' if row['sha256_verified'] else 'WRONG'}"
    )
