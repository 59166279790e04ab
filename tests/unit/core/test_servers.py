# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""profile_for: which server, and what strict_order=None means there, from banner and extensions."""

from __future__ import annotations

import struct

import pytest

from airflow_s3sftp.core.servers import profile_for


def vendor_id(vendor: str, product: str) -> bytes:
    return b"".join(struct.pack(">I", len(s)) + s for s in (vendor.encode(), product.encode(), b"2")) + bytes(
        8
    )


OPENSSH = {"posix-rename@openssh.com": b"1", "fsync@openssh.com": b"1", "limits@openssh.com": b"1"}


@pytest.mark.parametrize(
    ("banner", "extensions", "name", "strict"),
    [
        ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10", OPENSSH, "openssh", False),
        # Green End runs under OpenSSH's sshd: the vendor-id extension tells it apart.
        (
            "SSH-2.0-OpenSSH_9.2p1",
            {"vendor-id": vendor_id("Green End", "Green End SFTP Server")},
            "greenend",
            True,
        ),
        ("SSH-2.0-OpenSSH_9.2p1", {"symlink-order@rjk.greenend.org.uk": b""}, "greenend", True),
        ("SSH-2.0-mod_sftp", {"check-file-name": b""}, "proftpd", False),
        ("SSH-2.0-AsyncSSH_2.24.1", {}, "asyncssh", False),
        ("SSH-2.0-SomeVendor_1.0", OPENSSH, "unknown", True),
    ],
)
def test_profile_for(banner, extensions, name, strict):
    profile = profile_for(banner, extensions)
    assert profile.name == name
    assert profile.pipelined_writes_in_order is not strict
