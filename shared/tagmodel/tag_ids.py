"""The one tag-id scheme of tagloop: trained tags, zero-shot tags and feedback labels all use it.

* category: ``cat:`` + the slugs of its path, root first, joined by ``/``
  (``("Clothing", "Women's Clothing")`` -> ``cat:clothing/women-s-clothing``);
* attribute: ``attr:<slug(key)>=<slug(value)>`` (``attr:fabric=cotton``).

A slug is Unicode-safe: the name is NFKC-normalised and case-folded, letters and digits of any
script are kept (with the combining marks that belong to them), every other run of characters
becomes one ``-``. ASCII names get exactly the ids they had before Unicode support, so the
vocabularies of versions already exported stay valid; a name with no letter or digit at all
gets a short hash of itself, so distinct names never share an id by losing every character.

Examples
--------
>>> category_tag_id(["Clothing", "Women's Clothing"])
'cat:clothing/women-s-clothing'
>>> category_tag_id(["服装", "女装"])
'cat:服装/女装'
>>> attribute_tag_id("Fabric", "Crêpe")
'attr:fabric=crêpe'
>>> slug("★★★")
'x-597d9776'
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

CATEGORY_PREFIX = "cat:"
ATTRIBUTE_PREFIX = "attr:"
CATEGORY_SEP = "/"
FALLBACK_PREFIX = "x"
# Tag.tag_id in shared/events.py holds at most 200 characters. Longer ids (paths deeper than the
# three levels tagloop tags today) keep a readable head and end in a hash of the whole id.
MAX_TAG_ID_LENGTH = 200
_HASH_CHARS = 10


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> list[str]:
    """The runs of letters and digits of any script in ``text`` (NFKC, case-folded), in order.

    Combining marks (Devanagari vowel signs, decomposed accents) stay with the letter they follow;
    every other character separates. The one rule behind :func:`slug` and the trainer's
    leak-free split (``services.trainer.split.normalize_title``).

    >>> words("Women's Café-Crème  连衣裙!")
    ['women', 's', 'café', 'crème', '连衣裙']
    """
    out: list[str] = []
    word: list[str] = []
    for ch in _normalize(text):
        if ch.isalnum() or (word and unicodedata.category(ch).startswith("M")):
            word.append(ch)
        elif word:
            out.append("".join(word))
            word = []
    if word:
        out.append("".join(word))
    return out


def slug(text: str) -> str:
    """Identifier piece of one name: letters and digits of any script, other runs as ``-``.

    ``"Women's Clothing"`` -> ``"women-s-clothing"``, ``"Café Crème"`` -> ``"café-crème"``,
    ``"连衣裙"`` -> ``"连衣裙"``; an empty name is ``"x"``, a name without letters or digits
    ``"x-"`` + 8 hex digits of its hash.
    """
    found = words(text)
    if found:
        return "-".join(found)
    norm = _normalize(text)
    if not norm.strip():
        return FALLBACK_PREFIX
    return f"{FALLBACK_PREFIX}-{hashlib.sha256(norm.encode('utf-8')).hexdigest()[:8]}"


def _bounded(tag_id: str) -> str:
    if len(tag_id) <= MAX_TAG_ID_LENGTH:
        return tag_id
    digest = hashlib.sha256(tag_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return f"{tag_id[: MAX_TAG_ID_LENGTH - _HASH_CHARS - 1]}~{digest}"


def category_tag_id(path: Sequence[str]) -> str:
    """Tag id of a category given its path (root first): ``cat:clothing/women``.

    A parent's id is a prefix of its children's ids, except past :data:`MAX_TAG_ID_LENGTH`
    characters (then the id is cut and ends in a hash); the vocabulary's ``parent`` field is
    the reliable link.
    """
    if isinstance(path, str):
        raise TypeError("category_tag_id takes the category path (a sequence of names), not one string")
    return _bounded(CATEGORY_PREFIX + CATEGORY_SEP.join(slug(p) for p in path))


def attribute_tag_id(key: str, value: str) -> str:
    """Tag id of an attribute value: ``attr:fabric=cotton``."""
    return _bounded(f"{ATTRIBUTE_PREFIX}{slug(key)}={slug(value)}")
