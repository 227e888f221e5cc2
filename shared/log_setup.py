"""Service logs: plain lines by default; one JSON object per line with ``TAGLOOP_LOG_FORMAT=json``.

A log call adds what it is about with ``extra=``; the JSON lines carry those fields by name so a
log store can find every line about one listing, event or model version:

>>> import io, json, logging
>>> stream = io.StringIO()
>>> handler = logging.StreamHandler(stream)
>>> handler.setFormatter(JsonFormatter())
>>> log = logging.getLogger("doctest.json")
>>> log.addHandler(handler)
>>> log.warning("dead-lettered", extra={"listing_id": "l1", "model_version": "3"})
>>> line = json.loads(stream.getvalue())
>>> line["msg"], line["listing_id"], line["model_version"], line["level"]
('dead-lettered', 'l1', '3', 'WARNING')
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from shared.settings import Settings

# What a line may be about: kept as JSON fields when a log call passes them in ``extra``.
CONTEXT_FIELDS = ("event_id", "listing_id", "user_id", "model_name", "model_version", "topic", "partition",
                  "offset", "reason", "job_id", "trigger")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(), "pid": record.process,
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(settings: Settings, level: str | int = logging.INFO, text_format: str = TEXT_FORMAT) -> None:
    """The root handler of a service process, in the configured format (replaces earlier handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
