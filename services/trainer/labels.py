"""Labels -> tags: Flipkart category paths, attribute normalisation, the vocabulary, the Shopify mapping.

Pure functions; the only I/O is the taxonomy object passed in.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from services.trainer.artifacts import VocabEntry
from shared.events import TagKind
from shared.taxonomy import Attribute, Category, Taxonomy

if TYPE_CHECKING:
    from services.trainer.data import Record

CATEGORY_SEP = " > "
ATTRIBUTE_SEP = "="

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
_SPEC_RE = re.compile(r'\{"key"=>"((?:[^"\\]|\\.)*)", "value"=>"((?:[^"\\]|\\.)*)"\}')

# Flipkart key -> Shopify attribute handle, where the names differ.
_TAXONOMY_KEYS = {
    "ideal for": "target_gender", "sleeve": "sleeve_length_type", "neck": "neckline",
    "closure": "closure_type", "outer material": "shoe_material",
}  # fmt: skip
# Flipkart value -> Shopify value name, per Shopify handle.
_TAXONOMY_VALUES = {
    "target_gender": {"women": "female", "girls": "female", "men": "male", "boys": "male"},
    "sleeve_length_type": {"full": "long", "full sleeve": "long", "half sleeve": "short"},
}
_SPELLING = {"jewellery": "jewelry", "colour": "color", "accessorie": "accessory"}


def slug(text: str) -> str:
    """Lower-case ASCII identifier piece: ``"Women's Clothing"`` -> ``"women-s-clothing"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


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


def category_tag_id(prefix: Sequence[str]) -> str:
    return "cat:" + "/".join(slug(p) for p in prefix)


def attribute_tag_id(key: str, value: str) -> str:
    return f"attr:{slug(key)}={slug(value)}"


def record_tag_ids(labels: Iterable[str], max_depth: int) -> set[str]:
    """Tag ids a record's labels imply: every category prefix up to ``max_depth``, every attribute."""
    out: set[str] = set()
    for label in labels:
        if ATTRIBUTE_SEP in label and CATEGORY_SEP not in label:
            key, _, value = label.partition(ATTRIBUTE_SEP)
            out.add(attribute_tag_id(key, value))
        else:
            path = [p.strip() for p in label.split(CATEGORY_SEP) if p.strip()]
            out.update(category_tag_id(path[:d]) for d in range(1, min(len(path), max_depth) + 1))
    return out


def build_vocabulary(
    records: Sequence[Record],
    max_depth: int = 3,
    min_count: int = 5,
    min_attribute_count: int = 5,
) -> list[VocabEntry]:
    """Tags with enough training examples, categories first (by level), then attributes.

    A category prefix is kept only if its parent is kept, so every category tag's ancestors are
    in the vocabulary (the closure the predictor relies on).
    """
    cat_counts: Counter[tuple[str, ...]] = Counter()
    attr_counts: Counter[tuple[str, str]] = Counter()
    for rec in records:
        prefixes: set[tuple[str, ...]] = set()
        attrs: set[tuple[str, str]] = set()
        for label in rec.labels:
            if ATTRIBUTE_SEP in label and CATEGORY_SEP not in label:
                key, _, value = label.partition(ATTRIBUTE_SEP)
                attrs.add((key.strip(), value.strip()))
            else:
                path = tuple(p.strip() for p in label.split(CATEGORY_SEP) if p.strip())
                prefixes.update(path[:d] for d in range(1, min(len(path), max_depth) + 1))
        cat_counts.update(prefixes)
        attr_counts.update(attrs)
    kept: dict[tuple[str, ...], int] = {}
    for prefix in sorted(cat_counts, key=lambda p: (len(p), p)):
        if cat_counts[prefix] >= min_count and (len(prefix) == 1 or prefix[:-1] in kept):
            kept[prefix] = cat_counts[prefix]
    vocab = [
        VocabEntry(
            tag_id=category_tag_id(p),
            name=p[-1],
            kind=TagKind.CATEGORY,
            parent=category_tag_id(p[:-1]) if len(p) > 1 else None,
            level=len(p),
            support=n,
        )
        for p, n in kept.items()
    ]
    seen = {v.tag_id for v in vocab}
    for (key, value), n in sorted(attr_counts.items()):
        tid = attribute_tag_id(key, value)
        if n >= min_attribute_count and tid not in seen:
            seen.add(tid)
            vocab.append(VocabEntry(tag_id=tid, name=f"{key}: {value}", kind=TagKind.ATTRIBUTE, level=0, support=n))
    vocab.sort(key=lambda v: (v.kind != TagKind.CATEGORY, v.level, v.tag_id))
    return vocab


def label_matrix(records: Sequence[Record], vocab: Sequence[VocabEntry]) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``Y`` and loss mask ``M`` (both ``[n, n_tags]`` float32).

    Attribute columns are masked out for records whose attributes are unknown: absence of a
    specification is not evidence that the value does not apply.
    """
    index = {v.tag_id: i for i, v in enumerate(vocab)}
    is_attr = np.array([v.kind == TagKind.ATTRIBUTE for v in vocab], dtype=bool)
    max_depth = max((v.level for v in vocab), default=1)
    y = np.zeros((len(records), len(vocab)), dtype=np.float32)
    m = np.ones_like(y)
    for r, rec in enumerate(records):
        for tid in record_tag_ids(rec.labels, max_depth):
            if tid in index:
                y[r, index[tid]] = 1.0
        if not rec.has_attributes:
            m[r, is_attr] = 0.0
    return y, m


# ---------------------------------------------------------------- Shopify mapping


def _norm_tokens(name: str) -> tuple[str, ...]:
    text = name.lower().replace("&", " and ").replace("'s", "")
    tokens = []
    for tok in re.findall(r"[a-z0-9]+", text):
        tok = _SPELLING.get(tok, tok)
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss"):
            tok = tok[:-1]  # crude singular: "Shirts" matches "Shirt"
        tok = _SPELLING.get(tok, tok)
        if tok != "and":
            tokens.append(tok)
    return tuple(tokens)


# Words that every branch uses: sharing them says nothing about two categories being related.
_GENERIC_WORDS = frozenset({"accessory", "supply", "supplie", "other", "need", "product", "item", "equipment"})
# Taxonomy branches that hold no goods: a product category never maps into them.
_NON_PRODUCT_ROOTS = frozenset({"Services"})


def _match_category(path: Sequence[str], ancestor_tax: str | None, by_name: dict, tax: Taxonomy) -> str | None:
    """The taxonomy category named like ``path[-1]`` that fits the tag's ancestors, or None.

    A same-named category in an unrelated branch is a false friend (jewellery "Chains" vs hardware
    chains, makeup "Nails" vs hardware nails), so a candidate must sit under the taxonomy root of the
    nearest mapped ancestor (``ancestor_tax``). With no mapped ancestor any goods branch may match
    (known false friends remain there, e.g. wallet "Clutches" -> vehicle clutches).
    """
    leaf = set(_norm_tokens(path[-1]))
    context = {t for p in path[:-1] for t in _norm_tokens(p)} - leaf - _GENERIC_WORDS
    root_of = ancestor_tax.split("-", 1)[0] if ancestor_tax else None

    def ancestor_words(cat: Category) -> set[str]:
        return {t for p in cat.path[:-1] for t in _norm_tokens(p)}

    def fits(cat: Category) -> bool:
        if cat.path[0] in _NON_PRODUCT_ROOTS:
            return False
        return root_of is None or cat.id.split("-", 1)[0] == root_of

    candidates = [c for c in by_name.get(_norm_tokens(path[-1]), []) if fits(c)]
    if not candidates:
        return None

    def score(cat: Category) -> tuple[int, int, int, str]:
        under_parent = ancestor_tax is not None and cat.id.startswith(ancestor_tax + "-")
        return (int(under_parent), len(context & ancestor_words(cat)), -cat.depth, cat.id)

    return max(candidates, key=score).id


def _match_attribute(key: str, tax: Taxonomy) -> Attribute | None:
    handle = _TAXONOMY_KEYS.get(key.lower())
    return tax.attributes.get(handle) if handle else tax.attribute_by_name(key)


def map_to_taxonomy(vocab: Sequence[VocabEntry], tax: Taxonomy) -> list[VocabEntry]:
    """Attach Shopify ids, Chinese names and allowed attributes to the tags that match the taxonomy.

    Categories match on the (normalised, singularised) leaf name, among taxonomy categories that fit
    the tag's ancestors (see :func:`_match_category`); of several, the one under the nearest mapped
    ancestor's match, then sharing most ancestor words, wins. Attribute keys match attribute names
    (plus a few aliases such as ``Ideal For`` -> ``target_gender``); values match value names. Unmatched tags keep None.
    """
    by_name: dict[tuple[str, ...], list[Category]] = {}
    for cat in tax.categories.values():
        by_name.setdefault(_norm_tokens(cat.name), []).append(cat)
    out: list[VocabEntry] = []
    mapped: dict[str, str | None] = {}
    paths: dict[str, tuple[str, ...]] = {}
    for v in vocab:
        if v.kind == TagKind.CATEGORY:
            path = (*paths.get(v.parent or "", ()), v.name)
            paths[v.tag_id] = path
            ancestor_tax = mapped.get(v.parent or "")
            tid = _match_category(path, ancestor_tax, by_name, tax)
            # Children look at the nearest mapped ancestor, even across an unmapped level.
            mapped[v.tag_id] = tid or ancestor_tax
            if tid is None:
                out.append(v)
                continue
            cat = tax.categories[tid]
            out.append(
                v.model_copy(
                    update={
                        "taxonomy_id": tid,
                        "name_zh": cat.name_zh,
                        "allowed_attributes": sorted(tax.allowed_attributes(tid)),
                    }
                )
            )
        else:
            key, _, value = v.name.partition(": ")
            attr = _match_attribute(key, tax)
            if attr is None:
                out.append(v)
                continue
            wanted = _TAXONOMY_VALUES.get(attr.handle, {}).get(value.lower(), value.lower())
            key_words = set(_norm_tokens(key))
            target = tuple(t for t in _norm_tokens(wanted) if t not in key_words)
            match = next((x for x in attr.values if _norm_tokens(x.name) == target), None)
            update = {
                "attribute_handle": attr.handle,
                "taxonomy_id": match.handle if match else attr.handle,
                "name_zh": f"{attr.name_zh}: {match.name_zh if match else value}",
            }
            out.append(v.model_copy(update=update))
    return out
