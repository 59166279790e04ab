# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""``python -m demo --serve``: the demo's embedded S3 and SFTP servers on their own, until Ctrl-C.

It prints the ``export`` lines that point Airflow (and the AWS CLI) at them under the connection ids the
README's examples use, so a user can paste them into another shell and try those examples.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shlex
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testservers.embedded_s3 import ACCESS_KEY, REGION, SECRET_KEY, EmbeddedS3Server
from testservers.embedded_sftp import EmbeddedSFTPServer

if TYPE_CHECKING:
    import argparse
    from types import FrameType

SFTP_USER = "partner"
BUCKET = "exports"
SFTP_DIRECTORY = "/inbound"
# The connection ids of the README's examples (aws_default is the operator's default, sftp_partner
# the examples' choice) and sftp_default (the default of the operator and sensor).
AWS_CONN_IDS = ("aws_default",)
SFTP_CONN_IDS = ("sftp_partner", "sftp_default")


def sample_objects(date: str) -> dict[str, bytes]:
    """Return a few small objects laid out as the README's examples expect them, keyed by S3 key."""
    orders = "order_id,amount\n" + "".join(f"{n},{n * 7 % 100}.{n % 100:02d}\n" for n in range(1, 501))
    return {
        f"daily/{date}/orders.csv.gz": gzip.compress(orders.encode(), mtime=0),
        f"daily/{date}/orders.csv": orders.encode(),
        f"daily/{date}/eu/customers.csv": b"customer_id,country\n1,FR\n2,DE\n3,NL\n",
    }


def export_line(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def exports(s3: EmbeddedS3Server, sftp: EmbeddedSFTPServer) -> list[str]:
    """Return the ``export`` lines for the running servers."""
    lines = [
        export_line(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(s3.connection()))
        for conn_id in AWS_CONN_IDS
    ]
    lines += [
        export_line(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(sftp.connection()))
        for conn_id in SFTP_CONN_IDS
    ]
    # For the AWS CLI and plain boto3 (``aws s3 ls s3://exports --recursive``): the same endpoint and keys.
    lines += [
        export_line("AWS_ENDPOINT_URL", s3.endpoint_url),
        export_line("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        export_line("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        export_line("AWS_DEFAULT_REGION", REGION),
    ]
    return lines


def serve(args: argparse.Namespace, say: Any) -> int:
    """Start both servers, seed them, print the exports and serve until SIGINT or SIGTERM; return 0."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="s3sftp-serve-"))
    try:
        with contextlib.ExitStack() as servers:
            s3 = servers.enter_context(EmbeddedS3Server(port=args.s3_port))
            s3.start()
            client = s3.client()
            client.create_bucket(Bucket=BUCKET)
            objects = sample_objects(args.date)
            for key, body in objects.items():
                client.put_object(Bucket=BUCKET, Key=key, Body=body, ChecksumAlgorithm="SHA256")
            say(f"Embedded S3 (moto) on {s3.endpoint_url}: bucket {BUCKET!r} holds")
            for key in objects:
                print(f"      s3://{BUCKET}/{key}", flush=True)

            root = workdir / "sftp-root"
            (root / SFTP_DIRECTORY.lstrip("/")).mkdir(parents=True)
            sftp = servers.enter_context(EmbeddedSFTPServer(username=SFTP_USER, port=args.sftp_port))
            sftp.start(root)
            say(
                f"Embedded SFTP (asyncssh) on 127.0.0.1:{sftp.port}, user {SFTP_USER!r}, serving {root} "
                f"as / (with {SFTP_DIRECTORY}), host key pinned in the connection"
            )
            say("Paste these lines into the shell that runs Airflow (connection ids as in the README):")
            for line in exports(s3, sftp):
                print(line, flush=True)
            say("Serving until Ctrl-C (SIGINT) or SIGTERM")
            while not stop.wait(1.0):
                pass
            say("Stopping the embedded servers")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.keep:
            say(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    say("Stopped")
    return 0
