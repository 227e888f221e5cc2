"""The lexical analysers: serving's numpy TF-IDF equals scikit-learn's for CJK text, old lexicons keep theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from services.trainer.head import lexicon_from_vectorizer, word_tfidf
from shared.tagmodel.analyzer import WORDS, WORDS_CJK, analyze, words, words_cjk
from shared.tagmodel.head import Lexicon

CJK_TEXTS = [
    "纯棉女士短袖T恤 夏季",
    "Nike 运动鞋 Air Max 270 男款",
    "不锈钢保温杯 500ml 保温保冷",
    "ＸＬ码　连衣裙（碎花）",
    "猫粮 成猫 鸡肉味 2kg",
    "犬用洗发水 Dog Shampoo",
    "ステンレス 水筒 500ml",
    "여성 면 티셔츠",
]
ENGLISH = [
    "Alisha Solid Women's Cycling Shorts",
    "FabHomeDecor Fabric Double Sofa Bed — Ölive Grün",
    "Nike™ AW Bellies shoes shoes shoes for women",
    "Eternal Gandhi Super Series Crystal Paper Weights with Silver Finish",
    "x",
    "",
]


def _dense(lex: Lexicon, text: str) -> np.ndarray:
    cols, values = lex.row(text)
    out = np.zeros(lex.size)
    out[cols] = values
    return out


def test_numpy_rows_equal_scikit_learn_on_chinese_japanese_korean_and_mixed_text() -> None:
    lex = lexicon_from_vectorizer(word_tfidf().fit(CJK_TEXTS + ENGLISH[:4]))
    assert lex.analyzer == WORDS_CJK
    ref = TfidfVectorizer(analyzer=words_cjk, sublinear_tf=True).fit(CJK_TEXTS + ENGLISH[:4])
    assert lex.vocabulary == ref.vocabulary_
    texts = [*CJK_TEXTS, *ENGLISH, "女士 t恤 保温杯 unknown 鞋"]
    expected = ref.transform(texts).toarray()
    for r, text in enumerate(texts):
        np.testing.assert_allclose(_dense(lex, text), expected[r], atol=1e-12)


def test_chinese_runs_give_characters_and_character_bigrams() -> None:
    terms = analyze("纯棉T恤", WORDS_CJK)
    assert terms == ["纯", "棉", "纯棉", "恤"]
    # The legacy analyser reads a whole run as one token: nothing shared with "纯棉衬衫".
    assert set(analyze("纯棉T恤", WORDS)) & set(analyze("纯棉衬衫", WORDS)) == set()
    assert {"纯", "棉", "纯棉"} <= set(analyze("纯棉T恤", WORDS_CJK)) & set(analyze("纯棉衬衫", WORDS_CJK))


def test_text_without_cjk_gets_exactly_the_legacy_terms() -> None:
    for text in ENGLISH:
        assert words_cjk(text) == words(text)


def test_a_lexicon_saved_without_an_analyzer_is_a_legacy_word_lexicon(tmp_path: Path) -> None:
    # lexicon.json as every version exported before CJK support wrote it: terms and idf only.
    ref = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(CJK_TEXTS + ENGLISH)
    terms = sorted(ref.vocabulary_, key=ref.vocabulary_.__getitem__)
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps({"terms": terms, "idf": ref.idf_.tolist()}, ensure_ascii=False), encoding="utf-8")
    old = Lexicon.load(path)
    assert old.analyzer == WORDS
    expected = ref.transform(CJK_TEXTS).toarray()
    for r, text in enumerate(CJK_TEXTS):
        np.testing.assert_allclose(_dense(old, text), expected[r], atol=1e-12)
    # Saved again, it says what it is; loaded again, it reads the same.
    old.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["analyzer"] == WORDS
    np.testing.assert_array_equal(_dense(Lexicon.load(path), CJK_TEXTS[1]), _dense(old, CJK_TEXTS[1]))


def test_a_lexicon_naming_an_unknown_analyzer_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps({"analyzer": "jieba-9", "terms": ["a"], "idf": [1.0]}), encoding="utf-8")
    with pytest.raises(ValueError, match="jieba-9"):
        Lexicon.load(path)
