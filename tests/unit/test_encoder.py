"""The in-process MiniLM encoder (real weights, CPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shared.encoder import EMBEDDING_DIM, MiniLMEncoder, minilm_weights_dir

TEXTS = [
    "Alisha Solid Women's Cycling Shorts",
    "FabHomeDecor Fabric Double Sofa Bed",
    "AW Bellies",
    "Sicons All Purpose Arnica Dog Shampoo",
    "Eternal Gandhi Super Series Crystal Paper Weights with Silver Finish",
    "stainless steel water bottle 1 litre",
    "",
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_weights_dir_is_a_checkpoint() -> None:
    weights = minilm_weights_dir()
    for name in ("config.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"):
        assert (weights / name).is_file(), name


def test_shape_dtype_and_unit_norm(encoder: MiniLMEncoder) -> None:
    emb = encoder.encode(TEXTS)
    assert emb.shape == (len(TEXTS), EMBEDDING_DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_zero_rows(encoder: MiniLMEncoder) -> None:
    assert encoder.encode([]).shape == (0, EMBEDDING_DIM)


def test_deterministic(encoder: MiniLMEncoder) -> None:
    np.testing.assert_array_equal(encoder.encode(TEXTS), encoder.encode(TEXTS))


def test_batch_size_invariant(encoder: MiniLMEncoder) -> None:
    full = encoder.encode(TEXTS, batch_size=64)
    one_by_one = encoder.encode(TEXTS, batch_size=1)
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)


def test_order_follows_input(encoder: MiniLMEncoder) -> None:
    emb = encoder.encode(TEXTS)
    reversed_emb = encoder.encode(TEXTS[::-1])
    np.testing.assert_allclose(emb, reversed_emb[::-1], atol=1e-5)


def test_similar_titles_are_closer(encoder: MiniLMEncoder) -> None:
    shorts, sofa, cycling = encoder.encode(
        ["women's cycling shorts", "fabric sofa bed", "Alisha Solid Women's Cycling Shorts"]
    )
    assert float(shorts @ cycling) > float(sofa @ cycling) + 0.2


def test_long_text_is_truncated_not_rejected(encoder: MiniLMEncoder) -> None:
    long_text = "cotton kurta " * 400  # far beyond 256 tokens
    emb = encoder.encode([long_text, long_text + "with extra words at the very end"])
    # Everything past token 256 is cut, so the tails do not change the vector.
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


def test_rejects_a_bare_string(encoder: MiniLMEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("not a list")  # type: ignore[arg-type]


def test_matches_sentence_transformers(encoder: MiniLMEncoder) -> None:
    """The reference implementation of all-MiniLM-L6-v2 gives the same vectors."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except Exception as exc:  # not installed, or it wants the network at import
        pytest.skip(f"sentence-transformers not importable offline: {exc}")
    reference = SentenceTransformer(str(minilm_weights_dir()), device="cpu", local_files_only=True)
    assert reference.max_seq_length == 256
    expected = reference.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TEXTS), expected, atol=1e-5)
