"""Payloads: how a task's call and its result are pickled, and how their large
buffers travel through shared memory instead of the pipes.

Pickle protocol 5 hands a pickler's ``buffer_callback`` every buffer that a
reducer offers as a ``pickle.PickleBuffer`` (numpy arrays do, and so does
anything built on them). Those of at least ``SHARED_MIN_BYTES`` stay out of
the pickle stream: they are written into one shared-memory segment (a
``memfd``, see src/os/segment.rs) and the pickle names them by position. The
frame's body then starts with a layout, ``<I`` count and per buffer ``<QQB``
(offset, length, writable), followed by the pickle. The receiver fills a new
``bytes`` (a read-only buffer) or ``bytearray`` (a writable one, so that a
numpy array arrives writable) straight from the segment and unpickles with
those: each large buffer is copied once per direction, from memory the pool
keeps warm, rather than through pickle, a pipe and the core's buffers.

``bytes`` and ``bytearray`` never reach the callback (pickle writes them
inline), so those large enough are wrapped here (``_Large``) where users
pass them: positional and keyword arguments, the elements of a tuple or list
and the values of a dict passed as one, and the same for a return value.

A segment is lent by the pool (src/parent/segments.rs). The worker reads the
task's buffers from it and writes a large result back into the same segment
(grown if need be), or, for a task that came without one, into a segment of
its own that it sends along. A payload over the pool's
``max_shared_memory_bytes`` fails its task with ``PayloadTooLarge``; one that
finds the cap reached by others travels through the pipe.
"""

from __future__ import annotations

import os
import pickle
import struct
import types

from deadpool import _pickling

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

PROTOCOL = pickle.HIGHEST_PROTOCOL
# Below this a buffer stays in the pickle: a segment costs a handful of
# system calls each way, which a pipe beats for small buffers.
SHARED_MIN_BYTES = 256 * 1024
# Containers wider than this are not searched for large bytes (their buffers
# still go out of band if a reducer offers them): a submit must not cost time
# proportional to a long list.
_SEARCH_LIMIT = 64
_ALIGN = 64
_FUNCTION = types.FunctionType
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<QQB")


class PayloadTooLarge(ValueError):
    """A payload larger than the pool's ``max_shared_memory_bytes``."""


def _as_is(buffer: Any) -> Any:
    """``_Large``'s reconstructor: the receiver made the right object already
    (or, in band, pickle did)."""
    return buffer


class _Large:
    """A large ``bytes`` or ``bytearray``, offered to pickle as a buffer."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _as_is, (pickle.PickleBuffer(self.data),)


def lift(value: Any) -> Any:
    """``value`` with its large bytes wrapped: itself, or one container level."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return _Large(value) if len(value) >= SHARED_MIN_BYTES else value
    if kind is tuple or kind is list:
        if len(value) <= _SEARCH_LIMIT and any(map(_is_large, value)):
            return kind(map(_wrapped, value))
    elif kind is dict and len(value) <= _SEARCH_LIMIT and any(map(_is_large, value.values())):
        return {k: _wrapped(v) for k, v in value.items()}
    return value


def _is_large(value: Any) -> bool:
    kind = type(value)
    return (kind is bytes or kind is bytearray) and len(value) >= SHARED_MIN_BYTES


def _wrapped(value: Any) -> Any:
    return _Large(value) if _is_large(value) else value


def lift_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if args:
        args = tuple(map(lift, args))
    if kwargs:
        kwargs = {k: lift(v) for k, v in kwargs.items()}
    return fn, args, kwargs


class _HasLarge(Exception):
    pass


def _small_only(buffer: pickle.PickleBuffer) -> bool:
    """Keeps a small buffer in the pickle; stops at a large one."""
    try:
        nbytes = buffer.raw().nbytes
    except BufferError:  # not contiguous: pickle copies it in
        return True
    if nbytes < SHARED_MIN_BYTES:
        return True
    raise _HasLarge


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """``obj`` pickled, its large buffers left out: ``(pickle, buffers)``.
    Nearly every payload has none: it is pickled once, with no list or
    closure made for it."""
    try:
        return pickle.dumps(obj, PROTOCOL, buffer_callback=_small_only), _NONE
    except _HasLarge:
        return _dumps_collecting(obj)


_NONE: list[memoryview] = []


def _dumps_collecting(obj: Any) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in
            return True
        if view.nbytes < SHARED_MIN_BYTES:
            return True
        buffers.append(view)
        return False

    return pickle.dumps(obj, PROTOCOL, buffer_callback=out_of_band), buffers


def layout(buffers: list[memoryview]) -> tuple[bytes, int, int]:
    """The layout header for ``buffers``, the segment size they need and
    their total size."""
    entries = [_COUNT.pack(len(buffers))]
    offset = total = 0
    for view in buffers:
        entries.append(_ENTRY.pack(offset, view.nbytes, not view.readonly))
        total += view.nbytes
        offset = -(-(offset + view.nbytes) // _ALIGN) * _ALIGN
    return b"".join(entries), offset, total


def check_size(nbytes: int, cap: int) -> None:
    if nbytes > cap:
        raise PayloadTooLarge(
            f"the payload's large buffers take {nbytes} bytes, more than the pool's "
            f"max_shared_memory_bytes={cap}; raise it (0 sends everything through the pipes)"
        )


def _placed(buffers: list[memoryview]) -> Iterator[tuple[int, memoryview]]:
    """Each buffer with its offset in the segment, as ``layout`` places it."""
    offset = 0
    for view in buffers:
        yield offset, view
        offset = -(-(offset + view.nbytes) // _ALIGN) * _ALIGN


def write(fd: int, buffers: list[memoryview]) -> None:
    """A worker writes the buffers into the segment ``fd``."""
    for offset, view in _placed(buffers):
        _write_all(fd, view, offset)


def write_lent(segment: Any, buffers: list[memoryview]) -> None:
    """The parent writes the buffers into a segment it lends (through its
    mapping of it: src/os/segment.rs)."""
    for offset, view in _placed(buffers):
        segment.write(offset, view)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def loads(body: bytes, read: Callable[[int, int, bool], Any]) -> tuple[Any, int]:
    """The object of a shared frame's ``body``, its buffers filled by
    ``read(offset, length, writable)`` from the segment, and the bytes those
    buffers took."""
    (count,) = _COUNT.unpack_from(body)
    position = _COUNT.size
    buffers = []
    total = 0
    for _ in range(count):
        offset, length, writable = _ENTRY.unpack_from(body, position)
        position += _ENTRY.size
        buffers.append(read(offset, length, bool(writable)))
        total += length
    with memoryview(body) as view:
        return pickle.loads(view[position:], buffers=buffers), total


def pack_task(core: Any, call: tuple[Any, ...], cap: int, main_by_value: bool) -> tuple[bytes, Any]:
    """A task's ``(payload, segment)``: the segment (lent by ``core``) holds
    its large buffers, or is None. Pickle refuses a lambda, a closure or a
    function Dask shipped by value: cloudpickle writes those by value. Raises
    what neither can write, or ``PayloadTooLarge``."""
    try:
        if not cap or (type(call[0]) is _FUNCTION and not call[1] and not call[2]):
            # A plain function and no arguments: no buffer to share.
            return _by_reference(call, main_by_value), None
        lifted = lift_call(*call)
        data, buffers = dumps(lifted)
        if main_by_value and b"__main__" in data:
            return _by_reference(call, main_by_value), None
    except Exception:
        return _pickling.by_value(call), None
    if not buffers:
        return data, None
    return _shared(core, lifted, data, buffers, cap)


def _by_reference(call: tuple[Any, ...], main_by_value: bool) -> bytes:
    """A plain pickle; one naming an interactive ``__main__``, by value (by
    reference if cloudpickle cannot: under "fork" the worker may still find
    it, as ``__main__`` was when the pool was made)."""
    data = pickle.dumps(call, PROTOCOL)
    if main_by_value and b"__main__" in data:
        try:
            return _pickling.by_value(call)
        except Exception:
            pass  # by reference, as said
    return data


def _shared(
    core: Any, lifted: tuple[Any, ...], data: bytes, buffers: list[memoryview], cap: int
) -> tuple[bytes, Any]:
    header, size, total = layout(buffers)
    check_size(total, cap)
    segment = core.lend_segment(size)
    if segment is not None:
        try:
            write_lent(segment, buffers)
        except OSError:  # no memory for its pages: the pipe may still do
            segment.release()
        else:
            core.note_shared_bytes(total)
            return header + data, segment
    return pickle.dumps(lifted, PROTOCOL), None


def new_segment(size: int) -> int:
    """A worker's own segment of ``size`` bytes (see src/os/segment.rs)."""
    fd = os.memfd_create("deadpool-payload", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fit(fd: int, size: int) -> None:
    """Grows the segment ``fd`` to ``size`` bytes if it is smaller."""
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
