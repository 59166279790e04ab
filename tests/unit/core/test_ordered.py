"""The ordered writer refuses every way of writing out of offset order."""

from __future__ import annotations

import io

import pytest

from airflow_s3sftp.core.ordered import OrderedWriter
from airflow_s3sftp.exceptions import OutOfOrderWriteError


def test_appends_in_order():
    sink = io.BytesIO()
    writer = OrderedWriter(sink)
    writer.write(b"abc")
    writer.write_at(3, b"def")
    writer.write(memoryview(b"gh"))
    assert sink.getvalue() == b"abcdefgh"
    assert writer.position == writer.tell() == 8


def test_reports_itself_unseekable_and_refuses_seek_and_truncate():
    writer = OrderedWriter(io.BytesIO())
    assert writer.seekable() is False
    assert writer.writable() is True
    with pytest.raises(io.UnsupportedOperation, match="cannot seek"):
        writer.seek(8 * 1024 * 1024)
    with pytest.raises(io.UnsupportedOperation, match="cannot truncate"):
        writer.truncate(10)


def test_seek_based_writer_is_rejected_before_any_byte_lands():
    """What s3transfer's seekable path does: part 2 finishes first and is written at its offset."""
    sink = io.BytesIO()
    writer = OrderedWriter(sink)
    part_size = 8 * 1024 * 1024
    with pytest.raises(
        OutOfOrderWriteError, match=f"at offset {part_size}: the next write must start at offset 0"
    ):
        writer.write_at(part_size, b"\x02" * 16)
    assert sink.getvalue() == b""
    writer.write_at(0, b"\x01" * 16)
    with pytest.raises(OutOfOrderWriteError):
        writer.write_at(0, b"again")  # overlapping rewrite
    with pytest.raises(OutOfOrderWriteError):
        writer.write_at(17, b"gap")  # a hole
    assert sink.getvalue() == b"\x01" * 16


def test_resumes_from_a_start_offset():
    sink = io.BytesIO()
    writer = OrderedWriter(sink, start=100)
    with pytest.raises(OutOfOrderWriteError):
        writer.write_at(0, b"x")
    writer.write_at(100, b"x")
    assert writer.position == 101


def test_closed_writer_refuses_writes():
    writer = OrderedWriter(io.BytesIO())
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
