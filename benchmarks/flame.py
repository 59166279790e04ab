# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Summarize a ``py-spy record -f raw --threads`` profile: ``python -m benchmarks.flame FILE [TOP]``.

Prints the share of samples per thread, the functions with the most samples on top of the
stack (self), and the functions most often anywhere on it (inclusive), lines merged.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

_LINE = re.compile(r"\s*\((?P<file>[^:()]+?)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    match = _LINE.search(raw)
    if not match:
        return raw
    name = raw[: match.start()]
    path = match.group("file")
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})"


def summarize(path: Path, top: int = 25) -> str:
    """Return the report for one raw profile."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = next((f for f in frames if f.startswith("thread (") or f.startswith("process ")), "?")
        thread = re.sub(r"\(\d+\)|[-_]\d+$", "", thread).strip()  # one line per kind of thread
        body = [_frame(f) for f in frames if not (f.startswith("thread (") or f.startswith("process "))]
        if not body:
            continue
        total += count
        threads[thread] += count
        own[body[-1]] += count
        for name in set(body):
            inclusive[name] += count
    out = [f"{path.name}: {total} samples"]
    out.append("threads:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(8)]
    out.append("self:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
