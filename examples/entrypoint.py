"""Timeouts: 50 tasks of random length, each allowed 0.2 s once it starts.

Each task that finishes prints "." from its worker process; each task that
runs out of time is killed (SIGKILL) and the parent prints "x". The pool
replaces the killed worker and carries on.

    $ python examples/entrypoint.py
    ...xxx..xxx....xx..xx.....x..xx.xx.x.x.xx...xx...x
"""

import random
import time

import deadpool


def work():
    time.sleep(random.random() * 0.4)
    print(".", end="", flush=True)
    return 1


def main():
    with deadpool.Deadpool() as exe:
        futs = [exe.submit(work, deadpool_timeout=0.2) for _ in range(50)]
        for fut in deadpool.as_completed(futs):
            try:
                assert fut.result() == 1
            except deadpool.TimeoutError:
                print("x", end="", flush=True)


if __name__ == "__main__":
    main()
    print()
