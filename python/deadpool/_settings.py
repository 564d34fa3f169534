"""What a new worker is told: its initializer, finalizer and their arguments,
the trim threshold and the environment to apply.

They are pickled as multiprocessing pickles a process it starts (inside a
spawning context, with multiprocessing's reducers), so the objects it only
lets processes share "through inheritance" — ``Queue``, ``Lock``, ``Event``,
``Semaphore``, ``Condition``, ``Value``, ``Array`` — reach every worker. A
descriptor they hold (a queue's pipe, a shared array's memory) travels through
multiprocessing's resource sharer, which hands each registration to one
process: settings that carry one are pickled afresh for every worker. Under
"fork" nothing is pickled: the worker's zygote is forked from this process and
reads the live objects (see ``_zygote.fork_zygote``).
"""

from __future__ import annotations

import io
import multiprocessing.context
import multiprocessing.reduction
import pickle
from collections.abc import Mapping
from multiprocessing import resource_sharer
from typing import Any

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def snapshot(settings: dict[str, Any], environ: Mapping[str, str] | None) -> dict[str, Any]:
    """The settings of a worker made now: ``propagate_environ`` as it is now."""
    settings = dict(settings)
    if environ is not None:
        settings["environ"] = {str(k): str(v) for k, v in dict(environ).items()}
    return settings


class _ToOneWorker:
    """The spawning popen that multiprocessing's reducers talk to: each
    descriptor is registered with the resource sharer, for one worker."""

    DupFd = resource_sharer.DupFd

    def __init__(self) -> None:
        self.descriptors = 0

    def duplicate_for_child(self, fd: int) -> int:
        self.descriptors += 1
        return fd


class _Probe(_ToOneWorker):
    """Counts the descriptors the settings carry without registering any."""

    @staticmethod
    def DupFd(fd: int) -> None:  # multiprocessing's name
        return None


def _dump(settings: dict[str, Any], popen: _ToOneWorker) -> bytes:
    buf = io.BytesIO()
    multiprocessing.context.set_spawning_popen(popen)
    try:
        multiprocessing.reduction.ForkingPickler(buf, _PICKLE_PROTOCOL).dump(settings)
    except Exception as exc:
        raise TypeError(
            f"initializer, finalizer and their arguments must be picklable: {exc}"
        ) from exc
    finally:
        multiprocessing.context.set_spawning_popen(None)
    return buf.getvalue()


def for_every_worker(settings: dict[str, Any]) -> bytes | None:
    """The pickled settings if every worker can read the same bytes; None if
    they carry descriptors (then each worker needs ``for_one_worker``).
    Raises TypeError if they cannot be pickled at all."""
    probe = _Probe()
    data = _dump(settings, probe)
    return data if probe.descriptors == 0 else None


def for_one_worker(settings: dict[str, Any]) -> bytes:
    return _dump(settings, _ToOneWorker())
