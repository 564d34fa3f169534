"""The exceptions deadpool raises, each a subclass of what stdlib callers catch.

``ProcessError`` and ``TimeoutError`` say how the worker ended as attributes
(``pid``, ``exitcode``, ``signal``, ``reason``, ``max_rss``), which survive
pickling (Dask ships exceptions to its client)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal as _signal

CancelledError = concurrent.futures.CancelledError

# The values of ``reason``.
REASONS = ("timeout", "memory", "killed", "exited", "cancelled", "lost")


class _WorkerEnd:
    """How a task's worker ended; every attribute is None when unknown."""

    pid: int | None = None
    #: As ``multiprocessing.Process.exitcode``: the exit code, or minus the signal.
    exitcode: int | None = None
    signal: _signal.Signals | None = None
    #: One of ``REASONS``, or None for an error raised by hand.
    reason: str | None = None
    #: The worker's peak resident memory in bytes, as ``wait4`` reported it.
    max_rss: int | None = None

    def __init__(
        self,
        *args: object,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
        reason: str | None = None,
        max_rss: int | None = None,
    ) -> None:
        if reason is not None and reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS} or None, not {reason!r}")
        super().__init__(*args)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = None if signal is None else _signal.Signals(signal)
        self.reason = reason
        self.max_rss = max_rss


class TimeoutError(_WorkerEnd, concurrent.futures.TimeoutError):
    """A task ran past its ``deadpool_timeout``; its worker's process tree was killed."""


class SoftTimeoutError(TimeoutError):
    """Raised inside a task, in its main thread, at its ``deadpool_soft_timeout``,
    so that it can clean up before the hard ``deadpool_timeout`` kills it. Its
    worker lives on: the attributes about the worker's end are None."""


class ProcessError(_WorkerEnd, multiprocessing.ProcessError):
    """A task was lost with its worker (killed, crashed, exited), or could not be moved
    between processes."""


class MemoryLimitError(ProcessError):
    """A task went past its memory limit (``task_memory_limit_bytes`` or
    ``deadpool_memory_limit``): its process tree grew too much and was killed,
    or Python raised ``MemoryError`` inside it (then ``__cause__`` is that
    error). Its worker is replaced either way. ``reason`` is ``"memory"``."""

    #: The limit, in bytes.
    memory_limit: int | None = None
    #: What the task's process tree had grown by when it was stopped (bytes);
    #: None when the task raised MemoryError itself.
    memory_used: int | None = None

    def __init__(
        self,
        *args: object,
        memory_limit: int | None = None,
        memory_used: int | None = None,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
        max_rss: int | None = None,
    ) -> None:
        super().__init__(
            *args, pid=pid, exitcode=exitcode, signal=signal, reason="memory", max_rss=max_rss
        )
        self.memory_limit = memory_limit
        self.memory_used = memory_used


class PoolClosed(RuntimeError):
    """The pool is shut down (or belongs to another process) and takes no new tasks."""


# Their public home, as tracebacks and reprs show it. Pickle finds them there
# through deadpool.__getattr__.
for _public in (TimeoutError, SoftTimeoutError, ProcessError, MemoryLimitError, PoolClosed):
    _public.__module__ = "deadpool"
del _public
