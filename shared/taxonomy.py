"""The Shopify product taxonomy (categories in en + zh-CN, attributes, values, category->attribute links).

Read-only knowledge graph used to map tags to taxonomy ids, give them Chinese names and
restrict attribute tags to the attributes a category allows.

Examples
--------
>>> tax = load_taxonomy(Path("../shared/data/shopify-taxonomy"))  # doctest: +SKIP
>>> tax.categories["ap-2-2-1"].full_name  # doctest: +SKIP
'Animals & Pet Supplies > Pet Supplies > Cat Supplies > Cat Food'
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

_CATEGORY_PREFIX = "gid://shopify/TaxonomyCategory/"
_ATTRIBUTE_PREFIX = "gid://shopify/TaxonomyAttribute/"
_VALUE_PREFIX = "gid://shopify/TaxonomyValue/"
# The C loader reads the 40k category-attribute links ~10x faster than the pure-Python one.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def normalize_handle(handle: str) -> str:
    """One spelling for attribute handles.

    The category-attribute YAML writes ``target_gender`` while ``attributes.json`` writes
    ``target-gender``; both become ``target_gender``.
    """
    return re.sub(r"[^a-z0-9]+", "_", handle.lower()).strip("_")


@dataclass(frozen=True)
class Category:
    """One taxonomy category with its English and Chinese paths (root first)."""

    id: str
    path: tuple[str, ...]
    path_zh: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def name_zh(self) -> str:
        return self.path_zh[-1]

    @property
    def depth(self) -> int:
        """1 for roots."""
        return len(self.path)

    @property
    def parent_id(self) -> str | None:
        head, sep, _ = self.id.rpartition("-")
        return head if sep else None

    @property
    def full_name(self) -> str:
        return " > ".join(self.path)


@dataclass(frozen=True)
class AttributeValue:
    id: str  # numeric part of the gid, e.g. "16300"
    name: str
    name_zh: str
    handle: str


@dataclass(frozen=True)
class Attribute:
    """A taxonomy attribute; ``handle`` is normalised (``target_gender``)."""

    id: str
    name: str
    name_zh: str
    handle: str
    values: tuple[AttributeValue, ...] = ()


@dataclass
class Taxonomy:
    """Categories, attributes and the attributes each category allows."""

    categories: dict[str, Category]
    attributes: dict[str, Attribute] = field(default_factory=dict)  # by normalised handle
    category_attributes: dict[str, frozenset[str]] = field(default_factory=dict)  # id -> handles

    def ancestors(self, category_id: str) -> list[Category]:
        """Ancestors of a category, root first, excluding the category itself."""
        out: list[Category] = []
        parent = self.categories[category_id].parent_id
        while parent is not None:
            cat = self.categories[parent]
            out.append(cat)
            parent = cat.parent_id
        out.reverse()
        return out

    def roots(self) -> list[Category]:
        return [c for c in self.categories.values() if c.parent_id is None]

    def children(self, category_id: str) -> list[Category]:
        return [c for c in self.categories.values() if c.parent_id == category_id]

    def allowed_attributes(self, category_id: str) -> frozenset[str]:
        """Normalised attribute handles the taxonomy allows for a category (empty if unknown)."""
        return self.category_attributes.get(category_id, frozenset())

    def attribute_by_name(self, name: str) -> Attribute | None:
        """Look an attribute up by its English name or handle, case-insensitively."""
        return self.attributes.get(normalize_handle(name))


def _read_gid_lines(path: Path, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith(prefix):
            continue
        gid, _, rest = line.partition(" : ")
        out[gid[len(prefix) :].strip()] = rest.strip()
    return out


def _read_categories(root: Path) -> dict[str, Category]:
    en = _read_gid_lines(root / "en" / "categories.txt", _CATEGORY_PREFIX)
    zh_file = root / "zh-CN" / "categories.txt"
    zh = _read_gid_lines(zh_file, _CATEGORY_PREFIX) if zh_file.exists() else {}
    cats: dict[str, Category] = {}
    for cid, full in en.items():
        path = tuple(full.split(" > "))
        path_zh = tuple(zh[cid].split(" > ")) if cid in zh else ()
        # A zh path whose length differs (a name holding " > ") cannot be aligned: use English.
        if len(path_zh) != len(path):
            path_zh = path
        cats[cid] = Category(id=cid, path=path, path_zh=path_zh)
    return cats


def _read_attributes_json(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return list(data.get("attributes", []))


def _read_attributes(root: Path) -> dict[str, Attribute]:
    en = _read_attributes_json(root / "en" / "attributes.json.gz")
    zh = {a["id"]: a for a in _read_attributes_json(root / "zh-CN" / "attributes.json.gz")}
    attrs: dict[str, Attribute] = {}
    for a in en:
        za = zh.get(a["id"], {})
        zh_values = {v["id"]: v["name"] for v in za.get("values", [])}
        values = tuple(
            AttributeValue(
                id=v["id"].removeprefix(_VALUE_PREFIX),
                name=v["name"],
                name_zh=zh_values.get(v["id"], v["name"]),
                handle=v["handle"],
            )
            for v in a.get("values", [])
        )
        base = Attribute(
            id=a["id"].removeprefix(_ATTRIBUTE_PREFIX),
            name=a["name"],
            name_zh=za.get("name", a["name"]),
            handle=normalize_handle(a["handle"]),
            values=values,
        )
        attrs[base.handle] = base
        # Extended attributes (e.g. "top color" of "color") share the base attribute's values.
        zh_ext = {e["handle"]: e["name"] for e in za.get("extended_attributes", [])}
        for ext in a.get("extended_attributes", []):
            handle = normalize_handle(ext["handle"])
            attrs.setdefault(
                handle,
                Attribute(
                    id=base.id,
                    name=ext["name"],
                    name_zh=zh_ext.get(ext["handle"], ext["name"]),
                    handle=handle,
                    values=values,
                ),
            )
    return attrs


def _read_category_attributes(root: Path) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for yml in sorted((root / "category-attributes").glob("*.yml")):
        for entry in yaml.load(yml.read_text(encoding="utf-8"), Loader=_Loader) or []:
            handles = entry.get("attributes") or []
            out[str(entry["id"])] = frozenset(normalize_handle(h) for h in handles)
    return out


@lru_cache(maxsize=4)
def _load_cached(root: Path) -> Taxonomy:
    return Taxonomy(
        categories=_read_categories(root),
        attributes=_read_attributes(root),
        category_attributes=_read_category_attributes(root),
    )


def load_taxonomy(root: Path) -> Taxonomy:
    """Load the taxonomy from ``root`` (``data_dir / "shopify-taxonomy"``), cached per resolved path.

    Parameters
    ----------
    root
        Directory holding ``en/``, ``zh-CN/`` and ``category-attributes/``.

    Returns
    -------
    Taxonomy
        Shared, cached instance: treat it as read-only.
    """
    return _load_cached(Path(root).resolve())
