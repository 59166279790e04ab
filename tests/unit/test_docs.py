# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The README's parameter tables and the docstrings' ``:param:`` lines agree with the real signatures."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import conf

from airflow_s3sftp.core.delivery import DeliveryRecord
from airflow_s3sftp.core.options import TUNING, DeliveryOptions
from airflow_s3sftp.operators.s3_to_sftp import S3ToSFTPStreamOperator
from airflow_s3sftp.sensors.sftp import SFTPFileStableSensor

README = Path(__file__).resolve().parents[2] / "README.md"

# README section heading -> the class its parameter table documents.
SECTIONS = {
    "## Delivering: `S3ToSFTPStreamOperator`": S3ToSFTPStreamOperator,
    "## Waiting for a complete file: `SFTPFileStableSensor`": SFTPFileStableSensor,
}

REQUIRED = object()  # a documented "required": the parameter has no default
SIZE_UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


@dataclass(frozen=True)
class Row:
    """One parameter as a README table documents it."""

    name: str
    default: str
    templated: bool
    line: str


def parse_default(text: str) -> Any:
    """Return the value a README default cell stands for (``REQUIRED`` for "required")."""
    text = text.strip().strip("`").strip()
    if text == "required":
        return REQUIRED
    config = re.fullmatch(r"\[(\w+)\] (\w+)", text)
    if config:  # a default read from Airflow's configuration, e.g. "[operators] default_deferrable"
        return conf.getboolean(config[1], config[2], fallback=False)
    size = re.fullmatch(r"(\d+) (KiB|MiB|GiB)", text)
    if size:
        return int(size[1]) * SIZE_UNITS[size[2]]
    try:
        return ast.literal_eval(text)  # None, True, False, numbers (0o644, 1.0), "quoted strings"
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_][\w.-]*", text):
            return text  # an unquoted name, e.g. sftp_default
        raise AssertionError(f"README default {text!r} is not a value this test can read") from None


def table_rows(section: str, header_start: str = "| parameter |") -> list[Row]:
    """Return the rows of the first table under ``section`` whose header starts with ``header_start``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(section)
    header = next(i for i in range(start, len(lines)) if lines[i].lower().startswith(header_start))
    rows: list[Row] = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"expected 3 cells (parameter, default, meaning): {line}"
        names = re.findall(r"`(\w+)`", cells[0])
        defaults = cells[1].split(",")
        assert names, f"no parameter name in {line}"
        if len(defaults) == 1:  # one default shared by every parameter of the row
            defaults *= len(names)
        assert len(defaults) == len(names), f"{len(names)} parameters but {len(defaults)} defaults: {line}"
        templated = "(templated)" in cells[0]
        rows += [Row(name, default, templated, line) for name, default in zip(names, defaults, strict=True)]
    assert rows, f"no parameter table under {section!r}"
    return rows


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Return the named ``__init__`` parameters of ``cls`` (not ``self``, not ``**kwargs``)."""
    return {
        name: parameter
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }


def same_default(documented: Any, real: Any) -> bool:
    """Compare values by type family: ``1`` documents ``1.0``, but ``1`` never documents ``True``."""
    if isinstance(documented, bool) or isinstance(real, bool) or documented is None or real is None:
        return documented is real
    if isinstance(documented, int | float) and isinstance(real, int | float):
        return float(documented) == float(real)
    return bool(documented == real)


@pytest.mark.parametrize(
    ("section", "cls"), SECTIONS.items(), ids=[cls.__name__ for cls in SECTIONS.values()]
)
def test_readme_table_matches_the_signature(section: str, cls: type) -> None:
    rows = table_rows(section)
    real = init_parameters(cls)
    documented = [row.name for row in rows]
    assert len(documented) == len(set(documented)), f"documented twice: {documented}"
    assert not set(documented) - set(real), f"README documents parameters {cls.__name__} does not have"
    assert not set(real) - set(documented), f"README does not document {sorted(set(real) - set(documented))}"
    for row in rows:
        expected = parse_default(row.default)
        default = real[row.name].default
        if expected is REQUIRED:
            assert default is inspect.Parameter.empty, f"{row.name} has a default ({default!r}): {row.line}"
        else:
            assert default is not inspect.Parameter.empty, f"{row.name} is required: {row.line}"
            assert same_default(expected, default), f"{row.name} defaults to {default!r}: {row.line}"


@pytest.mark.parametrize(
    ("section", "cls"), SECTIONS.items(), ids=[cls.__name__ for cls in SECTIONS.values()]
)
def test_readme_marks_exactly_the_template_fields(section: str, cls: type) -> None:
    marked = {row.name for row in table_rows(section) if row.templated}
    assert marked == set(cls.template_fields)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", SECTIONS.values(), ids=[cls.__name__ for cls in SECTIONS.values()])
def test_docstring_has_one_param_line_per_parameter(cls: type) -> None:
    documented = re.findall(r":param (\w+):", cls.__doc__ or "")
    assert sorted(documented) == sorted(set(documented)), f"a :param: appears twice: {documented}"
    assert set(documented) == set(init_parameters(cls))


@pytest.mark.parametrize("cls", SECTIONS.values(), ids=[cls.__name__ for cls in SECTIONS.values()])
def test_docstring_marks_exactly_the_template_fields(cls: type) -> None:
    params = re.split(r"\n\s*:param ", cls.__doc__ or "")[1:]
    marked = {text.split(":", 1)[0] for text in params if "(templated)" in text}
    assert marked == set(cls.template_fields)  # type: ignore[attr-defined]


def test_readme_tuning_table_lists_every_tuning_key_with_its_default() -> None:
    rows = table_rows("## Delivering: `S3ToSFTPStreamOperator`", "| `tuning` key |")
    documented = [row.name for row in rows]
    assert sorted(documented) == sorted(TUNING), "the README's tuning table and core.options.TUNING differ"
    defaults = DeliveryOptions()
    for row in rows:
        group, name = TUNING[row.name]
        real = getattr(getattr(defaults, group), name)
        assert same_default(parse_default(row.default), real), f"{row.name} defaults to {real!r}: {row.line}"


RECORD_KEYS = [field.name for field in dataclasses.fields(DeliveryRecord)]


def test_operator_docstring_names_every_record_key() -> None:
    named = re.findall(r"``(\w+)``", (S3ToSFTPStreamOperator.__doc__ or "").split(":param ")[0])
    assert not set(RECORD_KEYS) - set(named), f"missing: {sorted(set(RECORD_KEYS) - set(named))}"


def test_readme_record_example_has_the_record_keys() -> None:
    text = README.read_text(encoding="utf-8")
    example = re.search(r"```json\n(\{\"s3_uri\".*?\})\n```", text, re.DOTALL)
    assert example, "the README's XCom record example is missing"
    assert list(json.loads(example[1])) == RECORD_KEYS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("`None`", None),
        ("`True`", True),
        ("False", False),
        ("4", 4),
        ("1.0", 1.0),
        ("`0o644`", 0o644),
        ('`"sha256"`', "sha256"),
        ("`sftp_default`", "sftp_default"),
        ("1 MiB", 1024**2),
        (" 256 KiB", 256 * 1024),
        ("required", REQUIRED),
    ],
)
def test_parse_default(text: str, value: Any) -> None:
    assert parse_default(text) == value or parse_default(text) is value


def test_parse_default_refuses_what_it_cannot_read() -> None:
    with pytest.raises(AssertionError, match="not a value this test can read"):
        parse_default("n/a")


@pytest.mark.parametrize(
    ("documented", "real", "same"),
    [(1, 1.0, True), (86400, 86400.0, True), (1, True, False), (0, None, False), ("size", "size", True)],
)
def test_same_default(documented: Any, real: Any, same: bool) -> None:
    assert same_default(documented, real) is same
