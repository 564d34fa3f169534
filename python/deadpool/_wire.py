"""The wire between the Rust core and deadpool's Python code, defined once in
the core: frame tags, the zygote's status records and worker request, the
dispatcher's event kinds and the answers of ``Pool.cancel``.

Import the names from here (``from deadpool._wire import TAG_TASK``): a module
global is what a hot loop should read.
"""

try:
    from deadpool._core import (
        CANCEL_KILLED_RUNNING,
        CANCEL_NOT_FOUND,
        CANCEL_REMOVED_PENDING,
        EVENT_CANCELLED,
        EVENT_LOST,
        EVENT_RAISED,
        EVENT_RETURNED,
        EVENT_STARTED,
        EVENT_TIMED_OUT,
        STATUS_EXIT,
        STATUS_PID,
        TAG_CONFIG,
        TAG_ERR,
        TAG_OK,
        TAG_READY,
        TAG_RETIRE,
        TAG_TASK,
        WORKER_REQUEST,
        WORKER_REQUEST_FDS,
        read_preparation,
        write_status,
    )
except ImportError:
    # TEMPORARY until the core exports them: the values the core uses today.
    import os
    import struct

    # Frames, both directions (src/protocol.rs).
    TAG_CONFIG, TAG_TASK, TAG_RETIRE = 1, 2, 3
    TAG_READY, TAG_OK, TAG_ERR = 10, 11, 12
    # Status records, zygote -> pool (src/zygote.rs).
    STATUS_PID, STATUS_EXIT = 1, 2
    # A worker request, pool -> zygote: this message with the worker's fds.
    WORKER_REQUEST = b"WORKER\x00\x00"
    WORKER_REQUEST_FDS = 3
    # The dispatcher's (kind, task_id, pid, payload) events (src/pool.rs).
    EVENT_STARTED, EVENT_RETURNED, EVENT_RAISED = 0, 1, 2
    EVENT_TIMED_OUT, EVENT_CANCELLED, EVENT_LOST = 3, 4, 5
    # Pool.cancel's answer (src/pool.rs).
    CANCEL_NOT_FOUND, CANCEL_REMOVED_PENDING, CANCEL_KILLED_RUNNING = 0, 1, 2

    _STATUS = struct.Struct("<Ii")

    def write_status(fd: int, kind: int, value: int) -> None:
        """Write one status record to ``fd``; raises OSError on failure."""
        os.write(fd, _STATUS.pack(kind, value))

    def read_preparation(fd: int) -> bytes | None:
        """A u64 little-endian length, then that many bytes; None if the
        stream ends first. Blocks."""
        header = _read_exactly(fd, 8)
        if header is None:
            return None
        return _read_exactly(fd, int.from_bytes(header, "little"))

    def _read_exactly(fd: int, length: int) -> bytes | None:
        chunks = []
        while length:
            chunk = os.read(fd, min(length, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            length -= len(chunk)
        return b"".join(chunks)
