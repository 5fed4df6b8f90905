"""Total limits of one sandboxed run, no survivors, and the evaluating process out of the program's reach.

These run without the in-process guards (``guard=False``), so what holds is the namespaces and
cgroups alone. Each test skips, naming the reason, where the machine lacks the feature it needs.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time

import pytest

from balora.evaluation import sandbox_isolation
from balora.evaluation._cgroup import _own_cgroup_dirs, create_run_cgroup
from balora.evaluation._sandbox_run import make_limits, run_once

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="namespaces and cgroups are Linux features"),
]


def _cgroup_kinds() -> list[str]:
    group = create_run_cgroup(2**30, 64)
    if group is None:
        return []
    assert group.close()
    return group.kinds


CGROUP = _cgroup_kinds()
NAMESPACES = sandbox_isolation() == "namespaces"
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="no mount/PID/network namespaces on this machine")
needs_memory_cgroup = pytest.mark.skipif(
    not any("memory" in k for k in CGROUP), reason="no writable cgroup with a memory controller on this machine"
)


def _run(code: str, level: str, timeout: float = 10.0, memory_mb: int = 2048, disk_mb: int = 16):
    return run_once(code, timeout, level, guard=False, limits=make_limits(timeout, memory_mb, 16, 64, disk_mb))


def _pids_with(token: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", token], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def _leftover_cgroups() -> list[str]:
    """This process's sandbox cgroups still there (each run removes its own)."""
    v2, v1 = _own_cgroup_dirs()
    parents = [p for p in (v2, *v1.values()) if p is not None]
    return [str(c) for p in parents for c in p.glob(f"balora-sandbox-{os.getpid()}-*")]


DOUBLE_FORK = """
import os, time
if os.fork() == 0:
    os.setsid()  # out of the process group the parent kills
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{token}"])
    os._exit(0)
time.sleep(0.3)
"""


@pytest.mark.parametrize("level", ["namespaces", "network", "none"])
def test_no_process_survives_the_run(level):
    if level == "namespaces" and not NAMESPACES:
        pytest.skip("no mount/PID/network namespaces on this machine")
    if level != "namespaces" and not CGROUP:
        pytest.skip(f"no writable cgroup: at {level!r} a process that leaves the process group can survive")
    if level == "network" and sandbox_isolation() == "none":
        pytest.skip("no network namespace on this machine")
    token = f"{1000 + os.getpid() % 1000}.{time.monotonic_ns() % 10**6:06d}"  # a sleep nobody else runs
    r = _run(DOUBLE_FORK.format(token=token), level)
    assert r.passed, r.stderr_tail
    assert _pids_with(token) == []
    for p in _pids_with(token):  # never leave one behind, even when the test fails
        os.kill(p, 9)
    assert _leftover_cgroups() == []


MEMORY_HOG = """
import os, time
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        x = b"\\x01" * (120 * 2**20)  # within the per-process limit; 4 x 120 MiB is over the total
        time.sleep(0.5)
        os._exit(0)
    kids.append(pid)
print(sorted(os.waitpid(p, 0)[1] for p in kids))
"""


@needs_memory_cgroup
def test_memory_is_capped_in_total():
    r = _run(MEMORY_HOG, sandbox_isolation(), memory_mb=384)
    statuses = ast.literal_eval(r.stdout_tail.strip())  # the children's wait statuses, sorted
    assert statuses[0] == 0 and statuses[-1] == 9, r.stdout_tail  # one at least was killed (SIGKILL), not all
    assert "total memory limit (384 MiB)" in r.stderr_tail
    big = _run(MEMORY_HOG, sandbox_isolation(), memory_mb=1024)
    assert ast.literal_eval(big.stdout_tail.strip()) == [0, 0, 0, 0]


FORKS = """
import os, time
started = 0
for _ in range(40):
    try:
        if os.fork() == 0:
            time.sleep(1)
            os._exit(0)
        started += 1
    except BlockingIOError:  # EAGAIN: the cgroup's pids.max
        break
print(started)
"""


@pytest.mark.skipif(not any("pids" in k for k in CGROUP), reason="no writable cgroup with a pids controller")
def test_processes_are_capped_in_total():
    r = run_once(FORKS, 10, sandbox_isolation(), guard=False, limits=make_limits(10, 2048, 16, 10, 16))
    started = int(r.stdout_tail.strip())
    assert 1 <= started <= 10 + 8 - 2, r.stdout_tail  # max_processes + 8 tasks, of which the sandbox uses 2+


@needs_namespaces
def test_disk_is_capped_in_total(tmp_path):
    code = ("n = 0\ntry:\n    for i in range(20):\n        open(f'f{i}', 'wb').write(bytes(16 * 2**20))\n"
            "        n += 1\nfinally:\n    print(n)\n")
    r = _run(code, "namespaces", memory_mb=1024, disk_mb=40)
    assert r.stdout_tail.strip() == "2"  # 16 MiB files: the third does not fit in 40 MiB
    assert "No space left on device" in r.stderr_tail


@needs_namespaces
def test_the_evaluating_process_is_out_of_reach(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"pass@1": 0.1}')
    code = f"""
import os, signal
results = []
for attempt in (lambda: open({str(metrics)!r}, "w").write('{{"pass@1": 1.0}}'),
                lambda: os.remove({str(metrics)!r}),
                lambda: os.kill({os.getpid()}, signal.SIGKILL),
                lambda: open("/proc/{os.getpid()}/environ", "rb").read()):
    try:
        attempt()
        results.append("done")
    except OSError as e:
        results.append(type(e).__name__)
print(results, os.listdir("/proc"))
"""
    r = _run(code, "namespaces")
    assert r.passed, r.stderr_tail
    assert r.stdout_tail.strip() == (
        "['OSError', 'OSError', 'ProcessLookupError', 'FileNotFoundError'] []"
    ), r.stdout_tail
    assert metrics.read_text() == '{"pass@1": 0.1}'
