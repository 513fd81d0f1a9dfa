"""How well a similarity matrix S reproduces the teacher's Y, and the baselines.

* ``spearman_anchor``: the mean over anchors of Spearman(S[a, :], Y[a, :]);
* ``spearman_agg``: Spearman of each candidate's mean over anchors, S.mean(0) vs Y.mean(0);

for the trained student, the untrained one, TF-IDF (scikit-learn) and BM25 (rank-bm25).
Spearman uses average ranks for ties (as ``scipy.stats.spearmanr``); a constant vector
has no ranking, and its correlation counts as 0.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along the last axis, ties sharing their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    sorted_x = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    ranks = np.empty_like(sorted_x)
    flat_sorted = sorted_x.reshape(-1, n)
    flat_ranks = ranks.reshape(-1, n)
    for row, (vals, out) in enumerate(zip(flat_sorted, flat_ranks)):
        starts = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
        ends = np.r_[starts[1:], n]
        out[:] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    result = np.empty_like(ranks)
    np.put_along_axis(result, order, ranks, axis=-1)
    return result


def spearman(a, b) -> float:
    """Spearman's rank correlation of two 1-D arrays."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two arrays of one length >= 2, got {a.shape} and {b.shape}")
    return _pearson_rows(rankdata(a)[None], rankdata(b)[None])[0]


def spearman_anchor(s, y) -> float:
    """Mean over rows (anchors) of the per-row Spearman correlation."""
    s, y = _pair(s, y)
    return float(np.mean(_pearson_rows(rankdata(s), rankdata(y))))


def spearman_agg(s, y) -> float:
    """Spearman of the column (candidate) means over the rows (anchors)."""
    s, y = _pair(s, y)
    return spearman(s.mean(axis=0), y.mean(axis=0))


def split_half_agg(y, *, repeats: int = 20, seed: int = 0) -> float:
    """How stable the teacher's aggregated ranking is in its anchors: the mean, over random
    halvings of the anchors, of Spearman between the two halves' candidate means. Low values
    mean a candidate's mean over these anchors depends on which anchors were drawn."""
    y = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"split_half_agg needs an [anchors >= 2, candidates >= 2] matrix, got {y.shape}")
    rng = np.random.default_rng(seed)
    half = y.shape[0] // 2
    values = []
    for _ in range(repeats):
        order = rng.permutation(y.shape[0])
        values.append(spearman(y[order[:half]].mean(axis=0), y[order[half:]].mean(axis=0)))
    return float(np.mean(values))


def _pair(s, y):
    s = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if s.ndim != 2 or s.shape != y.shape or s.shape[1] < 2:
        raise ValueError(f"S and Y must be the same [anchors, candidates >= 2] matrix, got {s.shape} and {y.shape}")
    if not (np.isfinite(s).all() and np.isfinite(y).all()):
        raise ValueError("S or Y holds NaN or inf")
    return s.astype(np.float64), y.astype(np.float64)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)


def metrics(s, y) -> dict:
    return {"spearman_anchor": spearman_anchor(s, y), "spearman_agg": spearman_agg(s, y)}


# -- baselines ------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def tfidf_similarity(anchor_texts: Sequence[str], pool_texts: Sequence[str]) -> np.ndarray:
    """Cosine of TF-IDF vectors (fitted on the pool), ``[A, P]``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(tokenizer=_words, lowercase=False, token_pattern=None)
    pool = vec.fit_transform(pool_texts)
    return (vec.transform(anchor_texts) @ pool.T).toarray()


def bm25_similarity(anchor_texts: Sequence[str], pool_texts: Sequence[str]) -> np.ndarray:
    """BM25 (Okapi) score of each pool text for each anchor as the query, ``[A, P]``."""
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([_words(t) for t in pool_texts])
    return np.stack([bm25.get_scores(_words(t)) for t in anchor_texts])


def student_similarity(student, anchors, pool, *, batch_size: int = 64, progress: bool = False):
    """Cosine ``[A, P]`` of the student's rows, and the seconds per example it took to embed."""
    import time

    from fasttda.methods.influcoder.encode import embed
    from fasttda.ops.score import score_dense

    t0 = time.perf_counter()
    a = embed(student, anchors, batch_size=batch_size, progress=progress)
    p = embed(student, pool, batch_size=batch_size, progress=progress)
    seconds = (time.perf_counter() - t0) / (len(anchors) + len(pool))
    return score_dense(a, p, normalize=True).numpy(), seconds


def evaluate(student, teacher, *, untrained=None, baselines: bool = True, batch_size: int = 64,
             progress: bool = False) -> dict:
    """Spearman metrics on ``teacher`` (held-out anchors × held-out pool) for the student,
    and for ``untrained`` (a `Student`), TF-IDF and BM25 when asked. Also returns the
    matrices under ``"_s"`` for plots (drop it before writing JSON)."""
    from fasttda.methods.influcoder.encode import texts_of

    y = teacher.y.numpy()
    template = student.config.template
    anchor_texts, pool_texts = texts_of(teacher.anchors, template), texts_of(teacher.pool, template)
    s, seconds = student_similarity(student, anchor_texts, pool_texts, batch_size=batch_size, progress=progress)
    result = {"trained": metrics(s, y), "seconds_per_example": seconds, "_s": {"trained": s}}
    if untrained is not None:
        s_u, _ = student_similarity(untrained, anchor_texts, pool_texts, batch_size=batch_size, progress=progress)
        result["untrained"] = metrics(s_u, y)
        result["_s"]["untrained"] = s_u
    if baselines:
        result["tfidf"] = metrics(tfidf_similarity(anchor_texts, pool_texts), y)
        result["bm25"] = metrics(bm25_similarity(anchor_texts, pool_texts), y)
    return result
