"""The lexical block's analysers: text -> the terms its TF-IDF counts. Pure, numpy-free.

The trainer fits scikit-learn's ``TfidfVectorizer`` with one of these as ``analyzer`` and the
serving head (:class:`shared.tagmodel.head.Lexicon`) calls the very same function, so fitting
and serving cannot tokenise differently. Each exported lexicon names its analyser; a lexicon
that names none was fitted with :data:`WORDS` (every version exported before CJK support).

* :data:`WORDS` (``"word-1-2"``): lowercase, ``\\b\\w\\w+\\b`` tokens and their bigrams:
  scikit-learn's default analyser with ``ngram_range=(1, 2)``. A run of Chinese characters is one
  "word" to it, so an unseen Chinese title shares no term with the training titles.
* :data:`WORDS_CJK` (``"word-1-2+cjk-char-1-2"``): fullwidth ASCII folded to ASCII (``ＸＬ`` is
  ``xl``), lowercase; runs of CJK characters (Han, kana, Hangul) give their characters and
  character bigrams, the text between them gives word 1-2 grams exactly as :data:`WORDS` does.
  On text without CJK or fullwidth characters the two are equal, so English catalogs keep their
  features (no NFKC: it would turn ``Nike™`` into the token ``niketm``).

Character 1-2 grams were chosen on the validation side of the Chinese check
(``bench/results/chinese.md``): over 1 only, 2-3 and 1-3 grams, and over jieba words (alone,
and with the character grams: the same F1 within 0.002, for a dependency and a dictionary in
the Triton image and a segmentation that depends on jieba's version).

Examples
--------
>>> analyze("Nike 运动鞋 Air Max", WORDS_CJK)
['nike', '运', '动', '鞋', '运动', '动鞋', 'air', 'max', 'air max']
>>> analyze("ＸＬ码　T恤", WORDS_CJK)
['xl', '码', '恤']
>>> analyze("Nike 运动鞋 Air Max", WORDS)
['nike', '运动鞋', 'air', 'max', 'nike 运动鞋', '运动鞋 air', 'air max']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

WORDS = "word-1-2"
WORDS_CJK = "word-1-2+cjk-char-1-2"
DEFAULT_ANALYZER = WORDS_CJK
LEGACY_ANALYZER = WORDS  # what a lexicon.json without an "analyzer" field was fitted with

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
# CJK Unified Ideographs (+ extension A, compatibility, extensions B-F in the SIP), Hiragana,
# Katakana, Hangul syllables: scripts written without spaces between words.
_CJK_RUN = re.compile(
    "([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff]+)"
)

# Fullwidth forms of ASCII (U+FF01-U+FF5E) and the ideographic space, as Chinese text often types them.
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def word_terms(text: str) -> list[str]:
    """``\\b\\w\\w+\\b`` tokens of ``text`` (as given) followed by their bigrams."""
    tokens = _TOKEN.findall(text)
    return tokens + [f"{a} {b}" for a, b in pairwise(tokens)]


def words(text: str) -> list[str]:
    """:data:`WORDS`: scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2))`` terms."""
    return word_terms(text.lower())


def words_cjk(text: str) -> list[str]:
    """:data:`WORDS_CJK`: word 1-2 grams between CJK runs, character 1-2 grams inside them."""
    parts = _CJK_RUN.split(text.translate(_FULLWIDTH).lower())
    terms: list[str] = []
    # re.split with one group alternates: text outside runs at even indices, runs at odd ones.
    for i, part in enumerate(parts):
        if i % 2 == 0:
            terms += word_terms(part)
        else:
            terms += list(part) + [a + b for a, b in pairwise(part)]
    return terms


ANALYZERS: dict[str, Callable[[str], list[str]]] = {WORDS: words, WORDS_CJK: words_cjk}


def analyzer(name: str) -> Callable[[str], list[str]]:
    """The analyser function called ``name``; ValueError for a name this tagloop does not know."""
    try:
        return ANALYZERS[name]
    except KeyError:
        raise ValueError(f"unknown lexical analyzer {name!r}; known: {sorted(ANALYZERS)}") from None


def analyzer_name(fn: Callable[[str], list[str]]) -> str:
    """The name of an analyser function of :data:`ANALYZERS` (what a lexicon file records)."""
    for name, candidate in ANALYZERS.items():
        if candidate is fn:
            return name
    raise ValueError(f"{fn!r} is not one of tagloop's lexical analyzers")


def analyze(text: str, name: str = DEFAULT_ANALYZER) -> list[str]:
    """The terms the analyser ``name`` reads in ``text``, in order, with repeats."""
    return analyzer(name)(text)
