"""Run CPython's own ``test.test_concurrent_futures`` process-pool tests against
``deadpool.Deadpool`` and compare every outcome with ``expected_failures.txt``.

Usage, with the interpreter under test (one that ships the ``test`` package)::

    python tests/conformance/run.py [--methods fork,spawn,forkserver] [--update] [-k PATTERN]

How it works:

* The suite builds its process-pool test classes from three mixins in
  ``test.test_concurrent_futures.util`` whose ``executor_type`` is
  ``concurrent.futures.ProcessPoolExecutor``. The child process (``--child``)
  points those mixins, and ``concurrent.futures.ProcessPoolExecutor`` itself (a
  few tests construct it by name), at :class:`StdlibSignatureDeadpool`: a
  ``Deadpool`` that takes the stdlib's constructor signature, passes every
  keyword through to ``Deadpool`` (so a keyword deadpool lacks is a visible
  ``TypeError``) and defaults to an unbounded backlog (``max_backlog=0``).
* Each start method runs in its own child process, in a new session, under a
  watchdog: a test that runs longer than ``--test-timeout`` is recorded as
  ``hang`` (after a faulthandler dump of the child's threads), the child's
  whole process tree is killed, and a new child carries on after that test.
  A test the expectations list as ``hang`` gets ``--expected-hang-timeout``
  instead, which is shorter. ``--method-timeout`` bounds a start method as a
  whole; tests it leaves unrun are reported as ``notrun``.
* The outcomes ``fail``, ``error`` and ``hang`` must match the expectations
  file exactly: a test that fails without being listed, a listed test that
  now passes, and a listed test whose outcome changed all fail the run.
  Skips are fine and counted. ``--update`` rewrites the file from this run,
  keeping the reasons of entries that remain and marking new ones ``REASON?``;
  a normal run fails while any ``REASON?`` is left.

Exit status: 0 when every start method matches its expectations, 1 when one
does not, 2 on bad usage or when the ``test`` package is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTATIONS = HERE / "expected_failures.txt"
PACKAGE = "test.test_concurrent_futures"
METHODS = ("fork", "spawn", "forkserver")
MIXINS = {
    "fork": "ProcessPoolForkMixin",
    "spawn": "ProcessPoolSpawnMixin",
    "forkserver": "ProcessPoolForkserverMixin",
}
# Process-pool tests that are not built from the executor mixins: class name
# -> {start method: test method}.
EXTRA_TESTS = {
    "test_init.FailingInitializerResourcesTest": {
        "spawn": "test_spawn",
        "forkserver": "test_forkserver",
    },
}
# Classes that are not about the process pool (reported as ignored).
IGNORED_CLASS = re.compile(r"^ThreadPool|^FutureTests$")
NOT_PASSING = ("fail", "error", "hang", "crash", "notrun")
# What an entry may list: "fail|pass" for a test whose outcome depends on timing.
ALTERNATIVES = {*NOT_PASSING, "pass"}
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


# --------------------------------------------------------------------------
# Child: runs one start method's tests and records each outcome as JSON lines.
# --------------------------------------------------------------------------


def make_executor_type():
    import concurrent.futures

    import deadpool

    class StdlibSignatureDeadpool(deadpool.Deadpool):
        """``Deadpool`` with ``ProcessPoolExecutor``'s positional parameters
        (``max_workers, mp_context, initializer, initargs``) and an unbounded
        backlog, as the stdlib's queue has none."""

        def __init__(
            self, max_workers=None, mp_context=None, initializer=None, initargs=(), **kwargs
        ):
            kwargs.setdefault("max_backlog", 0)
            super().__init__(
                max_workers=max_workers,
                mp_context=mp_context,
                initializer=initializer,
                initargs=initargs,
                **kwargs,
            )

    StdlibSignatureDeadpool.__module__ = __name__
    assert issubclass(StdlibSignatureDeadpool, concurrent.futures.Executor)
    return StdlibSignatureDeadpool


def patch_suite():
    import concurrent.futures

    util = __import__(f"{PACKAGE}.util", fromlist=["util"])
    executor_type = make_executor_type()
    for name in MIXINS.values():
        getattr(util, name).executor_type = executor_type
    concurrent.futures.ProcessPoolExecutor = executor_type
    return util


def matches(test_id: str, patterns: list[str]) -> bool:
    if not patterns:
        return True
    return any(fnmatch.fnmatchcase(test_id, p if "*" in p else f"*{p}*") for p in patterns)


def short_id(full_id: str) -> str:
    prefix = PACKAGE + "."
    return full_id[len(prefix) :] if full_id.startswith(prefix) else full_id


def collect(method: str, util, patterns: list[str]):
    """The unittest suite of one start method, and the classes left out."""
    import importlib
    import pkgutil
    import unittest

    package = importlib.import_module(PACKAGE)
    mixin = getattr(util, MIXINS[method])
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    unassigned = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        for name, cls in sorted(vars(module).items()):
            if not (
                isinstance(cls, type)
                and issubclass(cls, unittest.TestCase)
                and cls.__module__ == module.__name__
            ):
                continue
            key = f"{info.name}.{name}"
            if issubclass(cls, mixin):
                tests = loader.loadTestsFromTestCase(cls)
            elif key in EXTRA_TESTS:
                wanted = EXTRA_TESTS[key].get(method)
                tests = unittest.TestSuite([cls(wanted)] if wanted else [])
            elif any(issubclass(cls, getattr(util, m)) for m in MIXINS.values()):
                continue  # another start method's class
            else:
                if not IGNORED_CLASS.search(name):
                    unassigned.append(key)
                continue
            for test in tests:
                if matches(short_id(test.id()), patterns):
                    suite.addTest(test)
    return suite, unassigned


def child_main(args) -> int:
    import faulthandler
    import unittest

    progress = open(args.progress, "a", buffering=1)

    def emit(**event):
        event["t"] = time.time()
        progress.write(json.dumps(event) + "\n")

    # Die with the watchdog, whatever kills it.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != args.parent_pid:
        return 1
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    util = patch_suite()
    suite, unassigned = collect(args.child, util, args.k or [])
    skip = set()
    if args.skip:
        skip = set(json.loads(Path(args.skip).read_text()))
    tests = [t for t in _flatten(suite) if short_id(t.id()) not in skip]
    emit(event="plan", ids=[short_id(t.id()) for t in _flatten(suite)], unassigned=unassigned)

    class Recorder(unittest.TextTestResult):
        """Emits one "end" event per test, and per failing class or module
        fixture (an _ErrorHolder, outside FixtureSuite's bracket)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fixture = None  # [pseudo id, outcome, detail] while a fixture runs
            self.outcome_of = {}  # test id -> (outcome, detail)

        def startTest(self, test):
            self.outcome_of[test.id()] = None
            self._started = time.monotonic()
            emit(event="start", id=short_id(test.id()))
            super().startTest(test)

        def _set(self, test, outcome, err=None, detail=None):
            if err is not None:
                detail = "".join(traceback.format_exception(*err))
            if test.id() not in self.outcome_of:
                holder = re.fullmatch(r"(\w+) \((.+)\)", test.id())  # an _ErrorHolder
                pseudo = f"{short_id(holder[2])}.{holder[1]}" if holder else test.id()
                if self.fixture is not None:
                    self.fixture[1:] = [outcome, detail]
                else:
                    emit(event="end", id=pseudo, outcome=outcome, duration=0.0, detail=detail)
                return
            recorded = self.outcome_of[test.id()]
            if recorded is None or recorded[0] in ("pass", "skip"):
                self.outcome_of[test.id()] = (outcome, detail)

        def addSuccess(self, test):
            super().addSuccess(test)
            self._set(test, "pass")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, "fail", err)

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, "error", err)

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, "skip", detail=reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, "pass", detail="expected failure (unittest.expectedFailure)")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, "fail", detail="unexpected success (unittest.expectedFailure)")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                outcome = "fail" if issubclass(err[0], test.failureException) else "error"
                detail = f"{subtest}\n" + "".join(traceback.format_exception(*err))
                self._set(test, outcome, detail=detail)

        def stopTest(self, test):
            super().stopTest(test)
            recorded = self.outcome_of.get(test.id())
            outcome, detail = recorded or ("error", "the test recorded no outcome")
            emit(
                event="end",
                id=short_id(test.id()),
                outcome=outcome,
                duration=time.monotonic() - self._started,
                detail=detail,
            )

    class FixtureSuite(unittest.TestSuite):
        """Brackets module and class fixtures with events, so that the
        watchdog can name a fixture that hangs (e.g. tearDownModule)."""

        def _bracket(self, pseudo_id, result, run):
            if not isinstance(result, Recorder):
                return run()
            result.fixture = [pseudo_id, "pass", None]
            emit(event="start", id=pseudo_id, fixture=True)
            started = time.monotonic()
            try:
                return run()
            finally:
                _, outcome, detail = result.fixture
                result.fixture = None
                emit(
                    event="end",
                    id=pseudo_id,
                    outcome=outcome,
                    fixture=True,
                    duration=time.monotonic() - started,
                    detail=detail,
                )

        def _handleModuleFixture(self, test, result):
            previous = self._get_previous_module(result)
            current = test.__class__.__module__
            if previous == current:
                return super()._handleModuleFixture(test, result)
            self._handleModuleTearDown(result)
            self._torn_down = True  # the stdlib's own call to it is done
            try:
                return self._bracket(
                    f"{short_id(current)}.setUpModule",
                    result,
                    lambda: super(FixtureSuite, self)._handleModuleFixture(test, result),
                )
            finally:
                self._torn_down = False

        _torn_down = False

        def _handleModuleTearDown(self, result):
            if self._torn_down:
                return None
            previous = self._get_previous_module(result)
            if previous is None or getattr(result, "_moduleSetUpFailed", False):
                return super()._handleModuleTearDown(result)
            return self._bracket(
                f"{short_id(previous)}.tearDownModule",
                result,
                lambda: super(FixtureSuite, self)._handleModuleTearDown(result),
            )

        def _tearDownPreviousClass(self, test, result):
            previous = getattr(result, "_previousTestClass", None)
            if previous is None or previous is test.__class__:
                return super()._tearDownPreviousClass(test, result)
            pseudo = f"{short_id(previous.__module__)}.{previous.__qualname__}.tearDownClass"
            return self._bracket(
                pseudo,
                result,
                lambda: super(FixtureSuite, self)._tearDownPreviousClass(test, result),
            )

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Recorder)
    runner.run(FixtureSuite(tests))
    emit(event="done")
    progress.close()
    return 0


def _flatten(suite):
    for item in suite:
        if hasattr(item, "__iter__"):
            yield from _flatten(item)
        else:
            yield item


# --------------------------------------------------------------------------
# Parent: watchdog, process-tree cleanup, comparison with the expectations.
# --------------------------------------------------------------------------


def become_subreaper() -> None:
    """Orphans of the children re-parent to us, so none escapes the cleanup."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children_of(pids: set[int]) -> set[int]:
    """Every live descendant of ``pids`` (by walking /proc)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        parent_of[int(entry)] = int(fields[1])
    found = set()
    frontier = set(pids)
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def kill_descendants() -> None:
    """SIGKILL every process below this one (our children and the orphans
    that re-parented to us, the subreaper), until none is left."""
    me = os.getpid()
    for _ in range(20):
        victims = children_of({me})
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        reap()


def kill_tree(proc: subprocess.Popen) -> None:
    kill_descendants()
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


def _terminate(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def leftovers(grace: float) -> list[int]:
    """Descendants still alive ``grace`` seconds after a child exited."""
    deadline = time.monotonic() + grace
    while True:
        reap()
        left = sorted(children_of({os.getpid()}))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


class MethodRun:
    """One start method's tests, run by as many children as hangs require."""

    def __init__(self, method: str, args, log_dir: Path, expected: dict[str, tuple[str, str]]):
        self.method = method
        self.args = args
        # Tests listed as hanging (by design: deadpool never breaks the pool,
        # so tasks waiting for an event nobody sets wait on) are given up on
        # sooner; one that stops hanging still shows as "passed".
        self.expected_hangs = {
            test_id for test_id, (outcome, _) in expected.items() if "hang" in outcome.split("|")
        }
        self.log_path = log_dir / f"{method}.log"
        self.progress_path = log_dir / f"{method}.jsonl"
        self.skip_path = log_dir / f"{method}.skip.json"
        self.results: dict[str, dict] = {}
        self.planned: list[str] | None = None
        self.unassigned: list[str] = []
        self.problems: list[str] = []
        self.elapsed = 0.0

    def run(self) -> None:
        start = time.monotonic()
        method_deadline = start + self.args.method_timeout
        self.progress_path.write_text("")
        offset = 0
        with open(self.log_path, "w") as log:
            while True:
                self.skip_path.write_text(json.dumps(sorted(self.results)))
                offset, finished = self._one_child(log, offset, method_deadline)
                if finished or self.planned is None:
                    break
                remaining = [t for t in self.planned if t not in self.results]
                if not remaining:
                    break
                if time.monotonic() >= method_deadline:
                    for test_id in remaining:
                        self.results[test_id] = {
                            "outcome": "notrun",
                            "detail": f"--method-timeout of {self.args.method_timeout}s ran out",
                            "duration": 0.0,
                        }
                    self.problems.append(
                        f"--method-timeout ({self.args.method_timeout}s) ran out; "
                        f"{len(remaining)} tests not run"
                    )
                    break
                log.write(f"\n=== restarting after that; {len(remaining)} tests left ===\n")
                log.flush()
        for test_id in self.planned or []:
            if test_id not in self.results:
                self._record(test_id, "notrun", "the test runner stopped before this test")
        self.elapsed = time.monotonic() - start

    def _one_child(self, log, offset: int, method_deadline: float) -> tuple[int, bool]:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            self.method,
            "--progress",
            str(self.progress_path),
            "--skip",
            str(self.skip_path),
            "--parent-pid",
            str(os.getpid()),
        ]
        for pattern in self.args.k or []:
            command += ["-k", pattern]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tempfile.gettempdir(),
        )
        current: str | None = None  # the test or fixture running now
        is_fixture = False
        last_id = "(start-up)"
        since = time.monotonic()  # of the last event
        done = False
        while True:
            offset, events = self._read_events(offset)
            for event in events:
                kind = event["event"]
                since = time.monotonic()
                if kind == "plan":
                    if self.planned is None:
                        self.planned = event["ids"]
                        self.unassigned = event["unassigned"]
                elif kind == "start":
                    current, is_fixture = event["id"], event.get("fixture", False)
                elif kind == "end":
                    # Fixtures that pass are kept too, so that a listed one
                    # that stops hanging is noticed (report() does not count
                    # them as tests).
                    self.results[event["id"]] = event
                    if event["id"] == current:
                        current = None
                    last_id = event["id"]
                elif kind == "done":
                    done = True
            exited = proc.poll() is not None
            now = time.monotonic()
            if exited:
                offset, events = self._read_events(offset)
                if events:
                    continue  # take in the last events first
                if current is not None:
                    self._record(
                        current,
                        "crash",
                        f"the test runner died with status {proc.returncode} while this test ran",
                    )
                elif not done:
                    self.problems.append(
                        f"the test runner exited with status {proc.returncode} "
                        "before it finished (see the log)"
                    )
                    kill_tree(proc)
                    return offset, True
                break
            if done:
                # Every test ran: the runner must exit on its own, soon.
                try:
                    proc.wait(timeout=self.args.exit_timeout)
                except subprocess.TimeoutExpired:
                    self._dump_threads(proc, log)
                    self.problems.append(
                        f"the test runner did not exit within {self.args.exit_timeout}s "
                        "after its last test (see the log)"
                    )
                break
            if current is None or is_fixture:
                limit, option = self.args.fixture_timeout, "--fixture-timeout"
            elif current in self.expected_hangs:
                limit, option = self.args.expected_hang_timeout, "--expected-hang-timeout"
            else:
                limit, option = self.args.test_timeout, "--test-timeout"
            over_limit = now - since > limit
            over_method = now > method_deadline
            if over_limit or over_method:
                self._dump_threads(proc, log)
                why = (
                    f"no progress for {option}={limit:g}s"
                    if over_limit
                    else f"running when --method-timeout={self.args.method_timeout:g}s ran out"
                )
                if current is None:
                    # Between tests, outside any fixture we bracket.
                    current = f"{last_id}.(after)"
                self._record(current, "hang", why, duration=now - since)
                log.write(f"\n=== watchdog: {current} hung ({why}); killed ===\n")
                log.flush()
                kill_tree(proc)
                return offset, False
            time.sleep(0.2)
        kill_tree_if_left(self, proc)
        return offset, done

    def _record(self, test_id: str, outcome: str, detail: str, duration: float = 0.0) -> None:
        self.results[test_id] = {"outcome": outcome, "detail": detail, "duration": duration}

    def _dump_threads(self, proc: subprocess.Popen, log) -> None:
        log.write("\n=== watchdog: faulthandler dump of the test runner ===\n")
        log.flush()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2)

    def _read_events(self, offset: int) -> tuple[int, list[dict]]:
        with open(self.progress_path) as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind("\n") + 1
        events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return offset + len(data[:end].encode()), events


def kill_tree_if_left(run: MethodRun, proc: subprocess.Popen) -> None:
    left = leftovers(grace=5.0)
    if left:
        run.problems.append(
            "processes left behind after the test runner exited: "
            + "; ".join(f"{pid} {cmdline(pid)[:120]}" for pid in left)
        )
    kill_tree(proc)


# ---- the expectations file ------------------------------------------------

HEADER = """\
# CPython's test.test_concurrent_futures process-pool tests, run against
# deadpool.Deadpool by tests/conformance/run.py: the tests expected NOT to pass.
#
# One section per Python version and start method, "[3.13 fork]"; one entry per
# line: the test id (relative to test.test_concurrent_futures), its outcome
# (fail, error, hang or crash; "fail|hang" for a test that may end either way,
# "fail|pass" for one whose outcome depends on timing)
# and a one-line reason:
#   BY DESIGN: deadpool intentionally differs (see README.rst, "How it differs
#              from ProcessPoolExecutor"); the entry stays.
#   GAP:       deadpool lacks something it should have; remove the entry (or run
#              with --update) when the fix lands.
# The run fails if a test fails without an entry, if a listed test passes or
# changes outcome, and while any reason is still "REASON?".
# Regenerate with: python tests/conformance/run.py --update
"""


def neutral(test_id: str) -> str:
    """The id with the start method taken out, to compare across methods."""
    test_id = re.sub(r"ProcessPool(Forkserver|Fork|Spawn)", "ProcessPool*", test_id)
    return re.sub(r"\.test_(forkserver|fork|spawn)$", ".test_*", test_id)


def read_expectations(path: Path) -> dict[str, dict[str, tuple[str, str]]]:
    sections: dict[str, dict[str, tuple[str, str]]] = {}
    current = None
    if not path.exists():
        return sections
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
            continue
        parts = line.split(None, 2)
        outcomes = set(parts[1].split("|")) if len(parts) > 1 else set()
        if current is None or not outcomes & set(NOT_PASSING) or not outcomes <= ALTERNATIVES:
            raise SystemExit(f"{path}:{number}: cannot read this entry: {raw!r}")
        current[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "REASON?")
    return sections


def write_expectations(path: Path, sections: dict[str, dict[str, tuple[str, str]]]) -> None:
    def order(name: str):
        version, _, method = name.partition(" ")
        key = tuple(int(p) for p in version.split(".") if p.isdigit())
        return (key, METHODS.index(method) if method in METHODS else 99, name)

    lines = [HEADER]
    for name in sorted(sections, key=order):
        entries = sections[name]
        if not entries:
            continue
        lines.append(f"[{name}]")
        width = max(len(t) for t in entries)
        outcome_width = max(len(outcome) for outcome, _ in entries.values())
        for test_id in sorted(entries):
            outcome, reason = entries[test_id]
            lines.append(f"{test_id:<{width}}  {outcome:<{outcome_width}}  {reason}")
        lines.append("")
    path.write_text("\n".join(lines))


# ---- reporting ------------------------------------------------------------


def compare(run: MethodRun, expected: dict[str, tuple[str, str]]):
    """(unexpected failures, listed tests that passed, changed outcomes)."""
    new, fixed, changed = [], [], []
    for test_id, result in sorted(run.results.items()):
        outcome = result["outcome"]
        listed = expected.get(test_id)
        if outcome in NOT_PASSING:
            if listed is None:
                new.append(test_id)
            elif outcome not in listed[0].split("|"):
                changed.append(test_id)
        elif listed is not None and outcome == "pass":
            if "pass" not in listed[0].split("|"):
                fixed.append(test_id)
        elif listed is not None and outcome == "skip":
            fixed.append(test_id)
    return new, fixed, changed


def first_line(text: str | None, limit: int = 160) -> str:
    """The exception line of a traceback (the last one), else its last line."""
    if not text:
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exit)\b", line)]
    line = raised[-1] if raised else lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def report(run: MethodRun, expected: dict[str, tuple[str, str]], section: str) -> bool:
    counts = {"pass": 0, "skip": 0, "expected": 0, "unexpected": 0}
    new, fixed, changed = compare(run, expected)
    bad = set(new) | set(fixed) | set(changed)
    for test_id, result in run.results.items():
        if test_id in bad:
            counts["unexpected"] += 1
        elif result.get("fixture") and result["outcome"] == "pass":
            continue
        elif result["outcome"] in NOT_PASSING:
            counts["expected"] += 1
        else:
            counts[result["outcome"]] += 1
    unreasoned = sorted(
        t
        for t, (_, reason) in expected.items()
        if reason.startswith("REASON?") and t in run.results
    )
    ok = not bad and not run.problems and not unreasoned
    print(f"\n--- [{section}] {'OK' if ok else 'MISMATCH'} (log: {run.log_path})")
    if new:
        print(f"  Failing but not listed in {EXPECTATIONS.name} ({len(new)}):")
        for test_id in new:
            result = run.results[test_id]
            print(f"    {test_id}  {result['outcome']}: {first_line(result.get('detail'))}")
    if fixed:
        print(f"  Listed as expected failures but now {'passing or skipped'} ({len(fixed)}):")
        for test_id in fixed:
            print(
                f"    {test_id}  {run.results[test_id]['outcome']}  (was: {expected[test_id][1]})"
            )
    if changed:
        print(f"  Outcome changed ({len(changed)}):")
        for test_id in changed:
            result = run.results[test_id]
            print(
                f"    {test_id}  listed {expected[test_id][0]}, now {result['outcome']}: "
                f"{first_line(result.get('detail'))}"
            )
    if unreasoned:
        print(f"  Entries still marked REASON? ({len(unreasoned)}):")
        for test_id in unreasoned:
            print(f"    {test_id}")
    for problem in run.problems:
        print(f"  Problem: {problem}")
    if run.unassigned:
        print(
            "  Note: test classes not assigned to any start method (not run): "
            + ", ".join(run.unassigned)
        )
    if new or changed:
        print("  Details of the unexpected outcomes:")
        for test_id in new + changed:
            lines = (run.results[test_id].get("detail") or "").rstrip().splitlines()
            detail = "\n".join((["..."] if len(lines) > 25 else []) + lines[-25:])
            print(f"  ==== {test_id}")
            print("      " + detail.replace("\n", "\n      "))
    slowest = sorted(run.results.items(), key=lambda kv: -kv[1].get("duration", 0.0))[:5]
    print(
        "  Slowest: "
        + ", ".join(f"{t.rsplit('.', 1)[-1]} {r.get('duration', 0.0):.1f}s" for t, r in slowest)
    )
    run.summary = (
        f"[{section}] {sum(counts.values())} tests: {counts['pass']} passed, "
        f"{counts['expected']} failed as expected, {counts['skip']} skipped, "
        f"{counts['unexpected']} unexpected"
        + (f", {len(run.problems)} problems" if run.problems else "")
        + f" ({run.elapsed:.0f}s)"
    )
    return ok


def update(sections, section: str, run: MethodRun) -> list[str]:
    """Rewrite ``section`` from this run; returns the changes, for printing."""
    old = sections.get(section, {})
    others = {
        neutral(t): reason
        for name, entries in sections.items()
        if name != section
        for t, (_, reason) in entries.items()
        if not reason.startswith("REASON?")
    }
    new_entries = {t: v for t, v in old.items() if t not in run.results}  # not run now (-k)
    changes = []
    for test_id, result in sorted(run.results.items()):
        outcome = result["outcome"]
        listed = old[test_id][0].split("|") if test_id in old else []
        if outcome in listed:
            new_entries[test_id] = old[test_id]  # a listed alternative: the entry stays
            continue
        if outcome not in NOT_PASSING:
            if test_id in old:
                changes.append(f"  - {test_id}  (now {outcome}; was: {old[test_id][1]})")
            continue
        if test_id in old:
            reason = old[test_id][1]
            changes.append(f"  ~ {test_id}  {old[test_id][0]} -> {outcome}")
        else:
            hint = others.get(neutral(test_id))
            reason = "REASON?" + (f" (another start method says: {hint})" if hint else "")
            changes.append(f"  + {test_id}  {outcome}: {first_line(result.get('detail'))}")
        new_entries[test_id] = (outcome, reason)
    sections[section] = new_entries
    return changes


def parent_main(args) -> int:
    try:
        __import__(PACKAGE)
    except ImportError as exc:
        print(f"{sys.executable} has no {PACKAGE} ({exc}); nothing to run", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        print(
            f"--methods: unknown start method(s) {unknown}; choose from {METHODS}", file=sys.stderr
        )
        return 2
    become_subreaper()
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="deadpool-conformance-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"Python {sys.version.split()[0]} ({sys.executable}); start methods: "
        f"{', '.join(methods)}; logs in {log_dir}",
        flush=True,
    )
    sections = read_expectations(args.expectations)
    runs = []
    all_ok = True
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    for method in methods:
        section = f"{PY} {method}"
        print(
            f"\n=== {section}: running (test timeout {args.test_timeout}s, "
            f"method timeout {args.method_timeout}s) ...",
            flush=True,
        )
        run = MethodRun(method, args, log_dir, sections.get(section, {}))
        try:
            run.run()
        finally:  # also on SIGTERM, SIGHUP or Ctrl-C: leave nothing behind
            kill_descendants()
        runs.append(run)
        all_ok &= report(run, sections.get(section, {}), section)
        sys.stdout.flush()
        if args.update:
            changes = update(sections, section, run)
            print(f"  --update: {len(changes)} change(s) to [{section}]")
            for change in changes:
                print(change)
    if args.update:
        write_expectations(args.expectations, sections)
        print(f"\nWrote {args.expectations}. Review the diff (git diff) and fill in every REASON?.")
    print("\nSummary:")
    for run in runs:
        print("  " + run.summary)
    print(f"Conformance: {'OK' if all_ok else 'MISMATCH with ' + str(args.expectations)}")
    if args.update:
        return 0
    return 0 if all_ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated start methods (default: %(default)s)",
    )
    parser.add_argument(
        "--update", action="store_true", help=f"rewrite {EXPECTATIONS.name} from this run"
    )
    parser.add_argument(
        "-k",
        action="append",
        metavar="PATTERN",
        help="only tests whose id matches (substring or fnmatch; repeatable)",
    )
    parser.add_argument("--expectations", type=Path, default=EXPECTATIONS)
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=120.0,
        help="seconds one test may run before it counts as hung (%(default)s)",
    )
    parser.add_argument(
        "--expected-hang-timeout",
        type=float,
        default=20.0,
        help="seconds a test listed as hanging may run before it counts as hung (%(default)s)",
    )
    parser.add_argument(
        "--fixture-timeout",
        type=float,
        default=30.0,
        help="seconds a module or class fixture, or the gap between two "
        "tests, may take before it counts as hung (%(default)s)",
    )
    parser.add_argument(
        "--method-timeout",
        type=float,
        default=1200.0,
        help="seconds one start method may take in all (%(default)s)",
    )
    parser.add_argument("--exit-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", help="where the runners' logs go (default: a new temp dir)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--progress", help=argparse.SUPPRESS)
    parser.add_argument("--skip", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
