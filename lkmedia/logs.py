"""Logging for every lkmedia process: plain lines, or one JSON object per line with the
keys of the Go services' ``logging.json`` (zap). Secrets are redacted from every line."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from .redact import redact_text

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the keys of the Go services' logging.json (zap)."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": record.levelname.lower(), "ts": round(record.created, 3),
            "logger": record.name, "msg": redact_text(record.getMessage()),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v if isinstance(v, (int, float, bool, type(None))) else redact_text(str(v))
        if self.debug:
            out["caller"] = f"{record.pathname}:{record.lineno}"
            if record.exc_info:
                out["stacktrace"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """Plain lines; the traceback only with --debug."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        if not self.debug and (record.exc_info or record.exc_text):
            record = logging.makeLogRecord({**vars(record), "exc_info": None, "exc_text": None})
        return redact_text(super().format(record))


def setup_logging(level: str, json_log: bool, debug: bool, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(debug) if json_log else TextFormatter(debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("DEBUG" if debug else level.upper())
