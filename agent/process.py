"""The only module that starts child processes.

Commands are argv tuples (never a shell). Each child runs in its own process group at low CPU
and I/O priority, its stderr drained by a thread into a bounded tail (a tool that writes 50 MB
of warnings can neither deadlock the pipe nor fill memory), and its stdout read in large chunks.
Secrets never reach argv or the environment: engines hand them over as inherited descriptors.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import select
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from agent import trust
from agent.errors import DumpError, ToolError
from agent.pressure import Pacer

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
CHUNK_SIZE = 1 << 20
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
# A tool that writes in small pieces (mariadb-dump, pg_dump: 4-8 KiB stdio writes) would wake the
# loop for every piece: 15,000 wake-ups for 200 MB. After a short read the loop waits this long so
# the 1 MiB pipe fills a little: a few hundred wake-ups, same throughput (docs/performance.md).
TRICKLE_BYTES = 256 << 10
TRICKLE_PAUSE = 0.001
_STDERR_TAIL_BYTES = 8192
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a child must stop
# variables that carry passwords for database clients; never inherited by a child
_SECRET_VARIABLES = ("PGPASSWORD", "MYSQL_PWD", "MONGODB_PASSWORD", "REDISCLI_AUTH")
# variables that would let a client send a password in clear text or load other auth plugins
_WEAKENING_VARIABLES = (
    "LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN",
    "LIBMYSQL_PLUGINS",
    "LIBMYSQL_PLUGIN_DIR",
    "MARIADB_PLUGIN_DIR",
)


@dataclass(frozen=True, slots=True)
class Command:
    """What to run: argv, extra environment (never a secret), descriptors to inherit, priority."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()
    nice: int = 0
    ionice: str = "none"  # idle | best-effort | none


class StderrTail:
    """Drains a pipe in a thread, keeping only the last few KiB."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._stream = stream
        self._thread = threading.Thread(target=self._drain, daemon=True, name="stderr-tail")
        self._thread.start()

    def _drain(self) -> None:
        while True:
            data = self._stream.read1(65536) if hasattr(self._stream, "read1") else self._stream.read(65536)
            if not data:
                break
            self._chunks.append(data)
            self._size += len(data)
            while self._size - len(self._chunks[0]) >= _STDERR_TAIL_BYTES:
                self._size -= len(self._chunks.popleft())

    def text(self, wait: float = 2.0) -> str:
        self._thread.join(wait)
        raw = b"".join(self._chunks)[-_STDERR_TAIL_BYTES:]
        return raw.decode("utf-8", "replace").strip()


def _child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    refused = (*_SECRET_VARIABLES, *_WEAKENING_VARIABLES)
    env = {key: value for key, value in os.environ.items() if key not in refused}
    env.update(extra)
    return env


def _ionice_arguments(ionice: str) -> list[str]:
    return ["-c", "3"] if ionice == "idle" else ["-c", "2", "-n", "7"]


def _priority_prefix(nice: int, ionice: str) -> list[str]:
    """`nice` is the niceness the child ends up with: `nice -n` adds to the caller's own, which
    is already lowered while the agent runs a dump at the job's priority (`own_priority`)."""
    prefix: list[str] = []
    if ionice != "none" and shutil.which("ionice"):
        prefix += ["ionice", *_ionice_arguments(ionice)]
    increment = nice - os.getpriority(os.PRIO_PROCESS, 0)
    if increment > 0:
        prefix += ["nice", "-n", str(increment)]
    return prefix


def _refuse_unsafe_programs(*names: str) -> None:
    """Run nothing that someone other than root or the agent's user could have changed or planted."""
    for name in dict.fromkeys(names):
        resolved = shutil.which(name)
        problem = trust.check_program(resolved) if resolved is not None else None
        if problem is not None:
            raise ToolError(f"refusing to run {name}: {problem}")


@contextlib.contextmanager
def own_priority(nice: int) -> Iterator[None]:
    """Run the block with the calling thread at the job's niceness.

    Linux keeps niceness per thread and a new thread or child inherits its creator's, so the
    threads the block starts (zstd's workers, the stderr reader, row counters) and the dump tool
    run at it too, while a daemon's other threads keep theirs. The I/O priority follows: a thread
    with no I/O class of its own gets best-effort level (nice + 20) / 5 from the kernel (6 at nice
    10), and the dump tool, which does the reading, still gets the job's `ionice` explicitly.
    Never raises the priority; puts the old one back afterwards where the system allows (an
    unprivileged process cannot undo a nice, so a daemon's dump thread then stays low: it only
    runs dumps).
    """
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    lowered = nice > before
    if lowered:
        with contextlib.suppress(OSError):  # a priority is never worth a failed backup
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    try:
        yield
    finally:
        if lowered:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, thread, before)


class Child:
    """A running child process with its stdout as a pipe and its stderr tail collected."""

    def __init__(
        self,
        command: Command,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
    ) -> None:
        self.command = command
        executable = command.argv[0]
        if shutil.which(executable) is None:
            raise ToolError(f"{executable} not found on PATH; install it or set the job's `tool`")
        argv = [*_priority_prefix(command.nice, command.ionice), *command.argv]
        _refuse_unsafe_programs(argv[0], executable)
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=_child_environment(command.env),
            pass_fds=command.pass_fds,
            process_group=0,
            close_fds=True,
        )
        with _children_lock:
            _children.add(self)
        assert self.popen.stderr is not None
        self.stderr = StderrTail(self.popen.stderr)
        self.pipe_size = 0
        if self.popen.stdout is not None:
            # larger pipes only help without compression; the default size still works
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.popen.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
            with contextlib.suppress(OSError):
                self.pipe_size = fcntl.fcntl(self.popen.stdout.fileno(), _F_GETPIPE_SZ)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def terminate_group(self, grace: float = KILL_GRACE) -> None:
        """SIGTERM the child's whole process group, then SIGKILL whatever is left after `grace`."""
        if self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def wait(self) -> int:
        return self.popen.wait()

    def failure(self, what: str) -> DumpError:
        """A DumpError that names the exit status or signal and carries the stderr tail."""
        code = self.popen.returncode
        if code is not None and code < 0:
            try:
                signal_name = signal.Signals(-code).name
            except ValueError:
                signal_name = f"signal {-code}"
            message = f"{what} was killed by {signal_name}"
            reason = "killed"
        else:
            message = f"{what} exited with status {code}"
            reason = "tool_failed"
        tail = self.stderr.text()
        if tail:
            message += f": {tail.splitlines()[-1]}"
        return DumpError(message, reason=reason, stderr_tail=tail)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


_children: weakref.WeakSet[Child] = weakref.WeakSet()
_children_lock = threading.Lock()


def kill_running_children() -> list[int]:
    """SIGKILL the process group of every child still running; the pids signalled.

    The daemon's last act when a run cannot stop within its shutdown timeout: a dump tool must
    not outlive the agent (one that ignores SIGTERM and writes nothing would never get SIGPIPE).
    """
    with _children_lock:
        children = list(_children)
    killed: list[int] = []
    for child in children:
        if child.popen.returncode is None:
            _signal_group(child.pid, signal.SIGKILL)
            killed.append(child.pid)
    return killed


@dataclass(slots=True)
class StreamLimits:
    """Watchdogs for one stream: a hard deadline and a stall limit (monotonic seconds)."""

    timeout: float | None = None
    stall_timeout: float | None = None
    should_stop: Callable[[], bool] = lambda: False
    kill_grace: float = KILL_GRACE  # SIGTERM -> SIGKILL; shorter than the daemon's shutdown timeout
    pacer: Pacer | None = None  # pauses between reads while the machine is contended (agent/pressure.py)


def stream_stdout(child: Child, consume: Callable[[bytes], None], limits: StreamLimits, what: str) -> None:
    """Feed the child's stdout to `consume` until EOF, then require exit status 0.

    Watchdogs use the monotonic clock so wall-clock jumps never fire or defer them.
    """
    assert child.popen.stdout is not None
    fd = child.popen.stdout.fileno()
    started = last_data = time.monotonic()
    # only with room to spare: a 64 KiB pipe would fill during the pause and stall the tool
    pause = TRICKLE_PAUSE if child.pipe_size >= _PIPE_SIZE else 0.0
    pacer = limits.pacer
    if pacer is not None:
        pacer.restart()
    try:
        while True:
            if limits.should_stop():
                raise DumpError(f"{what} was stopped: the agent is shutting down", reason="shutdown")
            ready, _, _ = select.select([fd], [], [], 0.5)
            now = time.monotonic()
            if limits.timeout is not None and now - started > limits.timeout:
                raise DumpError(f"{what} ran longer than its timeout of {limits.timeout:.0f}s", "timeout")
            if ready:
                data = os.read(fd, CHUNK_SIZE)
                if not data:
                    break
                consume(data)
                last_data = now
                paced = pacer.pause() if pacer is not None else 0.0
                if paced > 0:
                    time.sleep(paced)
                    last_data = time.monotonic()
                elif pause and len(data) < TRICKLE_BYTES:
                    time.sleep(pause)
                continue
            if limits.stall_timeout is not None and now - last_data > limits.stall_timeout:
                raise DumpError(f"{what} wrote nothing for {limits.stall_timeout:.0f}s (stall_timeout)", "stalled")
    except BaseException:
        child.terminate_group(limits.kill_grace)
        child.popen.stdout.close()
        raise
    child.popen.stdout.close()
    if child.wait() != 0:
        raise child.failure(what)


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Result:
    """Run a short command (a version check, a restore client) to completion."""
    if shutil.which(argv[0]) is None:
        raise ToolError(f"{argv[0]} not found on PATH")
    _refuse_unsafe_programs(argv[0])
    try:
        completed = subprocess.run(
            list(argv),
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            env=_child_environment(env or {}),
            pass_fds=pass_fds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} did not finish within {timeout:.0f}s") from None
    return Result(
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def start(command: Command, *, stdin: int | IO[bytes] | None = DEVNULL, stdout: int | IO[bytes] | None = PIPE) -> Child:
    return Child(command, stdin=stdin, stdout=stdout)


def feed_stdin(child: Child, chunks: Iterable[bytes], what: str) -> None:
    """Write `chunks` to the child's stdin (a restore client), then require exit status 0."""
    assert child.popen.stdin is not None
    stdin = child.popen.stdin
    try:
        for chunk in chunks:
            stdin.write(chunk)
        stdin.close()
    except BrokenPipeError:
        pass  # the child stopped reading: its exit status and stderr say why
    except BaseException:
        child.terminate_group()
        raise
    if child.wait() != 0:
        raise child.failure(what)
