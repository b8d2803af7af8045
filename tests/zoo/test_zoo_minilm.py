"""minilm: all-MiniLM-L6-v2 with pooling and normalisation in the graph."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import zoo
from benchmarks.zoo.onnx_export import run_batched

pytestmark = pytest.mark.slow  # about a minute from a cold cache


def feeds(minilm: zoo.ZooModel, count: int) -> dict[str, np.ndarray]:
    with np.load(minilm.data["evaluation"]) as data:
        return {k: data[k][:count] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_onnx_matches_torch(minilm: zoo.ZooModel) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks.zoo.minilm import encode_torch, load

    sample = feeds(minilm, 24)
    emb = run_batched(minilm.model, sample)
    assert emb.shape == (24, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    torch.manual_seed(0)
    model, _ = load()
    np.testing.assert_allclose(emb, encode_torch(model, sample), atol=1e-4)


def test_mask_matters_and_padding_does_not(minilm: zoo.ZooModel) -> None:
    sample = feeds(minilm, 64)
    lengths = sample["attention_mask"].sum(1)
    assert lengths.min() < 20 and lengths.max() > 50  # varied lengths
    emb = run_batched(minilm.model, sample)
    noisy = dict(sample, input_ids=np.where(sample["attention_mask"] == 1, sample["input_ids"], 1996))
    np.testing.assert_allclose(run_batched(minilm.model, noisy), emb, atol=1e-5)  # masked tokens are ignored
    short = dict(sample, attention_mask=(np.arange(128) < 4).astype(np.int64)[None].repeat(64, 0))
    assert np.min(np.sum(run_batched(minilm.model, short) * emb, axis=1)) < 0.99


def test_paraphrases_are_closer_than_unrelated_sentences(minilm: zoo.ZooModel) -> None:
    rows = minilm.properties["similarity"]
    assert len(rows) >= 5
    assert all(row["paraphrase"] > row["unrelated"] for row in rows)
    assert minilm.metric == "embedding"
