"""Runs INSIDE the sandbox's child interpreter (``python -I -B -c <this file's source> <json>``).

Never imported by the library: importing it does nothing, and its guards would cripple the caller's
process if ``main()`` were called there.

The verdict. The parent hands over three file descriptors: the program's source, a pipe holding a
random nonce, and the write end of a verdict pipe. A worker thread reads the nonce and closes its
pipe before any generated code exists, runs the program, and only when ``exec`` returns normally
writes the nonce to the verdict pipe and exits 0. The parent counts a pass only for exit status 0
AND exactly that nonce, so a program that ends its process early (``os._exit(0)``, ctypes'
``_exit``, a ``real_exit`` found in some frame) or prints something nonce-like has failed.

Keeping the nonce from the program. It is read in place into a fixed 32-byte buffer that only a
local variable of the worker thread's bottom frame refers to (not argv, the environment, a file, a
global or any container), and wiped in place before anything else happens when the program fails.
The audit hook below refuses every route from Python to a frame (``sys._getframe``,
``tb_frame``/``gi_frame``/..., ``sys._current_frames``, trace and profile functions) or to arbitrary
objects (``gc.get_objects``/``get_referrers``/``get_referents``), and every route to raw memory that
the standard library offers: ctypes/cffi and CPython's test modules (by module name and by file
name), crafted bytecode (``code.__new__``, ``marshal.loads``), ``/proc`` (``/proc/self/mem``, its
fds, other processes) and ``/dev`` (but null, zero, full, random, urandom). The program runs in a
thread other than the main one, so it cannot install a Python signal handler (the one unaudited way
to be handed a frame). The hook depends on nothing the program can rebind (see
``_install_guards``), and it resolves paths itself; so that the kernel cannot resolve a path
differently a moment later, the program may not make symbolic links, open directory descriptors,
change directory, or use ".." below its folder, and paths must be plain ``str``/``bytes`` (no
``pathlib`` for files). What remains is code that corrupts the interpreter's memory (a C extension
that reads raw pointers, such as numpy's array interface, or an interpreter bug): the nonce does not
withstand that; the namespaces, cgroups and read-only mounts that ``sandbox.py`` sets up around this
process still do.

The other guards (files written, renamed or removed only below the sandbox directory, no sockets, no
new processes, no signals) are the same audit hook: defence in depth, not a security boundary.
Once added, an audit hook cannot be removed from Python. The program is not allowed to look at
frames, so it cannot print a traceback of its own; the harness prints the program's uncaught
exception.
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
    "os.symlink", "os.chdir",  # so that what a path names cannot change between the check and the use
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
    "os.chflags": ((0,), None, False),
    "os.setxattr": ((0,), None, False), "os.removexattr": ((0,), None, False),
    "shutil.rmtree": ((0,), None, False),
}
# Imported before the guards are armed: afterwards the pycache is ignored (loading a .pyc needs
# marshal.loads, which is refused), so later imports compile from source, slowly.
_PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "string",
            "bisect", "hashlib", "random", "fractions", "statistics", "decimal", "datetime", "json",
            "copy", "operator", "dataclasses", "enum", "textwrap", "traceback", "linecache")


def _set_limits(cfg: dict) -> None:
    """Per-process limits, set by the worker thread once it exists (RLIMIT_NPROC counts threads)."""
    import contextlib
    import resource

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


def _install_guards(sandbox_dir: str):
    """Arm the audit hook for the program; returns the function that lets the harness see frames again.

    The hook runs inside the program's process, so it must not depend on anything the program can
    change: every builtin, exception class, table and function it uses is bound here, before the
    program exists (module globals and builtins can be rebound; closure cells cannot be reached), and
    paths are resolved with the C functions ``lstat``/``readlink`` rather than ``os.path``. Paths must
    be exactly ``str``, ``bytes`` or ``int``: a subclass or a ``PathLike`` could show the hook one name
    and the system call another.
    """
    import posix
    import sys

    str_, bytes_, int_, type_ = str, bytes, int, type
    permission, value_error, import_error, os_error = PermissionError, ValueError, ImportError, OSError
    lstat, readlink, getcwd = posix.lstat, posix.readlink, posix.getcwd
    decode, partition, rpartition = bytes.decode, str.partition, str.rpartition
    frame_events, frame_attributes, refused_events = _FRAME_EVENTS, _FRAME_ATTRIBUTES, _REFUSED_EVENTS
    refused_prefixes, refused_modules, path_events = _REFUSED_PREFIXES, _REFUSED_MODULES, _PATH_EVENTS
    readable_devices = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    state = [2]  # 2: armed; 1: frames allowed again (the harness prints a failure; the nonce is wiped)

    def text(path) -> str:
        if type_(path) is bytes_:
            return decode(path, "utf-8", "surrogateescape")
        if type_(path) is str_:
            return path
        raise permission("sandbox: paths must be str or bytes here")

    def resolve(path) -> str:
        """realpath() from C calls only: symbolic links followed, "..", "." and "//" resolved.

        No ".." once inside the sandbox directory: the program can rename folders there, so the
        kernel could resolve such a path differently a moment later. (It cannot make symbolic links
        or directory descriptors or change directory, and cannot change anything outside.)
        """
        p = text(path)
        if not p.startswith("/"):
            p = getcwd() + "/" + p
        done: list[str] = []
        todo = p.split("/")[::-1]
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if inside("/" + "/".join(done)):
                    raise permission(f"sandbox: '..' below the sandbox directory is not allowed ({p!r})")
                if done:
                    done.pop()
                continue
            here = "/" + "/".join(done) + ("/" if done else "") + part
            try:
                is_link = (lstat(here).st_mode & 0o170000) == 0o120000
            except os_error:
                is_link = False
            if not is_link:
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                raise permission(f"sandbox: too many symbolic links in {p!r}")
            target = readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(target.split("/")[::-1])
        return "/" + "/".join(done)

    def inside(real: str) -> bool:
        return real == root or real.startswith(root + "/")

    def unreadable(real: str) -> bool:  # own memory and descriptors, other processes, devices
        if real == "/proc" or real.startswith("/proc/"):
            return True
        return real.startswith("/dev/") and real not in readable_devices

    root = "\0"  # matches no path while the sandbox directory itself is resolved
    root = resolve(sandbox_dir)

    def check_open(path, mode, flags) -> None:
        if type_(path) is int_:  # an already open descriptor
            return
        real = resolve(path)
        if unreadable(real):
            raise permission(f"sandbox: {real!r} is not readable")
        writing = (flags or 0) & write_flags
        if mode is not None:
            for c in "wax+":
                writing = writing or c in mode
        if writing and not inside(real):
            raise permission(f"sandbox: writing {real!r} outside the sandbox directory is not allowed")
        if mode is None:  # os.open: no directory descriptors (a dir_fd could anchor a path elsewhere)
            try:
                is_dir = (lstat(real).st_mode & 0o170000) == 0o040000
            except os_error:
                is_dir = False
            if is_dir:
                raise permission(f"sandbox: a descriptor of directory {real!r} is not allowed")

    def check_paths(event: str, args: tuple) -> None:
        positions, dir_fd_at, fd_ok = path_events[event]
        with_dir_fd = dir_fd_at is not None and args[dir_fd_at] is not None and args[dir_fd_at] != -1
        for i in positions:
            path = args[i]
            if type_(path) is int_:
                if fd_ok:
                    continue
                raise permission(f"sandbox: {event} on a file descriptor is not allowed")
            if with_dir_fd:  # cannot happen: no directory descriptors
                raise permission(f"sandbox: {event} with dir_fd is not allowed")
            real = resolve(path)
            if not inside(real):
                raise permission(f"sandbox: {event}({real!r}) outside the sandbox directory")

    def hook(event: str, args: tuple) -> None:
        if event in frame_events or (event == "object.__getattr__" and args[1] in frame_attributes):
            if state[0] == 2:
                raise value_error("sandbox: frame access is not allowed")
            return
        if event in refused_events or event.startswith(refused_prefixes):
            raise permission(f"sandbox: {event} is not allowed")
        if event == "import":
            name, filename = args[0], args[1]
            if type_(name) is not str_:
                raise import_error("sandbox: module names must be str")
            base = partition(rpartition(filename, "/")[2], ".")[0] if type_(filename) is str_ else ""
            if partition(name, ".")[0] in refused_modules or base in refused_modules:
                raise import_error(f"sandbox: module {name!r} is not allowed")
        elif event == "open":
            check_open(args[0], args[1], args[2])
        elif event == "os.listdir" or event == "os.scandir":
            if args[0] is not None and type_(args[0]) is not int_ and unreadable(resolve(args[0])):
                raise permission(f"sandbox: {args[0]!r} is not readable")
        elif event in path_events:
            check_paths(event, args)

    def refuse(name: str):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: {name} is not allowed")

        return refused

    import os

    for name in ("setsid", "setpgid", "setpgrp", "mkfifo", "mknod", "chroot", "pidfd_open"):
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
    return lambda: state.__setitem__(0, 1)


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
    # Read in place into a buffer of fixed size: no other copy of the nonce is ever in memory, and
    # wiping it overwrites the very bytes (a resized buffer could leave the old ones behind).
    nonce, blank = bytearray(cfg["nonce_bytes"]), bytes(cfg["nonce_bytes"])
    try:
        try:
            os.readv(cfg["nonce_fd"], [nonce])
            os.close(cfg["nonce_fd"])
            _set_limits(cfg)
            frames_back = None
            code = compile(source, "program.py", "exec")
            namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
            if cfg["guard"]:
                frames_back = _install_guards(os.getcwd())
        except BaseException as e:  # a syntax error, or the harness could not start
            _report_failure(e)
            return
        try:
            exec(code, namespace)
        except:  # noqa: E722 — every way the program can stop before its end, SystemExit included
            nonce[:] = blank  # wiped before anything the program left behind can look
            if frames_back is not None:
                frames_back()  # tracebacks need frames
            try:
                _report_failure(exc_info()[1])
            except:  # noqa: E722 — the program broke what printing needs (builtins, sys.stderr)
                write(2, b"sandbox: the program failed; its traceback could not be printed\n")
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
    import signal
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
    # Past the file-size limit, writes raise OSError(EFBIG) instead of killing the process silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # main thread only
    if cfg["guard"]:
        for name in _PRELOAD:
            __import__(name)
    sys.argv = ["program.py"]
    _thread.stack_size(64 * 2**20)  # the main thread's usual 8 MiB and then some, for deep recursion
    _thread.start_new_thread(_evaluate, (cfg, source))
    _thread.stack_size(0)
    sleep = time.sleep  # bound now: the program can rebind time.sleep
    while True:  # the worker ends the process; a thread that dies otherwise ends in the time limit
        sleep(3600)


if __name__ == "__main__":
    main()
