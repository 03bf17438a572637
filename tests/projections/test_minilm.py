"""The built-in text embedder: all-MiniLM-L6-v2 in numpy, from the weights the installed package ships."""

from __future__ import annotations

import numpy as np
import pytest

from projections.minilm import MAX_TOKENS, MiniLM, StaticMiniLM


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


def test_vectors_are_unit_length_384_floats(model: MiniLM) -> None:
    vectors = model.encode(["The cat sits on the mat.", "x", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_paraphrase_is_nearer_than_an_unrelated_sentence(model: MiniLM) -> None:
    fact, paraphrase, unrelated = model.encode(["The cat sits on the mat.", "A feline is resting on a rug.",
                                                "Stock markets fell sharply today."])
    assert fact @ paraphrase > 0.5 > 0.2 > fact @ unrelated


def test_a_batch_gives_each_text_the_vector_it_gets_alone(model: MiniLM) -> None:
    texts = ["short", "a somewhat longer sentence about memory and agents", "mid length text here"]
    together = model.encode(texts)
    alone = np.vstack([model.encode([text]) for text in texts])
    assert np.allclose(together, alone, atol=1e-5)  # padding within a batch changes nothing


def test_long_texts_are_truncated_to_the_models_window(model: MiniLM) -> None:
    long = "memory " * (4 * MAX_TOKENS)
    assert np.allclose(model.encode([long]), model.encode([long + "and something else entirely"]), atol=1e-5)


def test_the_static_variant_is_the_token_table_averaged() -> None:
    static = StaticMiniLM()
    vectors = static.encode(["The cat sits on the mat.", "A feline is resting on a rug.", ""])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, atol=1e-5) and not vectors[2].any()
