"""Runs an untrusted Python program in a fresh, limited, disposable process.

Two backends, chosen once per process by `sandbox_kind()`:

- "bwrap" (bubblewrap, `apt-get install bubblewrap`): new PID, network, IPC, UTS and
  cgroup namespaces, so no network (only a private loopback), no view of other processes,
  and every process the program starts dies with it. The file system is a fresh tmpfs root
  holding read-only binds of /usr (and /bin, /lib* where they are not symlinks into /usr),
  the interpreter's own install when it lives elsewhere, a new /proc and /dev, and a
  size-capped tmpfs /tmp as the only writable place (the working directory and $HOME).
  Nothing of the project, the run directory or the user's home is mounted.
- "rlimits" (the fallback when bwrap is missing or does not work here, logged as a
  warning): the same resource limits, a new session whose process group is killed
  afterwards, a private temporary working directory and an empty environment. It does NOT
  isolate the file system (the program can read, and write, whatever the user can), the
  network, or other processes of the same user (it may signal them, including the caller,
  and a process that calls setsid() escapes the final kill). Use it for tests and trusted
  code only.

Both backends apply, inside the sandbox and before the program's first line: RLIMIT_CPU,
RLIMIT_AS (memory), RLIMIT_NPROC (processes), RLIMIT_NOFILE, RLIMIT_FSIZE and no core
files; when the caller is root they also drop to uid/gid 65534 (nobody), because the kernel
exempts root from RLIMIT_NPROC and root ignores file permissions. The caller enforces the
wall-clock limit and the output cap (it kills the process group when either is hit).

Force a backend with the `kind` argument or R1JAX_SANDBOX=bwrap|rlimits (default auto);
choose the interpreter with R1JAX_SANDBOX_PYTHON (default /usr/bin/python3 when present,
else this interpreter's base install).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

log = logging.getLogger(__name__)

KIND_ENV = "R1JAX_SANDBOX"
PYTHON_ENV = "R1JAX_SANDBOX_PYTHON"
KINDS = ("bwrap", "rlimits")
NOBODY = 65534
_STDERR_CAP = 64 * 1024

# Runs first inside the sandbox: reads `<length>\n<source>` from stdin, applies the limits,
# drops root, then runs the source as __main__ (stdin continues with the program's input).
_PRELUDE = r"""
import os, resource, sys
def _read(n):
    out = b""
    while len(out) < n:
        chunk = os.read(0, n - len(out))
        if not chunk:
            raise SystemExit(125)
        out += chunk
    return out
def _limit(kind, soft, hard=None):
    ceiling = resource.getrlimit(kind)[1]  # a limit can only go down
    cap = (lambda v: v) if ceiling == resource.RLIM_INFINITY else (lambda v: min(v, ceiling))
    resource.setrlimit(kind, (cap(soft), cap(soft if hard is None else hard)))
def _setup():
    cpu, memory, nproc, nofile, fsize = (int(x) for x in sys.argv[1:6])
    size = b""
    while not size.endswith(b"\n"):
        size += _read(1)
    source = _read(int(size)).decode("utf-8")
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, fsize)
    _limit(resource.RLIMIT_NOFILE, nofile)
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    _limit(resource.RLIMIT_NPROC, nproc)
    _limit(resource.RLIMIT_AS, memory)
    return compile(source, "<program>", "exec")
_code = _setup()
sys.argv[:] = ["<program>"]
_globals = {"__name__": "__main__", "__builtins__": __builtins__}
del _read, _limit, _setup
exec(_code, _globals)
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program (all of its processes).

    Attributes:
      wall_s: wall-clock seconds before the whole process group is killed.
      cpu_s: CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later).
      memory_mb: address space per process (RLIMIT_AS).
      processes: processes and threads the program may add (RLIMIT_NPROC, on top of what
        the sandbox user already runs).
      open_files: RLIMIT_NOFILE.
      file_size_mb: largest file the program may write (RLIMIT_FSIZE).
      output_bytes: stdout kept; a program that writes more is killed and `truncated`.
      tmp_mb: size of the writable tmpfs (bwrap only).
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024
    processes: int = 16
    open_files: int = 64
    file_size_mb: int = 16
    output_bytes: int = 1 << 20
    tmp_mb: int = 64


@dataclasses.dataclass
class RunResult:
    """What one sandboxed run did.

    Attributes:
      returncode: exit status, negative for a signal (as subprocess reports it).
      stdout: the first `output_bytes` of standard output.
      stderr: the first 64 KiB of standard error.
      timed_out: killed at the wall-clock limit.
      truncated: killed for writing more than `output_bytes` to stdout.
      seconds: wall time of the run.
    """

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """Exited 0 within the limits."""
        return self.returncode == 0 and not self.timed_out and not self.truncated


def default_python() -> str:
    """The interpreter sandboxed programs run on ($R1JAX_SANDBOX_PYTHON, /usr/bin/python3,
    else this interpreter's base install)."""
    if os.environ.get(PYTHON_ENV):
        return os.environ[PYTHON_ENV]
    if os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3"
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _bwrap_argv(python: str, limits: Limits) -> list:
    argv = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr"]
    if os.geteuid() == 0:  # root keeps only what the prelude needs to become nobody
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv.append("--unshare-user")
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    if prefix not in ("/", "/usr"):
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
             "--chdir", "/tmp", "--hostname", "sandbox", "--clearenv",
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "LANG", "C.UTF-8", "--"]
    return argv + [python]


def _user_tasks(uid: int) -> int:
    """Processes and threads `uid` runs now (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _prelude_args(limits: Limits, kind: str) -> list:
    if kind == "bwrap" and os.geteuid() != 0:
        running = 1  # in its own user namespace the count starts afresh (bwrap's init)
    else:
        running = _user_tasks(NOBODY if os.geteuid() == 0 else os.getuid())
    return [str(max(1, int(limits.cpu_s + 0.999))), str(limits.memory_mb << 20),
            str(running + limits.processes), str(limits.open_files),
            str(limits.file_size_mb << 20)]


class Sandbox:
    """A started sandboxed program: its pipes, its deadline, and the means to end it.

    Use as a context manager (or call `close`), which kills every process it started.
    """

    def __init__(self, source: str, limits: Limits, kind: str, python: str,
                 capture_stderr: bool = True):
        self.limits = limits
        self.kind = kind
        self.started = time.monotonic()
        self.deadline = self.started + limits.wall_s
        self._workdir = None
        cmd = [python, "-I", "-B", "-c", _PRELUDE] + _prelude_args(limits, kind)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if kind == "bwrap":
            cmd, cwd = _bwrap_argv(python, limits) + cmd[1:], "/"
        else:
            self._workdir = cwd = tempfile.mkdtemp(prefix="r1jax-sandbox-")
            if os.geteuid() == 0:
                os.chown(cwd, NOBODY, NOBODY)
            env["HOME"] = cwd
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture_stderr else subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True, close_fds=True)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
        data = source.encode("utf-8")
        self._pending = b"%d\n" % len(data) + data
        self._buffer = b""

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes, deadline: float) -> bool:
        """Writes `data` (after anything still pending) to stdin; False if the program
        stopped reading or `deadline` passed first."""
        self._pending += data
        return self._flush(deadline)

    def _flush(self, deadline: float) -> bool:
        fd = self.proc.stdin.fileno()
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_WRITE)
                if not sel.select(remaining):
                    continue
            try:
                written = os.write(fd, self._pending[:1 << 16])
            except BlockingIOError:
                continue
            except OSError:  # broken pipe: the program is gone or closed stdin
                self._pending = b""
                return False
            self._pending = self._pending[written:]
        return True

    def read_line(self, deadline: float, max_bytes: int) -> Optional[bytes]:
        """The next line of stdout, without its newline; None at EOF, at `deadline`, or when
        the line grows past `max_bytes`."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            if len(self._buffer) > max_bytes:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ)
                if not sel.select(remaining):
                    continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line if len(line) <= max_bytes else None

    def communicate(self, stdin: bytes = b"") -> RunResult:
        """Feeds `stdin`, closes it, and collects stdout / stderr until the program exits,
        its output passes `limits.output_bytes`, or the wall-clock deadline."""
        self._pending += stdin
        out, err = bytearray(), bytearray()
        streams = {self.proc.stdout.fileno(): out}
        if self.proc.stderr is not None:
            streams[self.proc.stderr.fileno()] = err
        timed_out = truncated = False
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            stdin_fd = self.proc.stdin.fileno()
            sel.register(stdin_fd, selectors.EVENT_WRITE)
            while streams:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                events = sel.select(min(remaining, 0.1))
                if not events and self.proc.poll() is not None:
                    break  # exited; a background child may hold the pipes open
                for key, _ in events:
                    if key.fd == stdin_fd:
                        if not self._write_some(stdin_fd):
                            sel.unregister(stdin_fd)
                            self.proc.stdin.close()
                        continue
                    try:
                        chunk = os.read(key.fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        del streams[key.fd]
                        continue
                    if streams[key.fd] is err:
                        err += chunk[:max(0, _STDERR_CAP - len(err))]
                        continue
                    room = self.limits.output_bytes - len(out)
                    out += chunk[:room]
                    truncated = len(chunk) > room
                if truncated:
                    break
        self.close()
        return RunResult(self.proc.returncode, bytes(out), bytes(err), timed_out, truncated,
                         time.monotonic() - self.started)

    def _write_some(self, fd: int) -> bool:
        """One non-blocking write of pending stdin; False once it is all written or refused."""
        if not self._pending:
            return False
        try:
            written = os.write(fd, self._pending[:1 << 16])
        except BlockingIOError:
            return True
        except OSError:
            self._pending = b""
            return False
        self._pending = self._pending[written:]
        return bool(self._pending)

    def close(self) -> None:
        """Kills every process of the program (its process group and every descendant; for
        bwrap, killing the PID namespace's init ends the whole namespace), waits until they
        are gone, and removes the working directory; idempotent."""
        descendants = _descendants(self.proc.pid) if self.proc.poll() is None else []
        for pid, group in [(self.proc.pid, True)] + [(p, False) for p in descendants]:
            try:
                (os.killpg if group else os.kill)(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait()
        _wait_gone(descendants, timeout_s=5.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _descendants(root: int) -> list:
    """Pids of every process below `root`, from one scan of /proc."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: list, timeout_s: float) -> None:
    """Waits until every pid has exited (a zombie counts as exited)."""
    end = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < end:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        break
            except (OSError, IndexError):
                break
            time.sleep(0.005)


@functools.lru_cache(maxsize=None)
def _probe_bwrap(python: str) -> Optional[str]:
    """None when a bwrap sandbox runs `python` here, else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    try:
        with Sandbox("print(6 * 7)", Limits(wall_s=20.0), "bwrap", python) as box:
            result = box.communicate()
    except OSError as e:
        return f"bwrap failed to start: {e}"
    if result.stdout.strip() != b"42":
        return (f"bwrap does not work here (exit {result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()[-300:]}")
    return None


@functools.lru_cache(maxsize=None)
def _resolve_kind(requested: str, python: str) -> str:
    if requested not in ("auto",) + KINDS:
        raise ValueError(f"unknown sandbox kind {requested!r}; known: auto, {', '.join(KINDS)}")
    if requested == "rlimits":
        log.warning("code sandbox: the rlimits fallback was requested: programs are NOT "
                    "isolated from the file system, the network or other processes")
        return "rlimits"
    problem = _probe_bwrap(python)
    if problem is None:
        return "bwrap"
    if requested == "bwrap":
        raise RuntimeError(f"the bwrap sandbox was requested but {problem}")
    log.warning("code sandbox: %s; falling back to rlimits only: programs are NOT isolated "
                "from the file system, the network or other processes of this user", problem)
    return "rlimits"


def sandbox_kind(kind: Optional[str] = None, python: Optional[str] = None) -> str:
    """"bwrap" or "rlimits": the backend that runs programs in this process.

    Args:
      kind: "auto" (bwrap when it works here, else rlimits with a logged warning), "bwrap"
        (an error when it does not work) or "rlimits"; default $R1JAX_SANDBOX or "auto".
      python: the interpreter (default `default_python()`).

    Raises:
      ValueError: unknown kind. RuntimeError: bwrap requested but unusable.
    """
    return _resolve_kind(kind or os.environ.get(KIND_ENV) or "auto", python or default_python())


def start(source: str, *, limits: Limits = Limits(), kind: Optional[str] = None,
          python: Optional[str] = None, capture_stderr: bool = True) -> Sandbox:
    """Starts `source` in a sandbox; talk to it with `send` / `read_line`, then `close`."""
    python = python or default_python()
    return Sandbox(source, limits, sandbox_kind(kind, python), python, capture_stderr)


def run_python(source: str, stdin: bytes = b"", *, limits: Limits = Limits(),
               kind: Optional[str] = None, python: Optional[str] = None) -> RunResult:
    """Runs `source` as `__main__` in a sandbox with `stdin` as its input.

    Args:
      source: the program text.
      stdin: its standard input.
      limits: resource limits (wall time, CPU, memory, processes, files, output).
      kind, python: see `sandbox_kind`.

    Returns:
      the exit status, the captured (capped) output, and whether a limit stopped it.
    """
    with start(source, limits=limits, kind=kind, python=python) as box:
        return box.communicate(stdin)
