"""JSON Schema files generated from the event models in :mod:`shared.events`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.events import ALL_EVENTS


def schema_file_name(model_name: str) -> str:
    """``ListingEvent`` → ``listing-event.schema.json``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", model_name).lower() + ".schema.json"


def schema_documents() -> dict[str, str]:
    """File name → JSON text for every event type, as they should be on disk."""
    docs = {}
    for model in ALL_EVENTS:
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://tagloop.dev/schemas/{schema_file_name(model.__name__)}"
        docs[schema_file_name(model.__name__)] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return docs


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    return [n for n, text in schema_documents().items()
            if not (directory / n).exists() or (directory / n).read_text() != text]
