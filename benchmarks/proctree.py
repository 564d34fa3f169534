"""Process-tree helpers read straight from /proc (Linux only, stdlib only).

Used by the driver (memory of a pool) and by run.py (kill a driver's whole tree,
find processes a pool left behind). Workers of some pools lead their own process
group or session, so killing a process group is not enough: we follow the
parent links in /proc instead.
"""

import os
import signal


def _stat_fields(pid):
    """Return (state, ppid) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1])


def children_map():
    """Map each pid to the list of its direct children, for all processes."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            kids.setdefault(fields[1], []).append(int(name))
    return kids


def descendants(root):
    """Every process below ``root`` (not ``root`` itself), parents before children."""
    kids = children_map()
    found, todo = [], list(kids.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def is_zombie(pid):
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cmdline(pid, limit=80):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return text[:limit] or comm(pid)


ROLES = {
    "multiprocessing.forkserver": "forkserver",
    "resource_tracker import": "resource_tracker",
    "popen_loky": "loky_worker",
}


def role(pid):
    """A short name for what a pool's process is, for the memory notes."""
    line = cmdline(pid, limit=4096)
    for marker, name in ROLES.items():
        if marker in line:
            # Forked children inherit the command line of their forkserver.
            fields = _stat_fields(pid)
            parent_line = cmdline(fields[1], limit=4096) if fields else ""
            return f"{name} child" if marker in parent_line else name
    return comm(pid)


def pss_kib(pid):
    """Proportional set size of ``pid`` in KiB, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
