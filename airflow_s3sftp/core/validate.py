# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Argument checks shared by the operator, the sensor and the triggers; each error names the parameter.

``bool`` is never a number, a string is never a flag, a mode or a number, NaN and infinity are refused
where a count of seconds or bytes is expected. Every function returns the value it accepted, so a
caller can validate and assign in one line.
"""

from __future__ import annotations

import math
from typing import Any

from airflow_s3sftp.core.checksums import new_hasher
from airflow_s3sftp.exceptions import ArgumentTypeError


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def flag(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """Return ``value`` if it is a ``bool`` (or ``None`` when ``optional``); a string is not a flag."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        allowed = "True, False or None" if optional else "True or False"
        raise ArgumentTypeError(f"{name} must be {allowed}, got {_shown(value)}")
    return value


def integer(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """Return ``value`` if it is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an integer, got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return value


def number(
    name: str, value: Any, *, minimum: float = 0.0, positive: bool = False, optional: bool = False
) -> float | None:
    """Return ``value`` if it is a finite ``int`` or ``float`` (not a ``bool``) in range."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, got {_shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {value!r}")
    return value


def file_mode(name: str, value: Any) -> int | None:
    """Return permission bits (``0o644``): an ``int`` from 0 to ``0o7777``, or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(
            f"{name} must be an integer such as 0o644 (not the string '644'), got {_shown(value)}"
        )
    if not 0 <= value <= 0o7777:
        raise ValueError(f"{name} must be permission bits from 0 to 0o7777, got {oct(value)}")
    return value


def string(name: str, value: Any, *, optional: bool = False) -> str | None:
    """Return ``value`` if it is a string (or ``None`` when ``optional``), whatever it holds."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, got {_shown(value)}")
    return value


def text(name: str, value: Any, *, optional: bool = False, empty: bool = False) -> str | None:
    """Return ``value`` if it is a string without NUL bytes (and not empty unless ``empty``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, got {_shown(value)}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain a NUL byte, got {value!r}")
    if not empty and not value.strip():
        raise ValueError(f"{name} must not be empty, got {value!r}")
    return value


def name_part(name: str, value: Any, *, optional: bool = False) -> str | None:
    """Return ``value`` if it can be part of a file name: a non-empty string without ``/`` or NUL."""
    checked = text(name, value, optional=optional)
    if checked is not None and ("/" in checked or "\\" in checked):
        raise ValueError(f"{name} is part of a file name and must not contain '/' or '\\', got {value!r}")
    return checked


def absolute_path(name: str, value: Any, *, optional: bool = False) -> str | None:
    """Return ``value`` if it is an absolute remote path (starts with ``/``, no NUL)."""
    checked = text(name, value, optional=optional)
    if checked is not None and not checked.startswith("/"):
        raise ValueError(f"{name} must be an absolute path starting with '/', got {value!r}")
    return checked


def algorithm(name: str, value: Any, *, optional: bool = True) -> str | None:
    """Return a digest algorithm name (``"sha256"``), or ``None``; an empty string is not ``None``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{name} must name a digest algorithm such as 'sha256'"
            + (" or be None" if optional else "")
            + f", got {_shown(value)}"
        )
    try:
        new_hasher(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    return value


def choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {_shown(value)}")
    return value


def string_list(name: str, value: Any) -> list[str]:
    """Return ``value`` if it is a list or tuple of strings; a string is not a list of keys."""
    if isinstance(value, (str, bytes)):
        raise ArgumentTypeError(
            f"{name} must be a list of strings, got a string {value[:80]!r}: a templated value renders as "
            "text; pass a list, or render a native object (render_template_as_native_obj=True)"
        )
    if not isinstance(value, (list, tuple)):
        raise ArgumentTypeError(f"{name} must be a list of strings, got {_shown(value)}")
    for item in value:
        string(f"an item of {name}", item)
    return list(value)
