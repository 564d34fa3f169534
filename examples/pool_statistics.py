"""Statistics: what the pool has done, and what its workers are doing now.

Between 1 and 4 workers: 20 tasks succeed and 20 raise. Once the work is
done the extra workers retire, leaving min_workers alive and idle.

    $ python examples/pool_statistics.py
    20 of 40 tasks failed
    {'tasks_received': 40,
     'tasks_launched': 40,
     'tasks_failed': 20,
     'worker_processes_created': 4,
     'max_workers_busy_concurrently': 4,
     'worker_processes_still_alive': 1,
     'worker_processes_idle': 1,
     'worker_processes_busy': 0}
"""

import pprint
import time

import deadpool


def ok(i):
    time.sleep(0.05)
    return i


def fail(i):
    raise ValueError(i)


def main():
    with deadpool.Deadpool(min_workers=1, max_workers=4, max_backlog=10) as exe:
        futs = []
        for i in range(20):
            futs.append(exe.submit(ok, i))
            futs.append(exe.submit(fail, i))

        failed = 0
        for fut in deadpool.as_completed(futs):
            if fut.exception() is not None:
                failed += 1
        print(f"{failed} of {len(futs)} tasks failed")

        time.sleep(0.5)  # give the spare workers a moment to retire
        pprint.pprint(exe.get_statistics(), sort_dicts=False)


if __name__ == "__main__":
    main()
