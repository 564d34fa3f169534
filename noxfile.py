"""Developer tasks for deadpool.

A bare ``nox`` runs the whole suite: lint, Rust checks, tests, the stress
suite and the CPython conformance run. ``nox -s bench`` runs the benchmarks
(not part of the default run).

Every session but ``conformance`` uses the interpreter that runs nox itself, so
a machine with nothing but ``python3`` (and Rust) needs no further set-up.
``conformance`` needs a Python that ships CPython's ``test`` package (pyenv's
3.13 on the CI image) and finds it itself.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import nox

nox.options.sessions = ["lint", "rust", "tests", "stress", "conformance"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

LINT_PATHS = ["python", "tests", "benchmarks", "examples", "noxfile.py"]
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over all Python code; the ``_core`` stub
    checked against the built module."""
    session.install(RUFF)
    session.run("ruff", "--version")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.install(".", MYPY)
    session.run(
        "python",
        "-m",
        "mypy.stubtest",
        "deadpool._core",
        "--allowlist",
        "tests/stubtest-allowlist.txt",
    )


def _python_runtime_env() -> dict[str, str]:
    """Environment for cargo, so that test binaries linked to libpython run.

    PyO3 (without the extension-module feature) links the Rust test binaries
    against libpython. pyenv and other prefix installs put it in a directory
    the dynamic loader does not search, so put the interpreter's LIBDIR first
    on LD_LIBRARY_PATH, and make PyO3 build against that same interpreter.
    """
    env = {"PYO3_PYTHON": sys.executable}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and os.path.isdir(libdir):
        old = os.environ.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, old) if p)
    return env


@nox.session(python=False)
def rust(session: nox.Session) -> None:
    """cargo fmt --check, clippy with warnings as errors, cargo test."""
    env = _python_runtime_env()
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        session.warn(f"{sys.executable} has no shared libpython; cargo test may fail to link")
    session.log(f"PYO3_PYTHON={env['PYO3_PYTHON']}")
    session.log(f"LD_LIBRARY_PATH={env.get('LD_LIBRARY_PATH', '')}")
    session.run("cargo", "--version", external=True)
    session.run("cargo", "fmt", "--check", external=True)
    clippy = ["cargo", "clippy", "--locked", "--all-targets", "--", "-D", "warnings"]
    session.run(*clippy, env=env, external=True)
    session.run("cargo", "test", "--locked", env=env, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Build and install the package, then run the test suite without the stress tests."""
    session.install(".[test]")
    session.run("pytest", "-m", "not stress", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Build and install the package, then run the long adversarial tests."""
    session.install(".[test]")
    session.run("pytest", "-m", "stress", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Compare deadpool with its peers (benchmarks/run.py manages their environments)."""
    session.install(".")
    session.run("python", "benchmarks/run.py", *session.posargs)


# CPython's own test_concurrent_futures, as a package with the executor mixins
# that tests/conformance/run.py points at Deadpool (Python 3.13 and later).
_STDLIB_SUITE = "test.test_concurrent_futures.util"


def _stdlib_suite_pythons() -> dict[str, str]:
    """{"3.13": path} for each Python found that ships the stdlib suite.

    Looks on PATH (a pyenv shim for a version that is not selected fails the
    probe and is passed over) and then in pyenv's versions directory.
    """
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = [shutil.which(f"python3.{minor}") for minor in range(13, 20)]
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.*", "bin", "python3.*")))
    found: dict[str, str] = {}
    for path in candidates:
        if not path or not re.search(r"python3\.\d+$", path):
            continue
        probe = subprocess.run(
            [path, "-c", f"import sys, {_STDLIB_SUITE}; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        version = probe.stdout.strip()
        if probe.returncode == 0 and version and version not in found:
            found[version] = os.path.realpath(path)
    return found


@nox.session(python=False)
def conformance(session: nox.Session) -> None:
    """CPython's test_concurrent_futures process-pool tests against Deadpool, for
    fork, spawn and forkserver, checked against tests/conformance/expected_failures.txt.

    Runs on every Python found that ships the ``test`` package, each in its own
    venv under .nox/. Arguments after ``--`` go to tests/conformance/run.py:
    ``nox -s conformance -- --methods spawn -k test_deadlock``.
    """
    pythons = _stdlib_suite_pythons()
    if not pythons:
        message = (
            f"no Python with {_STDLIB_SUITE} found (tried python3.13+ on PATH and "
            "pyenv's versions); install CPython 3.13 with its test package"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            session.error(message)
        session.skip(message)
    for version, python in sorted(pythons.items()):
        venv = os.path.join(".nox", f"conformance-{version}")
        session.log(f"Python {version}: {python} -> {venv}")
        session.run(python, "-m", "venv", "--clear", venv, external=True)
        venv_python = os.path.join(os.path.abspath(venv), "bin", "python")
        # pip builds the extension with the venv's interpreter (maturin's default).
        session.run(venv_python, "-m", "pip", "install", "--quiet", ".", external=True)
        session.run(venv_python, "tests/conformance/run.py", *session.posargs, external=True)
