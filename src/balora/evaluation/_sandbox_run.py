"""One sandboxed run: the child's command line, its pipes and cgroup, its end and its verdict.

The policy (which level, the opt-in, the limits' defaults) is ``sandbox.py``'s; this module starts
the child at a level it is given, waits, kills everything the run started and reads the verdict:
a pass is exit status 0 AND the run's nonce on the verdict pipe (see ``_sandbox_prelude.py``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from balora.errors import ConfigError
from balora.evaluation._cgroup import EXIT_JOIN_FAILED, JOIN_SCRIPT, create_run_cgroup

logger = logging.getLogger(__name__)

_EXIT_FAILED = 1  # the prelude's exit status for a program that raised (see _sandbox_prelude.py)
_EXIT_SETUP = 97  # the mount script could not set the namespace up
_KILL_GRACE_S = 5.0
_PIDS_OVERHEAD = 8  # sh, unshare, the namespace's shell, the interpreter's two threads
_NONCE_BYTES = 32

# Runs as root (real, or mapped in a user namespace) inside the new mount/PID/network namespaces:
# $1 is the sandbox directory, $2 its size in bytes, the rest the interpreter's command line. The
# interpreter is a child of this shell (not PID 1), so signals such as SIGXCPU behave normally.
_NAMESPACE_SCRIPT = r"""
sb=$1; size=$2; shift 2
mount -t tmpfs -o "size=$size,mode=700,nosuid,nodev" balora-sandbox "$sb" || exit 97
cd "$sb" || exit 97
while read -r _ _ _ _ mp _; do
  case $mp in *\\*) mp=$(printf '%b' "$mp");; esac
  [ "$mp" = "$sb" ] && continue
  mount -o remount,bind,ro,nosuid,nodev "$mp" || { echo "balora-sandbox: cannot make $mp read-only" >&2; exit 97; }
done < /proc/self/mountinfo
mount -t tmpfs -o ro,size=4k,mode=555,nosuid,nodev,noexec balora-no-proc /proc || exit 97
setpriv --no-new-privs --bounding-set -all --inh-caps -all --ambient-caps -all -- "$@"
exit $?
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    ``status``: "passed" (ran to its end: exit status 0 and the harness's nonce), "failed" (raised,
    called exit(), ended its process early, or ran out of memory), "timeout" (wall-clock or CPU limit)
    or "error" (killed by a signal, or the sandbox could not start). ``returncode``: the interpreter's
    exit status, negative for a signal. ``cgroup``: the cgroups that capped the run in total ("" when
    there were none).
    """

    passed: bool
    status: str
    stderr_tail: str
    duration_s: float
    stdout_tail: str = ""
    returncode: int | None = None
    isolation: str = "none"
    cgroup: str = ""


@lru_cache(maxsize=1)
def _prelude_source() -> str:
    return Path(__file__).with_name("_sandbox_prelude.py").read_text(encoding="utf-8")


def unshare_prefix(level: str) -> list[str] | None:
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


def _drain(fd: int, limit: int = 4096) -> bytes:
    """What is in the pipe now (no waiting for writers that may still hold it open)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while len(data) <= limit and (chunk := os.read(fd, 4096)):
            data += chunk
    return data


def run_once(code: str, timeout: float, level: str, guard: bool, limits: dict, tail_chars: int = 2000) -> SandboxResult:
    prefix = unshare_prefix(level)
    if prefix is None:
        raise ConfigError(f"sandbox isolation {level!r} needs unshare/setpriv/mount, not found on PATH")
    outer = tempfile.mkdtemp(prefix="balora-sandbox-")
    group = None
    fds: list[int] = []
    try:
        work = os.path.join(outer, "work")
        os.mkdir(work, 0o700)
        Path(outer, "program.py").write_text(code, encoding="utf-8")
        group = create_run_cgroup(limits["memory_bytes"], limits["nproc"] + _PIDS_OVERHEAD)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        fds.append(source_fd := os.open(os.path.join(outer, "program.py"), os.O_RDONLY))
        nonce_r, nonce_w = os.pipe()
        verdict_r, verdict_w = os.pipe()
        fds += [nonce_r, nonce_w, verdict_r, verdict_w]
        os.write(nonce_w, nonce)
        cfg = dict(limits, guard=guard, source_fd=source_fd, nonce_fd=nonce_r, verdict_fd=verdict_w,
                   nonce_bytes=_NONCE_BYTES)
        cmd = ["/bin/sh", "-c", JOIN_SCRIPT, "sh", str(len(group.dirs)), *group.procs_files()] if group else []
        cmd += prefix
        if level == "namespaces":
            cmd += [work, str(limits["disk_bytes"])]
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
                    start_new_session=True, close_fds=True, pass_fds=(source_fd, nonce_r, verdict_w),
                )
        except OSError as e:
            return SandboxResult(False, "error", f"sandbox could not start: {e}", 0.0, isolation=level)
        for fd in (source_fd, nonce_r, nonce_w, verdict_w):  # the child's now; the pipe ends at its exit
            fds.remove(fd)
            os.close(fd)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # on timeout, and anything the program left in its process group
            if group is not None:
                group.kill()  # and anything that left the process group
            try:
                proc.wait(timeout=_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        duration = time.monotonic() - start
        verdict_ok = hmac.compare_digest(_drain(verdict_r), nonce)
        oom = group is not None and group.oom_killed()
        rc = proc.returncode
        status = _status(rc, timed_out, level, verdict_ok, oom)
        note = _note(rc, status, oom, limits)
        return SandboxResult(
            passed=status == "passed", status=status, stderr_tail=(_tail(err_path, tail_chars) + note)[-tail_chars:],
            duration_s=duration, stdout_tail=_tail(out_path, tail_chars), returncode=rc, isolation=level,
            cgroup=", ".join(group.kinds) if group else "",
        )
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if group is not None and not group.close():
            logger.warning("sandbox: could not empty and remove cgroups %s", [str(d) for d in group.dirs])
        _rmtree(outer)


def _status(rc: int, timed_out: bool, level: str, verdict_ok: bool, oom: bool) -> str:
    if timed_out:
        return "timeout"
    if rc == 0:
        return "passed" if verdict_ok else "failed"
    if rc == _EXIT_FAILED or oom:
        return "failed"
    # At "namespaces" the shell reports a signal as 128 + its number; elsewhere Popen gives -number.
    sig = -rc if rc < 0 else rc - 128 if level == "namespaces" and rc > 128 else None
    if sig == signal.SIGXCPU:
        return "timeout"
    return "error"


def _note(rc: int, status: str, oom: bool, limits: dict) -> str:
    if rc == 0 and status == "failed":
        return "\nsandbox: the process ended (exit status 0) without the harness's verdict: not a pass\n"
    if oom:
        return f"\nsandbox: killed at the run's total memory limit ({limits['memory_bytes'] >> 20} MiB)\n"
    if rc == _EXIT_SETUP:
        return "\nsandbox: the namespaces could not be set up\n"
    if rc == EXIT_JOIN_FAILED:
        return "\nsandbox: could not join the run's cgroup\n"
    return ""


def make_limits(timeout: float, memory_mb: int, file_size_mb: int, max_processes: int, disk_mb: int) -> dict:
    return {
        "cpu_s": max(1, math.ceil(timeout)) + 1,
        "memory_bytes": memory_mb * 2**20,
        "file_bytes": file_size_mb * 2**20,
        "disk_bytes": disk_mb * 2**20,
        "nproc": max_processes,
        "nofile": 256,
    }


