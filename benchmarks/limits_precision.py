"""How exact deadpool's memory limits and soft timeouts are, measured.

    python benchmarks/limits_precision.py [--trials 20] [--limit-mib 32]

For each kind of growth (Python objects, C ``malloc``, a child process) it
runs tasks that would grow to ten times the limit and reports how far past
the limit each had grown when the pool stopped it (``MemoryLimitError.
memory_used``, the supervisor's last reading, minus the limit). For soft
timeouts it reports how late ``SoftTimeoutError`` reached a sleeping task.
The README quotes its output."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import deadpool

from tests import limit_tasks

MiB = 1 << 20


def _summary(values: list[float], unit: str) -> str:
    values = sorted(values)
    return (
        f"median {statistics.median(values):.2f} {unit}, "
        f"min {values[0]:.2f}, max {values[-1]:.2f} ({len(values)} trials)"
    )


def memory(exe: deadpool.Deadpool, trials: int, limit: int) -> None:
    for kind, task in [
        ("Python objects", limit_tasks.grow_python),
        ("C malloc+memset", limit_tasks.grow_c),
        ("child process", limit_tasks.grow_in_child),
    ]:
        past = []
        for _ in range(trials):
            exc = exe.submit(task, 10 * limit, deadpool_memory_limit=limit).exception(timeout=120)
            assert isinstance(exc, deadpool.MemoryLimitError), repr(exc)
            past.append((exc.memory_used - limit) / MiB)
        print(f"memory, {kind}: past the {limit // MiB} MiB limit by {_summary(past, 'MiB')}")


def soft(exe: deadpool.Deadpool, trials: int) -> None:
    for seconds in (0.05, 0.5):
        late = []
        for _ in range(trials):
            fut = exe.submit(
                limit_tasks.sleep_through_soft_timeout, 60, deadpool_soft_timeout=seconds
            )
            outcome, ran_for = fut.result(timeout=120)
            assert outcome == "cleaned up"
            late.append((ran_for - seconds) * 1000)
        print(f"soft timeout {seconds} s, sleeping task: late by {_summary(late, 'ms')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--limit-mib", type=int, default=32)
    options = parser.parse_args()
    with deadpool.Deadpool(max_workers=1) as exe:
        memory(exe, options.trials, options.limit_mib * MiB)
        soft(exe, options.trials)


if __name__ == "__main__":
    main()
