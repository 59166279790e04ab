# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Checksum algorithms and the ``"<algorithm>:<hex>"`` notation shared by the operator and the sensor."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import _Hash

SUPPORTED_ALGORITHMS = ("sha256", "sha1", "sha512", "md5", "blake2b")
_HEX = re.compile(r"[0-9a-f]+")


def new_hasher(algorithm: str) -> _Hash:
    """Return a fresh hash object for ``algorithm``, refusing names outside :data:`SUPPORTED_ALGORITHMS`."""
    name = algorithm.lower()
    if name not in SUPPORTED_ALGORITHMS:
        raise ValueError(
            f"Unsupported checksum algorithm {algorithm!r}; choose one of {', '.join(SUPPORTED_ALGORITHMS)}"
        )
    # md5/sha1 only identify content here, they do not protect secrets.
    return hashlib.new(name, usedforsecurity=False) if name in ("md5", "sha1") else hashlib.new(name)


def format_checksum(algorithm: str, hexdigest: str) -> str:
    """Return the ``"<algorithm>:<hex>"`` notation used in XCom and in ``expected_checksum``."""
    return f"{algorithm.lower()}:{hexdigest.lower()}"


def parse_checksum(value: str) -> tuple[str, str]:
    """Split ``"<algorithm>:<hex>"`` into its parts, raising ``ValueError`` that names a bad value."""
    algorithm, sep, hexdigest = value.strip().partition(":")
    algorithm, hexdigest = algorithm.lower(), hexdigest.lower()
    if not sep or not algorithm or not hexdigest:
        raise ValueError(
            f"Checksum {value!r} is not in the form '<algorithm>:<hex>', e.g. 'sha256:9f86d0...'"
        )
    expected_length = new_hasher(algorithm).digest_size * 2
    if not _HEX.fullmatch(hexdigest) or len(hexdigest) != expected_length:
        raise ValueError(
            f"Checksum {value!r} is not a valid {algorithm} digest: expected {expected_length} hex characters"
        )
    return algorithm, hexdigest
