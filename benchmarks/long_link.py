# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The long-link scenario: SFTP through a proxy holding every byte ``delay`` each way, S3 on loopback.

An in-region bucket and a partner across an ocean: one big object and many small ones, ours (auto
striping over several SFTP channels, and ``channels=1``) against OpenSSH ``sftp`` and rclone on the
same proxy, side by side in one run. The proxy counts the TCP connections each method opened (SSH
connections: every method's SFTP goes through it, S3 does not). One 64 KiB object delivered alone
shows the sequential round trips of one small delivery (SFTP requests in order, ``+`` where one had
to wait for the previous reply).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from benchmarks.harness import GiB, KiB, Method, MiB, human, run_one
from benchmarks.scenarios import create_dataset, run_many
from benchmarks.throttle import ThrottleProxy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.runner import Run

LONG_BIG_METHODS = (
    Method("openssh-sftp", "openssh-sftp", note="sftp -b put of a local copy, one connection"),
    Method("ours", "ours", note="defaults: auto striping over several SFTP channels"),
    Method("ours-1-channel", "ours", {"op": {"tuning": {"channels": 1}}}, "channels=1"),
    Method("rclone", "rclone", note="rclone copyto s3 -> sftp, defaults"),
)
#: ``--quick`` adds this one: the quick sizes are below the auto threshold, and striping must not rot.
LONG_FORCED_STRIPES = Method(
    "ours-4-channels",
    "ours",
    {"op": {"tuning": {"channels": 4, "stripe_size": MiB}}},
    "channels=4, 1 MiB stripes",
)
#: Measurement variants (``--long-methods``): what the striping defaults are made of.
LONG_VARIANTS = (
    LONG_FORCED_STRIPES,
    *(
        Method(
            f"ours-8ch-{n}MiB",
            "ours",
            {"op": {"tuning": {"channels": 8, "stripe_size": n * MiB}}},
            f"8 x {n} MiB",
        )
        for n in (1, 2, 4, 8)
    ),
    *(
        Method(
            f"ours-4ch-{n}MiB",
            "ours",
            {"op": {"tuning": {"channels": 4, "stripe_size": n * MiB}}},
            f"4 x {n} MiB",
        )
        for n in (2, 8)
    ),
    Method(
        "ours-16ch-2MiB", "ours", {"op": {"tuning": {"channels": 16, "stripe_size": 2 * MiB}}}, "16 x 2 MiB"
    ),
)
LONG_DEFAULT = "openssh-sftp,ours,ours-1-channel,rclone"
LONG_MANY_METHODS = (
    Method("openssh-sftp", "many-openssh", note="sftp -b: one put per file over one connection"),
    Method("ours", "many-ours", note="s3_prefix, defaults (max_concurrency=16, max_connections=4)"),
    Method("ours-1-channel", "many-ours", {"op": {"tuning": {"channels": 1}}}, "channels=1"),
    Method("rclone", "many-rclone", note="rclone copy s3 -> sftp, defaults"),
)
#: Measurement variants (``--long-many-methods``): objects in flight over at most so many SSH connections.
LONG_MANY_VARIANTS = tuple(
    Method(
        f"ours-{n}-on-{c}",
        "many-ours",
        {"op": {"max_concurrency": n, "max_connections": c}},
        f"max_concurrency={n}, max_connections={c}",
    )
    for n, c in ((4, 4), (8, 4), (16, 4), (24, 4), (32, 4), (8, 1), (16, 2), (40, 4))
)
LONG_MANY_DEFAULT = ",".join(m.name for m in LONG_MANY_METHODS)
ONE_SMALL = Method("ours-one-64KiB", "ours", note="one 64 KiB object alone: its sequential round trips")
#: Bytes the proxy may hold per direction (in 64 KiB units): far above any window in flight.
PROXY_DEPTH = 8192


def long_methods(names: str) -> list[Method]:
    """Return the big-object methods named (comma-separated) from the long-link ones and their variants."""
    known = {m.name: m for m in (*LONG_BIG_METHODS, *LONG_VARIANTS)}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if unknown := [name for name in wanted if name not in known]:
        raise SystemExit(f"unknown long-link methods {unknown}; choose from {', '.join(known)}")
    return [known[name] for name in wanted]


def long_many_methods(names: str) -> list[Method]:
    """Return the small-object methods named (comma-separated) from the long-link ones and their variants."""
    known = {m.name: m for m in (*LONG_MANY_METHODS, *LONG_MANY_VARIANTS)}
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if unknown := [name for name in wanted if name not in known]:
        raise SystemExit(f"unknown long-link small-object methods {unknown}; choose from {', '.join(known)}")
    return [known[name] for name in wanted]


def run_long_link(
    run: Run,
    *,
    delays_ms: Sequence[float],
    sizes: Sequence[int],
    many: Sequence[tuple[int, int]],
    methods: Sequence[Method],
    many_methods: Sequence[Method] = LONG_MANY_METHODS,
) -> None:
    """Every long-link method on the big objects and on each small-object set, per delay, in rounds.

    A delay of 0 goes straight to sshd (loopback, no proxy: its connections are not counted).
    """
    args, bench = run.args, run.bench
    bigs = [run.obj(size) for size in sizes]
    small = run.obj(64 * KiB)
    datasets = [create_dataset(bench, count, each) for count, each in many]
    for delay in delays_ms:
        label = f"long-{delay:g}ms"
        with ThrottleProxy(bench.sshd.port, rate=0, latency=delay / 1000, depth=PROXY_DEPTH) as proxy:
            port = proxy.port if delay else None
            for round_no in range(1, args.long_rounds + 1):
                before = proxy.connections
                _keep(
                    run,
                    proxy,
                    delay,
                    run_one(
                        bench,
                        ONE_SMALL,
                        small,
                        round_no=round_no,
                        package_root=args.package_root,
                        s3_endpoint=bench.moto.endpoint_url,
                        timeout=120,
                        label=label,
                        sftp_port=port,
                    ),
                    before,
                    data="1x64KiB",
                )
                for big, method in ((big, m) for big in bigs for m in methods):
                    if method.kind == "rclone" and "rclone" in run.skipped:
                        continue
                    before = proxy.connections
                    _keep(
                        run,
                        proxy,
                        delay,
                        run_one(
                            bench,
                            method,
                            big,
                            round_no=round_no,
                            package_root=args.package_root,
                            s3_endpoint=bench.moto.endpoint_url,
                            # one channel moves about 2 MiB per round trip
                            timeout=180 + big["size"] / (2 * MiB) * (2 * delay / 1000) * 2,
                            label=label,
                            sftp_port=port,
                        ),
                        before,
                        data=human(big["size"]).replace(" ", ""),
                    )
                for dataset in datasets:
                    for method in many_methods:
                        if method.kind == "many-rclone" and "rclone" in run.skipped:
                            continue
                        before = proxy.connections
                        row = run_many(
                            bench,
                            method,
                            dataset,
                            round_no=round_no,
                            package_root=args.package_root,
                            s3_endpoint=bench.moto.endpoint_url,
                            limit=0,
                            sftp_port=port,
                            timeout=600 + dataset["count"] * 8 * delay / 1000 * 2,
                        )
                        _keep(run, proxy, delay, row, before, data=dataset["label"])


def _keep(
    run: Run, proxy: ThrottleProxy, delay: float, row: dict[str, Any], before: int, *, data: str
) -> None:
    """Keep ``row`` with the SSH connections its method opened through the proxy."""
    row.update(ssh_connections=proxy.connections - before if delay else None, delay_ms=delay, data=data)
    run.long_rows.append(row)


def summarize_long(rows: Sequence[dict[str, Any]], imports_rss: float | None) -> list[dict[str, Any]]:
    """Return one line per (delay, data, method): medians over rounds, the most connections seen."""
    summary: list[dict[str, Any]] = []
    keys = dict.fromkeys((r["delay_ms"], r["data"], r["method"]) for r in rows)
    for delay, data, name in keys:
        runs = [r for r in rows if (r["delay_ms"], r["data"], r["method"]) == (delay, data, name)]
        good = [r for r in runs if "error" not in r and r.get("seconds")]
        line: dict[str, Any] = {"delay_ms": delay, "data": data, "method": name, "rounds": len(good)}
        if not good:
            line.update(status="failed", error=runs[0].get("error", "")[-300:])
            summary.append(line)
            continue
        files = good[0].get("files", 1)
        total = files * good[0]["size"]
        seconds = statistics.median(r["seconds"] for r in good)
        external = name in ("openssh-sftp", "rclone")
        client_cpu = statistics.median(r["cpu_s"] + r.get("children_cpu_s", 0.0) for r in good)
        rss = max(r["children_peak_rss_mib"] if external else r["peak_rss_mib"] for r in good)
        verified = all(r.get("sha256_verified", r.get("all_verified")) is True for r in runs)
        line.update(
            status="ok" if len(good) == len(runs) else f"{len(runs) - len(good)} of {len(runs)} failed",
            files=files,
            bytes=total,
            seconds=round(seconds, 2),
            mb_per_s=round(total / seconds / 1e6, 2),
            files_per_s=round(files / seconds, 2),
            ssh_connections=max(r["ssh_connections"] for r in good) if delay else None,
            cpu_s_per_gib=round(client_cpu / (total / GiB), 2),
            sshd_cpu_s_per_gib=round(statistics.median(r["sshd_cpu_s"] for r in good) / (total / GiB), 2),
            peak_rss_mib=rss,
            rss_over_imports_mib=None if external or imports_rss is None else round(rss - imports_rss, 1),
            load_1m=[r["loadavg_1m"][0] for r in good],
            verified=verified,
        )
        counts = [r["sftp"] for r in good if r.get("sftp")]
        if counts:
            line["sftp_round_trips_per_file"] = round(counts[0]["round_trips"] / files, 2)
            line["copy_data_requests"] = counts[0]["requests"].get("extended:copy-data", 0)
            if name == ONE_SMALL.name and counts[0].get("trace"):
                line["trace"] = counts[0]["trace"]
        summary.append(line)
    return summary


def format_long(summary: Sequence[dict[str, Any]]) -> str:
    """Return one Markdown table per delay; ``ours x this`` is ours (defaults) over each method."""
    tables = []
    for delay in dict.fromkeys(s["delay_ms"] for s in summary):
        lines = [
            (
                f"### Long link: SFTP through a proxy holding bytes {delay:g} ms each way "
                f"({2 * delay:g} ms round trip), S3 on loopback"
                if delay
                else "### Long-link methods on loopback (no proxy)"
            ),
            "",
            "| data | method | SSH connections | MB/s | files/s | ours x this | client CPU s/GiB "
            "| sshd CPU s/GiB | peak RSS MiB (over imports-only) | stripes joined (copy-data) "
            "| SFTP round trips/file | load 1m | bytes verified |",
            "|" + "---|" * 13,
        ]
        for data in dict.fromkeys(s["data"] for s in summary if s["delay_ms"] == delay):
            rows = [s for s in summary if s["delay_ms"] == delay and s["data"] == data]
            ours = next((s for s in rows if s["method"] == "ours" and "seconds" in s), None)
            for s in rows:
                if "seconds" not in s:
                    lines.append(f"| {data} | {s['method']} | {s['status']} |" + " |" * 10)
                    continue
                ratio = f"{s['seconds'] / ours['seconds']:.2f}" if ours else "-"
                over = "" if s["rss_over_imports_mib"] is None else f" ({s['rss_over_imports_mib']:+.1f})"
                lines.append(
                    f"| {data} | {s['method']} | {s['ssh_connections'] or '-'} | {s['mb_per_s']:.1f} "
                    f"| {s['files_per_s']:.1f} | {ratio} | {s['cpu_s_per_gib']:.2f} "
                    f"| {s['sshd_cpu_s_per_gib']:.2f} | {s['peak_rss_mib']:.1f}{over} "
                    f"| {s.get('copy_data_requests', '-')} | {s.get('sftp_round_trips_per_file', '-')} "
                    f"| {', '.join(f'{x:.1f}' for x in s['load_1m'])} | {'yes' if s['verified'] else 'NO'} |"
                )
        for s in summary:
            if s["delay_ms"] == delay and s.get("trace"):
                trips = s["sftp_round_trips_per_file"]
                lines += [
                    "",
                    f"One 64 KiB object alone: {s['seconds']:.2f} s"
                    + (f" = {s['seconds'] / (2 * delay / 1000):.1f} round trips of the link" if delay else "")
                    + " in all (SSH connection and login included); "
                    + f"{trips:g} sequential SFTP round trips (`+` starts one): `{' '.join(s['trace'])}`",
                ]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def long_chart_groups(summary: Sequence[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], str, str]]:
    """Return the chart panels of the long-link scenario: MB/s of the big object, files/s of the sets."""
    groups: dict[str, tuple[list[dict[str, Any]], str, str]] = {}
    for delay in dict.fromkeys(s["delay_ms"] for s in summary):
        for data in dict.fromkeys(s["data"] for s in summary if s["delay_ms"] == delay):
            if data == "1x64KiB":
                continue
            rows = [
                {**s, "method": f"{s['method']} ({s['ssh_connections'] or '-'} conn)"}
                for s in summary
                if s["delay_ms"] == delay and s["data"] == data and "seconds" in s
            ]
            many = rows and rows[0]["files"] > 1
            groups[f"{data}, {2 * delay:g} ms round trip (SFTP)"] = (
                rows,
                "files_per_s" if many else "mb_per_s",
                "files/s" if many else "MB/s",
            )
    return groups
