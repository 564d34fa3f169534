"""Benchmark deadpool side by side with its peers, in one run.

    python benchmarks/run.py [--quick] [--out FILE] [--impls a,b] [--workloads x,y] [--reps N]
                             [--baseline WHEEL_OR_DIR]

Run it with an interpreter that has our deadpool installed (``nox -s bench``
does). It makes or reuses two venvs beside this file, one with pebble and loky,
one with the original deadpool-executor, all from PyPI; the stdlib pools run in
the calling interpreter. Every (workload, repetition, implementation) is one
driver subprocess with a deadline; implementations alternate within each
repetition. With --baseline, an earlier build of ours (a wheel, or a source
checkout to build one from) runs beside ours from a third venv, and the report
adds ours / baseline ratios. Markdown goes to stdout, one progress line per step
to stderr. A full run also writes benchmarks/RESULTS.md (or --out FILE).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import launch  # noqa: E402
import report  # noqa: E402
from adapters import IMPLS  # noqa: E402

# Per workload: driver parameters, repetitions and the deadline of one driver run
# (generous: the slowest peer must finish, a hung one must not stall the run).
FULL = {
    "throughput": ({"workers": 2, "tasks": 20_000}, 5, 240),
    "latency": ({"workers": 2, "round_trips": 2_000}, 5, 120),
    "payload": ({"workers": 2, "tasks": 300, "size_mib": 1}, 5, 120),
    # Under ~20 s a run for the slowest peer: 1 GiB each way (pebble, ~120 MiB/s); 800 MB
    # of numpy each way (the stdlib, 50-70 MB/s: numpy pickled in band, copied several times).
    "payload-64m": ({"workers": 2, "tasks": 16, "size_mib": 64}, 3, 120),
    "numpy": ({"workers": 2, "tasks": 8, "mb": 100}, 3, 120),
    "timeouts": (
        {"workers": 2, "tasks": 100, "sleep_s": 30, "timeout_s": 0.2, "deadline_s": 60},
        3,
        90,
    ),
    "crash": ({"workers": 2, "tasks": 1_000, "period": 10, "deadline_s": 60}, 3, 150),
    "startup": ({"workers": 8}, 5, 60),
    "memory": ({"workers": 4, "settle_s": 1.0}, 3, 60),
}
QUICK = {
    "throughput": ({"workers": 2, "tasks": 1_000}, 1, 60),
    "latency": ({"workers": 2, "round_trips": 200}, 1, 60),
    "payload": ({"workers": 2, "tasks": 20, "size_mib": 1}, 1, 60),
    "payload-64m": ({"workers": 2, "tasks": 4, "size_mib": 64}, 1, 60),
    "numpy": ({"workers": 2, "tasks": 4, "mb": 100}, 1, 60),
    "timeouts": (
        {"workers": 2, "tasks": 4, "sleep_s": 30, "timeout_s": 0.2, "deadline_s": 15},
        1,
        30,
    ),
    "crash": ({"workers": 2, "tasks": 50, "period": 10, "deadline_s": 15}, 1, 30),
    "startup": ({"workers": 8}, 1, 30),
    "memory": ({"workers": 4, "settle_s": 0.2}, 1, 30),
}

# Non-default settings (the backlog variants) matter where many tasks queue up.
VARIANT_WORKLOADS = {"throughput", "payload"}
OURS = {name for name, impl in IMPLS.items() if impl.env == "ours" and "deadpool" in name}
# Workloads that need numpy, a benchmark-only dependency, in the implementation's interpreter.
NUMPY_WORKLOADS = {"numpy"}


DESCRIPTIONS = {
    "throughput": "{tasks:,} no-op tasks submitted, then all collected, {workers} workers, on a "
    "warm pool. Parent CPU = time.process_time() of the driver (all its threads, no child "
    "processes).",
    "latency": "{round_trips:,} sequential submit → result round trips of a no-op task on a "
    "warm pool of {workers} workers.",
    "payload": "{tasks} tasks, each with a {size_mib} MiB bytes argument (os.urandom) that it "
    "returns, {workers} workers, on a warm pool that moved the same batch once first; MiB/s each "
    "way = MiB sent one way / wall time. Checked on every result: type, length, and 8 slices of "
    "4 KiB byte for byte (the first, the last, six at offsets that vary per task).",
    "payload-64m": "",  # the same text as payload's, filled in below
    "numpy": "{tasks} tasks, each with a float64 array of {mb} MB (10^6 bytes) that it returns "
    "as received (the task is `return arg`), {workers} workers, on a warm pool that moved the "
    "same batch once first; MB/s each way = MB sent one way / wall time. Checked on every result: "
    "ndarray, shape, dtype, the first and last 1,000 elements and every 4,099th element (from an "
    "offset that varies per task) equal to the sender's. joblib-memmap: each batch is one "
    "joblib.Parallel call (loky backend, n_jobs={workers}, max_nbytes='1M'), its loky executor "
    "kept warm from the warm-up calls; the argument goes out as a memmap in /dev/shm (dumped "
    "once per call, hashed per task), the result comes back pickled, as joblib does for its own "
    "memmaps. Parent CPU includes that hashing.",
    "timeouts": "{tasks} tasks sleeping {sleep_s} s with a {timeout_s} s per-task timeout, "
    "{workers} workers. Ideal wall = ceil(tasks / workers) x timeout; lost per timeout = "
    "(wall - ideal) x workers / tasks; overshoot = when the future resolved - (when the task "
    "started in its worker + timeout). n/a: the library has no per-task timeout.",
    "crash": "{tasks:,} tasks, every {period}th SIGKILLs its own worker, {workers} workers, "
    "against the same run without kills. 'breaks': the pool went broken and innocent tasks "
    "failed.",
    "startup": "A pool of {workers} workers, from its constructor to its first result. cold: "
    "the first pool in a fresh process; warm: a second pool in the same process, after the "
    "first was shut down. import ms: importing the library.",
    "memory": "Total PSS (/proc/<pid>/smaps_rollup) of every descendant process of the "
    "driver, for an idle pool of {workers} workers after a warm-up task on each.",
}
DESCRIPTIONS["payload-64m"] = DESCRIPTIONS["payload"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks and repetitions")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--impls", help="comma-separated subset of: " + ",".join(IMPLS))
    parser.add_argument("--workloads", help="comma-separated subset of: " + ",".join(FULL))
    parser.add_argument("--reps", type=int, help="repetitions of every workload")
    parser.add_argument(
        "--baseline",
        metavar="WHEEL_OR_DIR",
        help="also run an earlier build of deadpool: a wheel, or a source checkout to build",
    )
    return parser.parse_args(argv)


def plan(args, ours_ok, numpy_ok):
    """The workloads (with parameters, reps, deadline) and implementations to run."""
    config = QUICK if args.quick else FULL
    workloads = args.workloads.split(",") if args.workloads else list(config)
    impls = args.impls.split(",") if args.impls else default_impls(args.baseline)
    unknown = [w for w in workloads if w not in config] + [i for i in impls if i not in IMPLS]
    if unknown:
        sys.exit(f"unknown workload or implementation: {', '.join(unknown)}")
    if not args.baseline and any(IMPLS[i].env == "baseline" for i in impls):
        sys.exit("the -baseline implementations need --baseline WHEEL_OR_DIR")
    if not ours_ok:
        log("WARNING: our deadpool is not importable here; its rows say 'not installed'")
    if not numpy_ok and NUMPY_WORKLOADS & set(workloads):
        log("WARNING: numpy is not importable here; on the numpy workload, ours and the stdlib's")
        log("         rows say 'numpy not installed' (nox -s bench installs it)")
    steps = {}
    for w in workloads:
        params, reps, deadline = config[w]
        steps[w] = (params, args.reps or reps, deadline)
    return steps, impls


def default_impls(baseline):
    """Every implementation; the baseline build's only when there is one."""
    return [name for name, impl in IMPLS.items() if baseline or impl.env != "baseline"]


def impls_for(workload, impls, variants):
    """The default settings everywhere, the variants only where they matter."""
    wanted = variants and workload in VARIANT_WORKLOADS
    return [i for i in impls if wanted or not IMPLS[i].variant]


def skip_reason(impl, workload, ours_ok, numpy_ok):
    """Why a run needs no subprocess at all, or None."""
    if impl in OURS and not ours_ok:
        return "not installed"
    if IMPLS[impl].only and workload not in IMPLS[impl].only:
        return "n/a"
    if workload == "timeouts" and not IMPLS[impl].factory().timeouts:
        return "n/a"
    if workload in NUMPY_WORKLOADS and IMPLS[impl].env == "ours" and not numpy_ok:
        return "numpy not installed"
    return None


def driver_env():
    # Exactly benchmarks/ on the path: an inherited PYTHONPATH could make one
    # deadpool shadow the other.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(HERE)
    return env


def run_all(steps, impls, ours_ok, numpy_ok, variants):
    results = {w: {} for w in steps}
    total = sum(reps * len(impls_for(w, impls, variants)) for w, (_, reps, _) in steps.items())
    done = 0
    for workload, (params, reps, deadline) in steps.items():
        chosen = impls_for(workload, impls, variants)
        for rep in range(reps):
            # Rotate the order each repetition so no implementation always runs
            # right after the same neighbour (caches, page cache, thermal state).
            order = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
            for impl in order:
                done += 1
                outcome = run_one(impl, workload, params, deadline, ours_ok, numpy_ok)
                results[workload].setdefault(impl, []).append(outcome)
                log(progress(done, total, workload, rep, reps, impl, outcome))
        # Keep the table in catalogue order, whatever order the runs took.
        results[workload] = {i: results[workload][i] for i in chosen}
    return results


def run_one(impl, workload, params, deadline, ours_ok, numpy_ok):
    reason = skip_reason(impl, workload, ours_ok, numpy_ok)
    if reason:
        return launch.Outcome(reason)
    python = envs.python_for(IMPLS[impl].env, log)
    argv = [python, str(HERE / "driver.py"), impl, workload, json.dumps(params)]
    return launch.run_driver(argv, driver_env(), str(HERE), deadline)


def progress(done, total, workload, rep, reps, impl, outcome):
    headline = next((m for m in report.METRICS[workload] if m.ratio), None)
    value = outcome.result.get(headline.key) if headline else None
    shown = f"{headline.title} {report.num(value)}" if value is not None else ""
    note = f" [{'; '.join(outcome.notes)}]" if outcome.notes else ""
    return (
        f"[{done}/{total}] {workload} rep {rep + 1}/{reps} {impl}: "
        f"{outcome.status} {shown} ({outcome.wall_s:.1f} s){note}"
    )


def describe_baseline(wheel_or_dir):
    """Register the baseline build; say which it is, down to the commit if we build it."""
    line = envs.add_baseline(wheel_or_dir, log)
    if Path(wheel_or_dir).is_dir():
        line += f", built from {wheel_or_dir} at {_source_revision(wheel_or_dir)}"
    return line


def machine_lines(args, baseline):
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online), "
        f"{_cpu_model()}, {_mem_total()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- source: {_source_revision(HERE.parent)}",
        *([f"- baseline build (--baseline): {baseline}"] if baseline else []),
        f"- command: `{shlex.join(['python', 'benchmarks/run.py', *sys.argv[1:]])}`"
        + (" (quick mode: fewer tasks and repetitions)" if args.quick else ""),
        f"- every number is the median over the repetitions, (min{report.DASH}max) beside it; the "
        "machine is shared and noisy, so compare ratios within one run.",
    ]


def _source_revision(root):
    """Which commit of deadpool was measured, so a result can be traced back."""

    def git(*args):
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "python")
    return f"commit {commit}" + (" with uncommitted changes in src/ or python/" if dirty else "")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "unknown RAM"


def write_report(args, text, ours_ok):
    target = args.out or (None if args.quick else str(HERE / "RESULTS.md"))
    if target is None:
        return
    if not args.out and not ours_ok:
        log("not writing RESULTS.md: our deadpool was not benchmarked")
        return
    Path(target).write_text(text)
    log(f"wrote {target}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    launch.become_subreaper()
    # SIGTERM (nox, CI) should clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    ours_ok = envs.ours_importable()
    numpy_ok = envs.extras_importable()
    steps, impls = plan(args, ours_ok, numpy_ok)
    baseline = describe_baseline(args.baseline) if args.baseline else None
    for env in sorted({IMPLS[i].env for i in impls} - {"ours"}):
        envs.ensure(env, log)
    try:
        # Quick runs skip the backlog variants unless they were asked for by name.
        variants = not args.quick or bool(args.impls)
        results = run_all(steps, impls, ours_ok, numpy_ok, variants)
    finally:
        launch.sweep(0.0)  # a KeyboardInterrupt may have left a driver's tree
    time_split = report.TIME_SPLIT_TEMPLATE
    results_md = HERE / "RESULTS.md"
    if results_md.exists():
        time_split = report.existing_time_split(results_md.read_text())
    descriptions = {
        w: f"{DESCRIPTIONS[w].format(**params)} Repetitions: {reps}; deadline per run: {dl} s."
        for w, (params, reps, dl) in steps.items()
    }
    text = report.render(results, descriptions, machine_lines(args, baseline), time_split)
    print(text)
    write_report(args, text, ours_ok)


if __name__ == "__main__":
    main()
