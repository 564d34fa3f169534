"""Priorities: 25 tasks at priority 10 (".") and 25 at priority 0 ("!").

Lower numbers run first, so the "!" tasks crowd the front of the line even
though each one was submitted after a "." task. Timeouts still apply: a task
that runs past 0.2 s is killed and the parent prints "x".

    $ python examples/priorities.py
    !xxx!xxxx!!xx!!!x!!!!!!x!..xx..xx.xx...xx.x..xx...
"""

import random
import time

import deadpool


def work(symbol):
    time.sleep(random.random() * 0.4)
    print(symbol, end="", flush=True)
    return 1


def main():
    # A backlog deep enough to hold every task, so the priorities decide the
    # order of all of them rather than of a small window.
    with deadpool.Deadpool(max_backlog=100) as exe:
        futs = []
        for _ in range(25):
            futs.append(exe.submit(work, ".", deadpool_timeout=0.2, deadpool_priority=10))
            futs.append(exe.submit(work, "!", deadpool_timeout=0.2, deadpool_priority=0))

        for fut in deadpool.as_completed(futs):
            try:
                assert fut.result() == 1
            except deadpool.TimeoutError:
                print("x", end="", flush=True)


if __name__ == "__main__":
    main()
    print()
