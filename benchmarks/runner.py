# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Run every method against a real sshd and moto on loopback, in rounds, and report the numbers."""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.methods import AWS_CONN_ID, RESULT_PREFIX, SFTP_CONN_ID
from benchmarks.throttle import ThrottleProxy
from testservers.processes import conn_env, start_moto, start_sshd

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from testservers.processes import MotoServer, SSHDServer

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BUCKET = "s3sftp-bench"
REPO_ROOT = Path(__file__).resolve().parent.parent
_PARAMIKO_CIPHERS = (
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-cbc",
    "aes192-cbc",
    "aes256-cbc",
    "3des-cbc",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
)


@dataclass(frozen=True)
class Method:
    """One way of moving the object: what runs (``kind``) and how it is configured (``variant``)."""

    name: str
    kind: str
    variant: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _only_cipher(name: str) -> dict[str, Any]:
    return {"disabled_algorithms": {"ciphers": [c for c in _PARAMIKO_CIPHERS if c != name]}}


RANGED = {"parallel_parts": 4, "part_size": 16 * MiB}
MAIN_METHODS = (
    Method("openssh-sftp", "openssh-sftp", note="sftp -b put of a local copy: the write-side limit"),
    Method("stock-operator", "stock", note="amazon S3ToSFTPOperator: temp file, then put"),
    Method("paramiko-putfo", "putfo", note="sftp.putfo(get_object()['Body'])"),
    Method("rclone", "rclone", note="rclone copyto s3 -> sftp"),
    Method("ours-default", "ours", note="sha256 + size verify + atomic rename + fsync"),
    Method("ours-verify-checksum", "ours", {"op": {"verify": "checksum"}}, "re-reads the file"),
    Method("ours-strict-order", "ours", {"op": {"strict_order": True}}, "one write in flight"),
    Method("ours-ranged-4x16MiB", "ours", {"op": RANGED}, "RangedReader, 4 parts of 16 MiB"),
)
TUNING_METHODS = (
    Method("ours-no-fsync", "ours", {"op": {"fsync": False}}),
    Method(
        "ours-no-hash",
        "ours",
        {"op": {"checksum": None}, "patches": {"no_source_check": True}},
        "no checksum, no S3 check",
    ),
    Method("ours-chunk-1MiBx16", "ours", {"op": {"chunk_size": MiB, "read_ahead": 16}}),
    Method("ours-chunk-16MiBx2", "ours", {"op": {"chunk_size": 16 * MiB, "read_ahead": 2}}),
    Method("ours-write-64KiB", "ours", {"options": {"write_size": 64 * KiB}}),
    Method("ours-aes128-gcm", "ours", {"sftp_extra": _only_cipher("aes128-gcm@openssh.com")}),
    Method("ours-aes256-ctr", "ours", {"sftp_extra": _only_cipher("aes256-ctr")}),
    Method(
        "ours-verify-checksum-window",
        "ours",
        {"op": {"verify": "checksum"}, "patches": {"window": {"window": 16 * MiB, "packet": 256 * KiB}}},
        "paramiko window 16 MiB / packet 256 KiB",
    ),
    Method("ours-lean-writer", "ours", {"patches": {"lean_writer": True}}, "hand-built WRITE packets"),
    Method(
        "ours-no-botocore-checksum",
        "ours",
        {"patches": {"no_botocore_checksum": True}},
        "botocore response_checksum_validation=when_required",
    ),
    Method(
        "ours-lean-no-botocore-checksum",
        "ours",
        {"patches": {"lean_writer": True, "no_botocore_checksum": True}},
    ),
    Method("ours-ranged-2x16MiB", "ours", {"op": {"parallel_parts": 2, "part_size": 16 * MiB}}),
    Method("stock-no-compress", "stock", {"sftp_extra": {"compress": "false"}}, "compress=false extra"),
)
IMPORTS_ONLY = Method("imports-only", "imports", note="imports, then nothing: the RSS/CPU baseline")
LATENCY_METHODS = ("openssh-sftp", "ours-default")
THROTTLED_METHODS = ("stock-operator", "paramiko-putfo", "ours-default", "ours-ranged-4x16MiB")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=GiB, help="object size (default 1GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, methods alternating (default 3)")
    parser.add_argument("--quick", action="store_true", help="8 MiB, 1 round: a smoke test for CI")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmark-results", help="output directory")
    parser.add_argument("--methods", help="comma-separated method names (default: the main set)")
    parser.add_argument("--tuning", action="store_true", help="add the tuning variants of ours")
    parser.add_argument(
        "--throttle",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also compare through a throttling proxy in front of moto (default: on)",
    )
    parser.add_argument("--throttle-rate", type=float, default=30e6, help="bytes/s per connection")
    parser.add_argument("--throttle-latency", type=float, default=0.020, help="one-way seconds")
    parser.add_argument("--throttle-size", type=parse_size, default=256 * MiB, help="object size there")
    parser.add_argument(
        "--many",
        default="200x64KiB,2000x4KiB",
        help="many-small-objects sets, COUNTxSIZE comma-separated ('' for none)",
    )
    parser.add_argument("--many-methods", default="openssh-sftp,ours,rclone,stock-operator")
    parser.add_argument("--stock-keys", type=int, default=100, help="keys the stock operator loops over")
    parser.add_argument("--rclone-keys", type=int, default=0, help="keys rclone copies (0: all)")
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also compare through a proxy adding latency in front of sshd (default: on)",
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="one-way ms added by that proxy")
    parser.add_argument("--latency-size", type=parse_size, default=256 * MiB)
    parser.add_argument(
        "--memory-sizes",
        default="256MiB,2GiB",
        help="other object sizes ours-default moves, to show RSS stays flat ('' for none)",
    )
    parser.add_argument(
        "--source-checksum",
        choices=("sha256", "none"),
        default="sha256",
        help="upload with ChecksumAlgorithm=SHA256 (S3 vouches for it) or without (MD5 ETag)",
    )
    parser.add_argument(
        "--package-root",
        type=Path,
        default=REPO_ROOT,
        help="directory whose airflow_s3sftp the methods import (e.g. a snapshot of a commit)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory (local copy)")
    return parser


# -- environment -------------------------------------------------------------------------------------


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


# -- one run -------------------------------------------------------------------------------------------


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


# -- summary -----------------------------------------------------------------------------------------


def summarize(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[Method],
    rclone: str | None,
    imports_rss: float | None = None,
) -> list[dict[str, Any]]:
    """Return one line per method: medians over rounds, peaks over rounds.

    ``imports_rss`` is the peak RSS of a process that only imported what ours imports: the
    Python methods' peak is also shown as the excess over it.
    """
    summary: list[dict[str, Any]] = []
    by_name = {m.name: [r for r in rows if r["method"] == m.name] for m in methods}
    reference = by_name.get("openssh-sftp") or []
    ref_speed = (
        statistics.median(r["mb_per_s"] for r in reference if "mb_per_s" in r)
        if any("mb_per_s" in r for r in reference)
        else None
    )
    for method in methods:
        runs = by_name[method.name]
        if method.kind == "rclone" and not rclone:
            summary.append({"method": method.name, "status": "not installed", "note": method.note})
            continue
        good = [r for r in runs if "mb_per_s" in r]
        if not good:
            summary.append({"method": method.name, "status": "failed", "note": method.note})
            continue
        gib = good[0]["size"] / GiB
        client_cpu = [r["cpu_s"] + r.get("children_cpu_s", 0.0) for r in good]
        peak_rss = [
            r["children_peak_rss_mib"] if method.kind in ("openssh-sftp", "rclone") else r["peak_rss_mib"]
            for r in good
        ]
        speed = statistics.median(r["mb_per_s"] for r in good)
        line: dict[str, Any] = {
            "method": method.name,
            "status": "ok" if len(good) == len(runs) else f"{len(runs) - len(good)} of {len(runs)} failed",
            "rounds": len(good),
            "size": good[0]["size"],
            "mb_per_s": round(speed, 1),
            "mb_per_s_all": [r["mb_per_s"] for r in good],
            "vs_openssh": round(speed / ref_speed, 2) if ref_speed else None,
            "peak_rss_mib": max(peak_rss),
            "rss_over_imports_mib": (
                round(max(peak_rss) - imports_rss, 1)
                if imports_rss is not None and method.kind in ("ours", "stock")  # same imports
                else None
            ),
            "rss_growth_mib": (
                None
                if method.kind in ("openssh-sftp", "rclone")
                else round(max(r["peak_rss_mib"] - r["rss_before_mib"] for r in good), 1)
            ),
            "cpu_s_per_gib": round(statistics.median(client_cpu) / gib, 2),
            "sshd_cpu_s_per_gib": round(statistics.median(r["sshd_cpu_s"] for r in good) / gib, 2),
            "moto_cpu_s_per_gib": round(statistics.median(r["moto_cpu_s"] for r in good) / gib, 2),
            "peak_temp_bytes": max(r["peak_temp_bytes"] for r in good),
            "sha256_verified": all(r["sha256_verified"] for r in runs),
            "note": method.note,
        }
        phases = [r["phases"] for r in good if r.get("phases")]
        if phases:
            line["phases_s"] = {k: round(statistics.median(p[k] for p in phases), 2) for k in phases[0]}
        records = [r["record"] for r in good if r.get("record")]
        if records:
            line["source_check"] = records[0].get("source_check")
            line["verified"] = records[0].get("verified")
            line["published_with"] = records[0].get("published_with")
        summary.append(line)
    return summary


def format_table(summary: Sequence[dict[str, Any]], title: str) -> str:
    header = (
        "| method | MB/s (median) | x OpenSSH sftp | peak RSS MiB | RSS over imports-only MiB "
        "| RSS growth MiB | CPU s/GiB client | CPU s/GiB sshd | CPU s/GiB moto | temp disk | sha256 verified |"
    )
    lines = [f"### {title}", "", header, "|" + "---|" * 11]
    for s in summary:
        if s.get("status") in ("not installed", "failed"):
            lines.append(f"| {s['method']} | {s['status']} |" + " |" * 9)
            continue
        over = "-" if s.get("rss_over_imports_mib") is None else f"{s['rss_over_imports_mib']:.1f}"
        temp = human(s["peak_temp_bytes"]) if s["peak_temp_bytes"] else "0"
        ratio = f"{s['vs_openssh']:.2f}" if s.get("vs_openssh") is not None else "-"
        growth = "-" if s["rss_growth_mib"] is None else f"{s['rss_growth_mib']:.1f}"
        lines.append(
            f"| {s['method']} | {s['mb_per_s']:.1f} | {ratio} | {s['peak_rss_mib']:.1f} | {over} | {growth} "
            f"| {s['cpu_s_per_gib']:.2f} | {s['sshd_cpu_s_per_gib']:.2f} | {s['moto_cpu_s_per_gib']:.2f} "
            f"| {temp} | {'yes' if s['sha256_verified'] else 'NO'} |"
        )
    return "\n".join(lines)


def write_chart(path: Path, groups: dict[str, tuple[Sequence[dict[str, Any]], str, str]]) -> str:
    """Draw one bar chart per group: ``{title: (summary rows, metric key, axis label)}``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipped the chart (pip install matplotlib)"
    panels = {
        title: ([s for s in rows if key in s], key, axis_label)
        for title, (rows, key, axis_label) in groups.items()
    }
    panels = {title: panel for title, panel in panels.items() if panel[0]}
    if not panels:
        return "nothing to chart"
    columns = min(3, len(panels))
    rows_n = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(6.5 * columns, 4 * rows_n), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis, (title, (rows, key, axis_label)) in zip(flat, panels.items(), strict=False):
        names = [s["method"] for s in rows]
        colors = ["#4c72b0" if n.startswith("ours") else "#999999" for n in names]
        bars = axis.barh(names, [s[key] for s in rows], color=colors)
        axis.bar_label(bars, fmt="%.1f", padding=2)
        axis.invert_yaxis()
        axis.set_xlabel(axis_label)
        axis.set_title(title, fontsize=10)
    for axis in flat[len(panels) :]:
        axis.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False).stderr.strip()
    versions: dict[str, str] = {}
    from importlib.metadata import PackageNotFoundError, version

    for dist in (
        "apache-airflow",
        "apache-airflow-providers-amazon",
        "apache-airflow-providers-sftp",
        "paramiko",
        "boto3",
        "moto",
        "cryptography",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssh": ssh,
        "versions": versions,
    }


def select_methods(args: argparse.Namespace) -> list[Method]:
    known = {m.name: m for m in (*MAIN_METHODS, *TUNING_METHODS)}
    if args.methods:
        wanted = [name.strip() for name in args.methods.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(known)}")
        chosen = [known[name] for name in wanted]
    else:
        chosen = list(MAIN_METHODS)
    if args.tuning:
        chosen += [m for m in TUNING_METHODS if m not in chosen]
    if not any(m.name == "openssh-sftp" for m in chosen):
        chosen.insert(0, known["openssh-sftp"])  # every ratio is against it
    return chosen


def rclone_problem(bench: Bench) -> str | None:
    """Return why rclone cannot be used here (not installed, or it fails to list the bucket), or None."""
    from benchmarks.methods import _rclone_env

    if not bench.rclone:
        return "not installed (shutil.which('rclone') found nothing)"
    job = {"sftp": bench.sftp_job(), "s3_endpoint": bench.moto.endpoint_url}
    probe = subprocess.run(
        [bench.rclone, "lsf", "--max-depth", "1", f"src:{BUCKET}"],
        env=_rclone_env(job),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        return f"rclone lsf src:{BUCKET} failed: {probe.stderr.strip()[-300:]}"
    return None


def _sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.scenarios import (
        MANY_METHODS,
        create_dataset,
        format_many,
        parse_many,
        run_many,
        summarize_many,
    )

    args = build_parser().parse_args(argv)
    if args.quick:
        args.size, args.rounds = 8 * MiB, 1
        args.throttle_size = min(args.throttle_size, 8 * MiB)
        args.latency_size = min(args.latency_size, 8 * MiB)
        args.many = "20x64KiB"
        args.memory_sizes = ""
    throttle = args.throttle if args.throttle is not None else True
    latency = args.latency if args.latency is not None else True
    methods = select_methods(args)
    known = {m.name: m for m in (*MAIN_METHODS, *TUNING_METHODS)}
    throttled = [known[name] for name in THROTTLED_METHODS] if throttle else []
    many_sets = parse_many(args.many)
    many_known = {m.name: m for m in MANY_METHODS}
    many_methods = [many_known[name.strip()] for name in args.many_methods.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    timeout = 120 + args.size / 2e6  # the stock operator with compression is the slow one
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    many_rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}

    def once(method: Method, obj: dict[str, Any], round_no: int, label: str, **kwargs: Any) -> None:
        kwargs.setdefault("s3_endpoint", bench.moto.endpoint_url)
        kwargs.setdefault("timeout", 120 + obj["size"] / 2e6)
        rows.append(
            run_one(
                bench, method, obj, round_no=round_no, package_root=args.package_root, label=label, **kwargs
            )
        )

    with bench_environment(args) as bench:
        print(f"sshd on :{bench.sshd.port}, moto on :{bench.moto.port}, workdir {bench.workdir}", flush=True)
        obj = create_object(bench, f"object-{args.size}", args.size, args.source_checksum)
        if problem := rclone_problem(bench):
            skipped["rclone"] = problem
            print(f"rclone skipped: {problem}", flush=True)
        runnable = [m for m in methods if m.kind != "rclone" or "rclone" not in skipped]
        for round_no in range(1, args.rounds + 1):
            once(IMPORTS_ONLY, obj, round_no, "direct")
            for method in runnable:
                once(method, obj, round_no, "direct", timeout=timeout)
        for size in _sizes(args.memory_sizes):
            if size != args.size:
                once(
                    known["ours-default"],
                    create_object(bench, f"object-{size}", size, args.source_checksum),
                    1,
                    "memory",
                )
        if latency:
            lobj = create_object(
                bench, f"object-{args.latency_size}", args.latency_size, args.source_checksum
            )
            with ThrottleProxy(bench.sshd.port, rate=0, latency=args.latency_ms / 1000, depth=4096) as proxy:
                for round_no in range(1, args.rounds + 1):
                    for name in LATENCY_METHODS:
                        once(
                            known[name],
                            lobj,
                            round_no,
                            "latency",
                            sftp_port=proxy.port,
                            timeout=120 + args.latency_size / 1e6,
                        )
        if throttled:
            tobj = create_object(
                bench, f"object-{args.throttle_size}", args.throttle_size, args.source_checksum
            )
            with ThrottleProxy(
                bench.moto.port, rate=args.throttle_rate, latency=args.throttle_latency
            ) as proxy:
                for round_no in range(1, args.rounds + 1):
                    for method in throttled:
                        once(
                            method,
                            tobj,
                            round_no,
                            "throttled",
                            s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                            timeout=120 + args.throttle_size / 1e6,
                        )
        for count, size in many_sets:
            dataset = create_dataset(bench, count, size)
            for method in many_methods:
                if method.name in skipped:
                    continue
                limit = {"stock-operator": args.stock_keys, "rclone": args.rclone_keys}.get(method.name, 0)
                many_rows.append(
                    run_many(
                        bench,
                        method,
                        dataset,
                        round_no=1,
                        package_root=args.package_root,
                        s3_endpoint=bench.moto.endpoint_url,
                        limit=limit,
                    )
                )
        rclone = None if "rclone" in skipped else bench.rclone

    imports = [r["peak_rss_mib"] for r in rows if r["method"] == IMPORTS_ONLY.name and "peak_rss_mib" in r]
    imports_rss = max(imports) if imports else None

    def summary_of(label: str, chosen: Sequence[Method]) -> list[dict[str, Any]]:
        return summarize([r for r in rows if r["label"] == label], chosen, rclone, imports_rss)

    direct = summary_of("direct", methods)
    memory: list[dict[str, Any]] = []  # ours-default per object size: the worst round of each
    for size in sorted({r["size"] for r in rows if r["method"] == "ours-default" and "mb_per_s" in r}):
        runs = [
            r
            for r in rows
            if r["method"] == "ours-default"
            and r["size"] == size
            and r["label"] in ("memory", "direct")
            and "mb_per_s" in r
        ]
        if runs:
            memory.append(
                {
                    "size": size,
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "rss_growth_mib": round(max(r["peak_rss_mib"] - r["rss_before_mib"] for r in runs), 1),
                }
            )
    lat = summary_of("latency", [known[name] for name in LATENCY_METHODS]) if latency else []
    limited = (
        [
            s
            for s in summary_of("throttled", [known["openssh-sftp"], *throttled])
            if s["method"] != "openssh-sftp"
        ]
        if throttled
        else []
    )
    many = summarize_many(many_rows, many_methods)
    tables = [format_table(direct, f"{human(args.size)} object, loopback, {args.rounds} round(s)")]
    if imports_rss is not None:
        tables.append(
            f"Import-only process (Airflow, both providers, boto3's S3 model, airflow_s3sftp): "
            f"peak RSS {imports_rss:.1f} MiB."
        )
    if memory:
        lines = [
            "### Memory of ours-default by object size",
            "",
            "| object | peak RSS MiB | over imports-only MiB | growth during the transfer MiB |",
            "|---|---|---|---|",
        ]
        for m in sorted(memory, key=lambda m: m["size"]):
            over = f"{m['peak_rss_mib'] - imports_rss:.1f}" if imports_rss is not None else "-"
            lines.append(
                f"| {human(m['size'])} | {m['peak_rss_mib']:.1f} | {over} | {m['rss_growth_mib']:.1f} |"
            )
        tables.append("\n".join(lines))
    if lat:
        tables.append(
            format_table(
                lat,
                f"{human(args.latency_size)} object, SFTP through a proxy adding "
                f"{args.latency_ms:g} ms each way, {args.rounds} round(s)",
            )
        )
    if limited:
        tables.append(
            format_table(
                limited,
                f"{human(args.throttle_size)} object through a proxy capping each S3 connection at "
                f"{args.throttle_rate / 1e6:g} MB/s with {args.throttle_latency * 1000:g} ms latency each way",
            )
        )
    if many:
        tables.append(format_many(many))
    for name, reason in skipped.items():
        tables.append(f"{name}: skipped, {reason}")
    report = "\n\n".join(tables)
    print("\n" + report + "\n")
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "imports_only_rss_mib": imports_rss,
        "summary": direct,
        "memory": memory,
        "latency_summary": lat,
        "throttled_summary": limited,
        "many_summary": many,
        "skipped": skipped,
        "runs": rows,
        "many_runs": many_rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    stem = f"benchmark-{human(args.size).replace(' ', '')}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(report + "\n")
    groups: dict[str, tuple[Sequence[dict[str, Any]], str, str]] = {
        f"{human(args.size)}, loopback": (direct, "mb_per_s", "MB/s (median)"),
        f"{human(args.latency_size)}, +{args.latency_ms:g} ms each way (SFTP)": (lat, "mb_per_s", "MB/s"),
        f"{human(args.throttle_size)}, capped S3": (limited, "mb_per_s", "MB/s"),
    }
    for label in dict.fromkeys(s["label"] for s in many):
        groups[f"{label} objects"] = ([s for s in many if s["label"] == label], "files_per_s", "files/s")
    print(write_chart(args.out / f"{stem}.png", groups))
    print(f"results: {args.out / stem}.json (+ .md, .png), {result['elapsed_s']}s in all")
    everything = [*direct, *lat, *limited]
    failed = [s["method"] for s in everything if s.get("status") not in ("ok", "not installed")]
    failed += [f"{s['label']}:{s['method']}" for s in many if s.get("status") != "ok"]
    wrong = [s["method"] for s in everything if s.get("sha256_verified") is False]
    wrong += [f"{s['label']}:{s['method']}" for s in many if s.get("all_verified") is False]
    if failed or wrong:
        print(f"FAILED: {failed} WRONG BYTES: {wrong}", file=sys.stderr)
        return 1
    return 0
