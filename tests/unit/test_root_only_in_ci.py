# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Root-only tests are skipped on a developer's non-root run, but a non-root CI run is refused."""

from __future__ import annotations

from typing import Any

import pytest

import tests.conftest as suite


class Item:
    """The two calls the collection hook makes on a pytest item."""

    def __init__(self, nodeid: str, *, root: bool) -> None:
        self.nodeid, self.root = nodeid, root
        self.added: list[Any] = []

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "requires_root" and self.root else None

    def add_marker(self, marker: Any) -> None:
        self.added.append(marker)


def collect(items: list[Item]) -> None:
    suite.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "IS_ROOT", False)


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_a_non_root_ci_run_that_collects_a_root_only_test_is_refused(not_root, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.UsageError, match=r"CI=true but the suite runs as uid \d+: 1 tests need root"):
        collect([Item("t::plain", root=False), Item("t::secrets_in_logs", root=True)])


def test_a_non_root_ci_run_without_root_only_tests_goes_ahead(not_root, monkeypatch):
    monkeypatch.setenv("CI", "true")
    items = [Item("t::plain", root=False)]
    collect(items)
    assert items[0].added == []


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_a_non_root_run_skips_them_with_a_reason(not_root, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    items = [Item("t::plain", root=False), Item("t::disk_full", root=True)]
    collect(items)
    assert items[0].added == []
    (skip,) = items[1].added
    assert skip.mark.name == "skip" and "needs root" in skip.mark.kwargs["reason"]


def test_ci_run_sets_ci_true() -> None:
    with open(".ci/run") as script:
        assert 'export CI="${CI:-true}"' in script.read()
