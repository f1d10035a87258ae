"""The daemon's log lines (daemon/process/logs.py): syslog priorities on systemd's journal stream,
JSON lines for log shippers, warnings for failures and refusals, one line per processing error."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from frontdesk.daemon.process.logs import (
    QUIET_LOGGERS,
    JsonFormatter,
    TextFormatter,
    configure,
    journal_stream,
    syslog_priority,
)
from frontdesk.daemon.process.registry import Settings
from tests.daemon.process.test_process import Proc, wait_for
from tests.support.helpers import eventually, mail, processed, smtp_send

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure() replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    own = logging.getLogger("frontdesk").level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("frontdesk").setLevel(own)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)
        logging.captureWarnings(False)


def stream_id(stream: IO[Any]) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def record(level: int, message: str, *args: Any, exc: BaseException | None = None,
           **extra: Any) -> logging.LogRecord:
    r = logging.LogRecord("frontdesk.test", level, __file__, 1, message, args,
                          (type(exc), exc, exc.__traceback__) if exc else None)
    r.__dict__.update(extra)
    return r


def failure() -> ValueError:
    try:
        raise ValueError("the cause")
    except ValueError as exc:
        return exc


def test_syslog_priorities() -> None:
    assert [syslog_priority(level) for level in (logging.CRITICAL, logging.ERROR,
                                                 logging.WARNING, logging.INFO, logging.DEBUG,
                                                 5)] == [2, 3, 4, 6, 7, 7]


def test_the_journal_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as mine, open(tmp_path / "other", "w") as other:
        assert journal_stream(mine, {"JOURNAL_STREAM": stream_id(mine)})
        # inherited from a parent whose stderr went to the journal, but ours goes elsewhere
        assert not journal_stream(mine, {"JOURNAL_STREAM": stream_id(other)})
        assert not journal_stream(mine, {})
        assert not journal_stream(mine, {"JOURNAL_STREAM": "nonsense"})
    assert not journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no descriptor


def test_journal_lines_carry_their_priority_on_every_line_and_no_time() -> None:
    journal = TextFormatter(journal=True)
    assert journal.format(record(logging.WARNING, "outbox #%d failed", 3)) == \
        "<4>WARNING frontdesk.test: outbox #3 failed"
    assert journal.format(record(logging.INFO, "running")) == "<6>INFO frontdesk.test: running"
    assert journal.format(record(logging.DEBUG, "detail")).startswith("<7>DEBUG ")
    lines = journal.format(record(logging.ERROR, "it broke", exc=failure())).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: the cause"
    plain = TextFormatter().format(record(logging.WARNING, "words"))
    assert TIMESTAMP.match(plain) and plain.endswith(" WARNING frontdesk.test: words")


def test_json_lines_have_time_level_logger_message_and_extras() -> None:
    line = JsonFormatter().format(record(logging.WARNING, "outbox #%d failed", 7,
                                         outbox_id=7, channel="email"))
    entry = json.loads(line)
    assert entry.pop("time").endswith("Z")
    assert entry == {"level": "warning", "logger": "frontdesk.test",
                     "message": "outbox #7 failed", "outbox_id": 7, "channel": "email"}
    broken = json.loads(JsonFormatter().format(record(logging.ERROR, "it broke",
                                                      exc=failure())))
    assert broken["exception"].splitlines()[-1] == "ValueError: the cause"
    journal = JsonFormatter(journal=True).format(record(logging.ERROR, "two\nlines"))
    assert journal.startswith("<3>{") and "\n" not in journal
    assert json.loads(journal[3:])["message"] == "two\nlines"


def test_configure_follows_the_stream_it_writes_to(tmp_path: Path, root_logging: None) -> None:
    logging.getLogger("frontdesk").setLevel(logging.WARNING)  # left by someone before
    with open(tmp_path / "stderr", "w") as err:
        configure("info", stream=err, environ={"JOURNAL_STREAM": stream_id(err)})
        logging.getLogger("frontdesk.x").warning("careful")
        logging.getLogger("frontdesk.x").debug("not shown at info")
        logging.getLogger("aiosqlite").info("quiet below warning")
        configure("debug", "json", stream=err, environ={})
        logging.getLogger("frontdesk.x").debug("shown", extra={"journal_id": 4})
    first, second = (tmp_path / "stderr").read_text().splitlines()
    assert first == "<4>WARNING frontdesk.x: careful"
    assert json.loads(second)["journal_id"] == 4 and json.loads(second)["level"] == "debug"


async def test_a_processing_error_is_one_line_and_its_traceback_once_at_debug(
    make_settings: Callable[..., Settings], daemon_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="frontdesk.daemon.process.processor")
    d = await daemon_factory(make_settings())
    assert await d.journal.accept("carrier-pigeon", "p1", b"coo", {})
    await eventually(lambda: processed(d.store), timeout=30)
    mine = [r for r in caplog.records if r.name == "frontdesk.daemon.process.processor"]
    loud = [r for r in mine if r.levelno >= logging.INFO]
    assert loud and all(r.levelno == logging.WARNING for r in loud)
    for r in loud:  # each try, and the giving up: one line with the reason, no traceback
        assert not r.exc_info and "\n" not in r.getMessage()
        assert r.getMessage().startswith("journal #1 (carrier-pigeon) ")
        assert r.getMessage().endswith(
            "LookupError: no parser for channel 'carrier-pigeon' is enabled")
    assert "failed to process" in loud[-1].getMessage()
    [trace] = [r for r in mine if "Traceback" in r.getMessage() or r.exc_info]
    assert trace.levelno == logging.DEBUG


def journal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line]


def test_under_systemd_every_line_has_its_priority_and_failures_are_warnings(
    tmp_path: Path,
) -> None:
    """`frontdesk run` with its stderr on "the journal" (a file whose device:inode is in
    $JOURNAL_STREAM, as systemd sets it): `journalctl -p warning` would show the refused
    recipient and the failed delivery, not the routine lines."""
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")  # relay: port 9, closed
    p.log.touch()
    with p.log.open("rb") as log:
        os.environ["JOURNAL_STREAM"] = stream_id(log)
    try:
        p.start()
    finally:
        del os.environ["JOURNAL_STREAM"]
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp_send(p.smtp_port, mail(to="nobody@example.com"), rcpt=["nobody@example.com"])
        smtp_send(p.smtp_port, mail())
        wait_for(lambda: p.json("conversations"))
        p.cli("reply", "FD-1", "It left our warehouse today.")
        wait_for(lambda: "failed, retry at" in p.log.read_text())
    finally:
        assert p.stop() == 0
    lines = journal_lines(p.log.read_text())
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not [line for line in lines if TIMESTAMP.match(line[3:])], lines
    warnings = [line for line in lines if line.startswith("<4>")]
    assert any("refused mail for nobody@example.com" in line for line in warnings), lines
    assert any("failed, retry at" in line and "refused the connection" in line
               for line in warnings), lines
    assert any(line.startswith("<6>") and "frontdesk is running" in line for line in lines)
    assert not [line for line in lines if line.startswith(("<0>", "<1>", "<2>", "<3>"))]


def test_json_log_format_from_the_config(tmp_path: Path) -> None:
    p = Proc(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/frontdesk.db")
    p.config.write_text(p.config.read_text().replace("[daemon]\n",
                                                     '[daemon]\nlog_format = "json"\n'))
    p.start()
    try:
        smtp_send(p.smtp_port, mail())
        wait_for(lambda: p.json("conversations"))
    finally:
        assert p.stop() == 0
    entries = [json.loads(line) for line in journal_lines(p.log.read_text())]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert {"frontdesk is running", "stopped cleanly"} <= {e["message"] for e in entries}
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error", "critical"}


def test_python_warnings_go_through_the_log(tmp_path: Path, root_logging: None) -> None:
    import warnings

    with open(tmp_path / "stderr", "w") as err, warnings.catch_warnings():
        warnings.simplefilter("always")
        configure("info", stream=err, environ={"JOURNAL_STREAM": stream_id(err)})
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    [first, *_] = (tmp_path / "stderr").read_text().splitlines()
    assert first.startswith("<4>WARNING py.warnings: ") and "an old API" in first
