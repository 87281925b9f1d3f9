"""Structured logging for the relay: one event name plus fields, as JSON lines or text.

Callers pass only metadata (addresses, counts, reasons); payload bytes never reach a log record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER_NAME = "nitrokms.proxy"
log = logging.getLogger(LOGGER_NAME)


def event(level: int, name: str, **fields: Any) -> None:
    """Log event `name` with `fields` (plain JSON-able values)."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{key}={value}" for key, value in fields.items())
        return f"{stamp}Z {record.levelname.lower()} {record.getMessage()} {extra}".rstrip()


def configure(
    log_format: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send relay logs to `stream` (stderr) in `log_format` ("json" or "text")."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
