# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Range manifests: rendering, strict parsing, in-order hashing and naming the bad ranges of a file."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from airflow_s3sftp.core.manifest import (
    MAGIC,
    BadRange,
    Manifest,
    RangeHasher,
    check_file,
    compare_ranges,
    manifest_path,
    parse_manifest,
    render_manifest,
)

RANGE = 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(data: bytes, range_size: int = RANGE, name: str = "report.csv") -> Manifest:
    hasher = RangeHasher(range_size)
    hasher.update(data)
    return hasher.manifest(name)


@pytest.fixture
def data() -> bytes:
    return os.urandom(10 * RANGE + 123)  # ten full ranges and a short eleventh


def test_manifest_path_is_beside_the_file() -> None:
    assert manifest_path("/in/report.csv") == "/in/report.csv.manifest"


@pytest.mark.parametrize("size", [0, 1, RANGE - 1, RANGE, RANGE + 1, 3 * RANGE, 3 * RANGE + 7])
def test_range_hasher_matches_hashlib_at_every_boundary(size: int) -> None:
    payload = os.urandom(size)
    manifest = build(payload)
    assert manifest.size == size
    assert manifest.whole == sha(payload)
    assert manifest.ranges == tuple(sha(payload[i : i + RANGE]) for i in range(0, size, RANGE))
    assert len(manifest.ranges) == -(-size // RANGE)


def test_range_hasher_is_independent_of_how_the_stream_is_cut(data: bytes) -> None:
    whole = build(data)
    for step in (1, 7, RANGE - 1, RANGE, RANGE + 1, 4096):
        hasher = RangeHasher(RANGE)
        for offset in range(0, len(data), step):
            hasher.update(memoryview(data)[offset : offset + step])
        assert hasher.manifest("report.csv") == whole, step


def test_range_hasher_reports_progress_and_refuses_bytes_after_finish() -> None:
    hasher = RangeHasher(4)
    hasher.update(b"abcdefghij")
    assert hasher.size == 10
    assert hasher.completed == (sha(b"abcd"), sha(b"efgh"))
    ranges, whole = hasher.finish()
    assert ranges == (sha(b"abcd"), sha(b"efgh"), sha(b"ij"))
    assert whole == sha(b"abcdefghij")
    assert hasher.finish() == (ranges, whole)
    with pytest.raises(ValueError, match="finished"):
        hasher.update(b"k")


@pytest.mark.parametrize("range_size", [0, -1, True, 1.5, "8"])
def test_range_hasher_refuses_a_bad_range_size(range_size: object) -> None:
    with pytest.raises(ValueError, match="range_size must be an integer >= 1"):
        RangeHasher(range_size)  # type: ignore[arg-type]


def test_render_is_the_documented_format_and_parses_back(data: bytes) -> None:
    manifest = build(data)
    text = render_manifest(manifest)
    lines = text.splitlines()
    assert lines[:5] == [
        "# airflow-s3sftp manifest 1",
        "# name: report.csv",
        f"# size: {len(data)}",
        f"# range_size: {RANGE}",
        f"# sha256: {sha(data)}",
    ]
    assert lines[5] == f"{sha(data[:RANGE])}  0"
    assert lines[-1] == f"{sha(data[10 * RANGE :])}  10"
    assert len(lines) == 5 + 11
    assert text.endswith("\n")
    assert parse_manifest(text) == manifest


def test_empty_file_has_no_range_lines() -> None:
    manifest = build(b"")
    text = render_manifest(manifest)
    assert text.splitlines()[-1] == f"# sha256: {sha(b'')}"
    assert parse_manifest(text) == manifest
    assert check_file(io.BytesIO(b""), manifest) == []


@pytest.mark.parametrize("name", ["a", "x" * 255, "name with  spaces ", "ünïcödé.csv", "#hash"])
def test_names_round_trip_verbatim(name: str) -> None:
    manifest = build(b"abc", name=name)
    assert parse_manifest(render_manifest(manifest)).name == name


@pytest.mark.parametrize("name", ["", "a/b", "a\nb", "a\rb", "a\0b"])
def test_manifest_refuses_names_that_break_the_format(name: str) -> None:
    with pytest.raises(ValueError, match="Manifest name"):
        build(b"abc", name=name)


def test_manifest_refuses_a_range_count_that_does_not_cover_the_size() -> None:
    with pytest.raises(ValueError, match="needs 2 range digests, got 1"):
        Manifest("a", 5, 4, sha(b""), (sha(b""),))


def _good() -> str:
    return render_manifest(build(b"x" * 2500))  # three ranges of 1000, 1000, 500


def _replace_line(text: str, number: int, new: str | None) -> str:
    lines = text.split("\n")
    if new is None:
        del lines[number - 1]
    else:
        lines[number - 1] = new
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda t: "", "Manifest is empty"),
        (lambda t: t[:-1], "does not end with a line break"),
        (lambda t: t.replace("\n", "\r\n"), "line 1 has a carriage return"),
        (lambda t: _replace_line(t, 1, "# airflow-s3sftp manifest 2"), "line 1 is"),
        (lambda t: "\n" + t, "line 1 is ''"),
        (lambda t: MAGIC + "\n# name: a\n", "too few for its 4 header lines"),
        (lambda t: _replace_line(t, 2, "# nom: a"), "line 2 is '# nom: a', expected '# name: ...'"),
        (lambda t: _replace_line(t, 2, "# name: "), "line 2: Manifest name must be a non-empty"),
        (lambda t: _replace_line(t, 2, "# name: a/b"), "line 2: Manifest name 'a/b'"),
        (lambda t: _replace_line(t, 3, "# size: -1"), "line 3: size '-1' is not a decimal integer"),
        (lambda t: _replace_line(t, 3, "# size: 0x10"), "line 3: size '0x10'"),
        (lambda t: _replace_line(t, 3, "# size: 02500"), "line 3: size '02500'"),
        (lambda t: _replace_line(t, 3, "# size:  2500"), "line 3: size ' 2500'"),
        (lambda t: _replace_line(t, 4, "# range_size: 0"), "line 4: range_size must be at least 1"),
        (lambda t: _replace_line(t, 4, "# range_size: 1e3"), "line 4: range_size '1e3'"),
        (lambda t: _replace_line(t, 4, "# size: 2500"), "line 4 is '# size: 2500'"),
        (lambda t: _replace_line(t, 5, "# sha256: abc"), "line 5: sha256 'abc'"),
        (lambda t: _replace_line(t, 5, "# md5: " + "0" * 32), "line 5 is '# md5: "),
        (lambda t: t.replace(t.split("\n")[5], t.split("\n")[5].upper()[:-1] + "0"), "line 6: "),
        (lambda t: t.replace("  1\n", " 1\n"), "line 7 is .*expected '<sha256>  1'"),
        (lambda t: t.replace("  1\n", "  01\n"), "line 7: range index '01', expected 1"),
        (lambda t: t.replace("  1\n", "  2\n"), "line 7: range index '2', expected 1"),
        (lambda t: t.replace("  1\n", "  1 \n"), "line 7: range index '1 ', expected 1"),
        (lambda t: _replace_line(t, 8, None), "has 2 range lines after line 5; 2500 bytes .* need 3"),
        (lambda t: t + "\n", "line 9 is '', expected '<sha256>  3'"),
        (lambda t: t + "0" * 64 + "  3\n", "line 9: range 3 is beyond the 3 ranges"),
        (lambda t: t.replace("# size: 2500", "# size: 3001"), "has 3 range lines .* need 4"),
        (lambda t: t.replace("# size: 2500", "# size: 2000"), "line 8: range 2 is beyond the 2 ranges"),
    ],
)
def test_parse_names_the_malformed_line(mangle: object, message: str) -> None:
    text = mangle(_good())  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        parse_manifest(text)


def test_parse_refuses_a_huge_text() -> None:
    with pytest.raises(ValueError, match="more than"):
        parse_manifest("#" * (16 * 1024 * 1024 + 1))


def test_good_file_has_no_bad_ranges(data: bytes) -> None:
    assert check_file(io.BytesIO(data), build(data)) == []


@pytest.mark.parametrize("offset", [0, RANGE - 1, RANGE, 5 * RANGE + 17, 10 * RANGE, 10 * RANGE + 122])
def test_one_flipped_byte_names_exactly_its_range(data: bytes, offset: int) -> None:
    manifest = build(data)
    altered = bytearray(data)
    altered[offset] ^= 0x01
    bad = check_file(io.BytesIO(bytes(altered)), manifest)
    index = offset // RANGE
    start, stop = index * RANGE, min((index + 1) * RANGE, len(data))
    assert bad == [
        BadRange(index, start, stop, manifest.ranges[index], sha(altered[start:stop]), "digest differs")
    ]
    assert bad[0].describe() == (
        f"range {index} bytes {start}-{stop - 1}: expected {manifest.ranges[index]}, "
        f"actual {sha(altered[start:stop])} (digest differs)"
    )


def test_truncated_file_names_the_short_range_and_the_missing_ones(data: bytes) -> None:
    manifest = build(data)
    cut = 7 * RANGE + 400
    bad = check_file(io.BytesIO(data[:cut]), manifest)
    assert [entry.index for entry in bad] == [7, 8, 9, 10]
    assert bad[0] == BadRange(
        7,
        7 * RANGE,
        8 * RANGE,
        manifest.ranges[7],
        sha(data[7 * RANGE : cut]),
        f"short: the file ends at byte {cut}",
    )
    assert all(
        entry.actual is None and entry.reason == f"missing: the file ends at byte {cut}" for entry in bad[1:]
    )
    assert bad[-1].stop == len(data)


def test_file_cut_at_a_range_boundary_reports_the_missing_ranges_only(data: bytes) -> None:
    manifest = build(data)
    bad = check_file(io.BytesIO(data[: 9 * RANGE]), manifest)
    assert [(entry.index, entry.actual) for entry in bad] == [(9, None), (10, None)]


def test_extra_bytes_are_one_entry_past_the_last_range(data: bytes) -> None:
    manifest = build(data)
    tail = os.urandom(2 * 1024 * 1024 + 5)  # more than one read block
    bad = check_file(io.BytesIO(data + tail), manifest)
    end = len(data) + len(tail)
    assert bad == [
        BadRange(
            11,
            len(data),
            end,
            None,
            sha(tail),
            f"extra: the file is {end} bytes, the manifest says {len(data)}",
        )
    ]


def test_empty_manifest_against_a_non_empty_file() -> None:
    bad = check_file(io.BytesIO(b"x"), build(b""))
    assert [(entry.index, entry.start, entry.stop, entry.expected) for entry in bad] == [(0, 0, 1, None)]


def test_empty_file_against_a_non_empty_manifest() -> None:
    manifest = build(b"abc")
    bad = check_file(io.BytesIO(b""), manifest)
    assert bad == [BadRange(0, 0, 3, manifest.ranges[0], None, "missing: the file ends at byte 0")]


def test_check_file_takes_a_read_callable_with_short_reads(data: bytes) -> None:
    stream = io.BytesIO(data)

    def read(n: int) -> bytes:
        return stream.read(min(n, 333))  # a server that answers with short reads

    altered_at = 3 * RANGE + 5
    manifest = build(data)
    stream = io.BytesIO(data[:altered_at] + b"\xff" + data[altered_at + 1 :])
    if data[altered_at] == 0xFF:
        stream = io.BytesIO(data[:altered_at] + b"\x00" + data[altered_at + 1 :])
    assert [entry.index for entry in check_file(read, manifest)] == [3]


def test_check_file_refuses_a_source_that_cannot_read() -> None:
    with pytest.raises(TypeError, match="binary file object or a read"):
        check_file(42, build(b""))  # type: ignore[arg-type]


def test_inconsistent_manifest_is_refused() -> None:
    manifest = build(b"abcdef", range_size=4)
    forged = Manifest(manifest.name, manifest.size, manifest.range_size, sha(b"other"), manifest.ranges)
    with pytest.raises(ValueError, match="inconsistent: every range matches"):
        check_file(io.BytesIO(b"abcdef"), forged)


def test_compare_ranges_is_the_rule_for_a_file_known_by_its_range_digests(data: bytes) -> None:
    manifest = build(data)
    short = data[: 4 * RANGE + 10]
    digests = [sha(short[i : i + RANGE]) for i in range(0, len(short), RANGE)]
    bad = compare_ranges(manifest, len(short), digests)
    assert bad == check_file(io.BytesIO(short), manifest)
    assert [entry.index for entry in bad] == [4, 5, 6, 7, 8, 9, 10]
    longer = compare_ranges(manifest, len(data) + 5, manifest.ranges, whole=manifest.whole)
    assert [(entry.index, entry.start, entry.stop, entry.actual) for entry in longer] == [
        (11, len(data), len(data) + 5, None)
    ]
    assert compare_ranges(manifest, len(data), manifest.ranges, whole=manifest.whole) == []


def test_compare_ranges_refuses_digests_that_do_not_fit_the_size(data: bytes) -> None:
    manifest = build(data)
    with pytest.raises(ValueError, match="10 range digests given for 10123 bytes"):
        compare_ranges(manifest, len(data), manifest.ranges[:10])
