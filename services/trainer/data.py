"""Training records from a catalog: a generic CSV/JSONL reader and the Flipkart adapter.

A record is ``{id, text, labels}``. Labels are strings of two kinds:

- a category path, levels joined by ``" > "`` (``"Clothing > Women's Clothing > Shorts"``);
  every prefix of it becomes a category tag;
- an attribute pair ``"Key=Value"`` (``"Fabric=Cotton"``).

``has_attributes`` says whether the listing's attributes are known at all: listings without
specifications are not negatives for attribute tags, so their attribute labels are masked.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from services.trainer.labels import category_path_from_flipkart_tree, parse_flipkart_specifications

Format = Literal["flipkart", "csv", "jsonl"]
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


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _join_text(parts: Iterable[str]) -> str:
    return "\n".join(p.strip() for p in parts if p and p.strip())


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
    with _open_text(Path(path)) as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            labels = tuple(s.strip() for s in (row.get(label_field) or "").split(label_sep) if s.strip())
            flag = row.get(attributes_field or "") if attributes_field else None
            has_attr = (
                flag.strip().lower() in {"1", "true", "yes"}
                if flag is not None
                else any(ATTRIBUTE_SEP in lab for lab in labels)
            )
            text = _join_text(row.get(f, "") for f in text_fields)
            if text:
                yield Record(id=row.get(id_field) or str(i), text=text, labels=labels, has_attributes=has_attr)


def read_jsonl(path: Path, text_fields: Sequence[str] = ("title", "description")) -> Iterator[Record]:
    """Records from JSON lines ``{"id", "text" | <text_fields>, "labels": [...], "has_attributes"?}``."""
    with _open_text(Path(path)) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            obj = json.loads(line)
            text = obj.get("text") or _join_text(str(obj.get(f) or "") for f in text_fields)
            labels = tuple(str(x) for x in obj.get("labels", []))
            has_attr = bool(obj.get("has_attributes", any(ATTRIBUTE_SEP in lab for lab in labels)))
            if text:
                yield Record(id=str(obj.get("id", i)), text=text, labels=labels, has_attributes=has_attr)


def read_flipkart(data_dir: Path) -> Iterator[Record]:
    """The Flipkart sample: 20k titles with category trees, specifications joined in by ``uniq_id``.

    Text is the title, plus the description where the specs file has one. Category labels drop
    the tree's last element (usually the product name). Attribute labels come from
    ``product_specifications``, normalised.
    """
    flipkart = Path(data_dir) / "flipkart"
    specs: dict[str, dict[str, str]] = {}
    specs_file = flipkart / "products_with_specs.csv.gz"
    if specs_file.exists():
        with _open_text(specs_file) as fh:
            specs = {row["uniq_id"]: row for row in csv.DictReader(fh)}
    with _open_text(flipkart / "products.csv.gz") as fh:
        for row in csv.DictReader(fh):
            uid = row["uniq_id"]
            title = row["product_name"].strip()
            extra = specs.get(uid)
            labels: list[str] = []
            path = category_path_from_flipkart_tree(row["product_category_tree"])
            if path:
                labels.append(CATEGORY_SEP.join(path))
            pairs = parse_flipkart_specifications(extra.get("product_specifications", "")) if extra else []
            labels += [f"{k}{ATTRIBUTE_SEP}{v}" for k, v in pairs]
            text = _join_text([title, extra.get("description", "") if extra else ""])
            if text:
                yield Record(id=uid, text=text, labels=tuple(labels), has_attributes=bool(pairs))


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


def fingerprint(records: Sequence[Record]) -> str:
    """SHA-256 over ids, texts and labels in order: identifies the training data of a model."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.id, r.text, list(r.labels), r.has_attributes]).encode())
    return h.hexdigest()
