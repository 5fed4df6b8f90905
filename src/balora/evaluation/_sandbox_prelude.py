"""Runs INSIDE the sandbox's child interpreter (``python -I -B -c <this file's source> <json>``).

Never imported by the library: importing it does nothing, and its guards would cripple the caller's
process if ``main()`` were called there.

The verdict. The parent hands over three file descriptors: the program's source, a pipe holding a
random nonce, and the write end of a verdict pipe. A worker thread reads the nonce and closes its
pipe before any generated code exists, runs the program, and only when ``exec`` returns normally
writes the nonce to the verdict pipe and exits 0. The parent counts a pass only for exit status 0
AND exactly that nonce, so a program that ends its process early (``os._exit(0)``, ctypes'
``_exit``, a ``real_exit`` found in some frame) or prints something nonce-like has failed.

Keeping the nonce from the program. It lives only in a local variable of the worker thread's bottom
frame (not in argv, the environment, a file, a global or any container), so the audit hook below
refuses every route from Python to a frame (``sys._getframe``, ``tb_frame``/``gi_frame``/...,
``sys._current_frames``, trace and profile functions) or to arbitrary objects (``gc.get_objects``,
``get_referrers``, ``get_referents``), and every route to raw memory that the standard library
offers (ctypes, cffi, CPython's test modules, crafted bytecode via ``code.__new__`` or
``marshal.loads``, ``/proc/self/mem``). The program runs in a thread other than the main one, so it
cannot install a Python signal handler (the one unaudited way to be handed a frame). What remains is
code that corrupts the interpreter's memory (a C extension that reads raw pointers, such as numpy's
array interface, or an interpreter bug): the nonce does not withstand that; the namespaces, cgroups
and read-only mounts that ``sandbox.py`` sets up around this process still do.

The other guards (files written, renamed or removed only below the sandbox directory, no sockets, no
new processes, no signals) are the same audit hook: defence in depth, not a security boundary.
Once added, an audit hook cannot be removed from Python. The program is not allowed to print a
traceback of its own (that needs frames); the harness prints the program's uncaught exception.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the program raised, called exit(), or the harness could not run it

_FRAME_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._current_exceptions"})
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_REFUSED_EVENTS = frozenset({
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "code.__new__", "marshal.load", "marshal.loads",
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
    "subprocess.Popen", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
})
_REFUSED_PREFIXES = ("ctypes.", "socket.", "http.client.", "urllib.", "ftplib.", "smtplib.",
                     "imaplib.", "poplib.", "nntplib.", "telnetlib.", "webbrowser.")
_REFUSED_MODULES = frozenset({
    "ctypes", "_ctypes", "cffi", "_cffi_backend", "_testcapi", "_testinternalcapi", "_testbuffer",
    "_testmultiphase", "_testsinglephase", "_testimportmultiple", "_xxsubinterpreters",
    "_xxinterpchannels", "_xxtestfuzz", "_posixsubprocess", "multiprocessing", "_multiprocessing",
    "resource", "psutil", "tkinter", "_tkinter", "joblib",
})
# event -> (positions of path arguments, position of a dir_fd argument or None, descriptor allowed)
_PATH_EVENTS = {
    "os.remove": ((0,), 1, False), "os.rmdir": ((0,), 1, False), "os.mkdir": ((0,), 2, False),
    "os.chmod": ((0,), 2, False), "os.chown": ((0,), 3, False), "os.utime": ((0,), 3, False),
    "os.truncate": ((0,), None, True), "os.rename": ((0, 1), 2, False), "os.link": ((0, 1), 2, False),
    "os.symlink": ((0, 1), 2, False), "os.chflags": ((0,), None, False),
    "os.setxattr": ((0,), None, False), "os.removexattr": ((0,), None, False),
    "shutil.rmtree": ((0,), None, False),
}
# Imported before the guards are armed: afterwards the pycache is ignored (loading a .pyc needs
# marshal.loads, which is refused), so later imports compile from source, slowly.
_PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "string",
            "bisect", "hashlib", "random", "fractions", "statistics", "decimal", "datetime", "json",
            "copy", "operator", "dataclasses", "enum", "textwrap", "traceback", "linecache")


def _set_limits(cfg: dict) -> None:
    import contextlib
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


def _install_guards(root: str):
    """Arm the audit hook for the program; returns the function that disarms it (harness only)."""
    import os
    import stat
    import sys

    root = os.path.realpath(root)
    realpath, fsdecode, fspath, sep, os_stat = os.path.realpath, os.fsdecode, os.fspath, os.sep, os.stat
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    armed = [True]

    def resolve(path: object, base: str | None = None) -> str:
        p = fsdecode(fspath(path))  # type: ignore[arg-type]
        if base is not None and not p.startswith(sep):
            p = base + sep + p
        return realpath(p)

    def inside(real: str) -> bool:
        return real == root or real.startswith(root + sep)

    def check_open(path, mode, flags) -> None:
        if isinstance(path, int):  # an already open descriptor
            return
        real = resolve(path)
        if real == "/proc" or real.startswith("/proc/"):
            raise PermissionError(f"sandbox: {path!r} (under /proc) is not readable")
        writing = bool((flags or 0) & write_flags) or any(c in (mode or "") for c in "wax+")
        if writing and not inside(real):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        if mode is None and not inside(real):  # os.open: no descriptors of directories outside
            try:
                is_dir = stat.S_ISDIR(os_stat(real).st_mode)
            except OSError:
                is_dir = False
            if is_dir:
                raise PermissionError(f"sandbox: a descriptor of directory {path!r} is not allowed")

    def check_paths(event: str, args: tuple) -> None:
        positions, dir_fd_at, fd_ok = _PATH_EVENTS[event]
        with_dir_fd = dir_fd_at is not None and args[dir_fd_at] not in (None, -1)
        for i in positions:
            path = args[i]
            if isinstance(path, int):
                if fd_ok:
                    continue
                raise PermissionError(f"sandbox: {event} on a file descriptor is not allowed")
            if with_dir_fd:  # shutil.rmtree: plain names in a directory opened inside the sandbox
                name = fsdecode(fspath(path))
                if sep in name or name in (".", ".."):
                    raise PermissionError(f"sandbox: {event}({name!r}) with dir_fd is not allowed")
                continue
            base = None
            if event == "os.symlink" and i == 0:  # the link's target, relative to the link's folder
                base = os.path.dirname(resolve(args[1]))
            if not inside(resolve(path, base)):
                raise PermissionError(f"sandbox: {event}({path!r}) outside the sandbox directory")

    def hook(event: str, args: tuple) -> None:
        if not armed[0]:
            return
        if event in _FRAME_EVENTS or (event == "object.__getattr__" and args[1] in _FRAME_ATTRIBUTES):
            what = args[1] if event == "object.__getattr__" else event
            raise ValueError(f"sandbox: frame access ({what}) is not allowed")
        if event in _REFUSED_EVENTS or event.startswith(_REFUSED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].partition(".")[0] in _REFUSED_MODULES:
            raise ImportError(f"sandbox: module {args[0]!r} is not allowed")
        if event == "open":
            check_open(*args[:3])
        elif event in ("os.listdir", "os.scandir") and args[0] is not None and not isinstance(args[0], int):
            real = resolve(args[0])
            if real == "/proc" or real.startswith("/proc/"):
                raise PermissionError("sandbox: /proc is not readable")
        elif event in _PATH_EVENTS:
            check_paths(event, args)

    def refuse(name: str):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: {name} is not allowed")

        return refused

    import posix

    for name in ("setsid", "setpgid", "setpgrp", "mkfifo", "mknod", "chroot", "chdir", "fchdir"):
        for module in (os, posix):  # not audited; the process group, cgroup and namespaces hold anyway
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))

    def no_exit(code=0):
        raise SystemExit(code)

    os._exit = posix._exit = no_exit  # type: ignore[assignment]
    for name in _REFUSED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]
    sys.addaudithook(hook)
    sys.pycache_prefix = "/nonexistent/balora-sandbox-pycache"  # see _PRELOAD
    return lambda: armed.__setitem__(0, False)


def _report_failure(exc: BaseException) -> None:
    import sys
    import traceback

    if isinstance(exc, SystemExit):
        sys.stderr.write(f"sandbox: the program called exit({exc.code!r}) before its end\n")
        return
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # hide the harness frame
    traceback.print_exception(type(exc), exc, tb)


def _flush() -> None:
    import contextlib
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the program may have replaced or closed the stream
            stream.flush()


def _evaluate(cfg: dict, source: str) -> None:
    """The worker thread: nonce in, program run, verdict out; every path ends the process."""
    import os
    import sys

    exit_, write, exc_info = os._exit, os.write, sys.exc_info  # before the program can replace them
    verdict_fd = cfg["verdict_fd"]
    try:
        try:
            nonce = os.read(cfg["nonce_fd"], 64)
            os.close(cfg["nonce_fd"])
            disarm = None
            code = compile(source, "program.py", "exec")
            namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
            if cfg["guard"]:
                disarm = _install_guards(os.getcwd())
        except BaseException as e:  # a syntax error, or the harness could not start
            _report_failure(e)
            return
        try:
            exec(code, namespace)
        except:  # noqa: E722 — every way the program can stop before its end, SystemExit included
            nonce = None  # gone before anything runs unguarded
            if disarm is not None:
                disarm()
            _report_failure(exc_info()[1])
            return
        _flush()
        write(verdict_fd, nonce)  # the program has run to its end
        exit_(0)
    finally:  # not reached after a pass; a failure (or a closed verdict pipe) ends here
        try:
            _flush()
        finally:
            exit_(EXIT_FAILED)


def main() -> None:
    import _thread
    import json
    import os
    import sys
    import time

    cfg = json.loads(sys.argv[1])
    chunks = []
    while chunk := os.read(cfg["source_fd"], 1 << 16):
        chunks.append(chunk)
    os.close(cfg["source_fd"])
    source = b"".join(chunks).decode("utf-8", errors="replace")
    with open("program.py", "w", encoding="utf-8") as f:  # for the line numbers of tracebacks
        f.write(source)
    _set_limits(cfg)
    if cfg["guard"]:
        for name in _PRELOAD:
            __import__(name)
    sys.argv = ["program.py"]
    _thread.stack_size(64 * 2**20)  # the main thread's usual 8 MiB and then some, for deep recursion
    _thread.start_new_thread(_evaluate, (cfg, source))
    _thread.stack_size(0)
    while True:  # the worker ends the process; a thread that dies otherwise ends in the time limit
        time.sleep(3600)


if __name__ == "__main__":
    main()
