"""Log lines: stdlib logging, one line per event, as text or JSON, on stderr.

Loggers carry fields (session id, listener, peer) bound once per connection, so every line a
session writes can be found by its id.  Extra per-line fields go in `extra=`:

    log = get_logger("smtp", session=conn.session_id)
    log.info("delivered", extra={"recipients": 3, "size": 5120})
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

ROOT: Final = "postoffice"
FORMATS: Final = ("text", "json")
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines all carry the same fields (session id, listener, peer, ...)."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object]) -> None:
        super().__init__(logger, dict(fields))

    @property
    def fields(self) -> Mapping[str, object]:
        return self.extra or {}

    def bind(self, **fields: object) -> BoundLogger:
        return BoundLogger(self.logger, {**self.fields, **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        # The stdlib adapter replaces the caller's `extra`; merge it with the bound fields.
        kwargs["extra"] = {"fields": {**self.fields, **(kwargs.get("extra") or {})}}
        return msg, kwargs


def get_logger(component: str, /, **fields: object) -> BoundLogger:
    """A logger for `postoffice.<component>` with `fields` on every line."""
    return BoundLogger(logging.getLogger(f"{ROOT}.{component}"), fields)


def new_session_id() -> str:
    """A short random id (8 base32 characters) that tells one connection's lines apart."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Send every `postoffice.*` line to `stream` (stderr) in the given format.

    Replaces handlers set by an earlier call, so calling it again (tests, a forked worker)
    never doubles lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger(ROOT)
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False


def _fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _component(record: logging.LogRecord) -> str:
    return record.name.removeprefix(f"{ROOT}.")


class TextFormatter(logging.Formatter):
    """`2026-11-30T21:30:00.123Z INFO server message key=value ...` for people and grep."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", "\\n")  # one event, one line
        parts = [_timestamp(record), record.levelname, _component(record), message]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            # The traceback stays in the log, but on one line so one event is one line.
            line += " exception=" + json.dumps(self.formatException(record.exc_info))
        return line


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "component": _component(record),
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
