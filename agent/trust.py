"""Who else could have changed what the agent opens, runs, writes or connects to.

The agent often runs as root beside unprivileged users, so every path outside its storage tree
(the log, the metrics file, hooks, tools, password files, a server's socket) and every loopback
port may have been planted. One rule decides them all, the storage path's: no folder on the way
that others may write (a root-owned sticky folder such as /tmp excepted, but only for entries a
trusted account made), no symbolic link where a file is written. What is run, and a server's
socket, must also belong to root or the expected account. Decisions are pure functions over
`Entry` values (an lstat's owner, group and mode); the small acting layer at the end reads the
filesystem and /proc/net/tcp.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import pwd
import socket
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import EXIT_CONFIG, AgentError

ROOT = 0
_MAX_LINK_HOPS = 40
_TCP_LISTEN = "0A"
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


class UnsafePath(AgentError):  # noqa: N818 - names what a user sees, like ConnectionFailed
    """A path the agent would open, run or write could have been planted or changed by someone else."""

    exit_code = EXIT_CONFIG  # a setting names it: fix the path or point the setting elsewhere


# --------------------------------------------------------------------------------------------------
# Accounts


@dataclass(frozen=True, slots=True)
class Trusted:
    """The accounts that may own or write what the agent relies on.

    Always root and the agent's own user; for a server's socket or port also the server's
    system user. A group counts when it is the primary group of one of those accounts.
    """

    uids: frozenset[int]
    gids: frozenset[int]
    names: tuple[str, ...] = ()  # the server accounts named, for messages

    def describe(self) -> str:
        owners = ["root", *(name for name in self.names if name != "root")]
        own = account_name(os.geteuid())
        if own not in owners:
            owners.append(f"the agent's user {own}")
        return " or ".join(owners)


def agent_accounts() -> Trusted:
    """Root and the user the agent runs as."""
    return Trusted(frozenset({ROOT, os.geteuid()}), frozenset({ROOT, os.getegid()}))


def server_accounts(users: Sequence[str]) -> Trusted:
    """Root, the agent's user, and the server's system users that exist on this machine."""
    base = agent_accounts()
    uids, gids, names = set(base.uids), set(base.gids), []
    for name in users:
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            continue
        uids.add(account.pw_uid)
        gids.add(account.pw_gid)
        names.append(name)
    return Trusted(frozenset(uids), frozenset(gids), tuple(names))


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


# --------------------------------------------------------------------------------------------------
# Decisions (pure)


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry as lstat saw it."""

    path: str
    uid: int
    gid: int
    mode: int
    links: int = 1

    @classmethod
    def of(cls, path: str, status: os.stat_result) -> Entry:
        return cls(path, status.st_uid, status.st_gid, status.st_mode, status.st_nlink)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_folder(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def open_to_all(self) -> bool:
        """A root-owned sticky folder anyone may add to, such as /tmp."""
        return bool(self.mode & stat.S_IWOTH and self.mode & stat.S_ISVTX) and self.uid == ROOT


@dataclass(frozen=True, slots=True)
class Step:
    """An entry met on the way to a path, with the folder that holds it (None for `/`)."""

    entry: Entry
    folder: Entry | None


@dataclass(frozen=True, slots=True)
class Walk:
    """Every entry met from `/` to a path, links followed; `final` is None when the path is missing."""

    steps: tuple[Step, ...]
    final: Step | None
    problem: str | None = None  # a component that is not a folder, a link loop


def folder_problem(folder: Entry, trusted: Trusted, *, strict: bool) -> str | None:
    """Why someone untrusted could add, swap or remove entries in `folder`, or None.

    The storage path's rule: nobody else may write the folder unless it is root's sticky /tmp.
    `strict` (for what is run and for a server's socket) also asks for a trusted owner and no
    group write but by a trusted group.
    """
    path = folder.path
    if folder.mode & stat.S_IWOTH and not folder.open_to_all:
        return f"{path} is writable by others; chmod o-w {path}"
    if not strict:
        return None
    if folder.uid not in trusted.uids:
        return f"{path} belongs to {account_name(folder.uid)}, not {trusted.describe()}, who could swap what it holds"
    if folder.mode & stat.S_IWGRP and folder.gid not in trusted.gids and not folder.open_to_all:
        return f"{path} is writable by group {group_name(folder.gid)}; chmod g-w {path}"
    return None


def entry_problem(step: Step, trusted: Trusted) -> str | None:
    """In a folder anyone may add to (/tmp), only an entry a trusted account made is the real one."""
    folder = step.folder
    if folder is not None and folder.open_to_all and step.entry.uid not in trusted.uids:
        return (
            f"{step.entry.path} belongs to {account_name(step.entry.uid)} in {folder.path}, where anyone may "
            f"create names: it may be planted"
        )
    return None


def walk_problem(walk: Walk, trusted: Trusted, *, strict: bool) -> str | None:
    """The first reason the way to a path is not safe: a folder others may write, a planted entry."""
    if walk.problem is not None:
        return walk.problem
    steps = [*walk.steps, *((walk.final,) if walk.final is not None else ())]
    for step in steps:
        problem = entry_problem(step, trusted)
        if problem is None and step.entry.is_folder:
            problem = folder_problem(step.entry, trusted, strict=strict)
        if problem is not None:
            return problem
    return None


def writable_problem(entry: Entry, trusted: Trusted, what: str) -> str | None:
    """Why someone untrusted could change the file itself (its owner, or a group/other write bit)."""
    if entry.uid not in trusted.uids:
        return f"{what} {entry.path} belongs to {account_name(entry.uid)}, not {trusted.describe()}"
    if entry.mode & stat.S_IWOTH:
        return f"{what} {entry.path} is writable by others; chmod o-w {entry.path}"
    if entry.mode & stat.S_IWGRP and entry.gid not in trusted.gids:
        return f"{what} {entry.path} is writable by group {group_name(entry.gid)}; chmod g-w {entry.path}"
    return None


def program_problem(walk: Walk, trusted: Trusted) -> str | None:
    """A hook or tool runs as the agent: nobody else may be able to change it or the folders above it."""
    problem = walk_problem(walk, trusted, strict=True)
    if problem is not None:
        return problem
    if walk.final is None:
        return None  # a missing program is its own, clearer error where it is started
    return writable_problem(walk.final.entry, trusted, "the program")


def written_file_problem(walk: Walk, trusted: Trusted, what: str) -> str | None:
    """A file the agent appends to or replaces: no link to follow, no second name, nobody else's folder."""
    problem = walk_problem(walk, trusted, strict=False)
    if problem is not None:
        return problem
    # the folder it is (or will be) in: whoever may write there could put a link or their file in its place
    folder = walk.final.folder if walk.final is not None else walk.steps[-1].entry
    problem = folder_problem(folder, trusted, strict=True) if folder is not None else None
    if problem is not None or walk.final is None:
        return problem
    return opened_file_problem(walk.final.entry, what)


def opened_file_problem(entry: Entry, what: str) -> str | None:
    """The checks repeated on an opened descriptor (no race with a swap between check and open).

    Its owner does not matter: a file someone else made in a folder only trusted accounts write
    was made there by them on purpose (in /tmp, `entry_problem` has refused it already).
    """
    if entry.is_link:
        return f"{what} {entry.path} is a symbolic link; point the setting at the real file"
    if not stat.S_ISREG(entry.mode):
        return f"{what} {entry.path} is not a regular file"
    if entry.links > 1:
        return f"{what} {entry.path} has {entry.links} names (hard links): another name may be someone else's file"
    return None


def secret_file_problem(entry: Entry) -> str | None:
    """A password file: a regular file others can neither read nor write (as a config with an inline password).

    Its owner and group may read it (0640 with the agent's group is the container pattern).
    """
    if not stat.S_ISREG(entry.mode):
        return f"password file {entry.path} is not a regular file"
    if entry.mode & (stat.S_IROTH | stat.S_IWOTH):
        return f"password file {entry.path} is readable by others; chmod o-rw {entry.path} (0600 or 0640)"
    return None


def private_folder_problem(entry: Entry, trusted: Trusted) -> str | None:
    """The agent's bookkeeping, scratch and lock folders: its own, and nobody else may write them."""
    if not entry.is_folder:
        return f"{entry.path} is not a real folder (a link or a file is in its place)"
    if entry.uid not in trusted.uids:
        return f"{entry.path} belongs to {account_name(entry.uid)}, not {trusted.describe()}"
    if entry.mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{entry.path} is writable by group or others; chmod go-w {entry.path}"
    return None


def check_private_folder(path: Path) -> str | None:
    """lstat the folder (a link in its place is refused) and judge it as a private folder."""
    return private_folder_problem(Entry.of(str(path), os.lstat(path)), agent_accounts())


def private_folder(path: Path) -> Path:
    """Create `path` (and missing parents) 0700 whatever the umask; refuse one someone else owns or may write."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700, follow_symlinks=False)
    require_safe(check_private_folder(path))
    return path


def socket_problem(walk: Walk, trusted: Trusted) -> str | None:
    """A server's Unix socket: it and its folder belong to root or the server's user, nobody else may write there.

    Unlike elsewhere, /tmp does not do as the socket's folder: while the server is down, anyone can
    create the socket's name there.
    """
    if walk.final is None:
        return None  # nothing there: connecting fails with the driver's own message
    problem = walk_problem(walk, trusted, strict=True)
    if problem is not None:
        return problem
    entry, folder = walk.final.entry, walk.final.folder
    if not stat.S_ISSOCK(entry.mode):
        return f"{entry.path} is not a socket"
    if folder is not None and folder.open_to_all:
        return (
            f"{entry.path} is in {folder.path}, where anyone may create names: while the server is down "
            f"another user can put a socket there; use a folder only the server can write"
        )
    if entry.uid not in trusted.uids:
        return (
            f"the socket {entry.path} belongs to {account_name(entry.uid)}, not {trusted.describe()}: "
            f"not the server's (set server_user if the server runs under another account)"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Listening TCP sockets (pure)


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket from /proc/net/tcp or tcp6: its address, port and owner."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    uid: int


def _proc_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp writes addresses as host-order 32-bit words in hex."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
    return ipaddress.IPv4Address(words) if len(raw) == 4 else ipaddress.IPv6Address(words)


def parse_listeners(text: str) -> list[Listener]:
    """The listening sockets of one /proc/net/tcp or /proc/net/tcp6 table; malformed lines are skipped."""
    listeners = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != _TCP_LISTEN:
            continue
        address, _, port = fields[1].partition(":")
        try:
            listeners.append(Listener(_proc_address(address), int(port, 16), int(fields[7])))
        except ValueError:
            continue
    return listeners


def _reaches(listener: Listener, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a connection to `address` on this machine may land on `listener`."""
    bound = listener.address
    if isinstance(bound, ipaddress.IPv6Address) and bound.ipv4_mapped is not None:
        bound = bound.ipv4_mapped
    return bound == address or bound.is_unspecified


@dataclass(frozen=True, slots=True)
class ServerProblem:
    """Why no password may go to an endpoint; `down` when simply nothing is there (not an impostor)."""

    message: str
    down: bool = False


def port_problem(
    listeners: Iterable[Listener],
    addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    port: int,
    trusted: Trusted,
    label: str,
) -> ServerProblem | None:
    """For a server on this machine's loopback: every socket that could take the connection is the server's.

    When nothing listens the server is down; the caller reports that as a failed connection
    rather than letting the driver try (someone could bind the port in between).
    """
    reaching = [item for item in listeners if item.port == port and any(_reaches(item, a) for a in addresses)]
    if not reaching:
        return ServerProblem(f"nothing listens on {label}: the server is not running (or listens elsewhere)", True)
    strangers = sorted({item.uid for item in reaching if item.uid not in trusted.uids})
    if strangers:
        owners = ", ".join(account_name(uid) for uid in strangers)
        return ServerProblem(
            f"{label} is held by {owners}, not {trusted.describe()}: not the server's, the password is not "
            f"sent (set server_user if the server runs under another account)"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Acting: read the filesystem and /proc


def _components(path: str) -> list[str]:
    """Path components as written (`..` kept: it is resolved against the real folder reached so far)."""
    return [part for part in path.split("/") if part and part != "."]


def walk(path: str | os.PathLike[str], *, follow_final: bool) -> Walk:
    """lstat every entry from `/` to `path`, following links on the way (and the last one if asked).

    The folders reached are always real (links resolved), so `..` means what the kernel makes of it.
    """
    text = os.fspath(path)
    pending = _components(text if text.startswith("/") else os.path.join(os.getcwd(), text))
    root = Entry.of("/", os.lstat("/"))
    steps: list[Step] = [Step(root, None)]
    trail: list[Step] = [steps[0]]  # the real folders from / to the current one
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if len(trail) > 1:
                trail.pop()
            continue
        folder = trail[-1].entry
        candidate = os.path.join(folder.path, name)
        try:
            status = os.lstat(candidate)
        except FileNotFoundError:
            return Walk(tuple(steps), None)
        except OSError as error:
            return Walk(tuple(steps), None, f"cannot inspect {candidate}: {error.strerror}")
        step = Step(Entry.of(candidate, status), folder)
        if stat.S_ISLNK(status.st_mode) and (pending or follow_final):
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return Walk(tuple(steps), None, f"{text}: too many levels of symbolic links")
            steps.append(step)
            target = os.readlink(candidate)
            if target.startswith("/"):
                del trail[1:]
            pending = _components(target) + pending
            continue
        if not pending:
            return Walk(tuple(steps), step)
        if not stat.S_ISDIR(status.st_mode):
            return Walk(tuple(steps), None, f"{candidate} is not a folder")
        steps.append(step)
        trail.append(step)
    final = trail[-1]
    return Walk(tuple(item for item in steps if item is not final), final)


def check_place(path: Path, *, trusted: Trusted | None = None) -> str | None:
    """A folder (or where one will be created) the agent writes into: the storage path's rule."""
    if path.is_symlink():
        return f"{path} is a symbolic link; point the setting at the real directory"
    return walk_problem(walk(path, follow_final=False), trusted or agent_accounts(), strict=False)


def check_written_file(path: Path, what: str) -> str | None:
    """The log or the metrics file, before it is opened or replaced."""
    return written_file_problem(walk(path, follow_final=False), agent_accounts(), what)


def check_program(path: str | os.PathLike[str]) -> str | None:
    """A hook or tool (its resolved path) before the agent runs it."""
    return program_problem(walk(path, follow_final=True), agent_accounts())


def check_secret_file(path: str | os.PathLike[str]) -> str | None:
    """A password file, before it is read."""
    trusted = agent_accounts()
    found = walk(path, follow_final=True)
    problem = walk_problem(found, trusted, strict=False)
    if problem is not None or found.final is None:
        return problem
    return secret_file_problem(found.final.entry)


def check_socket(path: str | os.PathLike[str], server_users: Sequence[str]) -> str | None:
    """A server's Unix socket, before a password is sent through it."""
    return socket_problem(walk(path, follow_final=True), server_accounts(server_users))


def loopback_addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The loopback addresses `host` names (none for a remote host, or a name that does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    addresses = []
    for info in infos:
        try:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        except ValueError:
            continue
        if address.is_loopback and address not in addresses:
            addresses.append(address)
    return addresses


def read_listeners(tables: Sequence[Path] = PROC_NET_TCP) -> list[Listener] | None:
    """Every listening TCP socket of this network namespace; None when /proc cannot tell."""
    listeners: list[Listener] = []
    readable = False
    for table in tables:
        try:
            listeners += parse_listeners(table.read_text(encoding="ascii", errors="replace"))
            readable = True
        except OSError:
            continue
    return listeners if readable else None


def check_port(host: str, port: int, server_users: Sequence[str]) -> ServerProblem | None:
    """A server on this machine's loopback (by name or address): the port must be held by the server's user.

    A remote host is not checked (its ports are not this machine's); use TLS that verifies it.
    """
    addresses = loopback_addresses(host, port)
    if not addresses:
        return None
    listeners = read_listeners()
    if listeners is None:
        return ServerProblem(f"cannot tell who listens on {host}:{port}: /proc/net/tcp is not readable")
    return port_problem(listeners, addresses, port, server_accounts(server_users), f"{host}:{port}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a driver or tool will connect: a Unix socket path, or a host and port."""

    socket: str | None = None
    host: str | None = None
    port: int | None = None
    server_users: tuple[str, ...] = field(default=())

    def problem(self) -> ServerProblem | None:
        if self.socket is not None:
            problem = check_socket(self.socket, self.server_users)
            return ServerProblem(problem) if problem is not None else None
        if self.host is not None and self.port is not None:
            return check_port(self.host, self.port, self.server_users)
        return None


def require_safe(problem: str | None) -> None:
    if problem is not None:
        raise UnsafePath(problem)


def open_private_file(path: Path, flags: int, mode: int, what: str) -> int:
    """Open `path` without following a final link; refuse what someone else may have planted there.

    The way there is checked first, and the opened descriptor again (a swap in between is caught).
    """
    trusted = agent_accounts()
    require_safe(written_file_problem(walk(path, follow_final=False), trusted, what))
    descriptor = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        require_safe(opened_file_problem(Entry.of(str(path), os.fstat(descriptor)), what))
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def read_secret_file(path: str) -> bytes:
    """A password file's bytes, after its way, owner and mode passed (checked again on the descriptor)."""
    trusted = agent_accounts()
    found = walk(path, follow_final=True)
    problem = walk_problem(found, trusted, strict=False)
    if problem is None and found.final is None:
        raise FileNotFoundError(2, "No such file or directory", path)
    require_safe(problem)
    assert found.final is not None
    real = found.final.entry.path
    descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        require_safe(secret_file_problem(Entry.of(path, os.fstat(descriptor))))
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(descriptor)
