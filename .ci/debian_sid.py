"""Run the test suite on CPythons this machine does not have: Debian sid's.

pyenv here has 3.10 to 3.13; Debian's unstable suite has python3.14 and
python3.15 with their test packages. This module keeps a minimal sid tree
(``debootstrap --variant=minbase``, about 500 MB, a minute to make) and runs
commands inside it.

Why a chroot in a private mount namespace: every mount the run needs (/proc,
/dev, a fresh /dev/shm, the source tree at /src) is made inside
``unshare --mount``, so the host never sees them and they vanish with the last
process of the run, however it ends (a failed test, Ctrl-C, SIGKILL). Removing
the tree afterwards can never reach through a leftover bind mount into the
host's /dev.

Why pip runs on the host: the tree's pip would need the host's network and
certificate set-up. The host's pip installs wheels for the tree's Python
straight into a venv inside it (``--target --python-version``), and our abi3
wheel, built on the host, is one of them.

Needs root (debootstrap, unshare, chroot). Command line, for a person at the
keyboard::

    python .ci/debian_sid.py ensure ROOT     # make the tree (or check it)
    python .ci/debian_sid.py shell ROOT      # a shell inside, the repo at /src
    python .ci/debian_sid.py remove ROOT     # and what a failed ensure left
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PYTHONS = ("3.14", "3.15")
MIRROR = os.environ.get("DEADPOOL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE = "/src"
_READY = ".deadpool-sid-ready"


def packages() -> list[str]:
    """Each Python with its test package (the conformance run needs it)."""
    return [name for v in PYTHONS for name in (f"python{v}", f"libpython{v}-testsuite")]


def ensure(root: Path, log=print) -> None:
    """Make the tree at ``root`` unless a complete one with these packages is there."""
    wanted = " ".join(packages())
    stamp = root / _READY
    if stamp.exists() and stamp.read_text() == wanted:
        return
    _require_root()
    debootstrap = shutil.which("debootstrap") or _install_debootstrap(log)
    if root.exists() and not stamp.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a tree this module made; remove it")
    partial = _partial(root)
    remove(partial)
    remove(root)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap sid into {partial} ({wanted})")
    subprocess.run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(packages())}",
            "sid",
            str(partial),
            MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (partial / SOURCE.lstrip("/")).mkdir(exist_ok=True)
    (partial / _READY).write_text(wanted)
    partial.rename(root)


def has_python(root: Path, version: str) -> bool:
    return (root / "usr" / "bin" / f"python{version}").exists()


def run(
    root: Path,
    argv: Sequence[str],
    *,
    source: Path,
    cwd: str = SOURCE,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> int:
    """Run ``argv`` inside the tree, with ``source`` at /src; return its exit status."""
    _require_root()
    inner_env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
    mounts = [
        f"mount -t proc proc {_q(root / 'proc')}",
        f"mount --rbind /dev {_q(root / 'dev')}",
        f"mount -t tmpfs -o mode=1777 tmpfs {_q(root / 'dev' / 'shm')}",
        f"mount --bind {_q(source)} {_q(root / SOURCE.lstrip('/'))}",
    ]
    enter = [
        "exec chroot",
        _q(root),
        "/usr/bin/env -i",
        *(_q(f"{k}={v}") for k, v in inner_env.items()),
        "/bin/sh -c",
        _q(f"cd {_q(cwd)} && exec " + " ".join(_q(a) for a in argv)),
    ]
    script = " && ".join([*mounts, " ".join(enter)])
    # --propagation private: nothing mounted here reaches the host's namespace.
    command = ["unshare", "--mount", "--propagation", "private", "--fork", "/bin/sh", "-c", script]
    status = subprocess.run(command, check=False).returncode
    if check and status != 0:
        raise subprocess.CalledProcessError(status, list(argv))
    return status


def pip_install_into(root: Path, venv: str, version: str, requirements: Sequence[str]) -> None:
    """Install wheels for the tree's ``python{version}`` into its venv ``venv``,
    with the host's pip (see the module's docstring)."""
    site = root / venv.lstrip("/") / "lib" / f"python{version}" / "site-packages"
    abi = "cp" + version.replace(".", "")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]
    command += ["--root-user-action=ignore"]
    command += ["--target", str(site), "--python-version", version, "--implementation", "cp"]
    command += ["--abi", abi, "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]
    subprocess.run([*command, *requirements], check=True)


def remove(root: Path) -> None:
    """Delete the tree, refusing while anything is mounted inside it."""
    if not root.exists():
        return
    inside = [m for m in _mount_points() if Path(m).is_relative_to(root.resolve())]
    if inside:
        raise RuntimeError(f"refusing to remove {root}: still mounted: {', '.join(inside)}")
    shutil.rmtree(root)


def _partial(root: Path) -> Path:
    """Where debootstrap works, so that ``root`` only ever holds a whole tree."""
    return root.with_name(root.name + ".partial")


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo]


def _install_debootstrap(log) -> str:
    log("installing debootstrap (apt-get)")
    install = ["apt-get", "install", "-y", "-qq", "debootstrap"]
    if subprocess.run(install, check=False).returncode != 0:
        # A fresh image may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(install, check=True)
    found = shutil.which("debootstrap")
    if not found:
        raise RuntimeError("apt-get installed debootstrap, but it is not on PATH")
    return found


def _require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError(
            "running Debian sid's Pythons needs root (debootstrap, unshare, chroot); "
            "or install python3.14/python3.15 on this machine"
        )


def _q(value: object) -> str:
    return shlex.quote(str(value))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["ensure", "shell", "remove"])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    if args.action == "ensure":
        ensure(root)
    elif args.action == "shell":
        return run(root, ["/bin/bash"], source=Path.cwd(), check=False)
    else:
        remove(root)
        remove(_partial(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
