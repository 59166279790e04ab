# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Soak: hundreds of deliveries with random faults on OpenSSH, ProFTPD and Green End (outside the default run).

    python -m tests.soak --deliveries 300 --seed 1     (as root: the servers log in a test user)

Each delivery streams a random object (64 KiB to 24 MiB) from moto to one of the servers, through a
proxy that counts what the client sends, with one random fault: none, the SSH connection cut at a
random byte, the SSH connection stalled, the S3 stream cut at a random byte, or the worker process
killed with SIGKILL at a random point (then the task's next try runs, a new process, as Airflow's
retry would). After the last try it checks that the final file is exactly the object (or absent
when the task failed) and that no file of ours is left in the directory, and it adds up the bytes
sent again. It prints one JSON line per delivery and a summary; it exits 1 on any wrong file or
leftover.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tests.faults import FaultyProxy
from testservers.processes import conn_env, start_moto, start_proftpd, start_sftp_server, start_sshd

MiB = 1024 * 1024
FAULTS = ["none", "ssh-cut", "ssh-stall", "s3-cut", "kill-9"]
TUNING = {
    "connection_retry_delay": 0.2,
    "connection_retries": 4,
    "s3_retries": 5,
    "io_timeout": 3.0,
    "resume_after": 4.0,  # above io_timeout, as the docs ask
    "range_size": MiB,
    "checkpoint_every": 2 * MiB,
    "chunk_size": 256 * 1024,
}
WORKER = """
import json, logging, sys
from airflow_s3sftp.core.options import DeliveryOptions
from airflow_s3sftp.hooks.s3_sftp import S3ToSFTPHook
logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True, format="%(name)s %(message)s")
aws, sftp, bucket, key, path, tuning = sys.argv[1:7]
options = DeliveryOptions.build(tuning=json.loads(tuning))
try:
    record = S3ToSFTPHook(aws_conn_id=aws, sftp_conn_id=sftp).stream_object(bucket, key, path, options)
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(1)
print(json.dumps(record))
"""


class Counting(FaultyProxy):
    """A FaultyProxy that also counts every byte the client sends, over all its connections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = 0
        self._lock = threading.Lock()

    def _pump(self, src, dst, counted, state, lock, pair) -> None:  # type: ignore[no-untyped-def]
        # ``counted`` marks the client-to-server pump (direction "up"); ``pair`` keeps the raw sockets.
        super()._pump(_Counted(src, self._add) if counted else src, dst, counted, state, lock, pair)

    def _add(self, count: int) -> None:
        with self._lock:
            self.sent += count


class _Counted:
    """A socket's ``recv`` that reports what it read."""

    def __init__(self, sock: Any, add: Any) -> None:
        self._sock, self._add = sock, add

    def recv(self, size: int) -> bytes:
        data: bytes = self._sock.recv(size)
        self._add(len(data))
        return data


def ours(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and ".s3sftp-" in p.name)


def temp_size(directory: Path) -> int:
    sizes = [0]
    for name in ours(directory):
        with contextlib.suppress(FileNotFoundError):
            sizes.append((directory / name).stat().st_size)
    return max(sizes)


def run_worker(env: dict[str, str], args: list[str], kill_when: tuple[Path, int] | None) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_when is not None:
        directory, at = kill_when
        deadline = time.monotonic() + 120
        while child.poll() is None and temp_size(directory) < at and time.monotonic() < deadline:
            time.sleep(0.002)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
            return {"killed": True}
    out, err = child.communicate(timeout=600)
    lines = out.strip().splitlines()
    record = json.loads(lines[-1]) if lines else {"error": f"worker exited {child.returncode} with no record"}
    if "error" in record:
        record["log"] = [line for line in err.splitlines() if "airflow_s3sftp" in line][-12:]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-mib", type=float, default=24.0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    moto = start_moto()
    servers = [start_sshd(), start_proftpd(), start_sftp_server("greenend")]
    s3 = moto.client()
    bucket = f"soak-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    totals: Counter[str] = Counter()
    wrong = leftovers = failed = resent = moved = 0
    started = time.monotonic()
    try:
        for number in range(args.deliveries):
            server = servers[number % len(servers)]
            fault = rng.choice(FAULTS)
            size = rng.randint(64 * 1024, int(args.max_mib * MiB))
            data = rng.randbytes(size)
            key = f"soak/{number}.bin"
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            directory = server.root / f"soak-{number}"
            directory.mkdir()
            os.chown(directory, server.root.stat().st_uid, server.root.stat().st_gid)
            at = rng.randint(1, max(1, size))
            ssh_fault = {"ssh-cut": ("cut", 99 if rng.random() < 0.1 else 1), "ssh-stall": ("stall", 1)}.get(
                fault
            )
            ssh = Counting(
                server.port,
                after=at if ssh_fault else 0,
                mode=ssh_fault[0] if ssh_fault else "cut",
                faulty=ssh_fault[1] if ssh_fault else 0,
            )
            s3_proxy = FaultyProxy(
                moto.port, after=at, direction="down", faulty=1 if fault == "s3-cut" else 0
            )
            env = dict(os.environ)
            for conn_id, conn in (
                ("sftp_soak", server.connection() | {"port": ssh.port}),
                ("aws_soak", moto.connection() | {"extra": {"endpoint_url": f"http://127.0.0.1:{s3_proxy.port}",
                                                             "region_name": "us-east-1"}}),
            ):  # fmt: skip
                name, value = conn_env(conn_id, conn)
                env[name] = value
            target = str(directory / "file.bin")
            worker_args = ["aws_soak", "sftp_soak", bucket, key, target, json.dumps(TUNING)]
            with ssh, s3_proxy:
                tries = [run_worker(env, worker_args, (directory, at) if fault == "kill-9" else None)]
                if tries[-1].get("killed"):
                    time.sleep(TUNING["resume_after"] + 1.5)  # Airflow's retry_delay: the leftovers age
                    tries.append(run_worker(env, worker_args, None))
            landed = directory / "file.bin"
            record = tries[-1]
            ok = "error" not in record
            exact = landed.exists() and landed.read_bytes() == data
            is_wrong = (ok and not exact) or (not ok and landed.exists() and not exact)
            left = ours(directory)
            totals[fault] += 1
            wrong += is_wrong
            leftovers += bool(left)
            failed += not ok
            moved += size
            resent += max(0, ssh.sent - size)
            s3.delete_object(Bucket=bucket, Key=key)  # moto keeps every object in memory
            if not left and not is_wrong:
                for path in directory.iterdir():
                    path.unlink()
                directory.rmdir()
            print(json.dumps({
                "n": number, "server": server.name, "size": size, "fault": fault, "at": at, "tries": len(tries),
                "ok": ok, "exact": exact, "leftovers": left, "sent": ssh.sent, "resumed_from": record.get("resumed_from"),
                "error": record.get("error"), "log": record.get("log"),
            }), flush=True)  # fmt: skip
    finally:
        for server in servers:
            server.stop()
        moto.stop()
    summary = {
        "deliveries": args.deliveries,
        "faults": dict(totals),
        "failed_tasks": failed,
        "wrong_files": wrong,
        "with_leftovers": leftovers,
        "bytes_moved": moved,
        "bytes_sent_again": resent,
        "sent_again_ratio": round(resent / max(moved, 1), 4),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps({"summary": summary}), flush=True)
    return 1 if wrong or leftovers else 0


if __name__ == "__main__":
    sys.exit(main())
