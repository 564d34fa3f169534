"""The zygote's end of the wire (deadpool._wire, deadpool._zygote.receive_request),
driven the way the Rust core drives it."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from deadpool import _wire, _zygote


@pytest.fixture
def control():
    pool_end, zygote_end = socket.socketpair()
    with pool_end, zygote_end:
        yield pool_end, zygote_end


def _pipes(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        fds.extend(os.pipe())
    return fds


def test_a_request_delivers_the_three_descriptors(control):
    pool_end, zygote_end = control
    sent = _pipes(2)[: _wire.WORKER_REQUEST_FDS]
    try:
        socket.send_fds(pool_end, [_wire.WORKER_REQUEST], sent)
        received = _zygote.receive_request(zygote_end)
        assert received is not None and len(received) == _wire.WORKER_REQUEST_FDS
        for mine, theirs in zip(sent, received, strict=True):
            assert os.fstat(mine).st_ino == os.fstat(theirs).st_ino
        for fd in received:
            os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)


def test_a_request_with_too_few_descriptors_is_ignored_and_its_fds_closed(control):
    pool_end, zygote_end = control
    r, w = os.pipe()
    try:
        socket.send_fds(pool_end, [_wire.WORKER_REQUEST], [r])
        before = set(os.listdir("/proc/self/fd"))
        assert _zygote.receive_request(zygote_end) == []
        assert set(os.listdir("/proc/self/fd")) <= before, "a received fd was left open"
    finally:
        os.close(r)
        os.close(w)


def test_eof_on_the_lifeline_is_none(control):
    pool_end, zygote_end = control
    pool_end.close()
    assert _zygote.receive_request(zygote_end) is None


def test_a_status_record_is_kind_then_value_little_endian():
    r, w = os.pipe()
    try:
        _wire.write_status(w, _wire.STATUS_EXIT, -9)
        assert struct.unpack("<Ii", os.read(r, 64)) == (_wire.STATUS_EXIT, -9)
    finally:
        os.close(r)
        os.close(w)


def test_writing_a_status_to_a_closed_pipe_raises_oserror():
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(OSError):
            _wire.write_status(w, _wire.STATUS_PID, 1)
    finally:
        os.close(w)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(struct.pack("<Q", 5) + b"hello", b"hello", id="whole"),
        pytest.param(struct.pack("<Q", 0), b"", id="empty-body"),
        pytest.param(b"", None, id="no-header"),
        pytest.param(b"\x05\x00\x00", None, id="part-of-a-header"),
        pytest.param(struct.pack("<Q", 5) + b"hel", None, id="short-body"),
    ],
)
def test_read_preparation(control, stream, expected):
    pool_end, zygote_end = control
    pool_end.sendall(stream)
    pool_end.shutdown(socket.SHUT_WR)
    assert _wire.read_preparation(zygote_end.fileno()) == expected
