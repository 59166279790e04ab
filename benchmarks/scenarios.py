# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The many-small-objects scenario: every method moves the same files under one S3 prefix."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import BUCKET, Bench, Method, human, launch, parse_size

if TYPE_CHECKING:
    from collections.abc import Sequence

MANY_METHODS = (
    Method("openssh-sftp", "many-openssh", note="sftp -b: one put per file over one connection, local disk"),
    Method("ours", "many-ours", note="S3ToSFTPStreamOperator(s3_prefix=...), defaults"),
    Method("rclone", "many-rclone", note="rclone copy s3 -> sftp, defaults"),
    Method("stock-operator", "many-stock", note="S3ToSFTPOperator looped over the keys, one per key"),
    # Measurement variants (--many-methods): what the defaults for small files cost.
    Method("ours-no-fsync", "many-ours", {"op": {"tuning": {"fsync": False}}}, "fsync=False"),
    Method("ours-no-chmod", "many-ours", {"op": {"file_mode": None}}, "file_mode=None"),
    Method(
        "ours-strict",
        "many-ours",
        {"op": {"tuning": {"strict_order": True}}},
        "strict_order=True: one request at a time",
    ),
    Method("ours-1-session", "many-ours", {"op": {"max_concurrency": 1}}, "max_concurrency=1"),
    Method("ours-8-sessions", "many-ours", {"op": {"max_concurrency": 8}}, "max_concurrency=8"),
)


def parse_many(text: str) -> list[tuple[int, int]]:
    """Return ``[(count, size)]`` for ``"200x64KiB,2000x4KiB"``."""
    sets = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        count, _, size = part.partition("x")
        sets.append((int(count), parse_size(size)))
    return sets


def create_dataset(bench: Bench, count: int, size: int) -> dict[str, Any]:
    """Upload ``count`` objects of ``size`` random bytes under one prefix; keep local copies for OpenSSH."""
    label = f"{count}x{human(size).replace(' ', '')}"
    if f"many:{label}" in bench.objects:  # another scenario moves the same set
        return bench.objects[f"many:{label}"]
    prefix = f"many-{label}/"
    local_dir = bench.workdir / f"many-{label}"
    local_dir.mkdir()
    local_dir.chmod(0o755)
    client = bench.moto.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    files: dict[str, dict[str, Any]] = {}

    def one(number: int) -> None:
        name = f"f{number:05d}.bin"
        data = os.urandom(size)
        local = local_dir / name
        local.write_bytes(data)
        local.chmod(0o644)
        client.put_object(Bucket=BUCKET, Key=prefix + name, Body=data)
        files[name] = {"key": prefix + name, "sha256": hashlib.sha256(data).hexdigest(), "local": str(local)}

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(count)))
    print(
        f"created {count} objects of {human(size)} under s3://{BUCKET}/{prefix} "
        f"in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    names = sorted(files)
    bench.objects[f"many:{label}"] = {
        "label": label,
        "count": count,
        "size": size,
        "prefix": prefix,
        "local_dir": str(local_dir),
        "files": {name: files[name] for name in names},
    }
    return bench.objects[f"many:{label}"]


def run_many(
    bench: Bench,
    method: Method,
    dataset: dict[str, Any],
    *,
    round_no: int,
    package_root: Path,
    s3_endpoint: str,
    limit: int,
    sftp_port: int | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Move the dataset's files (the first ``limit``, 0 for all) with ``method``; check every one.

    ``sftp_port`` sends SFTP through a proxy at that port (the long-link scenario).
    """
    names = list(dataset["files"])
    if limit:
        names = names[:limit]
    remote_dir = bench.remote_dir / f"{method.name}-{dataset['label']}-r{round_no}"
    remote_dir.mkdir()
    owner = bench.remote_dir.stat()
    os.chown(remote_dir, owner.st_uid, owner.st_gid)
    job = {
        "bucket": BUCKET,
        "prefix": dataset["prefix"],
        "keys": [dataset["files"][name]["key"] for name in names],
        "subset": len(names) < len(dataset["files"]),
        "files": [(dataset["files"][name]["local"], f"{remote_dir}/{name}") for name in names],
        "local_dir": dataset["local_dir"],
        "remote_dir": str(remote_dir),
        "s3_endpoint": s3_endpoint,
    }
    if method.kind == "many-ours" and job["subset"]:
        raise ValueError("ours always moves the whole prefix (s3_prefix): run it without a limit")
    row = launch(
        bench,
        method,
        job,
        package_root=package_root,
        timeout=timeout or 600 + 2 * len(names),
        tag=f"{method.name}-{dataset['label']}-r{round_no}",
        sftp_port=sftp_port,
    )
    row.update(label=dataset["label"], round=round_no, files=len(names), size=dataset["size"])
    landed = {path.name: path for path in remote_dir.iterdir()}
    wrong = [
        name
        for name in names
        if name not in landed
        or hashlib.sha256(landed[name].read_bytes()).hexdigest() != dataset["files"][name]["sha256"]
    ]
    row["extra_files"] = sorted(set(landed) - set(names))
    row["all_verified"] = "error" not in row and not wrong and not row["extra_files"]
    row["wrong_or_missing"] = len(wrong)
    if "error" not in row:
        row["files_per_s"] = round(len(names) / row["seconds"], 2)
        row["mb_per_s"] = round(len(names) * dataset["size"] / row["seconds"] / 1e6, 2)
    shutil.rmtree(remote_dir, ignore_errors=True)
    status = (
        f"{row['files_per_s']:8.1f} files/s  {row['seconds']:7.2f}s"
        if "files_per_s" in row
        else f"FAILED (exit {row['exit_code']})"
    )
    print(
        f"  {dataset['label']:<12} r{round_no} {method.name:<16} {len(names):5d} files {status}  "
        f"bytes {'ok' if row['all_verified'] else 'WRONG'}",
        flush=True,
    )
    return row


def summarize_many(rows: Sequence[dict[str, Any]], methods: Sequence[Method]) -> list[dict[str, Any]]:
    """Return one line per (dataset, method): medians over rounds."""
    summary: list[dict[str, Any]] = []
    for label in dict.fromkeys(r["label"] for r in rows):
        ref_rows = [
            r for r in rows if r["label"] == label and r["method"] == "openssh-sftp" and "files_per_s" in r
        ]
        ref = statistics.median(r["files_per_s"] for r in ref_rows) if ref_rows else None
        for method in methods:
            runs = [r for r in rows if r["label"] == label and r["method"] == method.name]
            if not runs:
                continue
            good = [r for r in runs if "files_per_s" in r]
            if not good:
                summary.append(
                    {
                        "label": label,
                        "method": method.name,
                        "status": "failed",
                        "error": runs[0].get("error", "")[-300:],
                    }
                )
                continue
            files = good[0]["files"]
            speed = statistics.median(r["files_per_s"] for r in good)
            client_cpu = statistics.median(r["cpu_s"] + r.get("children_cpu_s", 0.0) for r in good)
            line: dict[str, Any] = {
                "label": label,
                "method": method.name,
                "status": "ok"
                if len(good) == len(runs)
                else f"{len(runs) - len(good)} of {len(runs)} failed",
                "rounds": len(good),
                "files": files,
                "files_per_s": round(speed, 1),
                "files_per_s_all": [r["files_per_s"] for r in good],
                "vs_openssh": round(speed / ref, 3) if ref else None,
                "client_cpu_ms_per_file": round(1000 * client_cpu / files, 1),
                "sshd_cpu_ms_per_file": round(
                    1000 * statistics.median(r["sshd_cpu_s"] for r in good) / files, 1
                ),
                "moto_cpu_ms_per_file": round(
                    1000 * statistics.median(r["moto_cpu_s"] for r in good) / files, 1
                ),
                "all_verified": all(r["all_verified"] for r in runs),
                "note": method.note,
            }
            counts = [r["sftp"] for r in good if r.get("sftp")]
            if counts:
                c = counts[0]
                line["requests_per_file"] = round(sum(c["requests"].values()) / files, 2)
                line["non_write_requests_per_file"] = round(
                    sum(n for k, n in c["requests"].items() if k != "write") / files, 2
                )
                line["round_trips_per_file"] = round(c["round_trips"] / files, 2)
                line["ssh_handshakes"] = c["ssh_handshakes"]
                line["requests"] = c["requests"]
            summary.append(line)
    return summary


def format_many(summary: Sequence[dict[str, Any]]) -> str:
    """Return one Markdown table per dataset, ratios against OpenSSH and against each other method."""
    tables = []
    for label in dict.fromkeys(s["label"] for s in summary):
        lines = [
            f"### Many small objects: {label} under one S3 prefix, loopback",
            "",
            "| method | files | files/s (median) | x OpenSSH sftp | ours x this | client CPU ms/file "
            "| sshd CPU ms/file | moto CPU ms/file | SFTP requests/file | round trips/file | SSH handshakes "
            "| bytes verified |",
            "|" + "---|" * 12,
        ]
        rows = [s for s in summary if s["label"] == label]
        ours = next((s for s in rows if s["method"] == "ours" and "files_per_s" in s), None)
        for s in rows:
            if "files_per_s" not in s:
                lines.append(f"| {s['method']} | {s['status']} |" + " |" * 10)
                continue
            ratio = f"{s['vs_openssh']:.3f}" if s.get("vs_openssh") is not None else "-"
            ours_x = f"{ours['files_per_s'] / s['files_per_s']:.3g}" if ours else "-"
            lines.append(
                f"| {s['method']} | {s['files']} | {s['files_per_s']:.1f} | {ratio} | {ours_x} "
                f"| {s['client_cpu_ms_per_file']:.1f} | {s['sshd_cpu_ms_per_file']:.1f} "
                f"| {s['moto_cpu_ms_per_file']:.1f} "
                f"| {s.get('requests_per_file', '-')} | {s.get('round_trips_per_file', '-')} "
                f"| {s.get('ssh_handshakes', '-')} | {'yes' if s['all_verified'] else 'NO'} |"
            )
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
