"""Labelled backups (`backup --label before-upgrade [--keep 30d]`): the name and how long it is kept.

A label is written into the manifest with the moment its keep runs out; until then retention
keeps the backup like a pin (agent/retention.py), and `restore --label` finds it. The name is
checked here once, for the command line, and again by the manifest's type when read back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.errors import ConfigError, UsageError
from agent.units import parse_duration

LABEL_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEFAULT_KEEP = timedelta(days=30)
_LABEL = re.compile(LABEL_PATTERN)


@dataclass(frozen=True, slots=True)
class BackupLabel:
    name: str
    keep: timedelta

    def keep_until(self, finished_at: datetime) -> datetime:
        return finished_at + self.keep


def label_problem(name: str) -> str | None:
    """Why `name` cannot be a label (None: it can): it lands in file listings, logs and JSON."""
    if _LABEL.fullmatch(name):
        return None
    return (
        f"--label: {name!r} is not a label: use 1 to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


def parse_label(name: str, keep: str | None) -> BackupLabel:
    """The label of `backup --label NAME [--keep DURATION]`; a bad one is a usage error."""
    problem = label_problem(name)
    if problem:
        raise UsageError(problem)
    if keep is None:
        return BackupLabel(name, DEFAULT_KEEP)
    try:
        duration = parse_duration(keep, "--keep")
    except ConfigError as error:
        raise UsageError("; ".join(error.problems)) from None
    return BackupLabel(name, duration)
