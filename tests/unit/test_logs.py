"""Logging configuration: one format for our lines and our dependencies', nothing secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from mailledger.config import LoggingSettings
from mailledger.logs import bound_ids, configure_logging, get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    floors = {name: logging.getLogger(name).level for name in ("mail.log", "sqlalchemy")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, floor in floors.items():
        logging.getLogger(name).setLevel(floor)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_bound_trace_id() -> None:
    """Under format=json every line is one JSON object with the connection's trace id."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="info"), stream=out)
    structlog.contextvars.bind_contextvars(trace_id="abc123")
    get_logger("mailledger.test").info("message stored", queue_id="Q1")
    logging.getLogger("some.library").warning("library says %s", "hello")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "message stored"
    assert lines[0]["trace_id"] == "abc123"
    assert lines[0]["queue_id"] == "Q1"
    assert lines[0]["level"] == "info"
    assert lines[1]["event"] == "library says hello"
    assert lines[1]["trace_id"] == "abc123"


@pytest.mark.usefixtures("restore_logging")
def test_aiosmtpd_data_and_auth_lines_never_logged() -> None:
    """aiosmtpd's INFO/DEBUG lines (commands, DATA, AUTH) are dropped even at level debug."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="debug"), stream=out)
    mail_log = logging.getLogger("mail.log")
    mail_log.debug("DATA readline: %s", b"secret body line")
    mail_log.info("%r >> %r", ("127.0.0.1", 1), b"AUTH PLAIN c2VjcmV0")
    mail_log.warning("%r unrecognised: %s", ("127.0.0.1", 1), "FROB")
    text = out.getvalue()
    assert "secret" not in text
    assert "c2VjcmV0" not in text
    assert "unrecognised" in text


@pytest.mark.usefixtures("restore_logging")
def test_console_format_and_no_doubled_handlers() -> None:
    """Console format is not JSON, and configuring twice does not print every line twice."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="console"), stream=out)
    configure_logging(LoggingSettings(format="console"), stream=out)
    get_logger("mailledger.test").warning("once only")
    text = out.getvalue()
    assert text.count("once only") == 1
    assert not text.lstrip().startswith("{")


@pytest.mark.usefixtures("restore_logging")
def test_auto_is_json_when_not_a_terminal() -> None:
    """format=auto writes JSON lines to a stream that is not a terminal (systemd's journal)."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="auto"), stream=out)
    get_logger("mailledger.test").warning("to the journal")
    assert json.loads(out.getvalue().splitlines()[0])["event"] == "to the journal"


@pytest.mark.usefixtures("restore_logging")
def test_bound_ids_reach_every_line_within_and_none_after() -> None:
    """Lines within ``bound_ids`` carry the ids, ours and our dependencies'; a line's own
    value wins; after it, and in a thread started outside it, nothing is bound."""
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="info"), stream=out)
    logger = get_logger("mailledger.test")
    ids = {"queue_id": "Q1", "trace_id": "T1", "tenant_id": [1]}
    with bound_ids(ids):
        logger.info("processed")
        logger.info("retried", queue_id="Q2")
        logging.getLogger("some.library").warning("library says %s", "hello")
    logger.info("after")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line.get("queue_id"), line.get("trace_id")) for line in lines] == [
        ("processed", "Q1", "T1"),
        ("retried", "Q2", "T1"),
        ("library says hello", "Q1", "T1"),
        ("after", None, None),
    ]
    assert lines[0]["tenant_id"] == [1]
