"""Suite `e2e`: index N training examples of a tiny causal LM and answer Q queries, top-k.

One timed call = gradients of every training example → projected features → store on
disk → gradients of the queries → top-k training examples per query. Pipelines:

* ``trak-style``: per-example backward loop, TRAK's BasicProjector (dense Rademacher),
  a float16 numpy memmap (TRAK/Bergson storage), then ``torch.topk(q @ R.T)``;
* ``fasttda.dense``: the same backward loop, `ops.project` (dense Rademacher, same k),
  an int8 `FeatureStore`, then `fasttda.score`: what fasttda changes after the gradients;
* ``fasttda.capture``: `GradientCapture` (factored 16×16 per linear, frozen weights), an
  int8 `FeatureStore` and `fasttda.score`: fasttda's own way end to end.

The model is built from a config (no download), GPT-2 shaped; `extra` gives its size.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from fasttda.bench import anchors
from fasttda.bench.suites._common import AnchorMissing, fasttda_attr

SUITE = "e2e"
NAME = "index+query"


def config(ctx) -> dict:
    if ctx.quick:
        return dict(N=16, Q=4, T=16, batch=8, k_proj=128, topk=5, n_layer=1, n_embd=32, vocab=128)
    if ctx.device == "cuda":
        return dict(N=512, Q=32, T=128, batch=32, k_proj=4096, topk=10, n_layer=4, n_embd=256, vocab=8192)
    return dict(N=256, Q=8, T=32, batch=16, k_proj=1024, topk=10, n_layer=2, n_embd=64, vocab=512)


def tiny_model(cfg, device):
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except Exception as exc:
        raise AnchorMissing(f"transformers not importable ({type(exc).__name__}: {exc})") from exc
    torch.manual_seed(0)
    config = GPT2Config(n_layer=cfg["n_layer"], n_embd=cfg["n_embd"], n_head=4, vocab_size=cfg["vocab"],
                        n_positions=max(64, cfg["T"]), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).to(device).eval()


def loop_gradients(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-example flattened gradients by one backward per example (what TRAK-style code does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for row in ids:
        model.zero_grad(set_to_none=True)
        model(input_ids=row[None], labels=row[None]).loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def run(ctx) -> list[dict]:
    cfg = config(ctx)
    params = {k: cfg[k] for k in ("N", "Q", "T", "k_proj", "topk")}
    try:
        model = tiny_model(cfg, ctx.torch_device)
    except AnchorMissing as exc:
        return [ctx.missing(suite=SUITE, name=NAME, impl=impl, params=params, reason=str(exc))
                for impl in ("trak-style", "fasttda.dense", "fasttda.capture")]
    g = torch.Generator().manual_seed(900)
    train = torch.randint(0, cfg["vocab"], (cfg["N"], cfg["T"]), generator=g).to(ctx.torch_device)
    queries = torch.randint(0, cfg["vocab"], (cfg["Q"], cfg["T"]), generator=g).to(ctx.torch_device)
    n_params = sum(p.numel() for p in model.parameters())
    extra = {"model": f"gpt2 n_layer={cfg['n_layer']} n_embd={cfg['n_embd']} vocab={cfg['vocab']}",
             "model_params": n_params}
    root = Path(tempfile.mkdtemp(prefix="fasttda-bench-e2e-"))
    repeats = 1 if ctx.quick else 3
    try:
        common = dict(suite=SUITE, name=NAME, params=params, warmup=1, repeats=repeats)
        out = [ctx.measure(build=lambda: trak_style(ctx, model, train, queries, cfg, n_params, root), impl="trak-style",
                           extra=extra, **common)]
        out.append(ctx.measure(build=lambda: fasttda_dense(ctx, model, train, queries, cfg, root),
                               impl="fasttda.dense", baseline="trak-style", extra=extra, **common))
        out.append(ctx.measure(build=lambda: fasttda_capture(ctx, model, train, queries, cfg, root),
                               impl="fasttda.capture", baseline="trak-style", extra=extra, **common))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _batches(ids, size):
    return [ids[lo:lo + size] for lo in range(0, ids.shape[0], size)]


def trak_style(ctx, model, train, queries, cfg, n_params, root):
    project = anchors.trak_basic(n_params, cfg["k_proj"], ctx.device)
    path = root / "trak.npy"

    def pipeline():
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(train.shape[0], cfg["k_proj"]))
        lo = 0
        for batch in _batches(train, cfg["batch"]):
            feats = project(loop_gradients(model, batch))
            mm[lo:lo + feats.shape[0]] = feats.cpu().numpy().astype(np.float16)
            lo += feats.shape[0]
        mm.flush()
        del mm
        q = project(loop_gradients(model, queries))
        rows = torch.from_numpy(np.load(path, mmap_mode="r").astype(np.float32)).to(q.device)
        return torch.topk(q @ rows.T, cfg["topk"], dim=1)
    return pipeline


def _store_and_score():
    store_cls = fasttda_attr("fasttda.store", "FeatureStore")
    score = fasttda_attr("fasttda", "score")
    return store_cls, score


def _index_and_query(store_cls, score, root, name, feature_batches, query_features, cfg):
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    with store_cls.create(path, dim=cfg["k_proj_effective"], fmt="int8") as store:
        for feats in feature_batches():
            store.append(feats.cpu())
        store.commit()
    opened = store_cls.open(path)
    try:
        return score(query_features(), opened, k=cfg["topk"])
    finally:
        opened.close()


def fasttda_dense(ctx, model, train, queries, cfg, root):
    project = fasttda_attr("fasttda.ops", "project")
    store_cls, score = _store_and_score()
    run_cfg = dict(cfg, k_proj_effective=cfg["k_proj"])

    def pipeline():
        return _index_and_query(
            store_cls, score, root, "dense",
            lambda: (project(loop_gradients(model, b), cfg["k_proj"]) for b in _batches(train, cfg["batch"])),
            lambda: project(loop_gradients(model, queries), cfg["k_proj"]), run_cfg)
    return pipeline


def fasttda_capture(ctx, model, train, queries, cfg, root):
    capture_cls = fasttda_attr("fasttda.capture", "GradientCapture")
    store_cls, score = _store_and_score()
    capture = capture_cls(model, projection=("factored", 16, 16), seed=0, freeze=True)
    with capture:
        dim = capture.features(input_ids=train[:1]).shape[1]
    run_cfg = dict(cfg, k_proj_effective=dim)

    def pipeline():
        with capture:
            return _index_and_query(
                store_cls, score, root, "capture",
                lambda: (capture.features(input_ids=b) for b in _batches(train, cfg["batch"])),
                lambda: capture.features(input_ids=queries), run_cfg)
    return pipeline
