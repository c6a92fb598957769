"""Logging, configured in one place: structlog in front, the standard library behind it.

JSON lines under systemd (stderr is not a terminal), a readable console on a terminal. The
standard-library loggers of our dependencies (aiosmtpd's ``mail.log``, SQLAlchemy) go through
the same renderer, so one line format reaches the journal. aiosmtpd logs every command
line and DATA line at INFO/DEBUG; its logger is held at WARNING or above so message bodies and
AUTH exchanges are never written anywhere.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

from mailledger.config import LoggingSettings

# Loggers of our dependencies and the quietest level they may log at.
_FLOORS = {
    # aiosmtpd logs each command (with the address) at INFO and each DATA line at DEBUG.
    "mail.log": logging.WARNING,
    # SQLAlchemy logs statements and parameters (addresses, message metadata) at INFO.
    "sqlalchemy": logging.WARNING,
}

_HANDLER_NAME = "mailledger"


def _wants_json(settings: LoggingSettings, stream: TextIO) -> bool:
    if settings.format == "json":
        return True
    if settings.format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(settings: LoggingSettings, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one handler on ``stream`` (stderr by default).

    Safe to call again (the CLI and tests do): the previous handler is replaced, not doubled.
    """
    out = sys.stderr if stream is None else stream
    level = logging.getLevelName(settings.level.upper())
    as_json = _wants_json(settings, out)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    renderer: list[Processor]
    if as_json:
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        isatty = getattr(out, "isatty", None)
        renderer = [structlog.dev.ConsoleRenderer(colors=bool(callable(isatty) and isatty()))]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in _FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named for its module, so lines say where they come from."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
