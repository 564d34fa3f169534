"""The workloads. Each takes a Bench (an adapter plus the pools it made) and a
dict of parameters, and returns a flat dict of numbers for the report.

Pools are left open on return: the driver prints the result first and shuts
the pools down afterwards, so a pool that hangs in shutdown still reports what
it measured.
"""

import math
import os
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import CancelledError, wait
from concurrent.futures import TimeoutError as FuturesTimeoutError

import proctree
import tasks

MIB = 1 << 20


class Bench:
    def __init__(self, adapter):
        self.adapter = adapter
        self.pools = []

    def make(self, workers):
        pool = self.adapter.make(workers)
        self.pools.append(pool)
        return pool

    def submit(self, pool, fn, *args, timeout=None):
        return self.adapter.submit(pool, fn, *args, timeout=timeout)

    def batch(self, pool, fn, arg_tuples):
        return self.adapter.batch(pool, fn, arg_tuples)

    def close(self, pool):
        self.pools.remove(pool)
        self.adapter.shutdown(pool)

    def close_all(self):
        while self.pools:
            self.close(self.pools[-1])


def warm_up(bench, pool, workers, hold=0.05, attempts=5):
    """Run one task on every worker, so no measurement pays for worker startup.

    Tasks hold their worker for ``hold`` seconds so that each worker takes one;
    pools that start workers lazily (the stdlib) get to start them all.
    Returns the set of worker pids seen.
    """
    pids = set()
    for _ in range(attempts):
        pids.update(bench.batch(pool, tasks.sleep_then_pid, [(hold,)] * workers))
        if len(pids) >= workers:
            break
    for _ in range(20):
        list(bench.batch(pool, tasks.noop, [()]))
    return pids


class Meter:
    """Wall clock and the parent's own CPU time (all its threads, no children)."""

    def __init__(self):
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        return self


def throughput(bench, p):
    pool = bench.make(p["workers"])
    warm_up(bench, pool, p["workers"])
    n = p["tasks"]
    meter = Meter()
    futures = [bench.submit(pool, tasks.noop) for _ in range(n)]
    submitted = time.perf_counter() - meter.wall0
    for f in futures:
        f.result()
    meter.stop()
    return {
        "tasks_per_s": n / meter.wall,
        "cpu_us_per_task": meter.cpu / n * 1e6,
        "submit_phase_s": submitted,
        "wall_s": meter.wall,
    }


def latency(bench, p):
    pool = bench.make(p["workers"])
    warm_up(bench, pool, p["workers"])
    samples = []
    for _ in range(p["round_trips"]):
        t0 = time.perf_counter()
        bench.submit(pool, tasks.noop).result()
        samples.append(time.perf_counter() - t0)
    samples_us = sorted(s * 1e6 for s in samples)
    return {
        "median_us": statistics.median(samples_us),
        "p99_us": samples_us[min(len(samples_us) - 1, math.ceil(0.99 * len(samples_us)) - 1)],
        "min_us": samples_us[0],
    }


# Payload workloads measure a warm pool, as the others do: each first runs the
# batch it measures once, so that whatever memory a library keeps for payloads
# (our shared-memory segments, pipe and pickle buffers) has been touched. On
# this virtual machine the first touch of fresh memory costs more than copying
# it, and a pool that lives for one batch is not what a payload-heavy service
# runs. RESULTS.md also shows the run made with one warm-up task per worker.
WARM_BATCH = "the measured batch, once"


def payload(bench, p):
    """``size_mib`` MiB of random bytes to every task, which returns them."""
    workers, n = p["workers"], p["tasks"]
    pool = bench.make(workers)
    warm_up(bench, pool, workers)
    data = os.urandom(p["size_mib"] * MIB)
    # The same batch once first, unmeasured (see the note above).
    for result in bench.batch(pool, tasks.echo, [(data,)] * n):
        _check_bytes(result, data, 0)
    meter = Meter()
    for i, result in enumerate(bench.batch(pool, tasks.echo, [(data,)] * n)):
        _check_bytes(result, data, i)
    meter.stop()
    return {
        "mib_s_each_way": n * p["size_mib"] / meter.wall,
        "cpu_ms_per_task": meter.cpu / n * 1e3,
        "wall_s": meter.wall,
    }


SLICE = 4096  # bytes in each slice of a payload compared byte for byte
SLICES = 8


def _check_bytes(got, sent, task):
    """Type, length, and 8 slices of 4 KiB byte for byte: the first, the last and
    six at offsets that change with the task. A few µs, where hashing 64 MiB would
    cost more than moving it."""
    if type(got) is not type(sent) or len(got) != len(sent):
        raise AssertionError(f"payload came back as {type(got).__name__} of {len(got)} bytes")
    rng = random.Random(task)
    offsets = [0, len(sent) - SLICE, *(rng.randrange(len(sent) - SLICE) for _ in range(6))]
    for at in offsets:
        if got[at : at + SLICE] != sent[at : at + SLICE]:
            raise AssertionError(f"payload of task {task} differs at bytes {at}..{at + SLICE}")


STRIDE = 4099  # every STRIDE-th element of an array is compared (about 3,000 of 12.5M)
EDGE = 1000  # and the first and last EDGE elements


def numpy_arrays(bench, p):
    """A float64 array of ``mb`` MB to every task, which returns it as received."""
    import numpy  # a benchmark-only dependency, imported by this workload alone

    workers, n = p["workers"], p["tasks"]
    pool = bench.make(workers)
    warm_up(bench, pool, workers)
    array = numpy.random.default_rng(12).random(p["mb"] * 10**6 // 8)
    # The same batch once first, unmeasured (see the note above).
    for result in bench.batch(pool, tasks.echo, [(array,)] * n):
        _check_array(numpy, result, array, 0)
    meter = Meter()
    for i, result in enumerate(bench.batch(pool, tasks.echo, [(array,)] * n)):
        _check_array(numpy, result, array, i)
    meter.stop()
    return {
        "mb_s_each_way": n * array.nbytes / 1e6 / meter.wall,
        "cpu_ms_per_task": meter.cpu / n * 1e3,
        "wall_s": meter.wall,
        "numpy": numpy.__version__,
    }


def _check_array(numpy, got, sent, task):
    """Type, shape, dtype, the first and last 1,000 elements and every 4,099th
    (from an offset that changes with the task) equal to the sender's."""
    if not isinstance(got, numpy.ndarray) or got.shape != sent.shape or got.dtype != sent.dtype:
        kind = f"{type(got).__name__} {getattr(got, 'shape', '')} {getattr(got, 'dtype', '')}"
        raise AssertionError(f"array came back as {kind}")
    at = task % STRIDE
    for part in (slice(0, EDGE), slice(-EDGE, None), slice(at, None, STRIDE)):
        if not numpy.array_equal(got[part], sent[part]):
            raise AssertionError(f"array of task {task} differs in [{part}]")


def timeouts(bench, p):
    if not bench.adapter.timeouts:
        return {"na": True}
    workers, n, limit = p["workers"], p["tasks"], p["timeout_s"]
    pool = bench.make(workers)
    warm_up(bench, pool, workers)
    marker_dir = tempfile.mkdtemp(prefix="deadpool-bench-")
    try:
        start, done_at, futures = _run_marked_sleeps(bench, pool, p, marker_dir)
        started_at = _read_marks(marker_dir)
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)
    outcome = _classify_timeouts(futures)
    overshoot_ms = sorted(
        (done_at[i] - (started_at[i] + limit)) * 1e3 for i in done_at if i in started_at
    )
    wall = max(done_at.values(), default=time.monotonic()) - start
    ideal = math.ceil(n / workers) * limit
    return {
        "wall_s": wall,
        "ideal_s": ideal,
        # Each worker runs n/workers tasks back to back; what the wall time
        # exceeds the ideal by is spent, per timeout, on kill + reap + replace.
        "lost_ms_per_timeout": (wall - ideal) * workers / n * 1e3,
        "overshoot_median_ms": statistics.median(overshoot_ms) if overshoot_ms else None,
        "overshoot_max_ms": overshoot_ms[-1] if overshoot_ms else None,
        **outcome,
    }


def _run_marked_sleeps(bench, pool, p, marker_dir):
    done_at = {}

    def stamp(index):
        return lambda _future: done_at.setdefault(index, time.monotonic())

    start = time.monotonic()
    futures = []
    for i in range(p["tasks"]):
        f = bench.submit(
            pool, tasks.marked_sleep, marker_dir, i, p["sleep_s"], timeout=p["timeout_s"]
        )
        f.add_done_callback(stamp(i))
        futures.append(f)
    wait(futures, timeout=p["deadline_s"])
    return start, done_at, futures


def _read_marks(marker_dir):
    marks = {}
    for name in os.listdir(marker_dir):
        with open(os.path.join(marker_dir, name)) as f:
            marks[int(name)] = float(f.read())
    return marks


def _classify_timeouts(futures):
    counts = {"timed_out": 0, "finished": 0, "other_errors": 0, "unresolved": 0}
    for f in futures:
        if not f.done():
            counts["unresolved"] += 1
        elif _error_of(f) is None:
            counts["finished"] += 1
        elif isinstance(_error_of(f), (TimeoutError, FuturesTimeoutError)):
            counts["timed_out"] += 1
        else:
            counts["other_errors"] += 1
    return counts


def crash(bench, p):
    calm = _crash_run(bench, p, period=0)
    killing = _crash_run(bench, p, period=p["period"])
    return {
        **killing,
        "wall_nokill_s": calm["wall_s"],
        "wall_ratio": killing["wall_s"] / calm["wall_s"],
        "nokill_innocent_lost": calm["innocent_lost"],
    }


def _crash_run(bench, p, period):
    pool = bench.make(p["workers"])
    warm_up(bench, pool, p["workers"])
    meter = Meter()
    futures, submit_error = [], None
    for i in range(p["tasks"]):
        try:
            futures.append(bench.submit(pool, tasks.die_every, i, period))
        except Exception as exc:  # a broken pool refuses new work: that is the finding
            submit_error = type(exc).__name__
            break
    wait(futures, timeout=p["deadline_s"])
    meter.stop()
    result = _classify_crash(futures, p["tasks"], period)
    result.update(wall_s=meter.wall, submit_error=submit_error)
    result["broke"] = bool(submit_error) or result["innocent_lost"] > 0
    if not result["unresolved"]:
        # A pool with stuck futures may hang in shutdown: leave it to the
        # driver, which shuts pools down only after reporting.
        bench.close(pool)
    return result


def _error_of(future):
    """The exception of a done future, counting cancellation as one."""
    if future.cancelled():
        return CancelledError()
    return future.exception()


def _classify_crash(futures, n, period):
    def doomed(i):
        return bool(period) and i % period == period - 1

    out = {"ok": 0, "killed_errors": 0, "innocent_errors": 0, "unresolved": 0}
    error_types = set()
    for i, f in enumerate(futures):
        if not f.done():
            out["unresolved"] += 1
        elif _error_of(f) is None and f.result() == i:
            out["ok"] += 1
        elif doomed(i):
            out["killed_errors"] += 1
        else:
            out["innocent_errors"] += 1
            error_types.add(type(_error_of(f)).__name__)
    innocent_total = sum(1 for i in range(n) if not doomed(i))
    out["innocent_lost"] = innocent_total - out["ok"]
    out["innocent_error_types"] = sorted(error_types)
    return out


def startup(bench, p):
    times = {}
    for label in ("cold_ms", "warm_ms"):
        t0 = time.perf_counter()
        pool = bench.make(p["workers"])
        bench.submit(pool, tasks.noop).result()
        times[label] = (time.perf_counter() - t0) * 1e3
        bench.close(pool)
    return times


def memory(bench, p):
    pool = bench.make(p["workers"])
    pids = warm_up(bench, pool, p["workers"], hold=0.3)
    time.sleep(p["settle_s"])  # let the pool go idle before reading its memory
    kids = proctree.descendants(os.getpid())
    pss = {pid: proctree.pss_kib(pid) for pid in kids}
    readable = {pid: kib for pid, kib in pss.items() if kib is not None}
    return {
        "pss_mib": sum(readable.values()) / 1024,
        "processes": len(readable),
        "workers_seen": len(pids),
        "driver_pss_mib": (proctree.pss_kib(os.getpid()) or 0) / 1024,
        "per_process": sorted(
            f"{proctree.role(pid)} {kib / 1024:.1f}" for pid, kib in readable.items()
        ),
    }


WORKLOADS = {
    "throughput": throughput,
    "latency": latency,
    "payload": payload,
    "payload-64m": payload,
    "numpy": numpy_arrays,
    "timeouts": timeouts,
    "crash": crash,
    "startup": startup,
    "memory": memory,
}
