"""Developer tasks for deadpool.

A bare ``nox`` runs the whole suite on the Python that runs nox: lint, Rust
checks, tests, the stress suite and the CPython conformance run. ``nox -s
tests-3.14`` runs the test suite on one supported Python (and
``conformance-3.14`` CPython's executor tests there); ``.ci/run`` runs both for
every Python in ``PYTHONS``. ``nox -s bench`` runs the benchmarks (not part of
the default run).

Every session installs one wheel, built once per nox run: an abi3 wheel that
serves every CPython from 3.10. A Python the machine lacks (3.14 and 3.15 on
the CI image) runs in a Debian sid tree (``.ci/debian_sid.py``; needs root),
kept at ``$DEADPOOL_SID_ROOT`` or ``.nox/debian-sid``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import nox

nox.options.sessions = ["lint", "rust", "tests", "stress", "conformance"]
nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

LINT_PATHS = ["python", "tests", "benchmarks", "examples", "noxfile.py", ".ci"]
# Every CPython deadpool supports, each a ``tests-X.Y`` session.
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14", "3.15")
# Those whose ``test`` package has the suite's 3.13 layout: ``conformance-X.Y``.
CONFORMANCE_PYTHONS = ("3.13", "3.14", "3.15")
ROOT = Path(__file__).resolve().parent
WHEELHOUSE = ROOT / ".nox" / "wheelhouse"
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over all Python code; the ``_core`` stub
    checked against the built module; the typed usage file under ``mypy --strict``."""
    session.install(RUFF)
    session.run("ruff", "--version")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.install(_wheel(session), MYPY)
    session.run(
        "python",
        "-m",
        "mypy.stubtest",
        "deadpool._core",
        "--allowlist",
        "tests/stubtest-allowlist.txt",
    )
    # What a user's strictly typed code sees of Deadpool, submit and Future.
    session.run("mypy", "--strict", "tests/typed_usage.py")


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
    """The test suite without the stress tests, on the Python that runs nox."""
    session.install(f"{_wheel(session)}[test]")
    session.run("pytest", "-m", "not stress", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """The long adversarial tests, on the Python that runs nox."""
    session.install(f"{_wheel(session)}[test]")
    session.run("pytest", "-m", "stress", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Compare deadpool with its peers (benchmarks/run.py manages their environments).

    numpy is for the numpy workload only, never a dependency of deadpool; the
    peers' venvs get it from benchmarks/envs.py, this one (ours and the stdlib's) here.
    """
    session.install(_wheel(session), "numpy")
    session.run("python", "benchmarks/run.py", *session.posargs)


_built_wheel: list[str] = []


def _wheel(session: nox.Session) -> str:
    """The one wheel every session of this nox run installs, built once.

    Cargo.toml asks PyO3 for the stable ABI from 3.10 (``abi3-py310``), so the
    wheel (``cp310-abi3``) installs on every supported CPython, whichever built it.
    """
    if not _built_wheel:
        shutil.rmtree(WHEELHOUSE, ignore_errors=True)
        session.run(
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
            str(WHEELHOUSE), str(ROOT), external=True,
        )  # fmt: skip
        (wheel,) = WHEELHOUSE.glob("*.whl")
        session.log(f"wheel: {wheel.name}")
        _built_wheel.append(str(wheel))
    return _built_wheel[0]


# ----- one Python at a time: tests-X.Y and conformance-X.Y ---------------


def _suite_on(version: str, conformance: bool) -> Callable[[nox.Session], None]:
    def run_suite(session: nox.Session) -> None:
        where = _host_python(version)
        if where is None:
            _in_debian_sid(session, version, conformance)
            return
        venv = ROOT / ".nox" / f"{session.name}-venv"
        session.log(f"Python {version}: {where} -> {venv}")
        session.run(where, "-m", "venv", "--clear", str(venv), external=True)
        python = str(venv / "bin" / "python")
        pip = [python, "-m", "pip", "install", "--quiet"]
        session.run(*pip, f"{_wheel(session)}[test]", external=True)
        session.run(python, *_suite_command(conformance, session.posargs), external=True)

    what = "CPython's executor tests (conformance)" if conformance else "the test suite (no stress)"
    run_suite.__doc__ = f"{what} on CPython {version}: this machine's, else Debian sid's."
    return run_suite


def _suite_command(conformance: bool, posargs: list[str]) -> list[str]:
    if conformance:
        return ["tests/conformance/run.py", *posargs]
    return ["-m", "pytest", "-m", "not stress", "-p", "no:cacheprovider", *posargs]


for _version in PYTHONS:
    nox.session(name=f"tests-{_version}", python=False)(_suite_on(_version, conformance=False))
for _version in CONFORMANCE_PYTHONS:
    nox.session(name=f"conformance-{_version}", python=False)(_suite_on(_version, True))


def _host_python(version: str) -> str | None:
    """This machine's ``python{version}``: on PATH or in pyenv's versions."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    pattern = os.path.join(pyenv_root, "versions", f"{version}.*", "bin", f"python{version}")
    candidates = [shutil.which(f"python{version}"), *sorted(glob.glob(pattern), reverse=True)]
    for path in candidates:
        # A pyenv shim of a version that is not selected fails the probe.
        if path and _probe(path, "print('%d.%d' % sys.version_info[:2])") == version:
            return os.path.realpath(path)
    return None


def _probe(python: str, code: str) -> str | None:
    done = subprocess.run(
        [python, "-c", f"import sys; {code}"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _in_debian_sid(session: nox.Session, version: str, conformance: bool) -> None:
    """Run the suite with Debian sid's ``python{version}``, in the tree that
    ``.ci/debian_sid.py`` makes (once) and enters (each time)."""
    sid = _debian_sid_module()
    if version not in sid.PYTHONS:
        session.error(f"no python{version} here, and Debian sid's are {sid.PYTHONS}")
    root = Path(os.environ.get("DEADPOOL_SID_ROOT") or ROOT / ".nox" / "debian-sid").resolve()
    sid.ensure(root, log=session.log)
    venv = f"/opt/{session.name}-venv"
    session.log(f"Python {version}: Debian sid's, in {root}; venv {venv}")
    sid.run(root, [f"python{version}", "-m", "venv", "--clear", "--without-pip", venv], source=ROOT)
    sid.pip_install_into(root, venv, version, [f"{_wheel(session)}[test]"])
    passed = {k: v for k, v in os.environ.items() if k == "CI"}
    command = [f"{venv}/bin/python", *_suite_command(conformance, session.posargs)]
    status = sid.run(root, command, source=ROOT, env=passed, check=False)
    if status != 0:
        session.error(f"{' '.join(command)} failed with status {status} (Debian sid, {version})")


def _debian_sid_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("debian_sid", ROOT / ".ci" / "debian_sid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- conformance: every Python here that ships CPython's executor tests --

# CPython's own test_concurrent_futures, as a package with the executor mixins
# that tests/conformance/run.py points at Deadpool (Python 3.13 and later).
_STDLIB_SUITE = "test.test_concurrent_futures.util"


def _stdlib_suite_pythons() -> dict[str, str]:
    """{"3.13": path} for each Python on this machine that ships the stdlib suite."""
    found: dict[str, str] = {}
    for version in CONFORMANCE_PYTHONS:
        python = _host_python(version)
        if python and _probe(python, f"import {_STDLIB_SUITE}") is not None:
            found[version] = python
    return found


@nox.session(python=False)
def conformance(session: nox.Session) -> None:
    """CPython's test_concurrent_futures process-pool tests against Deadpool, for
    fork, spawn and forkserver, checked against tests/conformance/expected_failures.txt.

    Runs on every Python on this machine that ships the ``test`` package, each in
    its own venv under .nox/ (``conformance-X.Y`` runs one, Debian sid's if need
    be). Arguments after ``--`` go to tests/conformance/run.py:
    ``nox -s conformance -- --methods spawn -k test_deadlock``.
    """
    pythons = _stdlib_suite_pythons()
    if not pythons:
        message = (
            f"no Python with {_STDLIB_SUITE} found (tried {', '.join(CONFORMANCE_PYTHONS)} "
            "on PATH and in pyenv's versions); install one with its test package"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            session.error(message)
        session.skip(message)
    for version, python in sorted(pythons.items()):
        venv = ROOT / ".nox" / f"conformance-{version}"
        session.log(f"Python {version}: {python} -> {venv}")
        session.run(python, "-m", "venv", "--clear", str(venv), external=True)
        venv_python = str(venv / "bin" / "python")
        session.run(venv_python, "-m", "pip", "install", "--quiet", _wheel(session), external=True)
        session.run(venv_python, "tests/conformance/run.py", *session.posargs, external=True)
