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
reads the live objects (see ``_zygote.fork_zygote``). What multiprocessing's
pickler refuses (a lambda or a nested function as initializer) is pickled
with cloudpickle, with multiprocessing's reducers still in place.
"""

from __future__ import annotations

import io
import multiprocessing.context
import pickle
from collections.abc import Mapping
from multiprocessing import resource_sharer
from multiprocessing.reduction import ForkingPickler
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


def _dump_with(
    pickler: type[pickle.Pickler], settings: dict[str, Any], popen: _ToOneWorker
) -> bytes:
    buf = io.BytesIO()
    multiprocessing.context.set_spawning_popen(popen)
    try:
        pickler(buf, _PICKLE_PROTOCOL).dump(settings)
    finally:
        multiprocessing.context.set_spawning_popen(None)
    return buf.getvalue()


def _dump(settings: dict[str, Any], probe: _Probe) -> tuple[type[pickle.Pickler], bytes]:
    """The pickler that can write ``settings`` (multiprocessing's; where it
    refuses, say a nested function as initializer, cloudpickle with
    multiprocessing's reducers) and what it wrote through ``probe``, which
    registers no descriptor. Raises TypeError if neither can."""
    try:
        return ForkingPickler, _dump_with(ForkingPickler, settings, probe)
    except Exception:
        from deadpool import _pickling

        cloud = _pickling.cloud_pickler_class()
        try:
            return cloud, _dump_with(cloud, settings, probe)
        except Exception as exc:
            raise TypeError(
                f"initializer, finalizer and their arguments must be picklable: {exc}"
            ) from exc


def for_every_worker(settings: dict[str, Any]) -> bytes | None:
    """The pickled settings if every worker can read the same bytes; None if
    they carry descriptors (then each worker needs ``for_one_worker``).
    Raises TypeError if they cannot be pickled at all."""
    probe = _Probe()
    _, data = _dump(settings, probe)
    return data if probe.descriptors == 0 else None


def for_one_worker(settings: dict[str, Any]) -> bytes:
    # The probe first, so that an attempt that fails halfway (pickle refusing
    # a closure) leaves no descriptor registered with the resource sharer.
    pickler, _ = _dump(settings, _Probe())
    return _dump_with(pickler, settings, _ToOneWorker())
