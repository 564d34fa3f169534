"""The wire between the Rust core and the Python side, one kind at a time.

Rust defines every tag, record and code (src/wire/) and ``deadpool._core``
exports them; each test sends one kind through the real encoder of one side
and the real decoder of the other (the parent's Rust through
``_core._testing``, the child's through the functions workers and zygotes
call), so a constant or layout changed on one side alone fails here.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import pickle
import select
import socket
import stat

import deadpool
import pytest
from deadpool import _core, _dispatcher, _future, _zygote

from tests import tasks
from tests.helpers import Gate, pool

testing = _core._testing

FRAME_TAGS = [
    "CONFIG",
    "TASK",
    "RETIRE",
    "TASK_SHARED",
    "READY",
    "OK",
    "ERR",
    "ERR_MEMORY",
    "OK_SHARED",
    "OK_SEGMENT",
]
STATUS_KINDS = ["PID", "EXIT", "MAX_RSS"]
EVENT_KINDS = ["STARTED", "RETURNED", "RAISED", "TIMED_OUT", "CANCELLED", "LOST", "OVER_MEMORY"]
CANCEL_REPLIES = ["NOT_FOUND", "REMOVED_PENDING", "KILLED_RUNNING"]
SUBMIT_REPLIES = ["ACCEPTED", "FULL", "CLOSED"]


def exported(prefix: str) -> dict[str, int]:
    return {
        name.removeprefix(prefix): getattr(_core, name)
        for name in dir(_core)
        if name.startswith(prefix)
    }


@pytest.mark.parametrize(
    ("prefix", "names"),
    [
        ("TAG_", FRAME_TAGS),
        ("STATUS_", STATUS_KINDS),
        ("EVENT_", EVENT_KINDS),
        ("CANCEL_", CANCEL_REPLIES),
        ("SUBMIT_", SUBMIT_REPLIES),
    ],
)
def test_the_core_exports_each_kind_once(prefix, names):
    kinds = exported(prefix)
    assert sorted(kinds) == sorted(names)
    assert len(set(kinds.values())) == len(names)


def read_everything(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    ends = {"r": r, "w": w}
    yield ends
    for fd in ends.values():
        if fd is not None:
            os.close(fd)


def close_write_end(ends) -> None:
    os.close(ends["w"])
    ends["w"] = None


@pytest.mark.parametrize("name", FRAME_TAGS)
def test_a_frame_a_child_writes_is_the_frame_the_supervisor_reads(pipe, name):
    tag = getattr(_core, f"TAG_{name}")
    _core.write_frame(pipe["w"], tag, 7, b"body")
    close_write_end(pipe)
    assert testing.decode_frames(read_everything(pipe["r"])) == [(tag, 7, b"body")]


@pytest.mark.parametrize("name", FRAME_TAGS)
def test_a_frame_the_supervisor_writes_is_the_frame_a_child_reads(pipe, name):
    tag = getattr(_core, f"TAG_{name}")
    os.write(pipe["w"], testing.encode_frame(tag, 9, b"xyz"))
    close_write_end(pipe)
    assert _core.read_frame(pipe["r"]) == (tag, 9, b"xyz")
    assert _core.read_frame(pipe["r"]) is None


def test_a_pipe_closed_between_header_and_body_is_an_error_not_an_empty_body(pipe):
    frame = testing.encode_frame(_core.TAG_TASK, 1, b"12345")
    os.write(pipe["w"], frame[: len(frame) - 5])
    close_write_end(pipe)
    with pytest.raises(OSError, match="header and its body"):
        _core.read_frame(pipe["r"])


def test_a_negative_fd_is_a_value_error_not_undefined_behaviour():
    with pytest.raises(ValueError, match="fd must be a non-negative"):
        _core.read_frame(-1)
    with pytest.raises(ValueError, match="fd must be a non-negative"):
        _core.write_frame(-1, _core.TAG_OK, 0, b"")


def test_io_errors_keep_their_errno_and_subclass(pipe):
    os.close(pipe["r"])
    pipe["r"] = None
    with pytest.raises(BrokenPipeError) as raised:
        _core.write_frame(pipe["w"], _core.TAG_OK, 0, b"x")
    assert raised.value.errno == errno.EPIPE


@pytest.mark.parametrize(("name", "value"), [("PID", 4242), ("EXIT", 9 << 8), ("MAX_RSS", 51200)])
def test_a_status_record_the_zygote_writes_is_read_by_the_supervisor(pipe, name, value):
    kind = getattr(_core, f"STATUS_{name}")
    _zygote._write_status(pipe["w"], kind, value)
    close_write_end(pipe)
    assert testing.decode_status(read_everything(pipe["r"])) == [(kind, value)]


@pytest.mark.parametrize(("kib", "sent"), [(51200, 51200), (2**40, 2**31 - 1), (-1, 0)])
def test_a_worker_s_end_reaches_the_supervisor_peak_first(pipe, kib, sent):
    _zygote.report_exit(pipe["w"], 9, kib)
    close_write_end(pipe)
    assert testing.decode_status(read_everything(pipe["r"])) == [
        (_core.STATUS_MAX_RSS, sent),
        (_core.STATUS_EXIT, 9),
    ]


def test_a_worker_request_reaches_the_zygote_with_three_pipes_and_a_segment_socket():
    pool_end, zygote_end = socket.socketpair()
    with pool_end, zygote_end:
        testing.send_worker_request(pool_end.fileno())
        message, fds = _zygote.receive_request(zygote_end)
        try:
            assert message == _core.WORKER_REQUEST
            assert len(fds) == _core.WORKER_REQUEST_FDS == 4
            assert all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds[:3])
            with socket.socket(fileno=os.dup(fds[3])) as segments:
                assert segments.type == socket.SOCK_SEQPACKET
        finally:
            for fd in fds or ():
                os.close(fd)
        pool_end.close()
        assert _zygote.receive_request(zygote_end) is None, "EOF means the pool is gone"


def test_the_last_pool_s_release_reaches_the_zygote_as_such():
    pool_end, zygote_end = socket.socketpair()
    with pool_end, zygote_end:
        testing.send_release_spare(pool_end.fileno())
        assert _zygote.receive_request(zygote_end) == (_core.RELEASE_SPARE, [])


def test_a_request_with_too_few_descriptors_is_ignored_and_its_fds_closed():
    pool_end, zygote_end = socket.socketpair()
    r, w = os.pipe()
    with pool_end, zygote_end:
        try:
            socket.send_fds(pool_end, [_core.WORKER_REQUEST], [r])
            before = set(os.listdir("/proc/self/fd"))
            assert _zygote.receive_request(zygote_end) == (b"", [])
            assert set(os.listdir("/proc/self/fd")) <= before, "a received fd was left open"
        finally:
            os.close(r)
            os.close(w)


def test_a_status_for_a_pool_that_stopped_listening_is_dropped_quietly(pipe):
    os.close(pipe["r"])
    pipe["r"] = None
    with pytest.raises(BrokenPipeError):
        _core.write_status(pipe["w"], _core.STATUS_PID, 1)
    _zygote._write_status(pipe["w"], _core.STATUS_PID, 1)  # the zygote's wrapper


@pytest.mark.parametrize("cut", [None, 3, 10])
def test_preparation_data_reaches_the_zygote_whole_or_not_at_all(pipe, cut):
    data = testing.encode_preparation(b"pickled preparation")
    os.write(pipe["w"], data[:cut])
    close_write_end(pipe)
    expected = b"pickled preparation" if cut is None else None
    assert _core.read_preparation(pipe["r"]) == expected


def test_every_event_kind_reaches_its_future_as_that_kind():
    dispatcher = _dispatcher.Dispatcher()
    futures = [_future.Future() for _ in EVENT_KINDS]
    dispatcher.futures.update(enumerate(futures))
    raised = pickle.dumps(
        (pickle.dumps(ValueError("boom")), "ValueError('boom')", "Traceback: boom\n")
    )
    lost = "Subprocess 4242 completed unexpectedly with exitcode -9 (Killed)"
    dispatcher(testing.one_notice_of_each_kind(pickle.dumps(42), raised, lost))

    started, returned, failed, timed_out, cancelled, lost_future, over_memory = futures
    assert started.running() and started.pid == 4242
    assert returned.result(timeout=0) == 42
    with pytest.raises(ValueError, match="boom"):
        failed.result(timeout=0)
    with pytest.raises(deadpool.TimeoutError) as late:
        timed_out.result(timeout=0)
    assert (late.value.reason, late.value.pid, late.value.exitcode) == ("timeout", 4242, -9)
    assert cancelled.cancelled()
    with pytest.raises(deadpool.ProcessError, match="exitcode -9") as gone:
        lost_future.result(timeout=0)
    assert (gone.value.reason, gone.value.signal, gone.value.max_rss) == ("killed", 9, 50 << 20)
    with pytest.raises(deadpool.MemoryLimitError) as big:
        over_memory.result(timeout=0)
    assert big.value.memory_limit == 32 << 20
    assert isinstance(big.value.__cause__, ValueError), "what the task raised"


def test_each_cancel_reply_means_what_it_says(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=0) as exe:
        running = gate.submit(exe)
        gate.wait_started(running)
        pending = exe.submit(tasks.add, 1, 2)
        assert exe._core.cancel(pending._task_id) == _core.CANCEL_REMOVED_PENDING
        assert exe._core.cancel(running._task_id) == _core.CANCEL_KILLED_RUNNING
        done = exe.submit(tasks.add, 1, 2)
        assert done.result(timeout=30) == 3
        assert exe._core.cancel(done._task_id) == _core.CANCEL_NOT_FOUND
        concurrent.futures.wait([running], timeout=30)
        assert running.cancelled(), "the kill reached the future through the dispatcher"
        pending._force_cancelled()  # what Future.cancel() does after the core's reply


def test_each_submit_reply_means_what_it_says(tmp_path):
    gate = Gate(tmp_path)
    with pool(max_workers=1, max_backlog=1) as exe:
        running = gate.submit(exe)
        gate.wait_started(running)

        def try_submit(value):
            future, (payload, segment) = exe._new_task(tasks.return_value, (value,), {})
            exe._dispatcher.futures[future._task_id] = future
            return future, exe._core.try_submit(future._task_id, payload, 0, None, None, segment)

        accepted, reply = try_submit("in")
        assert reply == _core.SUBMIT_ACCEPTED
        refused, reply = try_submit("out")
        assert reply == _core.SUBMIT_FULL
        assert exe.get_statistics()["tasks_received"] == 2, "nothing was queued"
        exe._dispatcher.futures.pop(refused._task_id)
        gate.open()
        assert accepted.result(timeout=30) == "in"
    payload = pickle.dumps((tasks.return_value, (), {}))
    assert exe._core.try_submit(99, payload, 0, None) == _core.SUBMIT_CLOSED


def test_a_room_signal_fires_when_the_backlog_has_room(tmp_path):
    gate = Gate(tmp_path)
    signal = _core.RoomSignal()
    with pool(max_workers=1, max_backlog=1) as exe:
        running = gate.submit(exe)
        gate.wait_started(running)
        pending = exe.submit(tasks.return_value, 1)
        exe._core.notify_when_room(signal)
        assert not _readable(signal.fileno(), 0)
        assert pending.cancel()
        assert _readable(signal.fileno(), 0), "a task left the full backlog"
        signal.clear()
        assert not _readable(signal.fileno(), 0)
        exe.submit(tasks.return_value, 2)
        exe._core.notify_when_room(signal)
        gate.open()
        assert _readable(signal.fileno(), 30), "the waiting task started"


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])
