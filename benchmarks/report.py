"""Turn the outcomes of all runs into markdown: one table per workload, the
ratio tables, the issue's targets, and the "Where the time goes" section."""

import statistics
from dataclasses import dataclass

from adapters import BASELINE, BUILD_SUFFIX, IMPLS, JOBLIB, ORIGINAL

DASH = "\N{EN DASH}"


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    better: str = ""  # "up" or "down": which way is better, and a ratio row
    ratio: bool = False  # shown in the ratio tables


METRICS = {
    "throughput": [
        Metric("tasks_per_s", "tasks/s", "up", True),
        Metric("cpu_us_per_task", "parent CPU µs/task", "down", True),
        Metric("submit_phase_s", "submit phase s", "down"),
    ],
    "latency": [
        Metric("median_us", "median µs", "down", True),
        Metric("p99_us", "p99 µs", "down", True),
    ],
    "payload": [
        Metric("mib_s_each_way", "MiB/s each way", "up", True),
        Metric("cpu_ms_per_task", "parent CPU ms/task", "down"),
    ],
    "payload-64m": [
        Metric("mib_s_each_way", "MiB/s each way", "up", True),
        Metric("cpu_ms_per_task", "parent CPU ms/task", "down"),
    ],
    "numpy": [
        Metric("mb_s_each_way", "MB/s each way", "up", True),
        Metric("cpu_ms_per_task", "parent CPU ms/task", "down"),
    ],
    "timeouts": [
        Metric("wall_s", "wall s", "down"),
        Metric("ideal_s", "ideal s"),
        Metric("lost_ms_per_timeout", "lost ms/timeout", "down", True),
        Metric("overshoot_median_ms", "overshoot median ms", "down", True),
        Metric("overshoot_max_ms", "overshoot max ms", "down", True),
        Metric("timed_out", "TimeoutErrors"),
    ],
    "crash": [
        Metric("ok", "results ok"),
        Metric("killed_errors", "errors on killed tasks"),
        Metric("innocent_lost", "innocent tasks lost", "down"),
        Metric("wall_s", "wall s, kills", "down"),
        Metric("wall_nokill_s", "wall s, no kills", "down"),
        Metric("wall_ratio", "kills / no kills", "down", True),
    ],
    "startup": [
        Metric("cold_ms", "cold ms", "down", True),
        Metric("warm_ms", "warm ms", "down", True),
        Metric("import_ms", "import ms", "down"),
    ],
    "memory": [
        Metric("pss_mib", "idle PSS MiB", "down", True),
        Metric("processes", "processes"),
        Metric("driver_pss_mib", "driver's own PSS MiB (not counted)"),
    ],
}

# Compared between ours and the --baseline build: the per-task costs a change to
# the hot path moves. The other workloads are dominated by sleeps, kills and
# process start-up, where a small slowdown drowns in the noise.
BUILD_METRICS = {
    "throughput": ["tasks_per_s", "cpu_us_per_task"],
    "latency": ["median_us", "p99_us"],
    "payload": ["mib_s_each_way", "cpu_ms_per_task"],
    "payload-64m": ["mib_s_each_way", "cpu_ms_per_task"],
    "numpy": ["mb_s_each_way", "cpu_ms_per_task"],
}

# Result fields that are not numbers but worth a note under the table.
NOTE_KEYS = {"crash": ["submit_error", "innocent_error_types"], "memory": ["per_process"]}
# Of these, one example is enough: they barely change from run to run.
FIRST_RUN_ONLY = {"per_process"}


@dataclass(frozen=True)
class Target:
    label: str
    workload: str
    key: str
    impl: str
    baseline: str  # "" for an absolute goal
    op: str  # ">=", ">" or "<="
    goal: float
    issue: int = 5


def _throughput_targets():
    for impl, tag in (("deadpool", ""), ("deadpool-bl0", ", backlog=0")):
        for baseline, goal in ((BASELINE, 6), ("pebble", 2.5), (ORIGINAL, 15)):
            label = f"throughput{tag} vs {baseline}"
            yield Target(label, "throughput", "tasks_per_s", impl, baseline, ">=", goal)
        yield Target(
            f"parent CPU µs/task{tag}", "throughput", "cpu_us_per_task", impl, "", "<=", 15
        )


TARGETS = [
    *_throughput_targets(),
    Target("latency median vs PPE", "latency", "median_us", "deadpool", BASELINE, "<=", 0.3),
    Target("payload MiB/s each way", "payload", "mib_s_each_way", "deadpool", "", ">=", 1024),
    Target("ms lost per timeout", "timeouts", "lost_ms_per_timeout", "deadpool", "", "<=", 5),
    Target(
        "max overshoot past deadline ms", "timeouts", "overshoot_max_ms", "deadpool", "", "<=", 5
    ),
    Target("crash: innocent tasks lost", "crash", "innocent_lost", "deadpool", "", "<=", 0),
    Target("crash: wall kills / no kills", "crash", "wall_ratio", "deadpool", "", "<=", 1.2),
    Target("startup cold vs original", "startup", "cold_ms", "deadpool", ORIGINAL, "<=", 0.3),
    Target("startup warm vs original", "startup", "warm_ms", "deadpool", ORIGINAL, "<=", 0.3),
    Target("idle PSS vs original", "memory", "pss_mib", "deadpool", ORIGINAL, "<=", 0.5),
    *(
        Target(label, workload, key, "deadpool", baseline, op, goal, issue=12)
        for label, workload, key, baseline, op, goal in [
            ("64 MiB each way, MiB/s", "payload-64m", "mib_s_each_way", "", ">=", 2048),
            ("64 MiB each way vs PPE", "payload-64m", "mib_s_each_way", BASELINE, ">=", 10),
            ("1 MiB each way, MiB/s", "payload", "mib_s_each_way", "", ">=", 1024),
            ("numpy 100 MB each way vs PPE", "numpy", "mb_s_each_way", BASELINE, ">=", 10),
            ("numpy 100 MB each way vs joblib", "numpy", "mb_s_each_way", JOBLIB, ">", 1),
            ("no-op parent CPU µs/task", "throughput", "cpu_us_per_task", "", "<=", 15),
            ("no-op throughput vs PPE", "throughput", "tasks_per_s", BASELINE, ">=", 10),
            ("latency median vs PPE", "latency", "median_us", BASELINE, "<=", 0.2),
        ]
    ),
]
ISSUES = {
    5: "issue 5: benchmarks side by side with the peers, and the targets to reach",
    12: "issue 12: payloads at memory speed, a cheaper path for tiny tasks",
}

TIME_SPLIT_HEADING = "## Where the time goes"
TIME_SPLIT_TEMPLATE = f"""{TIME_SPLIT_HEADING}

Per-task cost split of our deadpool on the throughput workload, to be filled in
from a profile (perf, py-spy, callgrind).

| stage | µs/task | how measured |
| --- | --- | --- |
| pickle | | |
| submit call | | |
| supervisor | | |
| pipe | | |
| worker | | |
| completion | | |
| Future | | |
"""


def num(value):
    """Format a number compactly: enough digits to compare, no more."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100 or (isinstance(value, int)):
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio_text(value):
    return DASH if value is None else f"{value:.2f}x"


def stats(outcomes, key):
    """(median, min, max) of ``key`` over the successful runs, or None."""
    values = [o.result[key] for o in outcomes if o.status == "ok" and o.result.get(key) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def median(results, workload, impl, key):
    s = stats(results.get(workload, {}).get(impl, []), key)
    return None if s is None else s[0]


def cell(outcomes, key):
    s = stats(outcomes, key)
    if s is None:
        return DASH
    mid, low, high = s
    if sum(o.status == "ok" for o in outcomes) < 2 or low == high:
        return num(mid)
    return f"{num(mid)} ({num(low)}{DASH}{num(high)})"


def status(outcomes):
    """One word for the runs of one implementation on one workload."""
    if not outcomes:
        return DASH
    if outcomes[0].status in ("n/a", "not installed"):
        return outcomes[0].status
    counts = {}
    for o in outcomes:
        word = o.status
        if word == "ok" and o.result.get("na"):
            word = "n/a"
        elif word == "ok" and o.result.get("broke"):
            word = "breaks"
        counts[word] = counts.get(word, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{word} {n}/{len(outcomes)}" for word, n in sorted(counts.items()))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def workload_section(workload, description, per_impl):
    metrics = METRICS[workload]
    header = ["implementation", "status", *(m.title for m in metrics)]
    rows = []
    for impl, outcomes in per_impl.items():
        values = ["n/a"] * len(metrics) if status(outcomes) == "n/a" else None
        values = values or [cell(outcomes, m.key) for m in metrics]
        rows.append([impl, status(outcomes), *values])
    parts = [f"### {workload}", "", description, "", table(header, rows)]
    notes = _notes(workload, per_impl) + _numpy_versions(per_impl)
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)


def _notes(workload, per_impl):
    """Deduplicated notes per implementation, with how many runs had them."""
    lines = []
    for impl, outcomes in per_impl.items():
        seen = {}
        for run, o in enumerate(outcomes):
            texts = list(o.notes)
            for key in NOTE_KEYS.get(workload, []):
                if o.result.get(key) and (run == 0 or key not in FIRST_RUN_ONLY):
                    texts.append(f"{key}: {o.result[key]}")
            for text in texts:
                seen[text] = seen.get(text, 0) + 1
        for text, n in seen.items():
            lines.append(f"- {impl} ({n}/{len(outcomes)} runs): {text}")
    return lines


def _numpy_versions(per_impl):
    """Which numpy each interpreter had, in one line when they agree."""
    versions = {}
    for impl, outcomes in per_impl.items():
        seen = [o.result["numpy"] for o in outcomes if o.status == "ok" and "numpy" in o.result]
        if seen:
            versions[impl] = seen[0]
    if not versions:
        return []
    if len(set(versions.values())) == 1:
        return [f"- numpy {next(iter(versions.values()))} in every interpreter that ran it"]
    return ["- numpy versions differ: " + ", ".join(f"{i} {v}" for i, v in versions.items())]


def ratio_section(results, baseline, title):
    impls = [name for name in IMPLS if any(name in per for per in results.values())]
    header = ["metric", *impls]
    rows = []
    for workload, metrics in METRICS.items():
        for m in (m for m in metrics if m.ratio and workload in results):
            base = median(results, workload, baseline, m.key)
            if not base or status(results[workload].get(baseline, [])) != "ok":
                continue  # the baseline has no comparable number (n/a, broke, failed)
            row = [_label(workload, m)]
            row += [_ratio_cell(results, workload, impl, m.key, base) for impl in impls]
            rows.append(row)
    return "\n".join([f"## {title}", "", table(header, rows)])


def _label(workload, metric):
    return f"{workload}: {metric.title} ({'↑' if metric.better == 'up' else '↓'} better)"


def build_section(results):
    """Each setting of ours / the same setting on the --baseline build, or None
    without a baseline build in this run."""
    pairs = [
        (name.removesuffix(BUILD_SUFFIX), name)
        for name, impl in IMPLS.items()
        if impl.env == "baseline" and any(name in per for per in results.values())
    ]
    if not pairs:
        return None
    header = ["metric", *(f"{ours} / {base}" for ours, base in pairs)]
    rows = []
    for workload, keys in BUILD_METRICS.items():
        for m in (m for m in METRICS[workload] if m.key in keys and workload in results):
            row = [_label(workload, m)]
            row += [_pair_ratio(results, workload, ours, base, m.key) for ours, base in pairs]
            rows.append(row)
    return "\n".join(["## Ratios against the baseline build", "", table(header, rows)])


def _pair_ratio(results, workload, ours, base, key):
    base_value = median(results, workload, base, key)
    if not base_value or status(results[workload].get(base, [])) != "ok":
        return DASH  # the baseline has no comparable number
    return _ratio_cell(results, workload, ours, key, base_value)


def _ratio_cell(results, workload, impl, key, base):
    word = status(results[workload].get(impl, []))
    if word == "breaks":
        return word  # its numbers describe a broken pool, not a comparable run
    value = median(results, workload, impl, key)
    if value is None:
        return word if word not in ("ok", DASH) else DASH
    return ratio_text(value / base)


def targets_section(results):
    """One table per issue; every target of ours at the default settings unless
    its label says otherwise."""
    parts = ["## Targets"]
    for issue, title in ISSUES.items():
        rows = [_target_row(results, t) for t in TARGETS if t.issue == issue]
        rows = [row for row in rows if row]
        if rows:
            header = [f"target (issue {issue})", "ours", "baseline", "ratio", "goal", "met"]
            parts += ["", f"### {title}", "", table(header, rows)]
    return "\n".join(parts)


def _target_row(results, t):
    if t.impl not in results.get(t.workload, {}):
        return None  # not part of this run (e.g. a variant in a quick run)
    value = median(results, t.workload, t.impl, t.key)
    base = median(results, t.workload, t.baseline, t.key) if t.baseline else None
    if t.baseline:
        measured = value / base if value is not None and base else None
        goal = f"{t.op} {t.goal}x {t.baseline}"
    else:
        measured, goal = value, f"{t.op} {num(t.goal)}"
    met = DASH if measured is None else _met(measured, t.op, t.goal)
    return [
        t.label,
        f"{num(value)} ({t.impl})",
        num(base) if t.baseline else "",
        ratio_text(measured) if t.baseline else "",
        goal,
        met,
    ]


def _met(measured, op, goal):
    ok = {">=": measured >= goal, ">": measured > goal, "<=": measured <= goal}[op]
    return "yes" if ok else "**no**"


def implementations_section(results):
    versions = {}
    for per_impl in results.values():
        for impl, outcomes in per_impl.items():
            for o in outcomes:
                if o.status == "ok" and "version" in o.result:
                    versions.setdefault(impl, o.result["version"])
    rows = [
        [name, impl.description, versions.get(name, DASH), impl.env]
        for name, impl in IMPLS.items()
        if any(name in per for per in results.values())
    ]
    header = ["name", "what", "version", "interpreter"]
    return "\n".join(["## Implementations", "", table(header, rows)])


def render(results, descriptions, header_lines, time_split=TIME_SPLIT_TEMPLATE):
    parts = ["# deadpool benchmarks", "", *header_lines, "", implementations_section(results)]
    parts += ["", "## Results", ""]
    for workload, per_impl in results.items():
        parts += [workload_section(workload, descriptions[workload], per_impl), ""]
    parts += [ratio_section(results, BASELINE, "Ratios against ProcessPoolExecutor (forkserver)")]
    parts += ["", ratio_section(results, ORIGINAL, "Ratios against the original deadpool")]
    build = build_section(results)
    parts += ["", build] if build else []
    parts += ["", targets_section(results), "", time_split.rstrip(), ""]
    return "\n".join(parts)


def existing_time_split(text):
    """The "Where the time goes" section of an earlier RESULTS.md, kept as the
    lead filled it in, so rerunning the benchmark does not erase the profile."""
    start = text.find(TIME_SPLIT_HEADING)
    if start < 0:
        return TIME_SPLIT_TEMPLATE
    end = text.find("\n## ", start + len(TIME_SPLIT_HEADING))
    return text[start:] if end < 0 else text[start : end + 1]
