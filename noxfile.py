"""Developer tasks for deadpool.

A bare ``nox`` runs the whole suite: lint, Rust checks, tests and the stress
suite. ``nox -s bench`` runs the benchmarks (not part of the default run).

Every session uses the interpreter that runs nox itself, so a machine with
nothing but ``python3`` (and Rust) needs no further set-up.
"""

from __future__ import annotations

import os
import sys
import sysconfig

import nox

nox.options.sessions = ["lint", "rust", "tests", "stress"]
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
