"""Logging for the API: one key=value line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time_text = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        line = (
            f"time={time_text}.{int(record.msecs):03d}Z level={record.levelname} "
            f"pid={record.process} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            line += " traceback=" + repr(self.formatException(record.exc_info))
        return line


def configure() -> None:
    """Send the `app` loggers to stderr once; LOG_LEVEL sets the level."""
    logger = logging.getLogger("app")
    if getattr(logger, "_vat_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = _KeyValueFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    logger.propagate = False
    logger._vat_configured = True  # type: ignore[attr-defined]
