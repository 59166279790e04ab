"""Remote paths derived from S3 keys stay inside their directory."""

from __future__ import annotations

import pytest

from airflow_s3sftp.core.paths import (
    backup_path_for,
    check_plan,
    leftover_of,
    new_token,
    parse_s3_location,
    remote_path_for,
    temp_path_for,
)


@pytest.mark.parametrize(
    ("bucket", "key", "expected"),
    [
        ("b", "k/x.csv", ("b", "k/x.csv")),
        (None, "s3://b/k/x.csv", ("b", "k/x.csv")),
        (None, " s3://b/k ", ("b", "k")),
    ],
)
def test_parse_s3_location(bucket, key, expected):
    assert parse_s3_location(bucket, key) == expected


@pytest.mark.parametrize(
    ("bucket", "key", "message"),
    [
        (None, "s3://", "must name both"),
        (None, "s3://b", "must name both"),
        ("b", "", "Empty S3 key for bucket 'b'"),
        (None, "k", "No S3 bucket"),
        ("a", "s3://b/k", "s3_bucket must be None"),
    ],
)
def test_parse_s3_location_rejects(bucket, key, message):
    with pytest.raises(ValueError, match=message):
        parse_s3_location(bucket, key)


@pytest.mark.parametrize(
    ("sftp_path", "key", "expected"),
    [
        ("/in/", "a/b/c.csv", "/in/c.csv"),
        ("/in/x.csv", "a/b/c.csv", "/in/x.csv"),
        ("/in/", "c.csv", "/in/c.csv"),
        ("rel/", "dir/naïve файл.bin", "rel/naïve файл.bin"),
    ],
)
def test_remote_path_for(sftp_path, key, expected):
    assert remote_path_for(sftp_path, key) == expected


@pytest.mark.parametrize(
    "key",
    ["a/..", "..", "a/.", "/", "dir/", "a\\..\\..\\etc\\passwd", "a/b\x00c", "/abs/../.."],
    ids=["dotdot", "bare-dotdot", "dot", "root", "trailing-slash", "backslash", "nul", "abs-dotdot"],
)
def test_unsafe_key_names_are_refused(key):
    with pytest.raises(ValueError, match="safe remote file name"):
        remote_path_for("/in/", key)


def test_absolute_key_keeps_only_its_base_name():
    assert remote_path_for("/in/", "/etc/passwd") == "/in/passwd"


@pytest.mark.parametrize("sftp_path", ["", "/in/x\x00", "/in/..", "/in/."])
def test_bad_sftp_path(sftp_path):
    with pytest.raises(ValueError):  # noqa: PT011 - message differs per case, each names the path
        remote_path_for(sftp_path, "k")


def test_temp_and_backup_names_are_hidden_unique_siblings():
    assert temp_path_for("/in/x.csv", "0123456789ab") == "/in/.x.csv.0123456789ab.s3sftp-part"
    assert backup_path_for("/in/x.csv", "0123456789ab") == "/in/.x.csv.0123456789ab.s3sftp-old"
    assert temp_path_for("x.csv", "0123456789ab") == ".x.csv.0123456789ab.s3sftp-part"
    assert new_token() != new_token()
    assert len(new_token()) == 12


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        (".x.csv.0123456789ab.s3sftp-part", "x.csv"),
        (".x.csv.0123456789ab.s3sftp-old", "x.csv"),
        (".a.b.c.0123456789ab.s3sftp-part", "a.b.c"),
        (".x.csv.s3sftp-part", None),  # the old, token-less shape: not provably ours
        ("x.csv.0123456789ab.s3sftp-part", None),  # not hidden
        (".x.csv.0123456789AB.s3sftp-part", None),
        (".x.csv.0123.s3sftp-part", None),
        ("x.csv", None),
    ],
)
def test_leftover_of_recognises_only_our_pattern(name, owner):
    assert leftover_of(name) == owner


def test_plan_refuses_two_keys_on_one_path():
    with pytest.raises(ValueError, match=r"'s3://b/a/x.csv' and 's3://b/c/x.csv' clash"):
        check_plan(
            [("s3://b/a/x.csv", "/in/x.csv"), ("s3://b/c/x.csv", "/in/x.csv")],
            sidecar_suffix=None,
            done_marker=None,
        )


@pytest.mark.parametrize("order", [1, -1])
def test_plan_refuses_a_key_on_anothers_sidecar(order):
    planned = [("s3://b/a.csv", "/in/a.csv"), ("s3://b/a.csv.sha256", "/in/a.csv.sha256")][::order]
    with pytest.raises(
        ValueError, match=r"'s3://b/a\.csv(\.sha256)?' and 's3://b/a\.csv(\.sha256)?' clash.*sidecar"
    ):
        check_plan(planned, sidecar_suffix=".sha256", done_marker=None)
    check_plan(planned, sidecar_suffix=None, done_marker=None)  # no sidecar written: no clash


def test_plan_refuses_a_key_on_anothers_done_marker():
    planned = [("s3://b/a.csv", "/in/a.csv"), ("s3://b/a.csv.done", "/in/a.csv.done")]
    with pytest.raises(ValueError, match=r"'s3://b/a\.csv' and 's3://b/a\.csv\.done' clash.*done marker"):
        check_plan(planned, sidecar_suffix=None, done_marker=".done")


@pytest.mark.parametrize(
    "name", [".x.bin.s3sftp-part", ".x.bin.0123456789ab.s3sftp-part", ".x.bin.s3sftp-old"]
)
def test_plan_refuses_keys_shaped_like_our_temp_files(name):
    planned = [("s3://b/x.bin", "/in/x.bin"), (f"s3://b/{name}", f"/in/{name}")]
    with pytest.raises(ValueError, match=rf"'s3://b/{name}' would land on .*reserved.*'s3://b/x\.bin'"):
        check_plan(planned, sidecar_suffix=None, done_marker=None)


class TestNamesAtTheLimit:
    @pytest.mark.parametrize("length", [1, 200, 229, 230, 255])
    def test_every_legal_name_gets_a_temp_name_that_fits(self, length: int) -> None:
        from airflow_s3sftp.core.paths import (
            backup_path_for,
            leftover_of,
            name_bytes,
            short_stem,
            temp_path_for,
        )

        name = "é" * (length // 2) + "x" * (length % 2)  # two bytes per character: cuts fall mid-character
        assert name_bytes(name) == length
        for path in (
            temp_path_for(f"/in/{name}", "0123456789ab"),
            backup_path_for(f"/in/{name}", "0123456789ab"),
        ):
            hidden = path.rsplit("/", 1)[1]
            assert name_bytes(hidden) <= 255
            assert leftover_of(hidden) in (name, short_stem(name))
        if length + 26 > 255:
            assert short_stem(name).startswith("é") and short_stem(name) != short_stem(name + "x")

    def test_too_long_names_are_refused_with_the_excess(self) -> None:
        with pytest.raises(ValueError, match=r"too long: 300 bytes, 45 over the server's limit of 255"):
            check_plan([("s3://b/k", "/in/" + "k" * 300)], sidecar_suffix=None, done_marker=None)
        with pytest.raises(ValueError, match=r"the done marker .* too long: 256 bytes, 1 over"):
            check_plan([("s3://b/k", "/in/" + "k" * 251)], sidecar_suffix=None, done_marker=".done")
        check_plan([("s3://b/k", "/in/" + "k" * 255)], sidecar_suffix=None, done_marker=None)
        with pytest.raises(ValueError, match=r"2 over the server's limit of 100"):
            check_plan(
                [("s3://b/k", "/in/" + "k" * 102)], sidecar_suffix=None, done_marker=None, name_max=100
            )

    def test_a_file_that_is_also_a_directory_clashes(self) -> None:
        planned = [("s3://b/p/a", "/in/a"), ("s3://b/p/a/b/c", "/in/a/b/c")]
        with pytest.raises(
            ValueError, match=r"'s3://b/p/a' and 's3://b/p/a/b/c' clash: '/in/a' .* directory"
        ):
            check_plan(planned, sidecar_suffix=None, done_marker=None)
        with pytest.raises(ValueError, match=r"clash"):
            check_plan(list(reversed(planned)), sidecar_suffix=None, done_marker=None)

    @pytest.mark.parametrize(
        ("prefix", "expected"), [("", ""), ("px/day-1", "px/day-1/"), ("px/day-1/", "px/day-1/")]
    )
    def test_a_prefix_is_a_directory(self, prefix: str, expected: str) -> None:
        from airflow_s3sftp.core.paths import prefix_as_directory

        assert prefix_as_directory(prefix) == expected
