# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Inbound benchmark (SFTP -> S3): ``python -m benchmarks.inbound [--quick] [--size 1GiB] [--out DIR]``.

Side by side in one run, each method in a fresh process against the same sshd and moto:
``SFTPToS3StreamOperator``; the stock ``SFTPToS3Operator`` with ``use_temp_file`` True and False;
rclone; OpenSSH ``sftp get`` to local disk (the read-side limit) and boto3 ``upload_file`` from local
disk (the write-side limit). Scenarios: one large file on loopback, the same methods through a proxy
that holds bytes ``--latency-ms / 2`` each way (a long link), and ``--many`` small files. Every object
that lands is read back from S3 and its SHA-256 compared; no multipart upload may be left open.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    BUCKET,
    REPO_ROOT,
    Bench,
    Method,
    MiB,
    _sha256_of,
    bench_environment,
    human,
    launch,
    parse_size,
)
from benchmarks.throttle import ThrottleProxy

if TYPE_CHECKING:
    from collections.abc import Sequence

METHODS = (
    Method("openssh-sftp-get", "in-openssh-get", note="sftp -b get to local disk: the read-side limit"),
    Method("boto3-upload-file", "in-boto3-upload", note="upload_file from local disk: the write-side limit"),
    Method("stock-temp-file", "in-stock", {"use_temp_file": True}, "SFTPToS3Operator(use_temp_file=True)"),
    Method("stock-streaming", "in-stock", {"use_temp_file": False}, "SFTPToS3Operator(use_temp_file=False)"),
    Method("rclone", "in-rclone", note="rclone copyto/copy sftp -> s3"),
    Method("ours", "in-ours", note="SFTPToS3StreamOperator with expected_checksum"),
)
IMPORTS_ONLY = Method("imports-only", "imports", note="imports, then nothing: the RSS baseline")
LATENCY_METHODS = ("openssh-sftp-get", "stock-temp-file", "stock-streaming", "rclone", "ours")
# python -m benchmarks.inbound --scenarios latency --latency-size 256MiB --latency-methods openssh-sftp-get,ours
MANY_METHODS = ("openssh-sftp-get", "stock-temp-file", "rclone", "ours")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inbound", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="the large file")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="round trip of the long-link proxy")
    parser.add_argument("--latency-size", type=parse_size, default=parse_size("32MiB"))
    parser.add_argument(
        "--latency-methods", default=",".join(LATENCY_METHODS), help="methods on the long link"
    )
    parser.add_argument("--many", default="200x64KiB", help="COUNTxSIZE small files")
    parser.add_argument("--quick", action="store_true", help="8 MiB, 4 MiB on the long link, 20 x 64 KiB")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmark-results")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--loopback-methods", default=",".join(m.name for m in METHODS), help="methods on loopback"
    )
    parser.add_argument(
        "--scenarios", default="loopback,latency,many", help="comma-separated: loopback, latency, many"
    )
    return parser


class Verifier:
    """Check and clear what a method left: the S3 objects (sha256), open uploads, local copies."""

    def __init__(self, bench: Bench) -> None:
        self.s3 = bench.moto.client()

    def object_sha256(self, key: str) -> str | None:
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        digest = hashlib.sha256()
        for chunk in body.iter_chunks(8 * MiB):
            digest.update(chunk)
        return digest.hexdigest()

    def clear(self, prefix: str) -> None:
        for item in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            self.s3.delete_object(Bucket=BUCKET, Key=item["Key"])

    def open_uploads(self) -> int:
        return len(self.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def _random_file(path: Path, size: int, owner: tuple[int, int]) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(16 * MiB, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    os.chown(path, *owner)
    path.chmod(0o644)
    return digest.hexdigest()


def run_method(
    bench: Bench,
    verifier: Verifier,
    method: Method,
    label: str,
    job: dict[str, Any],
    expected: dict[str, str],
    *,
    sftp_port: int | None = None,
    timeout: float,
) -> dict[str, Any]:
    """Run one method in a fresh process; check every expected object (or the local copy) by sha256."""
    row = launch(
        bench,
        method,
        job,
        package_root=REPO_ROOT,
        timeout=timeout,
        tag=f"in-{method.name}-{label}",
        sftp_port=sftp_port,
    )
    row["label"] = label
    if method.kind == "in-openssh-get":
        targets = (
            [Path(job["local_target"]) / Path(k).name for k in expected]
            if job.get("files")
            else [Path(job["local_target"])]
        )
        row["sha256_verified"] = "error" not in row and all(
            t.exists() and _sha256_of(t) == d for t, d in zip(targets, expected.values(), strict=True)
        )
        target = Path(job["local_target"])
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        if target.name and job.get("files"):
            target.mkdir()
    elif method.kind != "imports":
        row["sha256_verified"] = "error" not in row and all(
            verifier.object_sha256(key) == digest for key, digest in expected.items()
        )
        row["open_uploads"] = verifier.open_uploads()
        verifier.clear(job["prefix"])
    total = sum(job.get("sizes", [job.get("size", 0)]))
    if "error" not in row and method.kind != "imports":
        row["mb_per_s"] = round(total / row["seconds"] / 1e6, 2)
        row["files_per_s"] = round(len(expected) / row["seconds"], 1)
    state = (
        "FAILED"
        if "error" in row
        else f"{row.get('mb_per_s', 0):8.1f} MB/s  sha256 {'ok' if row.get('sha256_verified') else 'WRONG'}"
    )
    print(
        f"  {label:<8} {method.name:<20} {state}  rss {row.get('peak_rss_mib')} MiB  temp {human(row['peak_temp_bytes'])}",
        flush=True,
    )
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.size, args.latency_size, args.many = 8 * MiB, 4 * MiB, "20x64KiB"
    count, small = args.many.lower().split("x")
    count, small_size = int(count), parse_size(small)
    rclone_ok = shutil.which("rclone") is not None
    methods = [m for m in METHODS if m.kind != "in-rclone" or rclone_ok]
    rows: list[dict[str, Any]] = []
    with bench_environment(args) as bench:
        verifier = Verifier(bench)
        with contextlib.suppress(verifier.s3.exceptions.BucketAlreadyOwnedByYou):
            verifier.s3.create_bucket(Bucket=BUCKET)
        owner = (bench.remote_dir.stat().st_uid, bench.remote_dir.stat().st_gid)
        local_dir = bench.workdir / "local"
        local_dir.mkdir()

        def one_file(label: str, size: int, names: Sequence[str], port: int | None) -> None:
            source = bench.remote_dir / f"in-{label}.bin"
            digest = _random_file(source, size, owner)
            print(f"{label}: {human(size)}", flush=True)
            for method in methods:
                if method.name not in names:
                    continue
                job = {
                    "bucket": BUCKET, "key": f"in/{label}/{method.name}.bin", "prefix": f"in/{label}/", "size": size,
                    "sha256": digest, "remote_path": str(source), "local_source": str(source),
                    "local_target": str(local_dir / f"{label}.bin"), "s3_endpoint": bench.moto.endpoint_url,
                }  # fmt: skip
                rows.append(
                    run_method(
                        bench,
                        verifier,
                        method,
                        label,
                        job,
                        {job["key"]: digest},
                        sftp_port=port,
                        timeout=600 + size / 1e6,
                    )
                )
            source.unlink()

        scenarios = set(args.scenarios.split(","))
        if "loopback" in scenarios:
            one_file("loopback", args.size, args.loopback_methods.split(","), None)
        rows.append(
            launch(
                bench,
                IMPORTS_ONLY,
                {"s3_endpoint": bench.moto.endpoint_url},
                package_root=REPO_ROOT,
                timeout=120,
                tag="in-imports",
            )
            | {"label": "baseline"}
        )
        if "latency" in scenarios:
            with ThrottleProxy(bench.sshd.port, rate=0, latency=args.latency_ms / 2000, depth=4096) as proxy:
                one_file("latency", args.latency_size, args.latency_methods.split(","), proxy.port)

        many_dir = bench.remote_dir / "many"
        many_dir.mkdir()
        os.chown(many_dir, *owner)
        digests = {
            f"f{n:04d}.bin": _random_file(many_dir / f"f{n:04d}.bin", small_size, owner) for n in range(count)
        }
        print(f"many: {count} x {human(small_size)}", flush=True)
        for method in methods:
            if method.name not in MANY_METHODS or "many" not in scenarios:
                continue
            prefix = f"in/many/{method.name}/"
            job = {
                "bucket": BUCKET, "prefix": prefix, "remote_dir": str(many_dir), "sizes": [small_size] * count,
                "files": [[str(many_dir / name), prefix + name] for name in digests],
                "remote_path": str(many_dir) + "/*", "local_target": str(local_dir / "many"),
                "s3_endpoint": bench.moto.endpoint_url,
            }  # fmt: skip
            (local_dir / "many").mkdir(exist_ok=True)
            expected = {prefix + name: digest for name, digest in digests.items()}
            rows.append(run_method(bench, verifier, method, "many", job, expected, timeout=900))

    baseline = next((r.get("peak_rss_mib") for r in rows if r.get("label") == "baseline"), None)
    summary = [
        {
            "label": r["label"], "method": r["method"], "status": "ok" if "error" not in r else "failed",
            "mb_per_s": r.get("mb_per_s"), "files_per_s": r.get("files_per_s"), "seconds": r.get("seconds"),
            "sha256_verified": r.get("sha256_verified"), "open_uploads": r.get("open_uploads"),
            "peak_rss_mib": r.get("peak_rss_mib"), "rss_over_imports_mib": round(r["peak_rss_mib"] - baseline, 1)
            if baseline is not None and r.get("peak_rss_mib") is not None else None,
            "peak_temp_bytes": r.get("peak_temp_bytes"), "cpu_s": r.get("cpu_s"),
        }
        for r in rows
        if r["label"] != "baseline"
    ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"size": args.size, "latency_ms": args.latency_ms, "latency_size": args.latency_size, "many": args.many,
              "imports_rss_mib": baseline, "rclone": rclone_ok, "summary": summary, "rows": rows}  # fmt: skip
    stem = f"inbound-{human(args.size).replace(' ', '')}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = [
        f"Inbound SFTP -> S3 ({human(args.size)} loopback; {human(args.latency_size)} at {args.latency_ms:g} ms "
        f"round trip; {args.many}); RSS over an import-only process ({baseline} MiB)",
        "",
        "| scenario | method | MB/s | files/s | sha256 | RSS over imports (MiB) | temp disk |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['label']} | {s['method']} | {s['mb_per_s']} | {s['files_per_s']} | {s['sha256_verified']} | "
        f"{s['rss_over_imports_mib']} | {human(s['peak_temp_bytes'] or 0)} |"
        for s in summary
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [s for s in summary if s["status"] != "ok" or not s["sha256_verified"] or s["open_uploads"]]
    return 1 if failed else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"done in {time.monotonic() - started:.0f}s")
    raise SystemExit(code)
