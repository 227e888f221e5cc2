"""Labels -> tags: the training vocabulary, the label matrix, the Shopify mapping.

Pure functions; the only I/O is the taxonomy object passed in. Tag ids come from the one scheme
in :mod:`shared.tagmodel.tag_ids`; reading and normalising catalogs is :mod:`shared.catalog`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from shared.catalog.records import ATTRIBUTE_SEP, CATEGORY_SEP, Record
from shared.events import TagKind
from shared.tagmodel.card import VocabEntry
from shared.tagmodel.tag_ids import attribute_tag_id, category_tag_id, words
from shared.taxonomy import Attribute, Category, Taxonomy

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


def _has_cjk(name: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in name)


def _zh_tokens(name: str) -> tuple[str, ...]:
    return tuple(words(name))


def _name_key(name: str) -> tuple[str, ...]:
    """What a category name is matched on: English words (singular), or a Chinese name's own words."""
    return ("\x00zh", *_zh_tokens(name)) if _has_cjk(name) else _norm_tokens(name)


def _match_category(path: Sequence[str], ancestor_tax: str | None, by_name: dict, tax: Taxonomy) -> str | None:
    """The taxonomy category named like ``path[-1]`` that fits the tag's ancestors, or None.

    A same-named category in an unrelated branch is a false friend (jewellery "Chains" vs hardware
    chains, makeup "Nails" vs hardware nails), so a candidate must sit under the taxonomy root of the
    nearest mapped ancestor (``ancestor_tax``). With no mapped ancestor any goods branch may match
    (known false friends remain there, e.g. wallet "Clutches" -> vehicle clutches).
    """
    chinese = _has_cjk(path[-1])
    tokens = _zh_tokens if chinese else _norm_tokens
    leaf = set(tokens(path[-1]))
    if not leaf:
        return None
    context = {t for p in path[:-1] for t in tokens(p)} - leaf - _GENERIC_WORDS
    root_of = ancestor_tax.split("-", 1)[0] if ancestor_tax else None

    def ancestor_words(cat: Category) -> set[str]:
        return {t for p in (cat.path_zh if chinese else cat.path)[:-1] for t in tokens(p)}

    def fits(cat: Category) -> bool:
        if cat.path[0] in _NON_PRODUCT_ROOTS:
            return False
        return root_of is None or cat.id.split("-", 1)[0] == root_of

    candidates = [c for c in by_name.get(_name_key(path[-1]), []) if fits(c)]
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
    ancestor's match, then sharing most ancestor words, wins. A Chinese name matches the
    taxonomy's zh-CN names (NFKC, case-folded words) the same way. Attribute keys match attribute names
    (plus a few aliases such as ``Ideal For`` -> ``target_gender``); values match value names. Unmatched tags keep None.
    """
    by_name: dict[tuple[str, ...], list[Category]] = {}
    for cat in tax.categories.values():
        by_name.setdefault(_norm_tokens(cat.name), []).append(cat)
        if _has_cjk(cat.name_zh):  # a Chinese catalog's categories match the zh-CN names
            by_name.setdefault(_name_key(cat.name_zh), []).append(cat)
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
