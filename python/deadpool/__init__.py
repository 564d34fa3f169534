"""deadpool: a process pool that is really hard to kill.

``Deadpool`` is a ``concurrent.futures.Executor`` whose pool never breaks: a
worker lost to the OOM killer, a segfault, ``os._exit``, ``kill -9`` or a
timeout costs exactly the task it was running.
"""

# The public names load on first use. Every zygote imports this package
# (and the caller's ``__main__``, which usually imports it too) before it can
# fork a single worker; importing the executor, ``concurrent.futures`` and
# ``logging`` there would add tens of milliseconds to every cold start for
# code the zygote never runs.
import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import as_completed, wait

    from deadpool._core import __version__
    from deadpool._exceptions import (
        CancelledError,
        MemoryLimitError,
        PoolClosed,
        ProcessError,
        SoftTimeoutError,
        TimeoutError,
    )
    from deadpool._executor import Deadpool
    from deadpool._future import Future

__all__ = [
    "CancelledError",
    "Deadpool",
    "Future",
    "MemoryLimitError",
    "PoolClosed",
    "ProcessError",
    "SoftTimeoutError",
    "TimeoutError",
    "__version__",
    "as_completed",
    "trim_memory",
    "wait",
]

_HOME = {
    "CancelledError": "deadpool._exceptions",
    "Deadpool": "deadpool._executor",
    "Future": "deadpool._future",
    "MemoryLimitError": "deadpool._exceptions",
    "PoolClosed": "deadpool._exceptions",
    "ProcessError": "deadpool._exceptions",
    "SoftTimeoutError": "deadpool._exceptions",
    "TimeoutError": "deadpool._exceptions",
    "__version__": "deadpool._core",
    "as_completed": "concurrent.futures",
    "wait": "concurrent.futures",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'deadpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def trim_memory() -> bool:
    """Return freed heap memory of this process to the OS (glibc ``malloc_trim``).
    True if any was released; a no-op without glibc."""
    from deadpool import _core

    return _core.malloc_trim()
