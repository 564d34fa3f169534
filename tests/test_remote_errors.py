"""A task's exception arrives as the stdlib delivers it: its own type and args,
with the worker's traceback as ``__cause__``, an instance of the stdlib's own
``concurrent.futures.process._RemoteTraceback``; an exception that cannot be
rebuilt in the parent raises what rebuilding it raised."""

from __future__ import annotations

import pickle
import traceback
from concurrent.futures.process import _RemoteTraceback

import deadpool
import pytest
from deadpool import _dispatcher

from tests import tasks
from tests.helpers import pool


def _assert_remote_traceback(exc, *expected):
    """``exc.__cause__`` is the stdlib's _RemoteTraceback, its text the worker's
    traceback in the stdlib's format, naming each of ``expected``."""
    cause = exc.__cause__
    assert isinstance(cause, _RemoteTraceback), repr(cause)
    text = str(cause)
    assert text.startswith('\n"""\nTraceback (most recent call last):\n'), text
    assert text.endswith('"""'), text
    assert text == cause.tb
    for word in expected:
        assert word in text, f"{word!r} not in {text!r}"
    # Printed as the stdlib prints it: the worker's traceback, then ours.
    formatted = "".join(traceback.format_exception(exc))
    assert "The above exception was the direct cause" in formatted
    return text


def _unpickling_error_of(exc: BaseException) -> BaseException:
    """What unpickling `exc`, as a worker pickles it, raises here: rebuilding
    it from its type and args. (Not a round trip through pickle in this
    process: once anything imports Dask's distributed, tblib's reducer
    pickles every exception here, and its copies skip ``__init__``.)"""
    cls, args = exc.__reduce__()[:2]
    with pytest.raises(BaseException) as info:
        cls(*args)
    return info.value


def test_a_task_exception_has_the_stdlib_remote_traceback_as_cause():
    with pool(max_workers=1) as exe:
        exc = exe.submit(tasks.raise_value_error, "bad", 1).exception(timeout=30)
    assert type(exc) is ValueError and exc.args == ("bad", 1)
    text = _assert_remote_traceback(exc, "raise_value_error", "ValueError: ('bad', 1)")
    assert "raise_value_error" not in str(exc)
    assert text.rstrip('"').endswith("ValueError: ('bad', 1)\n")


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_exceptions_have_the_stdlib_remote_traceback_as_cause(chunksize):
    with pool(max_workers=2) as exe:
        results = exe.map(tasks.raise_value_error_if_three, range(6), chunksize=chunksize)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="three") as info:
            next(results)
    _assert_remote_traceback(info.value, "raise_value_error_if_three")


def test_an_exception_that_fails_to_unpickle_raises_the_unpickling_error():
    # UnunpicklableError pickles in the worker, but rebuilding it calls
    # __init__ with one argument of two: result() raises that TypeError, as
    # unpickling it here does, with the worker's traceback as its cause.
    expected = _unpickling_error_of(tasks.UnunpicklableError("first", "second"))
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.raise_ununpicklable)
        with pytest.raises(type(expected)) as info:
            fut.result(timeout=30)
        assert str(info.value) == str(expected)
        _assert_remote_traceback(info.value, "raise_ununpicklable", "UnunpicklableError: first")
        assert exe.submit(tasks.square, 3).result(timeout=30) == 9
        assert exe.get_statistics()["tasks_failed"] == 1


def test_an_exception_class_only_the_worker_has_raises_the_import_error_here():
    # The worker can unpickle this exception (its class is in the worker's
    # sys.modules); only the parent cannot. So the check belongs to the parent.
    with pool(max_workers=1) as exe:
        fut = exe.submit(tasks.raise_worker_only_error, "made in the worker")
        with pytest.raises(ModuleNotFoundError, match="deadpool_test_worker_only"):
            fut.result(timeout=30)
        _assert_remote_traceback(
            fut.exception(), "raise_worker_only_error", "WorkerOnlyError: made in the worker"
        )
        assert exe.submit(tasks.square, 4).result(timeout=30) == 16


def test_an_exception_that_cannot_be_pickled_is_still_a_process_error():
    with pool(max_workers=1) as exe:
        exc = exe.submit(tasks.raise_unpicklable, "marker 5521").exception(timeout=30)
    assert isinstance(exc, deadpool.ProcessError), repr(exc)
    assert "could not be pickled" in str(exc)
    assert "UnpicklableError('marker 5521')" in str(exc)
    assert "raise_unpicklable" in str(exc)


def test_chunked_map_delivers_the_results_before_an_exception_that_fails_to_unpickle():
    expected = _unpickling_error_of(tasks.UnunpicklableError("three", "extra"))
    with pool(max_workers=1) as exe:
        results = exe.map(tasks.raise_ununpicklable_if_three, range(6), chunksize=6)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(type(expected)) as info:
            next(results)
        assert str(info.value) == str(expected)
        _assert_remote_traceback(info.value, "raise_ununpicklable_if_three")
        with pytest.raises(StopIteration):
            next(results)


def test_chunked_map_delivers_the_results_before_an_exception_that_cannot_be_pickled():
    with pool(max_workers=1) as exe:
        results = exe.map(tasks.raise_unpicklable_if_three, range(6), chunksize=6)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(deadpool.ProcessError) as info:
            next(results)
    text = str(info.value)
    assert "UnpicklableError('three cannot travel')" in text, text
    assert "raise_unpicklable_if_three" in text, text


def test_a_chunk_ended_by_a_base_exception_keeps_the_results_before_it():
    with pool(max_workers=1) as exe:
        results = exe.map(tasks.exit_via_system_exit_if_three, range(6), chunksize=6)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(SystemExit) as info:
            next(results)
    assert info.value.args == (3,)
    _assert_remote_traceback(info.value, "exit_via_system_exit_if_three")


def test_the_remote_traceback_text_survives_an_exception_that_unpickles_as_garbage():
    # The parent rebuilds the exception on its own, from the worker's bytes: a
    # payload whose "exception" is not one still yields the repr and traceback.
    payload = pickle.dumps((pickle.dumps(42), "Weird('x')", "Traceback: weird\n"))
    exc = _dispatcher._remote_exception(payload)
    assert isinstance(exc, deadpool.ProcessError), repr(exc)
    assert "Weird('x')" in str(exc)
    assert isinstance(exc.__cause__, _RemoteTraceback)
    assert str(exc.__cause__) == '\n"""\nTraceback: weird\n"""'


def test_workers_do_not_import_the_stdlib_process_pool():
    with pool(max_workers=1, mp_context="spawn") as exe:
        exe.submit(tasks.raise_value_error, "x").exception(timeout=30)
        assert exe.submit(tasks.worker_imported, "concurrent.futures.process").result(30) is False
