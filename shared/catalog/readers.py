"""Catalog readers: a generic CSV / JSONL reader, the Flipkart adapter, and :func:`load_records` over them."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from shared.catalog.flipkart import read_flipkart
from shared.catalog.records import ATTRIBUTE_SEP, CatalogNotFound, Record, format_errors, join_text, open_text

Format = Literal["flipkart", "csv", "jsonl"]


def read_csv(
    path: Path,
    text_fields: Sequence[str] = ("title", "description"),
    label_field: str = "labels",
    id_field: str = "id",
    label_sep: str = "|",
    attributes_field: str | None = "has_attributes",
) -> Iterator[Record]:
    """Records from a CSV (optionally .gz): text columns joined by newlines, labels split on ``label_sep``.

    ``has_attributes`` comes from ``attributes_field`` (truthy strings) when the column exists,
    otherwise from whether any label is an attribute pair.
    """
    with format_errors(Path(path), "a CSV of listings"), open_text(Path(path)) as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            labels = tuple(s.strip() for s in (row.get(label_field) or "").split(label_sep) if s.strip())
            flag = row.get(attributes_field or "") if attributes_field else None
            has_attr = (
                flag.strip().lower() in {"1", "true", "yes"}
                if flag is not None
                else any(ATTRIBUTE_SEP in lab for lab in labels)
            )
            text = join_text(row.get(f, "") for f in text_fields)
            if text:
                yield Record(id=row.get(id_field) or str(i), text=text, labels=labels, has_attributes=has_attr)


def read_jsonl(path: Path, text_fields: Sequence[str] = ("title", "description")) -> Iterator[Record]:
    """Records from JSON lines ``{"id", "text" | <text_fields>, "labels": [...], "has_attributes"?}``."""
    with format_errors(Path(path), "JSON lines of listings"), open_text(Path(path)) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text") or join_text(str(obj.get(f) or "") for f in text_fields)
            labels = tuple(str(x) for x in obj.get("labels", []))
            has_attr = bool(obj.get("has_attributes", any(ATTRIBUTE_SEP in lab for lab in labels)))
            if text:
                yield Record(id=str(obj.get("id", i)), text=text, labels=labels, has_attributes=has_attr)


def locate_catalog(path: Path, fmt: Format) -> Path:
    """What :func:`load_records` reads for a ``path`` given on a command line, or :class:`CatalogNotFound`.

    For ``flipkart`` that is the data folder holding ``flipkart/``; the ``flipkart`` folder itself
    and its ``products.csv.gz`` are accepted too. Other formats read the file as it is.
    """
    path = Path(path)
    if not path.exists():
        raise CatalogNotFound(path, "no such file or folder")
    if fmt != "flipkart":
        if path.is_dir():
            raise CatalogNotFound(path, f"is a folder; --format {fmt} reads one file")
        return path
    root = path.parent.parent if path.is_file() else (path.parent if path.name == "flipkart" else path)
    if not (root / "flipkart" / "products.csv.gz").is_file():
        raise CatalogNotFound(path, "holds no flipkart/products.csv.gz (the Flipkart catalog)")
    return root


def load_records(path: Path, fmt: Format, limit: int | None = None) -> list[Record]:
    """Read records of a format; ``path`` is the data dir for ``flipkart``, a file otherwise."""
    readers: dict[str, Callable[[Path], Iterator[Record]]] = {
        "flipkart": read_flipkart,
        "csv": read_csv,
        "jsonl": read_jsonl,
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(readers)}")
    out: list[Record] = []
    for rec in readers[fmt](Path(path)):
        if limit is not None and len(out) >= limit:
            break
        out.append(rec)
    return out
