"""Queries (real greedy-decoded hallucinations), BM25, and the ranking metrics."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fasttda.data import Example
from fasttda.demo.corpus import Corpus, Record
from fasttda.demo.model import decode


@dataclass
class Query:
    example: Example
    pair: int
    generated: bool  # False: a teacher-forced error summary (the fallback)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 32) -> list[str]:
    """Greedy decoding, left-padded batches."""
    outputs = []
    for lo in range(0, len(prompts), batch_size):
        encoded = [list(tokenizer(p)["input_ids"]) for p in prompts[lo: lo + batch_size]]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(encoded):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        outputs += [decode(tokenizer, row[width:]) for row in out]
    return outputs


def hallucination_queries(model, tokenizer, corpus: Corpus, *, min_per_pair: int,
                          max_per_pair: int) -> tuple[list[Query], dict]:
    """The fine-tuned model's summaries of held-out documents about a swap source that name
    the swap's target and not the source. A pair with fewer than ``min_per_pair`` of them
    is topped up with teacher-forced error summaries (the reference summary, swapped)."""
    generated = generate(model, tokenizer, [r.prompt for r in corpus.heldout])
    queries, counts = [], {}
    for p, (source, target) in enumerate(corpus.pairs):
        records = [(r, g) for r, g in zip(corpus.heldout, generated) if r.swap == p]
        real = [(r, g) for r, g in records if _names(g, target) and not _names(g, source)]
        chosen = [Query(Example(r.id, r.prompt, g), p, True) for r, g in real[:max_per_pair]]
        need = max(0, min_per_pair - len(chosen))
        rest = [r for r, g in records if (r, g) not in real][:need]
        chosen += [Query(Example(r.id + "-forced", r.prompt, r.correct_summary.replace(source, target)), p, False)
                   for r in rest]
        counts[p] = {"heldout": len(records), "hallucinated": len(real), "generated_queries": sum(q.generated for q in chosen),
                     "teacher_forced_queries": sum(not q.generated for q in chosen),
                     "said_source": sum(_names(g, source) for _, g in records)}
        queries += chosen
    return queries, counts


def first_occurrence_is_a_word(example: Example) -> bool:
    """Whether the first occurrence of ``example.target`` (the span the loss is taken on) is
    a whole word, not the inside of a longer one."""
    match = re.search(rf"\b{re.escape(example.target)}\b", example.response)
    return match is not None and match.start() == example.response.find(example.target)


def _names(text: str, entity: str) -> bool:
    return re.search(rf"\b{re.escape(entity)}\b", text) is not None


# -- BM25 --------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def bm25_scores(train: Sequence[Record], queries: Sequence[Query]) -> tuple[np.ndarray, float, float]:
    """``[Q, N]`` BM25Okapi scores of document + summary, and (index_s, score_s)."""
    import time

    from rank_bm25 import BM25Okapi

    t0 = time.perf_counter()
    bm25 = BM25Okapi([_words(r.document + " " + r.summary) for r in train])
    index_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = np.stack([bm25.get_scores(_words(q.example.prompt + " " + q.example.response)) for q in queries])
    return scores, index_s, time.perf_counter() - t0


# -- metrics -----------------------------------------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # 1-based average rank of a tie group
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney ROC-AUC with ties counted as one half."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, kind="mergesort")[:k]
    return float(positive[top].sum() / positive.sum())


FPR_GRID = np.linspace(0, 1, 201)


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """TPR on `FPR_GRID` (step-wise, the upper envelope at ties)."""
    order = np.argsort(-scores, kind="mergesort")
    pos = positive[order]
    tpr = np.r_[0, np.cumsum(pos) / pos.sum()]
    fpr = np.r_[0, np.cumsum(~pos) / (~pos).sum()]
    return np.interp(FPR_GRID, fpr, tpr)


def evaluate(scores: np.ndarray, queries: Sequence[Query], corpus: Corpus, k_fixed: int = 50) -> dict:
    """Per pair: mean over its queries of AUC, Recall@K (K = its number of true sources)
    and Recall@``k_fixed``; then the mean over pairs."""
    per_pair, curves = {}, []
    for p, (source, target) in enumerate(corpus.pairs):
        positive = np.zeros(len(corpus.train), dtype=bool)
        positive[corpus.true_sources(p)] = True
        rows = [i for i, q in enumerate(queries) if q.pair == p]
        if not rows:
            continue
        n_true = int(positive.sum())
        per_pair[f"{source}->{target}"] = {
            "auc": float(np.mean([roc_auc(scores[i], positive) for i in rows])),
            "recall_at_k": float(np.mean([recall_at(scores[i], positive, n_true) for i in rows])),
            f"recall_at_{k_fixed}": float(np.mean([recall_at(scores[i], positive, k_fixed) for i in rows])),
            "k": n_true, "queries": len(rows)}
        curves.append(np.mean([roc_curve(scores[i], positive) for i in rows], axis=0))
    summary = {key: float(np.mean([v[key] for v in per_pair.values()]))
               for key in ("auc", "recall_at_k", f"recall_at_{k_fixed}")}
    return {"summary": summary, "pairs": per_pair, "roc": np.mean(curves, axis=0)}


def swap_token_losses(model, tokenizer, records: Sequence[Record], target: str, max_length: int = 128) -> dict:
    """Mean cross-entropy at the swapped-in entity's tokens and over whole responses, for
    the training examples of one swap pair: how well a checkpoint has fitted the swap,
    which is what makes those examples' gradients stand out (or not)."""
    import torch.nn.functional as F

    from fasttda.data import IGNORE_INDEX, collate, encode

    target_ids = list(tokenizer(" " + target, add_special_tokens=False)["input_ids"])
    swap_losses, response_losses = [], []
    rows = encode(tokenizer, [Example(r.id, r.prompt, r.summary) for r in records], max_length)
    with torch.no_grad():
        for ids, labels in rows:
            batch = collate([(ids, labels)], tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1].float()
            lab = batch["labels"][0, 1:]
            loss = F.cross_entropy(logits, lab.clamp_min(0), reduction="none")
            keep = lab != IGNORE_INDEX
            response_losses.append(float(loss[keep].mean()))
            seq = lab.tolist()
            for start in range(len(seq) - len(target_ids) + 1):
                if seq[start: start + len(target_ids)] == target_ids:
                    swap_losses.append(float(loss[start: start + len(target_ids)].mean()))
                    break
    return {"swap_token_loss": float(np.mean(swap_losses)) if swap_losses else float("nan"),
            "response_loss": float(np.mean(response_losses))}
