"""Dask schedules, deadpool runs: a local Dask cluster whose worker runs tasks
in a Deadpool, with a per-task timeout, a crash and a retry.

Needs Dask's distributed (``pip install '.[dask]'`` from a clone). The
cluster is local, on 127.0.0.1; with a real one, connect the Client to its
scheduler instead and register the same plugin.

    $ python examples/dask_example.py
    dask worker 4242; tasks ran in deadpool workers [4250, 4251]
    sum of squares: 285
    slow task: killed after 0.5 s (TimeoutError)
    crashing task: Subprocess 4252 completed unexpectedly with exitcode -9 (Killed)
    flaky task, retries=1: ok on the second attempt
"""

import os
import signal
import tempfile
import time

import deadpool
import deadpool.dask
from dask.distributed import Client, LocalCluster


def square(x):
    return os.getpid(), x * x


def slow():
    time.sleep(60)


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


def flaky(marker):
    """Dies on the first attempt, as an OOM-killed task would."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        crash()
    return "ok on the second attempt"


def main():
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(deadpool.dask.DeadpoolPlugin(max_tasks_per_child=100))
        (worker_pid,) = client.run(os.getpid).values()

        with deadpool.dask.annotate():
            results = client.gather(client.map(square, range(10)))
        pids = sorted({pid for pid, _ in results})
        print(f"dask worker {worker_pid}; tasks ran in deadpool workers {pids}")
        print("sum of squares:", sum(value for _, value in results))

        with deadpool.dask.annotate(timeout=0.5):
            fut = client.submit(slow)
        try:
            fut.result()
        except deadpool.TimeoutError as exc:
            print(f"slow task: killed after 0.5 s ({type(exc).__name__})")

        with deadpool.dask.annotate():
            fut = client.submit(crash)
        try:
            fut.result()
        except deadpool.ProcessError as exc:
            print("crashing task:", exc)

        with tempfile.TemporaryDirectory() as tmp, deadpool.dask.annotate():
            fut = client.submit(flaky, os.path.join(tmp, "first-attempt"), retries=1)
            print("flaky task, retries=1:", fut.result())


if __name__ == "__main__":
    main()
