"""The exceptions deadpool raises, each a subclass of what stdlib callers catch."""

import concurrent.futures
import multiprocessing

CancelledError = concurrent.futures.CancelledError


class TimeoutError(concurrent.futures.TimeoutError):
    """A task ran past its ``deadpool_timeout``; its worker's process tree was killed."""


class ProcessError(multiprocessing.ProcessError):
    """A task was lost with its worker (killed, crashed, exited), or could not be moved
    between processes."""


class PoolClosed(RuntimeError):
    """The pool is shut down (or belongs to another process) and takes no new tasks."""


# Their public home, as tracebacks and reprs show it. Pickle finds them there
# through deadpool.__getattr__.
for _public in (TimeoutError, ProcessError, PoolClosed):
    _public.__module__ = "deadpool"
del _public
