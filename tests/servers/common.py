"""Plumbing shared by the throwaway database servers: ports, readiness waits, child processes.

Every server is a child in its own session (process group), so Ctrl-C in the terminal does not
reach it before pytest's teardown stops it, and ``stop()`` can kill the whole group when a graceful
shutdown hangs. On Linux the child also gets a parent-death signal, so a SIGKILLed pytest does not
leave servers behind. When the tests run as root the servers run as their service account
(``postgres``, ``mysql``): ``initdb`` refuses root, and both servers would own root files otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import pytest

__all__ = [
    "CommandError",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "give_to",
    "is_root",
    "make_base_dir",
    "require_binaries",
    "run_command",
    "service_account",
    "tail",
    "wait_until",
]

_LOG_TAIL_LINES = 40
_handed_out_ports: set[int] = set()


class ServerStartError(RuntimeError):
    """A throwaway server did not become ready; the message carries its log tail."""


class CommandError(RuntimeError):
    """A helper command (initdb, psql, mariadb...) failed; carries argv, return code and stderr tail."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited with {returncode}:\n{tail(stderr)}")


def tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a tool's output: enough to explain a failure without flooding the report."""
    return "\n".join(text.splitlines()[-lines:])


def is_root() -> bool:
    return os.geteuid() == 0


def service_account(name: str) -> str | None:
    """The account to run a server as: ``name`` when we are root, else None (run as ourselves)."""
    if not is_root():
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        pytest.fail(f"running as root, but the '{name}' account to run the server as does not exist")
    return name


def make_base_dir(prefix: str, owner: str | None) -> Path:
    """A fresh 0755 directory in /tmp owned by ``owner``.

    Not pytest's tmp_path: those are 0700 and owned by root, so ``postgres``/``mysql`` cannot reach
    them; /tmp also keeps unix socket paths short (the limit is 107 bytes).
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    give_to(base, owner)
    return base


def give_to(path: Path, owner: str | None) -> None:
    """chown ``path`` to ``owner`` and its primary group; nothing to do when running as ourselves."""
    if owner is not None:
        shutil.chown(path, user=owner, group=pwd.getpwnam(owner).pw_gid)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and this session has not handed out yet."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def skip_or_fail(message: str) -> NoReturn:
    """Skip a test whose prerequisite is missing; under CI (``CI`` "true"/"1") fail instead, since CI
    installs every prerequisite and a skip there would pass silently."""
    if _running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binaries(names: Iterable[str], *, hint: str = "") -> dict[str, str]:
    """Resolve executables (names on PATH or absolute paths) or skip the test, naming what is missing.

    In CI (env ``CI`` is "true" or "1") a missing server must not pass silently as a skip, so it fails.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = shutil.which(name)  # an absolute path is checked for being executable too
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        message = f"required executable(s) not found: {', '.join(missing)}"
        if hint:
            message += f" ({hint})"
        skip_or_fail(message)
    return found


def _account_popen_kwargs(run_as: str | None) -> dict[str, Any]:
    """Popen arguments that drop from root to ``run_as`` (its uid, gid and no supplementary groups)."""
    if run_as is None:
        return {}
    account = pwd.getpwnam(run_as)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _account_env(run_as: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(os.environ if env is None else env)
    if run_as is not None:
        account = pwd.getpwnam(run_as)
        result.update(HOME=account.pw_dir, USER=run_as, LOGNAME=run_as)
    return result


def run_command(
    argv: Sequence[str],
    *,
    run_as: str | None = None,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run a helper tool to completion, as ``run_as`` when given; raise CommandError when it fails."""
    completed = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_account_env(run_as, env),
        timeout=timeout,
        check=False,
        **_account_popen_kwargs(run_as),
    )
    if check and completed.returncode != 0:
        raise CommandError(argv, completed.returncode, completed.stderr or completed.stdout)
    return completed


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGKILL the child when pytest dies (PR_SET_PDEATHSIG)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    set_parent_death_signal = 1

    def hook() -> None:
        prctl(set_parent_death_signal, int(signal.SIGKILL), 0, 0, 0)

    return hook


class ServerProcess:
    """One long-running server child with a log file; start/stop may be repeated."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        run_as: str | None,
        cwd: Path,
        stop_signal: signal.Signals = signal.SIGTERM,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.log_path = log_path
        self.run_as = run_as
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.is_running():
            return
        self._close_log()
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=_account_env(self.run_as, self.env),
            start_new_session=True,
            preexec_fn=_parent_death_signal(),  # noqa: PLW1509  # only prctl, no locks taken
            **_account_popen_kwargs(self.run_as),
        )
        _live_processes.add(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a graceful shutdown; if it has not finished within ``timeout`` s, kill the group."""
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(self.stop_signal)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.kill()
            # Children that outlived the leader (postgres backends) go with the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            self._process = None
            self._close_log()
            _live_processes.discard(self)

    def kill(self) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


_live_processes: set[ServerProcess] = set()


@atexit.register
def _kill_leftover_servers() -> None:
    """Last line of defence when pytest exits without running fixture teardown."""
    for server in list(_live_processes):
        server.kill()


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float = 60.0,
    process: ServerProcess | None = None,
) -> float:
    """Poll ``ready`` until it returns True; return the seconds waited.

    Raises ServerStartError with the server log tail when the deadline passes or the process exits,
    so a broken start is explained rather than reported as a bare timeout.
    """
    started = time.monotonic()
    deadline = started + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if ready():
                return time.monotonic() - started
        except Exception as error:
            last_error = error
        if process is not None and not process.is_running():
            reason = f"{what}: the server process exited before it was ready"
            break
        if time.monotonic() >= deadline:
            reason = f"{what}: not ready after {timeout:.0f}s"
            break
        time.sleep(0.05)
    details = [reason]
    if last_error is not None:
        details.append(f"last error: {last_error!r}")
    if process is not None:
        details.append(f"log {process.log_path}:\n{process.log_tail()}")
    raise ServerStartError("\n".join(details))


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `mount_point`; needs root. Fails under CI=true without it, else skips."""
    mount_point.mkdir(parents=True, exist_ok=True)
    problem = None
    if os.geteuid() != 0:
        problem = "mounting a tmpfs needs root"
    elif shutil.which("mount") is None:
        problem = "no mount command"
    else:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            problem = f"cannot mount a tmpfs: {result.stderr.strip()}"
    if problem is not None:
        skip_or_fail(f"{problem} (CI runs the tests as root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
