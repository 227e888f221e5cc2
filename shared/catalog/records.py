"""A labelled catalog record: ``{id, text, labels}``, and the fingerprint of a list of them.

Labels are strings of two kinds:

- a category path, levels joined by ``" > "`` (``"Clothing > Women's Clothing > Shorts"``);
  every prefix of it becomes a category tag;
- an attribute pair ``"Key=Value"`` (``"Fabric=Cotton"``).

``has_attributes`` says whether the listing's attributes are known at all: listings without
specifications are not negatives for attribute tags, so their attribute labels are masked.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CATEGORY_SEP = " > "
ATTRIBUTE_SEP = "="


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    labels: tuple[str, ...]
    has_attributes: bool = False

    @property
    def title(self) -> str:
        """First line of the text: what the split groups on."""
        return self.text.split("\n", 1)[0]


def open_text(path: Path) -> IO[str]:
    """A UTF-8 text file, gunzipped when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


class CatalogFormatError(ValueError):
    """A catalog file that cannot be read as the format it was given as."""

    def __init__(self, path: Path, expected: str, reason: str) -> None:
        super().__init__(f"{path} is not {expected} ({reason})")
        self.path = path


class CatalogNotFound(FileNotFoundError):
    """No catalog where a command was told to look; names the path the user gave."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(errno.ENOENT, why, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


@contextlib.contextmanager
def format_errors(path: Path, expected: str) -> Iterator[None]:
    """Turn the parse errors of reading ``path`` into a :class:`CatalogFormatError` naming it."""
    try:
        yield
    except KeyError as exc:  # a column the format needs is missing
        raise CatalogFormatError(path, expected, f"no column {exc.args[0]!r}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise CatalogFormatError(path, expected, str(exc)) from exc


def join_text(parts: Iterable[str]) -> str:
    """Non-empty parts, stripped, one per line."""
    return "\n".join(p.strip() for p in parts if p and p.strip())


def fingerprint(records: Sequence[Record]) -> str:
    """SHA-256 over ids, texts and labels in order: identifies the training data of a model."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.text, list(r.labels), r.has_attributes]).encode())
    return h.hexdigest()
