"""The ordered writer refuses every way of writing out of offset order."""

from __future__ import annotations

import io

import pytest

from airflow_s3sftp.core.ordered import OrderedWriter


def test_appends_in_order():
    sink = io.BytesIO()
    writer = OrderedWriter(sink)
    writer.write(b"abc")
    writer.write(bytearray(b"def"))
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
    with pytest.raises(io.UnsupportedOperation, match=f"to {part_size}, whence=0"):
        writer.seek(part_size)
    assert sink.getvalue() == b"" and writer.position == 0
    writer.write(b"\x01" * 16)
    with pytest.raises(io.UnsupportedOperation):
        writer.seek(0)  # an overlapping rewrite
    with pytest.raises(io.UnsupportedOperation):
        writer.seek(1, io.SEEK_CUR)  # a hole
    assert sink.getvalue() == b"\x01" * 16 and writer.position == 16


def test_resumes_from_a_start_offset():
    sink = io.BytesIO()
    writer = OrderedWriter(sink, start=100)
    assert writer.position == writer.tell() == 100
    writer.write(b"x")
    assert writer.position == 101 and sink.getvalue() == b"x"


def test_closed_writer_refuses_writes():
    writer = OrderedWriter(io.BytesIO())
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"x")
