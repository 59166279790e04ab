# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The sweep of abandoned temp files: once per directory per task, only provably ours, only when stale."""

from __future__ import annotations

import logging
import posixpath
import threading
from typing import TYPE_CHECKING

from airflow_s3sftp.core.paths import leftover_of, short_stem

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow_s3sftp.core.remote import Remote

log = logging.getLogger(__name__)


class LeftoverSweeper:
    """Removes temp files that crashed workers left behind, once per directory per task.

    Only files shaped like our temp or backup files of a final name this task delivers are
    candidates, and only when their mtime is more than ``older_than`` seconds behind the
    server's clock, read from the mtime of a file we just created (so client clock skew
    does not matter). A file being written, even slowly, keeps a fresh mtime and is never taken.

    :param older_than: seconds without change after which a leftover counts as abandoned
    :param final_paths: the final remote paths of the task
    """

    def __init__(self, older_than: float, final_paths: Iterable[str]) -> None:
        self._older_than = older_than
        self._names: dict[str, dict[str, str]] = {}  # directory -> {what leftover_of says: final name}
        self._swept: set[str] = set()
        self._lock = threading.Lock()
        self.include(final_paths)

    def include(self, paths: Iterable[str]) -> None:
        """Also sweep the leftovers of ``paths`` (e.g. a delivery's sidecar and done marker)."""
        with self._lock:
            for path in paths:
                directory, name = posixpath.split(path)
                names = self._names.setdefault(directory, {})
                names[name] = name
                names[short_stem(name)] = name  # the temp names of a long name use its short form

    def pending(self, directory: str) -> bool:
        """Return True when ``directory`` has not been swept yet."""
        with self._lock:
            return directory not in self._swept

    def sweep(self, remote: Remote, directory: str, server_now: float) -> list[str]:
        """Remove the abandoned leftovers in ``directory`` (the first time it is asked) and list them."""
        with self._lock:
            if directory in self._swept:
                return []
            self._swept.add(directory)
        with self._lock:
            names = dict(self._names.get(directory, {}))
        removed: list[str] = []
        try:
            entries = remote.listdir(directory or ".")
        except OSError as err:
            log.warning("Could not list %s to look for abandoned temp files: %s", directory, err)
            return removed
        for attrs in entries:
            stem = leftover_of(attrs.filename)
            owner = names.get(stem) if stem is not None else None
            if owner is None or attrs.st_mtime is None:
                continue
            age = server_now - attrs.st_mtime
            if age > self._older_than:
                path = posixpath.join(directory, attrs.filename)
                log.warning(
                    "Removing %s (%s bytes), a temp file of %s abandoned %.0fs ago (stale_temp_after=%.0fs)",
                    path,
                    attrs.st_size,
                    owner,
                    age,
                    self._older_than,
                )
                if remote.remove(path):
                    removed.append(path)
        return removed
