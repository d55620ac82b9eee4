"""Logging: one JSON object per line in production (`ROLLUP_LOG_FORMAT=json`), readable text in
a terminal (the default, and what `rollup run` writes to its log files).

Nothing here adds request data to records: callers never log client addresses or visitor ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# LogRecord attributes that are not caller-supplied `extra=` fields.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One line per record: time (UTC, ISO 8601), level, logger, message, exception, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        # default=str: an odd extra must not cost the log line; newlines stay escaped.
        return orjson.dumps(entry, default=str).decode()


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, fmt: str) -> None:
    """Root logger to stderr in the chosen format (replacing any earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def dict_config(level: str, fmt: str) -> dict[str, Any]:
    """The same setup as a `logging.config.dictConfig` dict, for Faust's worker, which
    configures logging itself when it starts."""
    formatter: dict[str, Any] = (
        {"()": "engine.logs.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }
