# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Run the partner-delivery example DAG end to end on embedded S3 and SFTP servers: ``python -m demo``.

``python -m demo --serve`` starts only the embedded servers and prints the connections for them
(:mod:`demo.serve`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demo.runner import (
    AirflowCLI,
    AirflowCommandError,
    airflow_env,
    child_processes,
    failure_cause,
    group_members,
)
from demo.runner import read_outcome as read_run_outcome

DAG_ID = "example_s3_to_sftp_delivery"
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = REPO / "example_dags"
MiB = 1024 * 1024
SFTP_USER = "partner"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description=(
            "Stream an S3 object to SFTP with the example_s3_to_sftp_delivery DAG (`airflow dags test` "
            "in a throwaway AIRFLOW_HOME) and print what landed where. By default it runs on an embedded "
            "S3 endpoint (moto) and an embedded SFTP server (asyncssh), both on 127.0.0.1."
        ),
    )
    parser.add_argument(
        "--size-mib", type=float, default=32.0, help="size of the sample object in MiB (default: 32)"
    )
    parser.add_argument(
        "--date",
        default=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        help="logical date of the run; the object key is <prefix>/<date>/<file> (default: today, UTC)",
    )
    parser.add_argument(
        "--real",
        "--use-existing-connections",
        dest="real",
        action="store_true",
        help="skip the embedded servers and use the aws/sftp connections already defined "
        "(AIRFLOW_CONN_* variables or a secrets backend)",
    )
    parser.add_argument(
        "--bucket",
        default=os.environ.get("S3SFTP_DELIVERY_BUCKET", "s3sftp-demo"),
        help="bucket of the object (default: s3sftp-demo, or $S3SFTP_DELIVERY_BUCKET)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("S3SFTP_DELIVERY_PREFIX", "daily"),
        help="key prefix (default: daily)",
    )
    parser.add_argument(
        "--file-name", default=None, help="base name of the object (default: sample-<size>MiB.bin)"
    )
    parser.add_argument(
        "--target-dir",
        default=os.environ.get("S3SFTP_DELIVERY_TARGET_DIR", "/inbound/partner"),
        help="absolute directory on the SFTP server (default: /inbound/partner)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only start the embedded S3 and SFTP servers, seed a few small objects, print the "
        "`export AIRFLOW_CONN_...` lines for the README's examples and serve until Ctrl-C",
    )
    parser.add_argument("--s3-port", type=int, default=0, help="with --serve: S3 port (default: a free one)")
    parser.add_argument(
        "--sftp-port", type=int, default=0, help="with --serve: SFTP port (default: a free one)"
    )
    parser.add_argument(
        "--seed",
        action="store_true",
        help="with --real: upload a random sample object of --size-mib first (otherwise it must exist)",
    )
    parser.add_argument(
        "--aws-conn-id", default=os.environ.get("S3SFTP_AWS_CONN_ID", "aws_default"), help="with --real"
    )
    parser.add_argument(
        "--sftp-conn-id", default=os.environ.get("S3SFTP_SFTP_CONN_ID", "sftp_default"), help="with --real"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed for `airflow dags test`"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (Airflow home, SFTP root)"
    )
    parser.add_argument("--verbose", action="store_true", help="show Airflow's output instead of logging it")
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    if not args.size_mib > 0:
        parser.error("--size-mib must be positive")
    try:
        datetime.date.fromisoformat(args.date)
    except ValueError:
        parser.error(f"--date must be YYYY-MM-DD, got {args.date!r}")
    if not args.target_dir.startswith("/"):
        parser.error("--target-dir must be an absolute path")
    if args.serve and args.real:
        parser.error("--serve starts the embedded servers; it does not go with --real")
    if not args.serve and (args.s3_port or args.sftp_port):
        parser.error("--s3-port and --sftp-port only apply to --serve")
    if args.seed and not args.real:
        parser.error("--seed only applies to --real (the embedded S3 is always seeded)")
    if args.file_name is None:
        args.file_name = f"sample-{args.size_mib:g}MiB.bin"
    return args


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def write_sample(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` and return their sha256 (random: compression can't help)."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(MiB, remaining))
            digest.update(block)
            out.write(block)
            remaining -= len(block)
    return digest.hexdigest()


def seed(client: Any, bucket: str, key: str, size: int, workdir: Path, *, create_bucket: bool) -> str:
    """Upload a random object with an S3 SHA-256 checksum (checked by the operator); return its sha256."""
    sample = workdir / "sample.bin"
    digest = write_sample(sample, size)
    if create_bucket:
        client.create_bucket(Bucket=bucket)
    with sample.open("rb") as body:
        client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    sample.unlink()
    return digest


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def connection_env(conn_id: str, conn: dict[str, Any]) -> tuple[str, str]:
    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn)


def check_real_connections(args: argparse.Namespace) -> str | None:
    """Return why the configured connections cannot be used, or None."""
    missing = [
        f"AIRFLOW_CONN_{conn_id.upper()}"
        for conn_id in (args.aws_conn_id, args.sftp_conn_id)
        if f"AIRFLOW_CONN_{conn_id.upper()}" not in os.environ
    ]
    if missing and not os.environ.get("AIRFLOW__SECRETS__BACKEND"):
        return (
            f"--real needs the connections {args.aws_conn_id!r} and {args.sftp_conn_id!r}: set "
            f"{' and '.join(missing)} (JSON or URI), or configure a secrets backend. See docs/demo.md."
        )
    return None


def seed_real(args: argparse.Namespace, key: str, size: int, workdir: Path, airflow_home: Path) -> str:
    """Upload the sample to the real bucket through the Airflow ``aws`` connection."""
    # Importing Airflow here configures its logging: keep it quiet and out of the user's own home.
    os.environ.setdefault("AIRFLOW_HOME", str(airflow_home))
    quiet = "AIRFLOW__LOGGING__LOGGING_LEVEL" not in os.environ
    if quiet:
        os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=args.aws_conn_id).get_conn()
    finally:
        if quiet:
            os.environ.pop("AIRFLOW__LOGGING__LOGGING_LEVEL")
    return seed(client, args.bucket, key, size, workdir, create_bucket=False)


def run_demo(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the servers (unless ``--real``), seed, run the DAG, stop everything; return the summary."""
    from testservers.embedded_s3 import EmbeddedS3Server
    from testservers.embedded_sftp import EmbeddedSFTPServer

    airflow_home = workdir / "airflow-home"
    airflow_home.mkdir()
    log_path = None if args.verbose else workdir / "airflow.log"
    size = int(args.size_mib * MiB)
    key = f"{args.prefix.strip('/')}/{args.date}/{args.file_name}"
    summary: dict[str, Any] = {
        "mode": "real" if args.real else "embedded",
        "dag_id": DAG_ID,
        "logical_date": args.date,
        "s3_uri": f"s3://{args.bucket}/{key}",
        "size_requested": size,
        "workdir": str(workdir),
        "airflow_log": None if log_path is None else str(log_path),
        "sftp_conn_id": args.sftp_conn_id if args.real else "sftp_default",
    }
    extra_env = {
        # The demo's own knobs: confirm quickly (the file is published by an atomic rename).
        "S3SFTP_STABLE_FOR_SECONDS": os.environ.get("S3SFTP_STABLE_FOR_SECONDS", "2"),
        "S3SFTP_POKE_INTERVAL_SECONDS": os.environ.get("S3SFTP_POKE_INTERVAL_SECONDS", "1"),
        "S3SFTP_DELIVERY_RETRIES": os.environ.get("S3SFTP_DELIVERY_RETRIES", "0"),  # fail fast, no 5 min wait
        "S3SFTP_AWS_CONN_ID": args.aws_conn_id,
        "S3SFTP_SFTP_CONN_ID": args.sftp_conn_id,
    }
    cli: AirflowCLI | None = None
    with contextlib.ExitStack() as servers:
        if args.real:
            summary["seeded_sha256"] = None
            if args.seed:
                say(f"Uploading a {args.size_mib:g} MiB sample to s3://{args.bucket}/{key}")
                summary["seeded_sha256"] = seed_real(args, key, size, workdir, airflow_home)
            say(f"Using the configured connections {args.aws_conn_id!r} and {args.sftp_conn_id!r}")
        else:
            args.aws_conn_id, args.sftp_conn_id = "aws_default", "sftp_default"
            extra_env.update(S3SFTP_AWS_CONN_ID="aws_default", S3SFTP_SFTP_CONN_ID="sftp_default")
            s3 = servers.enter_context(EmbeddedS3Server())
            s3_port = s3.start()
            say(f"Embedded S3 (moto) listening on {s3.endpoint_url}")
            sftp_root = workdir / "sftp-root"
            sftp_root.mkdir()
            sftp = servers.enter_context(EmbeddedSFTPServer(username=SFTP_USER))
            sftp_port = sftp.start(sftp_root)
            say(
                f"Embedded SFTP (asyncssh) listening on 127.0.0.1:{sftp_port}, user {SFTP_USER!r}, "
                f"root {sftp_root}, host key {(sftp.host_key or '')[:32]}... (pinned in the connection)"
            )
            summary.update(s3_port=s3_port, sftp_port=sftp_port, sftp_root=str(sftp_root))
            summary["sftp_server"] = f"127.0.0.1:{sftp_port}"
            extra_env.update(
                [
                    connection_env("aws_default", s3.connection()),
                    connection_env("sftp_default", sftp.connection()),
                ]
            )
            say(f"Seeding s3://{args.bucket}/{key} with {size:,} random bytes")
            summary["seeded_sha256"] = seed(s3.client(), args.bucket, key, size, workdir, create_bucket=True)

        env = airflow_env(airflow_home, EXAMPLE_DAGS, extra=extra_env)
        if not args.real:
            # Hermetic: only the connections defined above, never a developer's own.
            for name in [n for n in env if n.startswith("AIRFLOW_CONN_")]:
                if name not in ("AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW_CONN_SFTP_DEFAULT"):
                    env.pop(name)
            env.pop("AIRFLOW__SECRETS__BACKEND", None)
        cli = AirflowCLI(env, log_path)
        say(f"Creating a throwaway Airflow metadata DB in {airflow_home}")
        cli.run("db", "migrate", timeout=300)
        conf = {
            "bucket": args.bucket,
            "prefix": args.prefix.strip("/"),
            "file_name": args.file_name,
            "target_dir": args.target_dir.rstrip("/") or "/",
        }
        say(f"airflow dags test {DAG_ID} {args.date} --conf '{json.dumps(conf)}'")
        started = time.monotonic()
        try:
            cli.run("dags", "test", DAG_ID, args.date, "--conf", json.dumps(conf), timeout=args.timeout)
        except AirflowCommandError as err:
            summary["error"] = str(err)
            summary["cause"] = failure_cause(log_path)
        summary["airflow_seconds"] = round(time.monotonic() - started, 1)
        outcome = read_run_outcome(airflow_home, DAG_ID, log_path)
        summary.update(
            run_id=outcome.run_id,
            state=outcome.state,
            task_states=outcome.task_states,
            result_source=outcome.source,
        )
        report = outcome.xcoms.get("report") or {}
        summary.update(report)
        summary["delivered"] = outcome.xcoms.get("deliver")
        summary["confirmed"] = outcome.xcoms.get("confirm")
        if not args.real and report.get("sftp_path"):
            landed = Path(summary["sftp_root"]) / str(report["sftp_path"]).lstrip("/")
            summary["local_path"] = str(landed)
            if landed.is_file():
                summary["landed_sha256"] = hashlib.sha256(landed.read_bytes()).hexdigest()
    # The servers are stopped here: check that nothing listens and nothing runs any more.
    leftovers = child_processes()
    for pgid in cli.process_groups if cli is not None else []:
        leftovers += [f"{pid} (process group {pgid})" for pid in group_members(pgid)]
    summary["leftover_processes"] = sorted(set(leftovers))
    summary["ports_still_open"] = [
        port for port in (summary.get("s3_port"), summary.get("sftp_port")) if port and port_open(port)
    ]
    return summary


def succeeded(summary: dict[str, Any]) -> bool:
    return (
        summary.get("state") == "success"
        and summary.get("checksum_verified") is True
        and not summary.get("leftover_processes")
        and not summary.get("ports_still_open")
    )


def render(summary: dict[str, Any]) -> str:
    """Return the human-readable summary."""
    lines = ["", f"Summary ({summary['mode']} servers)"]

    def row(label: str, value: object) -> None:
        lines.append(f"  {label:<15} {value}")

    row(
        "DAG run", f"{summary['dag_id']} {summary.get('run_id') or ''} -> {summary.get('state') or 'unknown'}"
    )
    if summary.get("state") != "success":
        row("tasks", ", ".join(f"{t}={s}" for t, s in sorted(summary.get("task_states", {}).items())) or "-")
        if summary.get("error"):
            row("error", summary["error"])
        if summary.get("cause"):
            row("cause", summary["cause"])
    if summary.get("sftp_path"):
        where = f" on {summary.get('sftp_server') or 'connection ' + repr(summary.get('sftp_conn_id'))}"
        row("source", summary["s3_uri"])
        row("landed", f"{summary['sftp_path']}{where}")
        if summary.get("local_path"):
            kept = "kept" if summary.get("kept") else "removed at exit; --keep keeps it"
            row("on disk", f"{summary['local_path']} ({kept})")
        row("bytes", f"{summary['size']:,} ({summary['size'] / MiB:.1f} MiB)")
        row(
            "throughput",
            f"{summary['mb_per_s']:.1f} MB/s ({summary['seconds']:.2f} s S3 -> SFTP)"
            + (f", published with {summary['published_with']}" if summary.get("published_with") else ""),
        )
        row("checksum", summary["checksum"])
        delivered = summary.get("delivered") or {}
        if delivered.get("source_check"):
            row("source check", f"{delivered['source_check']} matched the bytes read")
        if summary.get("checksum_verified"):
            stable = summary.get("stable_seconds")
            polls = (summary.get("confirmed") or {}).get("polls")
            detail = f" (stable {stable:.1f} s, {polls} polls)" if stable is not None and polls else ""
            row("sensor", f"checksum verified: the file on the server hashes to the same sha256{detail}")
        else:
            row("sensor", f"checksum NOT verified (sensor saw {summary.get('sensor_checksum')})")
        seeded, landed = summary.get("seeded_sha256"), summary.get("landed_sha256")
        if seeded and landed:
            row(
                "end to end", "landed file == seeded object" if seeded == landed else "MISMATCH with the seed"
            )
    row("airflow", f"`airflow dags test` took {summary.get('airflow_seconds', 0):.1f} s")
    if summary["mode"] == "embedded":
        if summary.get("leftover_processes") or summary.get("ports_still_open"):
            row("cleanup", f"LEFT RUNNING: {summary['leftover_processes']} {summary['ports_still_open']}")
        else:
            row("cleanup", "embedded S3 and SFTP servers stopped; no process left running")
    elif summary.get("leftover_processes"):
        row("cleanup", f"LEFT RUNNING: {summary['leftover_processes']}")
    if not succeeded(summary) and summary.get("airflow_log"):
        row("airflow log", summary["airflow_log"])
    return "\n".join(lines)


def tail(path: str | None, lines: int = 15) -> str:
    if not path or not Path(path).exists():
        return ""
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for noisy in ("asyncssh", "werkzeug", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.serve:
        from demo.serve import serve

        return serve(args, say)
    if args.real:
        problem = check_real_connections(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="s3sftp-demo-"))
    summary: dict[str, Any] = {}
    keep = args.keep
    try:
        summary = run_demo(args, workdir)
        keep = keep or not succeeded(summary)  # leave the evidence of a failure for inspection
    except KeyboardInterrupt:
        print("\ninterrupted: servers and Airflow stopped", file=sys.stderr)
        return 130
    except AirflowCommandError as err:
        keep = True
        print(f"error: {err}\n{tail(str(err.log_path) if err.log_path else None)}", file=sys.stderr)
        print(f"(work directory kept: {workdir})", file=sys.stderr)
        return 1
    finally:
        if keep:
            summary["kept"] = True
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    print(render(summary))
    print(f"  {'total':<15} {summary['total_seconds']:.1f} s")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
    if not succeeded(summary):
        if summary.get("airflow_log"):
            print(
                f"\nLast lines of {summary['airflow_log']}:\n{tail(summary['airflow_log'])}", file=sys.stderr
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
