# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The shared argument checks: types, ranges, NaN, NUL and '/', each error naming the parameter."""

from __future__ import annotations

import math

import pytest

from airflow_s3sftp.core import validate
from airflow_s3sftp.exceptions import ArgumentTypeError


@pytest.mark.parametrize(
    ("check", "value", "error", "message"),
    [
        (
            lambda v: validate.flag("f", v),
            "False",
            ArgumentTypeError,
            r"f must be True or False, got 'False' \(str\)",
        ),
        (lambda v: validate.flag("f", v), 0, ArgumentTypeError, r"f must be True or False"),
        (lambda v: validate.integer("n", v, minimum=1), True, ArgumentTypeError, r"n must be an integer"),
        (lambda v: validate.integer("n", v, minimum=1), 0, ValueError, r"n must be at least 1"),
        (lambda v: validate.number("s", v), math.nan, ValueError, r"s must be a finite number"),
        (lambda v: validate.number("s", v), -math.inf, ValueError, r"s must be a finite number"),
        (lambda v: validate.number("s", v), False, ArgumentTypeError, r"s must be a number"),
        (lambda v: validate.number("s", v, positive=True), 0, ValueError, r"s must be positive"),
        (
            lambda v: validate.file_mode("m", v),
            "644",
            ArgumentTypeError,
            r"m must be an integer such as 0o644",
        ),
        (lambda v: validate.file_mode("m", v), -1, ValueError, r"m must be permission bits"),
        (lambda v: validate.name_part("d", v), ".a/b", ValueError, r"d .* must not contain '/'"),
        (lambda v: validate.name_part("d", v), ".a\x00", ValueError, r"d must not contain a NUL byte"),
        (lambda v: validate.absolute_path("p", v), "in/x", ValueError, r"p must be an absolute path"),
        (lambda v: validate.algorithm("c", v), "", ValueError, r"c must name a digest algorithm"),
        (lambda v: validate.algorithm("c", v), "crc7", ValueError, r"c: "),
        (
            lambda v: validate.string_list("k", v),
            "['a']",
            ArgumentTypeError,
            r"k must be a list of strings, got a string",
        ),
        (
            lambda v: validate.string_list("k", v),
            ["a", 1],
            ArgumentTypeError,
            r"an item of k must be a string",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(check, value, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        check(value)


def test_a_type_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="f must be True or False"):
        validate.flag("f", "yes")
    with pytest.raises(TypeError, match="f must be True or False"):
        validate.flag("f", "yes")


def test_good_values_come_back() -> None:
    assert validate.flag("f", None, optional=True) is None
    assert validate.integer("n", 3, minimum=1) == 3
    assert validate.number("s", 0) == 0 and validate.number("s", 2.5, positive=True) == 2.5
    assert validate.file_mode("m", 0o644) == 0o644 and validate.file_mode("m", None) is None
    assert validate.algorithm("c", "SHA256") == "SHA256" and validate.algorithm("c", None) is None
    assert validate.string_list("k", ("a", "b")) == ["a", "b"]
