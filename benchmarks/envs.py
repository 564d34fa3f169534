"""The interpreters the implementations run in.

"ours" is the interpreter running run.py (it has our deadpool; the stdlib pools
run there too). The peers and the original come from PyPI into two venvs under
benchmarks/, made with the same Python so every implementation runs on the same
interpreter version. The original is alone in its venv because its import name
is also ``deadpool``.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

VENVS = {
    "peers": (HERE / ".venv-peers", ["pebble", "loky"], "import pebble, loky"),
    "original": (HERE / ".venv-original", ["deadpool-executor"], "import deadpool"),
}


def _stamp():
    """What a venv must have been built for to be reused."""
    return {"python": sys.version, "base": sys.base_prefix}


def _ready(path, requirements, probe):
    python = path / "bin" / "python"
    try:
        marker = json.loads((path / ".bench-ready").read_text())
    except (OSError, ValueError):
        return False
    if marker != {**_stamp(), "requirements": requirements}:
        return False
    check = subprocess.run([python, "-c", probe], capture_output=True, timeout=120)
    return check.returncode == 0


def _build(path, requirements, log):
    log(f"creating {path.name} with {' '.join(requirements)} from PyPI")
    shutil.rmtree(path, ignore_errors=True)
    # `-m venv` from inside a venv (nox's) still bases the new one on the real
    # interpreter, which is what we want.
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", *requirements], check=True)
    (path / ".bench-ready").write_text(json.dumps({**_stamp(), "requirements": requirements}))


def ensure(name, log):
    """Return the python of venv ``name``, creating or repairing it as needed."""
    path, requirements, probe = VENVS[name]
    if not _ready(path, requirements, probe):
        _build(path, requirements, log)
    return str(path / "bin" / "python")


def python_for(env, log):
    if env == "ours":
        return sys.executable
    return ensure(env, log)


def ours_importable():
    """Whether our deadpool (the one with the native core) is installed here.

    Checked in a subprocess so run.py itself never imports a pool library.
    """
    probe = "import deadpool, deadpool._core; deadpool.Deadpool"
    check = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=HERE)
    return check.returncode == 0
