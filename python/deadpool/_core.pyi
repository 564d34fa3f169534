"""Type stubs for deadpool's Rust core (src/lib.rs and src/bindings/)."""

from collections.abc import Callable
from types import ModuleType
from typing import Any, final

from typing_extensions import Buffer

__version__: str
# Hooks for the test suite (src/bindings/testing.rs); not part of any API.
_testing: ModuleType

# The wire (src/wire/): frame tags, status records, the zygote's worker
# request, the dispatcher's event kinds and the answers of Pool.cancel and
# Pool.try_submit.
TAG_CONFIG: int
TAG_TASK: int
TAG_RETIRE: int
TAG_TASK_SHARED: int
TAG_READY: int
TAG_OK: int
TAG_ERR: int
TAG_ERR_MEMORY: int
TAG_OK_SHARED: int
TAG_OK_SEGMENT: int
STATUS_PID: int
STATUS_EXIT: int
STATUS_MAX_RSS: int
WORKER_REQUEST: bytes
WORKER_REQUEST_FDS: int
RELEASE_SPARE: bytes
EVENT_STARTED: int
EVENT_RETURNED: int
EVENT_RAISED: int
EVENT_TIMED_OUT: int
EVENT_CANCELLED: int
EVENT_LOST: int
EVENT_OVER_MEMORY: int
CANCEL_NOT_FOUND: int
CANCEL_REMOVED_PENDING: int
CANCEL_KILLED_RUNNING: int
SUBMIT_ACCEPTED: int
SUBMIT_FULL: int
SUBMIT_CLOSED: int

@final
class Pool:
    def __new__(
        cls,
        *,
        max_workers: int,
        min_workers: int,
        max_backlog: int,
        max_tasks_per_child: int | None,
        max_worker_memory_bytes: int | None,
        start_method: str,
        argv: list[str],
        preparation: bytes,
        static_config: bytes | None,
        dispatch: Callable[[list[tuple[int, int, int | None, Any]]], None],
        make_config: Callable[[], bytes] | None,
        fork_zygote: Callable[[], tuple[int, int]] | None,
        forked_zygote: tuple[int, int] | None = None,
        max_shared_memory_bytes: int = 0,
    ) -> Pool: ...
    def submit(
        self,
        task_id: int,
        payload: bytes,
        priority: int,
        timeout: float | None,
        respect_bound: bool,
        memory_limit: int | None = None,
        segment: Segment | None = None,
    ) -> bool: ...
    def try_submit(
        self,
        task_id: int,
        payload: bytes,
        priority: int,
        timeout: float | None,
        memory_limit: int | None = None,
        segment: Segment | None = None,
    ) -> int: ...
    def lend_segment(self, nbytes: int) -> Segment | None: ...
    def notify_when_room(self, signal: RoomSignal) -> None: ...
    def cancel(self, task_id: int) -> int: ...
    def shutdown(
        self, cancel_pending: bool, kill_running: bool, signal: int | None = None
    ) -> list[int]: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def clear_workers(self) -> None: ...
    def note_failed(self) -> None: ...
    def note_rejected(self) -> None: ...
    def note_shared_bytes(self, nbytes: int) -> None: ...
    def statistics(self) -> dict[str, int]: ...

@final
class RoomSignal:
    """An eventfd that ``Pool.notify_when_room`` makes readable."""

    def __new__(cls) -> RoomSignal: ...
    def fileno(self) -> int: ...
    def clear(self) -> None: ...

@final
class Segment:
    """A shared-memory segment lent by a pool (src/bindings/segment.rs)."""

    def release(self) -> None: ...
    def write(self, offset: int, data: Buffer) -> None: ...
    def read(self, offset: int, length: int, writable: bool) -> bytes | bytearray: ...

def read_segment(fd: int, offset: int, length: int, writable: bool) -> bytes | bytearray: ...
def send_segment(socket: int, task_id: int, fd: int) -> None: ...
def receive_segment(socket: int, task_id: int) -> int: ...
def read_frame(fd: int) -> tuple[int, int, bytes] | None: ...
def write_frame(fd: int, tag: int, task_id: int, body: bytes) -> None: ...
def write_status(fd: int, kind: int, value: int) -> None: ...
def read_preparation(fd: int) -> bytes | None: ...
def become_worker() -> None: ...
def become_zygote() -> None: ...
def kill_tree(pid: int) -> None: ...
def kill_descendants(pid: int) -> int: ...
def tune_allocator_for_worker() -> None: ...
def rss_bytes(pid: int) -> int | None: ...
def process_name() -> str: ...
def set_process_name(name: str) -> None: ...
def malloc_trim() -> bool: ...
def forget_zygote_after_fork() -> None: ...
