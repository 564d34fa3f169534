"""Task functions run inside the pools' workers.

They live in this importable module (not in the driver's ``__main__``) so every
start method -- fork, forkserver, spawn, loky's -- pickles them by reference.
Its imports stay minimal: every worker of every library imports this module,
and a heavy import (pathlib, say) adds a MiB of private memory to each.
"""

import os
import signal
import time


def noop():
    return None


def echo(data):
    """Return the argument unchanged: the payload crosses the pipe once each way."""
    return data


def sleep_then_pid(seconds):
    """Hold a worker busy for a while and say which worker it was."""
    time.sleep(seconds)
    return os.getpid()


def marked_sleep(marker_dir, index, seconds):
    """Record when the task really started, then sleep.

    CLOCK_MONOTONIC is system-wide on Linux, so the parent can compare this
    mark with the moment its future resolved and compute the overshoot past
    the deadline, whatever the library does to the worker afterwards.
    """
    started = time.monotonic()
    with open(os.path.join(marker_dir, str(index)), "w") as f:
        f.write(repr(started))
    time.sleep(seconds)
    return index


def die_every(index, period):
    """Return ``index``, except that every ``period``-th task SIGKILLs its own worker."""
    if period and index % period == period - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return index
