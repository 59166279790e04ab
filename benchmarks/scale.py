# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Scale benchmark: ``python -m benchmarks.scale [--counts 10000,100000] [--size 1KiB] [--out DIR]``.

N small objects under one prefix, delivered by one ``S3ToSFTPStreamOperator(s3_prefix=...,
report=...)`` task in a fresh process, on loopback (real OpenSSH sshd, moto's server). Measured per
count: files/s, the XCom's size in bytes, the task's peak RSS growth (its own ``VmHWM``, reset after
the warm-up below, over its RSS then), and the CPU of the task, of the sshd sessions and of moto
(where the time goes). Every file that lands is read back and hashed, and the report must hold one
line per object. The task first delivers 20 objects of another prefix in the same process (imports,
clients, sessions). CPU figures cover the warm-up too. Not part of the test run.
``S3SFTP_BENCH_PROFILE=<dir>`` records a py-spy profile (see ``benchmarks/flame.py``);
``S3SFTP_BENCH_SAMPLE=<seconds>`` samples the RSS while the task runs; ``--no-report`` runs without
a report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import BUCKET, REPO_ROOT, KiB, Method, bench_environment, human, launch, parse_size

METHOD = Method("ours-scale", "scale-ours", {"op": {"max_concurrency": 4}}, "one task, one prefix, report=")
#: Targets (issue 22), at 100,000 x 1 KiB.
TARGET_XCOM_BYTES = 16 * KiB
TARGET_RSS_GROWTH_MIB = 64
TARGET_FILES_PER_S = 150


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--counts", default="10000", help="comma-separated object counts (default 10000)")
    parser.add_argument("--size", type=parse_size, default=KiB, help="bytes per object (default 1KiB)")
    parser.add_argument("--concurrency", type=int, default=4, help="max_concurrency of the task (default 4)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmark-results", help="output directory")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--no-report", action="store_true", help="no report= (what the report costs, by difference)"
    )
    return parser


def put_objects(client: Any, prefix: str, count: int, size: int) -> dict[str, str]:
    """Upload ``count`` random objects of ``size`` bytes under ``prefix``; return key -> sha256."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)

    def put(i: int) -> tuple[str, str]:
        key = f"{prefix}{i // 1000:04d}/{i:07d}.bin"
        body = os.urandom(size)
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return key, hashlib.sha256(body).hexdigest()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as threads:
        digests = dict(threads.map(put, range(count)))
    print(f"created {count} objects of {human(size)} in {time.monotonic() - started:.0f}s", flush=True)
    return digests


def run_count(bench: Any, args: argparse.Namespace, count: int) -> dict[str, Any]:
    prefix = f"scale-{count}/"
    client = bench.moto.client()
    digests = put_objects(client, prefix, count, args.size)
    remote = bench.remote_dir / f"scale-{count}"
    remote.mkdir()
    os.chown(remote, bench.sshd.root.stat().st_uid, bench.sshd.root.stat().st_gid)
    report_key = f"reports/scale-{count}.jsonl"
    warm_up = bench.remote_dir / f"warm-up-{count}"
    warm_up.mkdir()
    os.chown(warm_up, bench.sshd.root.stat().st_uid, bench.sshd.root.stat().st_gid)
    put_objects(client, f"warm-up-{count}/", 20, args.size)
    method = Method(
        METHOD.name, METHOD.kind, {"op": {"max_concurrency": args.concurrency, "create_dirs": True}}
    )
    job = {
        "bucket": BUCKET,
        "prefix": prefix,
        "remote_dir": str(remote),
        "report": None if args.no_report else f"s3://{BUCKET}/{report_key}",
        "warm_up_prefix": f"warm-up-{count}/",
        "warm_up_dir": str(warm_up),
        "warm_up_report": f"s3://{BUCKET}/reports/warm-up-{count}.jsonl",
        "s3_endpoint": bench.moto.endpoint_url,
    }
    row = launch(bench, method, job, package_root=REPO_ROOT, timeout=args.timeout, tag=f"scale-{count}")
    landed = {
        f"{prefix}{path.relative_to(remote)}": hashlib.sha256(path.read_bytes()).hexdigest()
        for path in remote.rglob("*")
        if path.is_file()
    }
    report = (
        [b""] * count
        if args.no_report
        else client.get_object(Bucket=BUCKET, Key=report_key)["Body"].read().splitlines()
    )
    seconds = row.get("task_seconds") or float("nan")
    result = {
        "count": count,
        "size": args.size,
        "concurrency": args.concurrency,
        "exit_code": row["exit_code"],
        "seconds": seconds,
        "files_per_s": round(count / seconds, 1),
        "xcom_bytes": row.get("xcom_bytes"),
        "rss_after_warm_up_mib": row.get("rss_after_warm_up_mib"),
        "peak_rss_mib": row.get("peak_rss_mib"),
        "rss_growth_mib": row.get("rss_growth_after_warm_up_mib"),
        "task_cpu_s": row.get("cpu_s"),
        "sshd_cpu_s": row.get("sshd_cpu_s"),
        "moto_cpu_s": row.get("moto_cpu_s"),
        "verified": landed == digests,
        "report_lines": len(report),
        "sftp_requests": row.get("sftp"),
        "loadavg_1m": row.get("loadavg_1m"),
        "error": row.get("error"),
    }
    result["row"] = {k: v for k, v in row.items() if k not in ("sftp", "summary")}
    print(json.dumps({k: v for k, v in result.items() if k != "sftp_requests"}), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = [int(text) for text in args.counts.split(",") if text]
    results = []
    with bench_environment(args) as bench:
        for count in counts:
            results.append(run_count(bench, args, count))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2))
    print(
        f"\n{'objects':>9} {'files/s':>8} {'XCom B':>7} {'RSS +MiB':>8} {'task CPU':>8} {'sshd CPU':>8} {'moto CPU':>8}"
    )
    for r in results:
        print(
            f"{r['count']:>9} {r['files_per_s']:>8} {r['xcom_bytes']!s:>7} {r['rss_growth_mib']!s:>8} "
            f"{r['task_cpu_s']!s:>8} {r['sshd_cpu_s']!s:>8} {r['moto_cpu_s']!s:>8}"
        )
    bad = [r for r in results if r["exit_code"] != 0 or not r["verified"] or r["report_lines"] != r["count"]]
    for r in bad:
        print(
            f"FAILED at {r['count']}: exit {r['exit_code']}, verified {r['verified']}, report {r['report_lines']}"
        )
        if r["error"]:
            print(r["error"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
