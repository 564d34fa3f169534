"""The interpreters the implementations run in.

"ours" is the interpreter running run.py (it has our deadpool; the stdlib pools
run there too). The peers (pebble, loky, joblib) and the original come from
PyPI into two venvs under benchmarks/, made with the same Python so every
implementation runs on the same interpreter version. The original is alone in
its venv because its import name is also ``deadpool``; so is the --baseline
build of ours, in a third venv. Every venv also gets numpy, for the numpy
workload; the calling interpreter gets it from ``nox -s bench``.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Venv:
    path: Path
    requirements: list
    probe: str  # must run in the venv's python for the venv to be reused
    key: str = ""  # what else it was built from, beyond the requirements


# The numpy workload's array library, in every venv (the calling interpreter
# gets it from ``nox -s bench``): a benchmark-only dependency, never deadpool's.
EXTRAS = ["numpy"]
VENVS = {
    "peers": Venv(
        HERE / ".venv-peers",
        ["pebble", "loky", "joblib", *EXTRAS],
        "import pebble, loky, joblib, numpy",
    ),
    "original": Venv(
        HERE / ".venv-original", ["deadpool-executor", *EXTRAS], "import deadpool, numpy"
    ),
}
# Imports our deadpool, the one with the native core, and not the original.
OURS_PROBE = "import deadpool, deadpool._core; deadpool.Deadpool"
BASELINE_WHEELS = HERE / ".baseline-wheel"  # where a --baseline source checkout is built


def _stamp():
    """What a venv must have been built for to be reused."""
    return {"python": sys.version, "base": sys.base_prefix}


def _marker(venv):
    marker = {**_stamp(), "requirements": venv.requirements}
    if venv.key:
        marker["key"] = venv.key
    return marker


def _ready(venv):
    python = venv.path / "bin" / "python"
    try:
        marker = json.loads((venv.path / ".bench-ready").read_text())
    except (OSError, ValueError):
        return False
    if marker != _marker(venv):
        return False
    check = subprocess.run([python, "-c", venv.probe], capture_output=True, timeout=120)
    return check.returncode == 0


def _build(venv, log):
    # Only the baseline has a key: it installs a local wheel, the others PyPI's.
    origin = "" if venv.key else " from PyPI"
    log(f"creating {venv.path.name} with {' '.join(venv.requirements)}{origin}")
    shutil.rmtree(venv.path, ignore_errors=True)
    # `-m venv` from inside a venv (nox's) still bases the new one on the real
    # interpreter, which is what we want.
    subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True)
    pip = [str(venv.path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", *venv.requirements], check=True)
    (venv.path / ".bench-ready").write_text(json.dumps(_marker(venv)))


def add_baseline(wheel_or_dir, log):
    """Register the "baseline" venv for an earlier build of ours and say which
    wheel it is. A directory is a source checkout, built into a wheel."""
    source = Path(wheel_or_dir).resolve()
    wheel = _build_wheel(source, log) if source.is_dir() else source
    if not wheel.is_file() or wheel.suffix != ".whl":
        sys.exit(f"--baseline: {wheel_or_dir} is neither a wheel nor a source directory")
    # The content, not the path: a wheel rebuilt in place must be reinstalled.
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    VENVS["baseline"] = Venv(
        HERE / ".venv-baseline", [str(wheel), *EXTRAS], f"{OURS_PROBE}; import numpy", digest
    )
    return f"{wheel.name} (sha256 {digest[:12]})"


def _build_wheel(source, log):
    log(f"building a baseline wheel from {source}")
    shutil.rmtree(BASELINE_WHEELS, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--quiet", "--no-deps", "-w", str(BASELINE_WHEELS), str(source)],
        check=True,
    )
    (wheel,) = BASELINE_WHEELS.glob("*.whl")
    return wheel


def ensure(name, log):
    """Return the python of venv ``name``, creating or repairing it as needed."""
    venv = VENVS[name]
    if not _ready(venv):
        _build(venv, log)
    return str(venv.path / "bin" / "python")


def python_for(env, log):
    if env == "ours":
        return sys.executable
    return ensure(env, log)


def ours_importable():
    """Whether our deadpool (the one with the native core) is installed here.

    Checked in a subprocess so run.py itself never imports a pool library.
    """
    return _importable_here(OURS_PROBE)


def extras_importable():
    """Whether the calling interpreter has numpy, for the numpy workload of the
    implementations that run in it (ours and the stdlib's)."""
    return _importable_here("import numpy")


def _importable_here(probe):
    check = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=HERE)
    return check.returncode == 0
