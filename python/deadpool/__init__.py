"""deadpool: a process pool that is really hard to kill.

``Deadpool`` is a ``concurrent.futures.Executor`` whose pool never breaks: a
worker lost to the OOM killer, a segfault, ``os._exit``, ``kill -9`` or a
timeout costs exactly the task it was running.
"""

from concurrent.futures import as_completed, wait

from deadpool import _core
from deadpool._exceptions import CancelledError, PoolClosed, ProcessError, TimeoutError
from deadpool._executor import Deadpool
from deadpool._future import Future
from deadpool._version import __version__

__all__ = [
    "CancelledError",
    "Deadpool",
    "Future",
    "PoolClosed",
    "ProcessError",
    "TimeoutError",
    "__version__",
    "as_completed",
    "trim_memory",
    "wait",
]


def trim_memory() -> bool:
    """Return freed heap memory of this process to the OS (glibc ``malloc_trim``).
    True if any was released; a no-op without glibc."""
    return _core.malloc_trim()
