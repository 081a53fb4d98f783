"""The command line: argparse verbs; the only module that prints and maps errors to exit codes.

Output meant for programs (`--json`) goes to stdout alone; log lines go to the log file and, on a
terminal, to stderr, so they never mix into it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__
from agent.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, AgentError, ConfigError, UsageError

Handler = Callable[[argparse.Namespace], int]


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


def _load(args: argparse.Namespace, *, configure_logging: bool = True) -> Any:
    from agent.config import config_path_from, load_config

    config = load_config(config_path_from(args.config))
    if configure_logging:
        from agent import log

        settings = config.log
        log.configure(
            file=settings.file,
            level=settings.level,
            file_format=settings.format,
            rotate=settings.rotate,
            max_bytes=settings.max_size.resolve(0),
            keep=settings.keep,
            console=None,
        )
    return config


def _job_names(config: Any, job: str | None) -> list[str]:
    if job is None:
        return list(config.jobs)
    if job not in config.jobs:
        known = ", ".join(config.jobs) or "none"
        raise UsageError(f"no job named {job!r} in the config (jobs: {known})")
    return [job]


def command_backup(args: argparse.Namespace) -> int:
    from agent.runner import run_job
    from agent.state import record_run

    config = _load(args)
    names = _job_names(config, args.job)
    if args.database is not None and len(names) != 1:
        raise UsageError("--database needs --job when the config has more than one job")
    stop = _StopFlag()
    stop.install()
    failed = False
    for name in names:
        if stop():
            break
        outcome = run_job(config, name, database=args.database, should_stop=stop)
        record_run(config.storage.path, outcome)
        for target in outcome.targets:
            label = target.database or f"({target.kind})"
            if target.status == "ok":
                print(f"ok      {name} {label} -> {target.path}")
            else:
                print(f"FAILED  {name} {label}: {target.message}")
        if not outcome.ok:
            failed = True
            if outcome.message:
                print(f"{outcome.status.upper():7} {name}: {outcome.message}")
    if stop.signal_number is not None:
        return 128 + stop.signal_number
    return EXIT_FAILED if failed else EXIT_OK


def command_run(args: argparse.Namespace) -> int:
    from agent.config import config_path_from
    from agent.daemon import run_daemon

    config = _load(args)
    return run_daemon(config, config_path_from(args.config))


def command_list(args: argparse.Namespace) -> int:
    from agent import catalog

    config = _load(args)
    if args.job is not None:
        _job_names(config, args.job)
    records = catalog.scan(config.storage.path, args.job)
    rows: list[dict[str, Any]] = [
        {
            "job": record.job,
            "database": record.database,
            "kind": record.kind,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "status": record.status,
            "stored_bytes": record.stored_bytes,
            "sha256": record.manifest.sha256 if record.manifest else None,
            "path": str(record.path),
        }
        for record in records
    ]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    from agent.units import format_size

    for row in rows:
        created = (row["created_at"] or "?")[:19]
        database = json.dumps(row["database"], ensure_ascii=True)[1:-1]  # never print raw control bytes
        size = format_size(row["stored_bytes"])
        print(f"{row['status']:10} {created} {size:>10}  {row['job']}/{database}  {row['path']}")
    return EXIT_OK


def command_verify(args: argparse.Namespace) -> int:
    from agent import verify

    config = _load(args)
    if args.paths:
        findings = [verify.verify_file(Path(path).absolute()) for path in args.paths]
    else:
        findings = verify.verify_storage(config.storage.path, args.job)
    bad = [finding for finding in findings if finding.status != verify.OK]
    checked = sum(1 for finding in findings if finding.status in (verify.OK, verify.CORRUPT, verify.TAMPERED))
    summary = f"VERIFY {'OK' if not bad else 'CRITICAL'} - {checked} checked, {len(bad)} problem(s)"
    if args.json:
        print(json.dumps({
            "ok": not bad,
            "summary": summary,
            "findings": [{"path": str(f.path), "status": f.status, "message": f.message} for f in findings],
        }, indent=2))
    else:
        for finding in bad:
            print(f"{finding.status.upper():10} {finding.path}: {finding.message}")
        print(summary)
    return EXIT_FAILED if bad else EXIT_OK


def command_check_config(args: argparse.Namespace) -> int:
    from agent.config import config_path_from, load_config
    from agent.plan import describe_plan

    config = load_config(config_path_from(args.config))
    plan = describe_plan(config, discover=not args.offline)
    if args.json:
        print(json.dumps(plan, indent=2, ensure_ascii=False, default=str))
    else:
        from agent.plan import render_plan

        print(render_plan(plan))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-agent",
        description="Scheduled logical database dumps, kept as immutable checksummed files within a disk budget.",
    )
    parser.add_argument(
        "-c", "--config", help="config file (default: $BACKUP_AGENT_CONFIG or /etc/backup-agent/config.toml)"
    )
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    backup = verbs.add_parser("backup", help="back up now (every job, or one)")
    backup.add_argument("--job", help="only this job")
    backup.add_argument("--database", help="only this database of the job")
    backup.set_defaults(handler=command_backup)

    run = verbs.add_parser("run", help="the daemon: run the scheduled jobs in the foreground until SIGTERM")
    run.set_defaults(handler=command_run)

    listing = verbs.add_parser("list", help="list the backups on disk")
    listing.add_argument("--job")
    listing.add_argument("--json", action="store_true", help="JSON on stdout")
    listing.set_defaults(handler=command_list)

    verify = verbs.add_parser("verify", help="re-hash and check backups (all, or the given files)")
    verify.add_argument("paths", nargs="*", metavar="PATH")
    verify.add_argument("--job")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=command_verify)

    check = verbs.add_parser("check-config", help="validate the config and print the resolved plan")
    check.add_argument("--json", action="store_true")
    check.add_argument("--offline", action="store_true", help="do not connect to list databases")
    check.set_defaults(handler=command_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0) if exit_request.code in (0, None) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"backup-agent: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as error:
        print(f"backup-agent: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
