"""The filesystem's immutable attribute (`chattr +i`), set on published files when configured.

Needs CAP_LINUX_IMMUTABLE; without it the agent warns once and carries on, since 0440 files in a
0750 tree already keep the agent itself from changing them. Retention clears the flag just before
it deletes a file.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
from pathlib import Path

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x00000010
_NO_ATTRIBUTES = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class ImmutableUnsupported(OSError):  # noqa: N818 - a condition, reported once as a warning
    """The process lacks CAP_LINUX_IMMUTABLE or the filesystem has no such attribute."""


def _change(path: Path, immutable: bool) -> bool:
    """Set or clear the flag; True when it changed."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        flags = array.array("i", [0])  # the kernel reads and writes an int, whatever the ioctl's name says
        try:
            fcntl.ioctl(descriptor, _FS_IOC_GETFLAGS, flags, True)
        except OSError as error:
            if error.errno in _NO_ATTRIBUTES:
                if immutable:
                    raise ImmutableUnsupported(error.errno, "the filesystem has no immutable attribute") from None
                return False
            raise
        if bool(flags[0] & _FS_IMMUTABLE_FL) == immutable:
            return False
        flags[0] = flags[0] | _FS_IMMUTABLE_FL if immutable else flags[0] & ~_FS_IMMUTABLE_FL
        try:
            fcntl.ioctl(descriptor, _FS_IOC_SETFLAGS, flags, True)
        except PermissionError as error:
            raise ImmutableUnsupported(error.errno, "CAP_LINUX_IMMUTABLE is needed to set the attribute") from None
        return True
    finally:
        os.close(descriptor)


def set_immutable(path: Path) -> bool:
    return _change(path, True)


def clear_immutable(path: Path) -> bool:
    return _change(path, False)


def is_immutable(path: Path) -> bool:
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(descriptor, _FS_IOC_GETFLAGS, flags, True)
        return bool(flags[0] & _FS_IMMUTABLE_FL)
    finally:
        os.close(descriptor)
