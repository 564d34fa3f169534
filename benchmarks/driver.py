"""Run one workload against one implementation, in this fresh process.

    python driver.py IMPL WORKLOAD PARAMS_JSON

run.py starts one driver per (implementation, workload, repetition), with the
interpreter of the implementation's environment and benchmarks/ on PYTHONPATH.
Lines on stdout, each a tag and a JSON object:

    RESULT {...}     the measurement (or ERROR {...} if the workload raised)
    SHUTDOWN {...}   the pools shut down cleanly (or SHUTDOWN-HUNG {...})

The result is printed before the pools are shut down, so a pool that hangs in
shutdown still reports what it measured, and the hang is reported as such.
Keep the imports at the top light: forkserver and spawn children import this
file again as __mp_main__.
"""

import json
import os
import sys
import threading
import time
import traceback


def emit(tag, payload):
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def start_watchdog(grace_s):
    """Exit hard if shutdown (or interpreter exit) takes longer than grace_s.

    A daemon thread keeps running through atexit handlers and never delays
    a normal exit. run.py sweeps up whatever processes the pool left.
    """

    def bite():
        time.sleep(grace_s)
        emit("SHUTDOWN-HUNG", {"after_s": grace_s})
        os._exit(3)

    threading.Thread(target=bite, name="bench-watchdog", daemon=True).start()


def measure(impl_name, workload_name, params):
    """Run the workload and print its result; return the Bench holding the pools."""
    from adapters import IMPLS
    from workloads import WORKLOADS, Bench

    bench = None
    try:
        adapter = IMPLS[impl_name].factory()
        t0 = time.perf_counter()
        version = adapter.load()
        import_ms = (time.perf_counter() - t0) * 1e3
        bench = Bench(adapter)
        result = WORKLOADS[workload_name](bench, params)
    except Exception as exc:
        emit("ERROR", {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
    else:
        result.update(version=version, import_ms=import_ms)
        emit("RESULT", result)
    return bench


def main(argv):
    impl_name, workload_name, params = argv[1], argv[2], json.loads(argv[3])
    bench = measure(impl_name, workload_name, params)
    start_watchdog(params.get("shutdown_grace_s", 20.0))
    t0 = time.perf_counter()
    if bench is not None:
        bench.close_all()
    emit("SHUTDOWN", {"shutdown_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main(sys.argv)
