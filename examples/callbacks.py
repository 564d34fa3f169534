"""Callbacks: handle each result as it arrives instead of keeping futures.

With a bounded backlog, submit() waits whenever the queue is full, and no
list of futures grows in the parent, so memory stays flat however many tasks
go through. Output as in entrypoint.py: "." from each worker that finished,
"x" from the parent for each task that ran out of time.

    $ python examples/callbacks.py
    ..x.....x.x.xxxx.xxxx...xx..xx..xxx..x..x.x.x..x.x
"""

import random
import time

import deadpool


def work():
    time.sleep(random.random() * 0.4)
    print(".", end="", flush=True)
    return 1


def on_done(fut):
    try:
        assert fut.result() == 1
    except deadpool.TimeoutError:
        print("x", end="", flush=True)


def main():
    with deadpool.Deadpool() as exe:
        for _ in range(50):
            exe.submit(work, deadpool_timeout=0.2).add_done_callback(on_done)


if __name__ == "__main__":
    main()
    print()
