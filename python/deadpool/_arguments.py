"""Checks of the arguments users pass: each wrong type is a TypeError and each
wrong value a ValueError naming the parameter, in the standard library's
words where it has them."""

from __future__ import annotations

import math
import multiprocessing.context
import numbers
import operator
import os
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

START_METHODS = ("forkserver", "spawn", "fork")
MAX_PRIORITY = 2**64 - 1
MAX_INT = 2**63 - 1
# The largest span the core's clock can represent (u64 seconds).
MAX_TIMEOUT = float(2**64 - 1)
# Workers are precreated: a typo must not become a fork bomb. Linux's default
# pid_max is 32768 (4194304 on large machines); no real pool comes close.
MAX_WORKERS = 32768


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(
    name: str,
    value: Any,
    minimum: int,
    maximum: int = MAX_INT,
    *,
    not_int: str | None = None,
    too_small: str | None = None,
) -> int:
    """``value`` as an int in [minimum, maximum]. ``not_int`` and ``too_small``
    are the stdlib's wording of the same check, where it has one."""
    if not is_int(value):
        raise TypeError(not_int or f"{name} must be an int, not {type(value).__name__}")
    value = operator.index(value)
    if value < minimum:
        raise ValueError(too_small or f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def positive_int(name: str, value: Any) -> int:
    return int_at_least(name, value, 1)


def optional(check: Callable[..., int], name: str, value: Any) -> int | None:
    return None if value is None else check(name, value)


def as_tuple(name: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a tuple of arguments, not {type(value).__name__}")
    return tuple(value)


def validated_sizes(
    max_workers: Any, min_workers: Any, max_tasks_per_child: Any, max_worker_memory_bytes: Any
) -> dict[str, int | None]:
    """The pool's sizes and limits, as the core's keyword arguments. The
    defaults: max_workers, all the CPUs we may run on; min_workers, max_workers."""
    if max_workers is None:
        max_workers = len(os.sched_getaffinity(0))
    max_workers = int_at_least(
        "max_workers", max_workers, 1, MAX_WORKERS, too_small="max_workers must be greater than 0"
    )
    min_workers = (
        max_workers if min_workers is None else int_at_least("min_workers", min_workers, 0)
    )
    if min_workers > max_workers:
        raise ValueError(f"min_workers ({min_workers}) must not exceed max_workers ({max_workers})")
    return {
        "max_workers": max_workers,
        "min_workers": min_workers,
        "max_tasks_per_child": optional(
            partial(
                int_at_least,
                minimum=1,
                not_int="max_tasks_per_child must be an integer",
                too_small="max_tasks_per_child must be >= 1",
            ),
            "max_tasks_per_child",
            max_tasks_per_child,
        ),
        "max_worker_memory_bytes": optional(
            positive_int, "max_worker_memory_bytes", max_worker_memory_bytes
        ),
    }


def worker_settings(
    initializer: Any, initargs: Any, finalizer: Any, finalargs: Any, trim_threshold: Any
) -> dict[str, Any]:
    """What every worker is told (``_settings``), checked."""
    check_callables(initializer=initializer, finalizer=finalizer)
    return {
        "initializer": initializer,
        "initargs": as_tuple("initargs", initargs),
        "finalizer": finalizer,
        "finalargs": as_tuple("finalargs", finalargs),
        "malloc_trim_threshold": optional(
            partial(int_at_least, minimum=0),
            "malloc_trim_rss_memory_threshold_bytes",
            trim_threshold,
        ),
    }


def shared_memory_cap(value: Any) -> int:
    """``max_shared_memory_bytes``: by default a quarter of physical memory.
    Shared segments are not bounded by ``/dev/shm``'s size and count in no
    process's limit until read, and each payload also has its copies in the
    caller and the worker: a quarter leaves room for those."""
    if value is None:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    return int_at_least("max_shared_memory_bytes", value, 0)


def check_callables(**callables: Any) -> None:
    for name, fn in callables.items():
        if fn is not None and not callable(fn):
            if name == "initializer":  # the stdlib's words
                raise TypeError("initializer must be a callable")
            raise TypeError(f"{name} must be callable or None, not {type(fn).__name__}")


def check_mapping(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping or None, not {type(value).__name__}")


def check_flags(**flags: Any) -> None:
    for name, flag in flags.items():
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool or None, not {type(flag).__name__}")


def map_sizes(chunksize: Any, buffersize: Any) -> tuple[int, int | None]:
    """``map``'s ``chunksize`` and ``buffersize``, checked as the stdlib checks
    them, in its order."""
    chunksize = int_at_least("chunksize", chunksize, 1, too_small="chunksize must be >= 1.")
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    return chunksize, buffersize


def check_timeout(timeout: Any) -> float | None:
    """``deadpool_timeout`` (not None) as seconds; None for infinity."""
    timeout = seconds("deadpool_timeout", timeout)
    if math.isinf(timeout):
        return None
    if timeout > MAX_TIMEOUT:
        raise ValueError(
            f"deadpool_timeout must be between 0 and {MAX_TIMEOUT:.3g} s, got {timeout}"
        )
    return timeout


def check_soft_timeout(soft_timeout: Any, timeout: float | None) -> float | None:
    """``deadpool_soft_timeout`` as seconds (None: none), which must not
    exceed ``deadpool_timeout`` (already checked; None for none)."""
    if soft_timeout is None:
        return None
    soft = seconds("deadpool_soft_timeout", soft_timeout)
    if math.isinf(soft):
        soft_or_none = None
    elif soft > MAX_TIMEOUT:
        raise ValueError(
            f"deadpool_soft_timeout must be between 0 and {MAX_TIMEOUT:.3g} s, got {soft_timeout}"
        )
    else:
        soft_or_none = soft
    if timeout is not None and soft > timeout:
        raise ValueError(
            f"deadpool_soft_timeout ({soft_timeout} s) must not exceed "
            f"deadpool_timeout ({timeout} s)"
        )
    return soft_or_none


def seconds(name: str, value: Any) -> float:
    """A non-negative number of seconds (infinity allowed), as a float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large to be a number of seconds") from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return seconds


def check_priority(priority: Any) -> int:
    return int_at_least("deadpool_priority", priority, 0, MAX_PRIORITY)


def start_method(mp_context: Any) -> str:
    if mp_context is None:
        return "forkserver"
    if isinstance(mp_context, str):
        method = mp_context
    elif isinstance(mp_context, multiprocessing.context.BaseContext):
        method = mp_context.get_start_method()
    else:
        raise ValueError(
            f"mp_context must be one of {START_METHODS} or a multiprocessing context, "
            f"not {mp_context!r}"
        )
    if method not in START_METHODS:
        raise ValueError(f"mp_context must be one of {START_METHODS}, not {method!r}")
    return method
