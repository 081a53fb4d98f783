"""Logging: structlog events as one JSON line each in the log file, readable lines on a terminal.

Every record is exactly one line (control characters escaped), and a redaction processor is the
last line of defence against a secret reaching a log: every registered secret is masked.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent import trust

if TYPE_CHECKING:
    from agent.config import LogConfig

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")  # what any line splitter could split on
_JSON_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def register_secret(value: str) -> None:
    """Mask `value` in every later log record."""
    if len(value) >= 3:
        with _secrets_lock:
            _secrets.add(value)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {key: _mask(value) for key, value in event.items()}


def _escape_controls(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For the text renderer: a newline in a database name must not start a fake record.

    A traceback is kept on the same line too (as `traceback=`), escaped like any other value.
    """

    escaped = {key: escape_controls(value) if isinstance(value, str) else value for key, value in event.items()}
    if "exception" in escaped:
        escaped["traceback"] = escaped.pop("exception")
    return escaped


def escape_controls(text: str) -> str:
    """`text` with every control or line-breaking character as `\\xNN`/`\\uNNNN`: one line, no terminal codes."""
    return _CONTROL.sub(_escaped_character, text) if _CONTROL.search(text) else text


def _escaped_character(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def json_text(value: Any, **options: Any) -> str:
    """json.dumps that also escapes the line breaks JSON allows raw (U+0085, U+2028, U+2029)."""
    text = json.dumps(value, **options)
    for raw, escaped in _JSON_LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # tracebacks as data, without frame locals (they could hold anything, secrets included)
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            redact,
            structlog.processors.JSONRenderer(json_text, sort_keys=False, ensure_ascii=False),
        ],
    )


def _text_formatter(colors: bool) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            _escape_controls,
            structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback),
        ],
    )


LOG_FILE_MODE = 0o640  # whatever the umask: nobody else may write (forge) or read the log
LOG_DIRECTORY_MODE = 0o750


def _make_directories(directory: Path) -> None:
    """Create the log's missing folders 0750 whatever the umask; existing ones are left as they are.

    Only in a place nobody else may write (agent/trust.py): a folder made in someone's reach
    could be swapped for theirs.
    """
    trust.require_safe(trust.check_place(directory))
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, LOG_DIRECTORY_MODE)


def _open_private(path: str, flags: int) -> int:
    """Never through a planted link, never into someone else's file (checked again on the descriptor)."""
    return trust.open_private_file(Path(path), flags, LOG_FILE_MODE, "the log file")


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Every log file it opens (the first and each after a rotation) is created 0640."""

    def _open(self) -> Any:
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=_open_private)


class _PrivateWatchedFileHandler(logging.handlers.WatchedFileHandler):
    def _open(self) -> Any:
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=_open_private)


def configure(
    *,
    file: Path | None = None,
    level: str = "info",
    file_format: str = "json",
    rotate: bool = True,
    max_bytes: int = 10 << 20,
    keep: int = 5,
    console: bool | None = None,
) -> None:
    """Route structlog (and stdlib/APScheduler records) to the log file and, on a terminal, stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level.upper())
    if file is not None:
        _make_directories(file.parent)
        file_handler: logging.Handler
        if rotate:
            file_handler = _PrivateRotatingFileHandler(file, maxBytes=max_bytes, backupCount=keep)
        else:
            file_handler = _PrivateWatchedFileHandler(file)  # reopens after logrotate moves it
        file_handler.setFormatter(_json_formatter() if file_format == "json" else _text_formatter(False))
        root.addHandler(file_handler)
    show_console = sys.stderr.isatty() if console is None else console
    if show_console or file is None:
        console_handler = logging.StreamHandler(sys.stderr)
        tty = sys.stderr.isatty()
        console_handler.setFormatter(_text_formatter(tty) if tty or file_format == "text" else _json_formatter())
        root.addHandler(console_handler)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def configure_from(settings: LogConfig) -> None:
    """(Re)open the log as the config's [log] says: at start, and on every reload."""
    configure(
        file=settings.file,
        level=settings.level,
        file_format=settings.format,
        rotate=settings.rotate,
        max_bytes=settings.max_size.resolve(0),
        keep=settings.keep,
        console=None,
    )


def record_crash(error: BaseException, log_file: Path | None) -> str:
    """Write an unexpected error's traceback to the log file, never to a terminal; say where it went.

    When the command has not opened the log (`status` and `doctor` log only to the terminal), the
    config's log file is opened for this one record. With no log file configured at all, stderr is
    the agent's log (systemd, Docker), and the record goes there.
    """
    record = logging.LogRecord(
        "backup-agent",
        logging.ERROR,
        __file__,
        0,
        "cli.internal_error",
        None,
        (type(error), error, error.__traceback__),
    )
    files = [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.FileHandler)]
    if files:
        for handler in files:
            handler.handle(record)
        return files[0].baseFilename
    if log_file is not None:
        try:
            _make_directories(log_file.parent)
            handler = _PrivateWatchedFileHandler(log_file)
        except OSError:
            pass
        else:
            handler.setFormatter(_json_formatter())
            handler.handle(record)
            handler.close()
            return str(log_file)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_json_formatter())
    console.handle(record)
    return "stderr"


def get_logger(**bound: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("backup-agent").bind(**bound)
    return logger
