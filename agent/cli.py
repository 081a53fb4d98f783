"""The command line: argparse verbs; the only module that prints and maps errors to exit codes.

Output meant for programs (`--json`) goes to stdout alone; log lines go to the log file and, on a
terminal, to stderr, so they never mix into it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from agent import __version__
from agent.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_USAGE,
    AgentError,
    ConfigError,
    UsageError,
)

if TYPE_CHECKING:
    from agent.progress import Snapshot

Handler = Callable[[argparse.Namespace], int]


def _say(*lines: str, error: bool = False) -> None:
    """The one printer of human-readable output, a line per argument: control characters are escaped
    as in the log (`\\x1b`), so a hostile database name can neither drive the terminal nor split a line."""
    from agent.log import escape_controls

    stream = sys.stderr if error else sys.stdout
    for line in lines:
        _write(escape_controls(line), stream)


def _say_json(value: Any, **options: Any) -> None:
    """Output for programs: JSON escapes control characters, the log's encoder the line breaks JSON allows."""
    from agent.log import json_text

    _write(json_text(value, indent=2, **options), sys.stdout)


def _write(text: str, stream: Any) -> None:
    """One line out; a reader that went away (`status | head -1`) silences the rest, and the verb goes on."""
    try:
        print(text, file=stream)
    except BrokenPipeError:
        _reader_went_away(stream)


class _TerminalProgress:
    """A dump's, restore's or drill's progress as one line on a terminal's stderr, redrawn every half
    second with \\r, cleared at the end and before any log line reaches the same terminal."""

    at_start = True

    def __init__(self, stream: TextIO) -> None:
        from agent.progress import TERMINAL_EVERY_SECONDS

        self.every = TERMINAL_EVERY_SECONDS
        self._stream = stream
        self._shown = False

    def update(self, snapshot: Snapshot) -> None:
        from agent.log import escape_controls
        from agent.progress import describe

        width = max(20, shutil.get_terminal_size().columns - 1)  # never wrap: \r redraws one line only
        self._stream.write("\r" + escape_controls(describe(snapshot))[:width] + "\x1b[K")
        self._stream.flush()
        self._shown = True

    def finish(self, _snapshot: Snapshot) -> None:
        self.clear()

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False

    def filter(self, _record: logging.LogRecord) -> bool:
        """As a filter of the terminal's log handler: a log line first clears the progress line."""
        self.clear()
        return True


def _terminal_progress() -> _TerminalProgress | None:
    """The progress line when stderr is a terminal (a person watches); None when it is piped or a file."""
    if not sys.stderr.isatty():
        return None
    line = _TerminalProgress(sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stderr:
            handler.addFilter(line)
    return line


class _StopFlag:
    """Set by SIGTERM/SIGINT: the running dump stops, cleans up, and the command exits 128+N."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def __call__(self) -> bool:
        return self.signal_number is not None

    def install(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            self.signal_number = signum

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


# verbs that create files in storage (manifests, journal, state, locks, scratch): refused as root on another's storage
_WRITES_STORAGE = frozenset({"backup", "run", "prune", "pin", "unpin", "retire", "drill", "restore"})


def _load(args: argparse.Namespace, *, configure_logging: bool = True, runs_programs: bool = True) -> Any:
    """The config, refused when unsafe; commands that run no hook or tool skip only that check."""
    from agent.config import config_path_from, load_config

    config = load_config(config_path_from(args.config), check_programs=runs_programs)
    args.loaded_config = config  # for main's last resort: where the log of an unexpected error goes
    if getattr(args, "verb", None) in _WRITES_STORAGE:
        from agent.storage import foreign_owner_problem

        problem = foreign_owner_problem(config.storage.path)
        if problem is not None:
            raise UsageError(problem)
    if configure_logging:
        from agent import log

        log.configure_from(config.log)
    return config


def _job_names(config: Any, job: str | None) -> list[str]:
    if job is None:
        return list(config.jobs)
    if job not in config.jobs:
        known = ", ".join(config.jobs) or "none"
        raise UsageError(f"no job named {job!r} in the config (jobs: {known})")
    return [job]


def command_backup(args: argparse.Namespace) -> int:
    from agent.naming import series_label
    from agent.observed import run_job
    from agent.outcome import Status

    config = _load(args)
    names = _job_names(config, args.job)
    if args.database is not None and len(names) != 1:
        raise UsageError("--database needs --job when the config has more than one job")
    label = _backup_label(args)
    stop = _StopFlag()
    stop.install()
    failed = False
    progress = _terminal_progress()
    for name in names:
        if stop():
            break
        outcome = run_job(config, name, database=args.database, should_stop=stop, label=label, progress=progress)
        for target in outcome.targets:
            shown = series_label(target.kind, target.database)
            if target.status == Status.OK and target.unchanged:  # skip_unchanged: no new dump
                _say(f"ok      {name} {shown} unchanged, relies on {target.path}")
            elif target.status == Status.OK:
                _say(f"ok      {name} {shown} -> {target.path}")
            elif target.status == Status.INTERRUPTED:
                _say(f"INTERRUPTED {name} {shown}: {target.message}")
            else:  # REFUSED: not tried, for lack of room (the message says what to change); FAILED: tried
                word = "REFUSED" if target.status == Status.REFUSED else "FAILED"
                _say(f"{word:7} {name} {shown}: {target.message}")
        if not outcome.ok:
            failed = True
            if outcome.message:
                _say(f"{outcome.status.upper():7} {name}: {outcome.message}")
    if stop.signal_number is not None:
        return 128 + stop.signal_number
    return EXIT_FAILED if failed else EXIT_OK


def _backup_label(args: argparse.Namespace) -> Any:
    """`--label NAME [--keep 30d]`, checked before anything runs; None without --label."""
    from agent.labels import parse_label

    if args.label is None:
        if args.keep is not None:
            raise UsageError("--keep needs --label (it says how long the labelled backup is kept)")
        return None
    return parse_label(args.label, args.keep)


def command_run(args: argparse.Namespace) -> int:
    from agent.config import config_path_from
    from agent.daemon import run_daemon
    from agent.errors import DaemonRunning

    config = _load(args)
    try:
        return run_daemon(config, config_path_from(args.config))
    except DaemonRunning as error:
        if sys.stderr.isatty():  # a person asked; cron and service managers get the exit status alone
            print(f"backup-agent: {error}", file=sys.stderr)
        return error.exit_code


def command_list(args: argparse.Namespace) -> int:
    from agent import catalog

    config = _load(args, runs_programs=False)
    if args.job is not None:
        _job_names(config, args.job)
    if args.deleted:
        return _list_deleted(config, args)
    records = catalog.scan(config.storage.path, args.job, indexed=True)
    if args.label is not None:  # `backup --label NAME`: only the backups made with it
        records = [record for record in records if record.summary is not None and record.summary.label == args.label]
    rows: Iterator[dict[str, Any]] = (  # one at a time: 20,000 rows as dicts would double the command's memory
        {
            "job": record.job,
            "database": record.database,
            "kind": record.kind,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "status": record.status,
            "stored_bytes": record.stored_bytes,
            "sha256": record.summary.sha256 if record.summary else None,
            "path": str(record.path),
            "label": record.summary.label if record.summary else None,
            "keep_until": _iso_or_none(record.summary.keep_until if record.summary else None),
        }
        for record in records
    )
    if args.json:
        _say_json(list(rows), ensure_ascii=False)
        return EXIT_OK
    from agent.naming import series_label
    from agent.units import format_size, format_time

    _say(f"{'STATUS':10} {'CREATED (UTC)':20} {'SIZE':>10}  JOB: DATABASE  PATH")
    for record, row in zip(records, rows, strict=True):
        size = format_size(row["stored_bytes"])
        shown = series_label(record.kind, record.database)
        label = f"  [label {row['label']} until {row['keep_until'][:10]}]" if row["label"] else ""
        created = format_time(record.created_at)
        _say(f"{row['status']:10} {created:20} {size:>10}  {row['job']}: {shown}  {row['path']}{label}")
    return EXIT_OK


def _iso_or_none(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment is not None else None


def _list_deleted(config: Any, args: argparse.Namespace) -> int:
    """`list --deleted`: dumps deleted locally that a platform snapshot still holds (the snapshot ledger)."""
    from agent import ledger
    from agent.naming import decode_name
    from agent.units import format_size, format_time

    loaded = ledger.load(config)
    if loaded is None:
        raise UsageError("list --deleted needs [snapshots] times in the config: the platform's snapshot times")
    rows = ledger.deleted_rows(loaded, args.job)
    for warning in (ledger.break_text(loaded), ledger.vanished_text(loaded)):
        if warning:
            _say(f"warning: {warning}", error=True)
    if args.json:
        _say_json(rows, ensure_ascii=False)
        return EXIT_OK
    for row in rows:
        database = decode_name(row["folder"]) or row["folder"]
        size = format_size(row["stored_bytes"]) if row["stored_bytes"] is not None else "?"
        _say(f"{'deleted':10} {format_time(row['created_at'])} {size:>10}  {row['job']}: {database}  {row['text']}")
    if not rows:
        _say("no deleted dump is held by a platform snapshot")
    return EXIT_OK


def _verify_sample(args: argparse.Namespace) -> Any:
    """`--incremental [--sample N|P%]` as a verified.Sample (None: verify everything)."""
    if not args.incremental:
        if args.sample is not None:
            raise UsageError("--sample needs --incremental")
        return None
    if args.paths:
        raise UsageError("--incremental checks the storage: give no PATH")
    from agent.verified import DEFAULT_SAMPLE, parse_sample

    try:
        return parse_sample(args.sample or DEFAULT_SAMPLE)
    except ValueError as error:
        raise UsageError(str(error)) from None


def command_verify(args: argparse.Namespace) -> int:
    from agent import verify

    config = _load(args, runs_programs=False)
    sample = _verify_sample(args)
    if args.paths:
        findings = [verify.verify_file(Path(path).absolute(), config.storage.path.absolute()) for path in args.paths]
    else:
        findings = verify.verify_storage(config.storage.path, args.job, sample=sample)
    fine = (verify.OK, verify.IN_PROGRESS, verify.UNCHANGED)
    bad = [finding for finding in findings if finding.status not in fine]
    running = [finding for finding in findings if finding.status == verify.IN_PROGRESS]
    checked = sum(1 for finding in findings if finding.status in (verify.OK, verify.CORRUPT, verify.TAMPERED))
    summary = f"VERIFY {'OK' if not bad else 'CRITICAL'} - {checked} checked, {len(bad)} problem(s)"
    if running:
        summary += f", {len(running)} being written"
    unchanged = sum(1 for finding in findings if finding.status == verify.UNCHANGED)
    if sample is not None:
        summary += f", {unchanged} unchanged since their last good check"
    if args.json:
        _say_json(
            {
                "ok": not bad,
                "summary": summary,
                "findings": [{"path": str(f.path), "status": f.status, "message": f.message} for f in findings],
            }
        )
    else:
        for finding in bad + running:
            _say(f"{finding.status.upper():10} {finding.path}: {finding.message}")
        _say(summary)
    return EXIT_FAILED if bad else EXIT_OK


def command_check_config(args: argparse.Namespace) -> int:
    from agent.config import config_path_from, load_config, unreadable_passwords
    from agent.plan import describe_plan

    config = load_config(config_path_from(args.config))
    missing = unreadable_passwords(config)
    if missing:  # valid TOML, but no run could log in
        raise ConfigError(missing)
    plan = describe_plan(config, discover=not args.offline)
    if args.json:
        _say_json(plan, ensure_ascii=False, default=str)
    else:
        from agent.plan import render_plan

        _say(*render_plan(plan))
    refused = any(entry.get("untrusted_server") for entry in plan["jobs"].values())
    return EXIT_FAILED if refused else EXIT_OK


def command_status(args: argparse.Namespace) -> int:
    from agent import log, status

    config = _load(args, configure_logging=False, runs_programs=False)
    log.configure(level="warning", console=True)  # read-only: never needs the agent's log file
    picture = status.collect(config)
    if args.json:
        _say_json(picture, ensure_ascii=False)
    else:
        _say(*status.render_text(picture))
    return EXIT_FAILED if args.check and not picture["ok"] else EXIT_OK


def command_doctor(args: argparse.Namespace) -> int:
    from agent import log
    from agent.config import config_path_from
    from agent.doctor import diagnose

    log.configure(level="error", console=True)
    diagnosis = diagnose(config_path_from(args.config))
    for finding in diagnosis.findings:
        label = "PROBLEM" if not finding.ok else "WARNING" if finding.warning else "ok"
        _say(f"{label:8} {finding.topic}: {finding.message}")
    problems = sum(1 for finding in diagnosis.findings if not finding.ok)
    _say(f"DOCTOR {'OK' if diagnosis.ok else 'CRITICAL'} - {len(diagnosis.findings)} check(s), {problems} problem(s)")
    if not diagnosis.config_valid:
        return EXIT_CONFIG
    return EXIT_OK if diagnosis.ok else EXIT_FAILED


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at: expected a time like 2026-11-26T06:00 (UTC) or with an offset, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def command_restore(args: argparse.Namespace) -> int:
    from agent import restore

    config = _load(args)
    _job_names(config, args.job)
    if (args.into is None) == (args.to_file is None):
        raise UsageError("restore needs exactly one of --into NAME or --to-file OUT")
    at = _parse_time(args.at) if args.at else None
    if args.into is not None:
        restore.check_target(config.jobs[args.job].engine, args.into, force=args.force)
    if args.target_url is not None:
        restore.retarget(config.jobs[args.job], args.target_url)  # a bad URL is refused before anything runs
    progress = _terminal_progress()
    if args.with_globals and args.to_file is None and not args.dry_run:
        applied = restore.restore_server_wide(config, args.job, at=at, target_url=args.target_url, progress=progress)
        _say(f"applied {applied.manifest.kind} from {applied.record.path}")
    if args.label is not None:
        from agent.labels import label_problem

        problem = label_problem(args.label)
        if problem:
            raise UsageError(problem)
    chosen = restore.choose_backup(config, args.job, args.database, at=at, label=args.label)
    if at is not None and args.label is None:
        closer = restore.closer_platform_copy(config, args.job, chosen, at)
        if closer is not None:
            _say(f"note: {closer}", error=True)
    if args.to_file is not None:
        if args.dry_run:
            _say(f"would write the decompressed {chosen.record.path} to {args.to_file}")
            return EXIT_OK
        written = restore.restore_to_file(chosen, Path(args.to_file), config=config, progress=progress)
        _say(f"wrote {written}")
        return EXIT_OK
    engine = restore.engine_for(config, args.job, args.target_url)
    if args.dry_run:
        plan = restore.describe(chosen, engine, args.into, force=args.force, tables=tuple(args.table))
        _say(*plan.lines)
        return EXIT_FAILED if plan.refused else EXIT_OK
    restore.restore_database(
        config,
        args.job,
        chosen,
        args.into,
        force=args.force,
        tables=tuple(args.table),
        target_url=args.target_url,
        progress=progress,
    )
    _say(f"restored {chosen.record.path} into {args.into!r}")
    return EXIT_OK


def command_drill(args: argparse.Namespace) -> int:
    from agent.drill import PASSED
    from agent.observed import drill_job

    config = _load(args)
    failed = False
    progress = _terminal_progress()
    for job in _job_names(config, args.job):  # a failed job's drill never stops the next job's
        for result in drill_job(config, job, progress=progress):
            failed |= result.status != PASSED
            detail = f"{result.reason}: {result.message}" if result.reason else ""
            suffix = f" {detail}" if detail else ""
            where = f"{job}/{result.database} {result.path}" if result.database else job
            _say(f"{result.status.upper():8} {where}{suffix}")
    return EXIT_FAILED if failed else EXIT_OK


def command_prune(args: argparse.Namespace) -> int:
    from agent.prune import prune
    from agent.units import format_size, format_time

    config = _load(args, runs_programs=False)
    if args.job is not None:
        _job_names(config, args.job)
    result = prune(config, args.job, dry_run=args.dry_run)
    if args.json:
        _say_json({"dry_run": args.dry_run, **result.describe()}, ensure_ascii=False)
        return EXIT_OK
    verb = "delete" if args.dry_run else "deleted"
    if result.plan.decisions:
        _say(f"{'ACTION':8} {'RULE':32} {'CREATED (UTC)':20} {'SIZE':>10}  PATH")
    for decision in result.plan.decisions:
        action = verb if decision.delete else "keep"
        size = format_size(decision.backup.file_bytes)
        created = format_time(decision.backup.created_at)
        _say(f"{action:8} {decision.rule:32} {created:20} {size:>10}  {decision.backup.key}")
    figures, budget = result.figures, result.budget
    limit = f" of max {format_size(budget.max_usage_bytes)}" if budget.max_usage_bytes is not None else ""
    going = result.plan.deletions
    files, on_disk = sum(d.backup.file_bytes for d in going), sum(d.backup.size_bytes for d in going)
    _say(
        f"{len(going)} to delete ({format_size(files)}; {format_size(on_disk)} on disk with manifests); "
        f"usage on disk {format_size(figures.usage_bytes)}{limit}; free {format_size(figures.free_bytes)}, "
        f"reserve {format_size(budget.reserve_bytes)}" + (" (dry run: nothing deleted)" if args.dry_run else "")
    )
    if not result.plan.fits:
        _say("warning: the disk stays over budget: only keep_min backups and pins are left to delete")
    return EXIT_OK


def command_pin(args: argparse.Namespace) -> int:
    from agent.pins import pin

    config = _load(args, runs_programs=False)
    relative = pin(config.storage.path, Path(args.path))
    _say(f"pinned {relative}: retention will never delete it (undo with `backup-agent unpin`)")
    return EXIT_OK


def command_unpin(args: argparse.Namespace) -> int:
    from agent.pins import relative_backup_path, unpin

    config = _load(args, runs_programs=False)
    if not unpin(config.storage.path, Path(args.path)):
        _say(f"{relative_backup_path(config.storage.path, Path(args.path))} was not pinned")
    else:
        _say(f"unpinned {relative_backup_path(config.storage.path, Path(args.path))}")
    return EXIT_OK


def command_retire(args: argparse.Namespace) -> int:
    from agent.retire import retire

    config = _load(args)
    result = retire(config, args.job, args.database, delete=args.delete)
    _say(f"retired {result.series}: the journal records it; verify and status no longer expect its files")
    if args.delete:
        _say(f"deleted {len(result.deleted)} file(s)")
        for path in result.pinned:
            _say(f"kept pinned {path} (unpin it, then run retire --delete again)")
    elif result.files:
        _say(f"{result.files} file(s) kept; delete them with --delete")
    return EXIT_OK


def _add_list_verb(verbs: Any) -> None:
    listing = verbs.add_parser("list", help="list the backups on disk")
    listing.add_argument("--job")
    listing.add_argument("--json", action="store_true", help="JSON on stdout")
    listing.add_argument(
        "--deleted", action="store_true", help="dumps deleted locally that a platform snapshot still holds"
    )
    listing.add_argument("--label", help="only the backups made with `backup --label LABEL`")
    listing.set_defaults(handler=command_list)


def _add_restore_verb(verbs: Any) -> None:
    restore = verbs.add_parser("restore", help="restore the newest good backup (at or before --at) into a database")
    restore.add_argument("--job", required=True)
    restore.add_argument("--database", required=True, help="the original database name (as in `list`)")
    restore.add_argument("--at", help="newest backup at or before this time (ISO 8601; UTC unless an offset is given)")
    restore.add_argument("--label", help="the newest backup made with `backup --label LABEL` (and --at, if given)")
    restore.add_argument("--into", help="the database to create and load")
    restore.add_argument("--to-file", help="write the plain decompressed dump here instead")
    restore.add_argument(
        "--target-url", help="restore onto this server instead of the job's (postgresql://user@host:port, no password)"
    )
    restore.add_argument("--table", action="append", default=[], help="only this table (PostgreSQL; repeatable)")
    restore.add_argument(
        "--with-globals", action="store_true", help="first apply the job's roles (PostgreSQL globals, MySQL grants)"
    )
    restore.add_argument(
        "--force", action="store_true", help="restore even into a database that holds data, or a system database"
    )
    restore.add_argument("--dry-run", action="store_true", help="say exactly what would happen, change nothing")
    restore.set_defaults(handler=command_restore)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-agent",
        description="Scheduled logical database dumps, kept as immutable checksummed files within a disk budget.",
    )
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: $BACKUP_AGENT_CONFIG, else ~/.config/backup-agent/config.toml if it exists, "
        "else /etc/backup-agent/config.toml)",
    )
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    backup = verbs.add_parser("backup", help="back up now (every job, or one)")
    backup.add_argument("--job", help="only this job")
    backup.add_argument("--database", help="only this database of the job")
    backup.add_argument("--label", help="name this backup (e.g. before-upgrade): kept like a pin until --keep runs out")
    backup.add_argument("--keep", help="how long a labelled backup is kept, e.g. 30d or 12h (default 30d)")
    backup.set_defaults(handler=command_backup)

    run = verbs.add_parser("run", help="the daemon: run the scheduled jobs in the foreground until SIGTERM")
    run.set_defaults(handler=command_run)

    _add_list_verb(verbs)

    verify = verbs.add_parser("verify", help="re-hash and check backups (all, or the given files)")
    verify.add_argument("paths", nargs="*", metavar="PATH")
    verify.add_argument("--job")
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--incremental",
        action="store_true",
        help="re-read only backups new or changed since their last good check, plus --sample of the others",
    )
    verify.add_argument(
        "--sample", metavar="N|P%", help="with --incremental: how many unchanged backups to re-read (default 15%%)"
    )
    verify.set_defaults(handler=command_verify)

    _add_restore_verb(verbs)

    drill = verbs.add_parser("drill", help="restore each database's newest backup into a scratch database and compare")
    drill.add_argument("--job")
    drill.set_defaults(handler=command_drill)

    prune = verbs.add_parser("prune", help="apply the retention policy and the disk budget (see --dry-run)")
    prune.add_argument("--job", help="only this job's backups")
    prune.add_argument("--dry-run", action="store_true", help="show keep/delete and why; delete nothing")
    prune.add_argument("--json", action="store_true", help="JSON on stdout")
    prune.set_defaults(handler=command_prune)

    retire = verbs.add_parser("retire", help="end a removed job's or database's series: nothing reports it missing")
    retire.add_argument("--job", required=True, help="the job (removed from the config, or the database's job)")
    retire.add_argument("--database", help="only this database's series (removed from the job or the server)")
    retire.add_argument("--delete", action="store_true", help="also delete its files (pinned ones stay)")
    retire.set_defaults(handler=command_retire)

    pin = verbs.add_parser("pin", help="protect a backup from every deletion")
    pin.add_argument("path", metavar="PATH", help="the backup file (or its manifest)")
    pin.set_defaults(handler=command_pin)

    unpin = verbs.add_parser("unpin", help="let retention treat a pinned backup like any other again")
    unpin.add_argument("path", metavar="PATH")
    unpin.set_defaults(handler=command_unpin)

    check = verbs.add_parser("check-config", help="validate the config and print the resolved plan")
    check.add_argument("--json", action="store_true")
    check.add_argument("--offline", action="store_true", help="do not connect to list databases")
    check.set_defaults(handler=command_check_config)
    _add_operations_verbs(verbs)
    return parser


def _add_operations_verbs(verbs: Any) -> None:
    status = verbs.add_parser("status", help="are my backups OK? per job and database, offline")
    status.add_argument("--json", action="store_true", help="JSON on stdout")
    status.add_argument("--check", action="store_true", help="exit 1 when a database has no fresh good backup")
    status.set_defaults(handler=command_status)

    doctor = verbs.add_parser("doctor", help="check everything a first run needs; one line per problem")
    doctor.set_defaults(handler=command_doctor)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        code = int(exit_request.code or 0) if exit_request.code in (0, None) else EXIT_USAGE
    else:
        code = _run(args.handler, args)
    try:
        sys.stdout.flush()  # here, not at exit, so that a reader gone away is met below
    except BrokenPipeError:
        _reader_went_away(sys.stdout)
    return code


def _reader_went_away(stream: Any) -> None:
    """The reader closed the pipe (`| head -1`): the rest goes to /dev/null, quietly, as with `cat`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())  # the interpreter's last flush then has nowhere to fail
    finally:
        os.close(devnull)


def _run(handler: Handler, args: argparse.Namespace) -> int:
    """The verb, and the one map from errors to exit codes and one-line messages."""
    try:
        return handler(args)
    except ConfigError as error:
        for problem in error.problems:
            _say(f"backup-agent: config error: {problem}", error=True)
        return EXIT_CONFIG
    except AgentError as error:
        _say(f"backup-agent: error: {error}", error=True)
        return error.exit_code
    except OSError as error:
        from agent.errors import permission_problem  # storage someone else owns: which path, who was refused

        plain = f"{error.filename or ''}: {error.strerror}"
        problem = permission_problem(error) if isinstance(error, PermissionError) else plain
        _say(f"backup-agent: error: {problem}", error=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as error:  # a bug, in any verb: one line here, the traceback in the log
        from agent import log

        config = getattr(args, "loaded_config", None)
        where = log.record_crash(error, config.log.file if config is not None else None)
        _say(
            f"backup-agent: internal error: {type(error).__name__}: {error} "
            f"(a bug; the traceback is in {where}, event cli.internal_error)",
            error=True,
        )
        return EXIT_SOFTWARE
