# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Scratch measurement of SFTP write paths that keep writes strictly in offset order.

``python -m benchmarks.write_paths --size 512MiB --rounds 2`` starts an sshd on loopback and
writes the same bytes with each variant, in a fresh process each, alternating by round:

- ``openssh``: ``sftp -b put`` of a local file (the reference);
- ``paramiko-core``: the package's ``PipelinedWriter`` (paramiko ``_async_request``, 32 in flight);
- ``paramiko-lean``: one packet per WRITE built by hand and pushed with ``Channel.sendall`` of a
  memoryview (paramiko's ``_write_all`` re-slices ``bytes`` after every 32 KiB channel send);
- ``paramiko-lean-hash``: the same with sha256 on a second thread, as a delivery needs;
- ``asyncssh-ordered``: asyncssh, WRITE requests sent synchronously in offset order from one
  coroutine with a bounded window (asyncssh's own ``write``/``put`` may issue blocks in parallel);
- ``ssh-pipe``: the lean writer over the OpenSSH ``ssh`` client (``ssh -s ... sftp``) on pipes,
  so the SSH packet layer and its crypto run in C in another process.

Every variant writes 1 MiB chunks as 255 KiB WRITE requests (OpenSSH's limit) in offset order;
the landed file's sha256 is checked. Not a test and not part of the package.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import queue
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
WRITE = 255 * 1024
WINDOW = 32
_NON_GCM = ("aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc")


def _chunks(size: int, pool: bytes) -> Any:
    """Yield ``size`` bytes as 1 MiB chunks (fresh ``bytes`` objects, as an S3 reader hands on)."""
    offset = 0
    while offset < size:
        length = min(MiB, size - offset)
        start = offset % (len(pool) - MiB)
        yield pool[start : start + length]
        offset += length


# -- paramiko -------------------------------------------------------------------------------------------


def _paramiko_sftp(job: dict[str, Any]) -> Any:
    import paramiko

    client = paramiko.SSHClient()
    key_type, key_data = job["host_key"].split()
    client.get_host_keys().add(
        f"[127.0.0.1]:{job['port']}",
        key_type,
        paramiko.PKey.from_type_string(key_type, base64.b64decode(key_data)),
    )
    client.connect(
        "127.0.0.1",
        port=job["port"],
        username=job["user"],
        key_filename=job["key_file"],
        look_for_keys=False,
        allow_agent=False,
        disabled_algorithms={"ciphers": list(_NON_GCM)},
        compress=False,
    )
    import socket

    client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    return client, client.open_sftp()


class LeanWriter:
    """In-order pipelined WRITEs: one hand-built SFTP packet per request, sent as a memoryview."""

    def __init__(self, sftp: Any, handle: bytes, send: Any, window: int = WINDOW) -> None:
        self.sftp, self.handle, self.send, self.window = sftp, handle, send, window
        self.offset = 0
        self.outstanding = 0
        self.error: str | None = None
        self._head = struct.pack(">I", len(handle)) + handle

    def _async_response(self, kind: int, msg: Any, num: int) -> None:
        self.outstanding -= 1
        code = msg.get_int()
        if code != 0 and self.error is None:
            self.error = f"status {code}"

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for begin in range(0, len(view), WRITE):
            piece = view[begin : begin + WRITE]
            while self.outstanding >= self.window:
                self.sftp._read_response()
            with self.sftp._lock:
                num = self.sftp.request_number
                self.sftp.request_number += 1
                self.sftp._expecting[num] = self
            length = len(piece)
            packet = bytearray(
                struct.pack(">IBI", 1 + 4 + len(self._head) + 8 + 4 + length, 6, num)  # 6 = SSH_FXP_WRITE
            )
            packet += self._head
            packet += struct.pack(">QI", self.offset, length)
            packet += piece
            self.send(memoryview(packet))
            self.outstanding += 1
            self.offset += length

    def flush(self) -> None:
        while self.outstanding:
            self.sftp._read_response()
        if self.error:
            raise OSError(self.error)


def paramiko_core(job: dict[str, Any], pool: bytes) -> None:
    from airflow_s3sftp.core.sftp import PipelinedWriter, server_write_size

    client, sftp = _paramiko_sftp(job)
    handle = sftp.open(job["remote"], "wb", bufsize=0)
    writer = PipelinedWriter(sftp, handle, start=0, write_size=server_write_size(sftp), max_in_flight=WINDOW)
    for chunk in _chunks(job["size"], pool):
        writer.write(chunk)
    writer.flush()
    handle.close()
    client.close()


def _lean(sftp: Any, send: Any, job: dict[str, Any], pool: bytes, hashed: bool) -> str | None:
    handle = sftp.open(job["remote"], "wb", bufsize=0)
    writer = LeanWriter(sftp, handle.handle, send)
    digest = hashlib.sha256()
    if hashed:
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

        def read() -> None:
            for chunk in _chunks(job["size"], pool):
                digest.update(chunk)
                chunks.put(chunk)
            chunks.put(None)

        thread = threading.Thread(target=read)
        thread.start()
        while (chunk := chunks.get()) is not None:
            writer.write(chunk)
        thread.join()
    else:
        for chunk in _chunks(job["size"], pool):
            writer.write(chunk)
    writer.flush()
    handle.close()
    return digest.hexdigest() if hashed else None


def paramiko_lean(job: dict[str, Any], pool: bytes, hashed: bool = False) -> str | None:
    client, sftp = _paramiko_sftp(job)
    channel = sftp.get_channel()
    result = _lean(sftp, channel.sendall, job, pool, hashed)
    client.close()
    return result


class _Pipe:
    """Socket-like ends of an ``ssh -s sftp`` child for paramiko's ``SFTPClient``."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._in = process.stdin.fileno()  # type: ignore[union-attr]
        self._out = process.stdout.fileno()  # type: ignore[union-attr]

    def send(self, data: Any) -> int:
        return os.write(self._in, data)

    def sendall(self, data: Any) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._in, view) :]

    def recv(self, n: int) -> bytes:
        return os.read(self._out, n)

    def get_name(self) -> str:
        return "ssh-pipe"

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=10)


def ssh_pipe(job: dict[str, Any], pool: bytes) -> None:
    import paramiko

    process = subprocess.Popen(
        [
            shutil.which("ssh") or "ssh",
            "-p",
            str(job["port"]),
            "-i",
            job["key_file"],
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "Compression=no",
            "-o",
            f"UserKnownHostsFile={job['known_hosts']}",
            "-s",
            f"{job['user']}@127.0.0.1",
            "sftp",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    pipe = _Pipe(process)
    sftp = paramiko.SFTPClient(pipe)  # type: ignore[arg-type]
    _lean(sftp, pipe.sendall, job, pool, hashed=False)
    pipe.close()


# -- asyncssh -------------------------------------------------------------------------------------------


def asyncssh_ordered(job: dict[str, Any], pool: bytes) -> None:
    import asyncio

    import asyncssh
    from asyncssh.packet import String, UInt64
    from asyncssh.sftp import FXP_WRITE

    async def run() -> None:
        async with (
            asyncssh.connect(
                "127.0.0.1",
                port=job["port"],
                username=job["user"],
                client_keys=[job["key_file"]],
                known_hosts=job["known_hosts"],
                encryption_algs=["aes128-gcm@openssh.com"],
                compression_algs=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            handler = sftp._handler
            async with sftp.open(job["remote"], "wb") as remote:
                handle = remote._handle
                loop = asyncio.get_running_loop()
                window: list[asyncio.Future[Any]] = []
                offset = 0
                for chunk in _chunks(job["size"], pool):
                    view = memoryview(chunk)
                    for begin in range(0, len(view), WRITE):
                        piece = bytes(view[begin : begin + WRITE])
                        if len(window) >= WINDOW:
                            kind, packet = await window.pop(0)
                            handler._process_status(packet) if kind == 101 else None
                        waiter = loop.create_future()
                        # Sent right here, synchronously, in offset order.
                        handler._send_request(
                            FXP_WRITE, (String(handle), UInt64(offset), String(piece)), waiter
                        )
                        window.append(waiter)
                        offset += len(piece)
                for waiter in window:
                    kind, packet = await waiter
                    handler._process_status(packet) if kind == 101 else None

    asyncio.run(run())


# -- driver ---------------------------------------------------------------------------------------------

VARIANTS = {
    "paramiko-core": paramiko_core,
    "paramiko-lean": paramiko_lean,
    "paramiko-lean-hash": lambda job, pool: paramiko_lean(job, pool, hashed=True),
    "asyncssh-ordered": asyncssh_ordered,
    "ssh-pipe": ssh_pipe,
}


def child() -> int:
    job = json.loads(os.environ["S3SFTP_WRITE_PATH"])
    pool = Path(job["pool"]).read_bytes()
    if job["variant"] != "openssh":
        import paramiko  # noqa: F401

        if job["variant"].startswith("asyncssh"):
            import asyncssh  # noqa: F401
    before = resource.getrusage(resource.RUSAGE_SELF)
    kids_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    if job["variant"] == "openssh":
        batch = Path(job["pool"]).with_suffix(".batch")
        batch.write_text(f'put "{job["local"]}" "{job["remote"]}"\n')
        subprocess.run(
            [
                "sftp",
                "-b",
                str(batch),
                "-P",
                str(job["port"]),
                "-i",
                job["key_file"],
                "-o",
                "Compression=no",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={job['known_hosts']}",
                f"{job['user']}@127.0.0.1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        VARIANTS[job["variant"]](job, pool)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    cpu += kids.ru_utime - kids_before.ru_utime + kids.ru_stime - kids_before.ru_stime
    print(json.dumps({"seconds": seconds, "cpu_s": cpu}))
    return 0


def main() -> int:
    from testservers.processes import start_sshd

    parser = argparse.ArgumentParser(prog="python -m benchmarks.write_paths")
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="openssh," + ",".join(VARIANTS))
    args = parser.parse_args()
    from benchmarks.harness import parse_size

    size = parse_size(args.size)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sshd = start_sshd()
    work = Path(sshd.workdir) / "write-paths"
    work.mkdir()
    work.chmod(0o755)
    try:
        pool_bytes = os.urandom(64 * MiB)
        pool = work / "pool.bin"
        pool.write_bytes(pool_bytes)
        local = work / "local.bin"
        with local.open("wb") as out:
            for chunk in _chunks(size, pool_bytes):
                out.write(chunk)
        local.chmod(0o644)
        expected = hashlib.sha256(local.read_bytes()).hexdigest()
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
        results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for round_no in range(1, args.rounds + 1):
            for variant in variants:
                remote = sshd.root / f"{variant}-{round_no}.bin"
                job = {
                    "variant": variant,
                    "size": size,
                    "pool": str(pool),
                    "local": str(local),
                    "remote": str(remote),
                    "port": sshd.port,
                    "user": sshd.user,
                    "key_file": str(sshd.key_file),
                    "host_key": sshd.host_key,
                    "known_hosts": str(known),
                }
                env = {**os.environ, "S3SFTP_WRITE_PATH": json.dumps(job)}
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.write_paths", "--child"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    print(f"{variant}: FAILED\n{done.stderr[-1500:]}", flush=True)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                ok = hashlib.sha256(remote.read_bytes()).hexdigest() == expected
                remote.unlink()
                row["mb_per_s"] = size / row["seconds"] / 1e6
                row["cpu_s_per_gib"] = row["cpu_s"] / (size / 1024**3)
                results[variant].append(row)
                print(
                    f"r{round_no} {variant:<20} {row['mb_per_s']:7.1f} MB/s  {row['cpu_s_per_gib']:5.2f} CPU s/GiB"
                    f"  load {os.getloadavg()[0]:.1f}  bytes {'ok' if ok else 'WRONG'}",
                    flush=True,
                )
        print(f"\n| variant ({args.size}, loopback) | MB/s (best) | x OpenSSH | client CPU s/GiB (median) |")
        print("|---|---|---|---|")
        ref = max((r["mb_per_s"] for r in results.get("openssh", [])), default=None)
        for variant, rows in results.items():
            if not rows:
                print(f"| {variant} | failed | | |")
                continue
            best = max(r["mb_per_s"] for r in rows)
            cpu = sorted(r["cpu_s_per_gib"] for r in rows)[len(rows) // 2]
            ratio = f"{best / ref:.2f}" if ref else "-"
            print(f"| {variant} | {best:.1f} | {ratio} | {cpu:.2f} |")
    finally:
        sshd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(child() if "--child" in sys.argv else main())
