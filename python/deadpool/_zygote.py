"""The zygote: deadpool's fork server, a single-threaded Python process.

It imports the user's ``__main__`` once (as the stdlib's forkserver does) and
forks a worker per request from the pool; once a worker has died, the shared
zygote also keeps a spare forked ahead, so that replacing the next lost worker
needs no fork. It reaps its workers and reports each real exit status to the
pool, and when its control socket reaches EOF (the parent died) it kills
everything below it and exits. The worker loop itself is in ``_worker.py``.

The pool's side of this conversation is the Rust core
(src/parent/zygote_client.rs); the layouts are in src/wire/.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import socket
import time
import traceback

from deadpool import _core
from deadpool._core import (
    RELEASE_SPARE,
    STATUS_EXIT,
    STATUS_MAX_RSS,
    STATUS_PID,
    WORKER_REQUEST,
    WORKER_REQUEST_FDS,
    read_preparation,
    write_status,
)
from deadpool._worker import _flush_stdio, _log_exception, worker_main

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# True while a zygote imports the parent's __main__: a script without an
# `if __name__ == "__main__":` guard must not start pools from there.
preparing = False


def zygote_main_from_stdin(single: bool) -> None:
    """Entry point of an exec'd zygote: the pool hands over the control socket
    as standard input (so that it can start us with ``posix_spawn``). Move it
    off descriptor 0 and put /dev/null there, as multiprocessing gives its
    children: the workers forked from here must not read the lifeline."""
    control_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    zygote_main(control_fd, single)


def zygote_main(control_fd: int, single: bool, forked_from_parent: bool = False) -> None:
    """Serve worker requests on ``control_fd`` until the pool goes away (its
    end of file: the pools let go, or the parent died).

    ``single``: serve one worker, then exit once it has ("spawn").
    ``forked_from_parent``: this process is a fork of the parent ("fork"), so it
    needs no preparation.
    """
    # Ctrl-C in a terminal reaches the parent's whole process group, which
    # includes this zygote; the parent decides what an interrupt means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    _core.become_zygote()
    if not forked_from_parent:
        preparation = read_preparation(control.fileno())
        if preparation is None:
            os._exit(0)  # the pool went away before we started
        _prepare(preparation)
        # What importing __main__ printed goes out now, not again from each
        # forked worker as it exits (seen on Python 3.14).
        _flush_stdio()
    try:
        _Zygote(control, single).serve()
    finally:
        _flush_stdio()
        os._exit(0)


# "fork": the settings of this pool's workers, live objects and all.
inherited_settings: dict[str, Any] = {}


def fork_zygote(settings_source: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """ "fork" start method: fork this (parent) process into the pool's zygote,
    which forks every worker of the pool. Called in the thread that makes the
    pool (a safe point: the stdlib forks in the thread that submits), and only
    if that zygote is lost, on the pool's completion thread. Its workers take
    their settings from ``settings_source()``, called in the child, so
    multiprocessing objects reach them by inheritance, as with the stdlib's
    fork. Returns the zygote's pid and the pool's end of its control socket,
    which the caller owns from then on."""
    pool_end, zygote_end = socket.socketpair()
    # As multiprocessing does before it forks: what this process printed and
    # has not yet written out would otherwise be written again by the zygote
    # and each worker as they exit (seen on Python 3.14).
    _flush_stdio()
    try:
        pid = os.fork()
    except BaseException:
        # Possibly after the fork: Python 3.12+ warns about forking a threaded
        # process once the child exists, and an "error" warnings filter makes
        # that an exception here. Closing our ends lets such a child see end
        # of file on its lifeline and exit.
        pool_end.close()
        zygote_end.close()
        raise
    if pid == 0:
        try:
            # Our copy of the pool's end would keep our lifeline from ever
            # reaching end of file (other zygotes' copies were closed by the
            # fork hook in _executor).
            pool_end.close()
            global inherited_settings
            inherited_settings = settings_source()
            zygote_main(zygote_end.detach(), single=False, forked_from_parent=True)
        finally:
            os._exit(0)
    zygote_end.close()
    return pid, pool_end.detach()


def _prepare(preparation: bytes) -> None:
    """Make this process look like the parent: sys.path, cwd, and ``__main__``
    imported as ``__mp_main__`` so functions defined in a script unpickle."""
    import multiprocessing.spawn

    global preparing
    preparing = True
    try:
        multiprocessing.spawn.prepare(pickle.loads(preparation))
    except BaseException:
        # Tasks that need __main__ will fail with a clear unpickling error;
        # every other task still runs.
        _log_exception("deadpool zygote could not import the parent's __main__")
    finally:
        preparing = False


# Once one of its workers has died (killed on timeout, crashed, OOM-killed),
# a zygote serving many workers keeps one spare: a child forked ahead of
# need, waiting for a worker's pipes. A replacement then starts without a
# fork (about a millisecond on a quiet machine, several under load) and
# without the copy-on-write faults that follow one. A pool whose workers
# never die pays nothing for it, not even the spare's memory.
# The spare is refilled once requests pause this long: forking it while a
# new worker starts would slow that worker down (measured: a timed-out
# worker's replacement took a third longer with an immediate refill).
SPARE_REFILL_DELAY = 0.005
# After a failed fork (out of processes or memory), the next try waits this long.
SPARE_RETRY_DELAY = 1.0
# A spare's name in ps and /proc/<pid>/comm, until it becomes a worker.
SPARE_NAME = "deadpool-spare"
# How long a zygote that is going away waits to reap the children it killed.
KILLED_REAP_LIMIT = 2.0


class _Spare:
    """A forked child of the zygote waiting on ``sock`` for a worker's fds."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock

    def hand_over(self, task_r: int, result_w: int, segments: int) -> bool:
        """False if the spare is gone (the caller forks a worker instead)."""
        try:
            socket.send_fds(self.sock, [b"W"], [task_r, result_w, segments])
        except OSError:
            return False
        finally:
            self.sock.close()
        return True


class _Zygote:
    def __init__(self, control: socket.socket, single: bool) -> None:
        self.control = control
        self.single = single
        self.spawned = 0
        self.workers: dict[int, int] = {}  # worker pid -> status pipe fd
        self.spare: _Spare | None = None
        self.keeps_spare = False  # from the first worker that dies
        self.no_spare_until = 0.0
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ)

    def serve(self) -> None:
        while True:
            events = self.selector.select(self.time_until_spare())
            if not events:
                self.fork_spare()
            for key, _ in events:
                if key.fileobj is self.control:
                    if not self.take_request():
                        self.kill_everything()
                        return
                else:
                    self.drain_wakeups()
                    self.reap()
            if self.single and self.spawned and not self.workers:
                return

    def take_request(self) -> bool:
        """False when the lifeline is gone."""
        received = receive_request(self.control)
        if received is None:
            return False
        message, fds = received
        if message == RELEASE_SPARE:
            self.release_spare()
        elif fds:
            self.start_worker(*fds)
        return True

    def start_worker(self, task_r: int, result_w: int, status_w: int, segments: int) -> None:
        spare, self.spare = self.spare, None
        if spare is not None and spare.hand_over(task_r, result_w, segments):
            pid = spare.pid
        else:
            pid = self.fork_worker(task_r, result_w, status_w, segments)
        os.close(task_r)
        os.close(result_w)
        os.close(segments)
        self.spawned += 1
        self.workers[pid] = status_w
        _write_status(status_w, STATUS_PID, pid)

    def fork_worker(self, task_r: int, result_w: int, status_w: int, segments: int) -> int:
        pid = os.fork()
        if pid == 0:
            self.run_child(lambda: self.become_worker(task_r, result_w, status_w, segments))
        return pid

    def time_until_spare(self) -> float | None:
        """How long to wait for requests before forking a spare; None when no
        spare is wanted."""
        if self.single or not self.keeps_spare or self.spare is not None:
            return None
        return max(SPARE_REFILL_DELAY, self.no_spare_until - time.monotonic())

    def fork_spare(self) -> None:
        try:
            ours, theirs = socket.socketpair()
        except OSError:
            self.no_spare_until = time.monotonic() + SPARE_RETRY_DELAY
            return
        try:
            pid = os.fork()
        except OSError:
            # Out of processes or memory: workers are forked on demand as
            # before, and the spare comes back once forking works again.
            ours.close()
            theirs.close()
            self.no_spare_until = time.monotonic() + SPARE_RETRY_DELAY
            return
        if pid == 0:
            ours.close()
            self.run_child(lambda: self.wait_as_spare(theirs))
        theirs.close()
        self.spare = _Spare(pid, ours)

    def run_child(self, body: Callable[[], None]) -> None:
        """In a forked child: run ``body``, then exit; never returns."""
        code = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            _flush_stdio()
            os._exit(code)

    def leave_zygote(self) -> None:
        """In a forked child: drop the zygote's signal handling and descriptors."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.selector.close()
        self.control.close()
        if self.spare is not None:
            self.spare.sock.close()
        for fd in (self.wakeup_r, self.wakeup_w, *self.workers.values()):
            os.close(fd)

    def wait_as_spare(self, sock: socket.socket) -> None:
        self.leave_zygote()
        name = _core.process_name()
        _core.set_process_name(SPARE_NAME)
        try:
            _message, fds, _flags, _addr = socket.recv_fds(sock, 1, 3)
        except OSError:
            return  # the zygote is gone
        sock.close()
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return  # the zygote is gone (EOF)
        _core.set_process_name(name)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _core.become_worker()
        worker_main(*fds)

    def become_worker(self, task_r: int, result_w: int, status_w: int, segments: int) -> None:
        self.leave_zygote()
        os.close(status_w)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _core.become_worker()
        worker_main(task_r, result_w, segments)

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def reap(self) -> None:
        """Reap every exited child; report the workers' statuses. Orphans that
        were re-parented to us are reaped too, so nothing stays a zombie."""
        while (reaped := _reap_one()) is not None:
            pid, status, max_rss_kib = reaped
            status_fd = self.workers.pop(pid, None)
            if status_fd is not None:
                report_exit(status_fd, status, max_rss_kib)
                os.close(status_fd)
                if status != 0:  # not a clean exit: workers die here
                    self.keeps_spare = True
            elif self.spare is not None and pid == self.spare.pid:
                self.spare.sock.close()  # killed while waiting: make another
                self.spare = None

    def release_spare(self) -> None:
        """No pool needs a spare any more: let it go (its socket's end of file
        tells it to exit; it is reaped like any child), and keep none until a
        worker dies again. Like the stdlib's forkserver, the zygote is then all
        that outlives the pools."""
        self.keeps_spare = False
        if self.spare is not None:
            self.spare.sock.close()
            self.spare = None

    def kill_everything(self) -> None:
        for pid in list(self.workers):
            _core.kill_tree(pid)
        _core.kill_descendants(os.getpid())
        self.reap_children(KILLED_REAP_LIMIT)

    def reap_children(self, limit: float) -> None:
        """Reap what was just killed, so that nothing we leave behind waits as
        a zombie on whatever process adopts it (not every init reaps)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.001)


def _reap_one() -> tuple[int, int, int] | None:
    """One exited child's ``(pid, wait status, peak RSS in KiB)``, or None if
    none is waiting. ``wait4`` gives the peak at no extra cost."""
    try:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
    except ChildProcessError:
        return None
    return None if pid == 0 else (pid, status, usage.ru_maxrss)


# A status record's value is an i32: a peak above 2 TiB reads as 2 TiB.
_MAX_STATUS_VALUE = 2**31 - 1


def report_exit(fd: int, status: int, max_rss_kib: int) -> None:
    """A worker's end, as the pool reads it (src/wire/status.rs): its peak
    memory first, so that it is known when the exit is."""
    _write_status(fd, STATUS_MAX_RSS, min(max(max_rss_kib, 0), _MAX_STATUS_VALUE))
    _write_status(fd, STATUS_EXIT, status)


def receive_request(control: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message from the pool: ``(WORKER_REQUEST, [task pipe read end,
    result pipe write end, status pipe write end, segment socket])`` or ``(RELEASE_SPARE, [])``.
    None when the lifeline is gone; ``(b"", [])`` for a message to ignore
    (interrupted, or malformed: its descriptors are closed)."""
    try:
        message, fds, _flags, _addr = socket.recv_fds(
            control, len(WORKER_REQUEST), WORKER_REQUEST_FDS
        )
    except InterruptedError:
        return b"", []
    except OSError:
        return None
    if not message:
        return None
    if message == RELEASE_SPARE and not fds:
        return message, []
    if message != WORKER_REQUEST or len(fds) != WORKER_REQUEST_FDS:
        for fd in fds:
            os.close(fd)
        return b"", []
    return message, fds


def _write_status(fd: int, kind: int, value: int) -> None:
    try:
        write_status(fd, kind, value)
    except OSError:
        pass  # the pool closed its end: it no longer waits for this worker
