"""The code that runs in deadpool's worker processes: the task loop.

A worker reads frames from its private task pipe and writes one result frame per
task to its private result pipe. Frame I/O is in the Rust core. The zygote that
forks the workers is in ``_zygote.py``; the two helpers it shares with the
worker (``_log_exception``, ``_flush_stdio``) live here, because every zygote
imports this module anyway to run ``worker_main`` in the children it forks.
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import sys
import traceback
from functools import partial

from deadpool import _core, _payload
from deadpool._core import (
    TAG_CONFIG,
    TAG_ERR,
    TAG_ERR_MEMORY,
    TAG_OK,
    TAG_OK_SEGMENT,
    TAG_OK_SHARED,
    TAG_READY,
    TAG_RETIRE,
    TAG_TASK,
    TAG_TASK_SHARED,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _log_exception(message: str, *args: object) -> None:
    """Log the exception being handled to the ``deadpool`` logger."""
    import logging

    logging.getLogger("deadpool").exception(message, *args)


_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
# Results of these types can hold no large buffer: pickled as they always were.
_HOLDS_NO_BUFFER = frozenset({type(None), bool, int, float, complex, str})


def worker_main(task_fd: int, result_fd: int, segments_fd: int) -> None:
    _core.tune_allocator_for_worker()
    settings = _read_settings(task_fd)
    _initialise(settings)
    _core.write_frame(result_fd, TAG_READY, 0, struct.pack("<I", os.getpid()))
    trim_above = settings.get("malloc_trim_threshold")
    shared_cap = settings.get("max_shared_memory_bytes", 0)
    while True:
        frame = _core.read_frame(task_fd)
        if frame is None:
            return  # the pool is gone: exit at once, as a kill would
        tag, task_id, body = frame
        if tag == TAG_RETIRE:
            _retire(settings)
            return
        segment = None
        if tag == TAG_TASK_SHARED:
            segment = _core.receive_segment(segments_fd, task_id)
        elif tag != TAG_TASK:
            raise RuntimeError(f"unexpected frame tag {tag} from the pool")
        out_tag, out, own_segment = run_task(body, segment, shared_cap)
        if _guard.over_memory:
            # A memory-limited task raised MemoryError: the pool replaces us.
            _guard.over_memory = False
            out_tag = TAG_ERR_MEMORY
        del body
        if own_segment is not None:
            _core.send_segment(segments_fd, task_id, own_segment)
            os.close(own_segment)
        _core.write_frame(result_fd, out_tag, task_id, out)
        if segment is not None:
            os.close(segment)
        del out
        if trim_above is not None and (_core.rss_bytes(os.getpid()) or 0) > trim_above:
            _core.malloc_trim()


def _read_settings(task_fd: int) -> dict[str, Any]:
    frame = _core.read_frame(task_fd)
    if frame is None:
        raise SystemExit(0)
    tag, _, body = frame
    if tag != TAG_CONFIG:
        raise RuntimeError(f"expected the worker settings, got frame tag {tag}")
    try:
        settings = pickle.loads(body)
    except BaseException:
        _log_exception("deadpool worker could not load its settings (initializer etc.)")
        return {}
    if settings.pop("inherited", False):  # "fork": see _zygote.fork_zygote
        from deadpool import _zygote

        settings = {**_zygote.inherited_settings, **settings}
    return settings


def _initialise(settings: dict[str, Any]) -> None:
    environ = settings.get("environ")
    if environ:
        os.environ.update(environ)
    # As in the original: a failed initializer is logged, and the worker
    # still serves tasks.
    _call_hook(settings, "initializer", "initargs")


def _call_hook(settings: dict[str, Any], name: str, args_name: str) -> None:
    """Call the user's initializer or finalizer, if any; log what it raises."""
    hook = settings.get(name)
    if hook is not None:
        try:
            hook(*settings.get(args_name, ()))
        except BaseException:
            _log_exception(f"deadpool worker {name} %r failed", hook)


def run_task(body: bytes, segment: int | None, shared_cap: int) -> tuple[int, bytes, int | None]:
    """Runs a task: ``(tag, body, a segment of our own to send first, or
    None)``. ``segment``: where the task's large buffers are (``_payload``),
    and where a large result goes back."""
    try:
        if segment is None:
            fn, args, kwargs = pickle.loads(body)
        else:
            (fn, args, kwargs), _ = _payload.loads(body, partial(_core.read_segment, segment))
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return TAG_ERR, _pickle_exception(exc), None
    try:
        if shared_cap and type(result) not in _HOLDS_NO_BUFFER:
            return _pack_result(result, segment, shared_cap)
        try:  # _dumps, inlined: this is the hot path
            out = pickle.dumps(result, _PICKLE_PROTOCOL)
        except Exception:
            from deadpool import _pickling

            out = _pickling.by_value(result)
        return TAG_OK, out, None
    except BaseException as exc:
        return TAG_ERR, _pickle_exception(exc), None


def _pack_result(result: Any, segment: int | None, cap: int) -> tuple[int, bytes, int | None]:
    """A result with its large buffers in ``segment`` (grown to fit) or in a
    new segment of ours; through the pipe if no memory is left for one."""
    lifted = _payload.lift(result)
    try:
        data, buffers = _payload.dumps(lifted)
    except Exception:
        return TAG_OK, _dumps(result), None
    if not buffers:
        return TAG_OK, data, None
    header, size, total = _payload.layout(buffers)
    _payload.check_size(total, cap)
    try:
        if segment is not None:
            _payload.fit(segment, size)
            _payload.write(segment, buffers)
            return TAG_OK_SHARED, header + data, None
        own = _payload.new_segment(size)
        try:
            _payload.write(own, buffers)
        except BaseException:
            os.close(own)
            raise
        return TAG_OK_SEGMENT, header + data, own
    except OSError:
        return TAG_OK, pickle.dumps(lifted, _PICKLE_PROTOCOL), None


def _dumps(obj: object) -> bytes:
    """``obj`` pickled; by value (cloudpickle) what pickle cannot write by
    reference, such as a lambda, or an instance of a class the task received
    by value. If both fail, cloudpickle's error is raised (pickle's is its
    context)."""
    try:
        return pickle.dumps(obj, _PICKLE_PROTOCOL)
    except Exception:
        from deadpool import _pickling

        return _pickling.by_value(obj)


def _pickle_exception(exc: BaseException) -> bytes:
    """``(pickled exception or None, repr, traceback text)``. The exception is
    pickled on its own, so that the parent can still read its repr and
    traceback when it cannot be rebuilt there (whether it can is the parent's
    question: a class may import here and not there)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    description = _safe_repr(exc)
    try:
        exc_bytes: bytes | None = _dumps(exc)
    except BaseException:
        exc_bytes = None  # the parent raises ProcessError with the repr and traceback
    return pickle.dumps((exc_bytes, description, tb), _PICKLE_PROTOCOL)


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except BaseException:
        return f"<{type(obj).__qualname__} with a failing repr>"


class _Guard:
    """The state of the task ``guarded_call`` runs (one at a time: tasks run
    in the main thread)."""

    # Set by a memory-limited task that raised MemoryError; read and reset
    # by the task loop.
    over_memory = False
    # While True, the soft timeout's signal raises in the task.
    soft_armed = False
    soft_timeout = 0.0
    error: Any = None  # deadpool.SoftTimeoutError, once a task needed it


_guard = _Guard()


def guarded_call(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    soft_timeout: float | None,
    memory_limited: bool,
) -> Any:
    """A task submitted with a soft timeout or a memory limit: the submitter
    pickles this call in place of ``fn``'s, so plain tasks pay nothing.

    The soft timeout is a one-shot ``ITIMER_REAL`` armed here, in the thread
    that runs the task, so its signal can only ever interrupt this task: the
    handler raises only while the timer is armed for it, and a signal that
    lands as the task ends finds it disarmed. The timer counts from the
    call, after the arguments were unpickled; the hard deadline, kept by the
    pool, counts from the dispatch. SIGALRM is the task's only while it runs
    without a soft timeout.
    """
    if soft_timeout is None:
        try:
            return fn(*args, **kwargs)
        except MemoryError:
            _guard.over_memory = memory_limited
            raise
    import signal

    # Imported now, not in the handler: the first import costs milliseconds
    # that would delay the exception.
    from deadpool._exceptions import SoftTimeoutError

    _guard.error = SoftTimeoutError
    previous = signal.signal(signal.SIGALRM, _soft_timeout_fired)
    _guard.soft_timeout = soft_timeout
    _guard.soft_armed = True
    # setitimer(0) would disarm: a zero soft timeout fires at once instead.
    signal.setitimer(signal.ITIMER_REAL, max(soft_timeout, 1e-6))
    try:
        return fn(*args, **kwargs)
    except MemoryError:
        _guard.over_memory = memory_limited
        raise
    finally:
        _guard.soft_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _soft_timeout_fired(signum: int, frame: object) -> None:
    if _guard.soft_armed:
        _guard.soft_armed = False
        raise _guard.error(f"the task reached its soft timeout of {_guard.soft_timeout} s")


def run_chunk(fn: Any, chunk: list[tuple[Any, ...]]) -> tuple[list[Any], bytes | None]:
    """``map(..., chunksize=n)``: one task runs n calls, in order. A call that
    raises ends the chunk; the results before it still reach the caller.
    Returns ``(results, None)``, or ``(results before the failure, the
    exception as _pickle_exception packs it)``."""
    results = []
    for args in chunk:
        try:
            results.append(fn(*args))
        except BaseException as exc:
            return results, _pickle_exception(exc)
    return results, None


def _retire(settings: dict[str, Any]) -> None:
    """Graceful exit: the finalizer, then atexit handlers, then anything the
    tasks left running is killed so that nothing outlives the worker."""
    _call_hook(settings, "finalizer", "finalargs")
    try:
        atexit._run_exitfuncs()
    except BaseException:
        _log_exception("deadpool worker atexit handlers failed")
    _core.kill_descendants(os.getpid())


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass  # a closed or broken stream must not stop the exit
