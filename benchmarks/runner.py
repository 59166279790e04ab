# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Run every method against a real sshd and moto on loopback, in rounds, and report the numbers."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.harness import (
    BUCKET,
    REPO_ROOT,
    Bench,
    GiB,
    KiB,
    Method,
    MiB,
    bench_environment,
    create_object,
    human,
    parse_size,
    run_one,
)
from benchmarks.long_link import (
    LONG_DEFAULT,
    LONG_FORCED_STRIPES,
    LONG_MANY_DEFAULT,
    format_long,
    long_chart_groups,
    long_many_methods,
    long_methods,
    run_long_link,
    summarize_long,
)
from benchmarks.methods import _rclone_env
from benchmarks.scenarios import (
    MANY_METHODS,
    create_dataset,
    format_many,
    parse_many,
    run_many,
    summarize_many,
)
from benchmarks.throttle import ThrottleProxy

if TYPE_CHECKING:
    from collections.abc import Sequence


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


def _only_cipher(name: str) -> dict[str, Any]:
    return {"disabled_algorithms": {"ciphers": [c for c in _PARAMIKO_CIPHERS if c != name]}}


RANGED = {"tuning": {"parallel_parts": 4, "part_size": 16 * MiB}}
MAIN_METHODS = (
    Method("openssh-sftp", "openssh-sftp", note="sftp -b put of a local copy: the write-side limit"),
    Method("stock-operator", "stock", note="amazon S3ToSFTPOperator: temp file, then put"),
    Method("paramiko-putfo", "putfo", note="sftp.putfo(get_object()['Body'])"),
    Method("rclone", "rclone", note="rclone copyto s3 -> sftp"),
    Method("ours-default", "ours", note="sha256 + size verify + atomic rename + fsync"),
    Method("ours-verify-checksum", "ours", {"op": {"verify": "checksum"}}, "re-reads the file"),
    Method("ours-strict-order", "ours", {"op": {"tuning": {"strict_order": True}}}, "one write in flight"),
    Method("ours-ranged-4x16MiB", "ours", {"op": RANGED}, "RangedReader, 4 parts of 16 MiB"),
)
TUNING_METHODS = (
    Method("ours-no-fsync", "ours", {"op": {"tuning": {"fsync": False}}}),
    Method(
        "ours-no-hash",
        "ours",
        {"op": {"checksum": None}, "no_source_check": True},
        "no checksum, no S3 check",
    ),
    Method("ours-chunk-1MiBx16", "ours", {"op": {"tuning": {"chunk_size": MiB, "read_ahead": 16}}}),
    Method("ours-chunk-16MiBx2", "ours", {"op": {"tuning": {"chunk_size": 16 * MiB, "read_ahead": 2}}}),
    Method("ours-write-64KiB", "ours", {"op": {"tuning": {"write_size": 64 * KiB}}}),
    Method("ours-aes128-gcm", "ours", {"sftp_extra": _only_cipher("aes128-gcm@openssh.com")}),
    Method("ours-aes256-ctr", "ours", {"sftp_extra": _only_cipher("aes256-ctr")}),
    Method(
        "ours-verify-checksum-window",
        "ours",
        {"op": {"verify": "checksum"}, "patches": {"window": {"window": 16 * MiB, "packet": 256 * KiB}}},
        "paramiko window 16 MiB / packet 256 KiB",
    ),
    Method(
        "ours-no-botocore-checksum",
        "ours",
        {"patches": {"no_botocore_checksum": True}},
        "botocore response_checksum_validation=when_required",
    ),
    Method("ours-ranged-2x16MiB", "ours", {"op": {"tuning": {"parallel_parts": 2, "part_size": 16 * MiB}}}),
    Method("stock-no-compress", "stock", {"sftp_extra": {"compress": "false"}}, "compress=false extra"),
)
IMPORTS_ONLY = Method("imports-only", "imports", note="imports, then nothing: the RSS/CPU baseline")
LATENCY_METHODS = ("openssh-sftp", "ours-default")
THROTTLED_METHODS = ("stock-operator", "paramiko-putfo", "ours-default", "ours-ranged-4x16MiB")


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
        "--long-link",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the long-link scenario: SFTP through a delay proxy, ours against sftp and rclone (default: on)",
    )
    parser.add_argument(
        "--long-ms",
        default="50,125",
        help="one-way ms of the long-link proxy, comma-separated (default 50,125)",
    )
    parser.add_argument(
        "--long-sizes", default="1GiB", help="big objects there, comma-separated (default 1GiB)"
    )
    parser.add_argument(
        "--long-methods", default=LONG_DEFAULT, help=f"big-object methods there ({LONG_DEFAULT})"
    )
    parser.add_argument("--long-many", default="200x64KiB", help="small-object sets there ('' for none)")
    parser.add_argument(
        "--long-many-methods",
        default=LONG_MANY_DEFAULT,
        help=f"small-object methods there ({LONG_MANY_DEFAULT}; variants ours-N-on-C)",
    )
    parser.add_argument("--long-rounds", type=int, default=1, help="rounds there (default 1)")
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


# -- one run -------------------------------------------------------------------------------------------


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


@dataclass
class Run:
    """One ``python -m benchmarks`` invocation: its arguments, servers and the rows measured so far."""

    args: argparse.Namespace
    bench: Bench
    known: dict[str, Method]
    rows: list[dict[str, Any]] = field(default_factory=list)
    many_rows: list[dict[str, Any]] = field(default_factory=list)
    long_rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def once(self, method: Method, obj: dict[str, Any], round_no: int, label: str, **kwargs: Any) -> None:
        """Run ``method`` once on ``obj`` and keep its row."""
        kwargs.setdefault("s3_endpoint", self.bench.moto.endpoint_url)
        kwargs.setdefault("timeout", 120 + obj["size"] / 2e6)
        self.rows.append(
            run_one(
                self.bench,
                method,
                obj,
                round_no=round_no,
                package_root=self.args.package_root,
                label=label,
                **kwargs,
            )
        )

    def obj(self, size: int) -> dict[str, Any]:
        """Return the S3 object of ``size`` bytes, created on first use."""
        return create_object(self.bench, f"object-{size}", size, self.args.source_checksum)


def run_direct(run: Run, methods: Sequence[Method]) -> None:
    """Every chosen method on one object over loopback, in rounds (plus the imports-only baseline)."""
    args = run.args
    obj = run.obj(args.size)
    runnable = [m for m in methods if m.kind != "rclone" or "rclone" not in run.skipped]
    for round_no in range(1, args.rounds + 1):
        run.once(IMPORTS_ONLY, obj, round_no, "direct")
        for method in runnable:
            run.once(method, obj, round_no, "direct", timeout=120 + args.size / 2e6)


def run_memory(run: Run) -> None:
    """``ours-default`` once per extra object size: how memory grows with the object."""
    for size in _sizes(run.args.memory_sizes):
        if size != run.args.size:
            run.once(run.known["ours-default"], run.obj(size), 1, "memory")


def run_latency(run: Run) -> None:
    """The latency methods with SFTP through a proxy that holds bytes ``--latency-ms`` each way."""
    args = run.args
    obj = run.obj(args.latency_size)
    with ThrottleProxy(run.bench.sshd.port, rate=0, latency=args.latency_ms / 1000, depth=4096) as proxy:
        for round_no in range(1, args.rounds + 1):
            for name in LATENCY_METHODS:
                run.once(
                    run.known[name],
                    obj,
                    round_no,
                    "latency",
                    sftp_port=proxy.port,
                    timeout=120 + args.latency_size / 1e6,
                )


def run_throttled(run: Run, throttled: Sequence[Method]) -> None:
    """The throttled methods with S3 through a proxy capping each connection's rate."""
    args = run.args
    obj = run.obj(args.throttle_size)
    with ThrottleProxy(run.bench.moto.port, rate=args.throttle_rate, latency=args.throttle_latency) as proxy:
        for round_no in range(1, args.rounds + 1):
            for method in throttled:
                run.once(
                    method,
                    obj,
                    round_no,
                    "throttled",
                    s3_endpoint=f"http://127.0.0.1:{proxy.port}",
                    timeout=120 + args.throttle_size / 1e6,
                )


def run_many_objects(run: Run, many_methods: Sequence[Method]) -> None:
    """Each many-objects method on each ``--many`` data set."""
    args = run.args
    for count, size in parse_many(args.many):
        dataset = create_dataset(run.bench, count, size)
        for method in many_methods:
            if method.name in run.skipped:
                continue
            limit = {"stock-operator": args.stock_keys, "rclone": args.rclone_keys}.get(method.name, 0)
            run.many_rows.append(
                run_many(
                    run.bench,
                    method,
                    dataset,
                    round_no=1,
                    package_root=args.package_root,
                    s3_endpoint=run.bench.moto.endpoint_url,
                    limit=limit,
                )
            )


def memory_by_size(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``ours-default``'s peak RSS and growth per object size: the worst round of each."""
    memory: list[dict[str, Any]] = []
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
    return memory


def format_memory(memory: Sequence[dict[str, Any]], imports_rss: float | None) -> str:
    """Return the markdown table of :func:`memory_by_size`."""
    lines = [
        "### Memory of ours-default by object size",
        "",
        "| object | peak RSS MiB | over imports-only MiB | growth during the transfer MiB |",
        "|---|---|---|---|",
    ]
    for m in sorted(memory, key=lambda m: m["size"]):
        over = f"{m['peak_rss_mib'] - imports_rss:.1f}" if imports_rss is not None else "-"
        lines.append(f"| {human(m['size'])} | {m['peak_rss_mib']:.1f} | {over} | {m['rss_growth_mib']:.1f} |")
    return "\n".join(lines)


def apply_quick(args: argparse.Namespace) -> None:
    """``--quick``: one small round of everything (the smoke test's setting)."""
    args.size, args.rounds = 8 * MiB, 1
    args.throttle_size = min(args.throttle_size, 8 * MiB)
    args.latency_size = min(args.latency_size, 8 * MiB)
    args.many = "20x64KiB"
    args.memory_sizes = ""
    args.long_ms, args.long_sizes, args.long_many, args.long_rounds = "20", "8MiB", "5x64KiB", 1
    args.long_methods += "," + LONG_FORCED_STRIPES.name  # below the auto threshold: stripes must not rot


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        apply_quick(args)
    throttle = args.throttle if args.throttle is not None else True
    latency = args.latency if args.latency is not None else True
    methods = select_methods(args)
    known = {m.name: m for m in (*MAIN_METHODS, *TUNING_METHODS)}
    throttled = [known[name] for name in THROTTLED_METHODS] if throttle else []
    many_known = {m.name: m for m in MANY_METHODS}
    many_methods = [many_known[name.strip()] for name in args.many_methods.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    with bench_environment(args) as bench:
        print(f"sshd on :{bench.sshd.port}, moto on :{bench.moto.port}, workdir {bench.workdir}", flush=True)
        run = Run(args, bench, known)
        run.obj(args.size)
        if problem := rclone_problem(bench):
            run.skipped["rclone"] = problem
            print(f"rclone skipped: {problem}", flush=True)
        run_direct(run, methods)
        run_memory(run)
        if latency:
            run_latency(run)
        if throttled:
            run_throttled(run, throttled)
        run_many_objects(run, many_methods)
        if args.long_link:
            run_long_link(
                run,
                delays_ms=[float(ms) for ms in args.long_ms.split(",") if ms.strip()],
                sizes=_sizes(args.long_sizes),
                many=parse_many(args.long_many),
                methods=long_methods(args.long_methods),
                many_methods=long_many_methods(args.long_many_methods),
            )
        rclone = None if "rclone" in run.skipped else bench.rclone
    return report(
        run, methods, throttled, latency=latency, rclone=rclone, started=started, many_methods=many_methods
    )


def report(
    run: Run,
    methods: Sequence[Method],
    throttled: Sequence[Method],
    *,
    latency: bool,
    rclone: str | None,
    started: float,
    many_methods: Sequence[Method],
) -> int:
    """Summarise the rows, print and write the tables, JSON and chart; return the exit code."""
    args, rows, known = run.args, run.rows, run.known
    imports = [r["peak_rss_mib"] for r in rows if r["method"] == IMPORTS_ONLY.name and "peak_rss_mib" in r]
    imports_rss = max(imports) if imports else None

    def summary_of(label: str, chosen: Sequence[Method]) -> list[dict[str, Any]]:
        return summarize([r for r in rows if r["label"] == label], chosen, rclone, imports_rss)

    direct = summary_of("direct", methods)
    memory = memory_by_size(rows)
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
    many = summarize_many(run.many_rows, many_methods)
    long_link = summarize_long(run.long_rows, imports_rss)
    tables = [format_table(direct, f"{human(args.size)} object, loopback, {args.rounds} round(s)")]
    if imports_rss is not None:
        tables.append(
            f"Import-only process (Airflow, both providers, boto3's S3 model, airflow_s3sftp): "
            f"peak RSS {imports_rss:.1f} MiB."
        )
    if memory:
        tables.append(format_memory(memory, imports_rss))
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
    if long_link:
        tables.append(format_long(long_link))
    for name, reason in run.skipped.items():
        tables.append(f"{name}: skipped, {reason}")
    text = "\n\n".join(tables)
    print("\n" + text + "\n")
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
        "long_link_summary": long_link,
        "skipped": run.skipped,
        "runs": rows,
        "many_runs": run.many_rows,
        "long_link_runs": run.long_rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    stem = f"benchmark-{human(args.size).replace(' ', '')}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"{stem}.md").write_text(text + "\n")
    groups: dict[str, tuple[Sequence[dict[str, Any]], str, str]] = {
        f"{human(args.size)}, loopback": (direct, "mb_per_s", "MB/s (median)"),
        f"{human(args.latency_size)}, +{args.latency_ms:g} ms each way (SFTP)": (lat, "mb_per_s", "MB/s"),
        f"{human(args.throttle_size)}, capped S3": (limited, "mb_per_s", "MB/s"),
    }
    for label in dict.fromkeys(s["label"] for s in many):
        groups[f"{label} objects"] = ([s for s in many if s["label"] == label], "files_per_s", "files/s")
    groups.update(long_chart_groups(long_link))
    print(write_chart(args.out / f"{stem}.png", groups))
    print(f"results: {args.out / stem}.json (+ .md, .png), {result['elapsed_s']}s in all")
    everything = [*direct, *lat, *limited]
    failed = [s["method"] for s in everything if s.get("status") not in ("ok", "not installed")]
    failed += [f"{s['label']}:{s['method']}" for s in many if s.get("status") != "ok"]
    wrong = [s["method"] for s in everything if s.get("sha256_verified") is False]
    wrong += [f"{s['label']}:{s['method']}" for s in many if s.get("all_verified") is False]
    failed += [f"{s['delay_ms']:g}ms:{s['data']}:{s['method']}" for s in long_link if s["status"] != "ok"]
    wrong += [
        f"{s['delay_ms']:g}ms:{s['data']}:{s['method']}" for s in long_link if s.get("verified") is False
    ]
    if failed or wrong:
        print(f"FAILED: {failed} WRONG BYTES: {wrong}", file=sys.stderr)
        return 1
    return 0
