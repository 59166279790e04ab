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
from typing import TYPE_CHECKING, Any

from airflow_s3sftp.core.journal import MAX_JOURNAL_BYTES, Journal, journal_path_for
from airflow_s3sftp.core.paths import JOURNAL_SUFFIX, STRIPE_SUFFIX, TEMP_SUFFIX, leftover_of, short_stem

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

    A temp file of those names idle for ``earlier_tries_after`` is taken too: a live writer keeps
    its file fresh (or gives up within its ``io_timeout``), so it was left by an earlier try of the
    task, e.g. a killed worker, unless a journal names it: then its delivery adopts or removes it.

    :param older_than: seconds without change after which a leftover counts as abandoned
    :param final_paths: the final remote paths of the task
    :param earlier_tries_after: seconds without change after which a temp file of these names counts
        as an earlier try's (None: only ``older_than`` counts)
    """

    def __init__(
        self, older_than: float, final_paths: Iterable[str], *, earlier_tries_after: float | None = None
    ) -> None:
        self._older_than = older_than
        self._earlier_tries_after = earlier_tries_after
        # directory -> {what leftover_of says: final name}, for names not yet matched with a listing
        self._names: dict[str, dict[str, str]] = {}
        # directory -> (server time of the listing, entries shaped like leftovers not yet matched)
        self._listed: dict[str, tuple[float, list[Any]]] = {}
        self._lock = threading.Lock()
        self.include(final_paths)

    def include(self, paths: Iterable[str]) -> None:
        """Also sweep the leftovers of ``paths`` (e.g. a delivery's sidecar and done marker).

        Names are kept only until their directory's leftovers are matched against them, so a task of
        a million objects holds the names of the deliveries under way, not of all it delivered.
        """
        with self._lock:
            for path in paths:
                directory, name = posixpath.split(path)
                listed = self._listed.get(directory)
                if listed is not None and not listed[1]:
                    continue  # the directory was listed and holds no leftover: nothing to match
                names = self._names.setdefault(directory, {})
                names[name] = name
                names[short_stem(name)] = name  # the temp names of a long name use its short form

    def pending(self, directory: str) -> bool:
        """Return True when ``directory`` was not listed yet, or has leftovers and names to match them."""
        with self._lock:
            listed = self._listed.get(directory)
            if listed is None:
                return True
            if not listed[1]:
                self._names.pop(directory, None)
                return False
            return bool(self._names.get(directory))

    def sweep(self, remote: Remote, directory: str, server_now: float) -> list[str]:
        """Remove the abandoned leftovers in ``directory`` of the names included so far, and list them.

        The directory is listed once (the first time it is asked); its entries shaped like our temp
        files are kept and matched with the names included since, each time it is asked again.
        """
        with self._lock:
            listed = self._listed.get(directory)
            names = self._names.pop(directory, {})
        if listed is None:
            try:
                entries = remote.listdir(directory or ".")
            except OSError as err:
                log.warning("Could not list %s to look for abandoned temp files: %s", directory, err)
                with self._lock:
                    self._listed[directory] = (server_now, [])
                return []
            candidates = [
                attrs
                for attrs in entries
                if attrs.st_mtime is not None and leftover_of(attrs.filename) is not None
            ]
            with self._lock:
                listed = self._listed.setdefault(directory, (server_now, candidates))
        listed_at, candidates = listed
        if not names or not candidates:
            return []
        removed: list[str] = []
        journals = {
            posixpath.basename(journal_path_for(posixpath.join(directory, name))) for name in names.values()
        }
        kept = self._named_by_journals(remote, directory, candidates, journals)
        for attrs in list(candidates):
            stem = leftover_of(attrs.filename)
            owner = names.get(stem) if stem is not None else None
            if owner is None:
                continue
            age = listed_at - (attrs.st_mtime or 0)  # candidates all have an mtime
            path = posixpath.join(directory, attrs.filename)
            if age > self._older_than:
                why = f"abandoned {age:.0f}s ago (stale_temp_after={self._older_than:.0f}s)"
            elif (
                self._earlier_tries_after is not None
                and age > self._earlier_tries_after
                # not a backup: it may belong to a publish under way, whatever its mtime says
                and attrs.filename.endswith((TEMP_SUFFIX, STRIPE_SUFFIX, JOURNAL_SUFFIX))
                and attrs.filename
                not in journals | kept  # a journal's files: its delivery adopts or removes them
            ):
                why = (
                    f"left by an earlier try, idle {age:.0f}s (resume_after={self._earlier_tries_after:.0f}s)"
                )
            else:
                continue
            with self._lock:
                if attrs not in candidates:
                    continue  # another thread matched it
                candidates.remove(attrs)
            log.warning("Removing %s (%s bytes), a temp file of %s %s", path, attrs.st_size, owner, why)
            if remote.remove(path):
                removed.append(path)
        return removed

    @staticmethod
    def _named_by_journals(
        remote: Remote, directory: str, entries: list[Any], journals: set[str]
    ) -> set[str]:
        """Return the names of the files that the journals in ``directory`` name (temp files and parts)."""
        named: set[str] = set()
        for attrs in entries:
            if attrs.filename not in journals:
                continue
            try:
                data = remote.read_small(posixpath.join(directory, attrs.filename), MAX_JOURNAL_BYTES)
                journal = Journal.from_bytes(data or b"")
            except (OSError, ValueError):
                continue
            named.update(posixpath.basename(path) for path in (journal.temp, *journal.parts))
        return named
