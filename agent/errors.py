"""Typed errors. Library code raises these; only `agent.cli` turns them into messages and exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # sysexits' EX_SOFTWARE: an unexpected error (a bug); the traceback is in the log
EXIT_ALREADY_RUNNING = 75  # EX_TEMPFAIL: `run` found a daemon on its storage (cron keep-alive: see README)
EXIT_CONFIG = 78


class AgentError(Exception):
    """Base of every error the agent reports to a user as one clear line."""

    exit_code = EXIT_FAILED


class ConfigError(AgentError):
    """The configuration is invalid; carries every problem found, each naming its key path."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(AgentError):
    """The command line asks for something that cannot be done (unknown job, bad path)."""

    exit_code = EXIT_USAGE


class ToolError(AgentError):
    """A required external tool is missing or too old to be trusted."""


class DumpError(AgentError):
    """A dump failed. `reason` is a short stable word for logs and metrics."""

    def __init__(self, message: str, reason: str = "dump_failed", stderr_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.stderr_tail = stderr_tail


class VerificationError(DumpError):
    """A dump's bytes did not pass the engine's structural check."""

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message, reason="verification_failed", stderr_tail=stderr_tail)


class PrivilegeError(AgentError):
    """The server refused the account an operation (a restore's, a drill's); the message names it."""

    reason = "no_privilege"


class LockedError(AgentError):
    """Another run holds the lock this one needs."""


class DaemonRunning(LockedError):  # noqa: N818 - a state, like LockedError, not a failure
    """`run` found another daemon holding its storage: the wanted state already holds, so it exits
    at once and quietly (a crontab starts `run` every minute to keep one daemon alive)."""

    exit_code = EXIT_ALREADY_RUNNING


class ConnectionFailed(AgentError):  # noqa: N818 - names the event users see, like LockedError
    """The database server could not be reached or refused the credentials."""


class UntrustedServer(ConnectionFailed):
    """What answers at the server's socket or port may be an impostor: no password is sent to it.

    The socket or port belongs to another user, or the server asked for the password in clear text
    over a connection that does not verify it is the real server.
    """

    reason = "untrusted_server"


def permission_problem(error: PermissionError) -> str:
    """One line for a refused open/create/delete: the path, and the account that was refused it."""
    import os
    import pwd

    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    path = error.filename if error.filename is not None else "a file"
    return (
        f"permission denied: {path} (the agent runs as {user}, uid {uid}): the storage folder and "
        f"everything in it must belong to that user, or run the agent as its owner"
    )
