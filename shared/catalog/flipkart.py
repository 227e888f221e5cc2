"""The Flipkart sample as labelled records: category trees, normalised specifications.

Text is the title, plus the description where the specs file has one. Category labels drop
the tree's last element (usually the product name). Attribute labels come from
``product_specifications``, normalised (keys that identify or measure a SKU dropped, lists split,
audience spellings merged).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from shared.catalog.records import ATTRIBUTE_SEP, CATEGORY_SEP, Record, format_errors, join_text, open_text

# Keys that identify a SKU or measure it rather than describe it: never tags.
_SKIPPED_KEYS = frozenset(
    {
        "style code", "model number", "model name", "model id", "brand", "sales package",
        "number of contents in sales package", "pack of", "weight", "width", "height", "depth",
        "diameter", "ean/upc", "warranty summary", "warranty service type", "covered in warranty",
        "not covered in warranty", "other features", "other details", "series", "fabric care",
        "wash care", "body & frame material details", "care instructions",
    }
)  # fmt: skip
_KEY_ALIASES = {"colour": "Color", "ideal for": "Ideal For", "gender": "Ideal For"}
_EMPTY_VALUES = frozenset({"", "na", "n/a", "no", "none", "-", "not applicable", "nil"})
_AUDIENCE = {
    "women": "Women", "womens": "Women", "woman": "Women", "ladies": "Women",
    "men": "Men", "mens": "Men", "man": "Men", "gents": "Men",
    "girl": "Girls", "girls": "Girls", "boy": "Boys", "boys": "Boys",
    "baby": "Baby", "babies": "Baby", "infant": "Baby", "infants": "Baby",
    "kid": "Kids", "kids": "Kids", "unisex": "Unisex",
}  # fmt: skip
FLIPKART_FORMAT = "a Flipkart products CSV (gzip)"
_SPEC_RE = re.compile(r'\{"key"=>"((?:[^"\\]|\\.)*)", "value"=>"((?:[^"\\]|\\.)*)"\}')


def category_path_from_flipkart_tree(tree: str) -> tuple[str, ...]:
    """Category levels of a Flipkart ``product_category_tree``, without its last element.

    The last element repeats or truncates the product name (README), so it is never a
    category; a one-element tree therefore yields no category.
    """
    try:
        items = json.loads(tree)
        raw = items[0] if isinstance(items, list) and items else str(items)
    except (json.JSONDecodeError, TypeError):
        raw = tree.strip().strip('[]"')
    levels = [lvl.strip() for lvl in str(raw).split(">>")]
    levels = [lvl for lvl in levels if lvl]
    return tuple(levels[:-1])


def normalize_attribute_key(key: str) -> str | None:
    """Canonical attribute name (``"ideal for"`` -> ``"Ideal For"``), or None for skipped keys."""
    words = " ".join(key.split())
    low = words.lower()
    if not low or low in _SKIPPED_KEYS:
        return None
    return _KEY_ALIASES.get(low) or " ".join(w[:1].upper() + w[1:] for w in words.split(" "))


def normalize_attribute_values(key: str, value: str) -> list[str]:
    """Canonical values of one key/value pair; comma lists split, measurements and "No"/"NA" dropped."""
    out: list[str] = []
    for part in value.split(","):
        val = " ".join(part.split()).strip(" .;")
        low = val.lower()
        if low in _EMPTY_VALUES or len(val) > 40:
            continue
        # Sizes, weights, counts and codes are not tags; fractions like "3/4 Sleeve" are.
        if re.search(r"\d", val) and not re.match(r"^\d+/\d+\s+[A-Za-z]", val):
            continue
        if key == "Ideal For":
            canon = _AUDIENCE.get(re.sub(r"[^a-z]", "", low.replace("'s", "")))
            if canon is None:
                continue
            val = canon
        else:
            val = " ".join(w[:1].upper() + w[1:] for w in val.split(" "))
        if val not in out:
            out.append(val)
    return out


def normalize_attribute(key: str, value: str) -> list[tuple[str, str]]:
    """Normalised ``(key, value)`` pairs of one raw specification (possibly none)."""
    canon_key = normalize_attribute_key(key)
    if canon_key is None:
        return []
    return [(canon_key, v) for v in normalize_attribute_values(canon_key, value)]


def parse_flipkart_specifications(spec: str) -> list[tuple[str, str]]:
    """Normalised attribute pairs from ``{"product_specification"=>[{"key"=>..., "value"=>...}]}``.

    Entries without a key are free text (care instructions) and are ignored.
    """
    pairs: list[tuple[str, str]] = []
    for m in _SPEC_RE.finditer(spec or ""):
        for pair in normalize_attribute(m.group(1), m.group(2)):
            if pair not in pairs:
                pairs.append(pair)
    return pairs


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
        with format_errors(specs_file, FLIPKART_FORMAT), open_text(specs_file) as fh:
            specs = {row["uniq_id"]: row for row in csv.DictReader(fh)}
    products = flipkart / "products.csv.gz"
    with format_errors(products, FLIPKART_FORMAT), open_text(products) as fh:
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
            text = join_text([title, extra.get("description", "") if extra else ""])
            if text:
                yield Record(id=uid, text=text, labels=tuple(labels), has_attributes=bool(pairs))
