"""A child cgroup per sandbox run: total memory and process caps for everything the run starts.

``create_run_cgroup`` makes a fresh cgroup below the evaluating process's own one in each hierarchy
where it can: cgroup v2 when the memory and pids controllers are delegated to our children (their
``memory.max``/``pids.max`` files appear in a new child), else the v1 ``memory`` and ``pids``
hierarchies. A v2 child without controllers is still made where possible: its ``cgroup.kill`` ends
every process of the run in one step, and its ``cgroup.procs`` lists them. Controllers are never
switched on in the parent's ``cgroup.subtree_control``: that would change the machine's set-up.

The run joins the cgroups itself (``join_script``: a shell writes its PID into each ``cgroup.procs``
and then execs the real command), so nothing the run starts is ever outside them. ``close`` kills
what is left, waits until the cgroups are empty and removes them. Needs write access to the cgroup
file system (root, or a delegated subtree); without it there is no cgroup and the limits are per
process only (see ``sandbox.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

# Runs before the sandboxed command: $1 is how many cgroup.procs files follow; then the command.
JOIN_SCRIPT = r"""
n=$1; shift
while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 98; shift; n=$((n - 1)); done
exec "$@"
"""
EXIT_JOIN_FAILED = 98


@dataclass
class RunCgroup:
    """The cgroups of one run; ``kinds`` names what they limit, e.g. ["v1 memory", "v1 pids"]."""

    dirs: list[Path]
    kinds: list[str] = field(default_factory=list)
    memory_limited: bool = False
    pids_limited: bool = False

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return found

    def kill(self, rounds: int = 200) -> bool:
        """SIGKILL every process of the run; True once the cgroups are empty."""
        for d in self.dirs:
            if (d / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
        for _ in range(rounds):
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:  # a process that forks meanwhile is caught in the next round
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        return not self.pids()

    def oom_killed(self) -> bool:
        """Did the kernel kill a process of the run for exceeding the memory limit?"""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and value.strip() not in ("", "0"):
                            return True
        return False

    def close(self) -> bool:
        """Kill what is left and remove the cgroups; False if a process or a cgroup stayed."""
        empty = self.kill()
        removed = True
        for d in self.dirs:
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last exiting processes are being released
                    time.sleep(0.01)
            else:
                removed = False
        return empty and removed


def _own_cgroup_dirs() -> tuple[Path | None, dict[str, Path]]:
    """This process's cgroup directory in the v2 hierarchy and in each mounted v1 controller."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else [""]:
                    own[controller] = parts[2]
    v2: Path | None = None
    v1: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            root, mountpoint = fields[3], fields[4]
            fstype, superopts = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2" and "" in own:
                v2 = v2 or _below(mountpoint, root, own[""])
            elif fstype == "cgroup":
                for controller in ("memory", "pids"):
                    if controller in superopts and controller in own and controller not in v1:
                        path = _below(mountpoint, root, own[controller])
                        if path is not None:
                            v1[controller] = path
    return v2, v1


def _below(mountpoint: str, root: str, path: str) -> Path | None:
    if root == "/":
        return Path(mountpoint + path)
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return Path(mountpoint + path[len(root.rstrip("/")):])
    return None  # our cgroup is outside what this mount shows


def _make(parent: Path, name: str, limits: dict[str, int]) -> Path | None:
    """mkdir ``parent/name`` and write ``limits`` into it; None (and nothing left) on any error."""
    child = parent / name
    try:
        child.mkdir()
    except OSError:
        return None
    try:
        for file, value in limits.items():
            (child / file).write_text(str(value))
        return child
    except OSError:
        with contextlib.suppress(OSError):
            child.rmdir()
        return None


def create_run_cgroup(memory_bytes: int, max_pids: int) -> RunCgroup | None:
    """Fresh cgroups capping the whole run at ``memory_bytes`` and ``max_pids`` tasks, or None."""
    try:
        v2, v1 = _own_cgroup_dirs()
    except (OSError, ValueError, IndexError):
        return None
    name = f"balora-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
    group = RunCgroup(dirs=[])
    if v2 is not None and os.access(v2, os.W_OK):
        delegated = set()
        with contextlib.suppress(OSError):
            delegated = set((v2 / "cgroup.subtree_control").read_text().split())
        if {"memory", "pids"} <= delegated:
            child = _make(v2, name, {"memory.max": memory_bytes, "pids.max": max_pids})
            if child is not None:
                with contextlib.suppress(OSError):  # no swapping around the limit, where swap exists
                    (child / "memory.swap.max").write_text("0")
                group.dirs.append(child)
                group.kinds.append("v2 memory+pids")
                group.memory_limited = group.pids_limited = True
        if not group.dirs:
            child = _make(v2, name, {})  # no limits, but cgroup.kill and a list of every process
            if child is not None:
                group.dirs.append(child)
                group.kinds.append("v2 (kill only)")
    if not group.memory_limited and "memory" in v1:
        child = _make(v1["memory"], name, {"memory.limit_in_bytes": memory_bytes})
        if child is not None:
            with contextlib.suppress(OSError):  # swap accounting is often off; then there is no such file
                (child / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            group.dirs.append(child)
            group.kinds.append("v1 memory")
            group.memory_limited = True
    if not group.pids_limited and "pids" in v1:
        child = _make(v1["pids"], name, {"pids.max": max_pids})
        if child is not None:
            group.dirs.append(child)
            group.kinds.append("v1 pids")
            group.pids_limited = True
    return group if group.dirs else None
