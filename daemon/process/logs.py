"""How the daemon logs: to stderr, as text or as JSON lines, and in journald's terms under systemd.

systemd connects a service's stderr to the journal and says so in ``$JOURNAL_STREAM``
(``<device>:<inode>`` of that stream, in decimal). When it names the stream we write to (a
child process that inherited the variable but whose stderr was redirected does not match), every
line starts with its syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug): journald strips the prefix and stores it as the entry's PRIORITY, so ``journalctl -p
warning`` shows the warnings and errors alone. The journal stamps each entry itself, so text
lines then carry no time of their own. Every line of a multi-line record (a traceback) gets the
prefix, since journald reads each line as an entry of its own.

``daemon.log_format = "json"`` writes one JSON object per line for log shippers: ``time``
(ISO 8601, UTC), ``level``, ``logger``, ``message``, the record's extra fields (``extra=`` of a
logging call), and ``exception`` when there is a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"

QUIET_LOGGERS = ("aiosqlite", "mail.log", "asyncio", "aiohttp.access", "alembic",
                 "apscheduler")  # APScheduler logs every wake-up of the sweeps at INFO
"""Libraries that talk too much at INFO; they log from WARNING up whatever the level."""

_TEXT = "%(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 critical, 3 error, 4 warning, 6 info,
    7 debug (and anything below)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_stream(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    value = environ.get(JOURNAL_STREAM_ENV, "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor behind it (a StringIO, a closed file)
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class TextFormatter(logging.Formatter):
    """``2026-12-01 10:00:00,123 WARNING frontdesk.x: words``; for the journal
    ``<4>WARNING frontdesk.x: words`` on every line of the record, without the time."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__(_TEXT if journal else "%(asctime)s " + _TEXT)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _prefixed(text, record) if self.journal else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (prefixed with its priority for the journal)."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        return _prefixed(line, record) if self.journal else line


def _prefixed(text: str, record: logging.LogRecord) -> str:
    prefix = f"<{syslog_priority(record.levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def formatter(log_format: LogFormat, *, journal: bool) -> logging.Formatter:
    return JsonFormatter(journal=journal) if log_format == "json" else TextFormatter(
        journal=journal)


def configure(level: str, log_format: LogFormat = "text", *, stream: IO[str] | None = None,
              environ: Mapping[str, str] = os.environ) -> logging.Handler:
    """Send every log record from ``level`` up to ``stream`` (stderr) in ``log_format``, in the
    journal's terms when the stream is the journal; returns the handler."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(log_format, journal=journal_stream(out, environ)))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # frontdesk's own lines follow daemon.log_level alone, whatever level a library or an
    # earlier configuration left on its logger.
    logging.getLogger("frontdesk").setLevel(logging.NOTSET)
    logging.captureWarnings(True)  # a library's DeprecationWarning, say, as a <4> line too
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
